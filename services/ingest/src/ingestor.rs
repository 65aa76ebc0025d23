//! The one path every channel takes: validated submissions become
//! `DealSourced` events on the deal log, exactly once per idempotency key.
//!
//! The keys a call is the first to record form one batch:
//!
//! 1. On one connection the call takes a session advisory lock named after
//!    a fresh batch id and, in one statement, inserts a row per new key
//!    (event id, fingerprint, position in the batch) and the batch row (the
//!    time, channel and correlation id the events share), and commits: from
//!    here on the event id of each new key is fixed. It is first tried as
//!    a plain insert, which fails whole if any key is on record and
//!    otherwise recorded every key; only then with `ON CONFLICT DO
//!    NOTHING`, which costs more per key and reports which keys were new.
//!    The new keys' events are sent from memory.
//! 2. Once the broker has acknowledged them all, the receipts are written
//!    on the batch row in one update and the lock is released. A submission
//!    row is written once and never updated.
//!
//! A key recorded earlier is answered from its row and its batch's
//! receipts. If it has no receipt yet, its batch is being sent, or its
//! sender died: the call waits for the batch's lock (a live sender holds it;
//! a dead sender's session, and with it the lock, is gone), reads again,
//! and sends what is still pending itself. It rebuilds each such event from
//! the retried submission, whose key and fingerprint, hence content, are
//! the recorded ones, with the recorded event id, time, channel and
//! correlation id, and writes the receipt on the submission row. Rows
//! recorded before batches existed carry their envelope, re-sent as stored.
//!
//! The recording and the send cannot share one commit: a send that reached
//! the broker before a crash must find its event id on record, or the retry
//! would write the deal again under a new id. If the process dies between
//! the send and the receipt, the retry sends the same event again: the log
//! may then hold the same event id twice, which every consumer drops as a
//! duplicate.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use dealmesh_eventlog::{EventProducer, envelope, ids};
use dealmesh_proto::v1::{self, Channel, CompanyKeyKind, DealSourced};
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::metrics::prometheus_client::metrics::counter::Counter;
use dealmesh_runtime::metrics::prometheus_client::metrics::family::Family;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;
use prost::Message;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::company::KeyKind;
use crate::validate::Submission;

pub const SERVICE: &str = "dealmesh-ingest";
/// The CloudEvents `source` of every event ingest writes.
pub const CE_SOURCE: &str = "/dealmesh/ingest";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] dealmesh_eventlog::Error),
    #[error("stored envelope is corrupt: {0}")]
    Corrupt(#[from] prost::DecodeError),
    #[error("submission {event_id} is recorded without its batch")]
    MissingBatch { event_id: Uuid },
    /// A key on record when the call recorded its keys was forgotten (past
    /// its retention) before the call read it. A retry finds it new.
    #[error("an idempotency key was forgotten while the call answered it")]
    Forgotten,
}

impl Error {
    /// Whether the same call may succeed when retried with the same
    /// idempotency keys: the broker or the store was out of reach, or a key
    /// expired meanwhile. A corrupt record stays corrupt.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Corrupt(_) | Self::MissingBatch { .. })
    }

    /// Why the call failed, as its client is told (no internals).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Broker(_) => "the deal log is not reachable",
            Self::Database(_) => "the idempotency store is not reachable",
            Self::Forgotten => "an idempotency key expired while the call was answered",
            Self::Corrupt(_) | Self::MissingBatch { .. } => "stored submission is corrupt",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Proof that a submission is on the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: Uuid,
    pub deal_id: Uuid,
    pub company_key: String,
    pub partition: i32,
    pub offset: i64,
    pub duplicate: bool,
}

/// Why one submission of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The idempotency key was used before for different content.
    KeyReused,
}

#[derive(Clone)]
pub struct Ingestor {
    pool: PgPool,
    producer: EventProducer,
    submissions: Family<Vec<(&'static str, &'static str)>, Counter>,
}

/// What the store knows of a recorded key.
#[derive(sqlx::FromRow)]
struct Row {
    /// 1-based position of its key in the query's key list.
    ordinal: i64,
    fingerprint: Vec<u8>,
    event_id: Uuid,
    deal_id: Uuid,
    company_key: String,
    /// The receipt, from the row or from its batch.
    kafka_partition: Option<i32>,
    kafka_offset: Option<i64>,
    batch_id: Option<Uuid>,
    /// A row from before batches: its envelope, while it is pending.
    envelope: Option<Vec<u8>>,
    /// From the batch row.
    recorded_at: Option<DateTime<Utc>>,
    channel: Option<i32>,
    correlation_id: Option<String>,
}

impl Row {
    fn receipt(&self, duplicate: bool) -> Receipt {
        Receipt {
            event_id: self.event_id,
            deal_id: self.deal_id,
            company_key: self.company_key.clone(),
            partition: self.kafka_partition.unwrap_or(-1),
            offset: self.kafka_offset.unwrap_or(-1),
            duplicate,
        }
    }

    fn is_pending(&self) -> bool {
        self.kafka_offset.is_none()
    }

    /// The advisory lock its sender holds while sending it.
    fn lock_key(&self) -> i64 {
        lock_key(self.batch_id.unwrap_or(self.event_id))
    }
}

/// The advisory lock named after `id` (a batch id, or the event id of a row
/// from before batches).
fn lock_key(id: Uuid) -> i64 {
    let (_, low) = id.as_u64_pair();
    i64::from_ne_bytes(low.to_ne_bytes())
}

impl Ingestor {
    pub fn new(pool: PgPool, producer: EventProducer) -> Self {
        Self {
            pool,
            producer,
            submissions: Family::default(),
        }
    }

