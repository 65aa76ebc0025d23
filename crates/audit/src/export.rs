//! Exporting every event of a period to a file: JSONL, CSV or Parquet,
//! streamed from the log with constant memory.
//!
//! The file is written to a temporary file beside the target and renamed
//! over it only when complete, so a failed export leaves nothing behind and
//! never half-overwrites an earlier file. An existing file is replaced only
//! with `force`.

mod parquet;

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use dealmesh_eventlog::KafkaSettings;
use dealmesh_proto::DealEvent;
use tracing::{instrument, warn};

use crate::range::{TimeRange, rfc3339};
use crate::reader::{self, LogRecord, Start};
use crate::row::{EventRow, UNKNOWN_TYPE};
use crate::{Error, Result};

/// At most this many undecodable records are listed in a summary; the rest
/// are counted.
pub const MAX_LISTED_SKIPS: usize = 100;

/// The format of an export file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, the payload as a nested object.
    Jsonl,
    /// A header line, then one row per event; the payload is a JSON string.
    Csv,
    /// Apache Parquet, Snappy-compressed, one row group per 1,000 events;
    /// times are UTC timestamps, the payload a JSON string.
    Parquet,
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            _ => Err(Error::BadFormat(s.to_owned())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        })
    }
}

/// A record of the log that is not an event: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

impl fmt::Display for SkippedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} offset {}: {}",
            self.partition, self.offset, self.reason
        )
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub format: Format,
    /// Events written.
    pub rows: u64,
    /// Of which of a type this build does not know (`Unknown`).
    pub unknown: u64,
    /// Records read from the log, in or out of the period.
    pub records_read: u64,
    /// Records that are not events, in log order, at most
    /// [`MAX_LISTED_SKIPS`]; see `skipped_count` for all of them.
    pub skipped: Vec<SkippedRecord>,
    pub skipped_count: u64,
}

/// Writes every event of `topic` that occurred in `range` to `out`.
///
/// Fails before reading anything if `out` exists and `force` is false, or
/// if its directory cannot take a file; fails with
/// [`Error::TopicNotFound`] if the topic does not exist. Records that are
/// not events are skipped with a warning and listed in the summary.
#[instrument(skip_all, fields(%topic, %format, out = %out.display()), err)]
pub async fn export(
    settings: &KafkaSettings,
    topic: &str,
    range: TimeRange,
    format: Format,
    out: &Path,
    force: bool,
) -> Result<ExportSummary> {
    let (settings, topic, out) = (settings.clone(), topic.to_owned(), out.to_owned());
    crate::blocking(move || export_blocking(&settings, &topic, range, format, &out, force)).await
}

fn export_blocking(
    settings: &KafkaSettings,
    topic: &str,
    range: TimeRange,
    format: Format,
    out: &Path,
    force: bool,
) -> Result<ExportSummary> {
    let output = Output::create(out, force)?;
    let file = output.file()?;
    let mut sink: Box<dyn Sink> = match format {
        Format::Jsonl => Box::new(JsonlSink(BufWriter::new(file))),
        Format::Csv => Box::new(CsvSink::new(file)?),
        Format::Parquet => Box::new(parquet::ParquetSink::new(file)?),
    };
    let mut summary = ExportSummary {
        path: out.to_owned(),
        format,
        rows: 0,
        unknown: 0,
        records_read: 0,
        skipped: Vec::new(),
        skipped_count: 0,
    };
    let start = range.from.map_or(Start::Beginning, Start::Around);
    let stats = reader::scan(settings, topic, start, |record| {
        let Some((row, _)) = decode(&record, &mut summary.skipped, &mut summary.skipped_count)
        else {
            return Ok(());
        };
        if !range.contains(row.occurred_at) {
            return Ok(());
        }
        if row.event_type == UNKNOWN_TYPE {
            summary.unknown += 1;
        }
        summary.rows += 1;
        sink.write(&row)
    })?;
    summary.records_read = stats.records;
    sink.finish()?;
    output.commit()?;
    Ok(summary)
}

