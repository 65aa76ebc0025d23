//! GitHub repository searches: pagination, conditional requests, rate
//! limits, retries, rejected queries, malformed answers and restarts.

use std::time::Duration;

use dealmesh_ingest::pollers::github::{API_VERSION, POLLER};
use dealmesh_ingest::pollers::{Error, SearchReport, SearchRun};
use dealmesh_proto::v1::Channel;
use dealmesh_runtime::shutdown::CancellationToken;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

use crate::support::{GITHUB_TOKEN, Harness, deal_id, fixture};

const QUERY: &str = "topic:llm stars:>500";
const ETAG: &str = "W/\"6f1e0c6d4a1b2f9e\"";

/// The fixture repository with another identity.
fn repo(id: u64, owner: &str, name: &str, homepage: Option<&str>) -> Value {
    let mut item = fixture("github/search-repositories.json")["items"][0].clone();
    item["id"] = json!(id);
    item["name"] = json!(name);
    item["full_name"] = json!(format!("{owner}/{name}"));
    item["owner"]["login"] = json!(owner);
    item["owner"]["type"] = json!("Organization");
    item["html_url"] = json!(format!("https://github.com/{owner}/{name}"));
    item["homepage"] = json!(homepage);
    item["stargazers_count"] = json!(id % 10_000);
    item["topics"] = json!(["llm", "inference"]);
    item
}

fn page(items: Vec<Value>) -> Value {
    json!({"total_count": items.len(), "incomplete_results": false, "items": items})
}

/// A 200 the way GitHub sends it.
fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(body)
        .insert_header("X-RateLimit-Limit", "30")
        .insert_header("X-RateLimit-Remaining", "29")
        .insert_header("X-RateLimit-Reset", "1800000060")
        .insert_header("X-RateLimit-Resource", "search")
}

fn next(server: &MockServer, page: u32) -> String {
    format!(
        "<{}/search/repositories?q=topic%3Allm+stars%3A%3E500&per_page=100&page={page}>; rel=\"next\", <{}/search/repositories?q=topic%3Allm+stars%3A%3E500&per_page=100&page=9>; rel=\"last\"",
        server.uri(),
        server.uri()
    )
}

fn first_page() -> MockBuilder {
    Mock::given(method("GET"))
        .and(path("/search/repositories"))
        .and(query_param("q", QUERY))
        .and(query_param("sort", "updated"))
        .and(query_param("order", "desc"))
        .and(query_param_is_missing("page"))
}

fn page_n(n: u32) -> MockBuilder {
    Mock::given(method("GET"))
        .and(path("/search/repositories"))
        .and(query_param("page", n.to_string()))
}

fn only(mut reports: Vec<SearchReport>) -> SearchReport {
    assert_eq!(reports.len(), 1, "{reports:?}");
    reports.remove(0)
}