    /// Counts every submission answered, by channel and outcome, in
    /// `registry`: `new` (this call put its event on the log), `completed`
    /// (a retry put on the log the recorded event of a call that died
    /// first), `duplicate`, `key_reused`.
    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        registry.register(
            "ingest_submissions",
            "Submissions answered, by channel and outcome (new, completed, duplicate, key_reused)",
            self.submissions.clone(),
        );
        self
    }

    /// Waits for queued records to reach the broker.
    pub fn flush(&self, timeout: std::time::Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }

    /// Lands every submission on the log, answering in order. Submissions
    /// sharing an idempotency key share one event.
    #[tracing::instrument(skip_all, fields(count = submissions.len()), err)]
    pub async fn submit(
        &self,
        submissions: &[Submission],
        channel: Channel,
        correlation_id: &str,
    ) -> Result<Vec<Result<Receipt, Refusal>>> {
        self.submit_at(submissions, channel, correlation_id, Utc::now())
            .await
    }

    /// [`Self::submit`] with the time the call's new keys are recorded at.
    async fn submit_at(
        &self,
        submissions: &[Submission],
        channel: Channel,
        correlation_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Receipt, Refusal>>> {
        if submissions.is_empty() {
            return Ok(Vec::new());
        }
        let call = Call::new(submissions, channel, correlation_id, now)?;
        let mut answers = Answers::new(&call);
        let batch = self.record(&call).await?;
        self.send_batch(&call, batch, &mut answers).await?;
        self.answer_recorded(&call, &mut answers).await?;
        let completed = answers.completed;
        let results = answers.finish(&call);
        self.count(channel, &results, completed);
        Ok(results)
    }

    fn count(&self, channel: Channel, results: &[Result<Receipt, Refusal>], completed: usize) {
        let channel = match channel {
            Channel::Grpc => "grpc",
            Channel::Webhook => "webhook",
            Channel::Csv => "csv",
            Channel::Poller => "poller",
            Channel::Unspecified => "unspecified",
        };
        let (mut sent, mut duplicate, mut refused) = (0_usize, 0_usize, 0_usize);
        for result in results {
            match result {
                Ok(receipt) if receipt.duplicate => duplicate += 1,
                Ok(_) => sent += 1,
                Err(Refusal::KeyReused) => refused += 1,
            }
        }
        for (outcome, count) in [
            ("new", sent.saturating_sub(completed)),
            ("completed", completed),
            ("duplicate", duplicate),
            ("key_reused", refused),
        ] {
            if count > 0 {
                self.submissions
                    .get_or_create(&vec![("channel", channel), ("outcome", outcome)])
                    .inc_by(count as u64);
            }
        }
    }

    /// Step 1: records the call's new keys as one batch, holding its lock.
    async fn record(&self, call: &Call<'_>) -> Result<Batch> {
        let batch_id = call.batch_id();
        let mut conn = LockedConnection::acquire(&self.pool).await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock_key(batch_id))
            .execute(conn.conn())
            .await?;
        // Most calls bring only new keys: a plain insert records them at a
        // fraction of the cost of `ON CONFLICT`'s speculative insertion. A
        // key on record fails it as a whole (nothing is written), and the
        // call records its keys again, skipping those on record.
        let columns = KeyColumns::new(call);
        let new = match insert_batch(conn.conn(), call, &columns, batch_id, Conflicts::Fail).await {
            Err(Error::Database(sqlx::Error::Database(error))) if error.is_unique_violation() => {
                insert_batch(conn.conn(), call, &columns, batch_id, Conflicts::Skip).await?
            }
            inserted => inserted?,
        };
        Ok(Batch {
            conn,
            batch_id,
            new,
        })
    }

    /// Step 2: sends the batch's events, records their receipts and
    /// releases the batch's lock.
    async fn send_batch(&self, call: &Call<'_>, batch: Batch, answers: &mut Answers) -> Result<()> {
        let Batch {
            mut conn,
            batch_id,
            new,
        } = batch;
        if !new.is_empty() {
            let deliveries = self
                .producer
                .publish_all_encoded(new.iter().map(|&e| {
                    let entry = &call.entries[e];
                    (&entry.event, entry.envelope.as_slice())
                }))
                .await?;
            let mut partitions: Vec<Option<i32>> = vec![None; call.entries.len()];
            let mut offsets: Vec<Option<i64>> = vec![None; call.entries.len()];
            for (&e, delivery) in new.iter().zip(&deliveries) {
                partitions[e] = Some(delivery.partition);
                offsets[e] = Some(delivery.offset);
            }
            sqlx::query(
                "UPDATE ingest_batches
                 SET kafka_partitions = $2, kafka_offsets = $3, acked_at = now()
                 WHERE batch_id = $1",
            )
            .bind(batch_id)
            .bind(&partitions)
            .bind(&offsets)
            .execute(conn.conn())
            .await?;
            for (&e, delivery) in new.iter().zip(deliveries) {
                let entry = &call.entries[e];
                answers.sent(
                    e,
                    entry.first,
                    Receipt {
                        event_id: entry.event_id,
                        deal_id: entry.deal_id,
                        company_key: entry.company_key.clone(),
                        partition: delivery.partition,
                        offset: delivery.offset,
                        duplicate: false,
                    },
                    call.fingerprints[entry.first].clone(),
                );
            }
        }
        conn.release(lock_key(batch_id)).await
    }

    /// Answers the keys recorded before this call, completing those whose
    /// sender died.
    async fn answer_recorded(&self, call: &Call<'_>, answers: &mut Answers) -> Result<()> {
        let recorded: Vec<usize> = (0..call.entries.len())
            .filter(|&e| !answers.has(e))
            .collect();
        if recorded.is_empty() {
            return Ok(());
        }
        let rows = fetch_rows(&self.pool, call, &recorded, Lock::None).await?;
        if rows.len() < recorded.len() {
            return Err(Error::Forgotten);
        }
        // Pending rows, by the lock their sender holds.
        let mut waiting: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (e, row) in rows {
            if row.is_pending() {
                waiting.entry(row.lock_key()).or_default().push(e);
            } else {
                answers.found(e, row);
            }
        }
        for (lock, entries) in waiting {
            self.complete(call, lock, &entries, answers).await?;
        }
        Ok(())
    }

    /// Waits for the sender of `entries` (holding `lock`), then sends those
    /// still pending: their sender died.
    async fn complete(
        &self,
        call: &Call<'_>,
        lock: i64,
        entries: &[usize],
        answers: &mut Answers,
    ) -> Result<()> {
        let mut conn = LockedConnection::acquire(&self.pool).await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock)
            .execute(conn.conn())
            .await?;
        let rows = fetch_rows(conn.conn(), call, entries, Lock::Rows).await?;
        if rows.len() < entries.len() {
            return Err(Error::Forgotten);
        }
        let mut pending = Vec::new();
        for (e, row) in rows {
            if !row.is_pending() {
                answers.found(e, row);
                continue;
            }
            // Rebuilt from a submission of this call with the recorded
            // content; with none, the key stays pending and every
            // submission of it is refused as reusing it.
            let Some(index) = call.submission_matching(e, &row.fingerprint) else {
                answers.found(e, row);
                continue;
            };
            let (event, bytes) = match &row.envelope {
                Some(bytes) => (DealEvent::decode(bytes.as_slice())?, bytes.clone()),
                None => {
                    let (Some(at), Some(channel), Some(correlation_id)) =
                        (row.recorded_at, row.channel, row.correlation_id.as_deref())
                    else {
                        return Err(Error::MissingBatch {
                            event_id: row.event_id,
                        });
                    };
                    let channel = Channel::try_from(channel).unwrap_or(Channel::Unspecified);
                    let event = build_event(
                        &call.submissions[index],
                        row.event_id,
                        row.deal_id,
                        channel,
                        at,
                        correlation_id,
                    );
                    let bytes = envelope::encode(&event)?;
                    (event, bytes)
                }
            };
            pending.push((e, index, row, event, bytes));
        }
        let deliveries = self
            .producer
            .publish_all_encoded(
                pending
                    .iter()
                    .map(|(_, _, _, event, bytes)| (event, bytes.as_slice())),
            )
            .await?;
        if !pending.is_empty() {
            sqlx::query(
                "UPDATE ingest_submissions s
                 SET kafka_partition = u.kafka_partition, kafka_offset = u.kafka_offset,
                     acked_at = now()
                 FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[])
                      AS u(source, idempotency_key, kafka_partition, kafka_offset)
                 WHERE (s.source, s.idempotency_key) = (u.source, u.idempotency_key)",
            )
            .bind(pending.iter().map(|p| call.key(p.1).0).collect::<Vec<_>>())
            .bind(pending.iter().map(|p| call.key(p.1).1).collect::<Vec<_>>())
            .bind(deliveries.iter().map(|d| d.partition).collect::<Vec<_>>())
            .bind(deliveries.iter().map(|d| d.offset).collect::<Vec<_>>())
            .execute(conn.conn())
            .await?;
        }
        conn.release(lock).await?;
        for ((e, index, mut row, _, _), delivery) in pending.into_iter().zip(deliveries) {
            row.kafka_partition = Some(delivery.partition);
            row.kafka_offset = Some(delivery.offset);
            let fingerprint = row.fingerprint.clone();
            answers.sent(e, index, row.receipt(false), fingerprint);
            answers.completed += 1;
        }
        Ok(())
    }
}

