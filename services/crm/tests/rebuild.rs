//! `rebuild --swap` against a live projector: the rebuilt schema takes the
//! live name, pooled connections (with cached prepared statements) read it
//! from their next statement, and the live projector goes on projecting
//! into it from where the rebuild stopped.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/story.rs"]
mod story;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dealmesh_crm::checksum;
use dealmesh_crm::db;
use dealmesh_crm::projector::{Projector, ProjectorSettings};
use dealmesh_crm::rebuild::{self, RebuildSettings};
use dealmesh_crm::replay::Progress;
use harness::Harness;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

async fn wait_projected(pool: &PgPool, schema: &str, records: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT sum(next_offset)::bigint FROM {schema}.projector_offsets"
        )))
        .fetch_one(pool)
        .await
        .ok()
        .flatten();
        if done == Some(records) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{schema} projected {done:?} of {records} records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_swapped_rebuild_serves_and_the_live_projector_goes_on_into_it() {
    let h = Harness::new(3).await;
    let start: DateTime<Utc> = "2026-10-01T08:00:00Z".parse().unwrap();
    let log = story::log(12, start);
    let (first, second): (Vec<_>, Vec<_>) = log
        .iter()
        .cloned()
        .partition(|e| e.deal_id != story::deal_id(11));
    h.publish(&first).await;

    // The live service: a projector into `crm`, and a pool of one
    // connection that reads through a cached prepared statement.
    let live = db::connect(&h.db.url, "crm", 4).await.unwrap();
    db::migrate(&live).await.unwrap();
    let shutdown = CancellationToken::new();
    let projector = Projector::new(
        live.clone(),
        h.kafka.clone(),
        ProjectorSettings {
            topic: h.topics.deals.clone(),
            batch_size: 5,
            linger: Duration::from_millis(5),
            initial_stage: story::INITIAL_STAGE.into(),
            notify_channel: db::notify_channel("crm"),
        },
    );
    let running = tokio::spawn(projector.run(shutdown.clone(), || {}));
    wait_projected(&h.db.pool, "crm", first.len() as i64).await;
    let reader = db::connect(&h.db.url, "crm", 1).await.unwrap();
    let count_notes = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes WHERE body LIKE $1")
            .bind("%")
            .fetch_one(&reader)
            .await
            .unwrap()
    };
    assert_eq!(count_notes().await, 11);
    // Something only the live schema has, and a command's idempotency
    // record that must survive the swap.
    sqlx::query("INSERT INTO crm.notes (note_id, deal_id, body, author_id, author_role, event_id) VALUES ('stray', 'x', 'not on the log', 'a', 1, 'e')")
        .execute(&h.db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO crm.command_requests (subject, idempotency_key, fingerprint, event_id, deal_id, envelope) VALUES ('alice', 'k1', '\\x00', 'evt-1', 'd', '\\x00')")
        .execute(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(count_notes().await, 12);

    let mut replay = h.settings("crm_rebuild_test");
    replay.batch_size = 5;
    let settings = RebuildSettings {
        database_url: h.db.url.clone(),
        live_schema: "crm".into(),
        replay,
        max_connections: 4,
        swap: true,
        drop_after: Some(Duration::ZERO),
    };
    let report = rebuild::rebuild(&settings, Arc::new(Progress::default()))
        .await
        .expect("rebuild");
    assert_eq!(report.replay.records, first.len() as u64);
    assert!(report.dropped);
    let retired = report.retired.clone().unwrap();
    assert!(retired.starts_with("crm_retired_"), "{retired}");
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'crm%' ORDER BY 1",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        schemas,
        vec!["crm".to_owned()],
        "rebuilt renamed, retired dropped"
    );

    // The same pooled connection now reads the rebuilt tables: the stray
    // row is gone, the projected notes are there.
    assert_eq!(count_notes().await, 11);
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM crm.command_requests WHERE idempotency_key = 'k1'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(kept, 1, "command requests carried over");

    // The live projector goes on, into the rebuilt schema.
    h.publish(&second).await;
    wait_projected(&h.db.pool, "crm", log.len() as i64).await;
    assert_eq!(count_notes().await, 12);
    let (version, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT version FROM crm.deals WHERE deal_id = $1),
                (SELECT count(*) FROM crm.events)",
    )
    .bind(story::deal_id(11))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(events, log.len() as i64, "nothing lost or doubled");
    assert_eq!(
        Some(version),
        story::fold(&log, None)
            .deals
            .get(&story::deal_id(11))
            .map(|d| d.version)
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();

    // And it is the read model a fresh replay gives.
    h.replay(&h.settings("fresh")).await;
    let live_sums = checksum::checksums(&h.db.pool, "crm").await.unwrap();
    let fresh = checksum::checksums(&h.db.pool, "fresh").await.unwrap();
    assert_eq!(
        checksum::differences(&live_sums, &fresh),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_swap_while_events_keep_arriving_loses_and_doubles_nothing() {
    let h = Harness::new(3).await;
    let start: DateTime<Utc> = "2026-10-01T08:00:00Z".parse().unwrap();
    let log = story::log(30, start);
    let (early, late) = log.split_at(log.len() / 3);
    h.publish(early).await;

    let live = db::connect(&h.db.url, "crm", 4).await.unwrap();
    db::migrate(&live).await.unwrap();
    let shutdown = CancellationToken::new();
    let projector = Projector::new(
        live.clone(),
        h.kafka.clone(),
        ProjectorSettings {
            topic: h.topics.deals.clone(),
            batch_size: 4,
            linger: Duration::from_millis(2),
            initial_stage: story::INITIAL_STAGE.into(),
            notify_channel: db::notify_channel("crm"),
        },
    );
    let running = tokio::spawn(projector.run(shutdown.clone(), || {}));
    wait_projected(&h.db.pool, "crm", early.len() as i64).await;

    // Events keep arriving while the rebuild runs and swaps.
    let late = late.to_vec();
    let producer = h.producer.clone();
    let publishing = tokio::spawn(async move {
        for event in &late {
            producer.publish(event).await.expect("publish");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut replay = h.settings("crm_rebuild_race");
    replay.batch_size = 4;
    let settings = RebuildSettings {
        database_url: h.db.url.clone(),
        live_schema: "crm".into(),
        replay,
        max_connections: 4,
        swap: true,
        drop_after: None,
    };
    let report = rebuild::rebuild(&settings, Arc::new(Progress::default()))
        .await
        .expect("rebuild");
    publishing.await.unwrap();
    wait_projected(&h.db.pool, "crm", log.len() as i64).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.events")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(events, log.len() as i64, "every event once");
    h.replay(&h.settings("fresh")).await;
    let live_sums = checksum::checksums(&h.db.pool, "crm").await.unwrap();
    let fresh = checksum::checksums(&h.db.pool, "fresh").await.unwrap();
    assert_eq!(
        checksum::differences(&live_sums, &fresh),
        Vec::<String>::new()
    );
    // The chain goes on across the swap: the log matches every checkpoint.
    let checkpoints = dealmesh_crm::verify::checkpoints(&h.db.pool, "crm", &h.topics.deals)
        .await
        .unwrap();
    let results = dealmesh_crm::verify::verify_log(&h.kafka, &h.topics.deals, &checkpoints)
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| r.first_mismatch.is_none()),
        "{results:?}"
    );
    assert_eq!(
        results.iter().map(|r| r.records).sum::<u64>(),
        log.len() as u64
    );
    assert!(report.retired.is_some());
}

#[tokio::test]
async fn no_projector_batch_commits_while_a_swap_holds_the_lock() {
    let h = Harness::new(1).await;
    let start: DateTime<Utc> = "2026-10-01T08:00:00Z".parse().unwrap();
    let log = story::log(1, start);
    let live = db::connect(&h.db.url, "crm", 4).await.unwrap();
    db::migrate(&live).await.unwrap();
    let shutdown = CancellationToken::new();
    let projector = Projector::new(
        live.clone(),
        h.kafka.clone(),
        ProjectorSettings {
            topic: h.topics.deals.clone(),
            batch_size: 100,
            linger: Duration::from_millis(2),
            initial_stage: story::INITIAL_STAGE.into(),
            notify_channel: db::notify_channel("crm"),
        },
    );
    let running = tokio::spawn(projector.run(shutdown.clone(), || {}));
    h.publish(&log[..1]).await;
    wait_projected(&h.db.pool, "crm", 1).await;

    // What a swap of `crm` takes, exclusively, in a session of its own.
    let mut swap = h.db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('dealmesh_crm_swap'), hashtext('crm'))")
        .execute(&mut *swap)
        .await
        .unwrap();
    h.publish(&log[1..]).await;
    // The projector's batch is waiting for the lock...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no batch waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and has committed nothing.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.events")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
    sqlx::query("SELECT pg_advisory_unlock(hashtext('dealmesh_crm_swap'), hashtext('crm'))")
        .execute(&mut *swap)
        .await
        .unwrap();
    wait_projected(&h.db.pool, "crm", log.len() as i64).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
