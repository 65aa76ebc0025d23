//! `dealmesh-ingest`: serve the ingest APIs, migrate its database, import
//! a CSV file of deals, or run a sourcing poller once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dealmesh_ingest::app::{self, App};
use dealmesh_ingest::config::IngestConfig;
use dealmesh_ingest::csv_import;
use dealmesh_runtime::launch;
use dealmesh_runtime::shutdown::{self, CancellationToken};

#[derive(Parser)]
#[command(
    name = "dealmesh-ingest",
    version,
    about = "Sources deals into the dealmesh deal log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC, webhooks and the admin endpoints until SIGTERM.
    Serve,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Create the deal log and dead-letter topics if missing, then exit.
    Topics,
    /// Submit one deal to a running ingest server over gRPC and print the
    /// receipt (a client, for scripts and smoke tests).
    Submit {
        /// The server, e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long)]
        idempotency_key: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        website: String,
        #[arg(long, default_value = "")]
        github_owner: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Run every configured search of one poller once, print what each
    /// did, then exit (status 1 if a search failed or is disabled).
    Poll {
        #[arg(value_enum)]
        provider: Provider,
    },
    /// Import deals from a CSV file (header row required; see README).
    Import {
        file: PathBuf,
        /// Source name recorded on every imported deal.
        #[arg(long, default_value = "csv")]
        source: String,
        /// Import the valid rows even if some rows are bad.
        #[arg(long)]
        partial: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Provider {
    Github,
    Crunchbase,
}

/// Exit status when input data is bad (sysexits `EX_DATAERR`).
const EXIT_DATA: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Submit { .. } = &cli.command {
        return submit(cli.command);
    }
    launch::run(
        "dealmesh-ingest",
        IngestConfig::from_source,
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
                    app::MIGRATOR.run(&pool).await?;
                    tracing::info!("migrations applied");
                    Ok(ExitCode::SUCCESS)
                }
                Command::Topics => {
                    let topics = dealmesh_eventlog::topics::provision(&config.kafka).await?;
                    tracing::info!(deals = %topics.deals, dead_letter = %topics.dead_letter, "topics ready");
                    Ok(ExitCode::SUCCESS)
                }
                Command::Import {
                    file,
                    source,
                    partial,
                } => import(config, file, source, partial).await,
                Command::Poll { provider } => poll(config, provider).await,
                Command::Submit { .. } => unreachable!("handled before configuration is read"),
            }
        },
    )
}

async fn import(
    config: IngestConfig,
    file: PathBuf,
    source: String,
    partial: bool,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    if !dealmesh_ingest::validate::is_source_name(&source) {
        eprintln!("--source {source:?}: must be lower-case letters, digits, '-' or '_'");
        return Ok(ExitCode::from(64));
    }
    let reader =
        std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let parsed = csv_import::parse(std::io::BufReader::new(reader), &source);
    let name = file.display().to_string();
    for error in &parsed.errors {
        eprintln!("{name}: {error}");
    }
    if !parsed.errors.is_empty() && !partial {
        eprintln!(
            "{name}: {} bad row(s); nothing imported (use --partial to import the {} good rows)",
            parsed.errors.len(),
            parsed.rows.len()
        );
        return Ok(ExitCode::from(EXIT_DATA));
    }
    let had_errors = !parsed.errors.is_empty();
    let ingestor = app::ingestor(&config, None).await?;
    let correlation_id = uuid::Uuid::now_v7().to_string();
    let report =
        csv_import::import(&ingestor, &parsed.rows, config.max_batch, &correlation_id).await?;
    let duplicates = report.imported.iter().filter(|(_, r)| r.duplicate).count();
    println!(
        "{name}: {} row(s) on the deal log ({} new, {} already there)",
        report.imported.len(),
        report.imported.len() - duplicates,
        duplicates
    );
    for error in &report.errors {
        eprintln!("{name}: {error}");
    }
    Ok(if had_errors || !report.errors.is_empty() {
        ExitCode::from(EXIT_DATA)
    } else {
        ExitCode::SUCCESS
    })
}

