//! `rescore`: score every stored enrichment with the current model and
//! publish the new DealScored events. Idempotent: running it again under the
//! same model publishes nothing new (same ids, recorded as published).

use futures::{StreamExt, TryStreamExt};
use prost::Message;

use crate::handler::{Outcome, ScoreError, Scorer};

/// What a rescore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescoreReport {
    pub model_version: String,
    /// DealScored events published.
    pub published: usize,
    /// Deals already scored under this model.
    pub unchanged: usize,
    /// Stored enrichments that could not be scored, with the reason.
    pub invalid: Vec<(String, String)>,
}

const PAGE: i64 = 500;

/// Rescores every stored enrichment, `concurrency` deals at a time.
#[tracing::instrument(skip_all, err)]
pub async fn rescore(scorer: &Scorer, concurrency: usize) -> Result<RescoreReport, ScoreError> {
    let mut report = RescoreReport {
        model_version: scorer.model().current().model.version.clone(),
        ..Default::default()
    };
    let mut after = String::new();
    loop {
        let page = scorer.store().enrichments_after(&after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.deal_id.clone();
        let outcomes: Vec<(String, Result<Outcome, ScoreError>)> =
            futures::stream::iter(page.into_iter().map(|stored| async move {
                let result = rescore_one(scorer, &stored.envelope).await;
                Ok::<_, ScoreError>((stored.deal_id, result))
            }))
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        for (deal_id, outcome) in outcomes {
            match outcome {
                Ok(Outcome::Published { .. }) => report.published += 1,
                Ok(Outcome::AlreadyPublished { .. }) => report.unchanged += 1,
                Err(ScoreError::Invalid(reason)) => report.invalid.push((deal_id, reason)),
                Err(other) => return Err(other),
            }
        }
    }
    tracing::info!(
        model_version = %report.model_version,
        published = report.published,
        unchanged = report.unchanged,
        invalid = report.invalid.len(),
        "rescore finished"
    );
    Ok(report)
}

async fn rescore_one(scorer: &Scorer, envelope: &[u8]) -> Result<Outcome, ScoreError> {
    let event = dealmesh_proto::DealEvent::decode(envelope)
        .map_err(|e| ScoreError::Invalid(format!("stored envelope does not decode: {e}")))?;
    let Some(dealmesh_proto::Payload::DealEnriched(enriched)) = &event.payload else {
        return Err(ScoreError::Invalid(
            "stored envelope is not a DealEnriched".into(),
        ));
    };
    scorer.apply(&event, enriched, envelope).await
}
