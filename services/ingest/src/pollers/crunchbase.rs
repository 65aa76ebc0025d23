//! The Crunchbase v4 poller: each configured organization search
//! (`POST /api/v4/searches/organizations`) is paged with `after_id` (the
//! uuid of the last organization seen), and every organization becomes a
//! `DealSourced` sighting keyed `crunchbase:org:<uuid>`.
//!
//! Crunchbase sends no rate-limit headers and documents 200 calls a minute,
//! so the client paces itself with a GCRA limiter (one call every
//! 60/N seconds, no bursts) and backs off on 429. 5xx and timeouts are
//! retried with jittered backoff a bounded number of times; a 400/422 (the
//! search body is wrong) disables the search until its configuration
//! changes.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use dealmesh_proto::v1::DealSubmission;
use dealmesh_runtime::shutdown::CancellationToken;
use futures::future::BoxFuture;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::metrics::PollerMetrics;
use super::settings::{CrunchbaseSearch, CrunchbaseSettings, HttpSettings};
use super::state::StateStore;
use super::{Answer, Error, Result, SearchReport, SearchRun, SharedClock, pause};
use crate::ingestor::Ingestor;
use crate::validate::{MAX_ATTRIBUTE_VALUE, MAX_DESCRIPTION};

/// The poller's name in `ingest_poller_state` and the `source` of its deals.
pub const POLLER: &str = "crunchbase";
const PROVIDER: &str = "crunchbase";
const USER_AGENT: &str = concat!("dealmesh-ingest/", env!("CARGO_PKG_VERSION"));
/// Crunchbase's default page size when a search sets no `limit`.
pub const DEFAULT_LIMIT: u64 = 50;

/// `num_employees_enum` codes as Crunchbase documents them, with the range
/// people read. A code not listed here is kept verbatim without a range.
const EMPLOYEE_RANGES: &[(&str, &str)] = &[
    ("c_00001_00010", "1-10"),
    ("c_00011_00050", "11-50"),
    ("c_00051_00100", "51-100"),
    ("c_00101_00250", "101-250"),
    ("c_00251_00500", "251-500"),
    ("c_00501_01000", "501-1000"),
    ("c_01001_05000", "1001-5000"),
    ("c_05001_10000", "5001-10000"),
    ("c_10001_max", "10001+"),
];

/// The governor clock, driven by the poller's [`super::Clock`] so pacing
/// follows the same (in tests, virtual) time as every other wait.
#[derive(Clone)]
struct PacingClock(SharedClock);

impl governor::clock::Clock for PacingClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.elapsed())
    }
}

type Pacer = RateLimiter<NotKeyed, InMemoryState, PacingClock, NoOpMiddleware<Nanos>>;

pub struct CrunchbasePoller {
    http: reqwest::Client,
    settings: CrunchbaseSettings,
    max_attempts: u32,
    ingestor: Ingestor,
    state: StateStore,
    clock: SharedClock,
    metrics: PollerMetrics,
    pacer: Pacer,
    pacing_clock: PacingClock,
}

#[derive(Debug, Deserialize)]
struct SearchPage {
    entities: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Entity {
    uuid: Option<String>,
    properties: Properties,
}

#[derive(Debug, Deserialize)]
struct Properties {
    identifier: Identifier,
    short_description: Option<String>,
    website_url: Option<String>,
    /// Older field shape: `{"value": "https://..."}`.
    website: Option<Value>,
    num_employees_enum: Option<Value>,
    funding_total: Option<Money>,
    last_funding_type: Option<Value>,
    last_funding_at: Option<String>,
    num_funding_rounds: Option<u64>,
    operating_status: Option<Value>,
    founded_on: Option<Value>,
    #[serde(default)]
    categories: Vec<Identifier>,
    #[serde(default)]
    location_identifiers: Vec<Identifier>,
}

#[derive(Debug, Deserialize)]
struct Identifier {
    uuid: Option<String>,
    value: Option<String>,
    permalink: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Money {
    value: Option<f64>,
    currency: Option<String>,
    value_usd: Option<f64>,
}

impl CrunchbasePoller {
    pub fn new(
        settings: CrunchbaseSettings,
        http: &HttpSettings,
        ingestor: Ingestor,
        state: StateStore,
        clock: SharedClock,
    ) -> Result<Self, reqwest::Error> {
        let rate = NonZeroU32::new(settings.calls_per_minute).unwrap_or(NonZeroU32::MIN);
        // No burst: a call every 60/rate seconds keeps any sliding minute
        // at or under `rate` calls (plus the first).
        let quota = Quota::per_minute(rate).allow_burst(NonZeroU32::MIN);
        let pacing_clock = PacingClock(clock.clone());
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(http.timeout)
                .build()?,
            max_attempts: http.max_attempts,
            pacer: RateLimiter::direct_with_clock(quota, pacing_clock.clone()),
            pacing_clock,
            settings,
            ingestor,
            state,
            clock,
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
        for search in &self.settings.searches {
            if cancel.is_cancelled() {
                break;
            }
            let report = self.poll_search(search, cancel).await;
            self.metrics.run(PROVIDER, &report);
            reports.push(report);
        }
        reports
    }

