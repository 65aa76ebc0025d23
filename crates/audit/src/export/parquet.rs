//! The Parquet writer: the low-level column API of the `parquet` crate (no
//! Arrow, which would double the build), one row group per
//! [`ROW_GROUP_ROWS`] events, so at most that many rows are in memory.

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::parser::parse_message_type;

use super::Sink;
use crate::Result;
use crate::row::EventRow;

/// Rows per row group.
pub const ROW_GROUP_ROWS: usize = 1_000;

/// The file's schema. Times are UTC instants; the payload is the same JSON
/// as in the JSONL export, as a string; `expected_version` is unsigned.
const SCHEMA: &str = "
message dealmesh_event {
  required int32 partition;
  required int64 offset;
  optional int64 kafka_timestamp (TIMESTAMP(MILLIS,true));
  optional binary key (STRING);
  required binary event_id (STRING);
  required binary deal_id (STRING);
  required binary type (STRING);
  required int64 occurred_at (TIMESTAMP(MICROS,true));
  required binary actor_kind (STRING);
  required binary actor_id (STRING);
  required binary actor_role (STRING);
  required binary actor_display_name (STRING);
  required binary correlation_id (STRING);
  required binary causation_id (STRING);
  optional int64 expected_version (INTEGER(64,false));
  required binary idempotency_key (STRING);
  optional binary payload (STRING);
  optional binary raw_base64 (STRING);
  optional binary ce_id (STRING);
  optional binary ce_type (STRING);
  optional binary ce_source (STRING);
  optional binary ce_time (STRING);
  optional binary ce_specversion (STRING);
  optional binary traceparent (STRING);
}
";

pub(super) struct ParquetSink {
    writer: SerializedFileWriter<BufWriter<File>>,
    rows: Vec<EventRow>,
}

impl ParquetSink {
    pub(super) fn new(file: File) -> Result<Self> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let properties = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_created_by(format!("dealmesh-audit {}", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        Ok(Self {
            writer: SerializedFileWriter::new(BufWriter::new(file), schema, properties)?,
            rows: Vec::with_capacity(ROW_GROUP_ROWS),
        })
    }

    fn flush_row_group(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            write_column(&mut column, index, &rows)?;
            column.close()?;
            index += 1;
        }
        group.close()?;
        self.rows = rows;
        self.rows.clear();
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, row: &EventRow) -> Result<()> {
        self.rows.push(row.clone());
        if self.rows.len() >= ROW_GROUP_ROWS {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.flush_row_group()?;
        let mut inner = self.writer.into_inner()?;
        std::io::Write::flush(&mut inner).map_err(crate::Error::Write)?;
        Ok(())
    }
}

/// Writes column `index` of [`SCHEMA`] for `rows`.
fn write_column(
    column: &mut SerializedColumnWriter<'_>,
    index: usize,
    rows: &[EventRow],
) -> Result<()> {
    let text = |f: fn(&EventRow) -> &str| rows.iter().map(|r| Some(f(r).to_owned())).collect();
    let opt_text =
        |f: fn(&EventRow) -> Option<&String>| rows.iter().map(|r| f(r).cloned()).collect();
    match index {
        0 => {
            let values: Vec<i32> = rows.iter().map(|r| r.partition).collect();
            column
                .typed::<Int32Type>()
                .write_batch(&values, None, None)?;
        }
        1 => int64(column, rows.iter().map(|r| Some(r.offset)).collect(), true)?,
        2 => int64(
            column,
            rows.iter()
                .map(|r| r.kafka_timestamp.map(|t| t.timestamp_millis()))
                .collect(),
            false,
        )?,
        3 => strings(column, opt_text(|r| r.key.as_ref()), false)?,
        4 => strings(column, text(|r| &r.event_id), true)?,
        5 => strings(column, text(|r| &r.deal_id), true)?,
        6 => strings(column, text(|r| &r.event_type), true)?,
        7 => int64(
            column,
            rows.iter()
                .map(|r| Some(r.occurred_at.timestamp_micros()))
                .collect(),
            true,
        )?,
        8 => strings(column, text(|r| &r.actor_kind), true)?,
        9 => strings(column, text(|r| &r.actor_id), true)?,
        10 => strings(column, text(|r| &r.actor_role), true)?,
        11 => strings(column, text(|r| &r.actor_display_name), true)?,
        12 => strings(column, text(|r| &r.correlation_id), true)?,
        13 => strings(column, text(|r| &r.causation_id), true)?,
        // The unsigned logical type tells readers to read the bits back
        // as u64.
        14 => int64(
            column,
            rows.iter()
                .map(|r| r.expected_version.map(|v| v as i64))
                .collect(),
            false,
        )?,
        15 => strings(column, text(|r| &r.idempotency_key), true)?,
        16 => strings(
            column,
            rows.iter()
                .map(|r| (!r.payload.is_null()).then(|| r.payload.to_string()))
                .collect(),
            false,
        )?,
        17 => strings(column, opt_text(|r| r.raw_base64.as_ref()), false)?,
        18 => strings(column, opt_text(|r| r.ce_id.as_ref()), false)?,
        19 => strings(column, opt_text(|r| r.ce_type.as_ref()), false)?,
        20 => strings(column, opt_text(|r| r.ce_source.as_ref()), false)?,
        21 => strings(column, opt_text(|r| r.ce_time.as_ref()), false)?,
        22 => strings(column, opt_text(|r| r.ce_specversion.as_ref()), false)?,
        23 => strings(column, opt_text(|r| r.traceparent.as_ref()), false)?,
        _ => {
            return Err(parquet::errors::ParquetError::General(format!(
                "schema column {index} has no writer"
            ))
            .into());
        }
    }
    Ok(())
}

/// Definition levels of an optional column (1 present, 0 null), or none for
/// a required one.
fn levels<T>(values: &[Option<T>], required: bool) -> Option<Vec<i16>> {
    (!required).then(|| values.iter().map(|v| i16::from(v.is_some())).collect())
}

fn int64(
    column: &mut SerializedColumnWriter<'_>,
    values: Vec<Option<i64>>,
    required: bool,
) -> Result<()> {
    let levels = levels(&values, required);
    let present: Vec<i64> = values.into_iter().flatten().collect();
    column
        .typed::<Int64Type>()
        .write_batch(&present, levels.as_deref(), None)?;
    Ok(())
}

fn strings(
    column: &mut SerializedColumnWriter<'_>,
    values: Vec<Option<String>>,
    required: bool,
) -> Result<()> {
    let levels = levels(&values, required);
    let present: Vec<ByteArray> = values
        .into_iter()
        .flatten()
        .map(|s| ByteArray::from(s.into_bytes()))
        .collect();
    column
        .typed::<ByteArrayType>()
        .write_batch(&present, levels.as_deref(), None)?;
    Ok(())
}
