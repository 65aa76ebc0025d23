//! The GitHub poller: each configured repository search
//! (`GET /search/repositories`) is followed through its `Link: rel="next"`
//! pages, and every repository becomes a `DealSourced` sighting keyed
//! `github:repo:<id>`.
//!
//! Cost control, as GitHub asks of integrators:
//! - the first page is requested with `If-None-Match: <ETag>`; a 304 does not
//!   count against the rate limit and ends the run with nothing emitted;
//! - when `X-RateLimit-Remaining` reaches 0 the next request waits until
//!   `X-RateLimit-Reset`; a 403/429 with `Retry-After` waits that long;
//! - 5xx and timeouts are retried with jittered backoff a bounded number of
//!   times, then the run ends with the error recorded and the next scheduled
//!   run tries again;
//! - a 422 (GitHub could not run the query) disables the search until its
//!   configuration changes, instead of asking again every interval.
//!
//! The page-1 ETag only covers page 1: an unchanged first page skips the
//! whole search until it changes. Results are sorted by last update by
//! default, so new activity shows on page 1.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use dealmesh_proto::v1::DealSubmission;
use dealmesh_runtime::shutdown::CancellationToken;
use futures::future::BoxFuture;
use reqwest::header::{ACCEPT, HeaderMap, IF_NONE_MATCH, LINK};
use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

use super::metrics::PollerMetrics;
use super::settings::{GithubSettings, HttpSettings};
use super::state::StateStore;
use super::{Answer, Error, Result, SearchReport, SearchRun, SharedClock, pause};
use crate::ingestor::Ingestor;
use crate::validate::{MAX_ATTRIBUTE_VALUE, MAX_DESCRIPTION};

/// The poller's name in `ingest_poller_state` and the `source` of its deals.
pub const POLLER: &str = "github";
/// The REST API version this client speaks.
pub const API_VERSION: &str = "2022-11-28";
const PROVIDER: &str = "github";
/// The least GitHub wants a client to wait after a secondary rate limit
/// that names no time.
const SECONDARY_LIMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const USER_AGENT: &str = concat!("dealmesh-ingest/", env!("CARGO_PKG_VERSION"));

/// Homepages on these sites point at a profile or package, not at the
/// company's own website, so they must not become its company key (every
/// repository with `https://github.com` as homepage would be one deal).
const NOT_A_COMPANY_SITE: &[&str] = &[
    "github.com",
    "gitlab.com",
    "bitbucket.org",
    "npmjs.com",
    "pypi.org",
    "crates.io",
    "docs.rs",
    "huggingface.co",
    "arxiv.org",
    "medium.com",
    "twitter.com",
    "x.com",
    "linkedin.com",
    "youtube.com",
];

pub struct GithubPoller {
    http: reqwest::Client,
    settings: GithubSettings,
    max_attempts: u32,
    ingestor: Ingestor,
    state: StateStore,
    clock: SharedClock,
    metrics: PollerMetrics,
    /// Set when GitHub reported no requests left: nothing is sent before.
    blocked_until: Mutex<Option<DateTime<Utc>>>,
}

/// One page as GitHub sends it. Items are parsed one by one so a single odd
/// repository cannot fail the page.
#[derive(Debug, Deserialize)]
struct SearchPage {
    #[serde(default)]
    incomplete_results: bool,
    items: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    id: u64,
    name: String,
    full_name: String,
    owner: Owner,
    html_url: String,
    description: Option<String>,
    homepage: Option<String>,
    stargazers_count: Option<u64>,
    forks_count: Option<u64>,
    open_issues_count: Option<u64>,
    language: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    license: Option<License>,
    created_at: Option<String>,
    pushed_at: Option<String>,
    archived: Option<bool>,
    fork: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Owner {
    login: String,
    /// `User`, `Organization` or anything GitHub adds later, kept verbatim.
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct License {
    spdx_id: Option<String>,
}

enum Fetched {
    NotModified,
    Page {
        items: Vec<serde_json::Value>,
        etag: Option<String>,
        next: Option<Url>,
    },
}

impl GithubPoller {
    pub fn new(
        settings: GithubSettings,
        http: &HttpSettings,
        ingestor: Ingestor,
        state: StateStore,
        clock: SharedClock,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(http.timeout)
                .build()?,
            settings,
            max_attempts: http.max_attempts,
            ingestor,
            state,
            clock,
            blocked_until: Mutex::new(None),
            metrics: PollerMetrics::default(),
        })
    }