fn run(report: SearchReport) -> SearchRun {
    match report.outcome {
        Ok(run) if report.disabled.is_none() => run,
        other => panic!("search failed: {other:?} (disabled: {:?})", report.disabled),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_followed_and_a_second_unchanged_run_emits_nothing() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    // The first repository is the fixture as GitHub documents it: its
    // homepage is github.com, which is no company website.
    let tetris = fixture("github/search-repositories.json")["items"][0].clone();
    first_page()
        .and(header("If-None-Match", ETAG))
        .respond_with(ResponseTemplate::new(304).insert_header("ETag", ETAG))
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    first_page()
        .respond_with(
            ok(page(vec![
                tetris,
                repo(11, "acme-ai", "acme-llm", Some("https://www.acme.ai/docs")),
            ]))
            .insert_header("ETag", ETAG)
            .insert_header("Link", next(&server, 2)),
        )
        .expect(1)
        .mount(&server)
        .await;
    page_n(2)
        .respond_with(ok(page(vec![repo(12, "ferrous", "ferrous-agent", None)])))
        .expect(1)
        .mount(&server)
        .await;

    let poller = h.github(&server.uri(), &[]);
    let cancel = CancellationToken::new();
    let first = run(only(poller.poll(&cancel).await));
    assert_eq!(
        (first.pages, first.seen, first.emitted),
        (2, 3, 3),
        "{first:?}"
    );

    let sourced = h.sourced().await;
    assert_eq!(sourced.len(), 3);
    let by_key = |key: &str| {
        sourced
            .iter()
            .find(|(e, _)| e.idempotency_key == key)
            .unwrap_or_else(|| panic!("no event for {key}: {sourced:?}"))
    };
    let (event, tetris) = by_key("github:repo:3081286");
    assert_eq!(tetris.source, "github");
    assert_eq!(tetris.channel, Channel::Poller as i32);
    assert_eq!(tetris.external_id, "3081286");
    assert_eq!(tetris.name, "Tetris");
    assert_eq!(
        tetris.website, "",
        "github.com is not the company's website"
    );
    assert_eq!(
        (tetris.github_owner.as_str(), tetris.github_repo.as_str()),
        ("dtrupenn", "Tetris")
    );
    assert_eq!(tetris.source_url, "https://github.com/dtrupenn/Tetris");
    assert_eq!(
        tetris.description,
        "A C implementation of Tetris using Pennsim through LC4"
    );
    assert_eq!(tetris.attributes["language"], "Assembly");
    assert_eq!(tetris.attributes["stars"], "1");
    assert_eq!(tetris.attributes["license"], "MIT");
    assert_eq!(tetris.attributes["owner_type"], "User");
    assert_eq!(event.deal_id, deal_id(None, Some("dtrupenn"), "Tetris"));

    let (event, acme) = by_key("github:repo:11");
    assert_eq!(acme.website, "https://www.acme.ai/docs");
    assert_eq!(acme.attributes["topics"], "llm,inference");
    assert_eq!(event.deal_id, deal_id(Some("acme.ai"), None, "acme-llm"));
    let (event, _) = by_key("github:repo:12");
    assert_eq!(
        event.deal_id,
        deal_id(None, Some("ferrous"), "ferrous-agent")
    );

    // Every request identified itself and carried the token.
    for request in server.received_requests().await.unwrap() {
        let h = &request.headers;
        assert_eq!(
            h["authorization"],
            format!("Bearer {GITHUB_TOKEN}").as_str()
        );
        assert_eq!(h["accept"], "application/vnd.github+json");
        assert_eq!(h["x-github-api-version"], API_VERSION);
        assert!(
            h["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("dealmesh-ingest/")
        );
    }

    let second = run(only(poller.poll(&cancel).await));
    assert!(second.not_modified, "{second:?}");
    assert_eq!((second.pages, second.emitted), (0, 0));
    assert_eq!(h.sourced().await.len(), 3, "a 304 emits nothing");
    let state = h.state_of(POLLER, QUERY).await;
    assert_eq!(state.etag.as_deref(), Some(ETAG));
    assert_eq!(state.cursor, None);
    assert_eq!(state.emitted, 3);
    assert!(state.last_error.is_none());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_rate_limit_waits_until_the_reset() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    // The virtual clock starts at 1_800_000_000: the reset is 120 s away.
    first_page()
        .respond_with(
            ok(page(vec![repo(21, "alpha", "a", None)]))
                .insert_header("X-RateLimit-Remaining", "0")
                .insert_header("X-RateLimit-Reset", "1800000120")
                .insert_header("Link", next(&server, 2)),
        )
        .expect(1)
        .mount(&server)
        .await;
    page_n(2)
        .respond_with(ok(page(vec![repo(22, "beta", "b", None)])))
        .expect(1)
        .mount(&server)
        .await;

    let result = run(only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    ));
    assert_eq!(result.emitted, 2);
    assert_eq!(h.clock.waits(), [Duration::from_secs(120)]);
    assert_eq!(h.sourced().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_rate_limit_is_retried_after_retry_after() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("Retry-After", "30")
                .insert_header("X-RateLimit-Remaining", "12")
                .set_body_json(json!({
                    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
                })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    first_page()
        .respond_with(ok(page(vec![repo(31, "gamma", "g", None)])))
        .mount(&server)
        .await;

    let result = run(only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    ));
    assert_eq!(result.emitted, 1);
    assert_eq!(h.clock.waits(), [Duration::from_secs(30)]);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_and_server_errors_are_retried_with_backoff_then_succeed() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ResponseTemplate::new(202))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    first_page()
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    first_page()
        .respond_with(ok(page(vec![repo(41, "delta", "d", None)])))
        .mount(&server)
        .await;

    let result = run(only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    ));
    assert_eq!(result.emitted, 1);
    let waits = h.clock.waits();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(
        waits[0] >= Duration::from_millis(500) && waits[0] <= Duration::from_secs(1),
        "{waits:?}"
    );
    assert!(
        waits[1] >= Duration::from_secs(1) && waits[1] <= Duration::from_secs(2),
        "{waits:?}"
    );
    assert_eq!(h.sourced().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_server_errors_end_the_run_with_the_error_recorded_and_the_next_run_recovers() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    let outage = first_page()
        .respond_with(ResponseTemplate::new(503))
        .expect(3)
        .mount_as_scoped(&server)
        .await;
    let poller = h.github(
        &server.uri(),
        &[("DEALMESH_INGEST_POLLER_MAX_ATTEMPTS", "3")],
    );
    let report = only(poller.poll(&CancellationToken::new()).await);
    match &report.outcome {
        Err(Error::GaveUp {
            attempts: 3, last, ..
        }) => assert_eq!(last, "HTTP 503"),
        other => panic!("expected GaveUp, got {other:?}"),
    }
    let state = h.state_of(POLLER, QUERY).await;
    assert!(
        state.last_error.as_deref().unwrap().contains("HTTP 503"),
        "{state:?}"
    );
    assert!(state.disabled_reason.is_none());
    drop(outage);

    first_page()
        .respond_with(ok(page(vec![repo(51, "epsilon", "e", None)])))
        .mount(&server)
        .await;
    let result = run(only(poller.poll(&CancellationToken::new()).await));
    assert_eq!(result.emitted, 1);
    assert!(h.state_of(POLLER, QUERY).await.last_error.is_none());
    assert_eq!(h.sourced().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_github_rejects_disables_the_search_until_it_changes() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "message": "Validation Failed",
            "errors": [{"message": "The listed users and repositories cannot be searched either because the resources do not exist or you do not have permission to view them.", "resource": "Search", "field": "q", "code": "invalid"}],
            "documentation_url": "https://docs.github.com/v3/search/"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let poller = h.github(&server.uri(), &[]);
    let report = only(poller.poll(&CancellationToken::new()).await);
    assert!(
        matches!(&report.outcome, Err(Error::InvalidSearch { status: 422, message, .. }) if message.starts_with("Validation Failed")),
        "{report:?}"
    );
    let reason = h
        .state_of(POLLER, QUERY)
        .await
        .disabled_reason
        .expect("disabled");
    assert!(reason.contains("Validation Failed"), "{reason}");

    // The next runs do not ask again (the mock expects exactly one call).
    for _ in 0..3 {
        let report = only(poller.poll(&CancellationToken::new()).await);
        assert_eq!(report.disabled.as_deref(), Some(reason.as_str()));
    }
    server.verify().await;

    // A changed definition of the same query (here: page size) is tried.
    first_page()
        .respond_with(ok(page(vec![repo(61, "zeta", "z", None)])))
        .with_priority(1)
        .mount(&server)
        .await;
    let changed = h.github(&server.uri(), &[("DEALMESH_INGEST_GITHUB_PER_PAGE", "50")]);
    let result = run(only(changed.poll(&CancellationToken::new()).await));
    assert_eq!(result.emitted, 1);
    assert!(h.state_of(POLLER, QUERY).await.disabled_reason.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_page_is_a_recorded_error_and_an_odd_item_is_skipped() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    let truncated = first_page()
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"total_count": 40, "incomplete_results": false, "items": [{"id": 1"#,
            "application/json",
        ))
        .expect(1)
        .mount_as_scoped(&server)
        .await;
    let poller = h.github(&server.uri(), &[]);
    let report = only(poller.poll(&CancellationToken::new()).await);
    assert!(
        matches!(report.outcome, Err(Error::Malformed { .. })),
        "{report:?}"
    );
    let error = h.state_of(POLLER, QUERY).await.last_error.unwrap();
    assert!(error.contains("malformed response"), "{error}");
    drop(truncated);

    // One item without an id among good ones: that one is skipped.
    let mut odd = repo(71, "eta", "odd", None);
    odd.as_object_mut().unwrap().remove("id");
    first_page()
        .respond_with(ok(page(vec![odd, repo(72, "theta", "fine", None)])))
        .mount(&server)
        .await;
    let result = run(only(poller.poll(&CancellationToken::new()).await));
    assert_eq!((result.seen, result.emitted, result.skipped), (2, 1, 1));
    let sourced = h.sourced().await;
    assert_eq!(sourced.len(), 1);
    assert_eq!(sourced[0].0.idempotency_key, "github:repo:72");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_poller_resumes_after_the_last_page_it_emitted() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ok(page(vec![repo(81, "iota", "i", None)]))
                .insert_header("ETag", ETAG)
                .insert_header("Link", next(&server, 2)),
        )
        .expect(1)
        .mount(&server)
        .await;
    page_n(2)
        .respond_with(
            ok(page(vec![repo(82, "kappa", "k", None)])).insert_header("Link", next(&server, 3)),
        )
        .expect(1)
        .mount(&server)
        .await;
    page_n(3)
        .respond_with(ok(page(vec![repo(83, "lambda", "l", None)])))
        .expect(1)
        .mount(&server)
        .await;
    let one_page = [("DEALMESH_INGEST_GITHUB_MAX_PAGES", "1")];

    let before = run(only(
        h.github(&server.uri(), &one_page)
            .poll(&CancellationToken::new())
            .await,
    ));
    assert!(before.more);
    let cursor = h.state_of(POLLER, QUERY).await.cursor.expect("a cursor");
    assert!(cursor.ends_with("page=2"), "{cursor}");

    // A new poller, as after a restart: pages 2 and 3, never page 1 again.
    let restarted = h.github(&server.uri(), &one_page);
    let second = run(only(restarted.poll(&CancellationToken::new()).await));
    let third = run(only(restarted.poll(&CancellationToken::new()).await));
    assert_eq!((second.emitted, third.emitted, third.more), (1, 1, false));
    assert_eq!(h.state_of(POLLER, QUERY).await.cursor, None);
    let keys: Vec<String> = h
        .sourced()
        .await
        .into_iter()
        .map(|(e, _)| e.idempotency_key)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["github:repo:81", "github:repo:82", "github:repo:83"]
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_is_retried_and_then_reported() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ok(page(vec![])).set_delay(Duration::from_secs(10)))
        .expect(2)
        .mount(&server)
        .await;
    let poller = h.github(
        &server.uri(),
        &[
            ("DEALMESH_INGEST_POLLER_HTTP_TIMEOUT", "200ms"),
            ("DEALMESH_INGEST_POLLER_MAX_ATTEMPTS", "2"),
        ],
    );
    let report = only(poller.poll(&CancellationToken::new()).await);
    match &report.outcome {
        Err(Error::GaveUp {
            attempts: 2, last, ..
        }) => assert_eq!(last, "timed out"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        h.state_of(POLLER, QUERY)
            .await
            .last_error
            .unwrap()
            .contains("timed out")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_url_is_a_clear_error_without_retries() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "message": "Not Found",
            "documentation_url": "https://docs.github.com/rest"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let report = only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    );
    assert!(
        matches!(&report.outcome, Err(Error::Status { status: 404, message, .. }) if message == "Not Found"),
        "{report:?}"
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_interrupts_a_rate_limit_wait() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "600"))
        .mount(&server)
        .await;
    // The real clock: the poller would sleep ten minutes.
    let poller = h.github_with_clock(
        &server.uri(),
        &[],
        std::sync::Arc::new(dealmesh_ingest::pollers::SystemClock::default()),
    );
    let cancel = CancellationToken::new();
    let polling = tokio::spawn({
        let cancel = cancel.clone();
        async move { poller.poll(&cancel).await }
    });
    while server.received_requests().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let reports = tokio::time::timeout(Duration::from_secs(10), polling)
        .await
        .expect("the poller stops on shutdown instead of sleeping")
        .unwrap();
    let report = only(reports);
    assert!(
        matches!(report.outcome, Err(Error::Cancelled)),
        "{report:?}"
    );
    // A shutdown is not recorded as the search's failure.
    assert!(h.state_of(POLLER, QUERY).await.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_another_replica_is_polling_is_skipped() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ok(page(vec![repo(91, "mu", "m", None)])))
        .expect(1)
        .mount(&server)
        .await;
    let other_replica = h
        .state
        .try_claim(POLLER, QUERY)
        .await
        .unwrap()
        .expect("free");
    let poller = h.github(&server.uri(), &[]);
    let report = only(poller.poll(&CancellationToken::new()).await);
    assert!(report.busy, "{report:?}");
    assert!(server.received_requests().await.unwrap().is_empty());

    other_replica.release().await;
    let result = run(only(poller.poll(&CancellationToken::new()).await));
    assert_eq!(result.emitted, 1);
    // The claim is released after the run: the next one is not blocked.
    assert!(h.state.try_claim(POLLER, QUERY).await.unwrap().is_some());
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_link_to_another_host_is_refused_and_gets_no_token() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    first_page()
        .respond_with(ok(page(vec![repo(95, "nu", "n", None)])).insert_header(
            "Link",
            format!(
                "<{}/search/repositories?page=2>; rel=\"next\"",
                elsewhere.uri()
            ),
        ))
        .mount(&server)
        .await;
    let report = only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    );
    match &report.outcome {
        Err(Error::Malformed { message, .. }) => assert!(message.contains("leaves"), "{message}"),
        other => panic!("expected a refused link, got {other:?}"),
    }
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
    assert!(
        h.sourced().await.is_empty(),
        "a page with a bad link is not half-applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_rate_limit_without_retry_after_waits_a_minute() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "message": "You have exceeded a secondary rate limit and have been temporarily blocked from content creation. Please retry your request again later.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    first_page()
        .respond_with(ok(page(vec![repo(97, "xi", "x", None)])))
        .mount(&server)
        .await;
    let result = run(only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    ));
    assert_eq!(result.emitted, 1);
    assert_eq!(h.clock.waits(), [Duration::from_secs(60)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_token_is_a_clear_error_without_retries() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("X-RateLimit-Remaining", "4999")
                .set_body_json(json!({
                    "message": "Resource not accessible by personal access token",
                    "documentation_url": "https://docs.github.com/rest/search/search#search-repositories"
                })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let report = only(
        h.github(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    );
    assert!(
        matches!(&report.outcome, Err(Error::Status { status: 403, message, .. }) if message.starts_with("Resource not accessible")),
        "{report:?}"
    );
    assert!(h.clock.waits().is_empty());
    server.verify().await;
}
