//! `dealmesh-enrich`: enrich sourced deals until SIGTERM, or create the
//! topics.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_enrich::app::App;
use dealmesh_enrich::config::EnrichConfig;
use dealmesh_runtime::launch;

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
    launch::run(
        "dealmesh-enrich",
        EnrichConfig::from_source,
        |config| async move {
            match cli.command {
                Command::Serve => {
                    let grace = config.shutdown_grace;
                    let app = App::build(config).await?;
                    launch::serve(grace, |shutdown| app.run(shutdown)).await
                }
                Command::Topics => {
                    let topics = dealmesh_eventlog::topics::provision(&config.kafka).await?;
                    tracing::info!(deals = %topics.deals, dead_letter = %topics.dead_letter, "topics ready");
                    Ok(ExitCode::SUCCESS)
                }
            }
        },
    )
}
