//! The deal event log on Kafka, as every service uses it: settings and topic
//! provisioning, the envelope with deterministic event ids, CloudEvents and
//! W3C trace-context headers, an idempotent producer, and a consumer loop
//! with per-key ordering, safe offset commits and a dead-letter topic.

pub mod consumer;
pub mod envelope;
pub mod headers;
pub mod ids;
pub mod producer;
pub mod settings;
pub mod topics;

pub use consumer::{ConsumerLoop, ConsumerSettings, HandleError, Handler, Record};
pub use producer::{Delivery, EventProducer};
pub use settings::KafkaSettings;
pub use topics::Topics;

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("cannot decode event: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid event: {0}")]
    InvalidEvent(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