/// The key rows of a call, column by column, as [`insert_batch`] binds
/// them: built once, for the plain insert and its fallback alike.
struct KeyColumns<'a> {
    sources: Vec<&'a str>,
    keys: Vec<&'a str>,
    fingerprints: Vec<&'a [u8]>,
    event_ids: Vec<Uuid>,
    deal_ids: Vec<Uuid>,
    company_keys: Vec<&'a str>,
}

impl<'a> KeyColumns<'a> {
    fn new(call: &'a Call<'_>) -> Self {
        let entries = &call.entries;
        Self {
            sources: entries.iter().map(|e| call.key(e.first).0).collect(),
            keys: entries.iter().map(|e| call.key(e.first).1).collect(),
            fingerprints: entries
                .iter()
                .map(|e| call.fingerprints[e.first].as_slice())
                .collect(),
            event_ids: entries.iter().map(|e| e.event_id).collect(),
            deal_ids: entries.iter().map(|e| e.deal_id).collect(),
            company_keys: entries.iter().map(|e| e.company_key.as_str()).collect(),
        }
    }
}

/// What [`insert_batch`] does with a key already on record.
#[derive(Clone, Copy)]
enum Conflicts {
    /// Fails the statement: nothing is written.
    Fail,
    /// Leaves the recorded key as it is.
    Skip,
}

