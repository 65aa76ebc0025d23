//! Who hears about what: LPs hear about votes on deals shared with them, and
//! nothing else.

mod common;

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::NotificationTrigger as T;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_lp_hears_votes_opening_and_closing_only_on_deals_shared_with_them() {
    let notify = TestNotify::start().await;
    let receiver = Receiver::ok().await;
    let (id, _) = subscribe(
        &notify,
        webhook_subscription(
            &receiver.url,
            &[T::DealShared, T::VoteOpened, T::VoteClosed],
        ),
        "lp-1",
        Role::Lp,
    )
    .await;
    let mine = new_deal_id();
    let theirs = new_deal_id();
    let unshared = new_deal_id();
    let events = [
        sourced(&mine, "Mine"),
        shared(&mine, &["lp-1"]),
        shared(&theirs, &["lp-2"]),
        vote_opened(&theirs, "v-theirs", &["lp-2"]),
        vote_opened(&unshared, "v-unshared", &[]),
        vote_opened(&mine, "v-mine", &["lp-1", "lp-2"]),
        vote_closed(&theirs, "v-theirs"),
        vote_closed(&mine, "v-mine"),
    ];
    for e in &events {
        notify.publish(e).await;
    }
    for e in &events {
        notify.applied(&e.event_id).await;
    }
    let got = receiver.wait_for_count(3).await;
    wait_for("deliveries marked", || async {
        notify
            .deliveries(&id)
            .await
            .iter()
            .filter(|d| d.0 == "delivered")
            .count()
            == 3
    })
    .await;
    let mut heard: Vec<String> = got
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    heard.sort();
    let mut expected = vec![
        events[1].event_id.clone(),
        events[5].event_id.clone(),
        events[7].event_id.clone(),
    ];
    expected.sort();
    assert_eq!(heard, expected);
    assert_eq!(
        notify.deliveries(&id).await.len(),
        3,
        "nothing else was even queued"
    );
    notify.stop().await;
}
