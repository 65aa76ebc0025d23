//! `dealmesh-enrich redrive`: deals whose enrichment failed for a reason
//! that passes (a provider down, rate limited or timing out) are enriched
//! again once the cause is gone.
//!
//! The deal log is read from `--from` (else from the beginning). A deal is
//! due when its latest enrichment outcome is an `EnrichmentFailed` with
//! `retryable = true` and no `DealSourced` came after it (a new sighting is
//! enriched by `serve` anyway). Its latest `DealSourced` is enriched again
//! and the outcome appended as the answer to the failure: the new event's
//! id is derived from the failure's, so a second run, or a run repeated
//! after a crash, appends nothing new. An outcome that fails again is
//! itself a retryable failure, due at the next run.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dealmesh_audit::reader::{self, LogRecord, Start};
use dealmesh_eventlog::{EventProducer, KafkaSettings, envelope};
use dealmesh_proto::{DealEvent, Payload};
use futures::StreamExt;

use crate::enricher::{Enricher, Outcome};
use crate::handler::output_event_for;

/// The purpose in the id of a re-driven outcome (see [`output_event_for`]).
pub const PURPOSE: &str = "enrich-redrive";

/// A deal whose enrichment is due again.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The deal's latest `DealSourced`: what is enriched.
    pub sourced: DealEvent,
    /// The retryable failure it ended in: what the new outcome answers.
    pub failure: DealEvent,
}

impl Due {
    /// The failure's step and reason, as `step: reason`.
    pub fn reason(&self) -> String {
        match &self.failure.payload {
            Some(Payload::EnrichmentFailed(f)) => format!("{}: {}", f.step, f.reason),
            _ => String::new(),
        }
    }
}

/// What the scan of the log found.
#[derive(Debug, Default)]
pub struct Scan {
    /// In the order their failures were read.
    pub due: Vec<Due>,
    pub records: u64,
    /// Failures whose `DealSourced` lies before `--from`: not re-driven.
    pub without_sighting: usize,
    /// Records that are not deal events (they are on the dead-letter path
    /// of every consumer, and skipped here too).
    pub undecodable: u64,
}

/// Follows each deal's events in log order (one deal's events share a
/// partition) and keeps only deals with no enrichment yet, or a failed one.
#[derive(Default)]
struct Tracker {
    /// By deal id: the latest sighting, and the retryable failure that
    /// answered it, if any.
    open: HashMap<String, (DealEvent, Option<DealEvent>)>,
    /// The order failures were read in, by deal id (may repeat).
    failed: Vec<String>,
    without_sighting: usize,
}

impl Tracker {
    fn push(&mut self, event: DealEvent) {
        match &event.payload {
            Some(Payload::DealSourced(_)) => {
                self.open.insert(event.deal_id.clone(), (event, None));
            }
            Some(Payload::DealEnriched(_)) => {
                self.open.remove(&event.deal_id);
            }
            Some(Payload::EnrichmentFailed(failed)) if failed.retryable => {
                match self.open.get_mut(&event.deal_id) {
                    Some((_, failure)) => {
                        self.failed.push(event.deal_id.clone());
                        *failure = Some(event);
                    }
                    None => self.without_sighting += 1,
                }
            }
            Some(Payload::EnrichmentFailed(_)) => {
                self.open.remove(&event.deal_id);
            }
            _ => {}
        }
    }

    fn into_due(mut self) -> (Vec<Due>, usize) {
        let mut due = Vec::new();
        for deal_id in &self.failed {
            if let Some((sourced, Some(failure))) = self.open.remove(deal_id) {
                due.push(Due { sourced, failure });
            }
        }
        (due, self.without_sighting)
    }
}

/// Reads the deal log from `from` (or its beginning) and lists the deals
/// whose enrichment is due again.
pub async fn scan(
    settings: &KafkaSettings,
    topic: &str,
    from: Option<DateTime<Utc>>,
) -> anyhow::Result<Scan> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    let start = from.map_or(Start::Beginning, Start::Around);
    tokio::task::spawn_blocking(move || {
        let mut tracker = Tracker::default();
        let mut undecodable = 0;
        let stats = reader::scan(&settings, &topic, start, |record: LogRecord| {
            match envelope::decode(record.value.as_deref().unwrap_or_default()) {
                Ok(event) => tracker.push(event),
                Err(_) => undecodable += 1,
            }
            Ok(())
        })?;
        let (mut due, without_sighting) = tracker.into_due();
        // The read starts a little before `--from` (see the reader): those
        // records count for each deal's state, but only failures from
        // `--from` on are re-driven.
        if let Some(from) = from {
            due.retain(|due| {
                let at = due
                    .failure
                    .occurred_at
                    .as_ref()
                    .and_then(envelope::from_timestamp);
                at.is_some_and(|at| at >= from)
            });
        }
        Ok(Scan {
            due,
            records: stats.records,
            without_sighting,
            undecodable,
        })
    })
    .await?
}

