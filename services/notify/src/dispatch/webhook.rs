//! Webhook sends: a signed JSON POST, with the answer classified for retry.

use std::time::Duration;

use super::{Claimed, Outcome};
use crate::signature;

/// The most of an error response kept in the delivery log.
const ERROR_BODY_EXCERPT: usize = 512;

#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
}

impl WebhookSender {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect would re-send a signed body somewhere the
            // subscriber did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dealmesh-notify/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client })
    }

    #[tracing::instrument(skip_all, fields(delivery_id = %delivery.id, attempt = delivery.attempts))]
    pub async fn send(&self, delivery: &Claimed) -> Outcome {
        let Some(secret) = &delivery.secret else {
            return Outcome::Permanent {
                status: None,
                error: "the subscription has no signing secret".into(),
            };
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature::sign(secret.as_bytes(), timestamp, delivery.body.as_bytes());
        let sent = self
            .client
            .post(&delivery.recipient)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::SIGNATURE_HEADER, signature)
            .header(signature::DELIVERY_ID_HEADER, delivery.id.to_string())
            .header(signature::ATTEMPT_HEADER, delivery.attempts.to_string())
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => classify(response).await,
            Err(error) => Outcome::Retry {
                status: None,
                error: describe(&error),
                retry_after: None,
            },
        }
    }
}

async fn classify(response: reqwest::Response) -> Outcome {
    let status = response.status();
    let code = Some(status.as_u16());
    if status.is_success() {
        return Outcome::Delivered { status: code };
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let excerpt = body_excerpt(response).await;
    let error = format!("endpoint answered {status}{excerpt}");
    if status.as_u16() == 429 {
        Outcome::Retry {
            status: code,
            error,
            retry_after,
        }
    } else if status.is_server_error() || status.as_u16() == 408 {
        Outcome::Retry {
            status: code,
            error,
            retry_after: None,
        }
    } else {
        Outcome::Permanent {
            status: code,
            error,
        }
    }
}

/// The first bytes of the body, so the delivery log says what went wrong
/// without storing whatever an endpoint chose to send.
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(ERROR_BODY_EXCERPT);
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_request() || error.is_body() || error.is_decode() {
        "bad answer"
    } else {
        "request failed"
    };
    // The source chain says what actually happened (refused, reset, not HTTP).
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    format!("{kind}: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
