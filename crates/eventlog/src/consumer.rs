//! The consumer loop every log-reading service runs.
//!
//! - Records of one key (one deal) are handled one at a time, in offset
//!   order; up to `concurrency` records of different keys run at once. A
//!   free slot takes the oldest record whose key has nothing in flight, so a
//!   slow record holds up only its own key, never keys that merely hash
//!   alike. Records without a key are ordered per partition.
//! - Fetching pauses while the loop holds `concurrency * lane_capacity`
//!   records (waiting or in flight), which bounds memory.
//! - Offsets are committed manually, and only below the lowest unfinished
//!   record of each partition, so a crash never skips a record.
//! - Before a rebalance takes partitions away, what is finished on them is
//!   committed. Records still in flight there will be redelivered to the new
//!   owner; handlers are idempotent (deterministic event ids), so that is safe.
//! - A record that fails permanently, or transiently more than
//!   `max_attempts` times, goes to the dead-letter topic with the error and
//!   its origin in headers, and the stream moves on.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::producer::EventProducer;
use crate::settings::KafkaSettings;
use crate::{Result, envelope, headers};

/// Header names on dead-lettered records.
pub mod dlq_headers {
    pub const ERROR: &str = "dlq_error";
    pub const ERROR_KIND: &str = "dlq_error_kind";
    pub const ATTEMPTS: &str = "dlq_attempts";
    pub const ORIGIN_TOPIC: &str = "dlq_origin_topic";
    pub const ORIGIN_PARTITION: &str = "dlq_origin_partition";
    pub const ORIGIN_OFFSET: &str = "dlq_origin_offset";
    pub const CONSUMER_GROUP: &str = "dlq_consumer_group";
    pub const FAILED_AT: &str = "dlq_failed_at";
}

/// A consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_millis: Option<i64>,
}

impl Record {
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Decodes the value as a deal event; an undecodable value is a
    /// permanent failure (it goes to the dead-letter topic).
    pub fn event(&self) -> Result<dealmesh_proto::DealEvent, HandleError> {
        let value = self
            .value
            .as_deref()
            .ok_or_else(|| HandleError::Permanent("record has no value".into()))?;
        envelope::decode(value).map_err(|e| HandleError::Permanent(e.to_string()))
    }
}

/// How handling a record failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandleError {
    /// Retrying will not help (undecodable, invalid): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Might work later (a dependency is down): retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
}

/// Handles one record. Must be idempotent: a record can be delivered again
/// after a crash or rebalance.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, record: &Record) -> impl Future<Output = Result<(), HandleError>> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group_id: String,
    pub topic: String,
    /// Records handled at once, each of a different key (a key's records
    /// are handled one at a time, in offset order).
    pub concurrency: usize,
    /// Records held per unit of `concurrency`: fetching pauses while the
    /// loop holds `concurrency * lane_capacity` records, waiting or in
    /// flight.
    pub lane_capacity: usize,
    pub commit_interval: Duration,
    /// Attempts for a transiently failing record before it is dead-lettered.
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl ConsumerSettings {
    pub fn new(group_id: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            topic: topic.into(),
            concurrency: 16,
            lane_capacity: 64,
            commit_interval: Duration::from_secs(1),
            max_attempts: 8,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    topic: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone)]
struct LoopMetrics {
    records: Family<OutcomeLabels, Counter>,
    retries: Counter,
    handler_seconds: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    lag: Family<PartitionLabels, Gauge>,
}

impl Default for LoopMetrics {
    fn default() -> Self {
        Self {
            records: Family::default(),
            retries: Counter::default(),
            handler_seconds: Family::new_with_constructor(
                dealmesh_runtime::metrics::latency_histogram,
            ),
            lag: Family::default(),
        }
    }
}

