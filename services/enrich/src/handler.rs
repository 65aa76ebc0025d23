//! The consumer handler: `DealSourced` in, `DealEnriched` or
//! `EnrichmentFailed` out, with an id derived from the input so that
//! reprocessing re-emits the same event.

use std::sync::Arc;

use chrono::Utc;
use dealmesh_eventlog::envelope::{from_timestamp, service_actor, timestamp};
use dealmesh_eventlog::ids::caused_event_id;
use dealmesh_eventlog::{EventProducer, HandleError, Handler, Record};
use dealmesh_proto::{DealEvent, Payload};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::enricher::{Enricher, Outcome};

/// The actor and CloudEvents source name of this service.
pub const SERVICE: &str = "dealmesh-enrich";
pub const CE_SOURCE: &str = "/dealmesh/enrich";
/// The purpose in every output id: one enrichment outcome per sourced event.
pub const PURPOSE: &str = "enrich";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct HandlerMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
}

impl HandlerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "dealmesh_enrich_deals",
            "Sourced deals handled, by outcome (enriched, failed)",
            metrics.outcomes.clone(),
        );
        metrics
    }
}

pub struct EnrichHandler {
    enricher: Arc<Enricher>,
    producer: EventProducer,
    metrics: HandlerMetrics,
}

impl EnrichHandler {
    pub fn new(enricher: Arc<Enricher>, producer: EventProducer, metrics: HandlerMetrics) -> Self {
        Self {
            enricher,
            producer,
            metrics,
        }
    }
}

/// The output envelope for `outcome`, caused by `input`.
pub fn output_event(input: &DealEvent, outcome: Outcome) -> Result<DealEvent, HandleError> {
    output_event_for(input, outcome, PURPOSE)
}

/// The envelope of `outcome` as the answer to `input`, with the id
/// `caused_event_id(input occurred_at, input event_id, purpose)`.
pub fn output_event_for(
    input: &DealEvent,
    outcome: Outcome,
    purpose: &str,
) -> Result<DealEvent, HandleError> {
    let occurred_at = input
        .occurred_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| HandleError::Permanent("input event has no valid occurred_at".into()))?;
    let payload = match outcome {
        Outcome::Enriched(enriched) => Payload::DealEnriched(*enriched),
        Outcome::Failed(failed) => Payload::EnrichmentFailed(failed),
    };
    Ok(DealEvent {
        event_id: caused_event_id(occurred_at, &input.event_id, purpose).to_string(),
        deal_id: input.deal_id.clone(),
        occurred_at: Some(timestamp(Utc::now())),
        actor: Some(service_actor(SERVICE)),
        correlation_id: input.correlation_id.clone(),
        causation_id: input.event_id.clone(),
        expected_version: None,
        idempotency_key: String::new(),
        payload: Some(payload),
    })
}

impl Handler for EnrichHandler {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        // The log carries every event type, this service's own output too.
        let Some(Payload::DealSourced(deal)) = &event.payload else {
            return Ok(());
        };
        let outcome = self.enricher.enrich(&event.event_id, deal).await;
        let label = match &outcome {
            Outcome::Enriched(_) => "enriched",
            Outcome::Failed(failed) => {
                tracing::warn!(
                    deal_id = %event.deal_id,
                    step = %failed.step,
                    reason = %failed.reason,
                    attempts = failed.attempts,
                    retryable = failed.retryable,
                    "enrichment failed"
                );
                "failed"
            }
        };
        let output = output_event(&event, outcome)?;
        self.producer
            .publish(&output)
            .await
            .map_err(|e| HandleError::Transient(format!("publish: {e}")))?;
        self.metrics
            .outcomes
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        tracing::debug!(deal_id = %event.deal_id, event_id = %output.event_id, outcome = label, "enrichment published");
        Ok(())
    }
}
