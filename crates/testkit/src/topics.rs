//! Topics: unique names, creation, and reading everything back for assertions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// How long a helper waits for the broker before failing the test.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a topic that was just created may take to appear in metadata.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// One record of a topic, as read back by [`read_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In record order; a header without a value reads as an empty value.
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

/// A topic prefix no other call returns, e.g. `t-0196...e3.`, so tests
/// running in parallel on one broker never see each other's topics.
pub fn unique_topic_prefix() -> String {
    format!("t-{}.", uuid::Uuid::now_v7().simple())
}

/// Creates `topic` with `partitions` partitions (replication factor 1) and
/// waits until the broker lists it. Creating an existing topic with the same
/// partition count is a no-op.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<_> = config(bootstrap)
        .create()
        .expect("cannot create a Kafka admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .unwrap_or_else(|err| panic!("cannot create topic {topic} on {bootstrap}: {err}"));
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => panic!("cannot create topic {topic} on {bootstrap}: {code}"),
        }
    }

    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    crate::blocking(move || {
        let found = partition_ids(&consumer(&bootstrap), &topic);
        assert_eq!(
            found.len(),
            partitions as usize,
            "topic {topic} already exists with another partition count"
        );
    })
    .await
}

/// Every record in `topic`, from the beginning of each partition to its end
/// as the broker reports it while reading; ordered by partition, then offset.
/// Panics if the topic does not exist.
pub async fn read_topic(bootstrap: &str, topic: &str) -> Vec<TopicRecord> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    crate::blocking(move || read_topic_blocking(&bootstrap, &topic)).await
}

/// Like [`read_topic`], decoding each value as a [`dealmesh_proto::DealEvent`]
/// envelope; panics on a record whose value is missing or does not decode.
pub async fn read_deal_events(bootstrap: &str, topic: &str) -> Vec<dealmesh_proto::DealEvent> {
    read_topic(bootstrap, topic)
        .await
        .into_iter()
        .map(|record| {
            let at = format!("{topic}/{}@{}", record.partition, record.offset);
            let value = record
                .value
                .unwrap_or_else(|| panic!("record {at} has no value, expected a DealEvent"));
            prost::Message::decode(value.as_slice())
                .unwrap_or_else(|err| panic!("record {at} is not a DealEvent: {err}"))
        })
        .collect()
}

fn read_topic_blocking(bootstrap: &str, topic: &str) -> Vec<TopicRecord> {
    let consumer = consumer(bootstrap);
    let partitions = partition_ids(&consumer, topic);
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("invalid partition offset");
    }
    consumer
        .assign(&assignment)
        .expect("cannot assign partitions");

    // The end of a partition is where librdkafka reports partition EOF, that
    // is the high watermark of the fetch responses. Not `fetch_watermarks`:
    // tansu 0.6's memory engine answers ListOffsets(latest) with the base
    // offset of the last batch + 1, which cuts multi-record batches short.
    let mut unfinished: BTreeSet<i32> = partitions.into_iter().collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !unfinished.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} on {bootstrap}: partitions {unfinished:?} did not reach their end \
             within {TIMEOUT:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
            }
            Some(Err(err)) => panic!("reading {topic} on {bootstrap}: {err}"),
            // Records appended after a partition's end was reached are not
            // part of the snapshot.
            Some(Ok(message)) if unfinished.contains(&message.partition()) => {
                records.push(TopicRecord {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    partition: message.partition(),
                    offset: message.offset(),
                });
            }
            Some(Ok(_)) => {}
        }
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    records
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// The reader's client context. librdkafka reports reaching the end of a
/// partition as an error event, which the default context logs at error
/// level; for the reader it is the expected end of the read, already handled
/// by [`read_topic_blocking`], so it is not logged. Every other error is
/// logged as before.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
        ) {
            DefaultClientContext.error(error, reason);
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer that only reads: no group membership, no commits, no topic
/// auto-creation.
fn consumer(bootstrap: &str) -> BaseConsumer<ReaderContext> {
    config(bootstrap)
        .set(
            "group.id",
            format!("dealmesh-testkit-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create_with_context(ReaderContext)
        .unwrap_or_else(|err| panic!("cannot create a Kafka consumer for {bootstrap}: {err}"))
}

/// The partition ids of `topic`, waiting a little for a topic that was just
/// created to show up in the metadata.
fn partition_ids(consumer: &BaseConsumer<ReaderContext>, topic: &str) -> Vec<i32> {
    let deadline = Instant::now() + METADATA_WAIT;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .unwrap_or_else(|err| panic!("cannot fetch metadata of topic {topic}: {err}"));
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            return partitions;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} does not exist (create it with dealmesh_testkit::create_topic)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
