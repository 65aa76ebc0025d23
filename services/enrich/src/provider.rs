//! Calling an outside HTTP provider (GitHub, Crunchbase, an LLM) the way a
//! good API citizen does: paced by a per-provider rate limiter, retried with
//! exponential backoff and jitter on timeouts, 5xx and rate limits, honouring
//! `Retry-After` and `X-RateLimit-Reset`, revalidating with `ETag`, and never
//! reading an unbounded body.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::Rng;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};

use crate::config::{Rate, RetryPolicy};

/// Largest response body read from a provider.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Responses kept for `If-None-Match` revalidation, per provider.
const ETAG_CACHE_ENTRIES: usize = 4096;

/// How a provider call ended without a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// 404 or 410: the provider does not know the entity.
    #[error("{provider}: not found ({url})")]
    NotFound { provider: &'static str, url: String },
    /// Timeouts, 5xx, rate limits: still failing after the retry budget.
    #[error("{provider}: {reason} (after {attempts} attempts)")]
    Transient {
        provider: &'static str,
        reason: String,
        attempts: u32,
    },
    /// The request itself is refused (400, 401, 403, 422, ...): retrying
    /// will not help.
    #[error("{provider}: {reason}")]
    Permanent {
        provider: &'static str,
        reason: String,
        attempts: u32,
    },
}

impl CallError {
    pub fn attempts(&self) -> u32 {
        match self {
            CallError::NotFound { .. } => 1,
            CallError::Transient { attempts, .. } | CallError::Permanent { attempts, .. } => {
                *attempts
            }
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Transient { .. })
    }
}

/// A successful answer (2xx, or 304 served from the revalidated cache).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// Decodes the body as JSON; a body that does not fit is the provider's
    /// fault and retrying the same request will not change it.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        provider: &'static str,
        what: &str,
    ) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| CallError::Permanent {
            provider,
            reason: format!("malformed {what} response: {e}"),
            attempts: 1,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: &'static str,
    outcome: &'static str,
}

/// Request counters shared by every provider.
#[derive(Clone, Default)]
pub struct ProviderMetrics {
    requests: Family<CallLabels, Counter>,
}

impl ProviderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "dealmesh_enrich_provider_requests",
            "HTTP requests to enrichment providers, by provider and outcome",
            metrics.requests.clone(),
        );
        metrics
    }

    fn count(&self, provider: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&CallLabels { provider, outcome })
            .inc();
    }
}

/// One outside provider: its HTTP client, pace and retry policy.
pub struct Provider {
    pub name: &'static str,
    client: reqwest::Client,
    limiter: Option<DefaultDirectRateLimiter>,
    retry: RetryPolicy,
    etags: Mutex<HashMap<String, (HeaderValue, Answer)>>,
    metrics: ProviderMetrics,
}

/// What one attempt came to.
enum Attempt {
    Done(Answer),
    NotFound,
    /// Retry after the provider's own delay, if it gave one.
    Retry(String, Option<Duration>),
    Refused(String),
}