async fn poll(config: IngestConfig, provider: Provider) -> anyhow::Result<ExitCode> {
    use dealmesh_ingest::config as keys;
    use dealmesh_ingest::pollers::{self, SharedClock, SystemClock, state::StateStore};
    let missing = match provider {
        Provider::Github if config.github.searches.is_empty() => Some(keys::GITHUB_SEARCHES),
        Provider::Crunchbase if config.crunchbase.searches.is_empty() => {
            Some(keys::CRUNCHBASE_SEARCHES)
        }
        Provider::Crunchbase if config.crunchbase.user_key.is_none() => {
            Some(keys::CRUNCHBASE_USER_KEY)
        }
        _ => None,
    };
    if let Some(key) = missing {
        eprintln!("dealmesh-ingest: configuration: {key} is required to poll");
        return Ok(ExitCode::from(dealmesh_runtime::EXIT_CONFIG as u8));
    }
    let (ingestor, pool) = app::ingestor_and_pool(&config, None).await?;
    let state = StateStore::new(pool);
    let clock: SharedClock = std::sync::Arc::new(SystemClock::default());
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let (name, reports) = match provider {
        Provider::Github => {
            let poller = pollers::github::GithubPoller::new(
                config.github.clone(),
                &config.poller_http,
                ingestor.clone(),
                state,
                clock,
            )?;
            ("github", poller.poll(&token).await)
        }
        Provider::Crunchbase => {
            let poller = pollers::crunchbase::CrunchbasePoller::new(
                config.crunchbase.clone(),
                &config.poller_http,
                ingestor.clone(),
                state,
                clock,
            )?;
            ("crunchbase", poller.poll(&token).await)
        }
    };
    let flushing = ingestor.clone();
    tokio::task::spawn_blocking(move || flushing.flush(std::time::Duration::from_secs(10)))
        .await??;
    let mut ok = true;
    for report in &reports {
        ok &= report.is_ok();
        match (&report.outcome, &report.disabled) {
            _ if report.busy => println!(
                "{name} {:?}: being polled by another process, skipped",
                report.search
            ),
            (_, Some(reason)) => println!("{name} {:?}: disabled: {reason}", report.search),
            (Ok(run), None) if run.not_modified => {
                println!("{name} {:?}: not modified", report.search)
            }
            (Ok(run), None) => println!(
                "{name} {:?}: {} page(s), {} seen, {} new, {} already known, {} skipped{}",
                report.search,
                run.pages,
                run.seen,
                run.emitted,
                run.duplicates,
                run.skipped,
                if run.more { ", more next run" } else { "" }
            ),
            (Err(error), None) => println!("{name} {:?}: failed: {error}", report.search),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `submit` client: needs no server-side configuration.
fn submit(command: Command) -> ExitCode {
    let Command::Submit {
        server,
        idempotency_key,
        source,
        name,
        website,
        github_owner,
        description,
    } = command
    else {
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => return runtime_error(&error),
    };
    let result = runtime.block_on(async move {
        let mut client =
            dealmesh_proto::v1::ingest_service_client::IngestServiceClient::connect(server).await?;
        let deal = dealmesh_proto::v1::DealSubmission {
            idempotency_key,
            source,
            name,
            website,
            github_owner,
            description,
            ..Default::default()
        };
        let receipt = client
            .submit_deal(dealmesh_proto::v1::SubmitDealRequest { deal: Some(deal) })
            .await?
            .into_inner()
            .receipt
            .unwrap_or_default();
        println!(
            "deal {} event {} at partition {} offset {}{}",
            receipt.deal_id,
            receipt.event_id,
            receipt.partition,
            receipt.offset,
            if receipt.duplicate {
                " (duplicate)"
            } else {
                ""
            }
        );
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(status) = error.downcast_ref::<tonic::Status>() {
                eprintln!("dealmesh-ingest: {:?}: {}", status.code(), status.message());
                use tonic_types::StatusExt;
                for v in status
                    .get_details_bad_request()
                    .map(|b| b.field_violations)
                    .unwrap_or_default()
                {
                    eprintln!("  {}: {}", v.field, v.description);
                }
            } else {
                eprintln!("dealmesh-ingest: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime_error(error: &std::io::Error) -> ExitCode {
    eprintln!("dealmesh-ingest: cannot start runtime: {error}");
    ExitCode::from(70)
}
