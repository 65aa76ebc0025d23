//! `dealmesh-enrich redrive` as an operator runs it, the real binary against
//! the test broker: deals whose enrichment failed while GitHub was down are
//! enriched again once it is back, each exactly once; a refusal stays as it
//! was.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use dealmesh_eventlog::envelope::from_timestamp;
use dealmesh_eventlog::ids::caused_event_id;
use dealmesh_proto::{DealEvent, Payload};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer};

fn redrive(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dealmesh-enrich"))
        .arg("redrive")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .output()
        .expect("dealmesh-enrich runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// GitHub down: every request answers 503, except the repository of
/// `refused/`, which answers 401 (a refusal, not retryable).
async fn mount_github_down(github: &MockServer) {
    Mock::given(method("GET"))
        .and(path_regex(r"^/repos/refused/"))
        .respond_with(server_error(401))
        .with_priority(1)
        .mount(github)
        .await;
    Mock::given(method("GET"))
        .respond_with(server_error(503))
        .mount(github)
        .await;
}

/// The deal's enrichment outcomes on the log, in log order.
fn outcomes<'a>(events: &'a [DealEvent], deal_id: &str) -> Vec<&'a DealEvent> {
    enrichments(events)
        .into_iter()
        .filter(|e| e.deal_id == deal_id)
        .collect()
}

fn retryable(event: &DealEvent) -> bool {
    matches!(&event.payload, Some(Payload::EnrichmentFailed(f)) if f.retryable)
}

/// The id a re-driven outcome answering `failure` must have.
fn answer_id(failure: &DealEvent) -> String {
    let at = failure
        .occurred_at
        .as_ref()
        .and_then(from_timestamp)
        .expect("occurred_at");
    caused_event_id(at, &failure.event_id, "enrich-redrive").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_deals_are_enriched_again_once_the_provider_is_back() {
    let log = TestLog::create().await;
    let github = MockServer::start().await;
    mount_github_down(&github).await;
    let mut env = log.env();
    env.extend(env_for(&github, None, None));

    // GitHub is down while the deals come in.
    let down = vec![
        sourced_event(sourced("Redrive Alpha", "octocat", "Hello-World", None)),
        sourced_event(sourced("Redrive Beta", "octocat", "Hello-World", None)),
    ];
    let refused = sourced_event(sourced("Redrive Refused", "refused", "x", None));
    let service = TestEnrich::start(env.clone()).await;
    for event in down.iter().chain([&refused]) {
        log.publish(event).await;
    }
    let events = log
        .wait_for("three enrichment failures", |events| {
            enrichments(events).len() == 3
        })
        .await;
    service.stop().await;
    for deal in &down {
        let outcomes = outcomes(&events, &deal.deal_id);
        assert!(retryable(outcomes[0]), "{outcomes:?}");
    }
    assert!(!retryable(outcomes(&events, &refused.deal_id)[0]));

    // A dry run lists the two, and writes nothing.
    let out = redrive(&env, &["--dry-run"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("2 deals due"), "{stdout}");
    for deal in &down {
        assert!(
            stdout.contains(&format!("due {}", deal.deal_id)),
            "{stdout}"
        );
    }
    assert!(!stdout.contains(&refused.deal_id), "{stdout}");
    assert_eq!(log.events().await.len(), events.len());

    // Still down: both fail again, the run says so, and each new failure
    // answers the one before.
    let out = redrive(&env, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(75), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("0 enriched, 2 failed again"), "{stdout}");
    let events = log.events().await;
    for deal in &down {
        let outcomes = outcomes(&events, &deal.deal_id);
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert!(retryable(outcomes[1]));
        assert_eq!(outcomes[1].causation_id, outcomes[0].event_id);
        assert_eq!(outcomes[1].event_id, answer_id(outcomes[0]));
    }

    // GitHub is back: both are enriched, answering their latest failure.
    github.reset().await;
    mount_github(&github, Duration::ZERO).await;
    let out = redrive(&env, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("2 enriched, 0 failed again"), "{stdout}");
    let events = log.events().await;
    for deal in &down {
        let outcomes = outcomes(&events, &deal.deal_id);
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
        let Some(Payload::DealEnriched(enriched)) = &outcomes[2].payload else {
            panic!("expected DealEnriched, got {:?}", outcomes[2]);
        };
        assert!(enriched.github.is_some(), "{enriched:?}");
        assert_eq!(outcomes[2].causation_id, outcomes[1].event_id);
        assert_eq!(outcomes[2].event_id, answer_id(outcomes[1]));
        assert_eq!(outcomes[2].correlation_id, deal.correlation_id);
    }
    assert_eq!(outcomes(&events, &refused.deal_id).len(), 1);

    // Nothing is due any more: a second run appends nothing.
    let out = redrive(&env, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("0 deals due"), "{stdout}");
    assert_eq!(log.events().await.len(), events.len());

    // The same with a window, as a scheduled run gives it: nothing due.
    let out = redrive(&env, &["--since", "1h"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("0 deals due"), "{stdout}");

    // A bad --from or --since is refused before anything is read.
    let out = redrive(&env, &["--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--from \"yesterday\""));
    let out = redrive(&env, &["--since", "a while"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--since \"a while\""));
}
