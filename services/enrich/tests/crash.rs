//! Exactly once without Kafka transactions: the real binary is killed with
//! SIGKILL in the middle of a batch and started again; after consumers drop
//! duplicate event ids, the log holds exactly one enrichment per sourced
//! deal.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use dealmesh_eventlog::envelope::from_timestamp;
use dealmesh_eventlog::ids::caused_event_id;
use dealmesh_proto::Payload;

const DEALS: usize = 30;

fn start_binary(env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dealmesh-enrich"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().cloned())
        .env("DEALMESH_LOG", "warn")
        .env("DEALMESH_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the enrich binary starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_service_restarts_into_exactly_one_enrichment_per_deal() {
    let log = TestLog::create().await;
    // Slow providers, low concurrency: the batch takes several seconds, so the
    // kill lands in the middle of it.
    let github = github_fake(Duration::from_millis(800)).await;
    let mut env = log.env();
    env.extend(env_for(&github, None, None));
    env.extend([
        ("DEALMESH_ENRICH_CONCURRENCY".into(), "3".into()),
        ("DEALMESH_ENRICH_COMMIT_INTERVAL".into(), "1s".into()),
        // A dead member is noticed quickly, so the restarted one gets the
        // partitions without waiting out the default session.
        ("KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into()),
        ("KAFKA_HEARTBEAT_INTERVAL_MS".into(), "1000".into()),
    ]);

    let mut sourced_events = Vec::new();
    for i in 0..DEALS {
        let event = sourced_event(sourced(
            &format!("Deal {i:02}"),
            "octocat",
            "Hello-World",
            None,
        ));
        log.publish(&event).await;
        sourced_events.push(event);
    }

    let mut first = start_binary(&env);
    let before_kill = log
        .wait_for("the first enrichments", |e| {
            enrichments(e).len() >= DEALS / 4
        })
        .await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let at_kill = enrichments(&log.events().await).len();
    assert!(
        at_kill < DEALS,
        "the kill came after the whole batch ({at_kill} of {DEALS}); nothing was tested"
    );
    drop(before_kill);

    let mut second = start_binary(&env);
    let wanted: BTreeSet<String> = sourced_events.iter().map(|e| e.event_id.clone()).collect();
    let events = log
        .wait_for("an enrichment for every deal", |events| {
            let answered: BTreeSet<String> = enrichments(events)
                .iter()
                .map(|e| e.causation_id.clone())
                .collect();
            wanted.is_subset(&answered)
        })
        .await;
    let stopped = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let status = second.wait().expect("the service exits");
    assert!(
        status.success(),
        "SIGTERM drains and exits cleanly: {status}"
    );

    // What a consumer sees after dropping event ids it has already applied.
    let raw = enrichments(&events);
    let mut distinct: BTreeMap<&str, &dealmesh_proto::DealEvent> = BTreeMap::new();
    for event in &raw {
        if let Some(first_seen) = distinct.get(event.event_id.as_str()) {
            assert_eq!(
                first_seen.causation_id, event.causation_id,
                "one event id, two different causes"
            );
        }
        distinct.entry(&event.event_id).or_insert(event);
    }
    let duplicates = raw.len() - distinct.len();
    eprintln!(
        "crash test: {DEALS} deals, {at_kill} enrichments before SIGKILL, {} raw enrichments, {} distinct, {duplicates} duplicates dropped",
        raw.len(),
        distinct.len()
    );
    assert_eq!(
        distinct.len(),
        DEALS,
        "exactly one enrichment per sourced deal"
    );
    for input in &sourced_events {
        let at = from_timestamp(input.occurred_at.as_ref().unwrap()).unwrap();
        let id = caused_event_id(at, &input.event_id, "enrich").to_string();
        let output = distinct
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no enrichment with the derived id for {}", input.event_id));
        assert!(
            matches!(output.payload, Some(Payload::DealEnriched(_))),
            "{output:#?}"
        );
    }
    assert!(raw.len() >= DEALS);
}
