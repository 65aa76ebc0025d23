//! `dealmesh-enrich`: enrich sourced deals until SIGTERM, or create the
//! topics.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use dealmesh_enrich::app::{self, App};
use dealmesh_enrich::config::EnrichConfig;
use dealmesh_enrich::handler::CE_SOURCE;
use dealmesh_enrich::provider::ProviderMetrics;
use dealmesh_enrich::redrive;
use dealmesh_eventlog::{EventProducer, Topics};
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
    /// Enrich again the deals whose enrichment failed for a reason that
    /// passes (a provider down, rate limited, timing out), and append the
    /// outcomes. Exits 0 when every due deal was enriched (or none was due),
    /// 75 when some failed again (they are due at the next run).
    Redrive {
        /// Only failures from this time on (RFC 3339); default: the whole log.
        #[arg(long, conflicts_with = "since")]
        from: Option<String>,
        /// Only failures of this last while, e.g. `48h`, `7d` (for a
        /// scheduled run).
        #[arg(long)]
        since: Option<String>,
        /// List the due deals; enrich nothing, append nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// sysexits `EX_TEMPFAIL`: some deals failed again; a later run may succeed.
const EXIT_FAILED_AGAIN: u8 = 75;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // redrive prints its report on stdout, where the logs also go.
    let reporting = matches!(cli.command, Command::Redrive { .. });
    launch::run_reporting(
        "dealmesh-enrich",
        reporting,
        EnrichConfig::from_source,
        |config| async move {
            match cli.command {
                Command::Serve => {
                    let grace = config.shutdown_grace;
                    launch::serve(grace, |shutdown| async move {
                        App::build(config).await?.run(shutdown).await
                    })
                    .await
                }
                Command::Topics => {
                    let topics = dealmesh_eventlog::topics::provision(&config.kafka).await?;
                    tracing::info!(deals = %topics.deals, dead_letter = %topics.dead_letter, "topics ready");
                    Ok(ExitCode::SUCCESS)
                }
                Command::Redrive {
                    from,
                    since,
                    dry_run,
                } => redrive(&config, from.as_deref(), since.as_deref(), dry_run).await,
            }
        },
    )
}

async fn redrive(
    config: &EnrichConfig,
    from: Option<&str>,
    since: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let usage = |message: String| {
        eprintln!("dealmesh-enrich: {message}");
        Ok(ExitCode::from(64))
    };
    let from = match (from, since) {
        (Some(text), _) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(at) => Some(at.with_timezone(&chrono::Utc)),
            Err(_) => {
                return usage(format!(
                    "--from {text:?} is not an RFC 3339 time, e.g. 2026-11-23T10:00:00Z"
                ));
            }
        },
        (None, Some(text)) => {
            let window = dealmesh_runtime::config::parse_duration(text)
                .ok()
                .and_then(|d| chrono::TimeDelta::from_std(d).ok());
            match window {
                Some(window) => Some(chrono::Utc::now() - window),
                None => return usage(format!("--since {text:?}: expected e.g. 48h, 7d")),
            }
        }
        (None, None) => None,
    };
    let topics = Topics::new(&config.kafka.topic_prefix);
    let scan = redrive::scan(&config.kafka, &topics.deals, from).await?;
    let mut skipped = Vec::new();
    if scan.without_sighting > 0 {
        skipped.push(format!(
            "{} failures whose DealSourced is before the window",
            scan.without_sighting
        ));
    }
    if scan.undecodable > 0 {
        skipped.push(format!(
            "{} records that are not deal events",
            scan.undecodable
        ));
    }
    println!(
        "read {} records of {}: {} deals due{}",
        scan.records,
        topics.deals,
        scan.due.len(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped: {})", skipped.join(", "))
        }
    );
    if dry_run {
        for due in &scan.due {
            println!("due {} ({})", due.sourced.deal_id, due.reason());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if scan.due.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let producer = EventProducer::new(&config.kafka, topics, CE_SOURCE)?;
    let enricher = Arc::new(app::enricher(config, ProviderMetrics::default())?);
    // Each outcome is acknowledged by the broker before it is counted.
    let redriven = redrive::redrive(enricher, &producer, scan.due, config.concurrency).await?;
    let mut failed_again = 0;
    for deal in &redriven {
        match &deal.failed_again {
            None => println!(
                "enriched {} {:?} (was {})",
                deal.deal_id, deal.name, deal.was
            ),
            Some(reason) => {
                failed_again += 1;
                println!("failed again {} {:?}: {reason}", deal.deal_id, deal.name);
            }
        }
    }
    println!(
        "{} enriched, {failed_again} failed again",
        redriven.len() - failed_again
    );
    Ok(if failed_again == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED_AGAIN)
    })
}