    #[tracing::instrument(skip_all, fields(poller = POLLER, search = %search.name))]
    async fn poll_search(
        &self,
        search: &CrunchbaseSearch,
        cancel: &CancellationToken,
    ) -> SearchReport {
        let claim = match self.state.try_claim(POLLER, &search.name).await {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                let mut report = SearchReport::new(&search.name, Ok(SearchRun::default()));
                report.busy = true;
                return report;
            }
            Err(error) => return SearchReport::new(&search.name, Err(error.into())),
        };
        let report = self.poll_claimed(search, cancel).await;
        claim.release().await;
        report
    }

    async fn poll_claimed(
        &self,
        search: &CrunchbaseSearch,
        cancel: &CancellationToken,
    ) -> SearchReport {
        let body = Value::Object(search.body.clone()).to_string();
        let definition =
            super::definition_hash(&[self.settings.api_url.as_str(), &search.name, &body]);
        let state = match self.state.begin(POLLER, &search.name, &definition).await {
            Ok(state) => state,
            Err(error) => {
                return SearchReport::new(&search.name, Err(error.into()));
            }
        };
        if let Some(reason) = state.disabled_reason {
            let mut report = SearchReport::new(&search.name, Ok(SearchRun::default()));
            report.disabled = Some(reason);
            return report;
        }
        let outcome = self.run(search, state.cursor, cancel).await;
        if let Err(error) = self.state.finish(POLLER, &search.name, &outcome).await {
            tracing::error!(error = %error, "cannot record the run's outcome");
        }
        if let Err(error @ Error::InvalidSearch { .. }) = &outcome {
            tracing::error!(error = %error, "search disabled until its configuration changes");
        }
        SearchReport::new(&search.name, outcome)
    }

