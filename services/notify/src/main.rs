//! `dealmesh-notify`: serve the notification channels, migrate the database,
//! check a subscriptions file, or assemble the digests now.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_notify::app::{self, App};
use dealmesh_notify::config::NotifyConfig;
use dealmesh_runtime::config::{ConfigError, Source};
use dealmesh_runtime::launch;

#[derive(Parser)]
#[command(
    name = "dealmesh-notify",
    version,
    about = "Tells people what happened on the dealmesh deal log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the deal log, deliver notifications and serve the API until SIGTERM.
    Serve,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Create the deal log and dead-letter topics if missing, then exit.
    Topics,
    /// Check a subscriptions file and print what it defines (needs no
    /// database or broker).
    CheckSubscriptions {
        file: PathBuf,
        /// Accept email subscriptions as if SMTP were configured.
        #[arg(long)]
        email: bool,
    },
    /// Fold every waiting digest item into its digest email now, then exit
    /// (a running server sends them).
    Digest,
}

/// Exit status when input data is bad (sysexits `EX_DATAERR`).
const EXIT_DATA: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckSubscriptions { file, email } = &cli.command {
        return check_subscriptions(file, *email);
    }
    launch::run("dealmesh-notify", parse_config, |config| async move {
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
                app::MIGRATOR.run(&pool).await?;
                tracing::info!("migrations applied");
                Ok(ExitCode::SUCCESS)
            }
            Command::Topics => {
                let topics = dealmesh_eventlog::topics::provision(&config.kafka).await?;
                tracing::info!(deals = %topics.deals, dead_letter = %topics.dead_letter, "topics ready");
                Ok(ExitCode::SUCCESS)
            }
            Command::Digest => {
                let pool = app::connect(&config).await?;
                app::MIGRATOR.run(&pool).await?;
                let written = dealmesh_notify::digest::assemble(&pool, chrono::Utc::now()).await?;
                println!("{written} digest(s) assembled");
                Ok(ExitCode::SUCCESS)
            }
            Command::CheckSubscriptions { .. } => Ok(ExitCode::SUCCESS),
        }
    })
}

/// The configuration, with the subscriptions file checked up front: a bad
/// file stops the service before it connects to anything.
fn parse_config(source: &dyn Source) -> Result<NotifyConfig, ConfigError> {
    let config = NotifyConfig::from_source(source)?;
    app::configured_subscriptions(&config).map_err(|error| {
        ConfigError::new(
            dealmesh_notify::config::SUBSCRIPTIONS_FILE,
            format!("\n{error:#}"),
        )
    })?;
    Ok(config)
}

fn check_subscriptions(file: &std::path::Path, email: bool) -> ExitCode {
    match dealmesh_notify::subscription::file::load(file, email) {
        Ok(subscriptions) => {
            for s in &subscriptions {
                println!(
                    "{} {:?}: {} ({}) hears {}",
                    s.id,
                    s.name,
                    s.subscriber,
                    s.role.as_str(),
                    s.triggers
                        .iter()
                        .map(|t| dealmesh_notify::event::trigger_name(*t))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!(
                "{}: {} subscription(s), all valid",
                file.display(),
                subscriptions.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            ExitCode::from(EXIT_DATA)
        }
    }
}
