//! Topic names and idempotent provisioning.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::settings::KafkaSettings;
use crate::{Error, Result};

/// The topics of one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The deal event log: every fact about every deal, kept forever.
    pub deals: String,
    /// Records no consumer could process, with the error in headers.
    pub dead_letter: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            deals: format!("{prefix}deals"),
            dead_letter: format!("{prefix}deals.dlq"),
        }
    }
}

/// Creates the deal log and dead-letter topic if they do not exist; topics
/// that exist are left as they are. Safe to run on every start.
#[tracing::instrument(skip_all, fields(prefix = %settings.topic_prefix), err)]
pub async fn provision(settings: &KafkaSettings) -> Result<Topics> {
    let topics = Topics::new(&settings.topic_prefix);
    let admin: AdminClient<DefaultClientContext> = settings.client_config().create()?;
    let dlq_retention = settings.dead_letter_retention.as_millis().to_string();
    let new_topics = [
        NewTopic::new(
            &topics.deals,
            settings.deal_log_partitions,
            TopicReplication::Fixed(settings.replication_factor),
        )
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete"),
        NewTopic::new(
            &topics.dead_letter,
            settings.deal_log_partitions,
            TopicReplication::Fixed(settings.replication_factor),
        )
        .set("retention.ms", &dlq_retention),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new_topics.iter(), &options).await?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic exists")
            }
            Err((topic, code)) => {
                return Err(Error::Topic {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(topics)
}