    async fn run(
        &self,
        search: &CrunchbaseSearch,
        mut after_id: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<SearchRun> {
        if let Some(after_id) = &after_id {
            tracing::info!(after_id, "resuming an unfinished pass");
        }
        let correlation_id = uuid::Uuid::now_v7().to_string();
        let limit = search
            .body
            .get("limit")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_LIMIT);
        let url = self.search_url();
        let mut run = SearchRun::default();
        loop {
            if run.pages >= self.settings.max_pages {
                run.more = true;
                break;
            }
            let mut body = search.body.clone();
            body.insert("limit".into(), Value::from(limit));
            if let Some(after_id) = &after_id {
                body.insert("after_id".into(), Value::from(after_id.clone()));
            }
            let entities = self.fetch(&url, &Value::Object(body), cancel).await?;
            run.pages += 1;
            run.seen += entities.len();
            // The next page starts after the last entity listed, parseable
            // or not.
            let last_uuid = entities.last().and_then(entity_uuid);
            let full_page = entities.len() as u64 >= limit;
            let mut sightings = Vec::with_capacity(entities.len());
            let mut unreadable = 0;
            for entity in entities {
                match serde_json::from_value::<Entity>(entity) {
                    Ok(entity) => match sighting(entity) {
                        Some(s) => sightings.push(s),
                        None => {
                            run.skipped += 1;
                            unreadable += 1;
                        }
                    },
                    Err(error) => {
                        tracing::warn!(error = %error, "organization skipped: unexpected shape");
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
            after_id = match (full_page, last_uuid) {
                // A provider repeating a page must not keep a poller busy
                // until the page limit.
                (true, Some(uuid)) if after_id.as_deref() == Some(uuid.as_str()) => {
                    return Err(Error::Malformed {
                        provider: PROVIDER,
                        url: url.to_string(),
                        message: format!("the page after {uuid} ends with {uuid} again"),
                    });
                }
                (true, Some(uuid)) => Some(uuid),
                (true, None) => {
                    return Err(Error::Malformed {
                        provider: PROVIDER,
                        url: url.to_string(),
                        message: "a full page whose last entity has no uuid: cannot page on".into(),
                    });
                }
                (false, _) => None,
            };
            self.state
                .advance(
                    POLLER,
                    &search.name,
                    None,
                    after_id.as_deref(),
                    totals.emitted,
                )
                .await?;
            if after_id.is_none() {
                break;
            }
        }
        Ok(run)
    }

    fn search_url(&self) -> Url {
        let mut url = self.settings.api_url.clone();
        url.path_segments_mut()
            .map(|mut segments| {
                segments
                    .pop_if_empty()
                    .extend(["api", "v4", "searches", "organizations"]);
            })
            .ok();
        url
    }

    /// Waits for the pacer's next free slot.
    async fn paced(&self, cancel: &CancellationToken) -> Result<()> {
        use governor::clock::Clock as _;
        loop {
            match self.pacer.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.pacing_clock.now());
                    pause(self.clock.as_ref(), wait, cancel).await?;
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(url = %url), err)]
    async fn fetch(
        &self,
        url: &Url,
        body: &Value,
        cancel: &CancellationToken,
    ) -> Result<Vec<Value>> {
        let Some(user_key) = &self.settings.user_key else {
            return Err(Error::Status {
                provider: PROVIDER,
                url: url.to_string(),
                status: 401,
                message: format!("no user key: set {}", crate::config::CRUNCHBASE_USER_KEY),
            });
        };
        let prepare = || -> BoxFuture<'_, Result<reqwest::RequestBuilder>> {
            Box::pin(async move {
                self.paced(cancel).await?;
                Ok(self
                    .http
                    .post(url.clone())
                    .header("X-cb-user-key", user_key.expose_secret())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .json(body))
            })
        };
        let answer = |attempt, response| -> BoxFuture<'_, Answer<Vec<Value>>> {
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

    /// What one Crunchbase answer means: a page, a wait, or an error.
    async fn answer(
        &self,
        url: &Url,
        attempt: u32,
        response: reqwest::Response,
    ) -> Answer<Vec<Value>> {
        let status = response.status().as_u16();
        match status {
            200 => Answer::Done(self.page(url, response).await),
            429 => {
                let wait = super::retry_after(response.headers(), self.clock.now())
                    .unwrap_or_else(|| super::backoff(attempt));
                tracing::warn!(
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "crunchbase rate limited"
                );
                Answer::Retry {
                    wait,
                    reason: "HTTP 429: rate limited".to_owned(),
                }
            }
            400 | 422 => {
                let text = super::error_text(response).await;
                Answer::Done(Err(Error::InvalidSearch {
                    provider: PROVIDER,
                    status,
                    message: crunchbase_message(&text),
                }))
            }
            202 | 500..=599 => Answer::not_ready(PROVIDER, attempt, status),
            _ => {
                let text = super::error_text(response).await;
                Answer::Done(Err(Error::Status {
                    provider: PROVIDER,
                    url: url.to_string(),
                    status,
                    message: crunchbase_message(&text),
                }))
            }
        }
    }

    async fn page(&self, url: &Url, response: reqwest::Response) -> Result<Vec<Value>> {
        let malformed = |message: String| Error::Malformed {
            provider: PROVIDER,
            url: url.to_string(),
            message,
        };
        let body = super::read_body(response, super::MAX_RESPONSE_BYTES)
            .await
            .map_err(malformed)?;
        let page: SearchPage = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("not an organization search result: {e}")))?;
        Ok(page.entities)
    }
}

fn entity_uuid(entity: &Value) -> Option<String> {
    entity
        .get("uuid")
        .or_else(|| entity.pointer("/properties/identifier/uuid"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Crunchbase errors come as `[{"code": ..., "message": ...}]` or
/// `{"error": ...}`; anything else is quoted, shortened.
fn crunchbase_message(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(Value::Array(errors)) => errors
            .iter()
            .filter_map(|e| e.get("message").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("; "),
        Ok(Value::Object(map)) => map
            .get("message")
            .or_else(|| map.get("error"))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned()),
        _ => body.trim().to_owned(),
    };
    super::clip(&text, 500)
}

/// An enum-ish value as text: strings verbatim (known or not), anything
/// else as its JSON.
fn enum_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Object(map) if map.contains_key("value") => enum_text(map.get("value")),
        other => Some(other.to_string()),
    }
}

fn amount(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        value.to_string()
    }
}

