//! Scoring throughput, in events per second.
//!
//! ```text
//! cargo run --release -p dealmesh-scoring --example scoring_bench            # both parts
//! cargo run --release -p dealmesh-scoring --example scoring_bench -- pure    # CPU only
//! cargo run --release -p dealmesh-scoring --example scoring_bench -- e2e 2000
//! cargo run --release -p dealmesh-scoring --example scoring_bench -- e2e 2000 16   # 16 at once
//! ```
//!
//! - `pure`: on one thread, decode a DealEnriched envelope, extract and
//!   check its features, score it with the shipped thesis and encode the
//!   DealScored envelope: the CPU work of one event, without I/O.
//! - `e2e`: the real service with `DEALMESH_SCORING_CONCURRENCY=1` (or the
//!   third argument) against a
//!   Kafka-API broker and PostgreSQL (the test broker and a fresh database,
//!   as the tests get them: `DEALMESH_TEST_KAFKA_BOOTSTRAP` or a tansu of its
//!   own, `DEALMESH_TEST_DATABASE_URL` or the local server). N enrichments
//!   are published first; the clock runs from the first score recorded to
//!   the last, so consumer start-up is not counted.

use std::time::{Duration, Instant};

use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics, envelope};
use dealmesh_proto::v1::{
    Analysis, CrunchbaseSignals, DealEnriched, DealScored, FundingRound, GithubSignals, Location,
    Money,
};
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use dealmesh_scoring::features::Features;
use dealmesh_scoring::model::Model;
use prost::Message;

const THESIS: &str = include_str!("../thesis.toml");
const SECTORS: &[&str] = &[
    "Developer Tools",
    "Fintech",
    "Insurance",
    "Climate Software",
    "Gambling",
];
const STAGES: &[&str] = &["pre_seed", "seed", "series_a", "series_b", "series_c"];
const COUNTRIES: &[&str] = &["USA", "DE", "Brazil", "GB", "FR", "IN"];