impl LoopMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "dealmesh_consumed_records",
            "Records handled, by topic and outcome (ok, dead_lettered)",
            metrics.records.clone(),
        );
        registry.register(
            "dealmesh_handler_retries",
            "Transient handler failures that were retried",
            metrics.retries.clone(),
        );
        registry.register(
            "dealmesh_handler_seconds",
            "Time to handle one record, retries included",
            metrics.handler_seconds.clone(),
        );
        registry.register(
            "dealmesh_consumer_lag",
            "Records between the consumer's position and the partition end",
            metrics.lag.clone(),
        );
        metrics
    }
}

/// A consumer group member running `handler` over `settings.topic`.
pub struct ConsumerLoop<H> {
    kafka: KafkaSettings,
    settings: ConsumerSettings,
    handler: Arc<H>,
    dead_letters: EventProducer,
    metrics: LoopMetrics,
}

impl<H: Handler> ConsumerLoop<H> {
    /// `dead_letters` publishes to the dead-letter topic of its `Topics`.
    pub fn new(
        kafka: KafkaSettings,
        settings: ConsumerSettings,
        handler: H,
        dead_letters: EventProducer,
    ) -> Self {
        Self {
            kafka,
            settings,
            handler: Arc::new(handler),
            dead_letters,
            metrics: LoopMetrics::default(),
        }
    }

    pub fn with_metrics(mut self, registry: &mut Registry) -> Self {
        self.metrics = LoopMetrics::register(registry);
        self
    }

