//! The ScoringService gRPC API: what-if scoring, a deal's score explained,
//! and the model's status and reload. Every call needs a bearer token; LPs
//! may not explain deals' scores, and only admins may reload the model.

use dealmesh_auth::{Authenticator, Role};
use dealmesh_proto::v1::scoring_service_server::ScoringService;
use dealmesh_proto::v1::{
    ExplainScoreRequest, ExplainScoreResponse, GetScoringModelRequest, GetScoringModelResponse,
    ReloadScoringModelRequest, ReloadScoringModelResponse, ScoreRequest, ScoreResponse,
    ScoringFeatures,
};
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::grpc::{Violation, invalid_argument};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::features::Features;
use crate::reload::ModelHandle;
use crate::store::Store;

pub struct ScoringApi {
    model: ModelHandle,
    store: Store,
    auth: Authenticator,
}

impl ScoringApi {
    pub fn new(model: ModelHandle, store: Store, auth: Authenticator) -> Self {
        Self { model, store, auth }
    }
}

fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "request failed");
    Status::internal("internal error")
}

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    #[tracing::instrument(skip_all)]
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        self.auth.from_metadata(request.metadata()).await?;
        let Some(proto) = &request.get_ref().features else {
            return Err(invalid_argument(
                "features are required",
                &[Violation::new("features", "required")],
            ));
        };
        let features = Features::from_proto(proto, "features")
            .map_err(|violations| invalid_argument("invalid features", &violations))?;
        let loaded = self.model.current();
        let scored = crate::scoring::score(&loaded.model, &features);
        Ok(Response::new(ScoreResponse {
            score: scored.score,
            model_version: loaded.model.version.clone(),
            contributions: scored.contributions.iter().map(|c| c.to_proto()).collect(),
            failed_filters: scored.failed_filters,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn explain_score(
        &self,
        request: Request<ExplainScoreRequest>,
    ) -> Result<Response<ExplainScoreResponse>, Status> {
        let principal = self.auth.from_metadata(request.metadata()).await?;
        // LPs may see only deals shared with them, which this service does
        // not know: they ask the CRM.
        dealmesh_auth::require(
            &principal,
            &[Role::Admin, Role::Partner, Role::Analyst, Role::Service],
            "explain a deal's score",
        )?;
        let deal_id = request.get_ref().deal_id.trim();
        if deal_id.is_empty() {
            return Err(invalid_argument(
                "deal_id is required",
                &[Violation::new("deal_id", "required")],
            ));
        }
        if deal_id.len() > 200 {
            return Err(invalid_argument(
                "deal_id is too long",
                &[Violation::new("deal_id", "at most 200 characters")],
            ));
        }
        let stored = self
            .store
            .score(deal_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("deal {deal_id} has no score")))?;
        let event = DealEvent::decode(stored.envelope.as_slice()).map_err(internal)?;
        let Some(Payload::DealScored(scored)) = event.payload else {
            return Err(internal("stored score is not a DealScored"));
        };
        let features = ScoringFeatures::decode(stored.features.as_slice()).map_err(internal)?;
        Ok(Response::new(ExplainScoreResponse {
            deal_id: stored.deal_id,
            event_id: stored.event_id,
            scored: Some(scored),
            features: Some(features),
            scored_at: Some(dealmesh_eventlog::envelope::timestamp(stored.scored_at)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_scoring_model(
        &self,
        request: Request<GetScoringModelRequest>,
    ) -> Result<Response<GetScoringModelResponse>, Status> {
        self.auth.from_metadata(request.metadata()).await?;
        let loaded = self.model.current();
        Ok(Response::new(GetScoringModelResponse {
            model_version: loaded.model.version.clone(),
            path: self.model.path().display().to_string(),
            loaded_at: Some(dealmesh_eventlog::envelope::timestamp(loaded.loaded_at)),
            last_reload_error: self.model.last_error().unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn reload_scoring_model(
        &self,
        request: Request<ReloadScoringModelRequest>,
    ) -> Result<Response<ReloadScoringModelResponse>, Status> {
        let principal = self.auth.from_metadata(request.metadata()).await?;
        dealmesh_auth::require(&principal, &[Role::Admin], "reload the scoring model")?;
        let model = self.model.clone();
        let reloaded = tokio::task::spawn_blocking(move || model.reload())
            .await
            .map_err(internal)?
            .map_err(|error| {
                // The request is fine; the file it points at is not.
                Status::failed_precondition(format!(
                    "model file rejected, running model kept: {error}"
                ))
            })?;
        Ok(Response::new(ReloadScoringModelResponse {
            model_version: reloaded.version,
            changed: reloaded.changed,
        }))
    }
}
