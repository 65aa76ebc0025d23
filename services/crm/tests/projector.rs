//! The projector against the real broker and PostgreSQL: every event type
//! lands, duplicates and restarts neither lose nor double anything,
//! undecodable records and unknown types are kept and skipped.

mod common;

use std::time::Duration;

use common::{deal_events, event};
use dealmesh_crm::config::Pipeline;
use dealmesh_crm::projector::{Projector, ProjectorSettings};
use dealmesh_crm::{db, projection};
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics};
use dealmesh_proto::Payload;
use dealmesh_proto::v1::*;
use prost::Message;
use rdkafka::message::OwnedHeaders;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

struct Setup {
    bootstrap: String,
    prefix: String,
    topics: Topics,
    producer: EventProducer,
    pool: PgPool,
    db_url: String,
}

async fn setup(schema: &str) -> Setup {
    common::init_telemetry();
    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let topics = Topics::new(&prefix);
    dealmesh_testkit::create_topic(&bootstrap, &topics.deals, 3).await;
    let database = dealmesh_testkit::TestDatabase::create().await;
    let pool = db::connect(&database.url, schema, 4)
        .await
        .expect("connect");
    db::migrate(&pool).await.expect("migrate");
    let producer = EventProducer::new(
        &KafkaSettings::new(bootstrap.clone(), prefix.clone()),
        topics.clone(),
        "/dealmesh/test",
    )
    .expect("producer");
    Setup {
        bootstrap,
        prefix,
        topics,
        producer,
        pool,
        db_url: database.url,
    }
}

fn start(setup: &Setup, pool: PgPool) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let projector = Projector::new(
        pool,
        KafkaSettings::new(setup.bootstrap.clone(), setup.prefix.clone()),
        ProjectorSettings {
            topic: setup.topics.deals.clone(),
            batch_size: 50,
            linger: Duration::from_millis(5),
            initial_stage: Pipeline::default().initial_stage().to_owned(),
            notify_channel: db::notify_channel("crm"),
        },
    );
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            projector.run(stop, || {}).await.expect("projector runs");
        })
    };
    (stop, task)
}

