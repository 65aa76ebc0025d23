//! The one path every channel takes: validated submissions become
//! `DealSourced` events on the deal log, exactly once per idempotency key.
//!
//! 1. The events are built and recorded in PostgreSQL (`pending`) and that
//!    is committed, so an event id is fixed before anything is sent. The
//!    insert reports which keys were new: their envelopes are sent from
//!    memory, never read back.
//! 2. In a second transaction the rows are locked, pending ones are sent and
//!    their broker acknowledgements recorded. A concurrent retry of the same
//!    key waits on the row lock and then answers from the acknowledged row.
//!
//! The two commits cannot become one: a send that reached the broker before
//! a crash must find its event id on record, or the retry would write the
//! deal again under a new id. If the process dies between the send and the
//! second commit, a retry re-sends the stored envelope byte for byte: the
//! log may then hold the same event id twice, which every consumer drops as
//! a duplicate.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use dealmesh_eventlog::{EventProducer, envelope, ids};
use dealmesh_proto::v1::{self, Channel, CompanyKeyKind, DealSourced};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::company::KeyKind;
use crate::validate::Submission;

pub const SERVICE: &str = "dealmesh-ingest";
/// The CloudEvents `source` of every event ingest writes.
pub const CE_SOURCE: &str = "/dealmesh/ingest";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] dealmesh_eventlog::Error),
    #[error("stored envelope is corrupt: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Proof that a submission is on the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: Uuid,
    pub deal_id: Uuid,
    pub company_key: String,
    pub partition: i32,
    pub offset: i64,
    pub duplicate: bool,
}

/// Why one submission of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The idempotency key was used before for different content.
    KeyReused,
}

#[derive(Clone)]
pub struct Ingestor {
    pool: PgPool,
    producer: EventProducer,
}

/// A locked submission row, without its envelope.
#[derive(sqlx::FromRow)]
struct Row {
    /// 1-based position of its key in the lock query's key list.
    ordinal: i64,
    fingerprint: Vec<u8>,
    event_id: Uuid,
    deal_id: Uuid,
    company_key: String,
    kafka_partition: Option<i32>,
    kafka_offset: Option<i64>,
}

impl Ingestor {
    pub fn new(pool: PgPool, producer: EventProducer) -> Self {
        Self { pool, producer }
    }

    /// Waits for queued records to reach the broker.
    pub fn flush(&self, timeout: std::time::Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }

    /// Lands every submission on the log, answering in order. Submissions
    /// sharing an idempotency key share one event.
    #[tracing::instrument(skip_all, fields(count = submissions.len()), err)]
    pub async fn submit(
        &self,
        submissions: &[Submission],
        channel: Channel,
        correlation_id: &str,
    ) -> Result<Vec<Result<Receipt, Refusal>>> {
        if submissions.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = self
            .record(submissions, channel, correlation_id, Utc::now())
            .await?;
        self.deliver(submissions, recorded).await
    }