    /// Counts requests, results and runs in `metrics`.
    pub fn with_metrics(mut self, metrics: PollerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs every configured search once, in order.
    pub async fn poll(&self, cancel: &CancellationToken) -> Vec<SearchReport> {
        let mut reports = Vec::with_capacity(self.settings.searches.len());
        for query in &self.settings.searches {
            if cancel.is_cancelled() {
                break;
            }
            let report = self.poll_search(query, cancel).await;
            self.metrics.run(PROVIDER, &report);
            reports.push(report);
        }
        reports
    }

    #[tracing::instrument(skip_all, fields(poller = POLLER, search = %query))]
    async fn poll_search(&self, query: &str, cancel: &CancellationToken) -> SearchReport {
        let claim = match self.state.try_claim(POLLER, query).await {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                let mut report = SearchReport::new(query, Ok(SearchRun::default()));
                report.busy = true;
                return report;
            }
            Err(error) => return SearchReport::new(query, Err(error.into())),
        };
        let report = self.poll_claimed(query, cancel).await;
        claim.release().await;
        report
    }

    async fn poll_claimed(&self, query: &str, cancel: &CancellationToken) -> SearchReport {
        let definition = super::definition_hash(&[
            self.settings.api_url.as_str(),
            query,
            self.settings.sort.as_deref().unwrap_or_default(),
            &self.settings.per_page.to_string(),
        ]);
        let state = match self.state.begin(POLLER, query, &definition).await {
            Ok(state) => state,
            Err(error) => {
                return SearchReport::new(query, Err(error.into()));
            }
        };
        if let Some(reason) = state.disabled_reason {
            let mut report = SearchReport::new(query, Ok(SearchRun::default()));
            report.disabled = Some(reason);
            return report;
        }
        let outcome = self.run(query, state.etag, state.cursor, cancel).await;
        if let Err(error) = self.state.finish(POLLER, query, &outcome).await {
            tracing::error!(error = %error, "cannot record the run's outcome");
        }
        if let Err(error @ Error::InvalidSearch { .. }) = &outcome {
            tracing::error!(error = %error, "search disabled until its configuration changes");
        }
        SearchReport::new(query, outcome)
    }

