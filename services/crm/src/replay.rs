//! Replaying the deal log into a fresh schema: the same migrations and the
//! same apply path as the live projector ([`Projector::project_batch`]),
//! from the first offset of every partition to the end of the log as the
//! broker reports it while reading (partition EOF, not the high watermark,
//! which tansu's memory engine undercounts).
//!
//! Partitions replay in parallel, each with its own transactions: a reader
//! task fills the next batch while a writer projects the current one.
//! Replay batches commit without waiting for the WAL flush
//! ([`Projector::with_async_commit`]): a crash of PostgreSQL can lose the
//! last batches, but whole, offsets included, so a rerun replays them. A
//! fresh schema gets its secondary indexes after the replay, not during it.
//! A deal's events all live in one partition (the log is keyed by deal id)
//! and the projection locks the deals of a batch by id, so a deal's rows
//! never depend on how the partitions interleave. Two effects reach across
//! deals and therefore across partitions: `DealsMerged` and `DealsUnmerged`
//! set `merged_into` on *other* deals. Their outcome would depend on the
//! interleaving (a merge seen before the merged deal's first event finds no
//! row to mark; two merges of one deal from two partitions race), so once
//! every partition is done, [`settle_merges`] recomputes `merged_into` from
//! the applied merge and unmerge events in a fixed order (`occurred_at`,
//! then partition, then offset), against every deal the replay created.
//! That makes two replays of one log identical; it can differ from a live
//! read model only where the live one saw such a race.
//!
//! A replay "as of" a time keeps only the events whose envelope
//! `occurred_at` is at or before it: the time the fact happened, which is
//! also what every projected time comes from. Records that do not decode,
//! or carry no `occurred_at`, cannot be placed in time and are left out of
//! an as-of replay (a full replay keeps them in `skipped_records`/`events`
//! as the live projector does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dealmesh_eventlog::{KafkaSettings, envelope};
use dealmesh_proto::Payload;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgPool};
use tracing::instrument;

use crate::projector::{self, BatchReport, Projector, ProjectorSettings};

/// How long the broker may send nothing before a replay fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of a metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Secondary indexes built at once at the end of a fresh replay, and the
/// sort memory each may use.
const INDEX_BUILDS: usize = 2;
const INDEX_BUILD_MEMORY: &str = "128MB";
/// How often a failed batch (a deadlock with another partition's merge, a
/// dropped connection) is retried before the replay gives up.
const BATCH_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("schema {0:?} is not a plain lower-case identifier (letters, digits, '_')")]
    BadSchema(String),
    #[error("--as-of {value:?} is not an RFC 3339 time ({reason}), e.g. 2026-11-23T10:00:00Z")]
    BadAsOf { value: String, reason: String },
    #[error("database {0} does not exist; check DATABASE_URL")]
    NoDatabase(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(sqlx::Error),
    #[error("schema {0} already exists; nothing was changed (pick another name or drop it first)")]
    SchemaExists(String),
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("the broker sent nothing for partition {partition} in {seconds} s")]
    Stalled { partition: i32, seconds: u64 },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("projecting partition {partition}: {source}")]
    Project {
        partition: i32,
        source: projector::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("a replay task failed: {0}")]
    Task(String),
}

/// What a replay needs.
#[derive(Clone, Debug)]
pub struct ReplaySettings {
    pub kafka: KafkaSettings,
    /// The deal log.
    pub topic: String,
    /// The schema to replay into.
    pub schema: String,
    pub initial_stage: String,
    /// Most records per transaction.
    pub batch_size: usize,
    /// Only events that occurred at or before this time.
    pub as_of: Option<DateTime<Utc>>,
    /// Stop each partition before this offset instead of at its end (a
    /// partition not listed is not read): to rebuild exactly what another
    /// read model has projected.
    pub until: Option<BTreeMap<i32, i64>>,
}

/// Counters a progress display reads while a replay runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read so far (projected or, as of a time, left out).
    pub done: AtomicU64,
    /// Records known to be on the log (a lower bound: the high watermarks
    /// when the replay started).
    pub total: AtomicU64,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub partitions: usize,
    /// Records read.
    pub records: u64,
    /// Records left out because they occurred after `as_of`.
    pub after_as_of: u64,
    pub batch: BatchReport,
    /// Next offset of each partition where the replay stopped.
    pub end_offsets: BTreeMap<i32, i64>,
}

