//! The consumer loop against the real broker: dead letters, resuming from
//! committed offsets, committing before a rebalance takes partitions away,
//! per-key order under concurrency, and a slow record holding up only its
//! own key.
//!
//! Every test has its own topics and consumer group. Nothing here sleeps to
//! wait for the loop: tests poll for the outcome they expect, with a
//! deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dealmesh_eventlog::consumer::dlq_headers;
use dealmesh_eventlog::{
    ConsumerLoop, ConsumerSettings, Delivery, EventProducer, HandleError, Handler, KafkaSettings,
    Record, Topics, envelope, ids,
};
use dealmesh_proto::v1::DealSourced;
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_testkit::{
    TopicRecord, create_topic, kafka_bootstrap, read_topic, unique_topic_prefix,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for an outcome before failing.
const DEADLINE: Duration = Duration::from_secs(90);
const CE_SOURCE: &str = "/dealmesh/eventlog-test";

/// Names the test handlers react to (the `DealSourced.name` of a record).
const FAILS_PERMANENTLY: &str = "fails permanently";
const FAILS_TRANSIENTLY: &str = "fails transiently";

/// A deal log and dead-letter topic of its own, a producer, and a group.
struct Fixture {
    bootstrap: String,
    kafka: KafkaSettings,
    topics: Topics,
    producer: EventProducer,
    group: String,
    partitions: i32,
}

impl Fixture {
    async fn new(partitions: i32) -> Self {
        init_logs();
        let bootstrap = kafka_bootstrap().await;
        let prefix = unique_topic_prefix();
        let topics = Topics::new(&prefix);
        create_topic(&bootstrap, &topics.deals, partitions).await;
        create_topic(&bootstrap, &topics.dead_letter, 1).await;
        let kafka = KafkaSettings::new(&bootstrap, &prefix);
        let producer = EventProducer::new(&kafka, topics.clone(), CE_SOURCE).expect("producer");
        Self {
            bootstrap,
            kafka,
            topics,
            producer,
            group: format!("{prefix}group"),
            partitions,
        }
    }

    /// Settings with short intervals so tests move quickly.
    fn settings(&self) -> ConsumerSettings {
        let mut settings = ConsumerSettings::new(&self.group, &self.topics.deals);
        settings.commit_interval = Duration::from_millis(100);
        settings.max_attempts = 3;
        settings.retry_base = Duration::from_millis(5);
        settings.retry_max = Duration::from_millis(50);
        settings
    }

    /// Starts a group member running `handler`; cancel the token to stop it.
    fn start<H: Handler>(
        &self,
        settings: ConsumerSettings,
        handler: H,
    ) -> (CancellationToken, JoinHandle<dealmesh_eventlog::Result<()>>) {
        let token = CancellationToken::new();
        let consumer =
            ConsumerLoop::new(self.kafka.clone(), settings, handler, self.producer.clone());
        let task = tokio::spawn(consumer.run(token.clone()));
        (token, task)
    }

    /// Publishes `events` in order (one pipelined burst, so records share
    /// batches as in production) and returns where each landed.
    async fn publish(&self, events: &[DealEvent]) -> Vec<Delivery> {
        futures::future::try_join_all(events.iter().map(|event| self.producer.publish(event)))
            .await
            .expect("events published")
    }

    /// Publishes `events` one at a time, so each record is a batch of its
    /// own. For tests that resume a group from committed offsets: those can
    /// fall inside a batch, and tansu 0.6's memory engine answers a fetch
    /// that starts inside a multi-record batch with nothing (Kafka returns
    /// the batch), which would stall the resumed consumer.
    async fn publish_one_by_one(&self, events: &[DealEvent]) -> Vec<Delivery> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            deliveries.push(self.producer.publish(event).await.expect("event published"));
        }
        deliveries
    }

    /// The dead-letter topic once it holds `count` records.
    async fn dead_letters(&self, count: usize) -> Vec<TopicRecord> {
        let started = Instant::now();
        loop {
            let records = read_topic(&self.bootstrap, &self.topics.dead_letter).await;
            if records.len() >= count {
                return records;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the dead-letter topic holds {} records after {DEADLINE:?}, expected {count}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The group's committed offset of each partition (0 where none is).
    async fn committed_offsets(&self) -> Vec<i64> {
        let (bootstrap, group, topic, partitions) = (
            self.bootstrap.clone(),
            self.group.clone(),
            self.topics.deals.clone(),
            self.partitions,
        );
        tokio::task::spawn_blocking(move || {
            // Not subscribed, so it never joins the group: it only asks.
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(&topic, partition);
            }
            let committed = consumer
                .committed_offsets(list, Duration::from_secs(30))
                .expect("committed offsets");
            (0..partitions)
                .map(|partition| {
                    match committed
                        .find_partition(&topic, partition)
                        .map(|element| element.offset())
                    {
                        Some(Offset::Offset(offset)) => offset,
                        _ => 0,
                    }
                })
                .collect()
        })
        .await
        .expect("committed offsets task")
    }
}

async fn stop(token: CancellationToken, task: JoinHandle<dealmesh_eventlog::Result<()>>) {
    token.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the loop stops after its token is cancelled")
        .expect("loop task joins")
        .expect("loop ends without error");
}

/// A `DealSourced` event of `deal` named `name`.
fn event(deal: &str, name: &str) -> DealEvent {
    let now = Utc::now();
    DealEvent {
        event_id: ids::derived_event_id(now, &[deal.as_bytes(), name.as_bytes()]).to_string(),
        deal_id: deal.to_owned(),
        occurred_at: Some(envelope::timestamp(now)),
        actor: Some(envelope::service_actor("eventlog-test")),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        payload: Some(Payload::DealSourced(DealSourced {
            source: "test".into(),
            name: name.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn name_of(event: &DealEvent) -> &str {
    match &event.payload {
        Some(Payload::DealSourced(sourced)) => &sourced.name,
        _ => "",
    }
}

/// What a handler saw of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    partition: i32,
    offset: i64,
    key: String,
    name: String,
}

impl Seen {
    fn of(record: &Record, event: &DealEvent) -> Self {
        Self {
            partition: record.partition,
            offset: record.offset,
            key: record.key_str().unwrap_or_default().to_owned(),
            name: name_of(event).to_owned(),
        }
    }

    fn position(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }

    fn snapshot(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn positions(&self) -> BTreeSet<(i32, i64)> {
        self.snapshot().iter().map(Seen::position).collect()
    }
}

/// Succeeds, or fails as the record's name says. `attempts` has every call,
/// `handled` only the successful ones.
#[derive(Clone, Default)]
struct Scripted {
    attempts: Log,
    handled: Log,
}

impl Handler for Scripted {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        let seen = Seen::of(record, &event);
        self.attempts.push(seen.clone());
        match seen.name.as_str() {
            FAILS_PERMANENTLY => Err(HandleError::Permanent("company website is invalid".into())),
            FAILS_TRANSIENTLY => Err(HandleError::Transient("enrichment provider down".into())),
            _ => {
                self.handled.push(seen);
                Ok(())
            }
        }
    }
}

/// Handles one record per permit; once `stop` is cancelled, a record
/// without a permit fails transiently, as a handler whose dependency went
/// away during shutdown would.
struct Gated {
    handled: Log,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Handler for Gated {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        tokio::select! {
            permit = self.permits.acquire() => {
                permit.expect("semaphore open").forget();
                self.handled.push(Seen::of(record, &event));
                Ok(())
            }
            () = self.stop.cancelled() => Err(HandleError::Transient("shutting down".into())),
        }
    }
}

/// Polls `condition` until it holds; fails the test after [`DEADLINE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < DEADLINE,
            "not true after {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(record: &'a TopicRecord, name: &str) -> &'a str {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| std::str::from_utf8(value).expect("utf-8 header"))
        .unwrap_or_else(|| {
            panic!(
                "dead letter at offset {} has no header {name}: {:?}",
                record.offset, record.headers
            )
        })
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_records_are_dead_lettered_with_their_origin_and_the_stream_moves_on() {
    let fixture = Fixture::new(1).await;
    // One key: the records after a failing one wait for it.
    let deal = "deal-dlq";
    let events = [
        event(deal, "first"),
        event(deal, FAILS_PERMANENTLY),
        event(deal, "second"),
        event(deal, FAILS_TRANSIENTLY),
        event(deal, "third"),
    ];
    let test_started = Utc::now();
    let deliveries = fixture.publish(&events).await;
    let handler = Scripted::default();
    let settings = fixture.settings();
    let max_attempts = settings.max_attempts;
    let (token, task) = fixture.start(settings, handler.clone());

    eventually("the record after the failing ones is handled", || {
        handler.handled.snapshot().iter().any(|s| s.name == "third")
    })
    .await;
    let dead = fixture.dead_letters(2).await;
    stop(token, task).await;

    let handled: Vec<String> = handler
        .handled
        .snapshot()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(handled, ["first", "second", "third"]);
    let attempts_of = |name: &str| {
        handler
            .attempts
            .snapshot()
            .iter()
            .filter(|s| s.name == name)
            .count()
    };
    assert_eq!(
        attempts_of(FAILS_PERMANENTLY),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(
        attempts_of(FAILS_TRANSIENTLY),
        max_attempts as usize,
        "a transient failure is tried max_attempts times"
    );

    assert_eq!(dead.len(), 2, "exactly the two failing records: {dead:?}");
    for (record, source, kind, attempts, error) in [
        (&dead[0], 1, "permanent", 1, "company website is invalid"),
        (
            &dead[1],
            3,
            "retries_exhausted",
            max_attempts,
            "enrichment provider down",
        ),
    ] {
        let original = &events[source];
        let at = deliveries[source];
        assert_eq!(
            record.value.as_deref(),
            Some(envelope::encode(original).unwrap().as_slice()),
            "the dead letter carries the original value byte for byte"
        );
        assert_eq!(record.key.as_deref(), Some(deal.as_bytes()));
        assert_eq!(header(record, dlq_headers::ERROR), error);
        assert_eq!(header(record, dlq_headers::ERROR_KIND), kind);
        assert_eq!(header(record, dlq_headers::ATTEMPTS), attempts.to_string());
        assert_eq!(
            header(record, dlq_headers::ORIGIN_TOPIC),
            fixture.topics.deals
        );
        assert_eq!(
            header(record, dlq_headers::ORIGIN_PARTITION),
            at.partition.to_string()
        );
        assert_eq!(
            header(record, dlq_headers::ORIGIN_OFFSET),
            at.offset.to_string()
        );
        assert_eq!(header(record, dlq_headers::CONSUMER_GROUP), fixture.group);
        let failed_at = DateTime::parse_from_rfc3339(header(record, dlq_headers::FAILED_AT))
            .expect("dlq_failed_at is RFC 3339");
        assert!(
            failed_at >= test_started && failed_at <= Utc::now(),
            "dlq_failed_at {failed_at} is not the time of this run"
        );
        // The original CloudEvents headers travel with it.
        assert_eq!(header(record, "ce_id"), original.event_id);
        assert_eq!(header(record, "ce_type"), "dealmesh.v1.DealSourced");
        assert_eq!(header(record, "ce_source"), CE_SOURCE);
        assert_eq!(header(record, "ce_specversion"), "1.0");
    }

    assert_eq!(
        fixture.committed_offsets().await,
        [deliveries[4].offset + 1],
        "dead-lettered records count as done: the group's offset is past them all"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_does_not_decode_is_dead_lettered_as_permanent() {
    let fixture = Fixture::new(1).await;
    let deal = "deal-garbage";
    let garbage = b"\xff\xff\xff\xff this is not a deal event".to_vec();
    assert!(
        envelope::decode(&garbage).is_err(),
        "the test value must not decode"
    );
    let headers = OwnedHeaders::new().insert(Header {
        key: "ce_id",
        value: Some("garbage-1"),
    });
    let bad = fixture
        .producer
        .send(
            &fixture.topics.deals,
            Some(deal.as_bytes()),
            &garbage,
            headers,
        )
        .await
        .expect("garbage sent");
    fixture.publish(&[event(deal, "after garbage")]).await;

    let handler = Scripted::default();
    let (token, task) = fixture.start(fixture.settings(), handler.clone());
    eventually("the record after the undecodable one is handled", || {
        handler.handled.len() == 1
    })
    .await;
    let dead = fixture.dead_letters(1).await;
    stop(token, task).await;

    assert!(
        handler
            .attempts
            .snapshot()
            .iter()
            .all(|s| s.name == "after garbage"),
        "the handler never saw the undecodable record as an event"
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record = &dead[0];
    assert_eq!(record.value.as_deref(), Some(garbage.as_slice()));
    assert_eq!(record.key.as_deref(), Some(deal.as_bytes()));
    assert_eq!(header(record, dlq_headers::ERROR_KIND), "permanent");
    assert_eq!(header(record, dlq_headers::ATTEMPTS), "1");
    assert!(
        header(record, dlq_headers::ERROR).contains("decode"),
        "the error says why: {}",
        header(record, dlq_headers::ERROR)
    );
    assert_eq!(
        header(record, dlq_headers::ORIGIN_OFFSET),
        bad.offset.to_string()
    );
    assert_eq!(header(record, "ce_id"), "garbage-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_member_resumes_from_the_committed_offsets() {
    let fixture = Fixture::new(3).await;
    let events: Vec<DealEvent> = (0..60)
        .map(|i| event(&format!("deal-{}", i % 12), &format!("event {i}")))
        .collect();
    let deliveries = fixture.publish_one_by_one(&events).await;
    let all: BTreeSet<(i32, i64)> = deliveries.iter().map(|d| (d.partition, d.offset)).collect();
    assert_eq!(all.len(), events.len());

    // First run: 20 records get handled, then the loop is stopped while the
    // rest wait for permits that never come.
    let first = Log::default();
    let token = CancellationToken::new();
    let gated = Gated {
        handled: first.clone(),
        permits: Arc::new(Semaphore::new(20)),
        stop: token.clone(),
    };
    let mut settings = fixture.settings();
    settings.concurrency = 2;
    let consumer = ConsumerLoop::new(
        fixture.kafka.clone(),
        settings,
        gated,
        fixture.producer.clone(),
    );
    let task = tokio::spawn(consumer.run(token.clone()));
    eventually("the first run handled 20 records", || first.len() == 20).await;
    stop(token, task).await;
    assert_eq!(first.len(), 20, "nothing is handled during the drain");

    let committed = fixture.committed_offsets().await;
    assert!(
        committed.iter().sum::<i64>() > 0,
        "the first run committed nothing: {committed:?}"
    );
    let first_positions = first.positions();
    for (partition, &offset) in committed.iter().enumerate() {
        let partition = partition as i32;
        for below in 0..offset {
            assert!(
                first_positions.contains(&(partition, below)),
                "offset {offset} committed on partition {partition} but record {below} was never \
                 handled: a commit skipped it"
            );
        }
    }

    // Second run, same group: picks up from the committed offsets.
    let second = Scripted::default();
    let (token, task) = fixture.start(fixture.settings(), second.clone());
    eventually("every record is handled at least once", || {
        let mut seen = first.positions();
        seen.extend(second.handled.positions());
        seen.is_superset(&all)
    })
    .await;
    stop(token, task).await;

    for seen in second.handled.snapshot() {
        assert!(
            seen.offset >= committed[seen.partition as usize],
            "record {}@{} was committed by the first run and handled again",
            seen.partition,
            seen.offset
        );
    }
    for (partition, &offset) in committed.iter().enumerate() {
        let end = all.iter().filter(|(p, _)| *p == partition as i32).count() as i64;
        if offset < end {
            assert!(
                second
                    .handled
                    .positions()
                    .contains(&(partition as i32, offset)),
                "the second run did not start at partition {partition}'s committed offset {offset}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_records_are_committed_before_a_rebalance_moves_their_partitions() {
    let fixture = Fixture::new(4).await;
    let before: Vec<DealEvent> = (0..40)
        .map(|i| event(&format!("deal-{}", i % 16), &format!("before {i}")))
        .collect();
    let before_positions: BTreeSet<(i32, i64)> = fixture
        .publish_one_by_one(&before)
        .await
        .iter()
        .map(|d| (d.partition, d.offset))
        .collect();

    // Periodic commits practically never happen, so only the commit before
    // revoke can save the first member's work.
    let mut settings = fixture.settings();
    settings.commit_interval = Duration::from_secs(3600);
    let first = Scripted::default();
    let (first_token, first_task) = fixture.start(settings.clone(), first.clone());
    eventually("the first member handled every record", || {
        first.handled.len() == before.len()
    })
    .await;

    // A second member joins; keep writing until partitions have moved to it.
    let second = Scripted::default();
    let (second_token, second_task) = fixture.start(settings, second.clone());
    let mut after_positions = BTreeSet::new();
    let started = Instant::now();
    let mut batch = 0;
    while second.handled.len() == 0 {
        assert!(
            started.elapsed() < DEADLINE,
            "no partition moved to the second member within {DEADLINE:?}"
        );
        let events: Vec<DealEvent> = (0..8)
            .map(|i| event(&format!("deal-{i}"), &format!("after {batch}.{i}")))
            .collect();
        for delivery in fixture.publish_one_by_one(&events).await {
            after_positions.insert((delivery.partition, delivery.offset));
        }
        batch += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("every record written after the join is handled", || {
        let mut seen = first.handled.positions();
        seen.extend(second.handled.positions());
        seen.is_superset(&after_positions)
    })
    .await;
    stop(second_token, second_task).await;
    stop(first_token, first_task).await;

    let redone: Vec<Seen> = second
        .handled
        .snapshot()
        .into_iter()
        .filter(|seen| before_positions.contains(&seen.position()))
        .collect();
    assert!(
        redone.is_empty(),
        "the second member redid records the first had finished before the rebalance \
         (only records still in flight at revoke may be redone; none were): {redone:?}"
    );
    let first_counts = first
        .handled
        .snapshot()
        .iter()
        .filter(|seen| before_positions.contains(&seen.position()))
        .count();
    assert_eq!(
        first_counts,
        before.len(),
        "the first member handled its finished records again after getting partitions back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_one_key_are_handled_in_offset_order_across_concurrent_lanes() {
    let fixture = Fixture::new(2).await;
    let keys: Vec<String> = (0..8).map(|k| format!("deal-{k}")).collect();
    let events: Vec<DealEvent> = (0..15)
        .flat_map(|i| {
            keys.iter()
                .map(move |key| event(key, &format!("{key} #{i}")))
        })
        .collect();
    let deliveries = fixture.publish(&events).await;
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (event, delivery) in events.iter().zip(&deliveries) {
        expected
            .entry(event.deal_id.clone())
            .or_default()
            .push(delivery.offset);
    }

    let handler = Ordered::default();
    let mut settings = fixture.settings();
    settings.concurrency = 4;
    settings.lane_capacity = 4;
    let (token, task) = fixture.start(settings, handler.clone());
    eventually("every record is handled", || {
        handler.handled.len() >= events.len()
    })
    .await;
    stop(token, task).await;

    let mut handled: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for seen in handler.handled.snapshot() {
        handled.entry(seen.key).or_default().push(seen.offset);
    }
    assert_eq!(
        handled, expected,
        "each key's records are handled once, in the order they were written"
    );
    assert!(
        handler.max_in_flight.load(Ordering::SeqCst) > 1,
        "records of different keys were never handled at the same time"
    );
}

/// Takes a little while per record (varying, so lanes that ignored key
/// order would reorder records) and tracks how many run at once.
#[derive(Clone, Default)]
struct Ordered {
    handled: Log,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Handler for Ordered {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        // Simulated work of 0-3 ms.
        tokio::time::sleep(Duration::from_millis((record.offset % 4) as u64)).await;
        self.handled.push(Seen::of(record, &event));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The name of the record [`Watched`] holds until its release.
const HELD_UNTIL_RELEASED: &str = "held until released";

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_record_holds_up_only_its_own_key() {
    const CONCURRENCY: usize = 4;
    let fixture = Fixture::new(1).await;
    let slow = "deal-slow";
    // Keys that per-key hashing put on the slow key's lane (and so behind
    // its record) when each key had a fixed lane, plus keys of other lanes.
    let neighbours: Vec<String> = (0..)
        .map(|i| format!("deal-{i}"))
        .filter(|key| hashed_lane(key, CONCURRENCY) == hashed_lane(slow, CONCURRENCY))
        .take(4)
        .collect();
    let others: Vec<String> = (0..)
        .map(|i| format!("deal-{i}"))
        .filter(|key| hashed_lane(key, CONCURRENCY) != hashed_lane(slow, CONCURRENCY))
        .take(8)
        .collect();
    let mut events = vec![
        event(slow, HELD_UNTIL_RELEASED),
        event(slow, "slow #1"),
        event(slow, "slow #2"),
    ];
    for i in 0..3 {
        for key in neighbours.iter().chain(&others) {
            events.push(event(key, &format!("{key} #{i}")));
        }
    }
    let deliveries = fixture.publish(&events).await;
    let expected = offsets_by_key(&events, &deliveries);

    let handler = Watched::default();
    let mut settings = fixture.settings();
    settings.concurrency = CONCURRENCY;
    settings.lane_capacity = 4;
    let (token, task) = fixture.start(settings, handler.clone());

    let other_records = events.len() - 3;
    eventually(
        "every record of the other keys is handled while the slow one is held",
        || {
            let handled = handler.handled.snapshot();
            handled.iter().filter(|seen| seen.key != slow).count() == other_records
        },
    )
    .await;
    assert!(
        handler.held_started.is_cancelled(),
        "the slow record was started"
    );
    let slow_handled: Vec<Seen> = handler
        .handled
        .snapshot()
        .into_iter()
        .filter(|seen| seen.key == slow)
        .collect();
    assert!(
        slow_handled.is_empty(),
        "records of the slow key ran before the held one finished: {slow_handled:?}"
    );

    handler.release.cancel();
    eventually("every record is handled after the release", || {
        handler.handled.len() == events.len()
    })
    .await;
    stop(token, task).await;

    assert_eq!(
        handler.handled_offsets(),
        expected,
        "each key's records are handled once, in the order they were written"
    );
    handler.assert_key_exclusive_and_bounded(CONCURRENCY);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_keys_keep_their_order_through_a_small_window() {
    const CONCURRENCY: usize = 4;
    let fixture = Fixture::new(2).await;
    let keys: Vec<String> = (0..48).map(|k| format!("deal-{k}")).collect();
    let events: Vec<DealEvent> = (0..6)
        .flat_map(|i| {
            keys.iter()
                .map(move |key| event(key, &format!("{key} #{i}")))
        })
        .collect();
    let deliveries = fixture.publish(&events).await;
    let expected = offsets_by_key(&events, &deliveries);

    let handler = Watched::default();
    let mut settings = fixture.settings();
    settings.concurrency = CONCURRENCY;
    // The loop holds at most 8 records, fewer than there are keys, so it
    // keeps pausing and resuming fetches.
    settings.lane_capacity = 2;
    let (token, task) = fixture.start(settings, handler.clone());
    eventually("every record is handled", || {
        handler.handled.len() >= events.len()
    })
    .await;
    stop(token, task).await;

    assert_eq!(
        handler.handled_offsets(),
        expected,
        "each key's records are handled once, in the order they were written"
    );
    handler.assert_key_exclusive_and_bounded(CONCURRENCY);
}

/// The lane a key was given when every key had a fixed lane: a hash of the
/// key modulo the lane count.
fn hashed_lane(key: &str, lanes: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.as_bytes().to_vec().hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

/// The offsets of each key's records, in the order they were written.
fn offsets_by_key(events: &[DealEvent], deliveries: &[Delivery]) -> BTreeMap<String, Vec<i64>> {
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (event, delivery) in events.iter().zip(deliveries) {
        expected
            .entry(event.deal_id.clone())
            .or_default()
            .push(delivery.offset);
    }
    expected
}

/// Takes 0-3 ms per record, holds the record named
/// [`HELD_UNTIL_RELEASED`] until `release` is cancelled, and watches that
/// no two records of a key run at once and how many run in all.
#[derive(Clone, Default)]
struct Watched {
    handled: Log,
    release: CancellationToken,
    held_started: CancellationToken,
    running_keys: Arc<Mutex<BTreeSet<String>>>,
    overlaps: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Watched {
    fn handled_offsets(&self) -> BTreeMap<String, Vec<i64>> {
        let mut handled: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for seen in self.handled.snapshot() {
            handled.entry(seen.key).or_default().push(seen.offset);
        }
        handled
    }

    fn assert_key_exclusive_and_bounded(&self, concurrency: usize) {
        let overlaps = self.overlaps.lock().unwrap().clone();
        assert!(
            overlaps.is_empty(),
            "records started while another record of their key was running: {overlaps:?}"
        );
        let max = self.max_in_flight.load(Ordering::SeqCst);
        assert!(
            max > 1 && max <= concurrency,
            "{max} records ran at once, expected between 2 and {concurrency}"
        );
    }
}

impl Handler for Watched {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        let seen = Seen::of(record, &event);
        if !self.running_keys.lock().unwrap().insert(seen.key.clone()) {
            self.overlaps.lock().unwrap().push(seen.clone());
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if seen.name == HELD_UNTIL_RELEASED {
            self.held_started.cancel();
            self.release.cancelled().await;
        } else {
            // Simulated work of 0-3 ms.
            tokio::time::sleep(Duration::from_millis((record.offset % 4) as u64)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.running_keys.lock().unwrap().remove(&seen.key);
        self.handled.push(seen);
        Ok(())
    }
}