    /// Step 1: builds each distinct key's event and commits the new ones.
    async fn record(
        &self,
        submissions: &[Submission],
        channel: Channel,
        correlation_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let fingerprints: Vec<Vec<u8>> = submissions.iter().map(Submission::fingerprint).collect();

        // Each distinct key once, in key order, so that two calls sharing
        // keys wait on each other's rows in the same order and never
        // deadlock. The sort is stable: the first submission of a key in the
        // call is the one that becomes its event.
        let key = |i: usize| {
            (
                submissions[i].source.as_str(),
                submissions[i].idempotency_key.as_str(),
            )
        };
        let mut order: Vec<usize> = (0..submissions.len()).collect();
        order.sort_by(|&a, &b| key(a).cmp(&key(b)));
        let mut entries: Vec<Entry> = Vec::with_capacity(submissions.len());
        let mut entry_of = vec![0; submissions.len()];
        for &index in &order {
            if entries
                .last()
                .is_none_or(|last| key(last.first) != key(index))
            {
                entries.push(Entry::new(
                    index,
                    &submissions[index],
                    channel,
                    now,
                    correlation_id,
                )?);
            }
            entry_of[index] = entries.len() - 1;
        }

        // 1. Committed before anything is sent: from here on the event id of
        // a new key is fixed, whatever happens to this call.
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO ingest_submissions
                 (source, idempotency_key, fingerprint, event_id, deal_id, company_key, envelope)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::uuid[], $6::text[], $7::bytea[])
             ON CONFLICT (source, idempotency_key) DO NOTHING
             RETURNING event_id",
        )
        .bind(entries.iter().map(|e| key(e.first).0).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| key(e.first).1).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| fingerprints[e.first].as_slice()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.deal_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.company_key.as_str()).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.envelope.as_slice()).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        Ok(Recorded {
            fingerprints,
            entries,
            entry_of,
            inserted: inserted.into_iter().collect(),
        })
    }

    /// Steps 2 and 3: sends what is pending and answers every submission.
    async fn deliver(
        &self,
        submissions: &[Submission],
        recorded: Recorded,
    ) -> Result<Vec<Result<Receipt, Refusal>>> {
        let Recorded {
            fingerprints,
            entries,
            entry_of,
            inserted,
        } = recorded;
        let key = |i: usize| {
            (
                submissions[i].source.as_str(),
                submissions[i].idempotency_key.as_str(),
            )
        };
        // 2. Locked while sending, so a concurrent retry of a key waits here
        // and then answers from the acknowledged row. Only the narrow
        // columns come back: the envelope of a row inserted above is already
        // in memory.
        let mut tx = self.pool.begin().await?;
        let locked: Vec<Row> = sqlx::query_as(
            "SELECT k.ordinal, s.fingerprint, s.event_id, s.deal_id, s.company_key,
                    s.kafka_partition, s.kafka_offset
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(source, idempotency_key, ordinal)
             JOIN ingest_submissions s USING (source, idempotency_key)
             ORDER BY s.source, s.idempotency_key
             FOR NO KEY UPDATE OF s",
        )
        .bind(entries.iter().map(|e| key(e.first).0).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| key(e.first).1).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut rows: Vec<Option<Row>> = Vec::new();
        rows.resize_with(entries.len(), || None);
        for row in locked {
            let slot = usize::try_from(row.ordinal - 1)
                .ok()
                .and_then(|i| rows.get_mut(i));
            if let Some(slot) = slot {
                *slot = Some(row);
            }
        }

        // A pending row this call did not insert (an earlier call died
        // before recording its receipt) is re-sent from its stored envelope.
        let pending: Vec<usize> = (0..entries.len())
            .filter(|&i| rows[i].as_ref().is_some_and(|r| r.kafka_offset.is_none()))
            .collect();
        let stored_ids: Vec<Uuid> = pending
            .iter()
            .filter_map(|&i| rows[i].as_ref())
            .map(|row| row.event_id)
            .filter(|id| !inserted.contains(id))
            .collect();
        let stored: HashMap<Uuid, Vec<u8>> = if stored_ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (Uuid, Vec<u8>)>(
                "SELECT event_id, envelope FROM ingest_submissions WHERE event_id = ANY($1)",
            )
            .bind(&stored_ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };

        // Every pending row is sent once, concurrently; the producer keeps
        // per-partition order.
        let sends = pending.iter().map(|&i| {
            let entry = &entries[i];
            let event_id = rows[i].as_ref().map(|row| row.event_id);
            let stored = event_id
                .filter(|id| !inserted.contains(id))
                .and_then(|id| stored.get(&id));
            async move {
                let delivery = match stored {
                    Some(bytes) => {
                        let event = DealEvent::decode(bytes.as_slice())?;
                        self.producer.publish_encoded(&event, bytes).await?
                    }
                    None => {
                        self.producer
                            .publish_encoded(&entry.event, &entry.envelope)
                            .await?
                    }
                };
                Ok::<_, Error>(delivery)
            }
        });
        let deliveries = futures::future::try_join_all(sends).await?;

        // 3. The receipts. The update touches no indexed column, so with the
        // free space the table keeps on each page it stays on the page (HOT).
        if !pending.is_empty() {
            let mut acked_ids = Vec::with_capacity(pending.len());
            let mut partitions = Vec::with_capacity(pending.len());
            let mut offsets = Vec::with_capacity(pending.len());
            for (&i, delivery) in pending.iter().zip(&deliveries) {
                if let Some(row) = rows[i].as_mut() {
                    acked_ids.push(row.event_id);
                    partitions.push(delivery.partition);
                    offsets.push(delivery.offset);
                    row.kafka_partition = Some(delivery.partition);
                    row.kafka_offset = Some(delivery.offset);
                }
            }
            sqlx::query(
                "UPDATE ingest_submissions s
                 SET kafka_partition = u.kafka_partition, kafka_offset = u.kafka_offset, acked_at = now()
                 FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]) AS u(event_id, kafka_partition, kafka_offset)
                 WHERE s.event_id = u.event_id",
            )
            .bind(&acked_ids)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        // The first submission of a key that was pending in this call gets
        // the fresh receipt; every other one (earlier calls, repeats within
        // this batch) is a duplicate.
        let mut fresh = vec![false; entries.len()];
        for &i in &pending {
            fresh[i] = true;
        }
        Ok((0..submissions.len())
            .map(|index| {
                let e = entry_of[index];
                let Some(row) = rows[e].as_ref() else {
                    // Unreachable: every key was inserted or already present.
                    return Err(Refusal::KeyReused);
                };
                if row.fingerprint != fingerprints[index] {
                    return Err(Refusal::KeyReused);
                }
                let duplicate = !(fresh[e] && entries[e].first == index);
                Ok(Receipt {
                    event_id: row.event_id,
                    deal_id: row.deal_id,
                    company_key: row.company_key.clone(),
                    partition: row.kafka_partition.unwrap_or(-1),
                    offset: row.kafka_offset.unwrap_or(-1),
                    duplicate,
                })
            })
            .collect())
    }
}

