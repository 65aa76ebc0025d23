//! Webhooks end to end: the deal log in, signed POSTs out, once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dealmesh_auth::Role;
use dealmesh_notify::signature;
use dealmesh_proto::v1::{self as pb, NotificationTrigger as T};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_high_score_in_a_partners_sector_arrives_signed_once() {
    let notify = TestNotify::start().await;
    let receiver = Receiver::ok().await;
    let mut subscription = webhook_subscription(&receiver.url, &[T::DealScored]);
    subscription.filter = Some(pb::NotificationFilter {
        min_score: Some(80.0),
        sectors: vec!["FinTech".into()],
        ..Default::default()
    });
    let (id, secret) = subscribe(&notify, subscription, "alice", Role::Partner).await;
    assert!(
        secret.len() >= 32,
        "a secret is generated and returned once"
    );

    let fintech = new_deal_id();
    let biotech = new_deal_id();
    notify.publish(&sourced(&fintech, "Acme Pay")).await;
    notify.publish(&enriched(&fintech, "fintech")).await;
    notify.publish(&sourced(&biotech, "Cellco")).await;
    notify.publish(&enriched(&biotech, "biotech")).await;
    notify.publish(&scored(&biotech, 95.0)).await; // wrong sector
    notify.publish(&scored(&fintech, 60.0)).await; // too low
    let high = scored(&fintech, 91.5);
    notify.publish(&high).await;
    // A redelivered record (same event id) must not notify twice.
    notify.publish(&high).await;
    let sentinel = scored(&fintech, 85.0);
    notify.publish(&sentinel).await;
    notify.applied(&sentinel.event_id).await;

    let got = receiver.wait_for_count(2).await;
    wait_for("both deliveries marked", || async {
        let deliveries = notify.deliveries(&id).await;
        deliveries.len() == 2
            && deliveries
                .iter()
                .all(|(status, _, _)| status == "delivered")
    })
    .await;
    let deliveries = notify.deliveries(&id).await;
    assert_eq!(
        deliveries.len(),
        2,
        "one per matching event: {deliveries:?}"
    );

    // Deliveries to one endpoint may arrive in any order (several in
    // flight at once), so find each by its event.
    let by_event = |event_id: &str| {
        got.iter()
            .find(|request| request.json()["event_id"] == event_id)
            .unwrap_or_else(|| panic!("no delivery for event {event_id}"))
    };
    let first = by_event(&high.event_id);
    let body = first.json();
    assert_eq!(body["event_id"], high.event_id);
    assert_eq!(body["deal_id"], fintech);
    assert_eq!(body["deal_name"], "Acme Pay");
    assert_eq!(body["trigger"], "deal_scored");
    assert_eq!(body["data"]["score"], 91.5);
    assert_eq!(body["summary"], "Acme Pay scored 91.5");
    assert_eq!(
        first.header("x-dealmesh-delivery-id"),
        body["delivery_id"].as_str().unwrap()
    );
    assert_eq!(first.header("content-type"), "application/json");
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        secret.as_bytes(),
        &first.header("x-dealmesh-signature"),
        &first.body,
        now,
        300,
    )
    .expect("the signature verifies with the subscription's secret");
    assert!(
        signature::verify(
            b"some-other-secret-123",
            &first.header("x-dealmesh-signature"),
            &first.body,
            now,
            300
        )
        .is_err()
    );
    by_event(&sentinel.event_id);
    assert_eq!(receiver.count(), 2, "nothing was sent twice");
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slack_subscription_gets_a_text_body() {
    let notify = TestNotify::start().await;
    let receiver = Receiver::ok().await;
    let mut subscription = webhook_subscription(&receiver.url, &[T::DealSourced]);
    subscription.channel = Some(pb::subscription::Channel::Webhook(pb::WebhookChannel {
        url: receiver.url.clone(),
        secret: "slack-secret-0123456789".into(),
        format: pb::WebhookFormat::Slack as i32,
    }));
    subscribe(&notify, subscription, "alice", Role::Partner).await;
    notify.publish(&sourced(&new_deal_id(), "Globex")).await;
    let got = receiver.wait_for_count(1).await;
    assert_eq!(
        got[0].json(),
        serde_json::json!({"text": "*dealmesh*: Globex was sourced from scout"})
    );
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_retried_with_backoff_honouring_retry_after() {
    let notify = TestNotify::start().await;
    // 503, then 429 asking for 2 seconds, then 200.
    let receiver = Receiver::start(Arc::new(|n| match n {
        0 => Answer::Status(503),
        1 => Answer::StatusWithHeader(429, "retry-after", "2"),
        _ => Answer::Status(200),
    }))
    .await;
    let (id, _) = subscribe(
        &notify,
        webhook_subscription(&receiver.url, &[T::DealSourced]),
        "alice",
        Role::Partner,
    )
    .await;
    notify.publish(&sourced(&new_deal_id(), "Initech")).await;
    let got = receiver.wait_for_count(3).await;
    wait_for("delivery marked delivered", || async {
        notify
            .deliveries(&id)
            .await
            .first()
            .is_some_and(|d| d.0 == "delivered")
    })
    .await;
    let deliveries = notify.deliveries(&id).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].1, 3, "three attempts");
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.header("x-dealmesh-delivery-id"))
        .collect();
    assert!(
        ids.iter().all(|i| i == &ids[0]),
        "one delivery id across retries: {ids:?}"
    );
    let attempts: Vec<String> = got.iter().map(|r| r.header("x-dealmesh-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        got[2].at.duration_since(got[1].at) >= Duration::from_millis(1900),
        "Retry-After: 2 was honoured (waited {:?})",
        got[2].at.duration_since(got[1].at)
    );
    let attempts: Vec<(i32, Option<i32>)> =
        sqlx::query_as("SELECT attempt, status FROM delivery_attempts ORDER BY attempt")
            .fetch_all(&notify.db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, [(1, Some(503)), (2, Some(429)), (3, Some(200))]);
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_that_keeps_failing_is_dead_with_its_last_error() {
    let notify = TestNotify::start_with(&[("DEALMESH_NOTIFY_MAX_ATTEMPTS", "3")]).await;
    let failing = Receiver::start(Arc::new(|_| Answer::Status(500))).await;
    let gone = Receiver::start(Arc::new(|_| Answer::Status(410))).await;
    let (failing_id, _) = subscribe(
        &notify,
        webhook_subscription(&failing.url, &[T::DealSourced]),
        "alice",
        Role::Partner,
    )
    .await;
    let (gone_id, _) = subscribe(
        &notify,
        webhook_subscription(&gone.url, &[T::DealSourced]),
        "bob",
        Role::Partner,
    )
    .await;
    notify.publish(&sourced(&new_deal_id(), "Hooli")).await;
    wait_for("both deliveries dead", || async {
        notify
            .deliveries(&failing_id)
            .await
            .first()
            .is_some_and(|d| d.0 == "dead")
            && notify
                .deliveries(&gone_id)
                .await
                .first()
                .is_some_and(|d| d.0 == "dead")
    })
    .await;
    let (_, attempts, error) = notify.deliveries(&failing_id).await.remove(0);
    assert_eq!(attempts, 3);
    let error = error.unwrap();
    assert!(
        error.contains("gave up after 3 attempts") && error.contains("500"),
        "{error}"
    );
    assert_eq!(failing.count(), 3);
    // A 410 cannot get better by retrying: dead at once.
    let (_, attempts, error) = notify.deliveries(&gone_id).await.remove(0);
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("410"));
    assert_eq!(gone.count(), 1);
    let metrics = notify.metrics().await;
    for line in [
        r#"dealmesh_notify_delivery_attempts_total{channel="webhook",outcome="retry"} 2"#,
        r#"dealmesh_notify_delivery_attempts_total{channel="webhook",outcome="dead"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_endpoint_does_not_delay_the_others() {
    // Two global slots and one per endpoint: if waiting on the hung endpoint
    // held a global slot per queued delivery, the fast endpoint would starve.
    let notify = TestNotify::start_with(&[
        ("DEALMESH_NOTIFY_DISPATCH_CONCURRENCY", "2"),
        ("DEALMESH_NOTIFY_ENDPOINT_CONCURRENCY", "1"),
        ("DEALMESH_NOTIFY_WEBHOOK_TIMEOUT", "60s"),
    ])
    .await;
    let hung = Receiver::start(Arc::new(|_| Answer::Hang)).await;
    let fast = Receiver::ok().await;
    for (url, who) in [(&hung.url, "alice"), (&fast.url, "bob")] {
        subscribe(
            &notify,
            webhook_subscription(url, &[T::DealSourced]),
            who,
            Role::Partner,
        )
        .await;
    }
    for i in 0..6 {
        notify
            .publish(&sourced(&new_deal_id(), &format!("Co{i}")))
            .await;
    }
    fast.wait_for_count(6).await;
    assert_eq!(
        hung.count(),
        1,
        "the hung endpoint holds one request, the rest wait for it alone"
    );
    notify.abandon();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_matching_subscriptions_to_one_endpoint_deliver_once() {
    let notify = TestNotify::start().await;
    let receiver = Receiver::ok().await;
    let (older, _) = subscribe(
        &notify,
        webhook_subscription(&receiver.url, &[T::DealScored]),
        "alice",
        Role::Partner,
    )
    .await;
    let mut narrower = webhook_subscription(&receiver.url, &[T::DealScored]);
    narrower.filter = Some(pb::NotificationFilter {
        min_score: Some(50.0),
        ..Default::default()
    });
    let (newer, _) = subscribe(&notify, narrower, "alice", Role::Partner).await;
    let deal = new_deal_id();
    let matches_both = scored(&deal, 90.0);
    let sentinel = scored(&deal, 10.0); // only the older one
    notify.publish(&matches_both).await;
    notify.publish(&sentinel).await;
    let got = receiver.wait_for_count(2).await;
    let events: Vec<&str> = got
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .map(|s| {
            if s == matches_both.event_id {
                "both"
            } else {
                "sentinel"
            }
        })
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "both").count(),
        1,
        "{events:?}"
    );
    assert_eq!(notify.deliveries(&older).await.len(), 2);
    assert!(
        notify.deliveries(&newer).await.is_empty(),
        "the older subscription's delivery stands for both"
    );
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_request_is_retried() {
    let notify = TestNotify::start_with(&[("DEALMESH_NOTIFY_WEBHOOK_TIMEOUT", "1s")]).await;
    let receiver = Receiver::start(Arc::new(|n| {
        if n == 0 {
            Answer::Hang
        } else {
            Answer::Status(204)
        }
    }))
    .await;
    let (id, _) = subscribe(
        &notify,
        webhook_subscription(&receiver.url, &[T::DealSourced]),
        "alice",
        Role::Partner,
    )
    .await;
    notify.publish(&sourced(&new_deal_id(), "Slowco")).await;
    receiver.wait_for_count(2).await;
    wait_for("delivered", || async {
        notify
            .deliveries(&id)
            .await
            .first()
            .is_some_and(|d| d.0 == "delivered")
    })
    .await;
    assert_eq!(notify.deliveries(&id).await[0].1, 2);
    let first: (Option<i32>, Option<String>) =
        sqlx::query_as("SELECT status, error FROM delivery_attempts WHERE attempt = 1")
            .fetch_one(&notify.db.pool)
            .await
            .unwrap();
    assert_eq!(first.0, None);
    assert!(first.1.unwrap().starts_with("timed out"));
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_sends_nothing_twice() {
    let notify = TestNotify::start().await;
    let receiver = Receiver::ok().await;
    let (id, _) = subscribe(
        &notify,
        webhook_subscription(&receiver.url, &[T::DealSourced]),
        "alice",
        Role::Partner,
    )
    .await;
    let deal = new_deal_id();
    let before = sourced(&deal, "Beforeco");
    notify.publish(&before).await;
    receiver.wait_for_count(1).await;
    wait_for("delivered", || async {
        notify
            .deliveries(&id)
            .await
            .first()
            .is_some_and(|d| d.0 == "delivered")
    })
    .await;
    let notify = notify.restart().await;
    // The same record again (a producer retry), then a new one on the same
    // deal, so it is handled after the copy.
    notify.publish(&before).await;
    let after = sourced(&deal, "Afterco");
    notify.publish(&after).await;
    let got = receiver.wait_for_count(2).await;
    notify.applied(&after.event_id).await;
    wait_for("both delivered", || async {
        notify
            .deliveries(&id)
            .await
            .iter()
            .filter(|d| d.0 == "delivered")
            .count()
            == 2
    })
    .await;
    assert_eq!(got[1].json()["event_id"], after.event_id);
    assert_eq!(receiver.count(), 2);
    assert_eq!(notify.deliveries(&id).await.len(), 2);
    notify.stop().await;
}