/// A varied, deterministic enrichment for deal number `i`.
fn enriched(i: u64) -> DealEvent {
    let n = i as usize;
    let payload = DealEnriched {
        github: Some(GithubSignals {
            stars: (i * 7919 % 40_000) as i64,
            forks: (i % 900) as i64,
            contributors: (i % 120) as i64,
            weekly_commits: (0..52).map(|w| ((i + w) % 60) as i64).collect(),
            star_velocity_30d: (i % 50) as f64 * 0.9,
            ..Default::default()
        }),
        crunchbase: Some(CrunchbaseSignals {
            funding_total: Some(Money {
                value: (i * 104_729 % 80_000_000) as i64,
                currency: "USD".into(),
                value_usd: (i * 104_729 % 80_000_000) as i64,
            }),
            last_round: Some(FundingRound {
                investment_type: STAGES[n % STAGES.len()].into(),
                ..Default::default()
            }),
            categories: vec!["Software".into(), "Open Source".into()],
            location: Some(Location {
                country_code: COUNTRIES[n % COUNTRIES.len()].into(),
                ..Default::default()
            }),
            operating_status: "active".into(),
            ..Default::default()
        }),
        analysis: Some(Analysis {
            sector: SECTORS[n % SECTORS.len()].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: format!("deal-{i}"),
        occurred_at: Some(envelope::timestamp(chrono::Utc::now())),
        actor: Some(envelope::service_actor("dealmesh-enrich")),
        payload: Some(Payload::DealEnriched(payload)),
        ..Default::default()
    }
}

fn pure(events: u64) {
    let model = Model::parse(THESIS).expect("shipped thesis is valid");
    let inputs: Vec<Vec<u8>> = (0..10_000).map(|i| enriched(i).encode_to_vec()).collect();
    let mut checksum = 0.0;
    // Warm up caches and the allocator.
    for bytes in inputs.iter().take(1000) {
        checksum += score_one(&model, bytes);
    }
    let started = Instant::now();
    for i in 0..events {
        checksum += score_one(&model, &inputs[(i % inputs.len() as u64) as usize]);
    }
    let elapsed = started.elapsed();
    println!(
        "pure: {events} events in {:.3} s on one thread = {:.0} events/s ({:.2} us/event; checksum {checksum:.1})",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / events as f64,
    );
}

/// The handler's CPU work for one record.
fn score_one(model: &Model, bytes: &[u8]) -> f64 {
    let event = envelope::decode(bytes).expect("bench input decodes");
    let Some(Payload::DealEnriched(enriched)) = &event.payload else {
        return 0.0;
    };
    let features = Features::from_enriched(enriched).expect("bench input is valid");
    let scored = dealmesh_scoring::scoring::score(model, &features);
    let output = DealEvent {
        event_id: dealmesh_scoring::handler::score_event_id(
            chrono::Utc::now(),
            &event.event_id,
            &model.version,
        ),
        deal_id: event.deal_id.clone(),
        occurred_at: event.occurred_at,
        payload: Some(Payload::DealScored(DealScored {
            score: scored.score,
            model_version: model.version.clone(),
            contributions: scored.contributions.iter().map(|c| c.to_proto()).collect(),
            failed_filters: scored.failed_filters,
            source_event_id: event.event_id.clone(),
        })),
        ..Default::default()
    };
    let encoded = envelope::encode(&output).expect("output encodes");
    std::hint::black_box(encoded.len());
    scored.score
}

async fn e2e(events: u64, concurrency: usize) -> anyhow::Result<()> {
    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let db = dealmesh_testkit::TestDatabase::create().await;
    let dir = tempfile::tempdir()?;
    let model_path = dir.path().join("thesis.toml");
    std::fs::write(&model_path, THESIS)?;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("DEALMESH_TOPIC_PREFIX", prefix.as_str()),
        ("DEALMESH_DEAL_LOG_PARTITIONS", "1"),
        ("DEALMESH_SCORING_GRPC_ADDR", "127.0.0.1:0"),
        ("DEALMESH_SCORING_ADMIN_ADDR", "127.0.0.1:0"),
        (
            "DEALMESH_SCORING_MODEL_FILE",
            &model_path.display().to_string(),
        ),
        ("DEALMESH_SCORING_CONCURRENCY", &concurrency.to_string()),
        (
            "DEALMESH_JWT_HS256_SECRET",
            "bench-secret-0123456789abcdef-0123456",
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let config = dealmesh_scoring::config::ScoringConfig::from_source(&MapSource::new(env))?;
    let topics = dealmesh_eventlog::topics::provision(&config.kafka).await?;

    let producer = EventProducer::new(
        &KafkaSettings::new(&bootstrap, &prefix),
        Topics::new(&prefix),
        "/bench",
    )?;
    let publish_started = Instant::now();
    let mut sends = futures::stream::FuturesUnordered::new();
    for i in 0..events {
        let producer = producer.clone();
        sends.push(async move { producer.publish(&enriched(i)).await });
        if sends.len() >= 256 {
            use futures::StreamExt;
            sends.next().await.transpose()?;
        }
    }
    {
        use futures::StreamExt;
        while let Some(sent) = sends.next().await {
            sent?;
        }
    }
    println!(
        "e2e: {events} DealEnriched published to {} in {:.2} s",
        topics.deals,
        publish_started.elapsed().as_secs_f64()
    );

    let app = dealmesh_scoring::app::App::build(config).await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM scoring.published")
            .fetch_one(&db.pool)
            .await
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (first_at, first_count) = loop {
        let n = count().await?;
        if n > 0 {
            break (Instant::now(), n);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing scored within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let n = count().await?;
        if n as u64 >= events {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {events} scored within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = first_at.elapsed();
    let measured = events - first_count as u64;
    println!(
        "e2e: {measured} events consumed, scored, published (acked) and recorded in {:.2} s with concurrency {concurrency} = {:.0} events/s",
        elapsed.as_secs_f64(),
        measured as f64 / elapsed.as_secs_f64()
    );
    shutdown.cancel();
    task.await??;
    // Benchmark databases are large: leave none behind.
    db.drop_database().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let n = |default: u64| -> anyhow::Result<u64> {
        Ok(match args.get(1) {
            Some(n) => n.parse()?,
            None => default,
        })
    };
    if matches!(mode, "all" | "pure") {
        pure(n(1_000_000)?);
    }
    if matches!(mode, "all" | "e2e") {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(e2e(
                n(2_000)?,
                match args.get(2) {
                    Some(c) => c.parse()?,
                    None => 1,
                },
            ))?;
    }
    Ok(())
}
