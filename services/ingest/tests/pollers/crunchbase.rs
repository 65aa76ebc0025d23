//! Crunchbase organization searches: `after_id` paging, pacing under the
//! documented rate, 429 backoff, rejected searches, unknown enum values,
//! malformed answers and restarts.

use std::time::Duration;

use dealmesh_ingest::pollers::crunchbase::POLLER;
use dealmesh_ingest::pollers::{Error, SearchReport, SearchRun};
use dealmesh_proto::v1::Channel;
use dealmesh_runtime::shutdown::CancellationToken;
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockBuilder, MockServer, Request, ResponseTemplate};

use crate::support::{CRUNCHBASE_KEY, Harness, deal_id, fixture};

const SEARCH: &str = "seed-eu";
const LUMEN: &str = "7f0c2f0e-5a3b-4c1d-9e8f-2b6a1d4c3e51";
const FERROUS: &str = "3c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f";

/// The fixture's first organization with another identity.
fn org(uuid: &str, name: &str, permalink: &str, website: &str) -> Value {
    let mut entity = fixture("crunchbase/search-organizations.json")["entities"][0].clone();
    entity["uuid"] = json!(uuid);
    entity["properties"]["identifier"]["uuid"] = json!(uuid);
    entity["properties"]["identifier"]["value"] = json!(name);
    entity["properties"]["identifier"]["permalink"] = json!(permalink);
    entity["properties"]["website_url"] = json!(website);
    entity
}

fn results(entities: Vec<Value>) -> Value {
    json!({"count": entities.len(), "entities": entities})
}

fn search() -> MockBuilder {
    Mock::given(method("POST"))
        .and(path("/api/v4/searches/organizations"))
        .and(header("X-cb-user-key", CRUNCHBASE_KEY))
}

fn first_page() -> MockBuilder {
    search().and(|request: &Request| {
        serde_json::from_slice::<Value>(&request.body)
            .is_ok_and(|body| body.get("after_id").is_none())
    })
}

