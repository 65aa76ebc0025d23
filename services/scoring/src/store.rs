//! The scoring service's PostgreSQL state (schema `scoring`): the latest
//! enrichment and score per deal, and the ids of every DealScored published.
//! Every write is idempotent, so a redelivered record changes nothing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored enrichment, as consumed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEnrichment {
    pub deal_id: String,
    pub event_id: String,
    pub envelope: Vec<u8>,
}

/// A deal's latest score, as published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredScore {
    pub deal_id: String,
    pub event_id: String,
    pub envelope: Vec<u8>,
    pub features: Vec<u8>,
    pub scored_at: DateTime<Utc>,
}

/// A score to record once its event is on the log.
#[derive(Debug)]
pub struct NewScore<'a> {
    pub deal_id: &'a str,
    pub event_id: &'a str,
    pub source_event_id: &'a str,
    pub source_occurred_at: DateTime<Utc>,
    pub model_version: &'a str,
    pub score: f64,
    pub envelope: &'a [u8],
    pub features: &'a [u8],
    pub scored_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Keeps the enrichment if it is the deal's newest (by occurred_at, then
    /// event id, so the outcome does not depend on delivery order).
    #[tracing::instrument(skip_all, fields(deal_id, event_id), err)]
    pub async fn save_enrichment(
        &self,
        deal_id: &str,
        event_id: &str,
        occurred_at: DateTime<Utc>,
        envelope: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO scoring.enrichments (deal_id, event_id, occurred_at, envelope)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (deal_id) DO UPDATE
               SET event_id = EXCLUDED.event_id,
                   occurred_at = EXCLUDED.occurred_at,
                   envelope = EXCLUDED.envelope,
                   stored_at = now()
             WHERE (EXCLUDED.occurred_at, EXCLUDED.event_id)
                 > (scoring.enrichments.occurred_at, scoring.enrichments.event_id)",
        )
        .bind(deal_id)
        .bind(event_id)
        .bind(occurred_at)
        .bind(envelope)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a DealScored with this id was already published.
    pub async fn was_published(&self, event_id: &str) -> Result<bool> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM scoring.published WHERE event_id = $1")
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Records a published score: its id, and the deal's latest score unless
    /// a newer enrichment's score is already there.
    #[tracing::instrument(skip_all, fields(deal_id = score.deal_id, event_id = score.event_id), err)]
    pub async fn save_score(&self, score: &NewScore<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO scoring.published (event_id, deal_id) VALUES ($1, $2)
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(score.event_id)
        .bind(score.deal_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO scoring.scores (deal_id, event_id, source_event_id, source_occurred_at,
                                         model_version, score, envelope, features, scored_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (deal_id) DO UPDATE
               SET event_id = EXCLUDED.event_id,
                   source_event_id = EXCLUDED.source_event_id,
                   source_occurred_at = EXCLUDED.source_occurred_at,
                   model_version = EXCLUDED.model_version,
                   score = EXCLUDED.score,
                   envelope = EXCLUDED.envelope,
                   features = EXCLUDED.features,
                   scored_at = EXCLUDED.scored_at
             WHERE (EXCLUDED.source_occurred_at, EXCLUDED.scored_at)
                >= (scoring.scores.source_occurred_at, scoring.scores.scored_at)",
        )
        .bind(score.deal_id)
        .bind(score.event_id)
        .bind(score.source_event_id)
        .bind(score.source_occurred_at)
        .bind(score.model_version)
        .bind(score.score)
        .bind(score.envelope)
        .bind(score.features)
        .bind(score.scored_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The deal's latest score.
    pub async fn score(&self, deal_id: &str) -> Result<Option<StoredScore>> {
        Ok(sqlx::query_as(
            "SELECT deal_id, event_id, envelope, features, scored_at
             FROM scoring.scores WHERE deal_id = $1",
        )
        .bind(deal_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Up to `limit` stored enrichments with deal id after `after`, in deal id
    /// order (keyset pagination, so a rescore of many deals holds no cursor).
    pub async fn enrichments_after(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StoredEnrichment>> {
        Ok(sqlx::query_as(
            "SELECT deal_id, event_id, envelope FROM scoring.enrichments
             WHERE deal_id > $1 ORDER BY deal_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
