//! `dealmesh-scoring`: score enriched deals against the thesis model, check
//! a model file, migrate the database, or re-score every deal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_runtime::shutdown::{self, CancellationToken};
use dealmesh_runtime::telemetry::{self, TelemetryConfig};
use dealmesh_scoring::app::{self, App};
use dealmesh_scoring::config::ScoringConfig;
use dealmesh_scoring::model::{Model, ModelError};

#[derive(Parser)]
#[command(
    name = "dealmesh-scoring",
    version,
    about = "Scores enriched deals against the fund's thesis model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume DealEnriched, publish DealScored, serve gRPC and the admin
    /// endpoints until SIGTERM. The model file is reloaded when it changes.
    Serve,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Score every stored enrichment with the model file's current model and
    /// publish the new scores (deals already scored under it are skipped).
    Rescore {
        /// Deals scored at a time.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Validate a model file: print its version, or every field error and
    /// exit 65.
    CheckModel { file: PathBuf },
}

/// Exit status when input data is bad (sysexits `EX_DATAERR`).
const EXIT_DATA: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckModel { file } = &cli.command {
        return check_model(file);
    }
    let source = match dealmesh_runtime::config::from_environment() {
        Ok(source) => source,
        Err(error) => return config_error(&error),
    };
    let telemetry_config = match TelemetryConfig::from_source(&source, "dealmesh-scoring") {
        Ok(c) => c,
        Err(error) => return config_error(&error),
    };
    let _telemetry = match telemetry::init(&telemetry_config) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("dealmesh-scoring: telemetry: {error:#}");
            return ExitCode::from(70);
        }
    };
    let config = match ScoringConfig::from_source(&source) {
        Ok(c) => c,
        Err(error) => return config_error(&error),
    };
    tracing::info!(config = ?config, "effective configuration");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("dealmesh-scoring: cannot start runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Migrate => {
                let pool = app::connect(&config).await?;
                dealmesh_scoring::store::MIGRATOR.run(&pool).await?;
                tracing::info!("migrations applied");
                Ok(ExitCode::SUCCESS)
            }
            Command::Rescore { concurrency } => {
                let scorer = app::scorer(&config, None).await?;
                let report = dealmesh_scoring::rescore::rescore(&scorer, concurrency).await?;
                let producer = scorer.producer().clone();
                tokio::task::spawn_blocking(move || {
                    producer.flush(std::time::Duration::from_secs(10))
                })
                .await??;
                println!(
                    "model {}: {} score(s) published, {} deal(s) already scored under it",
                    report.model_version, report.published, report.unchanged
                );
                for (deal_id, reason) in &report.invalid {
                    eprintln!("deal {deal_id}: not scored: {reason}");
                }
                Ok(if report.invalid.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_DATA)
                })
            }
            Command::CheckModel { .. } => unreachable!("handled before configuration is read"),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "failed");
            eprintln!("dealmesh-scoring: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(error: &dealmesh_runtime::config::ConfigError) -> ExitCode {
    eprintln!("dealmesh-scoring: configuration: {error}");
    ExitCode::from(dealmesh_runtime::EXIT_CONFIG as u8)
}

async fn serve(config: ScoringConfig) -> anyhow::Result<ExitCode> {
    let grace = config.shutdown_grace;
    let app = App::build(config).await?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let run = tokio::spawn(app.run(token.clone()));
    token.cancelled().await;
    match tokio::time::timeout(grace, run).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over, exiting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `check-model`: needs no configuration, so it runs anywhere (CI, a
/// partner's laptop) before a model file is shipped.
fn check_model(file: &std::path::Path) -> ExitCode {
    let name = file.display();
    match Model::load(file) {
        Ok(model) => {
            println!("{name}: ok, version {}", model.version);
            ExitCode::SUCCESS
        }
        Err(ModelError::Invalid(errors)) => {
            for error in &errors {
                eprintln!("{name}: {error}");
            }
            eprintln!("{name}: rejected ({} error(s))", errors.len());
            ExitCode::from(EXIT_DATA)
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(66)
        }
    }
}