/// The sighting of one organization; `None` (with a warning) when it has
/// no uuid or no name to key it by.
fn sighting(entity: Entity) -> Option<DealSubmission> {
    let p = entity.properties;
    let Some(uuid) = entity.uuid.or(p.identifier.uuid.clone()) else {
        tracing::warn!("organization skipped: no uuid");
        return None;
    };
    let Some(name) = p.identifier.value.clone().filter(|n| !n.trim().is_empty()) else {
        tracing::warn!(uuid, "organization skipped: no name");
        return None;
    };
    let mut attributes = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            attributes.insert(key.to_owned(), super::clip(&value, MAX_ATTRIBUTE_VALUE));
        }
    };
    put("crunchbase_uuid", Some(uuid.clone()));
    put("crunchbase_permalink", p.identifier.permalink.clone());
    let employees = enum_text(p.num_employees_enum.as_ref());
    put(
        "num_employees",
        employees.as_deref().and_then(|code| {
            EMPLOYEE_RANGES
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, range)| (*range).to_owned())
        }),
    );
    put("num_employees_enum", employees);
    if let Some(money) = &p.funding_total {
        put("funding_total_usd", money.value_usd.map(amount));
        put("funding_total", money.value.map(amount));
        put("funding_total_currency", money.currency.clone());
    }
    put("last_funding_type", enum_text(p.last_funding_type.as_ref()));
    put("last_funding_at", p.last_funding_at.clone());
    put(
        "num_funding_rounds",
        p.num_funding_rounds.map(|n| n.to_string()),
    );
    put("operating_status", enum_text(p.operating_status.as_ref()));
    put("founded_on", enum_text(p.founded_on.as_ref()));
    put(
        "categories",
        Some(
            p.categories
                .iter()
                .filter_map(|c| c.value.as_deref())
                .collect::<Vec<_>>()
                .join(","),
        ),
    );
    put(
        "locations",
        Some(
            p.location_identifiers
                .iter()
                .filter_map(|c| c.value.as_deref())
                .collect::<Vec<_>>()
                .join(","),
        ),
    );
    let website = p
        .website_url
        .clone()
        .or_else(|| enum_text(p.website.as_ref()))
        .unwrap_or_default();
    let permalink = p.identifier.permalink.clone().unwrap_or_default();
    Some(DealSubmission {
        idempotency_key: format!("crunchbase:org:{uuid}"),
        source: POLLER.to_owned(),
        external_id: uuid,
        name,
        website,
        github_owner: String::new(),
        github_repo: String::new(),
        description: super::clip(
            p.short_description.as_deref().unwrap_or_default(),
            MAX_DESCRIPTION,
        ),
        attributes: attributes.into_iter().collect(),
        source_url: if permalink.is_empty() {
            String::new()
        } else {
            format!("https://www.crunchbase.com/organization/{permalink}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(properties: Value) -> Entity {
        serde_json::from_value(serde_json::json!({ "properties": properties })).unwrap()
    }

    #[test]
    fn known_and_unknown_employee_codes() {
        let known = sighting(entity(serde_json::json!({
            "identifier": {"uuid": "u1", "value": "A", "permalink": "a"},
            "num_employees_enum": "c_00011_00050"
        })))
        .unwrap();
        assert_eq!(known.attributes["num_employees"], "11-50");
        let unknown = sighting(entity(serde_json::json!({
            "identifier": {"uuid": "u2", "value": "B"},
            "num_employees_enum": "c_99999_future",
            "last_funding_type": {"unexpected": true}
        })))
        .unwrap();
        assert_eq!(unknown.attributes["num_employees_enum"], "c_99999_future");
        assert!(!unknown.attributes.contains_key("num_employees"));
        assert_eq!(
            unknown.attributes["last_funding_type"],
            r#"{"unexpected":true}"#
        );
    }

    #[test]
    fn an_organization_without_uuid_or_name_is_skipped() {
        assert!(sighting(entity(serde_json::json!({"identifier": {"value": "A"}}))).is_none());
        assert!(sighting(entity(serde_json::json!({"identifier": {"uuid": "u"}}))).is_none());
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            crunchbase_message(r#"[{"code":"MD100","message":"Unsupported field_id foo"}]"#),
            "Unsupported field_id foo"
        );
        assert_eq!(crunchbase_message(r#"{"error":"bad key"}"#), "bad key");
    }
}
