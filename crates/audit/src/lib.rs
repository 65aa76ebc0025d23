//! Reading the deal log for audits: a deal's history, and an export of every
//! event of a period (JSONL, CSV, Parquet) streamed with constant memory,
//! plus a per-partition hash chain to prove a range of the log unaltered.
//!
//! The log is read without a consumer group and without commits: an audit
//! never moves anyone's offsets. Each partition is read from its start
//! position to its end as the broker reports it while reading (partition
//! EOF), one partition after the other, so an export lists each partition's
//! records in offset order.
//!
//! Time filters use the envelope's `occurred_at`, the time the fact
//! happened, not the Kafka record timestamp (see [`reader`] for how the start
//! offset is found from it).
//!
//! ```no_run
//! # async fn example(settings: dealmesh_eventlog::KafkaSettings) -> dealmesh_audit::Result<()> {
//! use dealmesh_audit::{Format, TimeRange};
//! let topic = dealmesh_eventlog::Topics::new(&settings.topic_prefix).deals;
//! let range = TimeRange::parse(Some("2026-11-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"))?;
//! let summary = dealmesh_audit::export(
//!     &settings, &topic, range, Format::Parquet, "november.parquet".as_ref(), false,
//! ).await?;
//! println!("{} events written to {}", summary.rows, summary.path.display());
//! # Ok(()) }
//! ```

pub mod chain;
pub mod cli;
pub mod export;
pub mod history;
pub mod range;
pub mod reader;
pub mod row;
pub mod samples;

use std::path::PathBuf;

pub use chain::{
    ChainCheckpoint, ChainMismatch, ChainVerification, ChainVerifier, HashChain, verify_chain,
};
pub use export::{ExportSummary, Format, SkippedRecord, export};
pub use history::{HistoryEntry, history, render_history};
pub use range::TimeRange;
pub use reader::LogRecord;
pub use row::EventRow;

/// Errors of an audit. Each message is meant for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} {value:?} is not an RFC 3339 time, e.g. 2026-11-23T10:00:00Z")]
    BadTime { flag: &'static str, value: String },
    #[error("--from {from} is not before --to {to}")]
    EmptyRange { from: String, to: String },
    #[error("unknown format {0:?}: expected jsonl, csv or parquet")]
    BadFormat(String),
    #[error("cannot tell the format of {} from its name: give --format jsonl, csv or parquet", .0.display())]
    UnknownExtension(PathBuf),
    #[error("a deal id is required")]
    EmptyDealId,
    #[error("bad checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("deal {deal_id} has no events in topic {topic}")]
    UnknownDeal { deal_id: String, topic: String },
    #[error("{} already exists; pass --force to replace it", .0.display())]
    OutputExists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the broker sent nothing for partition {partition} of {topic} in {seconds} s")]
    Stalled {
        topic: String,
        partition: i32,
        seconds: u64,
    },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the reading task failed: {0}")]
    Task(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs blocking librdkafka and file work off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Error::Task(err.to_string()))?
}