/// A call's submissions once recorded.
struct Recorded {
    /// By submission index.
    fingerprints: Vec<Vec<u8>>,
    /// Each distinct key, in key order.
    entries: Vec<Entry>,
    /// The entry of each submission, by submission index.
    entry_of: Vec<usize>,
    /// The event ids this call inserted: their envelopes are in `entries`.
    inserted: HashSet<Uuid>,
}

/// One distinct idempotency key of a call, and the event it becomes if the
/// key is new.
struct Entry {
    /// The index of the key's first submission in the call.
    first: usize,
    event_id: Uuid,
    deal_id: Uuid,
    company_key: String,
    event: DealEvent,
    envelope: Vec<u8>,
}

impl Entry {
    fn new(
        first: usize,
        submission: &Submission,
        channel: Channel,
        now: DateTime<Utc>,
        correlation_id: &str,
    ) -> Result<Self> {
        let event_id = ids::derived_event_id(
            now,
            &[
                b"ingest",
                submission.source.as_bytes(),
                submission.idempotency_key.as_bytes(),
            ],
        );
        let deal_id = submission.company_key.deal_id();
        let event = build_event(submission, event_id, deal_id, channel, now, correlation_id);
        let envelope = envelope::encode(&event)?;
        Ok(Self {
            first,
            event_id,
            deal_id,
            company_key: submission.company_key.as_canonical_string(),
            event,
            envelope,
        })
    }
}

/// The `DealSourced` event for a submission first seen at `now`.
fn build_event(
    submission: &Submission,
    event_id: Uuid,
    deal_id: Uuid,
    channel: Channel,
    now: DateTime<Utc>,
    correlation_id: &str,
) -> DealEvent {
    let kind = match submission.company_key.kind() {
        KeyKind::Domain => CompanyKeyKind::Domain,
        KeyKind::GithubOwner => CompanyKeyKind::GithubOwner,
        KeyKind::Name => CompanyKeyKind::Name,
    };
    DealEvent {
        event_id: event_id.to_string(),
        deal_id: deal_id.to_string(),
        occurred_at: Some(envelope::timestamp(now)),
        actor: Some(envelope::service_actor(SERVICE)),
        correlation_id: correlation_id.to_owned(),
        causation_id: String::new(),
        expected_version: None,
        idempotency_key: submission.idempotency_key.clone(),
        payload: Some(Payload::DealSourced(DealSourced {
            source: submission.source.clone(),
            channel: channel as i32,
            external_id: submission.external_id.clone(),
            name: submission.name.clone(),
            website: submission.website.clone(),
            github_owner: submission.github_owner.clone(),
            github_repo: submission.github_repo.clone(),
            description: submission.description.clone(),
            attributes: submission.attributes.clone(),
            company_key: Some(v1::CompanyKey {
                kind: kind as i32,
                value: submission.company_key.value().to_owned(),
            }),
            source_url: submission.source_url.clone(),
            seen_at: Some(envelope::timestamp(now)),
        })),
    }
}

