//! The webhook HTTP API: `POST /v1/webhooks/{source}` with an HMAC-SHA256
//! signed JSON body, and its OpenAPI document at `/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dealmesh_proto::v1::{Channel, DealSubmission};
use dealmesh_runtime::grpc::Violation;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::grpc::to_proto_receipt;
use crate::ingestor::{Ingestor, Refusal};
use crate::validate;

/// The signature header, as GitHub sends it: `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "x-signature-256";

#[derive(Clone)]
struct WebhookState {
    ingestor: Ingestor,
    secrets: Arc<BTreeMap<String, SecretString>>,
    max_body_bytes: usize,
}

pub fn router(
    ingestor: Ingestor,
    secrets: BTreeMap<String, SecretString>,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/v1/webhooks/{source}", post(receive))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(WebhookState {
            ingestor,
            secrets: Arc::new(secrets),
            max_body_bytes,
        })
}

/// A JSON error body: `{"error": {"code", "message", "field_violations"}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    violations: Vec<Violation>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            violations: Vec::new(),
        }
    }
}

/// A submission that failed on the broker or the store: 503 when the same
/// delivery may succeed later, 500 when the record is corrupt.
fn submission_failed(error: crate::ingestor::Error) -> ApiError {
    tracing::error!(%error, "webhook submission failed");
    if error.is_retryable() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{}; retry the delivery", error.reason()),
        )
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.reason(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let violations: Vec<_> = self
            .violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        let body = json!({"error": {"code": self.code, "message": self.message, "field_violations": violations}});
        (self.status, Json(body)).into_response()
    }
}

/// A deal as a partner posts it. Unknown fields are kept as attributes.
#[derive(Debug, Deserialize)]
struct WebhookDeal {
    name: Option<String>,
    website: Option<String>,
    github_owner: Option<String>,
    github_repo: Option<String>,
    external_id: Option<String>,
    description: Option<String>,
    source_url: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[tracing::instrument(skip_all, fields(source = %source))]
async fn receive(
    State(state): State<WebhookState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(secret) = state.secrets.get(&source) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no webhook source named {source:?} is configured"),
        ));
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over {} bytes", state.max_body_bytes),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                rejection.body_text(),
            )
        }
    })?;
    verify_signature(secret, &headers, &body)?;

    let deal: WebhookDeal = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not a JSON deal object: {e}"),
        )
    })?;
    let idempotency_key = ["idempotency-key", "x-delivery-id", "x-github-delivery"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("body-sha256:{}", hex::encode(Sha256::digest(&body))));
    let mut attributes = deal.attributes;
    for (key, value) in deal.extra {
        let value = match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        attributes.insert(key, value);
    }
    let raw = DealSubmission {
        idempotency_key,
        source: source.clone(),
        external_id: deal.external_id.unwrap_or_default(),
        name: deal.name.unwrap_or_default(),
        website: deal.website.unwrap_or_default(),
        github_owner: deal.github_owner.unwrap_or_default(),
        github_repo: deal.github_repo.unwrap_or_default(),
        description: deal.description.unwrap_or_default(),
        attributes: attributes.into_iter().collect(),
        source_url: deal.source_url.unwrap_or_default(),
    };
    let submission = validate::validate(raw, "").map_err(|violations| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_deal",
        message: "the deal is invalid".into(),
        violations,
    })?;
    let correlation_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let outcome = state
        .ingestor
        .submit(
            std::slice::from_ref(&submission),
            Channel::Webhook,
            &correlation_id,
        )
        .await
        .map_err(submission_failed)?
        .pop();
    match outcome {
        Some(Ok(receipt)) => {
            let status = if receipt.duplicate {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let r = to_proto_receipt(&receipt);
            let body = json!({
                "event_id": r.event_id,
                "deal_id": r.deal_id,
                "company_key": receipt.company_key,
                "partition": r.partition,
                "offset": r.offset,
                "duplicate": r.duplicate,
            });
            Ok((status, Json(body)).into_response())
        }
        Some(Err(Refusal::KeyReused)) | None => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "idempotency_key_reused",
            message: "the idempotency key was already used for a different deal".into(),
            violations: vec![Violation::new(
                "Idempotency-Key",
                "was already used for a different deal",
            )],
        }),
    }
}

