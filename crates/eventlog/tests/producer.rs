//! The producer against the real broker: a call's records are acknowledged
//! in the order they were given, each answer naming where its record landed;
//! a full librdkafka queue makes a call wait, not fail; a record that cannot
//! be queued or delivered fails its call instead of leaving it waiting.

use std::time::Duration;

use chrono::Utc;
use dealmesh_eventlog::{Delivery, EventProducer, KafkaSettings, Topics, envelope, headers, ids};
use dealmesh_proto::v1::DealSourced;
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::metrics::prometheus_client::encoding::text::encode;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;
use dealmesh_testkit::{
    TopicRecord, create_topic, kafka_bootstrap, read_topic, unique_topic_prefix,
};

const CE_SOURCE: &str = "/dealmesh/producer-test";

fn event(index: usize, name: &str) -> DealEvent {
    let now = Utc::now();
    let deal = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("deal-{index}").as_bytes(),
    );
    DealEvent {
        event_id: ids::derived_event_id(now, &[b"producer-test", &index.to_be_bytes()]).to_string(),
        deal_id: deal.to_string(),
        occurred_at: Some(envelope::timestamp(now)),
        actor: Some(envelope::service_actor("producer-test")),
        correlation_id: "producer-test".into(),
        payload: Some(Payload::DealSourced(DealSourced {
            source: "test".into(),
            name: name.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `count` events and their encodings.
fn encoded(count: usize, name: &str) -> Vec<(DealEvent, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let event = event(i, name);
            let bytes = envelope::encode(&event).expect("encodes");
            (event, bytes)
        })
        .collect()
}

/// A fresh deal log with `partitions` partitions and settings for it.
async fn fresh_log(partitions: i32) -> (String, KafkaSettings, Topics) {
    let bootstrap = kafka_bootstrap().await;
    let prefix = unique_topic_prefix();
    let topics = Topics::new(&prefix);
    create_topic(&bootstrap, &topics.deals, partitions).await;
    let settings = KafkaSettings::new(&bootstrap, &prefix);
    (bootstrap, settings, topics)
}

/// Checks that each answer names where its event landed: the record at
/// that partition and offset is the event, keyed by its deal, with its id.
fn assert_landed(records: &[TopicRecord], events: &[(DealEvent, Vec<u8>)], answers: &[Delivery]) {
    assert_eq!(answers.len(), events.len(), "an answer per event");
    for ((event, bytes), delivery) in events.iter().zip(answers) {
        let record = records
            .iter()
            .find(|r| r.partition == delivery.partition && r.offset == delivery.offset)
            .unwrap_or_else(|| panic!("no record at {delivery:?}"));
        assert_eq!(record.value.as_deref(), Some(bytes.as_slice()));
        assert_eq!(record.key.as_deref(), Some(event.deal_id.as_bytes()));
        assert_eq!(
            headers::get(&record.headers, headers::CE_ID),
            Some(event.event_id.as_str())
        );
    }
}

/// Publishes `events` in one call. A call that never answers (a lost
/// acknowledgement) fails the test instead of hanging it.
async fn publish(
    producer: &EventProducer,
    events: &[(DealEvent, Vec<u8>)],
) -> dealmesh_eventlog::Result<Vec<Delivery>> {
    let call = producer.publish_all_encoded(events.iter().map(|(e, b)| (e, b.as_slice())));
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call answers within 30 s")
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("metrics encode");
    text
}

/// A producer whose metrics are registered in the returned registry.
fn metered_producer(settings: &KafkaSettings, topics: &Topics) -> (EventProducer, Registry) {
    let mut registry = Registry::default();
    let producer = EventProducer::new(settings, topics.clone(), CE_SOURCE)
        .expect("producer")
        .with_metrics(&mut registry);
    (producer, registry)
}

/// Checks that the producer counted `count` records to `topic` with `outcome`.
fn assert_produced(registry: &Registry, topic: &str, outcome: &str, count: usize) {
    let line = format!(
        "dealmesh_produced_records_total{{topic=\"{topic}\",outcome=\"{outcome}\"}} {count}"
    );
    let metrics = metrics_text(registry);
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
}

#[tokio::test]
async fn each_answer_names_where_its_record_landed() {
    let (bootstrap, settings, topics) = fresh_log(3).await;
    let (producer, registry) = metered_producer(&settings, &topics);
    let events = encoded(300, "landed");

    let deliveries = publish(&producer, &events).await.expect("acknowledged");

    let records = read_topic(&bootstrap, &topics.deals).await;
    assert_eq!(records.len(), events.len(), "each record once on the log");
    assert_landed(&records, &events, &deliveries);
    let partitions: std::collections::BTreeSet<i32> =
        deliveries.iter().map(|d| d.partition).collect();
    assert_eq!(partitions.len(), 3, "300 deals spread over every partition");

    assert_produced(&registry, &topics.deals, "acked", 300);
    let metrics = metrics_text(&registry);
    assert!(
        metrics.contains("dealmesh_produce_seconds_count 300"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_queue_makes_a_call_wait_for_room() {
    let (bootstrap, mut settings, topics) = fresh_log(2).await;
    // Room for 5 records at a time, for a call of 200.
    settings
        .passthrough
        .insert("queue.buffering.max.messages".into(), "5".into());
    let producer = EventProducer::new(&settings, topics.clone(), CE_SOURCE).expect("producer");
    let events = encoded(200, "waited");

    let deliveries = publish(&producer, &events)
        .await
        .expect("every record is sent once there is room");

    let records = read_topic(&bootstrap, &topics.deals).await;
    assert_eq!(records.len(), 200);
    assert_landed(&records, &events, &deliveries);
}

#[tokio::test]
async fn a_record_too_large_to_queue_fails_the_call() {
    let (bootstrap, mut settings, topics) = fresh_log(1).await;
    settings
        .passthrough
        .insert("message.max.bytes".into(), "1000".into());
    let (producer, registry) = metered_producer(&settings, &topics);
    let mut events = encoded(3, "small");
    events.extend(encoded(1, &"x".repeat(2_000)));

    let error = publish(&producer, &events)
        .await
        .expect_err("the large record cannot be queued");

    assert!(error.to_string().contains("too large"), "{error}");
    // The records queued before it still reach the log.
    producer.flush(Duration::from_secs(10)).expect("flushed");
    assert_eq!(read_topic(&bootstrap, &topics.deals).await.len(), 3);
    assert_produced(&registry, &topics.deals, "failed", 1);
}

#[tokio::test]
async fn a_record_the_broker_never_acknowledges_fails_the_call() {
    // Nothing listens on port 1: the records time out undelivered.
    let mut settings = KafkaSettings::new("127.0.0.1:1", unique_topic_prefix());
    settings
        .passthrough
        .insert("delivery.timeout.ms".into(), "1000".into());
    let producer =
        EventProducer::new(&settings, Topics::new("unreachable."), CE_SOURCE).expect("producer");
    let events = encoded(10, "lost");

    let error = publish(&producer, &events)
        .await
        .expect_err("no broker acknowledged the records");
    assert!(error.to_string().contains("timed out"), "{error}");
}
