//! Rebuild rate against a real broker and PostgreSQL (the test ones:
//! `DEALMESH_TEST_KAFKA_BOOTSTRAP` or a tansu of its own, and
//! `DEALMESH_TEST_DATABASE_URL`), in one run beside the floors it is
//! measured against.
//!
//! ```text
//! export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
//! cargo build --release -p dealmesh-crm --bin dealmesh-crm --example rebuild_bench
//! cargo run --release -p dealmesh-crm --example rebuild_bench -- [events=100000] [partitions=12] [batch=500]
//! ```
//!
//! 1. Publishes `events` events (per deal: sourced, enriched, scored, a stage
//!    move, a note) on a fresh deal log of `partitions` partitions.
//! 2. Floor: a bare consumer reading and decoding every record.
//! 3. The rebuild: the real `dealmesh-crm rebuild --into rebuilt` (the
//!    release binary beside this example), as a child process, from the
//!    first offset to the end of the log with `DEALMESH_CRM_BATCH_SIZE=batch`;
//!    its rate counts wall time from start to exit, and its peak resident
//!    memory is read from `/proc/<pid>/status`.
//! 4. Floors: `COPY` of the rows the rebuild wrote, every table, into a
//!    fresh schema with the same tables and their primary keys but no
//!    secondary index (the rebuild builds those too), each table's rows
//!    sent in one binary `COPY`; and, stricter, `COPY` of the `events` rows
//!    alone into the same.
//!
//! Prints events/s for each and the rebuild's share of the slower of the
//! bare consumer and the `COPY` of every row it wrote.

use std::time::Instant;

use anyhow::{Context, ensure};
use futures::StreamExt;

use chrono::{TimeDelta, Utc};
use dealmesh_crm::replay;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n = args.first().copied().unwrap_or(100_000);
    let partitions = args.get(1).copied().unwrap_or(12) as i32;
    let batch = args.get(2).copied().unwrap_or(500);

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
    drop(events);

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
    println!("bare consumer: {bare_consumer:>10.0} events/s");

    // The rebuild, by the real binary.
    let database = dealmesh_testkit::TestDatabase::create().await;
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("dealmesh-crm"))
        .context("no directory above this example")?;
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p dealmesh-crm --bin dealmesh-crm`",
        bin.display()
    );
    checkpoint(&database.pool).await;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .args(["rebuild", "--into", "rebuilt"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &database.url)
        .env("DEALMESH_KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("DEALMESH_TOPIC_PREFIX", &prefix)
        .env("DEALMESH_CRM_BATCH_SIZE", batch.to_string())
        // librdkafka settings to try (KAFKA_<property>), passed through.
        .envs(std::env::vars().filter(|(key, _)| key.starts_with("KAFKA_")))
        // REBUILD_LOG=info shows the rebuild's own progress and phases (its
        // logs go to stdout, here the bench's).
        .env(
            "RUST_LOG",
            std::env::var("REBUILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(if std::env::var_os("REBUILD_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .spawn()?;
    let pid = child.id();
    let mut peak_kib = 0;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                peak_kib = peak_kib.max(dealmesh_testkit::peak_rss_kib(pid).unwrap_or(0));
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    ensure!(status.success(), "dealmesh-crm rebuild failed: {status}");
    let rebuild = n as f64 / seconds;
    let pool = dealmesh_crm::db::connect(&database.url, "rebuilt", 4).await?;
    let rebuilt: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    ensure!(
        rebuilt == n as i64,
        "the rebuild projected {rebuilt} of {n} events"
    );
    println!(
        "rebuild:       {rebuild:>10.0} events/s ({n} events in {seconds:.1} s, batch {batch}, \
         {partitions} partitions), peak resident memory {} MiB",
        peak_kib / 1024
    );

    // Floors: COPY of what the rebuild wrote, into the same tables in a
    // fresh schema.
    let mut tables: Vec<(String, Vec<u8>)> = Vec::new();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'rebuilt' AND c.relkind = 'r' AND relname <> '_sqlx_migrations'
         ORDER BY relname",
    )
    .fetch_all(&pool)
    .await?;
    let mut conn = pool.acquire().await?;
    for name in names {
        let mut out = conn
            .copy_out_raw(&format!("COPY rebuilt.{name} TO STDOUT (FORMAT binary)"))
            .await?;
        let mut data = Vec::new();
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
        drop(out);
        tables.push((name, data));
    }
    drop(conn);
    pool.close().await;
    let copy_rows = |schema: &'static str, only: Option<&'static str>| {
        let database_url = database.url.clone();
        let tables = &tables;
        async move {
            let pool = replay::create_schema(&database_url, schema, 2).await?;
            let mut conn = pool.acquire().await?;
            checkpoint(&pool).await;
            // The bare floor: tables with their primary keys only.
            let secondary: Vec<String> = sqlx::query_scalar(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indexrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND NOT i.indisunique AND NOT i.indisprimary",
            )
            .bind(schema)
            .fetch_all(&mut *conn)
            .await?;
            for index in secondary {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX {index}")))
                    .execute(&mut *conn)
                    .await?;
            }
            let started = Instant::now();
            for (name, data) in tables
                .iter()
                .filter(|(name, _)| only.is_none_or(|only| only == name))
            {
                let mut copy = conn
                    .copy_in_raw(&format!("COPY {schema}.{name} FROM STDIN (FORMAT binary)"))
                    .await?;
                copy.send(data.as_slice()).await?;
                copy.finish().await?;
            }
            let rate = n as f64 / started.elapsed().as_secs_f64();
            drop(conn);
            pool.close().await;
            anyhow::Ok(rate)
        }
    };
    let copy_all = copy_rows("copy_all", None).await?;
    println!("COPY, every row the rebuild wrote: {copy_all:>10.0} events/s");
    let copy_events = copy_rows("copy_events", Some("events")).await?;
    println!("COPY, the events rows alone:       {copy_events:>10.0} events/s");

    let slower = bare_consumer.min(copy_all);
    println!(
        "rebuild = {:.0}% of the slower floor (bare consumer or COPY of every row), \
         {:.0}% of COPY of the events rows alone",
        100.0 * rebuild / slower,
        100.0 * rebuild / copy_events
    );
    database.drop_database().await;
    Ok(())
}

/// Flushes what earlier phases wrote (a `CHECKPOINT`), so that each timed
/// phase starts from the same state instead of paying for the one before;
/// needs a superuser, and is skipped with a note otherwise.
async fn checkpoint(pool: &sqlx::PgPool) {
    if let Err(error) = sqlx::raw_sql("CHECKPOINT").execute(pool).await {
        eprintln!(
            "no CHECKPOINT before the next phase ({error}): its time may include earlier writes"
        );
    }
}
