//! Publishing to the deal log with an idempotent producer (`acks=all`).
//! A publish returns only once the broker has acknowledged its records.
//!
//! Records are handed to librdkafka in one go and their acknowledgements
//! gathered by the producer's delivery callback into one shared [`Acks`]
//! per call, which wakes the caller once: a call of many records costs one
//! wake-up, not a future and a channel per record.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dealmesh_proto::DealEvent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

use crate::settings::KafkaSettings;
use crate::topics::Topics;
use crate::{Result, envelope, headers};

/// How long a call waits for room in librdkafka's queue
/// (`queue.buffering.max.messages`) before it fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a call whose record did not fit in the queue tries again.
const QUEUE_RETRY: Duration = Duration::from_millis(10);

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ProduceLabels {
    topic: String,
    outcome: &'static str,
}

#[derive(Clone)]
struct ProducerMetrics {
    records: Family<ProduceLabels, Counter>,
    latency: Histogram,
}

impl ProducerMetrics {
    fn counter(&self, topic: &str, outcome: &'static str) -> Counter {
        self.records
            .get_or_create(&ProduceLabels {
                topic: topic.to_owned(),
                outcome,
            })
            .clone()
    }
}

/// A record as sent: key, value, headers.
type RawRecord<'a> = (Option<&'a [u8]>, &'a [u8], OwnedHeaders);

/// The acknowledgements of one call's records, filled in by the delivery
/// callback on librdkafka's polling thread.
struct Acks {
    state: Mutex<AckState>,
    /// Woken once: when the last record is acknowledged, or the first fails.
    done: Notify,
    metrics: Option<AckMetrics>,
}

struct AckState {
    deliveries: Vec<Delivery>,
    /// Records not yet acknowledged. It reaches zero only once every record
    /// was queued and answered.
    outstanding: usize,
    failure: Option<KafkaError>,
}

/// A call's metrics, looked up once for all of its records.
struct AckMetrics {
    acked: Counter,
    failed: Counter,
    latency: Histogram,
    started: Instant,
}

impl Acks {
    fn new(records: usize, metrics: Option<AckMetrics>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(AckState {
                deliveries: vec![
                    Delivery {
                        partition: -1,
                        offset: -1,
                    };
                    records
                ],
                outstanding: records,
                failure: None,
            }),
            done: Notify::new(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        // The state stays consistent whatever a panicking holder did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record `index` landed, or failed.
    fn record(&self, index: usize, outcome: Result<Delivery, KafkaError>) {
        if let Some(m) = &self.metrics {
            match outcome {
                Ok(_) => m.acked.inc(),
                Err(_) => m.failed.inc(),
            };
            m.latency.observe(m.started.elapsed().as_secs_f64());
        }
        let mut state = self.lock();
        match outcome {
            Ok(delivery) => state.deliveries[index] = delivery,
            Err(error) => {
                state.failure.get_or_insert(error);
            }
        }
        state.outstanding -= 1;
        if state.outstanding == 0 || state.failure.is_some() {
            // Stores a permit if the caller is not waiting yet.
            self.done.notify_one();
        }
    }

    /// Waits for every record, or the first failure.
    async fn wait(&self) -> Result<Vec<Delivery>> {
        loop {
            {
                let mut state = self.lock();
                if let Some(error) = state.failure.take() {
                    return Err(error.into());
                }
                if state.outstanding == 0 {
                    return Ok(std::mem::take(&mut state.deliveries));
                }
            }
            self.done.notified().await;
        }
    }
}

/// The producer's context: hands each acknowledgement to its call's
/// [`Acks`].
struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<(Arc<Acks>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (acks, index) = *opaque;
        let outcome = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _)) => Err(error.clone()),
        };
        acks.record(index, outcome);
    }
}

/// Publishes deal events. Cheap to clone.
#[derive(Clone)]
pub struct EventProducer {
    inner: Arc<ThreadedProducer<AckContext>>,
    topics: Topics,
    source: String,
    metrics: Option<ProducerMetrics>,
}