/// Refuses a target that cannot be replayed into: a bad name, a database
/// that does not exist, a schema that exists. Changes nothing.
#[instrument(skip_all, fields(%schema), err)]
pub async fn check_new_schema(database_url: &str, schema: &str) -> Result<(), Error> {
    let pool = connect_existing(database_url, schema).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    if exists {
        return Err(Error::SchemaExists(schema.to_owned()));
    }
    Ok(())
}

/// One connection to a database that must already exist (unlike
/// [`crate::db::connect`], which creates it for `serve`).
pub async fn connect_existing(database_url: &str, schema: &str) -> Result<PgPool, Error> {
    if !crate::config::is_name(schema) {
        return Err(Error::BadSchema(schema.to_owned()));
    }
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(|e| Error::Setup(format!("DATABASE_URL is not a valid URL: {e}")))?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|error| match &error {
            // invalid_catalog_name: the database does not exist.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
                Error::NoDatabase(name)
            }
            _ => Error::Connect(error),
        })
}

/// Creates `schema` (which must not exist) in an existing database and
/// applies the migrations; returns a pool with it on the search path.
#[instrument(skip_all, fields(%schema), err)]
pub async fn create_schema(
    database_url: &str,
    schema: &str,
    max_connections: u32,
) -> Result<PgPool, Error> {
    check_new_schema(database_url, schema).await?;
    let pool = crate::db::connect(database_url, schema, max_connections)
        .await
        .map_err(|e| Error::Setup(format!("{e:#}")))?;
    crate::db::migrate(&pool)
        .await
        .map_err(|e| Error::Setup(format!("{e:#}")))?;
    Ok(pool)
}

/// Replays the log into the schema `pool` points at, from where that
/// schema's `projector_offsets` stand (the first offset for a fresh
/// schema) to the end of every partition, partitions in parallel; then
/// settles merges. Calling it again catches up with what was appended since.
#[instrument(skip_all, fields(topic = %settings.topic, schema = %settings.schema), err)]
pub async fn replay(
    pool: &PgPool,
    settings: &ReplaySettings,
    progress: Arc<Progress>,
) -> Result<ReplayReport, Error> {
    let partitions = partitions(&settings.kafka, &settings.topic, &progress).await?;
    // A fresh schema fills faster without its secondary indexes (every
    // event updates its deal's row; without them most updates are HOT);
    // they are built once at the end.
    let fresh: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM projector_offsets)")
        .fetch_one(pool)
        .await?;
    let deferred = if fresh {
        defer_indexes(pool, &settings.schema).await?
    } else {
        Vec::new()
    };
    let result = replay_partitions(pool, settings, progress, &partitions, fresh).await;
    restore_indexes(pool, &deferred).await?;
    result
}

/// Drops the secondary (non-unique) indexes of `schema` and returns the
/// statements that recreate them.
async fn defer_indexes(pool: &PgPool, schema: &str) -> Result<Vec<DeferredIndex>, Error> {
    let indexes: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT format('%I.%I', n.nspname, c.relname), format('%I.%I', n.nspname, t.relname),
             pg_get_indexdef(i.indexrelid)
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_class t ON t.oid = i.indrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND NOT i.indisunique AND NOT i.indisprimary
         ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(pool)
    .await?;
    for (name, _, _) in &indexes {
        // The name comes from the catalogue, quoted by format('%I').
        pool.execute(AssertSqlSafe(format!("DROP INDEX {name}")))
            .await?;
    }
    Ok(indexes
        .into_iter()
        .map(|(_, table, definition)| DeferredIndex { table, definition })
        .collect())
}

/// A secondary index dropped for a fresh replay.
struct DeferredIndex {
    /// Its table, schema-qualified and quoted.
    table: String,
    /// `pg_get_indexdef`'s statement that creates it.
    definition: String,
}

async fn restore_indexes(pool: &PgPool, deferred: &[DeferredIndex]) -> Result<(), Error> {
    use futures::{StreamExt, TryStreamExt};
    if deferred.is_empty() {
        return Ok(());
    }
    // The biggest tables first, so that the last build to finish is a
    // small one; a few side by side, each with room to sort in memory.
    let tables: Vec<&str> = deferred.iter().map(|d| d.table.as_str()).collect();
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT pg_relation_size(t::regclass) FROM UNNEST($1::text[]) WITH ORDINALITY AS u(t, i)
         ORDER BY i",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await?;
    let mut order: Vec<(i64, &str)> = sizes
        .into_iter()
        .zip(deferred.iter().map(|d| d.definition.as_str()))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let builds = order.into_iter().map(|(_, definition)| async move {
        let mut tx = pool.begin().await?;
        tx.execute(AssertSqlSafe(format!(
            "SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"
        )))
        .await?;
        // pg_get_indexdef's own output, schema-qualified.
        tx.execute(AssertSqlSafe(definition.to_owned())).await?;
        tx.commit().await?;
        Ok::<_, Error>(())
    });
    futures::stream::iter(builds)
        .buffer_unordered(INDEX_BUILDS)
        .try_collect::<()>()
        .await
}

