//! One deal's enrichment: the GitHub and Crunchbase lookups (concurrently),
//! then the analysis. The result is either the enrichment or the step that
//! failed and why; never an error that would stall the stream.

use dealmesh_proto::v1::{AnalyzerKind, DealEnriched, DealSourced, EnrichmentFailed, SignalGap};
use tracing::instrument;

use crate::analysis::{AnalysisError, AnalysisInput, Analyzer};
use crate::provider::{CallError, truncate_chars};
use crate::signals::crunchbase::{self, CrunchbaseClient};
use crate::signals::github::{self, GithubClient, Target};
use crate::signals::{Fetched, gap};

/// Attribute keys a source may use to name the company's Crunchbase
/// organization.
pub const CRUNCHBASE_ATTRIBUTES: &[&str] = &["crunchbase_permalink", "crunchbase"];

/// The longest failure reason put on the log.
const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Enriched(Box<DealEnriched>),
    Failed(EnrichmentFailed),
}

pub struct Enricher {
    pub github: Option<GithubClient>,
    pub crunchbase: Option<CrunchbaseClient>,
    pub analyzer: Analyzer,
    pub max_description_chars: usize,
}

impl Enricher {
    #[instrument(skip_all, fields(source_event_id, name = %deal.name))]
    pub async fn enrich(&self, source_event_id: &str, deal: &DealSourced) -> Outcome {
        let failed = |step: &str, reason: String, attempts: u32, retryable: bool| {
            Outcome::Failed(EnrichmentFailed {
                source_event_id: source_event_id.to_owned(),
                step: step.to_owned(),
                reason: truncate_chars(&reason, MAX_REASON_CHARS),
                attempts,
                retryable,
            })
        };
        let (github, crunchbase) = tokio::join!(self.github(deal), self.crunchbase(deal));
        let github = match github {
            Ok(fetched) => fetched,
            Err(error) => {
                return failed(
                    github::SOURCE,
                    error.to_string(),
                    error.attempts(),
                    error.is_retryable(),
                );
            }
        };
        let crunchbase = match crunchbase {
            Ok(fetched) => fetched,
            Err(error) => {
                return failed(
                    crunchbase::SOURCE,
                    error.to_string(),
                    error.attempts(),
                    error.is_retryable(),
                );
            }
        };
        let description = truncate_chars(deal.description.trim(), self.max_description_chars);
        let input = AnalysisInput {
            name: &deal.name,
            website: &deal.website,
            description: &description,
            github: github.signals.as_ref(),
            crunchbase: crunchbase.signals.as_ref(),
        };
        let analysis = match self.analyzer.analyze(&input).await {
            Ok(analysis) => analysis,
            Err(error) => {
                let retryable = matches!(error, AnalysisError::Unavailable { .. });
                return failed("analysis", error.to_string(), error.attempts(), retryable);
            }
        };
        let mut gaps: Vec<SignalGap> = github.gaps;
        gaps.extend(crunchbase.gaps);
        tracing::debug!(
            gaps = gaps.len(),
            llm = analysis.analyzer == AnalyzerKind::Llm as i32,
            "deal enriched"
        );
        Outcome::Enriched(Box::new(DealEnriched {
            github: github.signals,
            crunchbase: crunchbase.signals,
            analysis: Some(analysis),
            source_event_id: source_event_id.to_owned(),
            gaps,
        }))
    }

    async fn github(
        &self,
        deal: &DealSourced,
    ) -> Result<Fetched<dealmesh_proto::v1::GithubSignals>, CallError> {
        let target = match Target::of(&deal.github_owner, &deal.github_repo) {
            Ok(Some(target)) => target,
            Ok(None) => return Ok(Fetched::gap(github::SOURCE, "no GitHub owner on the deal")),
            Err(problem) => return Ok(Fetched::gap(github::SOURCE, problem)),
        };
        match &self.github {
            Some(client) => client.fetch(&target).await,
            None => Ok(Fetched::gap(github::SOURCE, "GitHub lookups are disabled")),
        }
    }

    async fn crunchbase(
        &self,
        deal: &DealSourced,
    ) -> Result<Fetched<dealmesh_proto::v1::CrunchbaseSignals>, CallError> {
        let permalink = CRUNCHBASE_ATTRIBUTES
            .iter()
            .find_map(|key| deal.attributes.get(*key))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .or_else(|| {
                (deal.source == crunchbase::SOURCE && !deal.external_id.trim().is_empty())
                    .then(|| deal.external_id.trim().to_owned())
            });
        let Some(permalink) = permalink else {
            return Ok(Fetched::gap(
                crunchbase::SOURCE,
                "no Crunchbase permalink on the deal",
            ));
        };
        if !crunchbase::is_permalink(&permalink) {
            return Ok(Fetched {
                signals: None,
                gaps: vec![gap(
                    crunchbase::SOURCE,
                    format!(
                        "invalid Crunchbase permalink {:?}",
                        truncate_chars(&permalink, 60)
                    ),
                )],
            });
        }
        match &self.crunchbase {
            Some(client) => client.fetch(&permalink).await,
            None => Ok(Fetched::gap(
                crunchbase::SOURCE,
                "no Crunchbase API key configured",
            )),
        }
    }
}