#[cfg(test)]
mod tests {
    use dealmesh_eventlog::{KafkaSettings, Topics};
    use dealmesh_proto::v1::DealSubmission;

    use super::*;

    fn submission(key: &str) -> Submission {
        crate::validate::validate(
            DealSubmission {
                idempotency_key: key.into(),
                source: "tests".into(),
                name: "Acme Robotics".into(),
                website: "https://acme-robotics.io".into(),
                ..Default::default()
            },
            "",
        )
        .expect("valid submission")
    }

    /// A call that died after recording its events and before sending them
    /// leaves them pending; the retry sends the stored envelope, not a new
    /// one, and records its receipt.
    #[tokio::test]
    async fn a_retry_after_a_crash_before_sending_sends_the_stored_envelope() {
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let topics = Topics::new(&prefix);
        dealmesh_testkit::create_topic(&bootstrap, &topics.deals, 3).await;
        let db = dealmesh_testkit::TestDatabase::create().await;
        crate::app::MIGRATOR
            .run(&db.pool)
            .await
            .expect("migrations");
        let producer = EventProducer::new(
            &KafkaSettings::new(&bootstrap, &prefix),
            topics.clone(),
            CE_SOURCE,
        )
        .expect("producer");
        let ingestor = Ingestor::new(db.pool.clone(), producer);

        let deals = [submission("crashed-1"), submission("crashed-2")];
        let recorded = ingestor
            .record(&deals, Channel::Grpc, "first-attempt", Utc::now())
            .await
            .expect("recorded");
        assert_eq!(recorded.inserted.len(), 2);
        // The process dies here. The retry comes later, with another
        // correlation id, so a rebuilt envelope would differ.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let stored: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT event_id, envelope FROM ingest_submissions ORDER BY idempotency_key",
        )
        .fetch_all(&db.pool)
        .await
        .expect("stored rows");

        let receipts = ingestor
            .submit(&deals, Channel::Grpc, "retry")
            .await
            .expect("retry");
        let receipts: Vec<Receipt> = receipts
            .into_iter()
            .map(|r| r.expect("a receipt"))
            .collect();
        for (receipt, (event_id, _)) in receipts.iter().zip(&stored) {
            assert_eq!(receipt.event_id, *event_id);
            assert!(!receipt.duplicate, "the retry is the first send");
        }

        let again = ingestor
            .submit(&deals, Channel::Grpc, "another retry")
            .await
            .expect("second retry");
        for (answer, receipt) in again.into_iter().zip(&receipts) {
            let answer = answer.expect("a receipt");
            assert!(answer.duplicate);
            assert_eq!(
                (answer.event_id, answer.partition, answer.offset),
                (receipt.event_id, receipt.partition, receipt.offset)
            );
        }

        let mut records = dealmesh_testkit::read_topic(&bootstrap, &topics.deals).await;
        records.sort_by_key(|r| {
            DealEvent::decode(r.value.as_deref().unwrap_or_default())
                .map(|e| e.idempotency_key)
                .unwrap_or_default()
        });
        let values: Vec<&[u8]> = records
            .iter()
            .map(|r| r.value.as_deref().unwrap_or_default())
            .collect();
        let expected: Vec<&[u8]> = stored.iter().map(|(_, e)| e.as_slice()).collect();
        assert_eq!(
            values, expected,
            "the stored envelopes, byte for byte, once each"
        );
        let event = DealEvent::decode(values[0]).expect("an envelope");
        assert_eq!(event.correlation_id, "first-attempt");
    }
}
