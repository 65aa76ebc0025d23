//! `dealmesh-crm rebuild`: builds a fresh read model from the first offset
//! in a new schema beside the live one (which keeps serving queries and
//! commands meanwhile), catches up with the end of the log, then optionally
//! swaps it in and drops the old schema after a grace period.
//!
//! # The swap
//!
//! The live service names its schema on every connection's `search_path`
//! (`DEALMESH_CRM_SCHEMA`), never by OID, so renaming schemas moves every
//! new statement to the other tables. The swap is:
//!
//! 1. take the session advisory lock [`swap_lock`] of the live schema, which
//!    every projector batch also takes (shared, for its transaction): once
//!    it is held no live batch is in flight and none can commit;
//! 2. catch the new schema up with the end of the log (a replay pass under
//!    the lock; the new schema's own batches take the lock of *its* name, so
//!    they do not wait for it);
//! 3. in one transaction: copy `command_requests` (not projected from the
//!    log) into the new schema, rename the live schema to
//!    `<live>_retired_<timestamp>` and the new one to the live name, and
//!    `NOTIFY` [`swap_channel`] with the retired name;
//! 4. release the lock.
//!
//! What this guarantees, with projectors that take the lock (this build's):
//! the live projector's next batch runs against the new schema; it reads
//! that schema's `projector_offsets` (where the rebuild stopped, at or
//! beyond anything the live projector had committed) in its transaction and
//! skips every record below them, and the rebuild read to the end of the
//! log while no live batch could commit, so no record is lost or applied
//! twice. PostgreSQL re-plans a prepared statement when its `search_path`
//! resolves to other schemas, so pooled connections with cached statements
//! read the new tables from their next statement (a test checks this). A
//! query already running finishes on the old tables, which still exist
//! (renamed) until the grace period ends. A command whose idempotency
//! record was written to the old schema in the instant of the swap keeps
//! its event id (derived from the key), so a retry publishes the same event
//! and the projector drops the duplicate.
//!
//! Not guaranteed: a projector of an older build (without the lock) could
//! commit a batch into the old schema between the final catch-up and the
//! rename; stop such projectors before `--swap`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::{AssertSqlSafe, Connection, Executor, PgPool};
use tracing::instrument;

use crate::replay::{self, Error, Progress, ReplayReport, ReplaySettings};

/// The most catch-up passes before the swap (each reads what was appended
/// during the previous one).
const MAX_CATCH_UP_PASSES: usize = 10;

/// What a rebuild needs.
#[derive(Clone, Debug)]
pub struct RebuildSettings {
    pub database_url: String,
    /// The live schema (`DEALMESH_CRM_SCHEMA`).
    pub live_schema: String,
    pub replay: ReplaySettings,
    pub max_connections: u32,
    /// Swap the new schema in once it has caught up.
    pub swap: bool,
    /// How long the retired schema is kept after the swap before it is
    /// dropped; `None` keeps it.
    pub drop_after: Option<Duration>,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// The schema the rebuild was written to (its name before a swap).
    pub built: String,
    /// The old live schema's name after the swap, if swapped.
    pub retired: Option<String>,
    /// Whether the retired schema was dropped.
    pub dropped: bool,
    pub replay: ReplayReport,
}

/// The advisory lock (two-key form) a projector batch takes, shared, as
/// the first statement of its transaction, on the schema it writes to.
pub const BATCH_SWAP_LOCK: &str = "SELECT pg_advisory_xact_lock_shared(hashtext('dealmesh_crm_swap'), hashtext(current_schema()))";
/// The same lock, taken exclusively by a swap on the live schema `$1`.
const SWAP_LOCK: &str = "SELECT pg_advisory_lock(hashtext('dealmesh_crm_swap'), hashtext($1))";
const SWAP_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('dealmesh_crm_swap'), hashtext($1))";

/// The channel a swap notifies, with the retired schema's name as payload.
pub fn swap_channel(live_schema: &str) -> String {
    format!("dealmesh_crm_swap_{live_schema}")
}

/// A schema name with a UTC timestamp suffix, e.g. `crm_rebuild_20261123T101500`.
pub fn stamped(base: &str, what: &str) -> String {
    let stamp = Utc::now().format("%Y%m%dt%H%M%S");
    let mut name = format!("{base}_{what}_{stamp}");
    name.truncate(63);
    name
}