/// Records the keys of `call` not yet on record as batch `batch_id`, and
/// the batch row if there are any, in one statement, so in one commit. The
/// entries recorded, ascending.
async fn insert_batch(
    conn: &mut PgConnection,
    call: &Call<'_>,
    columns: &KeyColumns<'_>,
    batch_id: Uuid,
    conflicts: Conflicts,
) -> Result<Vec<usize>> {
    macro_rules! insert_keys {
        ($on_conflict:literal) => {
            concat!(
                "INSERT INTO ingest_submissions
                     (source, idempotency_key, fingerprint, event_id, deal_id, company_key,
                      batch_id, batch_index)
                 SELECT u.source, u.idempotency_key, u.fingerprint, u.event_id, u.deal_id,
                        u.company_key, $7, u.batch_index::int4
                 FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::uuid[],
                             $6::text[])
                      WITH ORDINALITY
                      AS u(source, idempotency_key, fingerprint, event_id, deal_id,
                           company_key, batch_index)
                 ",
                $on_conflict
            )
        };
    }
    let query = |sql| {
        sqlx::query_scalar::<_, i32>(sql)
            .bind(&columns.sources)
            .bind(&columns.keys)
            .bind(&columns.fingerprints)
            .bind(&columns.event_ids)
            .bind(&columns.deal_ids)
            .bind(&columns.company_keys)
            .bind(batch_id)
            .bind(call.now)
            .bind(call.channel as i32)
            .bind(call.correlation_id)
    };
    match conflicts {
        Conflicts::Fail => {
            // Every key is new once it succeeds: nothing to read back.
            query(concat!(
                "WITH new AS (",
                insert_keys!(""),
                ") ",
                "INSERT INTO ingest_batches (batch_id, recorded_at, channel, correlation_id)
                 VALUES ($7, $8, $9, $10)"
            ))
            .fetch_optional(conn)
            .await?;
            Ok((0..call.entries.len()).collect())
        }
        Conflicts::Skip => {
            let inserted: Vec<i32> = query(concat!(
                "WITH new AS (",
                insert_keys!(
                    "ON CONFLICT (source, idempotency_key) DO NOTHING RETURNING batch_index"
                ),
                "), batch AS (
                     INSERT INTO ingest_batches (batch_id, recorded_at, channel, correlation_id)
                     SELECT $7, $8, $9, $10 WHERE EXISTS (SELECT FROM new)
                 )
                 SELECT batch_index FROM new"
            ))
            .fetch_all(conn)
            .await?;
            let mut new: Vec<usize> = inserted
                .into_iter()
                .filter_map(|position| usize::try_from(position - 1).ok())
                .filter(|&e| e < call.entries.len())
                .collect();
            new.sort_unstable();
            Ok(new)
        }
    }
}

/// Whether [`fetch_rows`] waits for row locks.
enum Lock {
    None,
    /// Waits for the row locks a replica of the previous version holds on
    /// the rows it is sending, so their receipts are read, not re-sent.
    Rows,
}

/// The rows of `entries`, by entry, with their receipts.
async fn fetch_rows(
    executor: impl sqlx::PgExecutor<'_>,
    call: &Call<'_>,
    entries: &[usize],
    lock: Lock,
) -> Result<Vec<(usize, Row)>> {
    macro_rules! select {
        () => {
            "SELECT k.ordinal, s.fingerprint, s.event_id, s.deal_id, s.company_key,
                    coalesce(s.kafka_partition, b.kafka_partitions[s.batch_index]) AS kafka_partition,
                    coalesce(s.kafka_offset, b.kafka_offsets[s.batch_index]) AS kafka_offset,
                    s.batch_id,
                    CASE WHEN coalesce(s.kafka_offset, b.kafka_offsets[s.batch_index]) IS NULL
                         THEN s.envelope END AS envelope,
                    b.recorded_at, b.channel, b.correlation_id
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(source, idempotency_key, ordinal)
             JOIN ingest_submissions s USING (source, idempotency_key)
             LEFT JOIN ingest_batches b USING (batch_id)
             ORDER BY s.source, s.idempotency_key"
        };
    }
    let sql = match lock {
        Lock::None => select!(),
        Lock::Rows => concat!(select!(), " FOR NO KEY UPDATE OF s"),
    };
    let rows: Vec<Row> = sqlx::query_as(sql)
        .bind(
            entries
                .iter()
                .map(|&e| call.key(call.entries[e].first).0)
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|&e| call.key(call.entries[e].first).1)
                .collect::<Vec<_>>(),
        )
        .fetch_all(executor)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let e = *entries.get(usize::try_from(row.ordinal - 1).ok()?)?;
            Some((e, row))
        })
        .collect())
}

/// A pooled connection that may hold session advisory locks. Released, it
/// goes back to the pool unlocked; dropped (an error, a cancelled call), it
/// is closed, and the server drops its locks with the session.
struct LockedConnection {
    conn: PoolConnection<Postgres>,
    released: bool,
}

impl LockedConnection {
    async fn acquire(pool: &PgPool) -> Result<Self> {
        Ok(Self {
            conn: pool.acquire().await?,
            released: false,
        })
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    async fn release(mut self, lock: i64) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock)
            .execute(&mut *self.conn)
            .await?;
        self.released = true;
        Ok(())
    }
}

impl Drop for LockedConnection {
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}

/// The new keys of a call, recorded and locked, not yet sent.
struct Batch {
    conn: LockedConnection,
    /// Its lock is `lock_key(batch_id)`.
    batch_id: Uuid,
    /// Entries whose key this call recorded first, ascending.
    new: Vec<usize>,
}

/// One call's submissions, with each distinct key's event as it would be if
/// the key is new.
struct Call<'a> {
    submissions: &'a [Submission],
    channel: Channel,
    correlation_id: &'a str,
    /// To the microsecond, as the batch row keeps it.
    now: DateTime<Utc>,
    /// By submission index.
    fingerprints: Vec<Vec<u8>>,
    /// Each distinct key, in key order.
    entries: Vec<Entry>,
    /// The entry of each submission, by submission index.
    entry_of: Vec<usize>,
}

impl<'a> Call<'a> {
    fn new(
        submissions: &'a [Submission],
        channel: Channel,
        correlation_id: &'a str,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let now = now.trunc_subsecs(6);
        let fingerprints: Vec<Vec<u8>> = submissions.iter().map(Submission::fingerprint).collect();
        // Each distinct key once, in key order, so that two calls sharing
        // keys wait on each other's rows in the same order and never
        // deadlock. The sort is stable: the first submission of a key in the
        // call is the one that becomes its event.
        let key = |i: usize| {
            (
                submissions[i].source.as_str(),
                submissions[i].idempotency_key.as_str(),
            )
        };
        let mut order: Vec<usize> = (0..submissions.len()).collect();
        order.sort_by(|&a, &b| key(a).cmp(&key(b)));
        let mut entries: Vec<Entry> = Vec::with_capacity(submissions.len());
        let mut entry_of = vec![0; submissions.len()];
        for &index in &order {
            if entries
                .last()
                .is_none_or(|last| key(last.first) != key(index))
            {
                entries.push(Entry::new(
                    index,
                    &submissions[index],
                    channel,
                    now,
                    correlation_id,
                )?);
            }
            entry_of[index] = entries.len() - 1;
        }
        Ok(Self {
            submissions,
            channel,
            correlation_id,
            now,
            fingerprints,
            entries,
            entry_of,
        })
    }

