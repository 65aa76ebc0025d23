//! What providers do wrong, and what the enricher makes of it: a retry, a
//! gap, or a clear `EnrichmentFailed`; never a panic or a hang.

mod common;

use std::time::Duration;

use common::*;
use dealmesh_enrich::enricher::{Enricher, Outcome};
use dealmesh_enrich::provider::ProviderMetrics;
use dealmesh_proto::v1::{AnalyzerKind, DealEnriched, EnrichmentFailed};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn enricher(env: &[(String, String)]) -> Enricher {
    dealmesh_enrich::app::enricher(&config(env), ProviderMetrics::default()).expect("enricher")
}

fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.push((key.into(), value.into()));
    env
}

#[track_caller]
fn expect_enriched(outcome: Outcome) -> DealEnriched {
    match outcome {
        Outcome::Enriched(e) => *e,
        Outcome::Failed(f) => panic!("expected an enrichment, got {f:#?}"),
    }
}

#[track_caller]
fn expect_failed(outcome: Outcome) -> EnrichmentFailed {
    match outcome {
        Outcome::Failed(f) => f,
        Outcome::Enriched(e) => panic!("expected a failure, got {e:#?}"),
    }
}

async fn requests_to(server: &MockServer, wanted: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == wanted)
        .count()
}

/// Answers `first` to the first `times` requests for `at`, then the fixtures.
async fn github_failing_first(at: &str, first: ResponseTemplate, times: u64) -> MockServer {
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(&github)
        .await;
    mount_github(&github, Duration::ZERO).await;
    github
}

fn repo_deal() -> dealmesh_proto::v1::DealSourced {
    sourced("Lumen Grid", "octocat", "Hello-World", None)
}

#[tokio::test]
async fn a_5xx_is_retried_and_then_succeeds() {
    let github = github_failing_first("/repos/octocat/Hello-World", server_error(503), 2).await;
    let outcome = enricher(&env_for(&github, None, None))
        .enrich("e1", &repo_deal())
        .await;
    assert_eq!(expect_enriched(outcome).github.unwrap().stars, 80);
    assert_eq!(requests_to(&github, "/repos/octocat/Hello-World").await, 3);
}