    /// Runs until `shutdown` is cancelled, then stops fetching, lets the
    /// records in flight finish, commits, and returns. Records still waiting
    /// for their key are not started: they stay uncommitted and are
    /// redelivered.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let context = LoopContext {
            tracker: tracker.clone(),
            metrics: self.metrics.clone(),
        };
        let mut config = self.kafka.client_config();
        config
            .set("group.id", &self.settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000");
        for (key, value) in &self.kafka.passthrough {
            config.set(key, value);
        }
        let consumer: StreamConsumer<LoopContext> = config.create_with_context(context)?;
        consumer.subscribe(&[self.settings.topic.as_str()])?;
        tracing::info!(group = %self.settings.group_id, topic = %self.settings.topic, "consumer started");

        let concurrency = self.settings.concurrency.max(1);
        let capacity = concurrency.saturating_mul(self.settings.lane_capacity.max(1));
        let worker = Arc::new(Worker {
            handler: self.handler.clone(),
            dead_letters: self.dead_letters.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            shutdown: shutdown.clone(),
        });
        let mut scheduler = Scheduler::default();
        let mut running: JoinSet<Finished> = JoinSet::new();

        let mut commit_tick = tokio::time::interval(self.settings.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while running.len() < concurrency {
                let Some(job) = scheduler.next_ready() else {
                    break;
                };
                if lock(&tracker).is_current(&job.record, job.generation) {
                    let worker = worker.clone();
                    running.spawn(async move { worker.run(job).await });
                } else {
                    // Its partition was revoked while it waited: the new
                    // owner gets it, and its completion would be ignored.
                    scheduler.finish(&job.key);
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = running.join_next() => match joined {
                    Ok(finished) => complete(&tracker, &mut scheduler, &finished),
                    Err(error) => {
                        // The record stays unfinished, so commits never
                        // pass it; stop as a whole rather than skip it.
                        tracing::error!(%error, "handler task failed, consumer stopping");
                        break;
                    }
                },
                _ = commit_tick.tick() => commit(&consumer, &tracker, CommitMode::Async),
                message = consumer.recv(), if scheduler.held() < capacity => match message {
                    Ok(message) => {
                        let record = Record {
                            topic: message.topic().to_owned(),
                            partition: message.partition(),
                            offset: message.offset(),
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec),
                            headers: headers::to_pairs(message.headers()),
                            timestamp_millis: message.timestamp().to_millis(),
                        };
                        drop(message);
                        let generation = lock(&tracker).dispatch(&record);
                        scheduler.push(Job {
                            key: OrderKey::of(&record),
                            record,
                            generation,
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "consume failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }

        tracing::info!(
            in_flight = running.len(),
            waiting = scheduler.held().saturating_sub(running.len()),
            "consumer draining"
        );
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(finished) => complete(&tracker, &mut scheduler, &finished),
                Err(error) => tracing::error!(%error, "handler task failed"),
            }
        }
        // A synchronous commit waits for the broker for as long as it takes:
        // off the runtime's workers, so a broker that is gone cannot stall
        // the service's grace period.
        let finished = tokio::task::spawn_blocking(move || {
            commit(&consumer, &tracker, CommitMode::Sync);
            consumer.unsubscribe();
        })
        .await;
        if let Err(error) = finished {
            tracing::error!(%error, "final commit failed");
        }
        tracing::info!("consumer stopped");
        Ok(())
    }
}

/// What orders records: a key's records are handled one at a time, in
/// offset order. Records without a key are ordered within their partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OrderKey {
    Key(Vec<u8>),
    Partition(String, i32),
}

impl OrderKey {
    fn of(record: &Record) -> Self {
        match &record.key {
            Some(key) => Self::Key(key.clone()),
            None => Self::Partition(record.topic.clone(), record.partition),
        }
    }
}

struct Job {
    key: OrderKey,
    record: Record,
    generation: u64,
}

/// A job's end: `done` is `None` when shutdown cut it short.
struct Finished {
    key: OrderKey,
    done: Option<Done>,
}

struct Done {
    topic: String,
    partition: i32,
    offset: i64,
    generation: u64,
}

fn complete(tracker: &Mutex<Tracker>, scheduler: &mut Scheduler, finished: &Finished) {
    // A record cut short leaves its key held, so nothing of that key starts
    // before it (the loop is shutting down anyway).
    if let Some(done) = &finished.done {
        lock(tracker).complete(done);
        scheduler.finish(&finished.key);
    }
}

/// Records held by the loop, waiting or in flight, and which may start.
///
/// A key is *claimed* while one of its records is ready or in flight; its
/// later records wait in the key's queue, in offset order, and the next one
/// becomes ready when the claimed one finishes.
#[derive(Default)]
struct Scheduler {
    /// Records that may start, oldest first; at most one per key.
    ready: VecDeque<Job>,
    /// Every claimed key, with the records waiting behind its claimed one.
    waiting: HashMap<OrderKey, VecDeque<Job>>,
    /// Records pushed and not yet finished.
    held: usize,
}

impl Scheduler {
    fn push(&mut self, job: Job) {
        self.held += 1;
        match self.waiting.get_mut(&job.key) {
            Some(queue) => queue.push_back(job),
            None => {
                self.waiting.insert(job.key.clone(), VecDeque::new());
                self.ready.push_back(job);
            }
        }
    }

    fn next_ready(&mut self) -> Option<Job> {
        self.ready.pop_front()
    }

    /// The claimed record of `key` is finished: its next one becomes ready.
    fn finish(&mut self, key: &OrderKey) {
        let Some(queue) = self.waiting.get_mut(key) else {
            return;
        };
        self.held = self.held.saturating_sub(1);
        match queue.pop_front() {
            Some(next) => self.ready.push_back(next),
            None => {
                self.waiting.remove(key);
            }
        }
    }

    fn held(&self) -> usize {
        self.held
    }
}

struct Worker<H> {
    handler: Arc<H>,
    dead_letters: EventProducer,
    settings: ConsumerSettings,
    metrics: LoopMetrics,
    shutdown: CancellationToken,
}

impl<H: Handler> Worker<H> {
    async fn run(&self, job: Job) -> Finished {
        let done = self.process(&job.record).await.then_some(Done {
            topic: job.record.topic,
            partition: job.record.partition,
            offset: job.record.offset,
            generation: job.generation,
        });
        Finished { key: job.key, done }
    }

    /// Handles one record to a final outcome. Returns false if shutdown cut
    /// it short: the record is then left uncommitted, to be redelivered.
    async fn process(&self, record: &Record) -> bool {
        let span = tracing::info_span!(
            "consume",
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            key = record.key_str().unwrap_or_default(),
        );
        let _ = span.set_parent(headers::extract_context(&record.headers));
        let started = Instant::now();
        let result = self
            .handle_with_retries(record)
            .instrument(span.clone())
            .await;
        let outcome = match result {
            Some(Ok(())) => "ok",
            Some(Err((error, attempts))) => {
                if !self
                    .dead_letter(record, &error, attempts)
                    .instrument(span)
                    .await
                {
                    return false;
                }
                "dead_lettered"
            }
            None => return false,
        };
        let labels = OutcomeLabels {
            topic: record.topic.clone(),
            outcome,
        };
        self.metrics
            .handler_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics.records.get_or_create(&labels).inc();
        true
    }

    async fn handle_with_retries(&self, record: &Record) -> Option<Result<(), (HandleError, u32)>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.handler.handle(record).await {
                Ok(()) => return Some(Ok(())),
                Err(error @ HandleError::Permanent(_)) => return Some(Err((error, attempt))),
                Err(error @ HandleError::Transient(_)) if attempt >= self.settings.max_attempts => {
                    return Some(Err((error, attempt)));
                }
                Err(HandleError::Transient(reason)) => {
                    self.metrics.retries.inc();
                    let delay = backoff(&self.settings, attempt, record.offset);
                    tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, %reason, "handler failed, retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Sends the record to the dead-letter topic, retrying until the broker
    /// takes it: a dead letter is never dropped. False if shutdown came first.
    async fn dead_letter(&self, record: &Record, error: &HandleError, attempts: u32) -> bool {
        let (kind, message) = match error {
            HandleError::Permanent(m) => ("permanent", m),
            HandleError::Transient(m) => ("retries_exhausted", m),
        };
        tracing::warn!(error = %message, kind, attempts, "record dead-lettered");
        let failed_at = chrono::Utc::now().to_rfc3339();
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let attempts = attempts.to_string();
        let mut attempt = 0;
        loop {
            let mut dlq_headers = OwnedHeaders::new_with_capacity(record.headers.len() + 8);
            for (key, value) in &record.headers {
                dlq_headers = dlq_headers.insert(Header {
                    key: key.as_str(),
                    value: Some(value.as_slice()),
                });
            }
            for (key, value) in [
                (dlq_headers::ERROR, message.as_str()),
                (dlq_headers::ERROR_KIND, kind),
                (dlq_headers::ATTEMPTS, attempts.as_str()),
                (dlq_headers::ORIGIN_TOPIC, record.topic.as_str()),
                (dlq_headers::ORIGIN_PARTITION, partition.as_str()),
                (dlq_headers::ORIGIN_OFFSET, offset.as_str()),
                (dlq_headers::CONSUMER_GROUP, self.settings.group_id.as_str()),
                (dlq_headers::FAILED_AT, failed_at.as_str()),
            ] {
                dlq_headers = dlq_headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let sent = self
                .dead_letters
                .send(
                    &self.dead_letters.topics().dead_letter,
                    record.key.as_deref(),
                    record.value.as_deref().unwrap_or_default(),
                    dlq_headers,
                )
                .await;
            match sent {
                Ok(_) => return true,
                Err(error) => {
                    attempt += 1;
                    let delay = backoff(&self.settings, attempt, record.offset);
                    tracing::error!(%error, "dead-letter publish failed, retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, capped, then
/// scaled to between 50% and 100% so retries of many records spread out.
fn backoff(settings: &ConsumerSettings, attempt: u32, salt: i64) -> Duration {
    let exp = settings
        .retry_base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(settings.retry_max);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (salt, attempt, Instant::now()).hash(&mut hasher);
    let jitter = 0.5 + (hasher.finish() % 1000) as f64 / 2000.0;
    exp.mul_f64(jitter)
}

/// Per-partition bookkeeping of what is in flight, so commits never pass an
/// unfinished record.
#[derive(Default)]
struct Tracker {
    partitions: HashMap<(String, i32), PartitionState>,
    next_generation: u64,
}

struct PartitionState {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset dispatched.
    next: i64,
    committed: i64,
}

impl Tracker {
    fn dispatch(&mut self, record: &Record) -> u64 {
        let next_generation = &mut self.next_generation;
        let state = self
            .partitions
            .entry((record.topic.clone(), record.partition))
            .or_insert_with(|| {
                *next_generation += 1;
                PartitionState {
                    generation: *next_generation,
                    in_flight: BTreeSet::new(),
                    next: record.offset,
                    committed: -1,
                }
            });
        state.in_flight.insert(record.offset);
        state.next = state.next.max(record.offset + 1);
        state.generation
    }

    /// Whether a record dispatched under `generation` is still ours: false
    /// once its partition has been revoked.
    fn is_current(&self, record: &Record, generation: u64) -> bool {
        self.partitions
            .get(&(record.topic.clone(), record.partition))
            .is_some_and(|state| state.generation == generation)
    }

    fn complete(&mut self, done: &Done) {
        if let Some(state) = self
            .partitions
            .get_mut(&(done.topic.clone(), done.partition))
            && state.generation == done.generation
        {
            state.in_flight.remove(&done.offset);
        }
    }

    /// The offset to commit for a partition: the lowest unfinished record, or
    /// one past the last dispatched when nothing is in flight.
    fn position(state: &PartitionState) -> i64 {
        state.in_flight.first().copied().unwrap_or(state.next)
    }

    fn committable(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), state) in &self.partitions {
            if let Some(only) = only
                && only.find_partition(topic, *partition).is_none()
            {
                continue;
            }
            let position = Self::position(state);
            if position > state.committed {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(position));
            }
        }
        list
    }

    fn mark_committed(&mut self, list: &TopicPartitionList) {
        for element in list.elements() {
            if let (Some(state), Offset::Offset(offset)) = (
                self.partitions
                    .get_mut(&(element.topic().to_owned(), element.partition())),
                element.offset(),
            ) {
                state.committed = state.committed.max(offset);
            }
        }
    }

    fn forget(&mut self, list: &TopicPartitionList) {
        for element in list.elements() {
            self.partitions
                .remove(&(element.topic().to_owned(), element.partition()));
        }
    }
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

fn commit<C: Consumer<LoopContext>>(consumer: &C, tracker: &Mutex<Tracker>, mode: CommitMode) {
    let list = lock(tracker).committable(None);
    if list.count() == 0 {
        return;
    }
    match consumer.commit(&list, mode) {
        Ok(()) => lock(tracker).mark_committed(&list),
        Err(error) => tracing::warn!(%error, "offset commit failed"),
    }
}

struct LoopContext {
    tracker: Arc<Mutex<Tracker>>,
    metrics: LoopMetrics,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .lag
                        .get_or_create(&PartitionLabels {
                            topic: topic.clone(),
                            partition,
                        })
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let list = lock(&self.tracker).committable(Some(revoked));
            if list.count() > 0 {
                match consumer.commit(&list, CommitMode::Sync) {
                    Ok(()) => tracing::info!(partitions = list.count(), "committed before revoke"),
                    Err(error) => tracing::warn!(%error, "commit before revoke failed"),
                }
            }
            lock(&self.tracker).forget(revoked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: None,
            headers: vec![],
            timestamp_millis: None,
        }
    }

    fn offsets(list: &TopicPartitionList) -> Vec<(i32, i64)> {
        let mut v: Vec<_> = list
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-99)))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn commits_stop_below_the_lowest_unfinished_record() {
        let mut tracker = Tracker::default();
        let generation = tracker.dispatch(&record(0, 10));
        tracker.dispatch(&record(0, 11));
        tracker.dispatch(&record(0, 12));
        let done = |offset| Done {
            topic: "t".into(),
            partition: 0,
            offset,
            generation,
        };
        tracker.complete(&done(11));
        tracker.complete(&done(12));
        assert_eq!(offsets(&tracker.committable(None)), [(0, 10)]);
        tracker.complete(&done(10));
        assert_eq!(offsets(&tracker.committable(None)), [(0, 13)]);
        tracker.mark_committed(&tracker.committable(None));
        assert!(offsets(&tracker.committable(None)).is_empty());
    }

    #[test]
    fn completions_from_before_a_revoke_are_ignored() {
        let mut tracker = Tracker::default();
        let old = tracker.dispatch(&record(1, 5));
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 1);
        tracker.forget(&revoked);
        let new = tracker.dispatch(&record(1, 5));
        assert_ne!(old, new);
        tracker.complete(&Done {
            topic: "t".into(),
            partition: 1,
            offset: 5,
            generation: old,
        });
        assert_eq!(offsets(&tracker.committable(None)), [(1, 5)]);
    }

    fn job(key: Option<&str>, partition: i32, offset: i64) -> Job {
        let mut record = record(partition, offset);
        record.key = key.map(|k| k.as_bytes().to_vec());
        Job {
            key: OrderKey::of(&record),
            record,
            generation: 1,
        }
    }

    fn start(scheduler: &mut Scheduler) -> Vec<(i32, i64)> {
        std::iter::from_fn(|| scheduler.next_ready())
            .map(|job| (job.record.partition, job.record.offset))
            .collect()
    }

    #[test]
    fn a_busy_key_holds_up_only_its_own_records() {
        let mut scheduler = Scheduler::default();
        for (key, offset) in [("a", 0), ("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)] {
            scheduler.push(job(Some(key), 0, offset));
        }
        assert_eq!(scheduler.held(), 6);
        // One record per key may start; the others wait for their key.
        assert_eq!(start(&mut scheduler), [(0, 0), (0, 2), (0, 4)]);
        // "b" finishes while "a" is still busy: only "b" moves on.
        scheduler.finish(&OrderKey::Key(b"b".to_vec()));
        assert_eq!(start(&mut scheduler), [(0, 5)]);
        scheduler.finish(&OrderKey::Key(b"a".to_vec()));
        assert_eq!(start(&mut scheduler), [(0, 1)]);
        scheduler.finish(&OrderKey::Key(b"a".to_vec()));
        assert_eq!(start(&mut scheduler), [(0, 3)]);
        for key in ["a", "b", "c"] {
            scheduler.finish(&OrderKey::Key(key.as_bytes().to_vec()));
        }
        assert_eq!(scheduler.held(), 0);
        assert!(scheduler.waiting.is_empty());
        assert!(start(&mut scheduler).is_empty());
    }

    #[test]
    fn records_without_a_key_are_ordered_per_partition() {
        let mut scheduler = Scheduler::default();
        for (partition, offset) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            scheduler.push(job(None, partition, offset));
        }
        assert_eq!(start(&mut scheduler), [(0, 0), (1, 0)]);
        scheduler.finish(&OrderKey::Partition("t".into(), 1));
        assert_eq!(start(&mut scheduler), [(1, 1)]);
        assert_eq!(scheduler.held(), 3);
    }

    #[test]
    fn a_revoked_partition_makes_its_waiting_records_stale() {
        let mut tracker = Tracker::default();
        let old = tracker.dispatch(&record(2, 7));
        assert!(tracker.is_current(&record(2, 7), old));
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 2);
        tracker.forget(&revoked);
        assert!(!tracker.is_current(&record(2, 7), old));
        let new = tracker.dispatch(&record(2, 7));
        assert!(tracker.is_current(&record(2, 7), new));
        assert!(!tracker.is_current(&record(2, 7), old));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = ConsumerSettings::new("g", "t");
        let first = backoff(&settings, 1, 0);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let late = backoff(&settings, 30, 0);
        assert!(late <= settings.retry_max && late >= settings.retry_max / 2);
    }
}