impl EventProducer {
    /// `source` is the CloudEvents source of every record, e.g.
    /// `/dealmesh/ingest`.
    pub fn new(settings: &KafkaSettings, topics: Topics, source: &str) -> Result<Self> {
        let mut config = settings.client_config();
        // Idempotence gives exactly-once, in-order delivery per partition
        // from this producer's retries; acks=all waits for the ISR.
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("delivery.timeout.ms", "30000");
        for (key, value) in &settings.passthrough {
            config.set(key, value);
        }
        Ok(Self {
            inner: Arc::new(config.create_with_context(AckContext)?),
            topics,
            source: source.to_owned(),
            metrics: None,
        })
    }

    pub fn with_metrics(mut self, registry: &mut Registry) -> Self {
        let records = Family::<ProduceLabels, Counter>::default();
        let latency = dealmesh_runtime::metrics::latency_histogram();
        registry.register(
            "dealmesh_produced_records",
            "Records sent to Kafka, by topic and outcome",
            records.clone(),
        );
        registry.register(
            "dealmesh_produce_seconds",
            "Time from send to broker acknowledgement",
            latency.clone(),
        );
        self.metrics = Some(ProducerMetrics { records, latency });
        self
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Encodes and publishes `event` to the deal log, keyed by its deal id.
    pub async fn publish(&self, event: &DealEvent) -> Result<Delivery> {
        let bytes = envelope::encode(event)?;
        self.publish_encoded(event, &bytes).await
    }

    /// Publishes an envelope already encoded as `bytes` (which must be
    /// `event` encoded); used to re-send an event byte for byte.
    pub async fn publish_encoded(&self, event: &DealEvent, bytes: &[u8]) -> Result<Delivery> {
        let headers = headers::for_event(event, &self.source);
        self.send(
            &self.topics.deals,
            Some(event.deal_id.as_bytes()),
            bytes,
            headers,
        )
        .await
    }

    /// Publishes many encoded envelopes (each `(event, event encoded)`) at
    /// once, answering in order once the broker has acknowledged them all;
    /// the first failure fails the call. The current span's trace context is
    /// taken once for all of them.
    pub async fn publish_all_encoded<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a DealEvent, &'a [u8])>,
    ) -> Result<Vec<Delivery>> {
        let trace = headers::current_trace();
        let records: Vec<_> = events
            .into_iter()
            .map(|(event, bytes)| {
                (
                    Some(event.deal_id.as_bytes()),
                    bytes,
                    headers::for_event_traced(event, &self.source, &trace),
                )
            })
            .collect();
        self.send_all(&self.topics.deals, records).await
    }

    /// Sends one raw record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        let mut deliveries = self.send_all(topic, vec![(key, value, headers)]).await?;
        Ok(deliveries.remove(0))
    }

    /// Sends raw records (key, value, headers) to `topic` and waits until
    /// the broker has acknowledged them all, or one failed.
    async fn send_all(&self, topic: &str, records: Vec<RawRecord<'_>>) -> Result<Vec<Delivery>> {
        let metrics = self.metrics.as_ref().map(|m| AckMetrics {
            acked: m.counter(topic, "acked"),
            failed: m.counter(topic, "failed"),
            latency: m.latency.clone(),
            started: Instant::now(),
        });
        let acks = Acks::new(records.len(), metrics);
        if let Some(error) = self.enqueue(topic, records, &acks).await {
            // The records queued before it still go out; nobody waits for
            // them.
            return Err(error.into());
        }
        acks.wait().await
    }

    /// Hands the records to librdkafka, waiting for room in its queue when
    /// it is full; the error that stopped it, if one did.
    async fn enqueue(
        &self,
        topic: &str,
        records: Vec<RawRecord<'_>>,
        acks: &Arc<Acks>,
    ) -> Option<KafkaError> {
        for (index, (key, value, headers)) in records.into_iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(topic, Box::new((acks.clone(), index)))
                .payload(value)
                .headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            let queued_at = Instant::now();
            loop {
                match self.inner.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if queued_at.elapsed() < QUEUE_TIMEOUT =>
                    {
                        record = back;
                        tokio::time::sleep(QUEUE_RETRY).await;
                    }
                    Err((error, _)) => {
                        if let Some(m) = &acks.metrics {
                            m.failed.inc();
                        }
                        return Some(error);
                    }
                }
            }
        }
        None
    }

    /// Waits for every queued record to be delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.inner.flush(timeout)?)
    }
}
