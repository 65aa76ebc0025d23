//! Bad input never sticks the consumer: endpoints that answer garbage or
//! cannot be reached, oversize payloads and undecodable records each end as
//! a recorded failure while everything else keeps flowing.

mod common;

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::NotificationTrigger as T;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP server that answers every request with bytes that are not HTTP.
async fn garbage_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"\x00\x01SPLAT not http at all\r\n\r\n")
                    .await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/hook")
}

/// A URL nothing listens on.
fn unreachable_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_and_unreachable_endpoints_end_dead_while_others_keep_getting_theirs() {
    let notify = TestNotify::start_with(&[("DEALMESH_NOTIFY_MAX_ATTEMPTS", "2")]).await;
    let good = Receiver::ok().await;
    let (garbage_id, _) = subscribe(
        &notify,
        webhook_subscription(&garbage_endpoint().await, &[T::DealSourced]),
        "a",
        Role::Partner,
    )
    .await;
    let (unreachable_id, _) = subscribe(
        &notify,
        webhook_subscription(&unreachable_endpoint(), &[T::DealSourced]),
        "b",
        Role::Partner,
    )
    .await;
    subscribe(
        &notify,
        webhook_subscription(&good.url, &[T::DealSourced]),
        "c",
        Role::Partner,
    )
    .await;
    for i in 0..3 {
        notify
            .publish(&sourced(&new_deal_id(), &format!("Co{i}")))
            .await;
    }
    good.wait_for_count(3).await;
    wait_for("the bad endpoints' deliveries dead", || async {
        let all = [
            notify.deliveries(&garbage_id).await,
            notify.deliveries(&unreachable_id).await,
        ]
        .concat();
        all.len() == 6 && all.iter().all(|d| d.0 == "dead")
    })
    .await;
    for (_, attempts, error) in notify.deliveries(&garbage_id).await {
        let error = error.unwrap();
        assert_eq!(attempts, 2);
        assert!(error.starts_with("gave up after 2 attempts"), "{error}");
    }
    for (_, _, error) in notify.deliveries(&unreachable_id).await {
        let error = error.unwrap();
        assert!(error.contains("cannot connect"), "{error}");
    }
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversize_payload_is_a_recorded_failure_and_the_next_one_is_delivered() {
    let notify = TestNotify::start_with(&[("DEALMESH_NOTIFY_MAX_PAYLOAD_BYTES", "2048")]).await;
    let receiver = Receiver::ok().await;
    let (id, _) = subscribe(
        &notify,
        webhook_subscription(&receiver.url, &[T::NoteAdded]),
        "a",
        Role::Partner,
    )
    .await;
    let deal = new_deal_id();
    let huge = note_added(&deal, &"x".repeat(10_000));
    let small = note_added(&deal, "short");
    notify.publish(&huge).await;
    notify.publish(&small).await;
    let got = receiver.wait_for_count(1).await;
    assert_eq!(got[0].json()["event_id"], small.event_id);
    let deliveries = notify.deliveries(&id).await;
    assert_eq!(deliveries.len(), 2);
    let (status, attempts, error) = &deliveries[0];
    assert_eq!((status.as_str(), *attempts), ("dead", 0), "never sent");
    let error = error.clone().unwrap();
    assert!(error.contains("over the limit of 2048 bytes"), "{error}");
    assert_eq!(receiver.count(), 1);
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_record_is_dead_lettered_and_the_consumer_moves_on() {
    let notify = TestNotify::start().await;
    let receiver = Receiver::ok().await;
    subscribe(
        &notify,
        webhook_subscription(&receiver.url, &[T::DealSourced]),
        "a",
        Role::Partner,
    )
    .await;
    let deal = new_deal_id();
    notify
        .producer
        .send(
            &notify.topics.deals,
            Some(deal.as_bytes()),
            b"\xff\xfe this is not a deal event",
            rdkafka::message::OwnedHeaders::new(),
        )
        .await
        .unwrap();
    let after = sourced(&deal, "Nextco");
    notify.publish(&after).await;
    let got = receiver.wait_for_count(1).await;
    assert_eq!(got[0].json()["event_id"], after.event_id);
    let dead = dealmesh_testkit::read_topic(&notify.bootstrap, &notify.topics.dead_letter).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].headers.iter().any(|(k, _)| k == "dlq_error"));
    notify.stop().await;
}
