//! The one path every channel takes: validated submissions become
//! `DealSourced` events on the deal log, exactly once per idempotency key.
//!
//! 1. The events are built and recorded in PostgreSQL (`pending`), so an
//!    event id is fixed before anything is sent.
//! 2. In a second transaction the rows are locked, pending ones are sent and
//!    their broker acknowledgements recorded. A concurrent retry of the same
//!    key waits on the row lock and then answers from the acknowledged row.
//!
//! If the process dies between the send and the second commit, a retry
//! re-sends the stored envelope byte for byte: the log may then hold the
//! same event id twice, which every consumer drops as a duplicate.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use dealmesh_eventlog::{EventProducer, envelope, ids};
use dealmesh_proto::v1::{self, Channel, CompanyKeyKind, DealSourced};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;
use sqlx::PgPool;
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
}

#[derive(sqlx::FromRow)]
struct Row {
    source: String,
    idempotency_key: String,
    fingerprint: Vec<u8>,
    event_id: Uuid,
    deal_id: Uuid,
    company_key: String,
    envelope: Vec<u8>,
    kafka_partition: Option<i32>,
    kafka_offset: Option<i64>,
}

impl Ingestor {
    pub fn new(pool: PgPool, producer: EventProducer) -> Self {
        Self { pool, producer }
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
        if submissions.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let mut sources = Vec::with_capacity(submissions.len());
        let mut keys = Vec::with_capacity(submissions.len());
        let mut fingerprints = Vec::with_capacity(submissions.len());
        let mut event_ids = Vec::with_capacity(submissions.len());
        let mut deal_ids = Vec::with_capacity(submissions.len());
        let mut company_keys = Vec::with_capacity(submissions.len());
        let mut envelopes = Vec::with_capacity(submissions.len());
        for submission in submissions {
            let event = build_event(submission, channel, now, correlation_id);
            sources.push(submission.source.clone());
            keys.push(submission.idempotency_key.clone());
            fingerprints.push(submission.fingerprint());
            event_ids.push(Uuid::parse_str(&event.event_id).unwrap_or_default());
            deal_ids.push(submission.company_key.deal_id());
            company_keys.push(submission.company_key.as_canonical_string());
            envelopes.push(envelope::encode(&event)?);
        }

        sqlx::query(
            "INSERT INTO ingest_submissions
                 (source, idempotency_key, fingerprint, event_id, deal_id, company_key, envelope)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::uuid[], $6::text[], $7::bytea[])
             ON CONFLICT (source, idempotency_key) DO NOTHING",
        )
        .bind(&sources)
        .bind(&keys)
        .bind(&fingerprints)
        .bind(&event_ids)
        .bind(&deal_ids)
        .bind(&company_keys)
        .bind(&envelopes)
        .execute(&self.pool)
        .await?;

        let mut tx = self.pool.begin().await?;
        // Locked in key order, so two batches sharing keys cannot deadlock.
        let rows: Vec<Row> = sqlx::query_as(
                "SELECT s.source, s.idempotency_key, s.fingerprint, s.event_id, s.deal_id,
                        s.company_key, s.envelope, s.kafka_partition, s.kafka_offset
                 FROM ingest_submissions s
                 JOIN (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[])) AS k(source, idempotency_key)
                   USING (source, idempotency_key)
                 ORDER BY s.source, s.idempotency_key
                 FOR UPDATE OF s",
            )
            .bind(&sources)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
        let mut rows: HashMap<(String, String), Row> = rows
            .into_iter()
            .map(|row| ((row.source.clone(), row.idempotency_key.clone()), row))
            .collect();

        // Send every pending row once, concurrently; the producer keeps
        // per-partition order.
        let pending: Vec<(String, String)> = rows
            .iter()
            .filter(|(_, row)| row.kafka_offset.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        let sends = pending.iter().map(|key| {
            let row = &rows[key];
            async move {
                let event = DealEvent::decode(row.envelope.as_slice())?;
                let delivery = self.producer.publish_encoded(&event, &row.envelope).await?;
                Ok::<_, Error>(delivery)
            }
        });
        let deliveries = futures::future::try_join_all(sends).await?;
        let mut acked_sources = Vec::with_capacity(pending.len());
        let mut acked_keys = Vec::with_capacity(pending.len());
        let mut partitions = Vec::with_capacity(pending.len());
        let mut offsets = Vec::with_capacity(pending.len());
        for (key, delivery) in pending.iter().zip(&deliveries) {
            acked_sources.push(key.0.clone());
            acked_keys.push(key.1.clone());
            partitions.push(delivery.partition);
            offsets.push(delivery.offset);
        }
        if !pending.is_empty() {
            sqlx::query(
                "UPDATE ingest_submissions s
                 SET kafka_partition = u.kafka_partition, kafka_offset = u.kafka_offset, acked_at = now()
                 FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[]) AS u(source, idempotency_key, kafka_partition, kafka_offset)
                 WHERE s.source = u.source AND s.idempotency_key = u.idempotency_key",
            )
            .bind(&acked_sources)
            .bind(&acked_keys)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        // The first submission of a key that was pending in this call gets
        // the fresh receipt; every other one (earlier calls, repeats within
        // this batch) is a duplicate.
        let mut fresh: HashMap<(String, String), bool> =
            pending.into_iter().map(|k| (k, true)).collect();
        for (index, key) in acked_keys.iter().enumerate() {
            if let Some(row) = rows.get_mut(&(acked_sources[index].clone(), key.clone())) {
                row.kafka_partition = Some(partitions[index]);
                row.kafka_offset = Some(offsets[index]);
            }
        }
        Ok(submissions
            .iter()
            .zip(&fingerprints)
            .map(|(submission, fingerprint)| {
                let key = (
                    submission.source.clone(),
                    submission.idempotency_key.clone(),
                );
                let Some(row) = rows.get(&key) else {
                    // Unreachable: every key was inserted or already present.
                    return Err(Refusal::KeyReused);
                };
                if &row.fingerprint != fingerprint {
                    return Err(Refusal::KeyReused);
                }
                let duplicate = !fresh.remove(&key).unwrap_or(false);
                Ok(Receipt {
                    event_id: row.event_id,
                    deal_id: row.deal_id,
                    company_key: row.company_key.clone(),
                    partition: row.kafka_partition.unwrap_or(-1),
                    offset: row.kafka_offset.unwrap_or(-1),
                    duplicate,
                })
            })
            .collect())
    }
}

/// The `DealSourced` event for a submission first seen at `now`.
fn build_event(
    submission: &Submission,
    channel: Channel,
    now: DateTime<Utc>,
    correlation_id: &str,
) -> DealEvent {
    let event_id = ids::derived_event_id(
        now,
        &[
            b"ingest",
            submission.source.as_bytes(),
            submission.idempotency_key.as_bytes(),
        ],
    );
    let kind = match submission.company_key.kind() {
        KeyKind::Domain => CompanyKeyKind::Domain,
        KeyKind::GithubOwner => CompanyKeyKind::GithubOwner,
        KeyKind::Name => CompanyKeyKind::Name,
    };
    DealEvent {
        event_id: event_id.to_string(),
        deal_id: submission.company_key.deal_id().to_string(),
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
