//! `dealmesh-crm audit verify`: is the log still what was projected, and is
//! the read model still what the log gives?
//!
//! 1. The projector keeps, in `projector_checkpoints`, the head of a
//!    per-partition hash chain over every record it consumed (offset, key,
//!    value; see `dealmesh_audit::chain`), written in each batch's
//!    transaction. Verify re-reads each partition from its start,
//!    recomputes the chain and reports the first checkpoint it does not
//!    match: a record after the last matching checkpoint and at most at
//!    that one was altered, lost or moved.
//! 2. It rebuilds the read model into a scratch schema up to exactly the
//!    offsets the live one has projected (read in the same snapshot as the
//!    live tables' checksums) and compares the per-table checksums. Where a
//!    merge raced with the merged deal's first event across partitions the
//!    live `deals.merged_into` may legitimately differ (see
//!    [`crate::replay`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dealmesh_audit::{ChainCheckpoint, ChainVerification};
use dealmesh_eventlog::KafkaSettings;
use sqlx::{AssertSqlSafe, Executor};
use tracing::instrument;

use crate::checksum::{self, TableChecksum};
use crate::replay::{self, Progress, ReplaySettings};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Audit(#[from] dealmesh_audit::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Replay(#[from] replay::Error),
    #[error(
        "schema {schema} has no hash checkpoints for topic {topic}: nothing to verify \
         (the projector writes them with every batch)"
    )]
    NoCheckpoints { schema: String, topic: String },
}

impl Error {
    /// The process exit status (sysexits.h), as the other audit commands.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Audit(e) => e.exit_code(),
            Error::Replay(e) => e.exit_code(),
            Error::NoCheckpoints { .. } => 66,
            Error::Database(_) => 70,
        }
    }
}

/// The checkpoints `schema`'s projector kept for `topic`, in partition and
/// offset order.
pub async fn checkpoints(
    pool: &sqlx::PgPool,
    schema: &str,
    topic: &str,
) -> Result<Vec<ChainCheckpoint>, Error> {
    if !crate::config::is_name(schema) {
        return Err(replay::Error::BadSchema(schema.to_owned()).into());
    }
    let exists: bool = sqlx::query_scalar(
        "SELECT to_regclass(format('%I.projector_checkpoints', $1::text)) IS NOT NULL",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Err(Error::NoCheckpoints {
            schema: schema.to_owned(),
            topic: topic.to_owned(),
        });
    }
    // Checked above: a plain identifier.
    let rows: Vec<(i32, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT partition, \"offset\", hash FROM {schema}.projector_checkpoints
         WHERE topic = $1 ORDER BY partition, \"offset\""
    )))
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, offset, hash)| ChainCheckpoint {
            partition,
            offset,
            hash,
        })
        .collect())
}

/// Re-reads every checkpointed partition of `topic` from its start and
/// compares it with `checkpoints`; one result per partition.
#[instrument(skip_all, fields(%topic), err)]
pub async fn verify_log(
    kafka: &KafkaSettings,
    topic: &str,
    checkpoints: &[ChainCheckpoint],
) -> Result<Vec<ChainVerification>, Error> {
    let partitions: BTreeSet<i32> = checkpoints.iter().map(|c| c.partition).collect();
    let mut results = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let of_partition: Vec<ChainCheckpoint> = checkpoints
            .iter()
            .filter(|c| c.partition == partition)
            .cloned()
            .collect();
        results.push(
            dealmesh_audit::verify_chain(kafka, topic, partition, None, &of_partition).await?,
        );
    }
    Ok(results)
}

/// One line per partition.
pub fn render_chain(results: &[ChainVerification]) -> String {
    let mut out = String::new();
    for r in results {
        match &r.first_mismatch {
            Some(mismatch) => out.push_str(&format!("log: MISMATCH {mismatch}\n")),
            None => out.push_str(&format!(
                "log: partition {}: {} records, {} checkpoints match{}\n",
                r.partition,
                r.records,
                r.matched,
                r.head
                    .as_ref()
                    .map(|h| format!(", head at offset {}", h.offset))
                    .unwrap_or_default()
            )),
        }
    }
    out
}

/// The live read model against a rebuild of the same offsets.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The offsets the live schema had projected, which the rebuild stopped at.
    pub offsets: BTreeMap<i32, i64>,
    pub live: Vec<TableChecksum>,
    pub rebuilt: Vec<TableChecksum>,
    /// Read-model tables whose checksums differ.
    pub differing: Vec<String>,
}

/// Rebuilds into `scratch` (which must not exist; dropped afterwards) up to
/// the offsets `live_schema` has projected and compares the checksums.
#[instrument(skip_all, fields(live = %live_schema, %scratch), err)]
pub async fn compare_with_rebuild(
    database_url: &str,
    live_schema: &str,
    scratch: &str,
    template: &ReplaySettings,
    max_connections: u32,
    progress: Arc<Progress>,
) -> Result<Comparison, Error> {
    let live_pool = replay::connect_existing(database_url, live_schema).await?;
    let mut tx = live_pool.begin().await?;
    // One snapshot for the offsets and every table.
    tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    // Checked by connect_existing: a plain identifier.
    let offsets: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(AssertSqlSafe(format!(
        "SELECT partition, next_offset FROM {live_schema}.projector_offsets WHERE topic = $1"
    )))
    .bind(&template.topic)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let live = checksum::checksums_on(&mut tx, live_schema).await?;
    tx.commit().await?;
    live_pool.close().await;

    let pool = replay::create_schema(database_url, scratch, max_connections).await?;
    let settings = ReplaySettings {
        schema: scratch.to_owned(),
        as_of: None,
        until: Some(offsets.clone()),
        ..template.clone()
    };
    let outcome = async {
        replay::replay(&pool, &settings, progress).await?;
        Ok::<_, Error>(checksum::checksums(&pool, scratch).await?)
    }
    .await;
    replay::drop_schema(&pool, scratch).await?;
    pool.close().await;
    let rebuilt = outcome?;
    let differing = checksum::differences(&live, &rebuilt);
    Ok(Comparison {
        offsets,
        live,
        rebuilt,
        differing,
    })
}
