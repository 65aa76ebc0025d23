//! `audit verify` against the real broker and PostgreSQL: the projector's
//! hash checkpoints match the log it read; a copy of the log with one
//! record altered, deleted or moved is caught, at that record; and the read
//! model is compared with a rebuild of the same offsets.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/story.rs"]
mod story;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dealmesh_crm::replay::Progress;
use dealmesh_crm::verify;
use dealmesh_testkit::TopicRecord;
use harness::Harness;
use rdkafka::message::OwnedHeaders;

/// Copies `records` (one topic's, by partition then offset) into a new topic
/// with the same partition count, partition for partition.
async fn copy(h: &Harness, name: &str, records: &[TopicRecord], partitions: i32) -> String {
    let topic = format!("{}{name}", h.kafka.topic_prefix);
    dealmesh_testkit::create_topic(&h.kafka.bootstrap_servers, &topic, partitions).await;
    for record in records {
        let delivery = h
            .producer
            .send(
                &topic,
                record.key.as_deref(),
                record.value.as_deref().unwrap_or_default(),
                OwnedHeaders::new(),
            )
            .await
            .expect("copy");
        // Keyed like the original, so the record lands in the same partition.
        assert_eq!(delivery.partition, record.partition);
    }
    topic
}

#[tokio::test]
async fn altered_deleted_and_reordered_records_are_caught_where_they_are() {
    let h = Harness::new(2).await;
    let start: DateTime<Utc> = "2026-10-01T08:00:00Z".parse().unwrap();
    let log = story::log(6, start);
    h.publish(&log).await;
    let mut settings = h.settings("projected");
    settings.batch_size = 3;
    h.replay(&settings).await;

    let checkpoints = verify::checkpoints(&h.db.pool, "projected", &h.topics.deals)
        .await
        .unwrap();
    let partitions: std::collections::BTreeSet<i32> =
        checkpoints.iter().map(|c| c.partition).collect();
    assert_eq!(partitions.len(), 2, "{checkpoints:?}");

    // The log as it is: every checkpoint matches.
    let results = verify::verify_log(&h.kafka, &h.topics.deals, &checkpoints)
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| r.first_mismatch.is_none()),
        "{results:?}"
    );
    assert_eq!(
        results.iter().map(|r| r.records).sum::<u64>(),
        log.len() as u64
    );
    assert_eq!(
        results.iter().map(|r| r.matched).sum::<u64>(),
        checkpoints.len() as u64
    );

    let original = dealmesh_testkit::read_topic(&h.kafka.bootstrap_servers, &h.topics.deals).await;
    let mut by_partition: BTreeMap<i32, Vec<TopicRecord>> = BTreeMap::new();
    for record in &original {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record.clone());
    }
    let target = *by_partition.keys().next().unwrap();
    let k = by_partition[&target].len() / 2;
    let k_offset = by_partition[&target][k].offset;

    // An unaltered copy matches too (a copy verifies like the original).
    let same = copy(&h, "copy-same", &original, 2).await;
    let results = verify::verify_log(&h.kafka, &same, &checkpoints)
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| r.first_mismatch.is_none()),
        "{results:?}"
    );

    type Edit = fn(&mut Vec<TopicRecord>, usize);
    let edits: [(&str, Edit); 3] = [
        ("altered", |records, k| {
            let value = records[k].value.as_mut().unwrap();
            let last = value.len() - 1;
            value[last] ^= 0x01;
        }),
        ("deleted", |records, k| {
            records.remove(k);
        }),
        ("reordered", |records, k| records.swap(k, k + 1)),
    ];
    for (name, edit) in edits {
        let mut records: Vec<TopicRecord> = Vec::new();
        for (partition, list) in &by_partition {
            let mut list = list.clone();
            if *partition == target {
                edit(&mut list, k);
            }
            records.extend(list);
        }
        let topic = copy(&h, &format!("copy-{name}"), &records, 2).await;
        let results = verify::verify_log(&h.kafka, &topic, &checkpoints)
            .await
            .unwrap();
        for r in &results {
            if r.partition != target {
                assert!(r.first_mismatch.is_none(), "{name}: {r:?}");
                continue;
            }
            let mismatch = r
                .first_mismatch
                .as_ref()
                .unwrap_or_else(|| panic!("{name} not caught: {r:?}"));
            // Located: after the last matching checkpoint, at most at the
            // first one that differs.
            assert!(
                mismatch.last_good_offset.is_none_or(|good| good < k_offset),
                "{name}: {mismatch}"
            );
            assert!(mismatch.offset >= k_offset, "{name}: {mismatch}");
            assert!(mismatch.offset - k_offset < 3 + 1, "{name}: {mismatch}");
            let text = verify::render_chain(&results);
            assert!(text.contains("MISMATCH"), "{text}");
        }
    }

    // The read model against a rebuild of the same offsets.
    let comparison = verify::compare_with_rebuild(
        &h.db.url,
        "projected",
        "verify_scratch",
        &h.settings("unused"),
        4,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(comparison.differing, Vec::<String>::new());
    assert_eq!(
        comparison.offsets.values().sum::<i64>(),
        log.len() as i64,
        "{comparison:?}"
    );
    sqlx::query("UPDATE projected.deals SET stage = 'ic' WHERE deal_id = $1")
        .bind(story::deal_id(2))
        .execute(&h.db.pool)
        .await
        .unwrap();
    let comparison = verify::compare_with_rebuild(
        &h.db.url,
        "projected",
        "verify_scratch",
        &h.settings("unused"),
        4,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(comparison.differing, vec!["deals".to_owned()]);
    let scratch_left: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'verify_scratch')",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert!(!scratch_left, "the scratch schema is dropped");
}
