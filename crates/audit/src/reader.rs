//! A streaming reader of a whole topic: every partition, from a start
//! position to its end as the broker reports it while reading, one record
//! at a time, so memory stays constant however long the log.
//!
//! The end of a partition is where librdkafka reports partition EOF (the
//! high watermark of the fetch responses), not `fetch_watermarks`: tansu
//! 0.6's memory engine answers ListOffsets(latest) with the base offset of
//! the last batch + 1, which would cut multi-record batches short.
//!
//! Starting at a time: the envelope's `occurred_at` decides what is in a
//! period, but only the Kafka record timestamp can be looked up
//! (`offsets_for_times`). A record is published after its event occurred, so
//! its Kafka timestamp is normally later than `occurred_at`; reading starts
//! at the first record stamped at most [`SEEK_SLACK`] before `from`, which
//! also tolerates producers whose clocks run that much behind. Records are
//! then filtered by `occurred_at` by the caller.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dealmesh_eventlog::KafkaSettings;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, instrument};

use crate::{Error, Result};

/// How far before `from` (by Kafka timestamp) reading starts.
pub const SEEK_SLACK: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// How long the broker may send nothing at all before the read fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one metadata or offset lookup.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// One record of the log, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record timestamp, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In record order; a header without a value reads as an empty value.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where each partition is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// The first record whose Kafka timestamp is at least [`SEEK_SLACK`]
    /// before this time.
    Around(DateTime<Utc>),
}

/// What a scan read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub partitions: usize,
    pub records: u64,
}

/// Reads every partition of `topic` from `start` to its end, partition by
/// partition in id order, calling `visit` for each record in offset order.
/// An error from `visit` stops the scan and is returned. Blocking: call it
/// from `spawn_blocking`.
#[instrument(skip_all, fields(%topic), err)]
pub fn scan(
    settings: &KafkaSettings,
    topic: &str,
    start: Start,
    mut visit: impl FnMut(LogRecord) -> Result<()>,
) -> Result<ScanStats> {
    let consumer = reader(settings)?;
    let partitions = partition_ids(&consumer, topic)?;
    let starts = start_offsets(&consumer, topic, &partitions, start)?;
    let mut stats = ScanStats {
        partitions: partitions.len(),
        records: 0,
    };
    for (partition, offset) in starts {
        let Some(offset) = offset else {
            debug!(partition, "no record from the start time on");
            continue;
        };
        stats.records += read_partition(&consumer, topic, partition, offset, &mut |record| {
            visit(record).map(|()| true)
        })?;
    }
    Ok(stats)
}

/// Reads one partition of `topic` from `start` to its end, calling `visit`
/// for each record in offset order until it returns `false`. Blocking.
#[instrument(skip_all, fields(%topic, partition), err)]
pub fn scan_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    start: Offset,
    mut visit: impl FnMut(LogRecord) -> Result<bool>,
) -> Result<u64> {
    let consumer = reader(settings)?;
    if !partition_ids(&consumer, topic)?.contains(&partition) {
        return Err(Error::UnknownPartition {
            topic: topic.to_owned(),
            partition,
        });
    }
    read_partition(&consumer, topic, partition, start, &mut visit)
}

fn read_partition(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    offset: Offset,
    visit: &mut impl FnMut(LogRecord) -> Result<bool>,
) -> Result<u64> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, offset)?;
    consumer.assign(&assignment)?;
    let mut read = 0;
    let mut last_heard = Instant::now();
    loop {
        match consumer.poll(POLL_INTERVAL) {
            None => {
                if last_heard.elapsed() > STALL_TIMEOUT {
                    return Err(Error::Stalled {
                        topic: topic.to_owned(),
                        partition,
                        seconds: STALL_TIMEOUT.as_secs(),
                    });
                }
            }
            Some(Err(KafkaError::PartitionEOF(eof))) if eof == partition => break,
            Some(Err(KafkaError::PartitionEOF(_))) => last_heard = Instant::now(),
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(message)) => {
                last_heard = Instant::now();
                if message.partition() != partition {
                    continue;
                }
                read += 1;
                let more = visit(LogRecord {
                    partition,
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                })?;
                if !more {
                    break;
                }
            }
        }
    }
    consumer.unassign()?;
    debug!(partition, records = read, "partition read");
    Ok(read)
}

/// The offset each partition is read from; `None` when no record was
/// published from the start time on.
fn start_offsets(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    partitions: &[i32],
    start: Start,
) -> Result<Vec<(i32, Option<Offset>)>> {
    let Start::Around(at) = start else {
        return Ok(partitions
            .iter()
            .map(|&p| (p, Some(Offset::Beginning)))
            .collect());
    };
    let seek_ms = (at - SEEK_SLACK).timestamp_millis().max(0);
    let mut query = TopicPartitionList::new();
    for &partition in partitions {
        query.add_partition_offset(topic, partition, Offset::Offset(seek_ms))?;
    }
    let found = consumer.offsets_for_times(query, REQUEST_TIMEOUT)?;
    Ok(partitions
        .iter()
        .map(|&partition| {
            let offset = match found.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(offset)) => Some(Offset::Offset(offset)),
                Some(Offset::End) => None,
                // Anything else: read the whole partition rather than miss
                // a record.
                _ => Some(Offset::Beginning),
            };
            (partition, offset)
        })
        .collect())
}

/// A consumer that only reads: a throwaway group id (librdkafka wants one),
/// no commits, no topic auto-creation, partition EOF reported.
fn reader(settings: &KafkaSettings) -> Result<BaseConsumer<ReaderContext>> {
    let mut config = settings.client_config();
    config
        .set("group.id", format!("dealmesh-audit-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        // The end of a partition is only seen on a fetch that finds nothing
        // new, which the broker holds up to this long; partitions are read
        // one after the other, so this is paid once per partition.
        .set("fetch.wait.max.ms", "100");
    // Passthrough properties win, as everywhere else.
    for (key, value) in &settings.passthrough {
        config.set(key, value);
    }
    Ok(config.create_with_context(ReaderContext)?)
}

/// The partition ids of `topic`, in order.
pub(crate) fn partition_ids(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
) -> Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions: BTreeSet<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::TopicNotFound(topic.to_owned()));
    }
    Ok(partitions.into_iter().collect())
}

/// librdkafka reports reaching the end of a partition as an error event,
/// which the default context logs at error level; here it is the expected
/// end of a read, so it is not logged. Every other error is.
pub(crate) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
        ) {
            DefaultClientContext.error(error, reason);
        }
    }
}

impl ConsumerContext for ReaderContext {}