async fn replay_partitions(
    pool: &PgPool,
    settings: &ReplaySettings,
    progress: Arc<Progress>,
    partitions: &[i32],
    fresh: bool,
) -> Result<ReplayReport, Error> {
    let projector = Arc::new(
        Projector::new(
            pool.clone(),
            settings.kafka.clone(),
            ProjectorSettings {
                topic: settings.topic.clone(),
                batch_size: settings.batch_size,
                linger: Duration::ZERO,
                initial_stage: settings.initial_stage.clone(),
                notify_channel: crate::db::notify_channel(&settings.schema),
            },
        )
        .with_async_commit(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for partition in partitions {
        let (pool, settings, projector, progress) = (
            pool.clone(),
            settings.clone(),
            projector.clone(),
            progress.clone(),
        );
        let partition = *partition;
        tasks.spawn(async move {
            replay_partition(&pool, &settings, &projector, partition, &progress).await
        });
    }
    let mut report = ReplayReport {
        partitions: partitions.len(),
        ..Default::default()
    };
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(part)) => {
                report.records += part.records;
                report.after_as_of += part.after_as_of;
                report.batch.add(&part.batch);
                report.end_offsets.extend(part.end_offsets);
            }
            Ok(Err(error)) => {
                // Stop the other partitions: the replay failed.
                tasks.abort_all();
                first_error.get_or_insert(error);
            }
            Err(error) if error.is_cancelled() => {}
            Err(error) => {
                tasks.abort_all();
                first_error.get_or_insert(Error::Task(error.to_string()));
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    // Nothing to settle if this pass read nothing, or if the schema holds
    // only this pass's events and none of them was a merge; otherwise a
    // new deal may be one an earlier merge named.
    if report.records > 0 && (!fresh || report.batch.merges > 0) {
        settle_merges(pool).await?;
    }
    if settings.as_of.is_some() {
        // Records after the instant were left out, so a hash chain over
        // what was projected would not be the log's: a snapshot keeps none.
        sqlx::query("DELETE FROM projector_checkpoints")
            .execute(pool)
            .await?;
    }
    tracing::info!(
        records = report.records,
        applied = report.batch.applied,
        rejected = report.batch.rejected,
        "replay done"
    );
    Ok(report)
}

/// The partition ids of `topic`; adds their high watermarks to
/// `progress.total`.
async fn partitions(
    kafka: &KafkaSettings,
    topic: &str,
    progress: &Progress,
) -> Result<Vec<i32>, Error> {
    let consumer = consumer(kafka)?;
    let topic = topic.to_owned();
    let (ids, total) = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), REQUEST_TIMEOUT)?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            return Err(Error::NoTopic(topic));
        }
        let mut total = 0;
        for id in &ids {
            // Only for the progress display: a lower bound is fine.
            if let Ok((low, high)) = consumer.fetch_watermarks(&topic, *id, REQUEST_TIMEOUT) {
                total += (high - low).max(0) as u64;
            }
        }
        Ok((ids, total))
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))??;
    progress.total.fetch_add(total, Ordering::Relaxed);
    Ok(ids)
}

/// A reader of the log: no group offsets used or committed, partition EOF
/// reported.
fn consumer(kafka: &KafkaSettings) -> Result<StreamConsumer<QuietEof>, Error> {
    let mut config = kafka.client_config();
    config
        .set(
            "group.id",
            format!("dealmesh-crm-replay-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "100")
        // One consumer per partition: librdkafka's default prefetch (64 MiB
        // queued, fetches of up to 50 MiB, each) would hold much of a large
        // log in memory, for no gain in speed.
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.max.bytes", "1048576");
    for (key, value) in &kafka.passthrough {
        config.set(key, value);
    }
    Ok(config.create_with_context(QuietEof)?)
}

/// librdkafka reports the end of a partition as an error, which the default
/// context logs at error level; for a replay it is the expected end.
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
        ) {
            DefaultClientContext.error(error, reason);
        }
    }
}

impl ConsumerContext for QuietEof {}