/// What became of one re-driven deal.
#[derive(Debug, Clone, PartialEq)]
pub struct Redriven {
    pub deal_id: String,
    pub name: String,
    /// The failure's step and reason.
    pub was: String,
    /// The new outcome: `None` if enriched, else the new failure's step and
    /// reason.
    pub failed_again: Option<String>,
    pub event_id: String,
}

/// Enriches every due deal again, `concurrency` at a time, and appends each
/// outcome; answers in the order the deals were given.
pub async fn redrive(
    enricher: Arc<Enricher>,
    producer: &EventProducer,
    due: Vec<Due>,
    concurrency: usize,
) -> anyhow::Result<Vec<Redriven>> {
    let outcomes = futures::stream::iter(due)
        .map(|due| {
            let enricher = enricher.clone();
            async move {
                let Some(Payload::DealSourced(deal)) = &due.sourced.payload else {
                    anyhow::bail!("deal {}: not a DealSourced", due.sourced.deal_id);
                };
                let outcome = enricher.enrich(&due.sourced.event_id, deal).await;
                let failed_again = match &outcome {
                    Outcome::Enriched(_) => None,
                    Outcome::Failed(f) => Some(format!("{}: {}", f.step, f.reason)),
                };
                let output = output_event_for(&due.failure, outcome, PURPOSE)
                    .map_err(|e| anyhow::anyhow!("deal {}: {e}", due.sourced.deal_id))?;
                producer.publish(&output).await?;
                Ok(Redriven {
                    deal_id: due.sourced.deal_id.clone(),
                    name: deal.name.clone(),
                    was: due.reason(),
                    failed_again,
                    event_id: output.event_id,
                })
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    outcomes.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use dealmesh_proto::v1::{DealEnriched, DealSourced, EnrichmentFailed};

    use super::*;

    fn event(deal: &str, id: &str, payload: Payload) -> DealEvent {
        DealEvent {
            event_id: id.into(),
            deal_id: deal.into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn sourced(deal: &str, id: &str) -> DealEvent {
        event(deal, id, Payload::DealSourced(DealSourced::default()))
    }

    fn failed(deal: &str, id: &str, retryable: bool) -> DealEvent {
        event(
            deal,
            id,
            Payload::EnrichmentFailed(EnrichmentFailed {
                retryable,
                ..Default::default()
            }),
        )
    }

    fn enriched(deal: &str, id: &str) -> DealEvent {
        event(deal, id, Payload::DealEnriched(DealEnriched::default()))
    }

    fn due(events: Vec<DealEvent>) -> Vec<(String, String)> {
        let mut tracker = Tracker::default();
        for e in events {
            tracker.push(e);
        }
        tracker
            .into_due()
            .0
            .into_iter()
            .map(|d| (d.sourced.event_id, d.failure.event_id))
            .collect()
    }

    #[test]
    fn only_deals_whose_latest_outcome_is_a_retryable_failure_are_due() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
        };
        let found = due(vec![
            // Failed, retryable: due, with its sighting.
            sourced("a", "a-s"),
            failed("a", "a-f", true),
            // Failed for good: not due.
            sourced("b", "b-s"),
            failed("b", "b-f", false),
            // Failed, then enriched by an earlier redrive: not due.
            sourced("c", "c-s"),
            failed("c", "c-f", true),
            enriched("c", "c-e"),
            // Failed, then sighted again (serve enriches it): not due.
            sourced("d", "d-s1"),
            failed("d", "d-f", true),
            sourced("d", "d-s2"),
            // Failed twice: due once, answering the latest failure.
            sourced("e", "e-s"),
            failed("e", "e-f1", true),
            failed("e", "e-f2", true),
            // A failure with no sighting in the window: skipped.
            failed("f", "f-f", true),
        ]);
        assert_eq!(found, pairs(&[("a-s", "a-f"), ("e-s", "e-f2")]));
    }
}
