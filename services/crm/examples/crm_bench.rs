//! CRM benchmarks against a real broker and PostgreSQL (the same ones the
//! tests use: `DEALMESH_TEST_KAFKA_BOOTSTRAP` or a tansu of its own, and
//! `DEALMESH_TEST_DATABASE_URL`):
//!
//! 1. projection rate on a realistic mix of events, beside a bare consumer
//!    reading the same log and a bare PostgreSQL `COPY` of the same rows;
//! 2. `ListDeals` latency (p50, p99) on 100,000 deals with filters and sort;
//! 3. command round trip (RPC in, event projected, answer out), p50 and p99.
//!
//! ```text
//! cargo run --release -p dealmesh-crm --example crm_bench -- [events] [deals] [commands]
//! ```
//! Defaults: 20000 events, 100000 deals, 300 commands.

use std::time::{Duration, Instant};

use chrono::Utc;
use dealmesh_auth::{Claims, Role, mint_hs256};
use dealmesh_crm::app::App;
use dealmesh_crm::config::{CrmConfig, Pipeline};
use dealmesh_crm::db;
use dealmesh_crm::projector::{Projector, ProjectorSettings};
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics, envelope};
use dealmesh_proto::v1::crm_service_client::CrmServiceClient;
use dealmesh_proto::v1::*;
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "crm-bench-secret-0123456789abcdef";

fn event(deal_id: &str, payload: Payload) -> DealEvent {
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: deal_id.into(),
        occurred_at: Some(envelope::timestamp(Utc::now())),
        actor: Some(envelope::service_actor("bench")),
        correlation_id: "bench".into(),
        causation_id: String::new(),
        expected_version: None,
        idempotency_key: String::new(),
        payload: Some(payload),
    }
}

