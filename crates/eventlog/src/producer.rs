//! Publishing to the deal log with an idempotent producer (`acks=all`).
//! A publish returns only once the broker has acknowledged the record.

use std::time::{Duration, Instant};

use dealmesh_proto::DealEvent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::settings::KafkaSettings;
use crate::topics::Topics;
use crate::{Result, envelope, headers};

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

/// Publishes deal events. Cheap to clone.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
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
            inner: config.create()?,
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
        let sends = events.into_iter().map(|(event, bytes)| {
            self.send(
                &self.topics.deals,
                Some(event.deal_id.as_bytes()),
                bytes,
                headers::for_event_traced(event, &self.source, &trace),
            )
        });
        futures::future::try_join_all(sends).await
    }

    /// Sends one raw record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(value)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let started = Instant::now();
        let result = self.inner.send(record, Duration::from_secs(5)).await;
        if let Some(m) = &self.metrics {
            let outcome = if result.is_ok() { "acked" } else { "failed" };
            m.records
                .get_or_create(&ProduceLabels {
                    topic: topic.to_owned(),
                    outcome,
                })
                .inc();
            m.latency.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => Err(error.into()),
        }
    }

    /// Waits for every queued record to be delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.inner.flush(timeout)?)
    }
}