fn after(uuid: &str) -> MockBuilder {
    search().and(body_partial_json(json!({ "after_id": uuid })))
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
async fn pages_with_after_id_and_emits_each_organization_once() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    // The fixture is a full page (limit 2): the poller asks for the next.
    first_page()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("crunchbase/search-organizations.json")),
        )
        .mount(&server)
        .await;
    after(FERROUS)
        .respond_with(ResponseTemplate::new(200).set_body_json(results(vec![org(
            "0d4e5f60-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
            "Quill Health",
            "quill-health",
            "https://quill.health",
        )])))
        .mount(&server)
        .await;

    let poller = h.crunchbase(&server.uri(), &[]);
    let first = run(only(poller.poll(&CancellationToken::new()).await));
    assert_eq!(
        (first.pages, first.seen, first.emitted),
        (2, 3, 3),
        "{first:?}"
    );

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["limit"], 2);
    assert_eq!(body["field_ids"][0], "identifier");
    assert_eq!(body["query"][0]["field_id"], "last_funding_type");
    let body: Value = serde_json::from_slice(&requests[1].body).unwrap();
    assert_eq!(body["after_id"], FERROUS);

    let sourced = h.sourced().await;
    assert_eq!(sourced.len(), 3);
    let (event, lumen) = sourced
        .iter()
        .find(|(e, _)| e.idempotency_key == format!("crunchbase:org:{LUMEN}"))
        .expect("Lumen Grid sourced");
    assert_eq!(lumen.source, "crunchbase");
    assert_eq!(lumen.channel, Channel::Poller as i32);
    assert_eq!(lumen.external_id, LUMEN);
    assert_eq!(lumen.name, "Lumen Grid");
    assert_eq!(lumen.website, "https://www.lumengrid.io");
    assert_eq!(
        lumen.source_url,
        "https://www.crunchbase.com/organization/lumen-grid"
    );
    assert!(
        lumen
            .description
            .starts_with("Lumen Grid builds forecasting software")
    );
    assert_eq!(lumen.attributes["crunchbase_permalink"], "lumen-grid");
    assert_eq!(lumen.attributes["num_employees_enum"], "c_00011_00050");
    assert_eq!(lumen.attributes["num_employees"], "11-50");
    assert_eq!(lumen.attributes["funding_total_usd"], "8100000");
    assert_eq!(lumen.attributes["funding_total"], "7500000");
    assert_eq!(lumen.attributes["funding_total_currency"], "EUR");
    assert_eq!(lumen.attributes["last_funding_type"], "seed");
    assert_eq!(
        event.deal_id,
        deal_id(Some("lumengrid.io"), None, "Lumen Grid")
    );
    let (event, _) = sourced
        .iter()
        .find(|(_, s)| s.name == "Ferrous Labs")
        .expect("Ferrous Labs sourced");
    assert_eq!(
        event.deal_id,
        deal_id(Some("ferrouslabs.dev"), None, "Ferrous Labs")
    );

    // The next pass sees the same organizations: nothing new on the log.
    let second = run(only(poller.poll(&CancellationToken::new()).await));
    assert_eq!((second.seen, second.emitted, second.duplicates), (3, 0, 3));
    assert_eq!(h.sourced().await.len(), 3);
    let state = h.state_of(POLLER, SEARCH).await;
    assert_eq!((state.cursor, state.emitted), (None, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_paced_under_the_configured_rate() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    let one = |uuid: &str, name: &str| {
        ResponseTemplate::new(200).set_body_json(results(vec![org(
            uuid,
            name,
            name,
            &format!("https://{name}.com"),
        )]))
    };
    let searches = r#"{"seed-eu": {"field_ids": ["identifier"], "limit": 1}}"#;
    first_page()
        .respond_with(one("u-1", "one"))
        .mount(&server)
        .await;
    after("u-1")
        .respond_with(one("u-2", "two"))
        .mount(&server)
        .await;
    after("u-2")
        .respond_with(one("u-3", "three"))
        .mount(&server)
        .await;
    after("u-3")
        .respond_with(ResponseTemplate::new(200).set_body_json(results(vec![])))
        .mount(&server)
        .await;

    let poller = h.crunchbase(
        &server.uri(),
        &[
            ("DEALMESH_INGEST_CRUNCHBASE_SEARCHES", searches),
            ("DEALMESH_INGEST_CRUNCHBASE_CALLS_PER_MINUTE", "60"),
        ],
    );
    let result = run(only(poller.poll(&CancellationToken::new()).await));
    assert_eq!((result.pages, result.emitted), (4, 3));
    // 60 a minute: the first call goes at once, each later one a second
    // after the one before.
    let waits = h.clock.waits();
    assert_eq!(waits.len(), 3, "{waits:?}");
    for wait in waits {
        assert!(
            wait >= Duration::from_millis(990) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_backs_off_and_retries() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(json!([{"code": "LA400", "message": "Rate limit exceeded"}])),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    first_page()
        .respond_with(ResponseTemplate::new(200).set_body_json(results(vec![org(
            LUMEN,
            "Lumen Grid",
            "lumen-grid",
            "https://www.lumengrid.io",
        )])))
        .mount(&server)
        .await;
    let result = run(only(
        h.crunchbase(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    ));
    assert_eq!(result.emitted, 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    // Two backoffs (0.5-1 s, then 1-2 s), plus the pacer's 1/3 s between
    // calls at the default 180 a minute.
    let total = h.clock.total();
    assert!(
        total >= Duration::from_millis(1500),
        "{:?}",
        h.clock.waits()
    );
    assert_eq!(h.sourced().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_crunchbase_rejects_is_disabled() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!([{"code": "MD100", "message": "Unsupported field_id last_funding_typ"}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let poller = h.crunchbase(&server.uri(), &[]);
    let report = only(poller.poll(&CancellationToken::new()).await);
    assert!(
        matches!(&report.outcome, Err(Error::InvalidSearch { status: 400, message, .. }) if message == "Unsupported field_id last_funding_typ"),
        "{report:?}"
    );
    let again = only(poller.poll(&CancellationToken::new()).await);
    assert!(again.disabled.unwrap().contains("Unsupported field_id"));
    server.verify().await;
    assert!(h.sourced().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_enum_values_are_kept_verbatim() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    let mut odd = org(
        LUMEN,
        "Lumen Grid",
        "lumen-grid",
        "https://www.lumengrid.io",
    );
    odd["properties"]["num_employees_enum"] = json!("c_50001_max");
    odd["properties"]["last_funding_type"] = json!("series_z_plus");
    odd["properties"]["operating_status"] = json!({"value": "hibernating"});
    first_page()
        .respond_with(ResponseTemplate::new(200).set_body_json(results(vec![odd])))
        .mount(&server)
        .await;
    let result = run(only(
        h.crunchbase(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    ));
    assert_eq!(result.emitted, 1);
    let sourced = h.sourced().await;
    let attributes = &sourced[0].1.attributes;
    assert_eq!(attributes["num_employees_enum"], "c_50001_max");
    assert!(
        !attributes.contains_key("num_employees"),
        "no range for an unknown code"
    );
    assert_eq!(attributes["last_funding_type"], "series_z_plus");
    assert_eq!(attributes["operating_status"], "hibernating");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_answer_is_a_recorded_error() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"count": 2, "entities": "soon"})),
        )
        .mount(&server)
        .await;
    let report = only(
        h.crunchbase(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    );
    assert!(
        matches!(report.outcome, Err(Error::Malformed { .. })),
        "{report:?}"
    );
    let error = h.state_of(POLLER, SEARCH).await.last_error.unwrap();
    assert!(
        error.contains("not an organization search result"),
        "{error}"
    );
    assert!(h.sourced().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_user_key_is_a_clear_error_without_retries() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid user_key"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let report = only(
        h.crunchbase(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    );
    assert!(
        matches!(&report.outcome, Err(Error::Status { status: 401, message, .. }) if message == "Invalid user_key"),
        "{report:?}"
    );
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_past_the_attempt_limit_keep_the_cursor_for_the_next_run() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("crunchbase/search-organizations.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let outage = after(FERROUS)
        .respond_with(ResponseTemplate::new(500))
        .expect(2)
        .mount_as_scoped(&server)
        .await;
    let poller = h.crunchbase(
        &server.uri(),
        &[("DEALMESH_INGEST_POLLER_MAX_ATTEMPTS", "2")],
    );
    let report = only(poller.poll(&CancellationToken::new()).await);
    assert!(
        matches!(report.outcome, Err(Error::GaveUp { attempts: 2, .. })),
        "{report:?}"
    );
    let state = h.state_of(POLLER, SEARCH).await;
    assert_eq!(state.cursor.as_deref(), Some(FERROUS));
    assert!(state.last_error.unwrap().contains("HTTP 500"));
    assert_eq!(h.sourced().await.len(), 2, "the first page is on the log");
    drop(outage);

    // A new poller (a restart) resumes at the page that failed.
    after(FERROUS)
        .respond_with(ResponseTemplate::new(200).set_body_json(results(vec![org(
            "0d4e5f60-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
            "Quill Health",
            "quill-health",
            "https://quill.health",
        )])))
        .expect(1)
        .mount(&server)
        .await;
    let restarted = h.crunchbase(
        &server.uri(),
        &[("DEALMESH_INGEST_POLLER_MAX_ATTEMPTS", "2")],
    );
    let result = run(only(restarted.poll(&CancellationToken::new()).await));
    assert_eq!((result.pages, result.emitted), (1, 1));
    assert_eq!(h.sourced().await.len(), 3);
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_is_retried_and_then_reported() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    first_page()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(results(vec![]))
                .set_delay(Duration::from_secs(10)),
        )
        .expect(2)
        .mount(&server)
        .await;
    let poller = h.crunchbase(
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
    let error = h.state_of(POLLER, SEARCH).await.last_error.unwrap();
    assert!(error.contains("timed out"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_that_does_not_advance_is_an_error_not_a_loop() {
    let h = Harness::start().await;
    let server = MockServer::start().await;
    // Whatever after_id is sent, the same full page comes back.
    search()
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("crunchbase/search-organizations.json")),
        )
        .mount(&server)
        .await;
    let report = only(
        h.crunchbase(&server.uri(), &[])
            .poll(&CancellationToken::new())
            .await,
    );
    match &report.outcome {
        Err(Error::Malformed { message, .. }) => assert!(message.contains("again"), "{message}"),
        other => panic!("expected a refused page, got {other:?}"),
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    assert_eq!(
        h.sourced().await.len(),
        2,
        "the organizations are emitted once"
    );
}
