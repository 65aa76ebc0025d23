//! DealEnriched → DealScored: the consumer's handler, and the scorer it
//! shares with the `rescore` command.
//!
//! The output id is `caused_event_id(input occurred_at, input event_id,
//! "score:" + model version)`: a redelivery under the same model is the same
//! event (and is dropped here, since its id is recorded as published), while
//! a re-score under a new model is a new event.

use chrono::{DateTime, Utc};
use dealmesh_eventlog::{EventProducer, HandleError, Handler, Record, envelope, ids};
use dealmesh_proto::v1::{DealEnriched, DealScored};
use dealmesh_proto::{DealEvent, Payload};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;

use crate::features::Features;
use crate::reload::ModelHandle;
use crate::store::{NewScore, Store, StoreError};

/// The CloudEvents source of every event this service publishes.
pub const CE_SOURCE: &str = "/dealmesh/scoring";
/// The actor of every event this service publishes.
pub const SERVICE: &str = "dealmesh-scoring";

/// Why an enrichment could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The event itself is bad; retrying cannot help.
    #[error("invalid DealEnriched: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publish: {0}")]
    Publish(#[from] dealmesh_eventlog::Error),
}

impl From<ScoreError> for HandleError {
    fn from(error: ScoreError) -> Self {
        match error {
            ScoreError::Invalid(message) => HandleError::Permanent(message),
            other => HandleError::Transient(other.to_string()),
        }
    }
}

/// What became of one enrichment.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A DealScored was published.
    Published { event_id: String, score: f64 },
    /// This enrichment was already scored under this model: nothing sent.
    AlreadyPublished { event_id: String },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Scores enrichments with the running model, publishes, records.
#[derive(Clone)]
pub struct Scorer {
    model: ModelHandle,
    store: Store,
    producer: EventProducer,
    outcomes: Family<OutcomeLabel, Counter>,
}

impl Scorer {
    pub fn new(model: ModelHandle, store: Store, producer: EventProducer) -> Self {
        Self {
            model,
            store,
            producer,
            outcomes: Family::default(),
        }
    }

    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        registry.register(
            "dealmesh_scoring_enrichments",
            "Enrichments handled, by outcome (scored, duplicate, invalid)",
            self.outcomes.clone(),
        );
        self
    }

    pub fn model(&self) -> &ModelHandle {
        &self.model
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn producer(&self) -> &EventProducer {
        &self.producer
    }

    /// Scores one DealEnriched envelope (`bytes` is it encoded, stored as
    /// is for later rescoring).
    #[tracing::instrument(skip_all, fields(deal_id = %event.deal_id, event_id = %event.event_id), err)]
    pub async fn apply(
        &self,
        event: &DealEvent,
        enriched: &DealEnriched,
        bytes: &[u8],
    ) -> Result<Outcome, ScoreError> {
        let result = self.apply_inner(event, enriched, bytes).await;
        let outcome = match &result {
            Ok(Outcome::Published { .. }) => "scored",
            Ok(Outcome::AlreadyPublished { .. }) => "duplicate",
            Err(ScoreError::Invalid(_)) => "invalid",
            Err(_) => "failed",
        };
        self.outcomes.get_or_create(&OutcomeLabel { outcome }).inc();
        result
    }

    async fn apply_inner(
        &self,
        event: &DealEvent,
        enriched: &DealEnriched,
        bytes: &[u8],
    ) -> Result<Outcome, ScoreError> {
        let occurred_at = event
            .occurred_at
            .as_ref()
            .and_then(envelope::from_timestamp)
            .ok_or_else(|| ScoreError::Invalid("occurred_at is missing or out of range".into()))?;
        let features = Features::from_enriched(enriched).map_err(|violations| {
            ScoreError::Invalid(
                violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        self.store
            .save_enrichment(&event.deal_id, &event.event_id, occurred_at, bytes)
            .await?;

        // One model for the whole step, even if a reload lands midway.
        let loaded = self.model.current();
        let model = &loaded.model;
        let event_id = score_event_id(occurred_at, &event.event_id, &model.version);
        if self.store.was_published(&event_id).await? {
            tracing::debug!(%event_id, "already scored under this model");
            return Ok(Outcome::AlreadyPublished { event_id });
        }
        let scored = crate::scoring::score(model, &features);
        let scored_at = Utc::now();
        let output = DealEvent {
            event_id: event_id.clone(),
            deal_id: event.deal_id.clone(),
            occurred_at: Some(envelope::timestamp(scored_at)),
            actor: Some(envelope::service_actor(SERVICE)),
            correlation_id: event.correlation_id.clone(),
            causation_id: event.event_id.clone(),
            expected_version: None,
            idempotency_key: String::new(),
            payload: Some(Payload::DealScored(DealScored {
                score: scored.score,
                model_version: model.version.clone(),
                contributions: scored.contributions.iter().map(|c| c.to_proto()).collect(),
                failed_filters: scored.failed_filters.clone(),
                source_event_id: event.event_id.clone(),
            })),
        };
        let encoded = envelope::encode(&output)?;
        let delivery = self.producer.publish_encoded(&output, &encoded).await?;
        self.store
            .save_score(&NewScore {
                deal_id: &event.deal_id,
                event_id: &event_id,
                source_event_id: &event.event_id,
                source_occurred_at: occurred_at,
                model_version: &model.version,
                score: scored.score,
                envelope: &encoded,
                features: &features.to_proto().encode_to_vec(),
                scored_at,
            })
            .await?;
        tracing::info!(
            %event_id,
            score = scored.score,
            model_version = %model.version,
            failed_filters = scored.failed_filters.len(),
            partition = delivery.partition,
            offset = delivery.offset,
            "deal scored"
        );
        Ok(Outcome::Published {
            event_id,
            score: scored.score,
        })
    }
}

/// The DealScored id for an enrichment under a model version.
pub fn score_event_id(occurred_at: DateTime<Utc>, enrichment_id: &str, version: &str) -> String {
    ids::caused_event_id(occurred_at, enrichment_id, &format!("score:{version}")).to_string()
}

/// The consumer's handler: scores DealEnriched, skips every other type.
pub struct ScoringHandler {
    scorer: Scorer,
}

impl ScoringHandler {
    pub fn new(scorer: Scorer) -> Self {
        Self { scorer }
    }
}

impl Handler for ScoringHandler {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        let Some(Payload::DealEnriched(enriched)) = &event.payload else {
            return Ok(());
        };
        let bytes = record.value.as_deref().unwrap_or_default();
        self.scorer.apply(&event, enriched, bytes).await?;
        Ok(())
    }
}
