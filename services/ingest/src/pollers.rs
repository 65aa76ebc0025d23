//! Sourcing pollers: the fund's saved GitHub and Crunchbase searches, run on
//! a schedule, become `DealSourced` events through the same [`Ingestor`] as
//! every other channel (validation, canonical company key, idempotency
//! store, acknowledged publish).
//!
//! The idempotency key of a sighting is the provider's stable id
//! (`github:repo:<id>`, `crunchbase:org:<uuid>`), so a company already on the
//! log is never emitted twice, across runs and restarts. Where each search
//! stands (validator, cursor, last error, disabled) lives in
//! `ingest_poller_state`, see [`state`].
//!
//! Every wait (rate limits, backoff, pacing) goes through a [`Clock`] and
//! stops at once when the shutdown token is cancelled.

pub mod crunchbase;
pub mod github;
pub mod metrics;
pub mod settings;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dealmesh_proto::v1::{Channel, DealSubmission};
use dealmesh_runtime::shutdown::CancellationToken;
use futures::future::BoxFuture;
use rand::Rng;

use crate::ingestor::{Ingestor, Refusal};

pub use settings::{CrunchbaseSearch, CrunchbaseSettings, GithubSettings, HttpSettings};

/// The longest a provider may make us wait before one retry (a bogus
/// `Retry-After` or reset time must not park a poller for days).
pub const MAX_PROVIDER_WAIT: Duration = Duration::from_secs(3600);
/// First backoff step after a 5xx, timeout or unpaced 429; doubled per
/// attempt, with jitter.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Largest backoff step.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{provider}: {url}: {message}")]
    Transport {
        provider: &'static str,
        url: String,
        message: String,
    },
    #[error("{provider}: {url} answered HTTP {status}: {message}")]
    Status {
        provider: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    /// The provider refused the search itself (bad query): retrying cannot
    /// help, the search stays off until its configuration changes.
    #[error("{provider} rejected the search (HTTP {status}): {message}")]
    InvalidSearch {
        provider: &'static str,
        status: u16,
        message: String,
    },
    #[error("{provider}: malformed response from {url}: {message}")]
    Malformed {
        provider: &'static str,
        url: String,
        message: String,
    },
    #[error("{provider}: still failing after {attempts} attempts: {last}")]
    GaveUp {
        provider: &'static str,
        attempts: u32,
        last: String,
    },
    #[error("stopped by shutdown")]
    Cancelled,
    #[error("publishing: {0}")]
    Ingest(#[from] crate::ingestor::Error),
    #[error("poller state: {0}")]
    State(#[from] sqlx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Time as the pollers see it: injected so tests run rate-limit waits and
/// backoff without sleeping through them.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time (for provider reset timestamps).
    fn now(&self) -> DateTime<Utc>;
    /// Monotonic time since an arbitrary fixed point (for pacing).
    fn elapsed(&self) -> Duration;
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The real clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Waits `duration` on `clock`, or returns [`Error::Cancelled`] as soon as
/// `cancel` fires.
pub async fn pause(
    clock: &dyn Clock,
    duration: Duration,
    cancel: &CancellationToken,
) -> Result<()> {
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    if duration.is_zero() {
        return Ok(());
    }
    tokio::select! {
        () = cancel.cancelled() => Err(Error::Cancelled),
        () = clock.sleep(duration) => Ok(()),
    }
}

/// What a poller makes of one answer from its provider.
pub(crate) enum Answer<T> {
    /// The result: a page, or an error another attempt cannot fix.
    Done(Result<T>),
    /// Worth another attempt after `wait`; `reason` is what this one got,
    /// reported if the attempts run out.
    Retry { wait: Duration, reason: String },
}

impl<T> Answer<T> {
    /// 202 (the provider is still computing the answer) or a 5xx: back off
    /// and try again.
    pub(crate) fn not_ready(provider: &'static str, attempt: u32, status: u16) -> Self {
        tracing::warn!(
            provider,
            attempt,
            status,
            "provider answer not ready or server error"
        );
        Answer::Retry {
            wait: backoff(attempt),
            reason: format!("HTTP {status}"),
        }
    }
}

/// One provider request, attempted up to `max_attempts` times: `prepare`
/// waits for the provider's pacing or rate limit and builds the request,
/// `answer` reads what came back. Transport failures (timeouts, refused
/// connections) are retried with [`backoff`]; every attempt is counted in
/// the request metrics; a cancelled `cancel` stops every wait at once.
pub(crate) async fn with_retries<'a, T>(
    provider: &'static str,
    max_attempts: u32,
    clock: &dyn Clock,
    metrics: &metrics::PollerMetrics,
    cancel: &CancellationToken,
    mut prepare: impl FnMut() -> BoxFuture<'a, Result<reqwest::RequestBuilder>>,
    mut answer: impl FnMut(u32, reqwest::Response) -> BoxFuture<'a, Answer<T>>,
) -> Result<T> {
    let mut last = String::new();
    for attempt in 1..=max_attempts {
        let request = prepare().await?;
        let sent = tokio::select! {
            () = cancel.cancelled() => return Err(Error::Cancelled),
            sent = request.send() => sent,
        };
        let wait = match sent {
            Err(error) => {
                metrics.request(
                    provider,
                    if error.is_timeout() {
                        "timeout"
                    } else {
                        "error"
                    },
                );
                last = transport_message(&error);
                tracing::warn!(provider, attempt, error = %last, "provider request failed");
                backoff(attempt)
            }
            Ok(response) => {
                metrics.request(provider, response.status().as_str());
                match answer(attempt, response).await {
                    Answer::Done(result) => return result,
                    Answer::Retry { wait, reason } => {
                        last = reason;
                        wait
                    }
                }
            }
        };
        if attempt < max_attempts {
            pause(clock, wait, cancel).await?;
        }
    }
    Err(Error::GaveUp {
        provider,
        attempts: max_attempts,
        last,
    })
}

/// What a failed request's error says, briefly.
fn transport_message(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        format!("cannot connect: {error}")
    } else {
        error.to_string()
    }
}

/// Exponential backoff with full jitter in its upper half: attempt 1 waits
/// 0.5-1 s, attempt 2 1-2 s, ... up to [`BACKOFF_MAX`]. Jitter keeps many
/// installations from retrying in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(BACKOFF_MAX);
    let factor: f64 = rand::rng().random_range(0.5..=1.0);
    ceiling.mul_f64(factor)
}