    /// A fresh batch id, a UUIDv7 of the time the batch is recorded at, so
    /// batch ids sort by it (what the retention purge relies on).
    fn batch_id(&self) -> Uuid {
        let seconds = u64::try_from(self.now.timestamp()).unwrap_or(0);
        Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            seconds,
            self.now.timestamp_subsec_nanos(),
        ))
    }

    fn key(&self, index: usize) -> (&str, &str) {
        let submission = &self.submissions[index];
        (
            submission.source.as_str(),
            submission.idempotency_key.as_str(),
        )
    }

    /// The first submission of entry `e` with this fingerprint.
    fn submission_matching(&self, e: usize, fingerprint: &[u8]) -> Option<usize> {
        (0..self.submissions.len())
            .find(|&i| self.entry_of[i] == e && self.fingerprints[i] == fingerprint)
    }
}

/// Each entry's answer as it becomes known.
struct Answers {
    known: Vec<Option<Known>>,
    /// Entries this call sent for a call that died first.
    completed: usize,
}

/// What is known of one entry.
struct Known {
    /// The recorded receipt, not yet marked duplicate or not.
    receipt: Receipt,
    /// The recorded fingerprint.
    fingerprint: Vec<u8>,
    /// The submission whose event this call sent.
    sent_for: Option<usize>,
}

impl Answers {
    fn new(call: &Call<'_>) -> Self {
        let mut known = Vec::new();
        known.resize_with(call.entries.len(), || None);
        Self {
            known,
            completed: 0,
        }
    }

    fn has(&self, e: usize) -> bool {
        self.known[e].is_some()
    }

    /// Entry `e` was sent by this call for submission `index`.
    fn sent(&mut self, e: usize, index: usize, receipt: Receipt, fingerprint: Vec<u8>) {
        self.known[e] = Some(Known {
            receipt,
            fingerprint,
            sent_for: Some(index),
        });
    }

    /// Entry `e` was on record.
    fn found(&mut self, e: usize, row: Row) {
        self.known[e] = Some(Known {
            receipt: row.receipt(true),
            fingerprint: row.fingerprint,
            sent_for: None,
        });
    }

    /// One answer per submission: the submission whose event this call sent
    /// gets a fresh receipt, every other one with the recorded content a
    /// duplicate, one with other content a refusal.
    fn finish(self, call: &Call<'_>) -> Vec<Result<Receipt, Refusal>> {
        (0..call.submissions.len())
            .map(|index| {
                let Some(known) = &self.known[call.entry_of[index]] else {
                    // Unreachable: every key was inserted or found.
                    return Err(Refusal::KeyReused);
                };
                if known.fingerprint != call.fingerprints[index] {
                    return Err(Refusal::KeyReused);
                }
                Ok(Receipt {
                    duplicate: known.sent_for != Some(index),
                    ..known.receipt.clone()
                })
            })
            .collect()
    }
}

/// One distinct idempotency key of a call, and the event it becomes if the
/// key is new.
struct Entry {
    /// The index of the key's first submission in the call.
    first: usize,
    event_id: Uuid,
    deal_id: Uuid,
    company_key: String,
    event: DealEvent,
    envelope: Vec<u8>,
}

impl Entry {
    fn new(
        first: usize,
        submission: &Submission,
        channel: Channel,
        now: DateTime<Utc>,
        correlation_id: &str,
    ) -> Result<Self> {
        let event_id = ids::derived_event_id(
            now,
            &[
                b"ingest",
                submission.source.as_bytes(),
                submission.idempotency_key.as_bytes(),
            ],
        );
        let deal_id = submission.company_key.deal_id();
        let event = build_event(submission, event_id, deal_id, channel, now, correlation_id);
        let envelope = envelope::encode(&event)?;
        Ok(Self {
            first,
            event_id,
            deal_id,
            company_key: submission.company_key.as_canonical_string(),
            event,
            envelope,
        })
    }
}

/// The `DealSourced` event for a submission first seen at `now`.
fn build_event(
    submission: &Submission,
    event_id: Uuid,
    deal_id: Uuid,
    channel: Channel,
    now: DateTime<Utc>,
    correlation_id: &str,
) -> DealEvent {
    let kind = match submission.company_key.kind() {
        KeyKind::Domain => CompanyKeyKind::Domain,
        KeyKind::GithubOwner => CompanyKeyKind::GithubOwner,
        KeyKind::Name => CompanyKeyKind::Name,
    };
    DealEvent {
        event_id: event_id.to_string(),
        deal_id: deal_id.to_string(),
        occurred_at: Some(envelope::timestamp(now)),
        actor: Some(envelope::service_actor(SERVICE)),
        correlation_id: correlation_id.to_owned(),
        causation_id: String::new(),
        expected_version: None,
        idempotency_key: submission.idempotency_key.clone(),
        payload: Some(Payload::DealSourced(DealSourced {
            source: submission.source.clone(),
            channel: channel as i32,
            external_id: submission.external_id.clone(),
            name: submission.name.clone(),
            website: submission.website.clone(),
            github_owner: submission.github_owner.clone(),
            github_repo: submission.github_repo.clone(),
            description: submission.description.clone(),
            attributes: submission.attributes.clone(),
            company_key: Some(v1::CompanyKey {
                kind: kind as i32,
                value: submission.company_key.value().to_owned(),
            }),
            source_url: submission.source_url.clone(),
            seen_at: Some(envelope::timestamp(now)),
        })),
    }
}

#[cfg(test)]
mod tests {
    use dealmesh_eventlog::{KafkaSettings, Topics};
    use dealmesh_proto::v1::DealSubmission;

    use super::*;