/// Builds the read model into a new schema and, with `swap`, swaps it in.
#[instrument(skip_all, fields(live = %settings.live_schema, into = %settings.replay.schema), err)]
pub async fn rebuild(
    settings: &RebuildSettings,
    progress: Arc<Progress>,
) -> Result<RebuildReport, Error> {
    // The live database must exist: a rebuild never creates one.
    replay::connect_existing(&settings.database_url, &settings.live_schema)
        .await?
        .close()
        .await;
    let target = settings.replay.schema.clone();
    let pool =
        replay::create_schema(&settings.database_url, &target, settings.max_connections).await?;
    tracing::info!(schema = %target, "rebuilding into a new schema");
    let mut report = replay::replay(&pool, &settings.replay, progress.clone()).await?;
    // Catch up with what was appended while replaying.
    for _ in 0..MAX_CATCH_UP_PASSES {
        let pass = replay::replay(&pool, &settings.replay, progress.clone()).await?;
        merge(&mut report, &pass);
        if pass.records == 0 {
            break;
        }
    }
    let mut out = RebuildReport {
        built: target.clone(),
        retired: None,
        dropped: false,
        replay: report,
    };
    if !settings.swap {
        pool.close().await;
        return Ok(out);
    }
    let retired = stamped(&settings.live_schema, "retired");
    let last = swap(&pool, settings, &retired, progress).await?;
    merge(&mut out.replay, &last);
    out.retired = Some(retired.clone());
    tracing::info!(live = %settings.live_schema, %retired, "swapped in the rebuilt schema");
    if let Some(grace) = settings.drop_after {
        tracing::info!(%retired, seconds = grace.as_secs(), "dropping the retired schema after the grace period");
        tokio::time::sleep(grace).await;
        replay::drop_schema(&pool, &retired).await?;
        out.dropped = true;
    }
    pool.close().await;
    Ok(out)
}

fn merge(total: &mut ReplayReport, pass: &ReplayReport) {
    total.records += pass.records;
    total.after_as_of += pass.after_as_of;
    total.batch.add(&pass.batch);
    total.end_offsets.extend(pass.end_offsets.clone());
}

/// Steps 1 to 4 of the module documentation. Returns the last catch-up.
#[instrument(skip_all, err)]
async fn swap(
    pool: &PgPool,
    settings: &RebuildSettings,
    retired: &str,
    progress: Arc<Progress>,
) -> Result<ReplayReport, Error> {
    let live = &settings.live_schema;
    let target = &settings.replay.schema;
    for name in [live.as_str(), target.as_str(), retired] {
        if !crate::config::is_name(name) {
            return Err(Error::BadSchema(name.to_owned()));
        }
    }
    // A session of its own (not from the replay's pool, whose connections
    // the last catch-up needs): the advisory lock belongs to it.
    let lock_pool = replay::connect_existing(&settings.database_url, live).await?;
    let mut session = lock_pool.acquire().await?;
    sqlx::query(SWAP_LOCK)
        .bind(live)
        .execute(&mut *session)
        .await?;
    let result = async {
        let last = replay::replay(pool, &settings.replay, progress).await?;
        let mut tx = session.begin().await?;
        // The names were checked above (plain identifiers).
        tx.execute(AssertSqlSafe(format!(
            "LOCK TABLE {live}.command_requests IN EXCLUSIVE MODE"
        )))
        .await?;
        tx.execute(AssertSqlSafe(format!(
            "INSERT INTO {target}.command_requests SELECT * FROM {live}.command_requests
             ON CONFLICT DO NOTHING"
        )))
        .await?;
        tx.execute(AssertSqlSafe(format!(
            "ALTER SCHEMA {live} RENAME TO {retired}"
        )))
        .await?;
        tx.execute(AssertSqlSafe(format!(
            "ALTER SCHEMA {target} RENAME TO {live}"
        )))
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(swap_channel(live))
            .bind(retired)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, Error>(last)
    }
    .await;
    // Released whatever happened; a failed swap rolled back and left both
    // schemas as they were.
    sqlx::query(SWAP_UNLOCK)
        .bind(live)
        .execute(&mut *session)
        .await?;
    drop(session);
    lock_pool.close().await;
    result
}
