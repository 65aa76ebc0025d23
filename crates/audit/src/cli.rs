//! The `audit` subcommands as clap arguments, for a service binary to mount
//! (`dealmesh-crm audit history|export`), and [`run`] to carry one out.
//!
//! ```text
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     /// Read the deal log for audits.
//!     #[command(subcommand)]
//!     Audit(dealmesh_audit::cli::AuditCommand),
//! }
//! // ...
//! Command::Audit(audit) => {
//!     let topic = Topics::new(&config.kafka.topic_prefix).deals;
//!     match dealmesh_audit::cli::run(&audit, &config.kafka, &topic, &mut std::io::stdout()).await {
//!         Ok(()) => ExitCode::SUCCESS,
//!         Err(err) => {
//!             eprintln!("dealmesh-crm audit: {err}");
//!             ExitCode::from(err.exit_code())
//!         }
//!     }
//! }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use dealmesh_eventlog::KafkaSettings;

use crate::{Error, Format, Result, TimeRange, export, history, render_history};

/// Reading the deal log for audits.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AuditCommand {
    /// Print a deal's events in log order: time, actor, type, what changed,
    /// what caused it.
    History {
        /// The deal id.
        #[arg(long)]
        deal: String,
        /// One JSON object per event and line (the export's fields plus
        /// `change`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write every event that occurred in a period (by the envelope's
    /// occurred_at, from inclusive, to exclusive) to a file, with its
    /// envelope and headers.
    Export {
        /// Start of the period, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
        /// Default: the beginning of the log.
        #[arg(long)]
        from: Option<String>,
        /// End of the period (exclusive), RFC 3339. Default: the end of the
        /// log as it is when the export starts.
        #[arg(long)]
        to: Option<String>,
        /// jsonl, csv or parquet. Default: from the file name's extension.
        #[arg(long)]
        format: Option<String>,
        /// The file to write; written beside it under a temporary name and
        /// renamed when complete.
        #[arg(long)]
        out: PathBuf,
        /// Replace `--out` if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Carries out `command` against the deal log `topic`, printing to `out`.
pub async fn run(
    command: &AuditCommand,
    settings: &KafkaSettings,
    topic: &str,
    out: &mut impl Write,
) -> Result<()> {
    match command {
        AuditCommand::History { deal, json } => {
            let entries = history(settings, topic, deal).await?;
            if *json {
                for entry in &entries {
                    serde_json::to_writer(&mut *out, entry)?;
                    writeln!(out).map_err(Error::Write)?;
                }
            } else {
                render_history(&entries, out).map_err(Error::Write)?;
            }
            Ok(())
        }
        AuditCommand::Export {
            from,
            to,
            format,
            out: path,
            force,
        } => {
            let range = TimeRange::parse(from.as_deref(), to.as_deref())?;
            let format = match format {
                Some(format) => format.parse()?,
                None => format_of(path)?,
            };
            let summary = export(settings, topic, range, format, path, *force).await?;
            let write = |out: &mut dyn Write| -> std::io::Result<()> {
                write!(
                    out,
                    "wrote {} event{} to {} ({})",
                    summary.rows,
                    if summary.rows == 1 { "" } else { "s" },
                    summary.path.display(),
                    summary.format
                )?;
                if summary.unknown > 0 {
                    write!(
                        out,
                        ", {} of a type this version does not know (type Unknown)",
                        summary.unknown
                    )?;
                }
                writeln!(out)?;
                for skipped in &summary.skipped {
                    writeln!(out, "skipped a record that is not an event: {skipped}")?;
                }
                let unlisted = summary.skipped_count - summary.skipped.len() as u64;
                if unlisted > 0 {
                    writeln!(out, "skipped {unlisted} more records that are not events")?;
                }
                Ok(())
            };
            write(out).map_err(Error::Write)
        }
    }
}

/// The format named by a file's extension.
fn format_of(path: &Path) -> Result<Format> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    extension
        .parse()
        .map_err(|_| Error::UnknownExtension(path.to_owned()))
}

impl Error {
    /// The process exit status for this error (sysexits.h): 64 bad
    /// arguments, 66 no such topic or deal, 73 cannot write the output, 69
    /// broker unavailable, 70 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadTime { .. }
            | Error::EmptyRange { .. }
            | Error::BadFormat(_)
            | Error::UnknownExtension(_)
            | Error::EmptyDealId
            | Error::BadCheckpoint(_)
            | Error::OutputExists(_) => 64,
            Error::TopicNotFound(_)
            | Error::UnknownPartition { .. }
            | Error::UnknownDeal { .. } => 66,
            Error::Output { .. } | Error::Write(_) => 73,
            Error::Kafka(_) | Error::Stalled { .. } => 69,
            Error::Parquet(_) | Error::Csv(_) | Error::Json(_) | Error::Task(_) => 70,
        }
    }
}