    fn submission(key: &str) -> Submission {
        crate::validate::validate(
            DealSubmission {
                idempotency_key: key.into(),
                source: "tests".into(),
                name: "Acme Robotics".into(),
                website: "https://acme-robotics.io".into(),
                attributes: [("stage".to_owned(), "seed".to_owned())].into(),
                ..Default::default()
            },
            "",
        )
        .expect("valid submission")
    }

    struct Setup {
        bootstrap: String,
        topics: Topics,
        db: dealmesh_testkit::TestDatabase,
        pool: PgPool,
        ingestor: Ingestor,
    }

    async fn setup() -> Setup {
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let topics = Topics::new(&prefix);
        dealmesh_testkit::create_topic(&bootstrap, &topics.deals, 3).await;
        let db = dealmesh_testkit::TestDatabase::create().await;
        crate::app::MIGRATOR
            .run(&db.pool)
            .await
            .expect("migrations");
        let producer = EventProducer::new(
            &KafkaSettings::new(&bootstrap, &prefix),
            topics.clone(),
            CE_SOURCE,
        )
        .expect("producer");
        let pool = db.pool.clone();
        Setup {
            bootstrap,
            topics,
            ingestor: Ingestor::new(pool.clone(), producer),
            pool,
            db,
        }
    }

    /// Submits `deals` over gRPC, expecting a receipt for each.
    async fn receipts(
        ingestor: &Ingestor,
        deals: &[Submission],
        correlation_id: &str,
    ) -> Vec<Receipt> {
        ingestor
            .submit(deals, Channel::Grpc, correlation_id)
            .await
            .expect("answered")
            .into_iter()
            .map(|r| r.expect("a receipt"))
            .collect()
    }

    /// The values on the deal log, ordered by idempotency key.
    async fn log_values(setup: &Setup) -> Vec<Vec<u8>> {
        let mut values: Vec<Vec<u8>> =
            dealmesh_testkit::read_topic(&setup.bootstrap, &setup.topics.deals)
                .await
                .into_iter()
                .map(|r| r.value.unwrap_or_default())
                .collect();
        values.sort_by_key(|v| {
            DealEvent::decode(v.as_slice())
                .map(|e| e.idempotency_key)
                .unwrap_or_default()
        });
        values
    }

    /// The idempotency keys of the events on the deal log, in key order.
    async fn logged_keys(setup: &Setup) -> Vec<String> {
        log_values(setup)
            .await
            .iter()
            .map(|v| {
                DealEvent::decode(v.as_slice())
                    .expect("an envelope")
                    .idempotency_key
            })
            .collect()
    }

