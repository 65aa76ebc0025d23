//! Commands: the log decides. A command checked against the deal at
//! version `v` is appended with `expected_version = v`; the projector
//! applies it only if the deal is still there, and the RPC answers with what
//! the projector decided (read-your-writes).
//!
//! Idempotency: `(caller, idempotency key)` is stored with the event id and
//! a fingerprint of the request before anything is published, so a retry
//! re-publishes the same event (consumers drop the copy) and answers the
//! same outcome; the key reused for another request is refused.

use std::time::Duration;

use chrono::Utc;
use dealmesh_auth::Principal;
use dealmesh_eventlog::{EventProducer, envelope, ids};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::projection::{ABORTED, FAILED_PRECONDITION};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] dealmesh_eventlog::Error),
    #[error("idempotency key {0:?} was already used for a different request")]
    KeyReused(String),
    #[error("{reason}")]
    Rejected { code: String, reason: String },
    #[error(
        "the command was published but not projected within {0:?}; retry with the same idempotency key"
    )]
    Timeout(Duration),
    #[error("stored command is corrupt: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

impl Error {
    pub fn is_aborted(&self) -> bool {
        matches!(self, Error::Rejected { code, .. } if code == ABORTED)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the projector decided for an applied command.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub event_id: String,
    pub deal_id: String,
    pub deal_version: u64,
    /// True when this answers a retry of an earlier request.
    pub replayed: bool,
    pub event: DealEvent,
}

/// Wakes command waiters when the projector commits a batch (PostgreSQL
/// NOTIFY, so a projector in another replica wakes them too); waiters also
/// poll, so a lost notification only costs latency.
#[derive(Clone)]
pub struct Projected {
    sender: broadcast::Sender<()>,
}

impl Projected {
    pub fn listen(pool: PgPool, channel: String, shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(64);
        let tx = sender.clone();
        tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(&channel).await?;
                    loop {
                        listener.recv().await?;
                        let _ = tx.send(());
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = listener => {
                        if let Err(error) = result {
                            tracing::warn!(%error, "projection listener failed, reconnecting");
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Self { sender }
    }
}

#[derive(Clone)]
pub struct Commands {
    pool: PgPool,
    producer: EventProducer,
    projected: Projected,
    timeout: Duration,
}

/// A command ready to be sent: who, which key, the request's fingerprint.
pub struct Envelope<'a> {
    pub principal: &'a Principal,
    pub idempotency_key: &'a str,
    pub fingerprint: Vec<u8>,
    pub correlation_id: String,
}

/// SHA-256 of the RPC name and the encoded request.
pub fn fingerprint<M: Message>(rpc: &str, request: &M) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(rpc.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    hasher.finalize().to_vec()
}

#[derive(sqlx::FromRow)]
struct Stored {
    fingerprint: Vec<u8>,
    event_id: String,
    envelope: Vec<u8>,
}

impl Commands {
    pub fn new(
        pool: PgPool,
        producer: EventProducer,
        projected: Projected,
        timeout: Duration,
    ) -> Self {
        Self {
            pool,
            producer,
            projected,
            timeout,
        }
    }

    pub fn producer(&self) -> &EventProducer {
        &self.producer
    }

    /// The answer to an earlier request with this key, if there was one.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn replay(&self, envelope: &Envelope<'_>) -> Result<Option<Outcome>> {
        let stored: Option<Stored> = sqlx::query_as(
            "SELECT fingerprint, event_id, envelope FROM command_requests
             WHERE subject = $1 AND idempotency_key = $2",
        )
        .bind(&envelope.principal.subject)
        .bind(envelope.idempotency_key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        if stored.fingerprint != envelope.fingerprint {
            return Err(Error::KeyReused(envelope.idempotency_key.to_owned()));
        }
        let event = DealEvent::decode(stored.envelope.as_slice())?;
        let mut outcome = self
            .publish_and_wait(&event, &stored.envelope, &stored.event_id)
            .await?;
        outcome.replayed = true;
        Ok(Some(outcome))
    }

    /// Appends `payload` for `deal_id` at `expected_version` and waits for
    /// the projector's decision.
    #[tracing::instrument(skip_all, fields(deal_id = %deal_id, expected_version), err(level = "debug"))]
    pub async fn execute(
        &self,
        envelope_in: &Envelope<'_>,
        deal_id: &str,
        expected_version: u64,
        payload: Payload,
    ) -> Result<Outcome> {
        let now = Utc::now();
        let principal = envelope_in.principal;
        let event_id = ids::derived_event_id(
            now,
            &[
                b"crm-command",
                principal.subject.as_bytes(),
                envelope_in.idempotency_key.as_bytes(),
            ],
        )
        .to_string();
        let event = DealEvent {
            event_id: event_id.clone(),
            deal_id: deal_id.to_owned(),
            occurred_at: Some(envelope::timestamp(now)),
            actor: Some(principal.actor()),
            correlation_id: envelope_in.correlation_id.clone(),
            causation_id: String::new(),
            expected_version: Some(expected_version),
            idempotency_key: envelope_in.idempotency_key.to_owned(),
            payload: Some(payload),
        };
        let bytes = envelope::encode(&event)?;
        let inserted = sqlx::query(
            "INSERT INTO command_requests (subject, idempotency_key, fingerprint, event_id, deal_id, envelope)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (subject, idempotency_key) DO NOTHING",
        )
        .bind(&principal.subject)
        .bind(envelope_in.idempotency_key)
        .bind(&envelope_in.fingerprint)
        .bind(&event_id)
        .bind(deal_id)
        .bind(&bytes)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            // A concurrent request with the same key got there first.
            return self
                .replay(envelope_in)
                .await?
                .ok_or_else(|| Error::KeyReused(envelope_in.idempotency_key.to_owned()));
        }
        self.publish_and_wait(&event, &bytes, &event_id).await
    }

    async fn publish_and_wait(
        &self,
        event: &DealEvent,
        bytes: &[u8],
        event_id: &str,
    ) -> Result<Outcome> {
        if let Some(outcome) = self.outcome(event, event_id).await? {
            return outcome;
        }
        self.producer.publish_encoded(event, bytes).await?;
        self.wait(event, event_id).await
    }

    /// Waits for the projector's decision on `event_id`.
    pub async fn wait(&self, event: &DealEvent, event_id: &str) -> Result<Outcome> {
        let mut woken = self.projected.sender.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(outcome) = self.outcome(event, event_id).await? {
                return outcome;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Err(Error::Timeout(self.timeout)),
                _ = woken.recv() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn outcome(&self, event: &DealEvent, event_id: &str) -> Result<Option<Result<Outcome>>> {
        let row: Option<(String, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT status, reject_code, reason, deal_version FROM events WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(status, code, reason, version)| match status.as_str() {
                "applied" | "ignored" => Ok(Outcome {
                    event_id: event_id.to_owned(),
                    deal_id: event.deal_id.clone(),
                    deal_version: version.max(0) as u64,
                    replayed: false,
                    event: event.clone(),
                }),
                _ => Err(Error::Rejected {
                    code: code.unwrap_or_else(|| FAILED_PRECONDITION.to_owned()),
                    reason,
                }),
            }),
        )
    }
}
