//! The `rebuild` and `audit` subcommands of `dealmesh-crm`: arguments and
//! what they do, against the CRM's configuration (DATABASE_URL,
//! DEALMESH_CRM_SCHEMA, the Kafka settings and the deal log's topic).
//!
//! Progress goes to stderr (a line redrawn in place on a terminal,
//! structured logs otherwise), results to stdout. Exit status as sysexits:
//! 64 bad arguments or an existing target schema, 66 no such database,
//! topic or checkpoints, 69 PostgreSQL or the broker unavailable, 70
//! anything else; `audit verify` exits 1 when it finds a difference.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dealmesh_eventlog::Topics;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::CrmConfig;
use crate::replay::{self, Progress, ReplaySettings};
use crate::{checksum, rebuild, verify};

/// `dealmesh-crm rebuild`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RebuildArgs {
    /// Swap the rebuilt schema in for the live one once it has caught up
    /// (see the README: projectors of older builds must be stopped first).
    #[arg(long)]
    pub swap: bool,
    /// With --swap: how long the retired schema is kept before it is
    /// dropped, e.g. 10m, 30s, 0s.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub drop_after: Duration,
    /// With --swap: never drop the retired schema.
    #[arg(long)]
    pub keep_retired: bool,
    /// The schema to build into (must not exist). Default:
    /// `<live>_rebuild_<UTC timestamp>`.
    #[arg(long)]
    pub into: Option<String>,
}

/// `dealmesh-crm audit ...`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AuditCommand {
    #[command(flatten)]
    Log(dealmesh_audit::cli::AuditCommand),
    /// Rebuild the read model exactly as it stood at an instant (by the
    /// events' occurred_at) into a new schema, for plain SQL.
    Snapshot {
        /// The instant, RFC 3339, e.g. 2026-11-01T00:00:00Z.
        #[arg(long)]
        as_of: String,
        /// The schema to create (must not exist).
        #[arg(long)]
        into: String,
    },
    /// Print a stable checksum of every table of a schema.
    Checksum {
        /// Default: DEALMESH_CRM_SCHEMA.
        #[arg(long)]
        schema: Option<String>,
    },
    /// Re-read the log against the projector's hash checkpoints and report
    /// the first record that differs; then compare the read model with a
    /// rebuild of the same offsets.
    Verify {
        /// Read this topic instead of the deal log (e.g. a restored copy).
        #[arg(long)]
        topic: Option<String>,
        /// Only check the log, not the read model.
        #[arg(long)]
        log_only: bool,
    },
}

/// `250ms`, `30s`, `10m`, `1h`; a bare number is seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 30s, 10m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{value:?} is not a duration like 30s, 10m or 1h")),
    }
}

fn replay_settings(config: &CrmConfig, schema: &str) -> ReplaySettings {
    ReplaySettings {
        kafka: config.kafka.clone(),
        topic: Topics::new(&config.kafka.topic_prefix).deals,
        schema: schema.to_owned(),
        initial_stage: config.pipeline.initial_stage().to_owned(),
        batch_size: config.batch_size,
        as_of: None,
        until: None,
    }
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!(error = %error, "failed");
    eprintln!("dealmesh-crm: {error}");
    ExitCode::from(code)
}

/// Runs `f` with a progress display on stderr.
async fn with_progress<T>(f: impl AsyncFnOnce(Arc<Progress>) -> T) -> T {
    let progress = Arc::new(Progress::default());
    let done = CancellationToken::new();
    let display = tokio::spawn(replay::report_progress(progress.clone(), done.clone()));
    let result = f(progress).await;
    done.cancel();
    let _ = display.await;
    result
}

