//! `dealmesh-notify`: serve the notification channels, migrate the database,
//! check a subscriptions file, or assemble the digests now.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_notify::app::{self, App};
use dealmesh_notify::config::NotifyConfig;
use dealmesh_runtime::shutdown::{self, CancellationToken};
use dealmesh_runtime::telemetry::{self, TelemetryConfig};

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
    let source = match dealmesh_runtime::config::from_environment() {
        Ok(source) => source,
        Err(error) => return config_error(&error),
    };
    let telemetry_config = match TelemetryConfig::from_source(&source, "dealmesh-notify") {
        Ok(c) => c,
        Err(error) => return config_error(&error),
    };
    let _telemetry = match telemetry::init(&telemetry_config) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("dealmesh-notify: telemetry: {error:#}");
            return ExitCode::from(70);
        }
    };
    let config = match NotifyConfig::from_source(&source) {
        Ok(c) => c,
        Err(error) => return config_error(&error),
    };
    tracing::info!(config = ?config, "effective configuration");
    if let Err(error) = app::configured_subscriptions(&config) {
        eprintln!(
            "dealmesh-notify: configuration: {}:\n{error}",
            dealmesh_notify::config::SUBSCRIPTIONS_FILE
        );
        return ExitCode::from(dealmesh_runtime::EXIT_CONFIG as u8);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("dealmesh-notify: cannot start runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
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
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "failed");
            eprintln!("dealmesh-notify: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(error: &dealmesh_runtime::config::ConfigError) -> ExitCode {
    eprintln!("dealmesh-notify: configuration: {error}");
    ExitCode::from(dealmesh_runtime::EXIT_CONFIG as u8)
}

async fn serve(config: NotifyConfig) -> anyhow::Result<ExitCode> {
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