/// Checks `X-Signature-256: sha256=<hex>` against the body, in constant time.
fn verify_signature(
    secret: &SecretString,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message);
    let header = headers
        .get(SIGNATURE_HEADER)
        .ok_or_else(|| unauthorized("the X-Signature-256 header is missing"))?;
    let signature = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|hex_sig| hex::decode(hex_sig).ok())
        .ok_or_else(|| unauthorized("X-Signature-256 must be sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .map_err(|_| unauthorized("the source's secret is unusable"))?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| unauthorized("the signature does not match the body"))
}

/// The signature header value for `body` under `secret` (for clients and
/// tests).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The OpenAPI 3.1 document of this HTTP API.
pub fn openapi() -> serde_json::Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let error_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "dealmesh ingest webhooks",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Partners post deals they have sourced. Each body is signed with HMAC-SHA256 under the source's secret."
        },
        "paths": {
            "/v1/webhooks/{source}": {
                "post": {
                    "operationId": "receiveWebhook",
                    "summary": "Submit one deal from a configured source",
                    "parameters": [
                        {"name": "source", "in": "path", "required": true,
                         "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}},
                        {"name": "X-Signature-256", "in": "header", "required": true,
                         "description": "sha256=<hex HMAC-SHA256 of the raw body under the source's secret>",
                         "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}},
                        {"name": "Idempotency-Key", "in": "header", "required": false,
                         "description": "Retries carry the same key. Also read from X-Delivery-Id or X-GitHub-Delivery; without any, the body's SHA-256 is the key.",
                         "schema": {"type": "string", "maxLength": 200}},
                        {"name": "X-Correlation-Id", "in": "header", "required": false, "schema": {"type": "string"}}
                    ],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deal"}}}},
                    "responses": {
                        "202": {"description": "The deal is on the deal log", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}}},
                        "200": {"description": "A retry: the deal was already on the log; nothing new was written", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Receipt"}}}},
                        "400": error_response("The body is not a JSON deal object"),
                        "401": error_response("The signature is missing or does not match"),
                        "404": error_response("No such source is configured"),
                        "413": error_response("The body is too large"),
                        "422": error_response("The deal is invalid; field_violations name each bad field"),
                        "500": error_response("The stored record of this delivery's key is corrupt"),
                        "503": error_response("The deal log or the idempotency store is not reachable, or the key expired while the delivery was answered; retry")
                    }
                }
            },
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}}
        },
        "components": {"schemas": {
            "Deal": {"type": "object", "required": ["name"],
                "description": "Fields not listed here are kept as attributes.",
                "properties": {
                    "name": {"type": "string", "maxLength": 300},
                    "website": {"type": "string", "maxLength": 2048},
                    "github_owner": {"type": "string"},
                    "github_repo": {"type": "string", "maxLength": 100},
                    "external_id": {"type": "string", "maxLength": 200},
                    "description": {"type": "string", "maxLength": 10000},
                    "source_url": {"type": "string", "format": "uri"},
                    "attributes": {"type": "object", "additionalProperties": {"type": "string"}}
                }},
            "Receipt": {"type": "object", "required": ["event_id", "deal_id", "company_key", "partition", "offset", "duplicate"],
                "properties": {
                    "event_id": {"type": "string", "format": "uuid"},
                    "deal_id": {"type": "string", "format": "uuid"},
                    "company_key": {"type": "string", "examples": ["domain:acme.io"]},
                    "partition": {"type": "integer"},
                    "offset": {"type": "integer"},
                    "duplicate": {"type": "boolean"}
                }},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["code", "message", "field_violations"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field_violations": {"type": "array", "items": {"type": "object",
                        "properties": {"field": {"type": "string"}, "description": {"type": "string"}}}}
                }}}}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingestor::Error;

    /// Each failure names its cause; only a corrupt record is not retried.
    #[test]
    fn a_failed_submission_says_why_and_whether_to_retry() {
        let cases = [
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
                "the idempotency store is not reachable; retry the delivery",
            ),
            (
                Error::Forgotten,
                StatusCode::SERVICE_UNAVAILABLE,
                "an idempotency key expired while the call was answered; retry the delivery",
            ),
            (
                Error::MissingBatch {
                    event_id: uuid::Uuid::nil(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "stored submission is corrupt",
            ),
        ];
        for (error, status, message) in cases {
            let answer = submission_failed(error);
            assert_eq!((answer.status, answer.message.as_str()), (status, message));
        }
    }
}