/// Reads a `Retry-After` header given in seconds (GitHub and Crunchbase
/// send seconds; an HTTP date is also accepted).
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_PROVIDER_WAIT));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some(
        (at - now)
            .to_std()
            .unwrap_or_default()
            .min(MAX_PROVIDER_WAIT),
    )
}

/// Largest provider response body read; a bigger one is refused as
/// malformed rather than held in memory. A full GitHub page of 100
/// repositories is well under 1 MiB.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read, for its message.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Reads a response body of at most `limit` bytes.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<Vec<u8>, String> {
    let too_big = || format!("body over the {limit}-byte limit");
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) if error.is_timeout() => return Err("timed out reading the body".into()),
            Err(error) => return Err(format!("reading the body: {error}")),
        }
    }
}

/// The text of an error response, bounded; empty if it cannot be read.
pub(crate) async fn error_text(response: reqwest::Response) -> String {
    read_body(response, MAX_ERROR_BYTES)
        .await
        .map(|body| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default()
}

/// What one search's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchRun {
    /// Pages fetched with a body (a 304 is not counted).
    pub pages: u32,
    /// The first page was unchanged (304): nothing fetched, nothing emitted.
    pub not_modified: bool,
    /// Results the provider listed.
    pub seen: usize,
    /// Results that became a new `DealSourced` event.
    pub emitted: usize,
    /// Results already on the log (earlier runs, restarts, other replicas).
    pub duplicates: usize,
    /// Results dropped because they did not make a valid deal.
    pub skipped: usize,
    /// The run stopped at the page limit; the next run resumes from there.
    pub more: bool,
}

/// One configured search's outcome in a poll.
#[derive(Debug)]
pub struct SearchReport {
    pub search: String,
    pub outcome: Result<SearchRun>,
    /// The search is disabled (rejected by the provider) and was not run.
    pub disabled: Option<String>,
    /// Another replica was polling this search; it was not run here.
    pub busy: bool,
}

impl SearchReport {
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok() && self.disabled.is_none()
    }

    pub(crate) fn new(search: &str, outcome: Result<SearchRun>) -> Self {
        Self {
            search: search.to_owned(),
            outcome,
            disabled: None,
            busy: false,
        }
    }
}

/// Totals of one page handed to the ingestor.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Emitted {
    pub emitted: usize,
    pub duplicates: usize,
    pub skipped: usize,
}

/// Validates and submits one page's sightings. Invalid ones are skipped with
/// a warning naming the fields (a provider's odd record must not stop the
/// search); a key whose content changed since it was first seen (stars,
/// funding) is already on the log and counts as a duplicate.
pub(crate) async fn submit_page(
    ingestor: &Ingestor,
    raws: Vec<DealSubmission>,
    correlation_id: &str,
) -> Result<Emitted> {
    let mut totals = Emitted::default();
    let mut submissions = Vec::with_capacity(raws.len());
    for raw in raws {
        let key = raw.idempotency_key.clone();
        let submission = match crate::validate::validate(raw.clone(), "") {
            Ok(s) => s,
            // A website the company key cannot use (e.g. a bare IP) is
            // dropped rather than the whole sighting.
            Err(violations)
                if !raw.website.is_empty() && violations.iter().all(|v| v.field == "website") =>
            {
                match crate::validate::validate(
                    DealSubmission {
                        website: String::new(),
                        ..raw
                    },
                    "",
                ) {
                    Ok(s) => s,
                    Err(violations) => {
                        tracing::warn!(key, ?violations, "sighting skipped");
                        totals.skipped += 1;
                        continue;
                    }
                }
            }
            Err(violations) => {
                tracing::warn!(key, ?violations, "sighting skipped");
                totals.skipped += 1;
                continue;
            }
        };
        submissions.push(submission);
    }
    let receipts = ingestor
        .submit(&submissions, Channel::Poller, correlation_id)
        .await?;
    for receipt in receipts {
        match receipt {
            Ok(r) if !r.duplicate => totals.emitted += 1,
            Ok(_) | Err(Refusal::KeyReused) => totals.duplicates += 1,
        }
    }
    Ok(totals)
}