impl Provider {
    pub fn new(
        name: &'static str,
        timeout: Duration,
        rate: Option<Rate>,
        retry: RetryPolicy,
        metrics: ProviderMetrics,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("dealmesh-enrich/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self {
            name,
            client,
            limiter: rate.map(|rate| RateLimiter::direct(quota(rate))),
            retry,
            etags: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Sends the request `build` makes, once per attempt, until it succeeds,
    /// is refused, or the retry budget is spent. GET answers carrying an
    /// `ETag` are revalidated with `If-None-Match` next time.
    pub async fn call(
        &self,
        cache_key: Option<&str>,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Answer, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            let cached = cache_key.and_then(|key| self.cached(key));
            let mut request = build();
            if let Some((etag, _)) = &cached {
                request = request.header(header::IF_NONE_MATCH, etag.clone());
            }
            let outcome = match request.send().await {
                Err(error) => Attempt::Retry(describe_send_error(&error), None),
                Ok(response) => self.classify(response, cached, cache_key).await,
            };
            match outcome {
                Attempt::Done(answer) => {
                    self.metrics.count(self.name, "ok");
                    return Ok(answer);
                }
                Attempt::NotFound => {
                    self.metrics.count(self.name, "not_found");
                    return Err(CallError::NotFound {
                        provider: self.name,
                        url: build()
                            .build()
                            .map(|r| r.url().to_string())
                            .unwrap_or_default(),
                    });
                }
                Attempt::Refused(reason) => {
                    self.metrics.count(self.name, "refused");
                    return Err(CallError::Permanent {
                        provider: self.name,
                        reason,
                        attempts: attempt,
                    });
                }
                Attempt::Retry(reason, asked) => {
                    self.metrics.count(self.name, "retry");
                    if attempt >= self.retry.attempts {
                        return Err(CallError::Transient {
                            provider: self.name,
                            reason,
                            attempts: attempt,
                        });
                    }
                    let delay = match asked {
                        // A provider that wants more patience than the budget
                        // allows is not asked again now: the deal is marked
                        // failed (retryable) instead of holding a worker.
                        Some(asked) if asked > self.retry.max => {
                            return Err(CallError::Transient {
                                provider: self.name,
                                reason: format!(
                                    "{reason}; provider asks to wait {}s",
                                    asked.as_secs()
                                ),
                                attempts: attempt,
                            });
                        }
                        Some(asked) => asked + jitter(self.retry.base / 4),
                        None => backoff(self.retry, attempt),
                    };
                    tracing::debug!(provider = self.name, attempt, delay_ms = delay.as_millis() as u64, %reason, "provider call failed, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn classify(
        &self,
        response: reqwest::Response,
        cached: Option<(HeaderValue, Answer)>,
        cache_key: Option<&str>,
    ) -> Attempt {
        let status = response.status();
        let headers = response.headers().clone();
        if status == StatusCode::NOT_MODIFIED {
            return match cached {
                Some((_, answer)) => Attempt::Done(answer),
                None => Attempt::Refused("304 Not Modified without a cached response".into()),
            };
        }
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Attempt::NotFound;
        }
        let body = match read_body(response).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) if status.is_success() => {
                return Attempt::Refused(format!("response larger than {MAX_BODY_BYTES} bytes"));
            }
            Err(BodyError::Read(reason)) if status.is_success() => {
                return Attempt::Retry(reason, None);
            }
            Err(_) => Bytes::new(),
        };
        if status.is_success() {
            let answer = Answer {
                status,
                headers,
                body,
            };
            if let (Some(key), Some(etag), StatusCode::OK) =
                (cache_key, answer.headers.get(header::ETAG), status)
            {
                self.remember(key, etag.clone(), &answer);
            }
            return Attempt::Done(answer);
        }
        let message = error_message(&body);
        let reason = format!("{} {}", status.as_u16(), message);
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry(reason, provider_delay(&headers));
        }
        // GitHub answers 403 (or 429) to an exhausted primary limit with
        // `X-RateLimit-Remaining: 0`, and to a secondary limit with
        // `Retry-After`; any other 403 is a real refusal.
        if status == StatusCode::FORBIDDEN
            && (header_str(&headers, "x-ratelimit-remaining") == Some("0")
                || headers.contains_key(header::RETRY_AFTER))
        {
            return Attempt::Retry(
                format!("rate limited: {reason}"),
                provider_delay(&headers).or(Some(self.retry.max)),
            );
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Attempt::Retry(reason, provider_delay(&headers));
        }
        Attempt::Refused(reason)
    }

    fn cached(&self, key: &str) -> Option<(HeaderValue, Answer)> {
        self.etags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn remember(&self, key: &str, etag: HeaderValue, answer: &Answer) {
        let mut etags = self.etags.lock().unwrap_or_else(PoisonError::into_inner);
        if etags.len() >= ETAG_CACHE_ENTRIES && !etags.contains_key(key) {
            // Revalidation only saves quota; starting over is harmless.
            etags.clear();
        }
        etags.insert(key.to_owned(), (etag, answer.clone()));
    }
}

fn quota(rate: Rate) -> Quota {
    let period = rate.per / rate.requests.get();
    // A small burst keeps a cold start quick without hammering a provider
    // that counts per minute.
    let burst = NonZeroU32::new(rate.requests.get().clamp(1, 20)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(rate.requests))
        .allow_burst(burst)
}

/// `base * 2^(attempt-1)`, capped at `max`, scaled by a random 50–100%.
pub fn backoff(policy: RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(policy.max);
    let factor = rand::rng().random_range(0.5..=1.0);
    exp.mul_f64(factor)
}

fn jitter(up_to: Duration) -> Duration {
    up_to.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// The delay a provider asked for: `Retry-After` (seconds or an HTTP date)
/// or GitHub's `X-RateLimit-Reset` (epoch seconds).
fn provider_delay(headers: &HeaderMap) -> Option<Duration> {
    if let Some(value) = header_str(headers, header::RETRY_AFTER.as_str()) {
        if let Ok(seconds) = value.trim().parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc2822(value.trim()) {
            let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
            return Some(wait.to_std().unwrap_or_default());
        }
    }
    if header_str(headers, "x-ratelimit-remaining") == Some("0")
        && let Some(reset) =
            header_str(headers, "x-ratelimit-reset").and_then(|v| v.trim().parse::<i64>().ok())
    {
        let wait = reset - chrono::Utc::now().timestamp();
        return Some(Duration::from_secs(
            u64::try_from(wait.max(0)).unwrap_or(0) + 1,
        ));
    }
    None
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads at most [`MAX_BODY_BYTES`]; a longer body is an error.
async fn read_body(mut response: reqwest::Response) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.into()),
            Err(error) => return Err(BodyError::Read(describe_send_error(&error))),
        }
    }
}

/// The provider's own error message (`{"message": ...}` from GitHub,
/// `{"error": {"message": ...}}` from OpenAI, `[{"message": ...}]` from
/// Crunchbase), or the start of the body.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.pointer("/0/message"))
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    let text = message.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    truncate_chars(text.trim(), 200)
}

fn describe_send_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "cannot connect".into()
    } else {
        format!("request failed: {error}")
    }
}

/// The first `max` characters of `text`, with `…` when cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_rate_limit_reset_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(provider_delay(&headers), Some(Duration::from_secs(7)));

        let mut headers = HeaderMap::new();
        let reset = chrono::Utc::now().timestamp() + 30;
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        let delay = provider_delay(&headers).unwrap();
        assert!(delay >= Duration::from_secs(29) && delay <= Duration::from_secs(32));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let third = backoff(policy, 3);
        assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
        assert!(backoff(policy, 20) <= Duration::from_secs(1));
    }

    #[test]
    fn error_messages_come_from_each_provider_shape() {
        assert_eq!(
            error_message(br#"{"message":"Bad credentials"}"#),
            "Bad credentials"
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"Rate limit reached","type":"x"}}"#),
            "Rate limit reached"
        );
        assert_eq!(
            error_message(br#"[{"code":"LA","message":"bad field"}]"#),
            "bad field"
        );
        assert_eq!(error_message(b"oops"), "oops");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }
}
