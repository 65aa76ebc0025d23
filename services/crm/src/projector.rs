//! The projector: reads the deal log and applies it to the read model in
//! batches. The rows a batch writes and the partition offsets it consumed
//! commit in one PostgreSQL transaction, and on start the projector seeks to
//! the offsets stored there (not to Kafka's group offsets), so a crash at
//! any point neither loses nor doubles an event.
//!
//! Every partition of the log is assigned to this projector. Several
//! replicas may run one each: a batch locks its partitions' offset rows and
//! skips records below the stored offset, and events are deduplicated by id,
//! so a record is applied once whoever gets there first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dealmesh_eventlog::{KafkaSettings, envelope};
use dealmesh_proto::Payload;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::{AssertSqlSafe, PgPool};
use tokio_util::sync::CancellationToken;

use crate::checkpoint;
use crate::projection::{self, Decision, Position};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("topic {0} not found")]
    NoTopic(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// What one projector needs.
#[derive(Clone)]
pub struct ProjectorSettings {
    pub topic: String,
    pub batch_size: usize,
    pub linger: Duration,
    pub initial_stage: String,
    pub notify_channel: String,
}

pub struct Projector {
    pool: PgPool,
    kafka: KafkaSettings,
    settings: ProjectorSettings,
    records: Family<OutcomeLabel, Counter>,
    /// Commit batches without waiting for the WAL flush (see
    /// [`Projector::with_async_commit`]).
    async_commit: bool,
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub applied: usize,
    pub rejected: usize,
    pub duplicates: usize,
    pub skipped: usize,
    pub undecodable: usize,
    pub already_projected: usize,
    /// Applied `DealsMerged` and `DealsUnmerged` events (a replay settles
    /// merges at its end only if there were any).
    pub merges: usize,
}

impl BatchReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &BatchReport) {
        self.applied += other.applied;
        self.rejected += other.rejected;
        self.duplicates += other.duplicates;
        self.skipped += other.skipped;
        self.undecodable += other.undecodable;
        self.already_projected += other.already_projected;
        self.merges += other.merges;
    }
}

