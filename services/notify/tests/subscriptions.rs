//! Subscriptions over gRPC and from configuration: who may see and change
//! which, and what is refused at creation.

mod common;

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::{self as pb, NotificationTrigger as T};
use tonic_types::StatusExt;

async fn list(notify: &TestNotify, sub: &str, role: Role) -> Vec<pb::Subscription> {
    notify
        .client()
        .await
        .list_subscriptions(authed(pb::ListSubscriptionsRequest {}, sub, role))
        .await
        .expect("listed")
        .into_inner()
        .subscriptions
}

async fn create_err(
    notify: &TestNotify,
    subscription: pb::Subscription,
    sub: &str,
    role: Role,
) -> Vec<String> {
    let status = notify
        .client()
        .await
        .create_subscription(authed(
            pb::CreateSubscriptionRequest {
                subscription: Some(subscription),
            },
            sub,
            role,
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_list_delete_with_ownership_and_configured_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subs.toml");
    std::fs::write(
        &file,
        r#"
[[subscription]]
name = "ops-all-archives"
subscriber = "ops"
role = "service"
triggers = ["deal_archived"]
webhook_url = "https://ops.example.com/hook"
webhook_secret = "ops-secret-0123456789"
"#,
    )
    .unwrap();
    let notify = TestNotify::start_with(&[(
        "DEALMESH_NOTIFY_SUBSCRIPTIONS_FILE",
        &file.display().to_string(),
    )])
    .await;
    let (alice_id, _) = subscribe(
        &notify,
        webhook_subscription("https://alice.example.com/hook", &[T::DealScored]),
        "alice",
        Role::Partner,
    )
    .await;
    let (bob_id, _) = subscribe(
        &notify,
        webhook_subscription("https://bob.example.com/hook", &[T::NoteAdded]),
        "bob",
        Role::Analyst,
    )
    .await;

    let alices = list(&notify, "alice", Role::Partner).await;
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0].subscription_id, alice_id);
    assert_eq!(alices[0].subscriber, "alice");
    assert_eq!(alices[0].origin, pb::SubscriptionOrigin::Api as i32);
    match &alices[0].channel {
        Some(pb::subscription::Channel::Webhook(w)) => {
            assert!(w.secret.is_empty(), "secrets are never listed")
        }
        other => panic!("{other:?}"),
    }
    let everyone = list(&notify, "root", Role::Admin).await;
    assert_eq!(everyone.len(), 3);
    let configured = everyone
        .iter()
        .find(|s| s.origin == pb::SubscriptionOrigin::Config as i32)
        .expect("the configured subscription is listed");
    assert_eq!(configured.name, "ops-all-archives");

    let mut client = notify.client().await;
    let status = client
        .delete_subscription(authed(
            pb::DeleteSubscriptionRequest {
                subscription_id: alice_id.clone(),
            },
            "bob",
            Role::Analyst,
        ))
        .await
        .expect_err("bob cannot delete alice's");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .delete_subscription(authed(
            pb::DeleteSubscriptionRequest {
                subscription_id: configured.subscription_id.clone(),
            },
            "root",
            Role::Admin,
        ))
        .await
        .expect_err("configured subscriptions live in the file");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    client
        .delete_subscription(authed(
            pb::DeleteSubscriptionRequest {
                subscription_id: alice_id.clone(),
            },
            "alice",
            Role::Partner,
        ))
        .await
        .expect("alice deletes her own");
    assert!(list(&notify, "alice", Role::Partner).await.is_empty());
    let left: Vec<String> = list(&notify, "root", Role::Admin)
        .await
        .into_iter()
        .map(|s| s.subscription_id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&bob_id));
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_subscriptions_are_refused_with_field_violations_and_store_nothing() {
    let notify = TestNotify::start().await;
    for (url, what) in [
        ("ftp://files.example.com/x", "scheme"),
        ("https://user:pw@example.com/x", "credentials"),
        ("not a url", "garbage"),
        ("https://", "no host"),
    ] {
        let fields = create_err(
            &notify,
            webhook_subscription(url, &[T::DealScored]),
            "alice",
            Role::Partner,
        )
        .await;
        assert_eq!(fields, ["subscription.webhook.url"], "{what}");
    }
    let mut bad_filter = webhook_subscription("https://ok.example.com/x", &[T::StageChanged]);
    bad_filter.filter = Some(pb::NotificationFilter {
        min_score: Some(101.0),
        sectors: vec![String::new()],
        ..Default::default()
    });
    assert_eq!(
        create_err(&notify, bad_filter, "alice", Role::Partner).await,
        [
            "subscription.filter.min_score",
            "subscription.filter.sectors[0]"
        ]
    );
    // An LP may not listen to the fund's internal events.
    assert_eq!(
        create_err(
            &notify,
            webhook_subscription("https://lp.example.com/x", &[T::NoteAdded]),
            "lp-1",
            Role::Lp
        )
        .await,
        ["subscription.triggers[0]"]
    );
    let mut email = webhook_subscription("", &[T::NoteAdded]);
    email.channel = Some(pb::subscription::Channel::Email(pb::EmailChannel {
        address: "a@example.com".into(),
        digest: false,
    }));
    assert_eq!(
        create_err(&notify, email, "alice", Role::Partner).await,
        ["subscription.email"],
        "no SMTP host configured"
    );
    assert!(
        list(&notify, "root", Role::Admin).await.is_empty(),
        "nothing stored"
    );
    notify.stop().await;
}
