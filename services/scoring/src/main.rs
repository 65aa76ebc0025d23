//! `dealmesh-scoring`: score enriched deals against the thesis model, check
//! a model file, migrate the database, or re-score every deal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_runtime::launch;
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
    launch::run(
        "dealmesh-scoring",
        ScoringConfig::from_source,
        |config| async move {
            match cli.command {
                Command::Serve => {
                    let grace = config.shutdown_grace;
                    launch::serve(grace, |shutdown| async move {
                        App::build(config).await?.run(shutdown).await
                    })
                    .await
                }
                Command::Migrate => {
                    let pool = app::connect(&config).await?;
                    dealmesh_scoring::store::MIGRATOR.run(&pool).await?;
                    tracing::info!("migrations applied");
                    Ok(ExitCode::SUCCESS)
                }
                Command::Rescore { concurrency } => rescore(config, concurrency).await,
                Command::CheckModel { .. } => unreachable!("handled before configuration is read"),
            }
        },
    )
}

async fn rescore(config: ScoringConfig, concurrency: usize) -> anyhow::Result<ExitCode> {
    let scorer = app::scorer(&config, None).await?;
    let report = dealmesh_scoring::rescore::rescore(&scorer, concurrency).await?;
    let producer = scorer.producer().clone();
    tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(10)))
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