    async fn run(
        &self,
        query: &str,
        etag: Option<String>,
        cursor: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<SearchRun> {
        let correlation_id = uuid::Uuid::now_v7().to_string();
        let resumed = cursor
            .as_deref()
            .and_then(|c| Url::parse(c).ok())
            .filter(|u| self.same_origin(u));
        let mut first = resumed.is_none();
        let mut url = match resumed {
            Some(url) => {
                tracing::info!(cursor = %url, "resuming an unfinished pass");
                url
            }
            None => self.first_page(query),
        };
        let mut run = SearchRun::default();
        loop {
            if run.pages >= self.settings.max_pages {
                run.more = true;
                break;
            }
            let validator = if first { etag.as_deref() } else { None };
            let (items, page_etag, next) = match self.fetch(&url, validator, cancel).await? {
                Fetched::NotModified => {
                    run.not_modified = true;
                    break;
                }
                Fetched::Page { items, etag, next } => (items, etag, next),
            };
            run.pages += 1;
            run.seen += items.len();
            let mut sightings = Vec::with_capacity(items.len());
            let mut unreadable = 0;
            for item in items {
                match serde_json::from_value::<Repository>(item) {
                    Ok(repo) => sightings.push(sighting(repo)),
                    Err(error) => {
                        tracing::warn!(error = %error, url = %url, "repository skipped: unexpected shape");
                        run.skipped += 1;
                        unreadable += 1;
                    }
                }
            }
            let totals = super::submit_page(&self.ingestor, sightings, &correlation_id).await?;
            run.emitted += totals.emitted;
            run.duplicates += totals.duplicates;
            run.skipped += totals.skipped;
            self.metrics.deals(PROVIDER, "emitted", totals.emitted);
            self.metrics.deals(PROVIDER, "duplicate", totals.duplicates);
            self.metrics
                .deals(PROVIDER, "skipped", totals.skipped + unreadable);
            self.state
                .advance(
                    POLLER,
                    query,
                    if first { page_etag.as_deref() } else { None },
                    next.as_ref().map(Url::as_str),
                    totals.emitted,
                )
                .await?;
            first = false;
            match next {
                Some(next) if next == url => {
                    return Err(Error::Malformed {
                        provider: PROVIDER,
                        url: url.to_string(),
                        message: "Link rel=\"next\" points at the same page".into(),
                    });
                }
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(run)
    }

    fn first_page(&self, query: &str) -> Url {
        let mut url = self.settings.api_url.clone();
        url.path_segments_mut()
            .map(|mut segments| {
                segments.pop_if_empty().extend(["search", "repositories"]);
            })
            .ok();
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("q", query);
            if let Some(sort) = &self.settings.sort {
                pairs.append_pair("sort", sort).append_pair("order", "desc");
            }
            pairs.append_pair("per_page", &self.settings.per_page.to_string());
        }
        url
    }

    /// The token is only ever sent to the configured API host.
    fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.settings.api_url.origin()
    }

    #[tracing::instrument(skip_all, fields(url = %url), err)]
    async fn fetch(
        &self,
        url: &Url,
        etag: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        let prepare = || -> BoxFuture<'_, Result<reqwest::RequestBuilder>> {
            Box::pin(async move {
                self.wait_for_rate_limit(cancel).await?;
                let mut request = self
                    .http
                    .get(url.clone())
                    .header(ACCEPT, "application/vnd.github+json")
                    .header("X-GitHub-Api-Version", API_VERSION);
                if let Some(token) = &self.settings.token {
                    request = request.bearer_auth(token.expose_secret());
                }
                if let Some(etag) = etag {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                Ok(request)
            })
        };
        let answer = |attempt, response| -> BoxFuture<'_, Answer<Fetched>> {
            Box::pin(self.answer(url, attempt, response))
        };
        super::with_retries(
            PROVIDER,
            self.max_attempts,
            self.clock.as_ref(),
            &self.metrics,
            cancel,
            prepare,
            answer,
        )
        .await
    }

