//! The crash test: the real binary is SIGKILLed while a webhook receiver is
//! holding its request, then started again. The notification must arrive
//! exactly once per delivery id: resent after the restart (it was never
//! marked delivered), never duplicated under a new id, never lost.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use dealmesh_testkit::TestDatabase;
use tokio::process::{Child, Command};

fn spawn_notify(env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dealmesh-notify"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DEALMESH_LOG", "warn")
        .env("DEALMESH_LOG_FORMAT", "text")
        .kill_on_drop(true)
        .spawn()
        .expect("the notify binary starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_while_the_receiver_holds_the_request_delivers_exactly_once_per_id() {
    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let db = TestDatabase::create().await;

    // The receiver holds the first request until the service is dead, then
    // answers everything with 200.
    let released = Arc::new(AtomicBool::new(false));
    let receiver = {
        let released = released.clone();
        Receiver::start(Arc::new(move |n| {
            if n == 0 && !released.load(Ordering::SeqCst) {
                Answer::Hang
            } else {
                Answer::Status(200)
            }
        }))
        .await
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subscriptions.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[subscription]]
name = "crash-test"
subscriber = "alice"
role = "partner"
triggers = ["deal_sourced"]
webhook_url = "{}"
webhook_secret = "crash-test-secret-0123456789"
"#,
            receiver.url
        ),
    )
    .unwrap();
    let mut env = test_env(&db, &bootstrap, &prefix).await;
    env.push((
        "DEALMESH_NOTIFY_SUBSCRIPTIONS_FILE".into(),
        file.display().to_string(),
    ));
    // The lease after which a claimed delivery is retried is timeout + 5s.
    env.push(("DEALMESH_NOTIFY_WEBHOOK_TIMEOUT".into(), "2s".into()));

    let mut first = spawn_notify(&env);
    let kafka = dealmesh_eventlog::KafkaSettings::from_source(
        &dealmesh_runtime::config::MapSource::new(env.clone()),
    )
    .unwrap();
    let topics = dealmesh_eventlog::Topics::new(&prefix);
    // The service provisions the topics as it starts; wait for them.
    wait_for("the deal log exists", || {
        let bootstrap = bootstrap.clone();
        let deals = topics.deals.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .create()
                    .unwrap();
                consumer
                    .fetch_metadata(Some(&deals), std::time::Duration::from_secs(5))
                    .map(|m| {
                        m.topics()
                            .first()
                            .is_some_and(|t| !t.partitions().is_empty())
                    })
                    .unwrap_or(false)
            })
            .await
            .unwrap()
        }
    })
    .await;
    let producer = dealmesh_eventlog::EventProducer::new(&kafka, topics.clone(), "/test").unwrap();
    let deal = new_deal_id();
    let event = sourced(&deal, "Crashco");
    producer.publish(&event).await.unwrap();

    // The service received the event and the receiver holds its request.
    receiver.wait_for_count(1).await;
    first.start_kill().expect("SIGKILL");
    let status = first.wait().await.unwrap();
    assert!(!status.success(), "the first service was killed: {status}");
    released.store(true, Ordering::SeqCst);

    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM deliveries")
            .fetch_one(&db.pool)
            .await
            .expect("the delivery was in the log before the send");
    assert_eq!(
        (state.as_str(), attempts),
        ("pending", 1),
        "claimed, sent, not marked"
    );

    let mut second = spawn_notify(&env);
    receiver.wait_for_count(2).await;
    wait_for("the delivery marked delivered", || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM deliveries")
                .fetch_one(&pool)
                .await
                .is_ok_and(|s| s == "delivered")
        }
    })
    .await;

    // A later event goes through after the restart: when it has arrived,
    // everything caused by the first event has been sent.
    let sentinel = sourced(&new_deal_id(), "Afterco");
    producer.publish(&sentinel).await.unwrap();
    let got = receiver.wait_for_count(3).await;
    wait_for("both deliveries marked", || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 2)
        }
    })
    .await;
    second.start_kill().unwrap();
    let _ = second.wait().await;

    let ids: Vec<String> = got
        .iter()
        .map(|r| r.header("x-dealmesh-delivery-id"))
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    let for_first_event = got
        .iter()
        .filter(|r| r.json()["event_id"] == event.event_id)
        .count();
    eprintln!(
        "receiver: {} raw POSTs, {} distinct delivery ids; {} POSTs for the event in flight at the kill",
        got.len(),
        distinct.len(),
        for_first_event
    );
    assert_eq!(
        distinct.len(),
        2,
        "one delivery id per notification: {ids:?}"
    );
    assert_eq!(
        for_first_event, 2,
        "the request cut short by the kill, and its resend after the restart"
    );
    assert_eq!(ids[0], ids[1], "the resend carries the same delivery id");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "one delivery per notification in the log");
}
