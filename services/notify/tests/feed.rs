//! The live feed: permissions, and resuming from a cursor without gaps or
//! repeats.

mod common;

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::{self as pb, FeedItem, NotificationTrigger as T};
use tokio_stream::StreamExt;
use tonic::Streaming;

async fn open(
    notify: &TestNotify,
    cursor: &str,
    sub: &str,
    role: Role,
) -> Streaming<pb::SubscribeResponse> {
    notify
        .client()
        .await
        .subscribe(authed(
            pb::SubscribeRequest {
                cursor: cursor.into(),
                ..Default::default()
            },
            sub,
            role,
        ))
        .await
        .expect("subscribe accepted")
        .into_inner()
}

async fn take(stream: &mut Streaming<pb::SubscribeResponse>, n: usize) -> Vec<FeedItem> {
    let mut items = Vec::new();
    while items.len() < n {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), stream.next())
            .await
            .expect("an item within a minute")
            .expect("the stream is open")
            .expect("no error");
        items.push(next.item.expect("item"));
    }
    items
}

fn ids(items: &[FeedItem]) -> Vec<String> {
    items.iter().map(|i| i.event_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_feed_continues_after_its_cursor_without_gaps_or_repeats() {
    let notify = TestNotify::start().await;
    let deal = new_deal_id();
    let before = [
        sourced(&deal, "Acme"),
        enriched(&deal, "fintech"),
        scored(&deal, 77.0),
    ];
    for e in &before {
        notify.publish(e).await;
    }
    let mut stream = open(&notify, "", "alice", Role::Partner).await;
    let first = take(&mut stream, 3).await;
    assert_eq!(ids(&first), ids_of(&before));
    assert_eq!(first[2].summary, "Acme scored 77.0");
    assert_eq!(first[2].deal_name, "Acme");
    assert_eq!(first[2].trigger, T::DealScored as i32);
    drop(stream);

    // Written while nobody listens.
    let missed = [
        stage_changed(&deal, "new", "diligence"),
        note_added(&deal, "call went well"),
    ];
    for e in &missed {
        notify.publish(e).await;
    }
    notify.applied(&missed[1].event_id).await;
    let mut resumed = open(&notify, &first[2].cursor, "alice", Role::Partner).await;
    let replayed = take(&mut resumed, 2).await;
    assert_eq!(ids(&replayed), ids_of(&missed));
    // Then live.
    let live = owner_assigned(&deal, "alice");
    notify.publish(&live).await;
    let next = take(&mut resumed, 1).await;
    assert_eq!(next[0].event_id, live.event_id);
    assert_eq!(next.len(), 1);
    notify.stop().await;
}

fn ids_of(events: &[dealmesh_proto::DealEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_lp_sees_only_deals_shared_with_them() {
    let notify = TestNotify::start().await;
    let mine = new_deal_id();
    let theirs = new_deal_id();
    let events = [
        sourced(&mine, "Mine"),
        sourced(&theirs, "Theirs"),
        shared(&mine, &["lp-1", "lp-3"]),
        shared(&theirs, &["lp-2"]),
        vote_opened(&mine, "v1", &["lp-1", "lp-3"]),
        vote_opened(&theirs, "v2", &["lp-2"]),
        scored(&mine, 99.0),
        vote_closed(&theirs, "v2"),
        vote_closed(&mine, "v1"),
    ];
    for e in &events {
        notify.publish(e).await;
    }
    for e in &events {
        notify.applied(&e.event_id).await;
    }
    let mut stream = open(&notify, "", "lp-1", Role::Lp).await;
    let items = take(&mut stream, 3).await;
    // A sentinel written after everything else: once it arrives, nothing
    // about the other deal came before it.
    let sentinel = shared(&mine, &["lp-1"]);
    notify.publish(&sentinel).await;
    let last = take(&mut stream, 1).await;
    assert_eq!(last[0].event_id, sentinel.event_id);
    assert_eq!(
        ids(&items),
        [
            events[2].event_id.clone(),
            events[4].event_id.clone(),
            events[8].event_id.clone()
        ]
    );
    assert!(items.iter().all(|i| i.deal_id == mine));
    // Not even the other LPs on the share are revealed.
    match items[0].event.as_ref().and_then(|e| e.payload.as_ref()) {
        Some(pb::deal_event::Payload::DealShared(s)) => assert_eq!(s.lp_ids, ["lp-1"]),
        other => panic!("expected the share, got {other:?}"),
    }
    assert_eq!(items[0].summary, "Mine was shared with you");
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_cursors_and_missing_tokens_are_refused() {
    let notify = TestNotify::start().await;
    let status = notify
        .client()
        .await
        .subscribe(authed(
            pb::SubscribeRequest {
                cursor: "not-a-cursor".into(),
                triggers: vec![99],
                ..Default::default()
            },
            "alice",
            Role::Partner,
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    use tonic_types::StatusExt;
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["cursor", "triggers[0]"]);
    let status = notify
        .client()
        .await
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    notify.stop().await;
}