    /// What one GitHub answer means: a page, a wait, or an error.
    async fn answer(
        &self,
        url: &Url,
        attempt: u32,
        response: reqwest::Response,
    ) -> Answer<Fetched> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.note_rate_limit(&headers);
        match status {
            200 => Answer::Done(self.page(url, &headers, response).await),
            304 => Answer::Done(Ok(Fetched::NotModified)),
            403 | 429 => {
                let body = super::error_text(response).await;
                let reason = format!("HTTP {status}: {}", github_message(&body));
                let wait = if let Some(wait) = super::retry_after(&headers, self.clock.now()) {
                    tracing::warn!(
                        attempt,
                        wait_secs = wait.as_secs(),
                        "github asked to retry later"
                    );
                    wait
                } else if remaining(&headers) == Some(0) {
                    tracing::warn!(attempt, "github rate limit exhausted");
                    // wait_for_rate_limit waits until the reset.
                    std::time::Duration::ZERO
                } else if status == 429 {
                    super::backoff(attempt)
                } else if body.to_ascii_lowercase().contains("secondary rate limit") {
                    // GitHub asks for at least a minute, then growing
                    // waits, when it names no time.
                    tracing::warn!(attempt, "github secondary rate limit");
                    SECONDARY_LIMIT_WAIT.max(super::backoff(attempt))
                } else {
                    return Answer::Done(Err(Error::Status {
                        provider: PROVIDER,
                        url: url.to_string(),
                        status,
                        message: github_message(&body),
                    }));
                };
                Answer::Retry { wait, reason }
            }
            422 => {
                let body = super::error_text(response).await;
                Answer::Done(Err(Error::InvalidSearch {
                    provider: PROVIDER,
                    status,
                    message: github_message(&body),
                }))
            }
            // 202: GitHub is still computing the answer.
            202 | 500..=599 => Answer::not_ready(PROVIDER, attempt, status),
            _ => {
                let body = super::error_text(response).await;
                Answer::Done(Err(Error::Status {
                    provider: PROVIDER,
                    url: url.to_string(),
                    status,
                    message: github_message(&body),
                }))
            }
        }
    }

    async fn page(
        &self,
        url: &Url,
        headers: &HeaderMap,
        response: reqwest::Response,
    ) -> Result<Fetched> {
        let malformed = |message: String| Error::Malformed {
            provider: PROVIDER,
            url: url.to_string(),
            message,
        };
        let body = super::read_body(response, super::MAX_RESPONSE_BYTES)
            .await
            .map_err(malformed)?;
        let page: SearchPage = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("not a repository search result: {e}")))?;
        if page.incomplete_results {
            // GitHub's search timed out on its side: the page holds what it
            // found; later runs see the rest.
            tracing::warn!(url = %url, "github returned incomplete search results");
        }
        let next = match next_link(headers) {
            None => None,
            Some(raw) => {
                let next = Url::parse(&raw)
                    .map_err(|e| malformed(format!("Link rel=\"next\" {raw:?}: {e}")))?;
                if !self.same_origin(&next) {
                    return Err(malformed(format!(
                        "Link rel=\"next\" {raw:?} leaves {}",
                        self.settings.api_url
                    )));
                }
                Some(next)
            }
        };
        let etag = headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Fetched::Page {
            items: page.items,
            etag,
            next,
        })
    }

    /// Remembers an exhausted rate limit, so the next request (of any
    /// search) waits for the reset instead of spending a 403.
    fn note_rate_limit(&self, headers: &HeaderMap) {
        if remaining(headers) != Some(0) {
            return;
        }
        let reset = header_u64(headers, "x-ratelimit-reset")
            .and_then(|secs| Utc.timestamp_opt(i64::try_from(secs).ok()?, 0).single());
        // No reset time: GitHub's primary window is an hour; a minute is a
        // cautious guess that the bounded retries correct.
        let until = reset.unwrap_or_else(|| self.clock.now() + chrono::Duration::seconds(60));
        if let Ok(mut blocked) = self.blocked_until.lock() {
            *blocked = Some(until);
        }
    }

    async fn wait_for_rate_limit(&self, cancel: &CancellationToken) -> Result<()> {
        let until = self.blocked_until.lock().ok().and_then(|mut b| b.take());
        let Some(until) = until else { return Ok(()) };
        let wait = (until - self.clock.now())
            .to_std()
            .unwrap_or_default()
            .min(super::MAX_PROVIDER_WAIT);
        if !wait.is_zero() {
            tracing::info!(wait_secs = wait.as_secs(), reset = %until, "waiting for the github rate limit reset");
        }
        pause(self.clock.as_ref(), wait, cancel).await
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn remaining(headers: &HeaderMap) -> Option<u64> {
    header_u64(headers, "x-ratelimit-remaining")
}

/// The `rel="next"` target of a `Link` header (RFC 8288), if any.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|link| {
            let mut parts = link.split(';');
            let target = parts.next()?.trim();
            let target = target.strip_prefix('<')?.strip_suffix('>')?;
            parts
                .any(|p| {
                    let p = p.trim();
                    p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
                })
                .then(|| target.to_owned())
        })
}

