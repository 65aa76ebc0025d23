//! A batch keeps each deal's changes in memory and writes them once: the
//! whole log projected by the live projector in one batch, and one record
//! per batch, both give the rows an independent oracle folds from the same
//! events (merges included: the live projector does not settle them after).

#[path = "support/harness.rs"]
mod harness;
#[path = "support/story.rs"]
mod story;

use std::time::Duration;

use chrono::{DateTime, Utc};
use dealmesh_crm::db;
use dealmesh_crm::projector::{Projector, ProjectorSettings};
use harness::Harness;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};

/// Every record of the one-partition log, as the broker hands them out.
async fn records(h: &Harness, n: usize) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = h
        .kafka
        .client_config()
        .set("group.id", "crm-batching-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&h.topics.deals, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("record within 30s")
            .expect("record");
        records.push(message.detach());
    }
    records
}

#[tokio::test]
async fn one_batch_for_the_whole_log_and_one_record_per_batch_give_the_oracle_rows() {
    let h = Harness::new(1).await;
    let start: DateTime<Utc> = "2026-10-01T08:00:00Z".parse().expect("time");
    let log = story::log(12, start);
    h.publish(&log).await;
    let records = records(&h, log.len()).await;
    let expected = story::fold(&log, None);
    // The log holds what a batch must carry from one event to the next.
    assert!(expected.deals.values().any(|d| d.merged_into.is_some()));
    assert!(expected.events.values().any(|s| s == "rejected"));
    assert!(expected.votes.values().any(|v| v.status == "closed"));

    for (schema, batch_size) in [("whole_log", records.len()), ("one_by_one", 1)] {
        let pool = db::connect(&h.db.url, schema, 2).await.expect("connect");
        db::migrate(&pool).await.expect("migrate");
        let projector = Projector::new(
            pool.clone(),
            h.kafka.clone(),
            ProjectorSettings {
                topic: h.topics.deals.clone(),
                batch_size,
                linger: Duration::from_millis(1),
                initial_stage: story::INITIAL_STAGE.to_owned(),
                notify_channel: db::notify_channel(schema),
            },
        );
        for batch in records.chunks(batch_size) {
            projector.project_batch(batch).await.expect("batch");
        }
        let actual = story::read(&h.db.pool, schema).await;
        assert_eq!(actual.events, expected.events, "events, {schema}");
        assert_eq!(actual.deals, expected.deals, "deals, {schema}");
        assert_eq!(actual.votes, expected.votes, "votes, {schema}");
        assert_eq!(actual, expected, "{schema}");
        pool.close().await;
    }
}
