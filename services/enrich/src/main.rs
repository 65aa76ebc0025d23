//! `dealmesh-enrich`: enrich sourced deals until SIGTERM, or create the
//! topics.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_enrich::app::App;
use dealmesh_enrich::config::EnrichConfig;
use dealmesh_runtime::shutdown::{self, CancellationToken};
use dealmesh_runtime::telemetry::{self, TelemetryConfig};

#[derive(Parser)]
#[command(
    name = "dealmesh-enrich",
    version,
    about = "Enriches sourced deals with GitHub, Crunchbase and an LLM analysis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume DealSourced and append DealEnriched/EnrichmentFailed until
    /// SIGTERM; serve the admin endpoints.
    Serve,
    /// Create the deal log and dead-letter topics if missing, then exit.
    Topics,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = match dealmesh_runtime::config::from_environment() {
        Ok(source) => source,
        Err(error) => return config_error(&error),
    };
    let telemetry_config = match TelemetryConfig::from_source(&source, "dealmesh-enrich") {
        Ok(c) => c,
        Err(error) => return config_error(&error),
    };
    let _telemetry = match telemetry::init(&telemetry_config) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("dealmesh-enrich: telemetry: {error:#}");
            return ExitCode::from(70);
        }
    };
    let config = match EnrichConfig::from_source(&source) {
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
            eprintln!("dealmesh-enrich: cannot start runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Topics => {
                let topics = dealmesh_eventlog::topics::provision(&config.kafka).await?;
                tracing::info!(deals = %topics.deals, dead_letter = %topics.dead_letter, "topics ready");
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "failed");
            eprintln!("dealmesh-enrich: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(error: &dealmesh_runtime::config::ConfigError) -> ExitCode {
    eprintln!("dealmesh-enrich: configuration: {error}");
    ExitCode::from(dealmesh_runtime::EXIT_CONFIG as u8)
}

async fn serve(config: EnrichConfig) -> anyhow::Result<ExitCode> {
    let grace = config.shutdown_grace;
    let app = App::build(config).await?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let mut run = tokio::spawn(app.run(token.clone()));
    // The consumer may also stop on its own (a broker error): then there is
    // nothing to drain.
    tokio::select! {
        joined = &mut run => {
            joined??;
            return Ok(ExitCode::SUCCESS);
        }
        () = token.cancelled() => {}
    }
    match tokio::time::timeout(grace, run).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over, exiting"),
    }
    Ok(ExitCode::SUCCESS)
}