#[tokio::test]
async fn a_lasting_5xx_fails_the_deal_as_retryable_after_the_budget() {
    let github = github_failing_first("/repos/octocat/Hello-World", server_error(500), 100).await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert_eq!(failed.step, "github");
    assert_eq!(failed.source_event_id, "e1");
    assert_eq!(failed.attempts, 3);
    assert!(failed.retryable);
    assert!(
        failed.reason.contains("500 Server Error"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn an_exhausted_github_rate_limit_waits_for_the_reset() {
    let github =
        github_failing_first("/repos/octocat/Hello-World", github_rate_limited(1), 1).await;
    let outcome = enricher(&env_for(&github, None, None))
        .enrich("e1", &repo_deal())
        .await;
    assert_eq!(expect_enriched(outcome).github.unwrap().forks, 9);
    assert_eq!(requests_to(&github, "/repos/octocat/Hello-World").await, 2);
}

#[tokio::test]
async fn a_rate_limit_reset_beyond_the_budget_fails_retryable_at_once() {
    let github =
        github_failing_first("/repos/octocat/Hello-World", github_rate_limited(3600), 100).await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert!(failed.retryable);
    assert_eq!(failed.attempts, 1, "no point asking again before the reset");
    assert!(failed.reason.contains("rate limited"), "{}", failed.reason);
    assert_eq!(requests_to(&github, "/repos/octocat/Hello-World").await, 1);
}

#[tokio::test]
async fn crunchbase_429_with_retry_after_is_honoured() {
    let github = github_fake(Duration::ZERO).await;
    let crunchbase = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/entities/organizations/lumen-grid"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_raw(
                    r#"[{"code":"LA_TOO_MANY_REQUESTS","message":"Too many requests"}]"#,
                    "application/json",
                )
                .insert_header("Retry-After", "1"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&crunchbase)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/entities/organizations/lumen-grid"))
        .and(header("x-cb-user-key", "cb-test-key"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(ORGANIZATION_JSON, "application/json"),
        )
        .mount(&crunchbase)
        .await;
    let started = std::time::Instant::now();
    let outcome = enricher(&env_for(&github, Some(&crunchbase), None))
        .enrich("e1", &sourced("Lumen Grid", "", "", Some("lumen-grid")))
        .await;
    let waited = started.elapsed();
    let enriched = expect_enriched(outcome);
    assert_eq!(enriched.crunchbase.unwrap().permalink, "lumen-grid");
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured (retried after {waited:?})"
    );
}

#[tokio::test]
async fn a_timeout_is_retried_then_fails_retryable() {
    let github = github_failing_first(
        "/repos/octocat/Hello-World",
        github_ok(REPO_JSON).set_delay(Duration::from_secs(5)),
        100,
    )
    .await;
    let env = with(
        env_for(&github, None, None),
        "DEALMESH_ENRICH_HTTP_TIMEOUT",
        "300ms",
    );
    let failed = expect_failed(enricher(&env).enrich("e1", &repo_deal()).await);
    assert_eq!(failed.step, "github");
    assert!(failed.retryable);
    assert!(failed.reason.contains("timed out"), "{}", failed.reason);
}

#[tokio::test]
async fn a_malformed_provider_body_fails_clearly_and_is_not_retried() {
    let github = github_failing_first(
        "/repos/octocat/Hello-World",
        github_ok(r#"{"stargazers_count": "many", "#),
        100,
    )
    .await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert_eq!(failed.step, "github");
    assert!(!failed.retryable);
    assert!(
        failed.reason.contains("malformed repository response"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn a_huge_provider_body_is_refused_without_reading_it_all() {
    let huge = format!("[{}]", vec!["{\"total\": 1}"; 1_000_000].join(","));
    assert!(huge.len() > dealmesh_enrich::provider::MAX_BODY_BYTES);
    let github = github_failing_first(
        "/repos/octocat/Hello-World/stats/commit_activity",
        github_ok(huge),
        100,
    )
    .await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert!(failed.reason.contains("larger than"), "{}", failed.reason);
    assert!(!failed.retryable);
}

#[tokio::test]
async fn commit_activity_202_means_ask_again() {
    let github = github_failing_first(
        "/repos/octocat/Hello-World/stats/commit_activity",
        ResponseTemplate::new(202).set_body_raw("{}", "application/json"),
        2,
    )
    .await;
    let enriched = expect_enriched(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert_eq!(enriched.github.unwrap().weekly_commits, [89]);
    assert_eq!(
        requests_to(&github, "/repos/octocat/Hello-World/stats/commit_activity").await,
        3
    );
    assert!(
        !enriched.gaps.iter().any(|g| g.source == "github"),
        "{:?}",
        enriched.gaps
    );
}

#[tokio::test]
async fn commit_activity_still_computing_after_the_budget_is_a_gap() {
    let github = github_failing_first(
        "/repos/octocat/Hello-World/stats/commit_activity",
        ResponseTemplate::new(202),
        100,
    )
    .await;
    let enriched = expect_enriched(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert!(enriched.github.unwrap().weekly_commits.is_empty());
    assert!(
        enriched
            .gaps
            .iter()
            .any(|g| g.reason.contains("still being computed")),
        "{:?}",
        enriched.gaps
    );
}

#[tokio::test]
async fn an_etag_revalidation_304_reuses_the_cached_answer() {
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/repos/octocat/Hello-World"))
        .and(header(
            "if-none-match",
            "W/\"7dc470913f1fe9bb6c7355b50a0737bc\"",
        ))
        .respond_with(
            ResponseTemplate::new(304)
                .insert_header("ETag", "W/\"7dc470913f1fe9bb6c7355b50a0737bc\""),
        )
        .with_priority(1)
        .mount(&github)
        .await;
    mount_github(&github, Duration::ZERO).await;
    let enricher = enricher(&env_for(&github, None, None));
    let first = expect_enriched(enricher.enrich("e1", &repo_deal()).await);
    let second = expect_enriched(enricher.enrich("e2", &repo_deal()).await);
    assert_eq!(first.github.unwrap().stars, 80);
    assert_eq!(second.github.unwrap().stars, 80);
    let requests = github.received_requests().await.unwrap();
    let revalidated = requests
        .iter()
        .filter(|r| r.url.path() == "/repos/octocat/Hello-World")
        .filter(|r| r.headers.contains_key("if-none-match"))
        .count();
    assert_eq!(revalidated, 1);
}

#[tokio::test]
async fn a_crunchbase_422_fails_and_is_not_retried() {
    let github = github_fake(Duration::ZERO).await;
    let crunchbase = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("^/api/v4/entities/organizations/"))
        .respond_with(ResponseTemplate::new(422).set_body_raw(
            r#"[{"code":"MD_INVALID_FIELD_IDS","message":"Unknown field_id: num_employees"}]"#,
            "application/json",
        ))
        .mount(&crunchbase)
        .await;
    let failed = expect_failed(
        enricher(&env_for(&github, Some(&crunchbase), None))
            .enrich("e1", &sourced("Lumen Grid", "", "", Some("lumen-grid")))
            .await,
    );
    assert_eq!(failed.step, "crunchbase");
    assert!(!failed.retryable);
    assert_eq!(failed.attempts, 1);
    assert!(
        failed.reason.contains("422 Unknown field_id"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn unknown_crunchbase_enums_and_bad_names_become_gaps() {
    let github = github_fake(Duration::ZERO).await;
    let crunchbase = MockServer::start().await;
    let mut body: serde_json::Value = serde_json::from_str(ORGANIZATION_JSON).unwrap();
    body["properties"]["num_employees_enum"] = "c_99999_mega".into();
    Mock::given(method("GET"))
        .and(path_regex("^/api/v4/entities/organizations/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&crunchbase)
        .await;
    let enriched = expect_enriched(
        enricher(&env_for(&github, Some(&crunchbase), None))
            .enrich(
                "e1",
                &sourced("Lumen Grid", "../../etc", "", Some("lumen-grid")),
            )
            .await,
    );
    let crunchbase = enriched.crunchbase.unwrap();
    assert_eq!(crunchbase.headcount_band, "");
    assert_eq!(crunchbase.funding_total.unwrap().value_usd, 8_100_000);
    let reasons: Vec<&str> = enriched.gaps.iter().map(|g| g.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("invalid GitHub owner")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("c_99999_mega")),
        "{reasons:?}"
    );
    assert_eq!(requests_to(&github, "/orgs/../../etc").await, 0);
}

#[tokio::test]
async fn wrong_json_from_the_llm_is_asked_again_then_used() {
    let github = github_fake(Duration::ZERO).await;
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion_with(
            "Sure! The company is a climate software business.",
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&llm)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion_with(
            r#"{"summary":"Grid software.","sector":"Space Tech","business_model":"B2B SaaS","risks":[],"confidence":0.3}"#,
        ))
        .mount(&llm)
        .await;
    let enriched = expect_enriched(
        enricher(&env_for(&github, None, Some(&llm)))
            .enrich("e1", &repo_deal())
            .await,
    );
    let analysis = enriched.analysis.unwrap();
    assert_eq!(analysis.analyzer, AnalyzerKind::Llm as i32);
    assert_eq!(
        analysis.sector, "space-tech",
        "an unknown sector is kept as a short label"
    );
    assert_eq!(llm.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_llm_that_keeps_answering_wrong_fails_the_analysis_step() {
    let github = github_fake(Duration::ZERO).await;
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion_with(
            r#"{"summary":"","sector":"fintech","business_model":"x","risks":[]}"#,
        ))
        .mount(&llm)
        .await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, Some(&llm)))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert_eq!(failed.step, "analysis");
    assert_eq!(failed.attempts, 3);
    assert!(!failed.retryable);
    assert!(
        failed.reason.contains("summary is empty"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn an_llm_outage_fails_the_analysis_step_as_retryable() {
    let github = github_fake(Duration::ZERO).await;
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(503).set_body_raw(
            r#"{"error":{"message":"The server is overloaded","type":"server_error","code":null}}"#,
            "application/json",
        ))
        .mount(&llm)
        .await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, Some(&llm)))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert_eq!(failed.step, "analysis");
    assert!(failed.retryable);
    assert!(failed.reason.contains("overloaded"), "{}", failed.reason);
}

#[tokio::test]
async fn a_refused_llm_key_fails_at_once() {
    let github = github_fake(Duration::ZERO).await;
    let llm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(401).set_body_raw(
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            "application/json",
        ))
        .mount(&llm)
        .await;
    let failed = expect_failed(
        enricher(&env_for(&github, None, Some(&llm)))
            .enrich("e1", &repo_deal())
            .await,
    );
    assert!(!failed.retryable);
    assert_eq!(failed.attempts, 1);
    assert!(
        failed.reason.contains("401 Incorrect API key"),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn a_huge_description_is_cut_before_prompting() {
    let github = github_fake(Duration::ZERO).await;
    let llm = llm_fake(Duration::ZERO).await;
    let mut deal = repo_deal();
    deal.description = "Grid forecasting. ".repeat(100_000);
    let enriched = expect_enriched(
        enricher(&env_for(&github, None, Some(&llm)))
            .enrich("e1", &deal)
            .await,
    );
    assert_eq!(
        enriched.analysis.unwrap().analyzer,
        AnalyzerKind::Llm as i32
    );
    let requests = llm.received_requests().await.unwrap();
    assert!(
        requests[0].body.len() < 12_000,
        "prompt of {} bytes for a {}-byte description",
        requests[0].body.len(),
        deal.description.len()
    );
}

#[tokio::test]
async fn azure_openai_gets_its_header_and_api_version() {
    let github = github_fake(Duration::ZERO).await;
    let azure = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/deployments/analyst/chat/completions"))
        .and(header("api-key", "azure-key"))
        .and(wiremock::matchers::query_param("api-version", "2024-10-21"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(CHAT_COMPLETION_JSON, "application/json"),
        )
        .mount(&azure)
        .await;
    let mut env = env_for(&github, None, None);
    env.extend([
        ("DEALMESH_ENRICH_LLM_PROVIDER".into(), "azure".into()),
        (
            "DEALMESH_ENRICH_LLM_BASE_URL".into(),
            format!("{}/openai/deployments/analyst", azure.uri()),
        ),
        ("DEALMESH_ENRICH_LLM_API_KEY".into(), "azure-key".into()),
    ]);
    let enriched = expect_enriched(enricher(&env).enrich("e1", &repo_deal()).await);
    let analysis = enriched.analysis.unwrap();
    assert_eq!(analysis.analyzer, AnalyzerKind::Llm as i32);
    assert_eq!(analysis.provenance.unwrap().source, "azure-openai");
}

#[tokio::test]
async fn an_organization_is_read_with_its_public_repositories() {
    let github = github_fake(Duration::ZERO).await;
    let enriched = expect_enriched(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &sourced("GitHub", "github", "", None))
            .await,
    );
    let g = enriched.github.unwrap();
    assert_eq!(g.owner, "github");
    assert_eq!(g.repo, "");
    assert_eq!(g.description, "A great organization");
    assert_eq!((g.stars, g.forks), (80, 9));
}

#[tokio::test]
async fn each_provider_is_paced_by_its_own_rate_limit() {
    use dealmesh_enrich::config::{Rate, RetryPolicy};
    use dealmesh_enrich::provider::Provider;
    let github = github_fake(Duration::ZERO).await;
    let retry = RetryPolicy {
        attempts: 1,
        base: Duration::from_millis(10),
        max: Duration::from_secs(1),
    };
    // 4 a second: a burst of 4, then one every 250 ms.
    let paced = Provider::new(
        "paced",
        Duration::from_secs(2),
        Rate::parse("4/s").unwrap(),
        retry,
        ProviderMetrics::default(),
    )
    .unwrap();
    let free = Provider::new(
        "free",
        Duration::from_secs(2),
        None,
        retry,
        ProviderMetrics::default(),
    )
    .unwrap();
    let url = format!("{}/orgs/github", github.uri());
    let started = std::time::Instant::now();
    for _ in 0..8 {
        free.call(None, || free.client().get(&url)).await.unwrap();
    }
    let unpaced = started.elapsed();
    let started = std::time::Instant::now();
    for _ in 0..8 {
        paced.call(None, || paced.client().get(&url)).await.unwrap();
    }
    let waited = started.elapsed();
    // Four requests beyond the burst, 250 ms apart.
    assert!(
        waited >= Duration::from_millis(900),
        "8 requests at 4/s took {waited:?}"
    );
    assert!(
        unpaced < waited,
        "unlimited {unpaced:?} vs paced {waited:?}"
    );
}

#[tokio::test]
async fn an_owner_that_is_not_an_organization_is_read_as_a_user() {
    let github = github_failing_first("/orgs/octocat", github_not_found(), 100).await;
    let enriched = expect_enriched(
        enricher(&env_for(&github, None, None))
            .enrich("e1", &sourced("Octo", "octocat", "", None))
            .await,
    );
    let g = enriched.github.unwrap();
    assert_eq!(g.description, "There once was...");
    assert_eq!(g.stars, 80);
    assert_eq!(
        g.provenance.unwrap().url,
        format!("{}/users/octocat", github.uri())
    );
    assert_eq!(requests_to(&github, "/users/octocat/repos").await, 1);
}
