//! The pollers as operators run them: the `poll` command, and `serve` with
//! a poller enabled.

use std::process::Command;
use std::time::{Duration, Instant};

use dealmesh_ingest::app::App;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{GITHUB_TOKEN, Harness, fixture};

async fn github() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/search/repositories"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("github/search-repositories.json"))
                .insert_header("ETag", "\"fixture-etag\""),
        )
        .mount(&server)
        .await;
    server
}

fn poll(h: &Harness, provider: &str, extra: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dealmesh-ingest"))
        .args(["poll", provider])
        .env_clear()
        .envs(h.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .env("DEALMESH_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_poll_command_runs_each_search_once_and_reports_it() {
    let h = Harness::start().await;
    let server = github().await;
    let uri = server.uri();
    let env = [
        ("DEALMESH_INGEST_GITHUB_API_URL", uri.as_str()),
        ("DEALMESH_INGEST_GITHUB_TOKEN", GITHUB_TOKEN),
        (
            "DEALMESH_INGEST_GITHUB_SEARCHES",
            "language:assembly tetris",
        ),
    ];
    let output = poll(&h, "github", &env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "github \"language:assembly tetris\": 1 page(s), 1 seen, 1 new, 0 already known, 0 skipped"
    );
    let sourced = h.sourced().await;
    assert_eq!(sourced.len(), 1);
    assert_eq!(sourced[0].0.idempotency_key, "github:repo:3081286");

    // The command kept the ETag: a second run is a free 304.
    server.reset().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::header(
            "If-None-Match",
            "\"fixture-etag\"",
        ))
        .respond_with(ResponseTemplate::new(304))
        .expect(1)
        .mount(&server)
        .await;
    let output = poll(&h, "github", &env);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "github \"language:assembly tetris\": not modified"
    );
    assert_eq!(h.sourced().await.len(), 1);
    // The token never reaches the output.
    assert!(!String::from_utf8_lossy(&output.stderr).contains(GITHUB_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_poll_command_names_what_is_missing_or_failed() {
    let h = Harness::start().await;
    let output = poll(&h, "crunchbase", &[]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("DEALMESH_INGEST_CRUNCHBASE_SEARCHES"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid user_key"})),
        )
        .mount(&server)
        .await;
    let uri = server.uri();
    let output = poll(
        &h,
        "crunchbase",
        &[
            ("DEALMESH_INGEST_CRUNCHBASE_API_URL", uri.as_str()),
            (
                "DEALMESH_INGEST_CRUNCHBASE_USER_KEY",
                "wrong-key-0123456789",
            ),
            (
                "DEALMESH_INGEST_CRUNCHBASE_SEARCHES",
                r#"{"all": {"field_ids": ["identifier"]}}"#,
            ),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("crunchbase \"all\": failed:")
            && stdout.contains("HTTP 401: Invalid user_key"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_an_enabled_poller_and_stops_it_on_shutdown() {
    let h = Harness::start().await;
    let server = github().await;
    let uri = server.uri();
    let config = h.config(&[
        ("DEALMESH_INGEST_GRPC_ADDR", "127.0.0.1:0"),
        ("DEALMESH_INGEST_HTTP_ADDR", "127.0.0.1:0"),
        ("DEALMESH_INGEST_ADMIN_ADDR", "127.0.0.1:0"),
        ("DEALMESH_INGEST_GITHUB_ENABLED", "true"),
        ("DEALMESH_INGEST_GITHUB_API_URL", uri.as_str()),
        (
            "DEALMESH_INGEST_GITHUB_SEARCHES",
            "language:assembly tetris",
        ),
        ("DEALMESH_INGEST_GITHUB_INTERVAL", "1h"),
    ]);
    let app = App::build(config).await.unwrap();
    let admin = app.admin_addr;
    let shutdown = dealmesh_runtime::shutdown::CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));

    // The first pass runs at start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while h
        .state
        .get("github", "language:assembly tetris")
        .await
        .unwrap()
        .and_then(|s| s.last_success_at)
        .is_none()
    {
        assert!(Instant::now() < deadline, "the poller did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sourced = h.sourced().await;
    assert_eq!(sourced.len(), 1);
    assert_eq!(sourced[0].1.source, "github");

    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"ingest_poller_requests_total{provider="github",status="200"} 1"#,
        r#"ingest_poller_deals_total{provider="github",outcome="emitted"} 1"#,
        r#"ingest_poller_runs_total{provider="github",result="ok"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }

    // Waiting out its hour does not hold up the shutdown.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_an_enabled_poller_without_searches() {
    let output = Command::new(env!("CARGO_BIN_EXE_dealmesh-ingest"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/unused")
        .env("DEALMESH_INGEST_GITHUB_ENABLED", "true")
        .env("DEALMESH_LOG", "warn")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DEALMESH_INGEST_GITHUB_SEARCHES")
            && stderr.contains("required when DEALMESH_INGEST_GITHUB_ENABLED is true"),
        "{stderr}"
    );
}