/// Decodes a record, or records why it is not an event.
pub(crate) fn decode(
    record: &LogRecord,
    skipped: &mut Vec<SkippedRecord>,
    skipped_count: &mut u64,
) -> Option<(EventRow, DealEvent)> {
    match EventRow::from_record(record) {
        Ok((row, event)) => {
            if row.event_type == UNKNOWN_TYPE {
                warn!(
                    partition = row.partition,
                    offset = row.offset,
                    event_id = %row.event_id,
                    "event of a type this build does not know, kept as Unknown"
                );
            }
            Some((row, event))
        }
        Err(err) => {
            warn!(
                partition = record.partition,
                offset = record.offset,
                error = %err,
                "record is not an event, skipped"
            );
            *skipped_count += 1;
            if skipped.len() < MAX_LISTED_SKIPS {
                skipped.push(SkippedRecord {
                    partition: record.partition,
                    offset: record.offset,
                    reason: err.to_string(),
                });
            }
            None
        }
    }
}

/// Where the rows go.
trait Sink {
    fn write(&mut self, row: &EventRow) -> Result<()>;
    /// Writes whatever is buffered and the file's trailer.
    fn finish(self: Box<Self>) -> Result<()>;
}

struct JsonlSink(BufWriter<File>);

impl Sink for JsonlSink {
    fn write(&mut self, row: &EventRow) -> Result<()> {
        serde_json::to_writer(&mut self.0, row)?;
        self.0.write_all(b"\n").map_err(io_error)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.flush().map_err(io_error)
    }
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 24] = [
    "partition",
    "offset",
    "kafka_timestamp",
    "key",
    "event_id",
    "deal_id",
    "type",
    "occurred_at",
    "actor_kind",
    "actor_id",
    "actor_role",
    "actor_display_name",
    "correlation_id",
    "causation_id",
    "expected_version",
    "idempotency_key",
    "payload",
    "raw_base64",
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "ce_specversion",
    "traceparent",
];

struct CsvSink(csv::Writer<BufWriter<File>>);

impl CsvSink {
    fn new(file: File) -> Result<Self> {
        let mut writer = csv::Writer::from_writer(BufWriter::new(file));
        writer.write_record(CSV_COLUMNS)?;
        Ok(Self(writer))
    }
}

impl Sink for CsvSink {
    fn write(&mut self, row: &EventRow) -> Result<()> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let payload = if row.payload.is_null() {
            String::new()
        } else {
            row.payload.to_string()
        };
        self.0.write_record([
            row.partition.to_string(),
            row.offset.to_string(),
            row.kafka_timestamp.map(rfc3339).unwrap_or_default(),
            opt(&row.key),
            row.event_id.clone(),
            row.deal_id.clone(),
            row.event_type.clone(),
            rfc3339(row.occurred_at),
            row.actor_kind.clone(),
            row.actor_id.clone(),
            row.actor_role.clone(),
            row.actor_display_name.clone(),
            row.correlation_id.clone(),
            row.causation_id.clone(),
            row.expected_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            row.idempotency_key.clone(),
            payload,
            opt(&row.raw_base64),
            opt(&row.ce_id),
            opt(&row.ce_type),
            opt(&row.ce_source),
            opt(&row.ce_time),
            opt(&row.ce_specversion),
            opt(&row.traceparent),
        ])?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.0.flush().map_err(io_error)
    }
}

fn io_error(source: std::io::Error) -> Error {
    Error::Write(source)
}

/// The output file while it is written: a temporary file in the target's
/// directory, renamed over the target by [`Output::commit`], removed if
/// dropped before.
struct Output {
    temp: tempfile::NamedTempFile,
    path: PathBuf,
    force: bool,
}

impl Output {
    fn create(path: &Path, force: bool) -> Result<Self> {
        let err = |source| Error::Output {
            path: path.to_owned(),
            source,
        };
        if path.is_dir() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a directory",
            )));
        }
        if !force && path.exists() {
            return Err(Error::OutputExists(path.to_owned()));
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(err)?;
        Ok(Self {
            temp,
            path: path.to_owned(),
            force,
        })
    }

    fn file(&self) -> Result<File> {
        self.temp
            .as_file()
            .try_clone()
            .map_err(|source| Error::Output {
                path: self.path.clone(),
                source,
            })
    }

    fn commit(self) -> Result<()> {
        let path = self.path;
        let err = |source| Error::Output {
            path: path.clone(),
            source,
        };
        self.temp.as_file().sync_all().map_err(err)?;
        if self.force {
            self.temp.persist(&path).map_err(|e| err(e.error))?;
        } else {
            // Refuses to replace a file that appeared while exporting.
            self.temp
                .persist_noclobber(&path)
                .map_err(|e| match e.error.kind() {
                    std::io::ErrorKind::AlreadyExists => Error::OutputExists(path.clone()),
                    _ => err(e.error),
                })?;
        }
        Ok(())
    }
}