/// `dealmesh-crm rebuild`.
pub async fn rebuild(args: &RebuildArgs, config: &CrmConfig) -> ExitCode {
    let target = args
        .into
        .clone()
        .unwrap_or_else(|| rebuild::stamped(&config.schema, "rebuild"));
    let settings = rebuild::RebuildSettings {
        database_url: config.database_url.expose_secret().to_owned(),
        live_schema: config.schema.clone(),
        replay: replay_settings(config, &target),
        max_connections: config.database_max_connections,
        swap: args.swap,
        drop_after: (!args.keep_retired).then_some(args.drop_after),
    };
    match with_progress(async |p| rebuild::rebuild(&settings, p).await).await {
        Ok(report) => {
            println!(
                "rebuilt {} records into {} ({} applied, {} rejected)",
                report.replay.records,
                report.built,
                report.replay.batch.applied,
                report.replay.batch.rejected
            );
            if let Some(retired) = &report.retired {
                println!(
                    "swapped: {} now serves as {}; the old one {} as {retired}",
                    report.built,
                    config.schema,
                    if report.dropped {
                        "was dropped"
                    } else {
                        "is kept"
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => fail(error.exit_code(), &error),
    }
}

/// `dealmesh-crm audit ...`.
pub async fn audit(command: &AuditCommand, config: &CrmConfig, out: &mut impl Write) -> ExitCode {
    let topic = Topics::new(&config.kafka.topic_prefix).deals;
    let url = config.database_url.expose_secret().to_owned();
    match command {
        AuditCommand::Log(log) => {
            match dealmesh_audit::cli::run(log, &config.kafka, &topic, out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(error.exit_code(), &error),
            }
        }
        AuditCommand::Snapshot { as_of, into } => {
            let as_of = match replay::parse_as_of(as_of) {
                Ok(t) => t,
                Err(error) => return fail(error.exit_code(), &error),
            };
            let mut settings = replay_settings(config, into);
            settings.as_of = Some(as_of);
            let result = with_progress(async |p| {
                let pool =
                    replay::create_schema(&url, into, config.database_max_connections).await?;
                let report = replay::replay(&pool, &settings, p).await;
                pool.close().await;
                report
            })
            .await;
            match result {
                Ok(report) => {
                    let _ = writeln!(
                        out,
                        "schema {into} holds the read model as of {} ({} events applied, {} \
                         rejected; {} later ones left out)",
                        as_of.to_rfc3339(),
                        report.batch.applied,
                        report.batch.rejected,
                        report.after_as_of
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => fail(error.exit_code(), &error),
            }
        }
        AuditCommand::Checksum { schema } => {
            let schema = schema.clone().unwrap_or_else(|| config.schema.clone());
            let result = async {
                let pool = replay::connect_existing(&url, &schema).await?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                )
                .bind(&schema)
                .fetch_one(&pool)
                .await
                .map_err(replay::Error::from)?;
                if !exists {
                    return Err(replay::Error::Setup(format!(
                        "schema {schema} does not exist"
                    )));
                }
                let sums = checksum::checksums(&pool, &schema)
                    .await
                    .map_err(replay::Error::from);
                pool.close().await;
                sums
            }
            .await;
            match result {
                Ok(sums) => {
                    let _ = write!(out, "{}", checksum::render(&sums));
                    ExitCode::SUCCESS
                }
                Err(error) => fail(error.exit_code(), &error),
            }
        }
        AuditCommand::Verify {
            topic: read,
            log_only,
        } => {
            let read = read.clone().unwrap_or_else(|| topic.clone());
            match verify_all(config, &url, &topic, &read, *log_only, out).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => fail(error.exit_code(), &error),
            }
        }
    }
}

/// Whether everything matched.
async fn verify_all(
    config: &CrmConfig,
    url: &str,
    topic: &str,
    read: &str,
    log_only: bool,
    out: &mut impl Write,
) -> Result<bool, verify::Error> {
    let pool = replay::connect_existing(url, &config.schema).await?;
    let checkpoints = verify::checkpoints(&pool, &config.schema, topic).await;
    pool.close().await;
    let checkpoints = checkpoints?;
    if checkpoints.is_empty() {
        return Err(verify::Error::NoCheckpoints {
            schema: config.schema.clone(),
            topic: topic.to_owned(),
        });
    }
    let results = verify::verify_log(&config.kafka, read, &checkpoints).await?;
    let _ = write!(out, "{}", verify::render_chain(&results));
    let mut ok = results.iter().all(|r| r.first_mismatch.is_none());
    if log_only {
        return Ok(ok);
    }
    let scratch = rebuild::stamped(&config.schema, "verify");
    let template = replay_settings(config, &scratch);
    let comparison = with_progress(async |p| {
        verify::compare_with_rebuild(
            url,
            &config.schema,
            &scratch,
            &template,
            config.database_max_connections,
            p,
        )
        .await
    })
    .await?;
    if comparison.differing.is_empty() {
        let _ = writeln!(
            out,
            "read model: every table matches a rebuild of the same {} records",
            comparison.offsets.values().sum::<i64>()
        );
    } else {
        ok = false;
        let _ = writeln!(
            out,
            "read model: DIFFERS from a rebuild of the same offsets in: {}",
            comparison.differing.join(", ")
        );
    }
    Ok(ok)
}
