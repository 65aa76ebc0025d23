//! `dealmesh.v1.IngestService` over gRPC.

use dealmesh_proto::v1::ingest_service_server::IngestService;
use dealmesh_proto::v1::{
    self, Channel, FieldViolation, ItemError, SubmitDealRequest, SubmitDealResponse,
    SubmitDealsRequest, SubmitDealsResponse, SubmitDealsResult, submit_deals_result,
};
use dealmesh_runtime::grpc::{Violation, invalid_argument};
use tonic::{Request, Response, Status};

use crate::ingestor::{self, Ingestor, Receipt, Refusal};
use crate::validate::{self, Submission};

pub struct IngestApi {
    ingestor: Ingestor,
    max_batch: usize,
}

impl IngestApi {
    pub fn new(ingestor: Ingestor, max_batch: usize) -> Self {
        Self {
            ingestor,
            max_batch,
        }
    }
}

/// The caller's correlation id (`x-correlation-id`), or a fresh one.
fn correlation_id<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

pub fn to_proto_receipt(receipt: &Receipt) -> v1::Receipt {
    let (kind, value) = receipt
        .company_key
        .split_once(':')
        .unwrap_or(("", receipt.company_key.as_str()));
    let kind = match kind {
        "domain" => v1::CompanyKeyKind::Domain,
        "github" => v1::CompanyKeyKind::GithubOwner,
        "name" => v1::CompanyKeyKind::Name,
        _ => v1::CompanyKeyKind::Unspecified,
    };
    v1::Receipt {
        event_id: receipt.event_id.to_string(),
        deal_id: receipt.deal_id.to_string(),
        company_key: Some(v1::CompanyKey {
            kind: kind as i32,
            value: value.to_owned(),
        }),
        partition: receipt.partition,
        offset: receipt.offset,
        duplicate: receipt.duplicate,
    }
}

fn internal(error: ingestor::Error) -> Status {
    tracing::error!(%error, "submission failed");
    if error.is_retryable() {
        Status::unavailable(format!(
            "{}; retry with the same idempotency key",
            error.reason()
        ))
    } else {
        Status::internal(error.reason())
    }
}

const KEY_REUSED: &str = "was already used for a different submission";

#[tonic::async_trait]
impl IngestService for IngestApi {
    #[tracing::instrument(skip_all)]
    async fn submit_deal(
        &self,
        request: Request<SubmitDealRequest>,
    ) -> Result<Response<SubmitDealResponse>, Status> {
        let correlation_id = correlation_id(&request);
        let Some(deal) = request.into_inner().deal else {
            return Err(invalid_argument(
                "deal is required",
                &[Violation::new("deal", "is required")],
            ));
        };
        let submission = validate::validate(deal, "deal.")
            .map_err(|violations| invalid_argument("the submission is invalid", &violations))?;
        let mut results = self
            .ingestor
            .submit(
                std::slice::from_ref(&submission),
                Channel::Grpc,
                &correlation_id,
            )
            .await
            .map_err(internal)?;
        match results.pop() {
            Some(Ok(receipt)) => Ok(Response::new(SubmitDealResponse {
                receipt: Some(to_proto_receipt(&receipt)),
            })),
            Some(Err(Refusal::KeyReused)) | None => Err(invalid_argument(
                "idempotency key reused",
                &[Violation::new("deal.idempotency_key", KEY_REUSED)],
            )),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn submit_deals(
        &self,
        request: Request<SubmitDealsRequest>,
    ) -> Result<Response<SubmitDealsResponse>, Status> {
        let correlation_id = correlation_id(&request);
        let deals = request.into_inner().deals;
        if deals.is_empty() {
            return Err(invalid_argument(
                "the batch is empty",
                &[Violation::new("deals", "must hold at least one deal")],
            ));
        }
        if deals.len() > self.max_batch {
            return Err(invalid_argument(
                "the batch is too large",
                &[Violation::new(
                    "deals",
                    format!(
                        "holds {} deals, at most {} allowed",
                        deals.len(),
                        self.max_batch
                    ),
                )],
            ));
        }
        let mut results: Vec<Option<submit_deals_result::Outcome>> = vec![None; deals.len()];
        let mut indices: Vec<usize> = Vec::with_capacity(deals.len());
        let mut submissions: Vec<Submission> = Vec::with_capacity(deals.len());
        for (index, deal) in deals.into_iter().enumerate() {
            match validate::validate(deal, &format!("deals[{index}].")) {
                Ok(submission) => {
                    indices.push(index);
                    submissions.push(submission);
                }
                Err(violations) => {
                    results[index] = Some(submit_deals_result::Outcome::Error(item_error(
                        "the submission is invalid",
                        &violations,
                    )));
                }
            }
        }
        let outcomes = self
            .ingestor
            .submit(&submissions, Channel::Grpc, &correlation_id)
            .await
            .map_err(internal)?;
        for (&index, outcome) in indices.iter().zip(outcomes) {
            results[index] = Some(match outcome {
                Ok(receipt) => submit_deals_result::Outcome::Receipt(to_proto_receipt(&receipt)),
                Err(Refusal::KeyReused) => submit_deals_result::Outcome::Error(item_error(
                    "idempotency key reused",
                    &[Violation::new(
                        format!("deals[{index}].idempotency_key"),
                        KEY_REUSED,
                    )],
                )),
            });
        }
        Ok(Response::new(SubmitDealsResponse {
            results: results
                .into_iter()
                .enumerate()
                .map(|(index, outcome)| SubmitDealsResult {
                    index: index as u32,
                    outcome,
                })
                .collect(),
        }))
    }
}

fn item_error(message: &str, violations: &[Violation]) -> ItemError {
    ItemError {
        code: "INVALID_ARGUMENT".into(),
        message: message.into(),
        field_violations: violations
            .iter()
            .map(|v| FieldViolation {
                field: v.field.clone(),
                description: v.description.clone(),
            })
            .collect(),
    }
}