#[instrument(skip_all, fields(partition), err)]
async fn replay_partition(
    pool: &PgPool,
    settings: &ReplaySettings,
    projector: &Projector,
    partition: i32,
    progress: &Arc<Progress>,
) -> Result<ReplayReport, Error> {
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM projector_offsets WHERE topic = $1 AND partition = $2",
    )
    .bind(&settings.topic)
    .bind(partition)
    .fetch_optional(pool)
    .await?;
    let stop = settings
        .until
        .as_ref()
        .map(|until| until.get(&partition).copied().unwrap_or(0));
    let start = stored.unwrap_or(0);
    if stop.is_some_and(|stop| start >= stop) {
        let mut report = ReplayReport {
            partitions: 1,
            ..Default::default()
        };
        report.end_offsets.insert(partition, start);
        return Ok(report);
    }
    // The reader fills the next batch while the current one is written,
    // so PostgreSQL and the broker both keep working.
    let (batches, mut incoming) = tokio::sync::mpsc::channel(2);
    // Aborted with this task if the replay is stopped.
    let reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(read_partition(
        settings.clone(),
        partition,
        stored,
        stop,
        progress.clone(),
        batches,
    )));
    let mut written = BatchReport::default();
    let mut failed = None;
    while let Some(batch) = incoming.recv().await {
        if let Err(error) = project(projector, partition, &batch, &mut written).await {
            failed = Some(error);
            break;
        }
    }
    // Dropping the receiver stops a reader still going.
    drop(incoming);
    let read = reader.await.map_err(|e| Error::Task(e.to_string()))?;
    if let Some(error) = failed {
        return Err(error);
    }
    let mut report = read?;
    report.batch = written;
    tracing::debug!(partition, records = report.records, "partition replayed");
    Ok(report)
}

/// Reads one partition from `stored` (the beginning without it) to its end
/// or `stop`, and sends its records in batches; returns what it read (the
/// batch outcomes are the writer's).
async fn read_partition(
    settings: ReplaySettings,
    partition: i32,
    stored: Option<i64>,
    stop: Option<i64>,
    progress: Arc<Progress>,
    batches: tokio::sync::mpsc::Sender<Vec<OwnedMessage>>,
) -> Result<ReplayReport, Error> {
    let mut report = ReplayReport {
        partitions: 1,
        ..Default::default()
    };
    let mut next_offset = stored.unwrap_or(0);
    let consumer = consumer(&settings.kafka)?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(
        &settings.topic,
        partition,
        stored.map_or(Offset::Beginning, Offset::Offset),
    )?;
    consumer.assign(&list)?;
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(settings.batch_size);
    loop {
        let received = tokio::time::timeout(STALL_TIMEOUT, consumer.recv()).await;
        let message = match received {
            Err(_) => {
                return Err(Error::Stalled {
                    partition,
                    seconds: STALL_TIMEOUT.as_secs(),
                });
            }
            Ok(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
            Ok(Err(KafkaError::PartitionEOF(_))) => continue,
            Ok(Err(error)) => return Err(error.into()),
            Ok(Ok(message)) => message,
        };
        if message.partition() != partition {
            continue;
        }
        if stop.is_some_and(|stop| message.offset() >= stop) {
            break;
        }
        report.records += 1;
        progress.done.fetch_add(1, Ordering::Relaxed);
        next_offset = message.offset() + 1;
        if let Some(as_of) = settings.as_of
            && !occurred_by(message.payload(), as_of)
        {
            report.after_as_of += 1;
            continue;
        }
        // The projection reads the key, value and position; the headers
        // (trace context, CloudEvents attributes) are not copied.
        batch.push(OwnedMessage::new(
            message.payload().map(<[u8]>::to_vec),
            message.key().map(<[u8]>::to_vec),
            settings.topic.clone(),
            message.timestamp(),
            partition,
            message.offset(),
            None,
        ));
        if batch.len() >= settings.batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(settings.batch_size));
            if batches.send(full).await.is_err() {
                // The writer failed and says why.
                return Ok(report);
            }
        }
        if stop.is_some_and(|stop| next_offset >= stop) {
            break;
        }
    }
    if !batch.is_empty() && batches.send(batch).await.is_err() {
        return Ok(report);
    }
    report.end_offsets.insert(partition, next_offset);
    Ok(report)
}

/// Whether the record is an event that occurred at or before `as_of`.
fn occurred_by(payload: Option<&[u8]>, as_of: DateTime<Utc>) -> bool {
    payload
        .and_then(|bytes| envelope::decode(bytes).ok())
        .and_then(|event| {
            event
                .occurred_at
                .as_ref()
                .and_then(envelope::from_timestamp)
        })
        .is_some_and(|at| at <= as_of)
}

