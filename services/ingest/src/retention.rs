//! Idempotency keys are kept for a retention period, then forgotten: a
//! submission whose key is older than that is new again and becomes a new
//! event. Without it the store grows by a row per deal forever.
//!
//! Every replica purges on its own schedule; purges running at once only
//! wait on each other's row locks. A purge deletes in chunks, each chunk its
//! own short statement, so it never holds many locks for long. Key rows go
//! before their batch rows, and both by the same cutoff on the batch id (a
//! UUIDv7, ordered by the time it was made), so a key on record always has
//! its batch: a retry never finds a key without the batch it needs. A key
//! forgotten between a call's insert (which found it on record) and its read
//! fails the call as unavailable; the client's retry records it as new.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dealmesh_runtime::metrics::prometheus_client::metrics::counter::Counter;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;
use dealmesh_runtime::shutdown::CancellationToken;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

/// Rows deleted per statement.
pub const CHUNK: i64 = 10_000;

/// What one purge forgot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub keys: u64,
    pub batches: u64,
}

/// The smallest batch id made at `cutoff`: every batch recorded earlier has
/// a smaller one (UUIDv7 ids compare by their leading milliseconds first).
fn first_id_at(cutoff: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(cutoff.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid()
}

/// Forgets every key recorded before `cutoff`, and its batch, deleting at
/// most `chunk` rows per statement.
pub async fn forget_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    chunk: i64,
) -> sqlx::Result<Forgotten> {
    let first_kept = first_id_at(cutoff);
    let batched = delete_in_chunks(pool, chunk, || {
        sqlx::query(
            "DELETE FROM ingest_submissions WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM ingest_submissions WHERE batch_id < $1 LIMIT $2))",
        )
        .bind(first_kept)
    })
    .await?;
    let unbatched = delete_in_chunks(pool, chunk, || {
        sqlx::query(
            "DELETE FROM ingest_submissions WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM ingest_submissions
                 WHERE batch_id IS NULL AND created_at < $1 LIMIT $2))",
        )
        .bind(cutoff)
    })
    .await?;
    let batches = delete_in_chunks(pool, chunk, || {
        sqlx::query(
            "DELETE FROM ingest_batches WHERE batch_id = ANY(ARRAY(
                 SELECT batch_id FROM ingest_batches WHERE batch_id < $1 LIMIT $2))",
        )
        .bind(first_kept)
    })
    .await?;
    Ok(Forgotten {
        keys: batched + unbatched,
        batches,
    })
}

/// Runs the delete `statement` makes, with the chunk size bound last, until
/// it deletes less than a chunk; the rows deleted.
async fn delete_in_chunks<'q>(
    pool: &PgPool,
    chunk: i64,
    statement: impl Fn() -> Query<'q, Postgres, PgArguments>,
) -> sqlx::Result<u64> {
    let full = u64::try_from(chunk).unwrap_or(u64::MAX);
    let mut deleted = 0;
    loop {
        let rows = statement().bind(chunk).execute(pool).await?.rows_affected();
        deleted += rows;
        if rows < full {
            return Ok(deleted);
        }
    }
}

/// The purge as a background task: once at start, then every `interval`,
/// forgetting the keys older than `keep`, until `shutdown`.
pub struct Purger {
    pool: PgPool,
    /// Unbounded when too long to subtract from a date: nothing is purged.
    keep: chrono::Duration,
    interval: Duration,
    keys: Counter,
}

impl Purger {
    pub fn new(pool: PgPool, keep: Duration, interval: Duration) -> Self {
        Self {
            pool,
            keep: chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX),
            interval,
            keys: Counter::default(),
        }
    }

    /// Counts the keys forgotten in `registry`.
    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        registry.register(
            "ingest_idempotency_keys_forgotten",
            "Idempotency keys forgotten once older than the retention period",
            self.keys.clone(),
        );
        self
    }

    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // A long first purge (after an upgrade, or with a shorter
            // retention) stops with the service; what it deleted stays
            // deleted, chunk by chunk.
            dealmesh_runtime::shutdown::every(self.interval, &shutdown, || async {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.purge_once() => {}
                }
            })
            .await;
        })
    }

    async fn purge_once(&self) {
        let Some(cutoff) = Utc::now().checked_sub_signed(self.keep) else {
            return;
        };
        match forget_before(&self.pool, cutoff, CHUNK).await {
            Ok(forgotten) => {
                self.keys.inc_by(forgotten.keys);
                if forgotten != Forgotten::default() {
                    tracing::info!(
                        keys = forgotten.keys,
                        batches = forgotten.batches,
                        recorded_before = %cutoff,
                        "idempotency keys forgotten"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "purging idempotency keys failed; trying again later");
            }
        }
    }
}