/// GitHub's error body is `{"message": ..., "errors": [{"message": ...}]}`;
/// anything else is quoted, shortened.
fn github_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    let text = match serde_json::from_str::<ErrorBody>(body) {
        Ok(parsed) => {
            let mut text = parsed.message.unwrap_or_default();
            for error in parsed.errors {
                if let Some(m) = error.get("message").and_then(|m| m.as_str()) {
                    text.push_str(": ");
                    text.push_str(m);
                }
            }
            text
        }
        Err(_) => body.trim().to_owned(),
    };
    super::clip(&text, 500)
}

/// The sighting of one repository.
fn sighting(repo: Repository) -> DealSubmission {
    let mut attributes = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            attributes.insert(key.to_owned(), super::clip(&value, MAX_ATTRIBUTE_VALUE));
        }
    };
    put("github_full_name", Some(repo.full_name.clone()));
    put("stars", repo.stargazers_count.map(|n| n.to_string()));
    put("forks", repo.forks_count.map(|n| n.to_string()));
    put("open_issues", repo.open_issues_count.map(|n| n.to_string()));
    put("language", repo.language.clone());
    put("topics", Some(repo.topics.join(",")));
    put(
        "license",
        repo.license
            .and_then(|l| l.spdx_id)
            .filter(|id| id != "NOASSERTION"),
    );
    put("owner_type", repo.owner.kind.clone());
    put("created_at", repo.created_at.clone());
    put("pushed_at", repo.pushed_at.clone());
    put("archived", repo.archived.map(|b| b.to_string()));
    put("fork", repo.fork.map(|b| b.to_string()));
    DealSubmission {
        idempotency_key: format!("github:repo:{}", repo.id),
        source: POLLER.to_owned(),
        external_id: repo.id.to_string(),
        name: repo.name.clone(),
        website: company_website(repo.homepage.as_deref()),
        github_owner: repo.owner.login,
        github_repo: repo.name,
        description: super::clip(
            repo.description.as_deref().unwrap_or_default(),
            MAX_DESCRIPTION,
        ),
        attributes: attributes.into_iter().collect(),
        source_url: repo.html_url,
    }
}

/// The repository homepage, if it can be the company's own website.
fn company_website(homepage: Option<&str>) -> String {
    let Some(homepage) = homepage.map(str::trim).filter(|h| !h.is_empty()) else {
        return String::new();
    };
    match crate::company::registrable_domain(homepage) {
        Ok(domain) if !NOT_A_COMPANY_SITE.contains(&domain.as_str()) => homepage.to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(link: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(LINK, link.parse().unwrap());
        h
    }

    #[test]
    fn next_link_is_found_among_others() {
        let h = headers(
            r#"<https://api.github.com/search/repositories?q=x&page=2>; rel="next", <https://api.github.com/search/repositories?q=x&page=34>; rel="last""#,
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/search/repositories?q=x&page=2")
        );
        let last_page = headers(
            r#"<https://api.github.com/search/repositories?q=x&page=1>; rel="prev", <https://api.github.com/search/repositories?q=x&page=1>; rel="first""#,
        );
        assert_eq!(next_link(&last_page), None);
        assert_eq!(next_link(&headers("garbage")), None);
    }

    #[test]
    fn code_hosts_are_not_company_websites() {
        assert_eq!(company_website(Some("https://github.com")), "");
        assert_eq!(company_website(Some("https://www.npmjs.com/package/x")), "");
        assert_eq!(company_website(Some("not a url")), "");
        assert_eq!(
            company_website(Some("https://acme.github.io")),
            "https://acme.github.io"
        );
        assert_eq!(company_website(Some("https://acme.io")), "https://acme.io");
    }

    #[test]
    fn github_error_bodies_are_summarised() {
        let body = r#"{"message":"Validation Failed","errors":[{"message":"The search is longer than 256 characters.","resource":"Search","field":"q","code":"invalid"}]}"#;
        assert_eq!(
            github_message(body),
            "Validation Failed: The search is longer than 256 characters."
        );
        assert_eq!(github_message("<html>oops</html>"), "<html>oops</html>");
    }
}
