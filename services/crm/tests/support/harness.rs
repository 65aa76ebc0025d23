//! A deal log of its own on the test broker and a database of its own,
//! for replays.

#![allow(dead_code)]

use std::sync::Arc;

use dealmesh_crm::replay::{self, Progress, ReplayReport, ReplaySettings};
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics};
use dealmesh_proto::DealEvent;
use dealmesh_testkit::TestDatabase;

pub struct Harness {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub producer: EventProducer,
    pub db: TestDatabase,
}

pub fn init_telemetry() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let config = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
            &dealmesh_runtime::config::MapSource::new([
                ("DEALMESH_LOG", "warn"),
                ("DEALMESH_LOG_FORMAT", "text"),
            ]),
            "dealmesh-crm-test",
        )
        .expect("telemetry config");
        std::mem::forget(dealmesh_runtime::telemetry::init(&config).expect("telemetry"));
    });
}

impl Harness {
    pub async fn new(partitions: i32) -> Self {
        init_telemetry();
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let topics = Topics::new(&prefix);
        dealmesh_testkit::create_topic(&bootstrap, &topics.deals, partitions).await;
        let kafka = KafkaSettings::new(bootstrap, prefix);
        let producer =
            EventProducer::new(&kafka, topics.clone(), "/dealmesh/test").expect("producer");
        Self {
            kafka,
            topics,
            producer,
            db: TestDatabase::create().await,
        }
    }

    pub async fn publish(&self, events: &[DealEvent]) {
        for event in events {
            self.producer.publish(event).await.expect("publish");
        }
    }

    pub fn settings(&self, schema: &str) -> ReplaySettings {
        ReplaySettings {
            kafka: self.kafka.clone(),
            topic: self.topics.deals.clone(),
            schema: schema.to_owned(),
            initial_stage: crate::story::INITIAL_STAGE.to_owned(),
            batch_size: 7,
            as_of: None,
            until: None,
        }
    }

    /// Replays the whole log into a new schema.
    pub async fn replay(&self, settings: &ReplaySettings) -> ReplayReport {
        let pool = replay::create_schema(&self.db.url, &settings.schema, 4)
            .await
            .expect("schema created");
        let report = replay::replay(&pool, settings, Arc::new(Progress::default()))
            .await
            .expect("replay");
        pool.close().await;
        report
    }
}
