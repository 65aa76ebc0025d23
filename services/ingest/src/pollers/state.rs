//! Per-search poller state in PostgreSQL (`ingest_poller_state`): the
//! first page's validator, the cursor of an unfinished pass, the last error
//! and whether the provider rejected the search. Progress is saved after
//! every page, so a restart resumes at the page after the last one emitted.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Where a search stands when a run begins.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SearchState {
    pub etag: Option<String>,
    pub cursor: Option<String>,
    pub disabled_reason: Option<String>,
}

/// The whole row, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateRow {
    pub poller: String,
    pub search: String,
    pub etag: Option<String>,
    pub cursor: Option<String>,
    pub disabled_reason: Option<String>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub emitted: i64,
}

#[derive(Clone)]
pub struct StateStore {
    pool: PgPool,
}

/// One replica's exclusive right to run a search: a PostgreSQL session
/// advisory lock on a connection taken out of the pool. Released by
/// [`Claim::release`], or by the server when the connection closes (drop,
/// crash), so a lock can never outlive its holder.
pub struct Claim {
    connection: sqlx::PgConnection,
    key: String,
}

impl Claim {
    pub async fn release(mut self) {
        let released = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&self.key)
            .execute(&mut self.connection)
            .await;
        if let Err(error) = released {
            tracing::warn!(error = %error, "cannot release the poller lock; closing its connection");
        }
        let _ = sqlx::Connection::close(self.connection).await;
    }
}

/// The advisory lock key of a search.
pub fn claim_key(poller: &str, search: &str) -> String {
    format!("dealmesh-ingest/poller/{poller}/{search}")
}

impl StateStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Claims `search` for this replica, or `None` while another replica
    /// (or another run here) is polling it: replicas share the work instead
    /// of paying the provider twice.
    pub async fn try_claim(
        &self,
        poller: &str,
        search: &str,
    ) -> Result<Option<Claim>, sqlx::Error> {
        let key = claim_key(poller, search);
        let mut connection = self.pool.acquire().await?.detach();
        let claimed: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut connection)
                .await?;
        if claimed {
            Ok(Some(Claim { connection, key }))
        } else {
            let _ = sqlx::Connection::close(connection).await;
            Ok(None)
        }
    }

    /// Marks a run of `search` as started and returns its state. A search
    /// whose definition changed starts over: new validator, no cursor, no
    /// longer disabled.
    #[tracing::instrument(skip_all, fields(poller, search), err)]
    pub async fn begin(
        &self,
        poller: &str,
        search: &str,
        definition: &str,
    ) -> Result<SearchState, sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO ingest_poller_state (poller, search, definition, last_run_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (poller, search) DO UPDATE SET
                 last_run_at = now(),
                 definition = EXCLUDED.definition,
                 etag = CASE WHEN ingest_poller_state.definition = EXCLUDED.definition
                             THEN ingest_poller_state.etag END,
                 cursor = CASE WHEN ingest_poller_state.definition = EXCLUDED.definition
                               THEN ingest_poller_state.cursor END,
                 disabled_reason = CASE WHEN ingest_poller_state.definition = EXCLUDED.definition
                                        THEN ingest_poller_state.disabled_reason END
             RETURNING etag, cursor, disabled_reason",
        )
        .bind(poller)
        .bind(search)
        .bind(definition)
        .fetch_one(&self.pool)
        .await
    }

    /// Records a page as done: `cursor` is where the next page starts
    /// (`None` at the end of the results); `etag`, when given, replaces the
    /// stored validator.
    #[tracing::instrument(skip_all, fields(poller, search), err)]
    pub async fn advance(
        &self,
        poller: &str,
        search: &str,
        etag: Option<&str>,
        cursor: Option<&str>,
        emitted: usize,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE ingest_poller_state
             SET etag = COALESCE($3, etag), cursor = $4, emitted = emitted + $5
             WHERE poller = $1 AND search = $2",
        )
        .bind(poller)
        .bind(search)
        .bind(etag)
        .bind(cursor)
        .bind(i64::try_from(emitted).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn succeed(&self, poller: &str, search: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE ingest_poller_state
             SET last_success_at = now(), last_error = NULL, last_error_at = NULL
             WHERE poller = $1 AND search = $2",
        )
        .bind(poller)
        .bind(search)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn fail(&self, poller: &str, search: &str, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE ingest_poller_state
             SET last_error = $3, last_error_at = now()
             WHERE poller = $1 AND search = $2",
        )
        .bind(poller)
        .bind(search)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Turns the search off until its definition changes.
    pub async fn disable(
        &self,
        poller: &str,
        search: &str,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE ingest_poller_state
             SET disabled_reason = $3, last_error = $3, last_error_at = now(), cursor = NULL
             WHERE poller = $1 AND search = $2",
        )
        .bind(poller)
        .bind(search)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get(&self, poller: &str, search: &str) -> Result<Option<StateRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT poller, search, etag, cursor, disabled_reason, last_run_at,
                    last_success_at, last_error, emitted
             FROM ingest_poller_state WHERE poller = $1 AND search = $2",
        )
        .bind(poller)
        .bind(search)
        .fetch_optional(&self.pool)
        .await
    }

    /// Records how a run ended: success, the search disabled, or an error
    /// kept for the operator (and retried on the next run).
    pub(crate) async fn finish(
        &self,
        poller: &str,
        search: &str,
        outcome: &super::Result<super::SearchRun>,
    ) -> Result<(), sqlx::Error> {
        match outcome {
            Ok(_) => self.succeed(poller, search).await,
            Err(super::Error::InvalidSearch { .. }) => {
                let reason = outcome.as_ref().err().map(ToString::to_string);
                self.disable(poller, search, reason.as_deref().unwrap_or_default())
                    .await
            }
            // A shutdown is not a failure of the search.
            Err(super::Error::Cancelled) => Ok(()),
            Err(error) => self.fail(poller, search, &error.to_string()).await,
        }
    }
}