/// Waits until the projector has consumed `records` records in total.
async fn wait_consumed(pool: &PgPool, records: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let consumed: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projector_offsets",
        )
        .fetch_one(pool)
        .await
        .expect("offsets");
        if consumed >= records {
            assert_eq!(
                consumed, records,
                "consumed more records than were published"
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projector consumed {consumed} of {records}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scalar(pool: &PgPool, sql: &'static str, deal_id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(deal_id)
        .fetch_one(pool)
        .await
        .expect(sql)
}

#[tokio::test]
async fn events_from_the_log_land_once_across_duplicates_restarts_and_bad_records() {
    let s = setup("crm").await;
    let deal_a = uuid::Uuid::now_v7().to_string();
    let deal_b = uuid::Uuid::now_v7().to_string();
    let events_a = deal_events(
        &deal_a,
        "Acme Robotics",
        "robotics",
        "warehouse robots",
        81.5,
    );
    let events_b = deal_events(&deal_b, "Beta Bio", "biotech", "protein design", 42.0);
    for e in events_a.iter().chain(&events_b) {
        s.producer.publish(e).await.expect("publish");
    }
    // The same event again (a producer retry): dropped by id.
    s.producer
        .publish(&events_a[2])
        .await
        .expect("publish duplicate");
    // A record that is not an envelope, and one of a type from the future.
    s.producer
        .send(
            &s.topics.deals,
            Some(deal_a.as_bytes()),
            b"\xff\xffnot protobuf",
            OwnedHeaders::new(),
        )
        .await
        .expect("send garbage");
    let mut future = event(&deal_a, Payload::DealArchived(DealArchived::default()));
    future.payload = None;
    let mut future_bytes = future.encode_to_vec();
    // Field 99, length-delimited: a payload this build does not know.
    future_bytes.extend_from_slice(&[0x9a, 0x06, 0x02, 0x08, 0x01]);
    s.producer
        .send(
            &s.topics.deals,
            Some(deal_a.as_bytes()),
            &future_bytes,
            OwnedHeaders::new(),
        )
        .await
        .expect("send future type");

    let (stop, task) = start(&s, s.pool.clone());
    wait_consumed(&s.pool, 9).await;

    let (name, stage, score, sector, version): (String, String, Option<f64>, String, i64) =
        sqlx::query_as("SELECT name, stage, score, sector, version FROM deals WHERE deal_id = $1")
            .bind(&deal_a)
            .fetch_one(&s.pool)
            .await
            .expect("deal a");
    assert_eq!(
        (
            name.as_str(),
            stage.as_str(),
            score,
            sector.as_str(),
            version
        ),
        ("Acme Robotics", "sourced", Some(81.5), "robotics", 3)
    );
    assert_eq!(
        scalar(
            &s.pool,
            "SELECT count(*) FROM events WHERE deal_id = $1",
            &deal_a
        )
        .await,
        4,
        "three events plus the unknown type, the duplicate dropped"
    );
    assert_eq!(
        scalar(
            &s.pool,
            "SELECT count(*) FROM events WHERE deal_id = $1 AND status = 'skipped'",
            &deal_a
        )
        .await,
        1
    );
    let skipped: i64 = sqlx::query_scalar("SELECT count(*) FROM skipped_records")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(
        scalar(&s.pool, "SELECT count(*) FROM field_provenance WHERE deal_id = $1 AND field IN ('name', 'sector', 'score', 'github.stars')", &deal_a).await,
        4
    );

    // Stop, publish more, start a new projector: it resumes at its stored
    // offsets and applies only the new events.
    stop.cancel();
    task.await.expect("projector stops");
    let moved = {
        let mut e = event(
            &deal_b,
            Payload::StageChanged(StageChanged {
                from_stage: "sourced".into(),
                to_stage: "screening".into(),
                reason: "looks good".into(),
            }),
        );
        e.expected_version = Some(3);
        e
    };
    let stale = {
        let mut e = event(
            &deal_b,
            Payload::OwnerAssigned(OwnerAssigned {
                owner_id: "partner-1".into(),
                previous_owner_id: String::new(),
            }),
        );
        e.expected_version = Some(3);
        e
    };
    s.producer.publish(&moved).await.expect("publish");
    s.producer.publish(&stale).await.expect("publish");
    s.producer
        .publish(&events_b[0])
        .await
        .expect("publish old duplicate");
    let (stop, task) = start(&s, s.pool.clone());
    wait_consumed(&s.pool, 12).await;
    stop.cancel();
    task.await.expect("projector stops");

    let (stage, owner, version): (String, String, i64) =
        sqlx::query_as("SELECT stage, owner_id, version FROM deals WHERE deal_id = $1")
            .bind(&deal_b)
            .fetch_one(&s.pool)
            .await
            .expect("deal b");
    assert_eq!(
        (stage.as_str(), owner.as_str(), version),
        ("screening", "", 4)
    );
    let (status, code, reason): (String, Option<String>, String) =
        sqlx::query_as("SELECT status, reject_code, reason FROM events WHERE event_id = $1")
            .bind(&stale.event_id)
            .fetch_one(&s.pool)
            .await
            .expect("stale outcome");
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("rejected", Some(projection::ABORTED))
    );
    assert!(reason.contains("version 4"), "{reason}");
    assert_eq!(
        scalar(
            &s.pool,
            "SELECT count(*) FROM stage_history WHERE deal_id = $1",
            &deal_b
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_replay_into_another_schema_gives_identical_tables() {
    let s = setup("crm").await;
    let deal = uuid::Uuid::now_v7().to_string();
    for e in deal_events(&deal, "Gamma Grid", "energy", "grid batteries", 64.0) {
        s.producer.publish(&e).await.expect("publish");
    }
    let (stop, task) = start(&s, s.pool.clone());
    wait_consumed(&s.pool, 3).await;
    stop.cancel();
    task.await.unwrap();

    let replay_pool = db::connect(&s.db_url, "crm_replay", 2)
        .await
        .expect("connect");
    db::migrate(&replay_pool)
        .await
        .expect("migrate replay schema");
    let (stop, task) = start(&s, replay_pool.clone());
    wait_consumed(&replay_pool, 3).await;
    stop.cancel();
    task.await.unwrap();

    let dump = |schema: &'static str| {
        let pool = s.pool.clone();
        async move {
            let sql = format!(
                "SELECT string_agg(t::text, '|' ORDER BY t::text) FROM (
                   SELECT deal_id, version, name, stage, score, sector, summary, updated_at, sourced_at FROM {schema}.deals) t"
            );
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .expect("dump")
        }
    };
    let live = dump("crm").await;
    assert!(
        live.as_deref().is_some_and(|d| d.contains("Gamma Grid")),
        "{live:?}"
    );
    assert_eq!(live, dump("crm_replay").await);
}

/// deal_id, field, value, source, event_id, recorded_at
type ProvenanceRow = (
    String,
    String,
    String,
    String,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Migration 0003 folds the one-row-per-field provenance of an existing read
/// model into one JSON row per deal; the `field_provenance` view shows the
/// same rows as before, times to the microsecond and missing times kept.

#[tokio::test]
async fn provenance_survives_the_move_to_one_row_per_deal() {
    common::init_telemetry();
    let database = dealmesh_testkit::TestDatabase::create().await;
    let pool = db::connect(&database.url, "crm", 2).await.expect("connect");
    db::MIGRATOR.run_to(2, &pool).await.expect("migrations 1-2");
    // deal_id, field, value, source, event_id, recorded_at
    let rows: [[Option<&str>; 6]; 3] = [
        [
            Some("deal-a"),
            Some("name"),
            Some("Acme \"Robotics\""),
            Some("github"),
            Some("e1"),
            Some("2026-01-02T03:04:05.123456Z"),
        ],
        [
            Some("deal-a"),
            Some("score"),
            Some("81.50"),
            Some("scoring/thesis-v1"),
            Some("e2"),
            None,
        ],
        [
            Some("deal-b"),
            Some("sector"),
            Some("fintech"),
            Some("analysis"),
            Some("e3"),
            Some("2025-12-31T23:59:59Z"),
        ],
    ];
    for [deal, field, value, source, event, at] in rows {
        sqlx::query(
            "INSERT INTO field_provenance (deal_id, field, value, source, event_id, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6::timestamptz)",
        )
        .bind(deal)
        .bind(field)
        .bind(value)
        .bind(source)
        .bind(event)
        .bind(at)
        .execute(&pool)
        .await
        .expect("old row");
    }
    let before: Vec<ProvenanceRow> =
        sqlx::query_as("SELECT * FROM field_provenance ORDER BY deal_id, field")
            .fetch_all(&pool)
            .await
            .expect("old rows");

    db::migrate(&pool).await.expect("the remaining migrations");
    let after: Vec<ProvenanceRow> = sqlx::query_as(
        "SELECT deal_id, field, value, source, event_id, recorded_at FROM field_provenance
             ORDER BY deal_id, field",
    )
    .fetch_all(&pool)
    .await
    .expect("the view");
    assert_eq!(after, before);
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM deal_provenance WHERE deal_id <> $1",
            ""
        )
        .await,
        2,
        "one row per deal"
    );
}