/// Projects one batch; a failed transaction wrote nothing, so it is retried
/// (another partition's merge may deadlock with it).
async fn project(
    projector: &Projector,
    partition: i32,
    batch: &[OwnedMessage],
    total: &mut BatchReport,
) -> Result<(), Error> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match projector.project_batch(batch).await {
            Ok(report) => {
                total.add(&report);
                return Ok(());
            }
            Err(error) if attempt < BATCH_ATTEMPTS => {
                tracing::warn!(partition, attempt, %error, "replay batch failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(source) => return Err(Error::Project { partition, source }),
        }
    }
}

/// Recomputes `merged_into` from the applied merge and unmerge events in
/// `occurred_at`, partition, offset order, so that it does not depend on how
/// partitions interleaved (see the module documentation). The statements
/// are those of the projection.
#[instrument(skip_all, err)]
pub async fn settle_merges(pool: &PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let envelopes: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT envelope FROM events
         WHERE status = 'applied' AND event_type IN ('DealsMerged', 'DealsUnmerged')
         ORDER BY occurred_at NULLS FIRST, kafka_partition, kafka_offset",
    )
    .fetch_all(&mut *tx)
    .await?;
    if envelopes.is_empty() {
        return Ok(());
    }
    tx.execute("UPDATE deals SET merged_into = NULL WHERE merged_into IS NOT NULL")
        .await?;
    for bytes in envelopes {
        let Ok(event) = envelope::decode(&bytes) else {
            continue;
        };
        match &event.payload {
            Some(Payload::DealsMerged(m)) => {
                sqlx::query(
                    "UPDATE deals SET merged_into = $1 WHERE deal_id = ANY($2) AND deal_id <> $1",
                )
                .bind(&event.deal_id)
                .bind(&m.merged_deal_ids)
                .execute(&mut *tx)
                .await?;
            }
            Some(Payload::DealsUnmerged(u)) => {
                sqlx::query(
                    "UPDATE deals SET merged_into = NULL
                     WHERE deal_id = ANY($2) AND merged_into = $1",
                )
                .bind(&event.deal_id)
                .bind(&u.unmerged_deal_ids)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Drops `schema` and everything in it.
#[instrument(skip_all, fields(%schema), err)]
pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), Error> {
    if !crate::config::is_name(schema) {
        return Err(Error::BadSchema(schema.to_owned()));
    }
    // Checked above: a plain identifier.
    pool.execute(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .await?;
    Ok(())
}

/// Draws progress while a replay runs: a line redrawn in place when stderr
/// is a terminal, a structured log line every few seconds otherwise.
pub async fn report_progress(progress: Arc<Progress>, done: tokio_util::sync::CancellationToken) {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let started = Instant::now();
    let mut finished = false;
    while !finished {
        tokio::select! {
            () = done.cancelled() => finished = true,
            () = tokio::time::sleep(every) => {}
        }
        let done = progress.done.load(Ordering::Relaxed);
        let total = progress.total.load(Ordering::Relaxed).max(done);
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / seconds;
        let left = if rate > 0.0 {
            (total - done) as f64 / rate
        } else {
            0.0
        };
        if terminal {
            let width = 30;
            let filled = (done * width as u64)
                .checked_div(total)
                .map_or(width, |f| f as usize);
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r[{}{}] {done}/{total} events  {rate:.0}/s  {left:.0}s left   ",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            if finished {
                let _ = writeln!(stderr);
            }
            let _ = stderr.flush();
        } else {
            tracing::info!(
                done,
                total,
                rate = rate.round(),
                seconds_left = left.round(),
                "replay progress"
            );
        }
    }
}

/// Parses `--as-of`: an RFC 3339 time with an offset.
pub fn parse_as_of(value: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::BadAsOf {
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

impl Error {
    /// The process exit status (sysexits.h): 64 bad arguments (a bad time
    /// or name, a schema that exists), 66 no such database or topic, 69
    /// PostgreSQL or the broker unavailable, 70 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadSchema(_) | Error::BadAsOf { .. } | Error::SchemaExists(_) => 64,
            Error::NoDatabase(_) | Error::NoTopic(_) => 66,
            Error::Connect(_) | Error::Kafka(_) | Error::Stalled { .. } => 69,
            Error::Database(_) | Error::Project { .. } | Error::Setup(_) | Error::Task(_) => 70,
        }
    }
}
