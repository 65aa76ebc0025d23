//! Rebuild rate against a real broker and PostgreSQL (the test ones:
//! `DEALMESH_TEST_KAFKA_BOOTSTRAP` or a tansu of its own, and
//! `DEALMESH_TEST_DATABASE_URL`), in one run beside the two floors it is
//! measured against: a bare consumer reading (and decoding) the same log,
//! and a bare `COPY` of the same `events` rows into PostgreSQL.
//!
//! ```text
//! cargo run --release -p dealmesh-crm --example rebuild_bench -- [events=100000] [partitions=3] [batch=1000]
//! ```
//!
//! Prints events/s for each, the rebuild's share of the slower floor, and
//! the peak resident memory (VmHWM) before and during the rebuild.

use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use dealmesh_crm::replay::{self, Progress, ReplaySettings};
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics, envelope};
use dealmesh_proto::v1::*;
use dealmesh_proto::{DealEvent, Payload};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Per deal: sourced, enriched, scored, a stage move and a note.
fn mix(n: usize) -> Vec<DealEvent> {
    let start = Utc::now() - TimeDelta::days(30);
    let mut events = Vec::with_capacity(n);
    let mut i = 0;
    while events.len() < n {
        let deal = uuid::Uuid::now_v7().to_string();
        let name = format!("Company {i}");
        let payloads = [
            Payload::DealSourced(DealSourced {
                source: "github".into(),
                name: name.clone(),
                website: format!("https://company{i}.example"),
                description: "a company".into(),
                ..Default::default()
            }),
            Payload::DealEnriched(DealEnriched {
                analysis: Some(Analysis {
                    summary: format!("{name} builds developer tools"),
                    sector: ["devtools", "fintech", "health", "energy"][i % 4].into(),
                    business_model: "saas".into(),
                    risks: vec!["competition".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Payload::DealScored(DealScored {
                score: (i * 7919 % 10000) as f64 / 100.0,
                model_version: "thesis-v1".into(),
                ..Default::default()
            }),
            Payload::StageChanged(StageChanged {
                from_stage: "sourced".into(),
                to_stage: "screening".into(),
                reason: String::new(),
            }),
            Payload::NoteAdded(NoteAdded {
                note_id: uuid::Uuid::now_v7().to_string(),
                body: "first call went well".into(),
            }),
        ];
        for (k, payload) in payloads.into_iter().enumerate() {
            if events.len() < n {
                events.push(DealEvent {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    deal_id: deal.clone(),
                    occurred_at: Some(envelope::timestamp(
                        start + TimeDelta::seconds(i as i64) + TimeDelta::milliseconds(k as i64),
                    )),
                    actor: Some(envelope::service_actor("bench")),
                    correlation_id: "bench".into(),
                    causation_id: String::new(),
                    expected_version: None,
                    idempotency_key: String::new(),
                    payload: Some(payload),
                });
            }
        }
        i += 1;
    }
    events
}

fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(100_000);
    let partitions = args.get(1).copied().unwrap_or(3) as i32;
    let batch = args.get(2).copied().unwrap_or(1000);

    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let topics = Topics::new(&prefix);
    dealmesh_testkit::create_topic(&bootstrap, &topics.deals, partitions).await;
    let kafka = KafkaSettings::new(bootstrap.clone(), prefix.clone());
    let producer = EventProducer::new(&kafka, topics.clone(), "/dealmesh/bench")?;
    let events = mix(n);
    let started = Instant::now();
    for chunk in events.chunks(5000) {
        futures::future::try_join_all(chunk.iter().map(|e| producer.publish(e))).await?;
    }
    println!(
        "published {n} events on {partitions} partitions in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Floor 1: a bare consumer reading and decoding every partition to its end.
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(&topics.deals, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let started = Instant::now();
    let (mut read, mut ended) = (0, 0);
    while ended < partitions {
        match consumer.recv().await {
            Ok(message) => {
                envelope::decode(message.payload().unwrap_or_default())?;
                read += 1;
            }
            Err(KafkaError::PartitionEOF(_)) => ended += 1,
            Err(error) => return Err(error.into()),
        }
    }
    let bare_consumer = read as f64 / started.elapsed().as_secs_f64();
    drop(consumer);

    // Floor 2: COPY of the same `events` rows.
    let database = dealmesh_testkit::TestDatabase::create().await;
    let pool = replay::create_schema(&database.url, "copy_floor", 4).await?;
    let mut csv = String::new();
    for (i, e) in events.iter().enumerate() {
        csv.push_str(&format!(
            "{},{},{},{},bench,5,bench,\"\",\"\",,{},0,{},\\x{},applied,,\"\",0\n",
            e.event_id,
            e.deal_id,
            envelope::type_name(e),
            e.occurred_at
                .as_ref()
                .and_then(envelope::from_timestamp)
                .unwrap_or_default()
                .to_rfc3339(),
            topics.deals,
            i,
            hex(&envelope::encode(e)?)
        ));
    }
    drop(events);
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY events FROM STDIN WITH (FORMAT csv)")
        .await?;
    copy.send(csv.as_bytes()).await?;
    copy.finish().await?;
    let bare_copy = n as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    drop(csv);
    pool.close().await;

    // The rebuild: fresh schema, every partition in parallel, to the end.
    let settings = ReplaySettings {
        kafka: kafka.clone(),
        topic: topics.deals.clone(),
        schema: "rebuilt".into(),
        initial_stage: "sourced".into(),
        batch_size: batch,
        as_of: None,
        until: None,
    };
    let pool = replay::create_schema(&database.url, "rebuilt", (partitions as u32) + 2).await?;
    let before = peak_rss_kib();
    // Resets the peak (Linux), so the next reading is the rebuild's own.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let report = replay::replay(&pool, &settings, Arc::new(Progress::default())).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rebuild = report.records as f64 / seconds;
    assert_eq!(report.records, n as u64, "{report:?}");

    let slower = bare_consumer.min(bare_copy);
    println!("bare consumer: {bare_consumer:>10.0} events/s");
    println!("bare COPY:     {bare_copy:>10.0} events/s");
    println!(
        "rebuild:       {rebuild:>10.0} events/s ({n} events in {seconds:.1} s, batch {batch}, \
         {partitions} partitions) = {:.0}% of the slower floor",
        100.0 * rebuild / slower
    );
    if let (Some(before), Some(during)) = (before, peak_rss_kib()) {
        println!(
            "peak resident memory: {} MiB before the rebuild (the bench's own events and \
             CSV), {} MiB {}",
            before / 1024,
            during / 1024,
            if reset {
                "during the rebuild"
            } else {
                "over the whole run"
            }
        );
    }
    Ok(())
}