    /// A call whose keys are partly on record: the plain insert fails on
    /// them and writes nothing; the call then records only its new keys, as
    /// one batch, and answers the others from the record.
    #[tokio::test]
    async fn a_call_with_keys_on_record_records_only_its_new_keys() {
        let setup = setup().await;
        let first = receipts(
            &setup.ingestor,
            &[submission("mixed-2"), submission("mixed-4")],
            "first",
        )
        .await;
        let keys = ["mixed-1", "mixed-2", "mixed-3", "mixed-4", "mixed-5"];
        let deals: Vec<Submission> = keys.iter().map(|k| submission(k)).collect();
        let answers = receipts(&setup.ingestor, &deals, "second").await;
        let duplicates: Vec<bool> = answers.iter().map(|r| r.duplicate).collect();
        assert_eq!(duplicates, [false, true, false, true, false]);
        let recorded = &first[0];
        assert_eq!(
            (answers[1].event_id, answers[1].partition, answers[1].offset),
            (recorded.event_id, recorded.partition, recorded.offset)
        );

        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT s.idempotency_key, count(b.batch_id)
             FROM ingest_submissions s LEFT JOIN ingest_batches b USING (batch_id)
             GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&setup.pool)
        .await
        .expect("rows");
        let expected: Vec<(String, i64)> = keys.iter().map(|k| (k.to_string(), 1)).collect();
        assert_eq!(rows, expected, "each key once, each with its batch");
        let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_batches")
            .fetch_one(&setup.pool)
            .await
            .expect("batches");
        assert_eq!(batches, 2, "the failed plain insert left no batch behind");
        assert_eq!(logged_keys(&setup).await, keys, "one event per key");
    }

    /// Keys recorded before the retention cutoff (a batch two hours old,
    /// and a row from before batches) are forgotten with their batch; a key
    /// recorded since is kept. A forgotten key is new again: its next
    /// submission is a new event. The purge deletes one row per statement
    /// here, so its chunk loop runs to the end.
    #[tokio::test]
    async fn keys_past_retention_are_forgotten_and_new_again() {
        let setup = setup().await;
        let now = Utc::now();
        let old = setup
            .ingestor
            .submit_at(
                &[submission("old-1"), submission("old-2")],
                Channel::Grpc,
                "two hours ago",
                now - chrono::Duration::hours(2),
            )
            .await
            .expect("answered");
        let old_event = old[0].clone().expect("a receipt").event_id;
        let recent = receipts(&setup.ingestor, &[submission("recent")], "now").await;
        record_as_before_batches(&setup, "before-batches").await;
        sqlx::query(
            "UPDATE ingest_submissions SET created_at = now() - interval '3 hours'
             WHERE idempotency_key = 'before-batches'",
        )
        .execute(&setup.pool)
        .await
        .expect("aged");

        let forgotten =
            crate::retention::forget_before(&setup.pool, now - chrono::Duration::hours(1), 1)
                .await
                .expect("purged");
        assert_eq!(
            forgotten,
            crate::retention::Forgotten {
                keys: 3,
                batches: 1
            }
        );
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT idempotency_key FROM ingest_submissions")
                .fetch_all(&setup.pool)
                .await
                .expect("keys");
        assert_eq!(keys, ["recent"]);
        let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_batches")
            .fetch_one(&setup.pool)
            .await
            .expect("batches");
        assert_eq!(batches, 1, "the recent key's batch is kept");

        let again = receipts(
            &setup.ingestor,
            &[submission("old-1"), submission("recent")],
            "later",
        )
        .await;
        assert!(!again[0].duplicate, "a forgotten key is new again");
        assert_ne!(again[0].event_id, old_event);
        assert!(
            again[1].duplicate,
            "a kept key is still answered from the record"
        );
        assert_eq!(again[1].event_id, recent[0].event_id);
        assert_eq!(
            logged_keys(&setup).await,
            ["old-1", "old-1", "old-2", "recent"]
        );
    }

    /// A key on record when a call records its keys, and forgotten before
    /// the call reads it, is not answered as reused: the call fails, to be
    /// retried, and the retry records the key as new.
    #[tokio::test]
    async fn a_key_forgotten_while_a_call_answers_it_fails_the_call_for_a_retry() {
        let setup = setup().await;
        let deals = [submission("expiring")];
        receipts(&setup.ingestor, &deals, "first").await;
        let call = Call::new(&deals, Channel::Grpc, "retry", Utc::now()).unwrap();
        let mut answers = Answers::new(&call);
        let batch = setup.ingestor.record(&call).await.expect("recorded");
        assert!(batch.new.is_empty(), "the key is on record");
        setup
            .ingestor
            .send_batch(&call, batch, &mut answers)
            .await
            .expect("nothing to send");
        let forgotten = crate::retention::forget_before(
            &setup.pool,
            Utc::now() + chrono::Duration::seconds(1),
            crate::retention::CHUNK,
        )
        .await
        .expect("purged");
        assert_eq!(forgotten.keys, 1);

        let answered = setup.ingestor.answer_recorded(&call, &mut answers).await;
        assert!(matches!(answered, Err(Error::Forgotten)), "{answered:?}");
        let retry = receipts(&setup.ingestor, &deals, "retry").await;
        assert!(!retry[0].duplicate, "the forgotten key is new again");
        assert_eq!(logged_keys(&setup).await, ["expiring", "expiring"]);
    }

    /// A call that died after recording its events and before sending them
    /// leaves them pending; the retry, later and under another correlation
    /// id, sends the events the first call would have sent, byte for byte,
    /// and records their receipts.
    #[tokio::test]
    async fn a_retry_after_a_crash_before_sending_sends_the_recorded_event() {
        let mut setup = setup().await;
        let mut registry = Registry::default();
        setup.ingestor = setup.ingestor.clone().with_metrics(&mut registry);
        let deals = [submission("crashed-1"), submission("crashed-2")];
        let first = Call::new(&deals, Channel::Webhook, "first-attempt", Utc::now()).unwrap();
        let batch = setup.ingestor.record(&first).await.expect("recorded");
        assert_eq!(batch.new, [0, 1]);
        // The process dies here: its connection, and the batch's lock, go.
        drop(batch);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;

        let receipts = receipts(&setup.ingestor, &deals, "retry").await;
        for (receipt, entry) in receipts.iter().zip(&first.entries) {
            assert_eq!(receipt.event_id, entry.event_id);
            assert!(!receipt.duplicate, "the retry is the first send");
            assert!(receipt.offset >= 0);
        }

        let again = setup
            .ingestor
            .submit(&deals, Channel::Grpc, "another retry")
            .await
            .expect("second retry");
        for (answer, receipt) in again.into_iter().zip(&receipts) {
            let answer = answer.expect("a receipt");
            assert!(answer.duplicate);
            assert_eq!(
                (answer.event_id, answer.partition, answer.offset),
                (receipt.event_id, receipt.partition, receipt.offset)
            );
        }

        let expected: Vec<&[u8]> = first
            .entries
            .iter()
            .map(|e| e.envelope.as_slice())
            .collect();
        assert_eq!(
            log_values(&setup).await,
            expected,
            "the first call's events, byte for byte, once each"
        );
        let event = DealEvent::decode(expected[0]).expect("an envelope");
        assert_eq!(event.correlation_id, "first-attempt");

        let mut metrics = String::new();
        dealmesh_runtime::metrics::prometheus_client::encoding::text::encode(
            &mut metrics,
            &registry,
        )
        .expect("metrics");
        for line in [
            r#"ingest_submissions_total{channel="grpc",outcome="completed"} 2"#,
            r#"ingest_submissions_total{channel="grpc",outcome="duplicate"} 2"#,
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
        assert!(!metrics.contains(r#"outcome="new""#), "{metrics}");
    }

    /// A retry with other content under a pending key must not send its own
    /// content: it is refused, and the key stays pending for a true retry.
    #[tokio::test]
    async fn a_pending_key_is_not_completed_with_other_content() {
        let setup = setup().await;
        let deals = [submission("pending")];
        let first = Call::new(&deals, Channel::Grpc, "first", Utc::now()).unwrap();
        drop(setup.ingestor.record(&first).await.expect("recorded"));

        let mut other = submission("pending");
        other.description = "something else".into();
        let answers = setup
            .ingestor
            .submit(&[other], Channel::Grpc, "other")
            .await
            .expect("answered");
        assert_eq!(answers, [Err(Refusal::KeyReused)]);
        assert!(log_values(&setup).await.is_empty());

        let answers = setup
            .ingestor
            .submit(&deals, Channel::Grpc, "retry")
            .await
            .expect("answered");
        assert_eq!(
            answers[0].as_ref().map(|r| r.event_id),
            Ok(first.entries[0].event_id)
        );
        assert_eq!(
            log_values(&setup).await,
            std::slice::from_ref(&first.entries[0].envelope)
        );
    }

    /// Two replicas (own pools, one database and broker) take overlapping
    /// batches in different orders at the same time: every key lands once,
    /// every answer for it names that one event, and exactly one answer per
    /// key is not a duplicate. Nothing deadlocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn overlapping_batches_on_two_replicas_write_each_key_once() {
        let setup = setup().await;
        let other_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&setup.db.url)
            .await
            .expect("a second pool");
        let replicas = [
            setup.ingestor.clone(),
            Ingestor::new(other_pool, setup.ingestor.producer.clone()),
        ];
        const KEYS: usize = 240;
        let calls: Vec<_> = (0..6)
            .map(|task| {
                let ingestor = replicas[task % 2].clone();
                // Each task walks all keys from its own starting point, in
                // batches of 40, half of them backwards.
                let mut keys: Vec<usize> = (0..KEYS).map(|k| (k + task * 37) % KEYS).collect();
                if task % 3 == 1 {
                    keys.reverse();
                }
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for chunk in keys.chunks(40) {
                        let deals: Vec<Submission> = chunk
                            .iter()
                            .map(|k| submission(&format!("k{k:03}")))
                            .collect();
                        let receipts = ingestor
                            .submit(&deals, Channel::Grpc, &format!("task-{task}"))
                            .await
                            .expect("answered");
                        for (k, receipt) in chunk.iter().zip(receipts) {
                            answers.push((*k, receipt.expect("a receipt")));
                        }
                    }
                    answers
                })
            })
            .collect();
        let mut by_key: BTreeMap<usize, Vec<Receipt>> = BTreeMap::new();
        for call in calls {
            let answers = tokio::time::timeout(std::time::Duration::from_secs(120), call)
                .await
                .expect("no deadlock")
                .expect("joined");
            for (k, receipt) in answers {
                by_key.entry(k).or_default().push(receipt);
            }
        }
        assert_eq!(by_key.len(), KEYS);
        for (k, receipts) in &by_key {
            assert_eq!(receipts.len(), 6, "key {k}");
            assert_eq!(
                receipts.iter().filter(|r| !r.duplicate).count(),
                1,
                "key {k}"
            );
            let first = &receipts[0];
            assert!(
                receipts.iter().all(|r| (r.event_id, r.partition, r.offset)
                    == (first.event_id, first.partition, first.offset)),
                "key {k}: {receipts:?}"
            );
        }
        let events: Vec<DealEvent> = log_values(&setup)
            .await
            .iter()
            .map(|v| DealEvent::decode(v.as_slice()).expect("an envelope"))
            .collect();
        assert_eq!(events.len(), KEYS, "one event per key");
        let ids: std::collections::HashSet<&str> =
            events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids.len(), KEYS);
    }

    /// Records `key` as a replica of the previous version did: the row with
    /// its envelope, no batch, no receipt yet.
    async fn record_as_before_batches(setup: &Setup, key: &str) -> Entry {
        let deals = [submission(key)];
        let old = Call::new(&deals, Channel::Csv, "before-upgrade", Utc::now()).unwrap();
        let entry = old.entries.into_iter().next().expect("one entry");
        sqlx::query(
            "INSERT INTO ingest_submissions
                 (source, idempotency_key, fingerprint, event_id, deal_id, company_key, envelope)
             VALUES ('tests', $1, $2, $3, $4, $5, $6)",
        )
        .bind(key)
        .bind(&old.fingerprints[0])
        .bind(entry.event_id)
        .bind(entry.deal_id)
        .bind(&entry.company_key)
        .bind(&entry.envelope)
        .execute(&setup.pool)
        .await
        .expect("a row as stored before batches");
        entry
    }

    /// While a replica of the previous version sends a key (holding its row
    /// lock), a retry on this version waits and answers from its receipt.
    #[tokio::test]
    async fn a_retry_waits_for_a_previous_version_sending_the_key() {
        let setup = setup().await;
        let entry = record_as_before_batches(&setup, "in-flight").await;
        let mut sender = setup.pool.begin().await.expect("a transaction");
        sqlx::query(
            "SELECT 1 FROM ingest_submissions
             WHERE idempotency_key = 'in-flight' FOR NO KEY UPDATE",
        )
        .execute(&mut *sender)
        .await
        .expect("the row locked");

        let ingestor = setup.ingestor.clone();
        let retry = tokio::spawn(async move {
            ingestor
                .submit(&[submission("in-flight")], Channel::Grpc, "retry")
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!retry.is_finished(), "the retry waits for the sender");

        let delivery = setup
            .ingestor
            .producer
            .publish_encoded(&entry.event, &entry.envelope)
            .await
            .expect("sent");
        sqlx::query(
            "UPDATE ingest_submissions SET kafka_partition = $1, kafka_offset = $2
             WHERE idempotency_key = 'in-flight'",
        )
        .bind(delivery.partition)
        .bind(delivery.offset)
        .execute(&mut *sender)
        .await
        .expect("the receipt");
        sender.commit().await.expect("committed");

        let answers = retry.await.expect("joined").expect("answered");
        let receipt = answers[0].clone().expect("a receipt");
        assert_eq!(
            (receipt.event_id, receipt.offset, receipt.duplicate),
            (entry.event_id, delivery.offset, true)
        );
        assert_eq!(
            log_values(&setup).await,
            std::slice::from_ref(&entry.envelope)
        );
    }

    /// A key recorded before batches, with its envelope and without a
    /// receipt, is sent as stored by its retry.
    #[tokio::test]
    async fn a_pending_row_from_before_batches_is_sent_as_stored() {
        let setup = setup().await;
        let entry = &record_as_before_batches(&setup, "legacy").await;
        let deals = [submission("legacy")];

        let answers = setup
            .ingestor
            .submit(&deals, Channel::Grpc, "retry")
            .await
            .expect("answered");
        let receipt = answers[0].clone().expect("a receipt");
        assert_eq!(
            (receipt.event_id, receipt.duplicate),
            (entry.event_id, false)
        );
        let again = setup
            .ingestor
            .submit(&deals, Channel::Grpc, "again")
            .await
            .expect("answered");
        assert_eq!(
            again[0].clone().map(|r| (r.offset, r.duplicate)),
            Ok((receipt.offset, true))
        );
        assert_eq!(
            log_values(&setup).await,
            std::slice::from_ref(&entry.envelope)
        );
    }
}