impl Projector {
    pub fn new(pool: PgPool, kafka: KafkaSettings, settings: ProjectorSettings) -> Self {
        Self {
            pool,
            kafka,
            settings,
            records: Family::default(),
            async_commit: false,
        }
    }

    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        registry.register(
            "dealmesh_crm_projected_records",
            "Deal-log records the projector handled, by outcome",
            self.records.clone(),
        );
        self
    }

    /// Commits each batch without waiting for PostgreSQL to flush it to
    /// disk (`synchronous_commit = off` for the batch's transaction). A
    /// crash of the server may then lose the last batches, but only whole:
    /// their rows and the offsets they advanced go together, so the next
    /// run projects them again. For a replay into a schema nobody reads
    /// yet; the live projector's commits are durable before commands see
    /// their outcome.
    pub fn with_async_commit(mut self) -> Self {
        self.async_commit = true;
        self
    }

    fn consumer(&self) -> Result<StreamConsumer, Error> {
        let mut config = self.kafka.client_config();
        config
            .set("group.id", "dealmesh-crm-projector")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Commands wait for the projector: a broker that does not answer
            // a fetch as soon as data arrives must not hold it for the
            // default 500 ms. KAFKA_FETCH_WAIT_MAX_MS overrides it.
            .set("fetch.wait.max.ms", "10");
        for (key, value) in &self.kafka.passthrough {
            config.set(key, value);
        }
        Ok(config.create()?)
    }

    /// Assigns every partition of the log at the stored offsets.
    #[tracing::instrument(skip_all, fields(topic = %self.settings.topic), err)]
    async fn assign(&self, consumer: &Arc<StreamConsumer>) -> Result<(), Error> {
        let topic = self.settings.topic.clone();
        let metadata_consumer = consumer.clone();
        let partitions: Vec<i32> = tokio::task::spawn_blocking(move || {
            let metadata =
                metadata_consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            Ok::<_, Error>(
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                    .unwrap_or_default(),
            )
        })
        .await
        .map_err(|_| Error::NoTopic(self.settings.topic.clone()))??;
        if partitions.is_empty() {
            return Err(Error::NoTopic(self.settings.topic.clone()));
        }
        let stored: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
            "SELECT partition, next_offset FROM projector_offsets WHERE topic = $1",
        )
        .bind(&self.settings.topic)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            let offset = stored
                .get(&partition)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            list.add_partition_offset(&self.settings.topic, partition, offset)?;
        }
        consumer.assign(&list)?;
        tracing::info!(
            partitions = list.count(),
            "projector assigned at stored offsets"
        );
        Ok(())
    }

    /// Projects until `shutdown`; `on_ready` is called once assigned.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_ready: impl FnOnce() + Send,
    ) -> Result<(), Error> {
        let consumer = Arc::new(self.consumer()?);
        // The topic may not exist yet on a fresh cluster: wait for it.
        loop {
            match self.assign(&consumer).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, "projector cannot assign yet, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        on_ready();
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                received = consumer.recv() => received.map(|m| m.detach()),
            };
            let mut batch = Vec::with_capacity(self.settings.batch_size);
            match first {
                Ok(message) => batch.push(message),
                Err(error) => {
                    tracing::warn!(%error, "consume failed");
                    continue;
                }
            }
            let linger = tokio::time::sleep(self.settings.linger);
            tokio::pin!(linger);
            while batch.len() < self.settings.batch_size {
                tokio::select! {
                    () = &mut linger => break,
                    received = consumer.recv() => match received {
                        Ok(message) => batch.push(message.detach()),
                        Err(error) => {
                            tracing::warn!(%error, "consume failed");
                            break;
                        }
                    },
                }
            }
            // A failed transaction wrote nothing: retry the same batch until
            // it commits, or stop (the stored offsets still point at it).
            let mut delay = Duration::from_millis(100);
            loop {
                match self.project_batch(&batch).await {
                    Ok(report) => {
                        tracing::debug!(?report, records = batch.len(), "batch projected");
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, "batch failed, retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        tracing::info!("projector stopped");
        Ok(())
    }

    /// Applies `batch` in one transaction with the offsets it consumed.
    #[tracing::instrument(skip_all, fields(records = batch.len()), err)]
    pub async fn project_batch(&self, batch: &[OwnedMessage]) -> Result<BatchReport, Error> {
        let mut report = BatchReport::default();
        let mut tx = self.pool.begin().await?;
        // A rebuild swapping this schema out holds the lock exclusively, so
        // no batch commits into a schema while it is being renamed away.
        // With async commit, one round trip sets it and takes the lock
        // (constant statements, no parameters).
        let setup = if self.async_commit {
            format!(
                "SET LOCAL synchronous_commit = off; {}",
                crate::rebuild::BATCH_SWAP_LOCK
            )
        } else {
            crate::rebuild::BATCH_SWAP_LOCK.to_owned()
        };
        sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(&mut *tx)
            .await?;
        let mut partitions: Vec<i32> = batch.iter().map(|m| m.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        sqlx::query(
            "INSERT INTO projector_offsets (topic, partition, next_offset)
             SELECT $1, p, 0 FROM UNNEST($2::int[]) AS t(p)
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.settings.topic)
        .bind(&partitions)
        .execute(&mut *tx)
        .await?;
        let mut next: BTreeMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
            "SELECT partition, next_offset FROM projector_offsets
             WHERE topic = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE",
        )
        .bind(&self.settings.topic)
        .bind(&partitions)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let floors = next.clone();
        // Decode first, so the batch can read and lock what it needs once.
        let mut work = Vec::with_capacity(batch.len());
        for message in batch {
            let partition = message.partition();
            let offset = message.offset();
            let floor = next.get(&partition).copied().unwrap_or(0);
            if offset < floor {
                report.already_projected += 1;
                continue;
            }
            let decoded = match message.payload() {
                None => Err("record has no value".to_owned()),
                Some(bytes) => envelope::decode(bytes).map_err(|e| e.to_string()),
            };
            let position = Position {
                topic: message.topic().to_owned(),
                partition,
                offset,
            };
            next.insert(partition, offset + 1);
            work.push((message, position, decoded));
        }
        let events: Vec<&dealmesh_proto::DealEvent> = work
            .iter()
            .filter_map(|(_, _, decoded)| decoded.as_ref().ok())
            .collect();
        let mut applier =
            projection::Batch::begin(&mut tx, &events, &self.settings.initial_stage).await?;
        for (message, position, decoded) in &work {
            match decoded {
                Ok(event) => {
                    let bytes = message.payload().unwrap_or_default();
                    let decision = applier.apply(&mut tx, event, bytes, position).await?;
                    if matches!(decision, Decision::Applied { .. })
                        && matches!(
                            event.payload,
                            Some(Payload::DealsMerged(_) | Payload::DealsUnmerged(_))
                        )
                    {
                        report.merges += 1;
                    }
                    match decision {
                        Decision::Applied { .. } | Decision::Ignored { .. } => report.applied += 1,
                        Decision::Rejected { .. } => report.rejected += 1,
                        Decision::Duplicate => report.duplicates += 1,
                        Decision::Skipped => report.skipped += 1,
                    }
                }
                Err(error) => {
                    report.undecodable += 1;
                    skip_record(&mut tx, message, position, error).await?;
                }
            }
        }
        applier.finish(&mut tx).await?;
        let consumed: Vec<checkpoint::Consumed<'_>> = work
            .iter()
            .map(|(message, position, _)| checkpoint::Consumed {
                partition: position.partition,
                offset: position.offset,
                key: message.key(),
                value: message.payload(),
            })
            .collect();
        checkpoint::record(&mut tx, &self.settings.topic, &floors, &consumed).await?;
        // The notification is delivered on commit: commands waiting for
        // their outcome look again. Joined in so that one round trip does
        // both (a CTE that is not referenced would not run).
        sqlx::query(
            "WITH notified AS (SELECT pg_notify($4, ''))
             UPDATE projector_offsets o SET next_offset = GREATEST(o.next_offset, t.n)
             FROM UNNEST($2::int[], $3::bigint[]) AS t(p, n), notified
             WHERE o.topic = $1 AND o.partition = t.p",
        )
        .bind(&self.settings.topic)
        .bind(next.keys().copied().collect::<Vec<_>>())
        .bind(next.values().copied().collect::<Vec<_>>())
        .bind(&self.settings.notify_channel)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for (outcome, n) in [
            ("applied", report.applied),
            ("rejected", report.rejected),
            ("duplicate", report.duplicates),
            ("skipped", report.skipped),
            ("undecodable", report.undecodable),
        ] {
            if n > 0 {
                self.records
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(n as u64);
            }
        }
        Ok(report)
    }
}

/// Keeps a record that does not decode, for inspection, and moves on.
async fn skip_record(
    conn: &mut sqlx::PgConnection,
    message: &OwnedMessage,
    position: &Position,
    error: &str,
) -> Result<(), Error> {
    tracing::warn!(partition = position.partition, offset = position.offset, %error, "undecodable record skipped");
    sqlx::query(
        "INSERT INTO skipped_records (topic, partition, \"offset\", error, record_key, value)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .bind(error)
    .bind(message.key())
    .bind(message.payload())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