/// Truncates to at most `max` characters (provider text can exceed what a
/// submission accepts).
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => text[..index].to_owned(),
        None => text.to_owned(),
    }
}

/// Runs `poll` now and then every `interval` until `shutdown` is cancelled.
/// A failed poll is logged and the schedule goes on: the next run tries
/// again.
pub async fn schedule<F, Fut>(
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    mut poll: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Vec<SearchReport>>,
{
    dealmesh_runtime::shutdown::every(interval, &shutdown, || {
        let run = poll(shutdown.clone());
        async move { log_reports(name, &run.await) }
    })
    .await;
    tracing::info!(poller = name, "poller stopped");
}

/// Starts the enabled pollers as tasks that run until `shutdown` is
/// cancelled. Returns their handles, to wait for before flushing.
pub fn spawn(
    config: &crate::config::IngestConfig,
    ingestor: &Ingestor,
    pool: &sqlx::PgPool,
    metrics: &metrics::PollerMetrics,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, reqwest::Error> {
    let clock: SharedClock = Arc::new(SystemClock::default());
    let state = state::StateStore::new(pool.clone());
    let mut tasks = Vec::new();
    if config.github.enabled {
        let poller = github::GithubPoller::new(
            config.github.clone(),
            &config.poller_http,
            ingestor.clone(),
            state.clone(),
            clock.clone(),
        )?
        .with_metrics(metrics.clone());
        let interval = config.github.interval;
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let poller = &poller;
            schedule(github::POLLER, interval, shutdown, |cancel| async move {
                poller.poll(&cancel).await
            })
            .await;
        }));
        tracing::info!(
            searches = config.github.searches.len(),
            "github poller started"
        );
    }
    if config.crunchbase.enabled {
        let poller = crunchbase::CrunchbasePoller::new(
            config.crunchbase.clone(),
            &config.poller_http,
            ingestor.clone(),
            state,
            clock,
        )?
        .with_metrics(metrics.clone());
        let interval = config.crunchbase.interval;
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let poller = &poller;
            schedule(
                crunchbase::POLLER,
                interval,
                shutdown,
                |cancel| async move { poller.poll(&cancel).await },
            )
            .await;
        }));
        tracing::info!(
            searches = config.crunchbase.searches.len(),
            "crunchbase poller started"
        );
    }
    Ok(tasks)
}

pub fn log_reports(poller: &str, reports: &[SearchReport]) {
    for report in reports {
        if report.busy {
            tracing::info!(poller, search = %report.search, "search polled by another replica, skipped");
            continue;
        }
        match (&report.outcome, &report.disabled) {
            (_, Some(reason)) => {
                tracing::warn!(poller, search = %report.search, reason, "search disabled, skipped");
            }
            (Ok(run), None) => tracing::info!(
                poller,
                search = %report.search,
                pages = run.pages,
                not_modified = run.not_modified,
                seen = run.seen,
                emitted = run.emitted,
                duplicates = run.duplicates,
                skipped = run.skipped,
                more = run.more,
                "search polled"
            ),
            (Err(Error::Cancelled), None) => {
                tracing::info!(poller, search = %report.search, "search interrupted by shutdown");
            }
            (Err(error), None) => {
                tracing::error!(poller, search = %report.search, error = %error, "search failed");
            }
        }
    }
}

/// A shared handle on the clock.
pub type SharedClock = Arc<dyn Clock>;

/// SHA-256 hex of a search definition, to notice configuration changes.
pub(crate) fn definition_hash(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..50 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = backoff(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            assert!(backoff(30) <= BACKOFF_MAX);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Utc::now()),
            Some(Duration::from_secs(7))
        );
        headers.insert("retry-after", "99999999".parse().unwrap());
        assert_eq!(retry_after(&headers, Utc::now()), Some(MAX_PROVIDER_WAIT));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, Utc::now()), None);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let response =
            |size: usize| reqwest::Response::from(axum::http::Response::new(vec![b'x'; size]));
        assert_eq!(read_body(response(10), 10).await.unwrap().len(), 10);
        let refused = read_body(response(11), 10).await.unwrap_err();
        assert_eq!(refused, "body over the 10-byte limit");
    }

    #[test]
    fn clip_counts_characters() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("hi", 5), "hi");
    }

    #[tokio::test]
    async fn a_pause_ends_at_once_on_shutdown() {
        tokio::time::pause();
        let cancel = CancellationToken::new();
        let clock = SystemClock::default();
        let started = tokio::time::Instant::now();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            canceller.cancel();
        });
        let waited = pause(&clock, Duration::from_secs(3600), &cancel).await;
        assert!(matches!(waited, Err(Error::Cancelled)), "{waited:?}");
        // Timer resolution is a millisecond; an hour is what a missed
        // cancellation would cost.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
    }
}