/// Per deal: sourced, enriched, scored, a stage move and a note, as the log
/// of a working fund looks.
fn mix(n: usize) -> Vec<DealEvent> {
    let mut events = Vec::with_capacity(n);
    let mut i = 0;
    while events.len() < n {
        let deal = uuid::Uuid::now_v7().to_string();
        let name = format!("Company {i}");
        let all = [
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
                github: Some(GithubSignals {
                    stars: (i * 37 % 5000) as i64,
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
        for payload in all {
            if events.len() < n {
                events.push(event(&deal, payload));
            }
        }
        i += 1;
    }
    events
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn authed<T>(bearer: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("ascii"));
    request
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
    let n_events = args.first().copied().unwrap_or(20_000);
    let n_deals = args.get(1).copied().unwrap_or(100_000);
    let n_commands = args.get(2).copied().unwrap_or(300);

    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let topics = Topics::new(&prefix);
    dealmesh_testkit::create_topic(&bootstrap, &topics.deals, 3).await;
    let kafka = KafkaSettings::new(bootstrap.clone(), prefix.clone());
    let producer = EventProducer::new(&kafka, topics.clone(), "/dealmesh/bench")?;

    // 1. Projection rate.
    let events = mix(n_events);
    let sends = events.iter().map(|e| producer.publish(e));
    futures::future::try_join_all(sends).await?;
    println!("published {n_events} events");

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition_offset(&topics.deals, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let started = Instant::now();
    let mut read = 0;
    while read < n_events {
        let message = consumer.recv().await?;
        envelope::decode(message.payload().unwrap_or_default())?;
        read += 1;
    }
    let bare_consumer = n_events as f64 / started.elapsed().as_secs_f64();
    drop(consumer);

    let database = dealmesh_testkit::TestDatabase::create().await;
    let pool = db::connect(&database.url, "crm", 8).await?;
    db::migrate(&pool).await?;
    sqlx::query("CREATE TABLE copy_target (LIKE events INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let mut csv = String::new();
    for (i, e) in events.iter().enumerate() {
        csv.push_str(&format!(
            "{},{},{},{},bench,5,bench,\"\",\"\",,{},0,{},\\x{},applied,,\"\",0\n",
            e.event_id,
            e.deal_id,
            envelope::type_name(e),
            Utc::now().to_rfc3339(),
            topics.deals,
            i,
            hex(&envelope::encode(e)?)
        ));
    }
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY copy_target FROM STDIN WITH (FORMAT csv)")
        .await?;
    copy.send(csv.as_bytes()).await?;
    copy.finish().await?;
    let bare_copy = n_events as f64 / started.elapsed().as_secs_f64();
    drop(conn);

    let projector = Projector::new(
        pool.clone(),
        kafka.clone(),
        ProjectorSettings {
            topic: topics.deals.clone(),
            batch_size: 1000,
            linger: Duration::from_millis(20),
            initial_stage: Pipeline::default().initial_stage().to_owned(),
            notify_channel: db::notify_channel("crm"),
        },
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(projector.run(stop.clone(), || {}));
    loop {
        let consumed: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projector_offsets",
        )
        .fetch_one(&pool)
        .await?;
        if consumed as usize >= n_events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let projection = n_events as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    let slower = bare_consumer.min(bare_copy);
    println!(
        "projection: {projection:.0} events/s; bare consumer {bare_consumer:.0}/s; bare COPY {bare_copy:.0}/s; {:.0}% of the slower",
        100.0 * projection / slower
    );

    // 2. ListDeals on many deals, straight into the read model.
    sqlx::query(
        "INSERT INTO deals (deal_id, version, name, stage, owner_id, score, sector, summary,
             updated_at, last_event_id)
         SELECT 'bench-' || g, 3, 'Company ' || g,
                (ARRAY['sourced','screening','diligence','ic','passed'])[1 + g % 5],
                'owner-' || (g % 20), (g * 7919 % 10000) / 100.0,
                (ARRAY['devtools','fintech','health','energy'])[1 + g % 4],
                'builds things number ' || g,
                now() - make_interval(secs => g), 'e' || g
         FROM generate_series(1, $1) AS g",
    )
    .bind(n_deals as i64)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE deals").execute(&pool).await?;

    let env = vec![
        ("DATABASE_URL", database.url.as_str()),
        ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("DEALMESH_TOPIC_PREFIX", prefix.as_str()),
        ("DEALMESH_CRM_GRPC_ADDR", "127.0.0.1:0"),
        ("DEALMESH_CRM_ADMIN_ADDR", "127.0.0.1:0"),
        ("DEALMESH_CRM_BATCH_LINGER", "2ms"),
        ("DEALMESH_JWT_HS256_SECRET", SECRET),
        ("DEALMESH_LOG", "error"),
    ];
    let app = App::build(CrmConfig::from_source(&MapSource::new(env))?).await?;
    let addr = app.grpc_addr;
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app.run(shutdown.clone()));
    let mut client = CrmServiceClient::connect(format!("http://{addr}")).await?;
    let token = mint_hs256(
        SECRET,
        &Claims::new("bench", Role::Partner, Duration::from_secs(3600)),
    );
    let bearer = format!("Bearer {token}");
    let queries = [
        ListDealsRequest {
            sort: CrmDealSort::Score as i32,
            ..Default::default()
        },
        ListDealsRequest {
            stages: vec!["diligence".into(), "ic".into()],
            sort: CrmDealSort::Score as i32,
            ..Default::default()
        },
        ListDealsRequest {
            sector: "fintech".into(),
            min_score: Some(50.0),
            max_score: Some(90.0),
            sort: CrmDealSort::Recent as i32,
            ..Default::default()
        },
        ListDealsRequest {
            owner_id: "owner-7".into(),
            sort: CrmDealSort::Score as i32,
            ..Default::default()
        },
        ListDealsRequest {
            query: "number 4242".into(),
            ..Default::default()
        },
    ];
    let mut samples = Vec::new();
    for round in 0..100 {
        for q in &queries {
            let started = Instant::now();
            let page = client
                .list_deals(authed(&bearer, q.clone()))
                .await?
                .into_inner();
            samples.push(started.elapsed());
            if round == 0 {
                anyhow::ensure!(!page.deals.is_empty(), "query returned nothing: {q:?}");
            }
        }
    }
    let (p50, p99) = (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    );
    println!(
        "ListDeals on {n_deals} deals ({} calls, 5 filter/sort mixes, 50 per page): p50 {p50:?}, p99 {p99:?}",
        samples.len()
    );

    // 3. Command round trip on deals the projector knows.
    let deal = &events[0].deal_id;
    let mut samples = Vec::new();
    for i in 0..n_commands {
        let started = Instant::now();
        client
            .add_note(authed(
                &bearer,
                AddNoteRequest {
                    command: Some(CrmCommand {
                        idempotency_key: format!("bench-{i}"),
                        deal_id: deal.clone(),
                        expected_version: None,
                    }),
                    body: format!("note {i}"),
                },
            ))
            .await?;
        samples.push(started.elapsed());
    }
    let (p50, p99) = (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    );
    println!("command round trip (AddNote, {n_commands} sequential): p50 {p50:?}, p99 {p99:?}");
    shutdown.cancel();
    run.await??;
    // Benchmark databases are large: leave none behind.
    database.drop_database().await;
    Ok(())
}
