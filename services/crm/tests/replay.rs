//! Replaying the deal log into a fresh schema against the real broker and
//! PostgreSQL: two replays give identical tables, events of every released
//! contract version still project, and a bad target changes nothing.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/story.rs"]
mod story;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use dealmesh_crm::checksum;
use dealmesh_crm::replay::{self, Error};
use dealmesh_proto::{DealEvent, Payload};
use harness::Harness;
use prost::Message;

fn start() -> DateTime<Utc> {
    "2026-10-01T08:00:00Z".parse().expect("time")
}

#[tokio::test]
async fn two_replays_of_one_log_give_identical_tables() {
    let h = Harness::new(3).await;
    let log = story::log(24, start());
    h.publish(&log).await;

    let first = h.replay(&h.settings("replay_a")).await;
    let second = h.replay(&h.settings("replay_b")).await;
    assert_eq!(first.records, log.len() as u64);
    assert_eq!(first.partitions, 3);
    assert!(
        first.batch.rejected > 0 && first.batch.applied > 0,
        "{first:?}"
    );
    assert_eq!(first, second);

    let a = checksum::checksums(&h.db.pool, "replay_a").await.unwrap();
    let b = checksum::checksums(&h.db.pool, "replay_b").await.unwrap();
    let tables: Vec<&str> = a.iter().map(|t| t.table.as_str()).collect();
    for table in [
        "deals",
        "events",
        "votes",
        "ballots",
        "notes",
        "stage_history",
    ] {
        assert!(tables.contains(&table), "{tables:?}");
    }
    let rows = |sums: &[checksum::TableChecksum], name: &str| {
        sums.iter().find(|t| t.table == name).map(|t| t.rows)
    };
    assert_eq!(rows(&a, "deals"), Some(24));
    assert_eq!(rows(&a, "events"), Some(log.len() as i64));
    // Every table, positions included (same log, same batch size), except
    // the bookkeeping that records when migrations ran.
    for (x, y) in a.iter().zip(&b) {
        if x.table != "_sqlx_migrations" {
            assert_eq!(x, y, "table {} differs", x.table);
        }
    }
    assert_eq!(checksum::differences(&a, &b), Vec::<String>::new());

    // Another batch size commits elsewhere but projects the same rows.
    let mut other = h.settings("replay_c");
    other.batch_size = 500;
    h.replay(&other).await;
    let c = checksum::checksums(&h.db.pool, "replay_c").await.unwrap();
    assert_eq!(checksum::differences(&a, &c), Vec::<String>::new());

    // Merges across partitions are settled in time order: deal 3 keeps deal
    // 4 merged, deal 0 merged deal 1 and unmerged it again.
    let merged: Vec<(String, String)> = sqlx::query_as(
        "SELECT deal_id, merged_into FROM replay_a.deals WHERE merged_into IS NOT NULL
         ORDER BY deal_id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let mut expected: Vec<(String, String)> = [3, 9, 15, 21]
        .iter()
        .map(|d| (story::deal_id(d + 1), story::deal_id(*d)))
        .collect();
    expected.sort();
    assert_eq!(merged, expected);

    // Secondary indexes are dropped while a fresh schema fills and built
    // again at the end: the replayed schema has every index migrations make.
    replay::create_schema(&h.db.url, "migrated_only", 1)
        .await
        .unwrap()
        .close()
        .await;
    let indexes = |schema: &'static str| {
        let pool = h.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
            )
            .bind(schema)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.replace(&format!("{schema}."), ""))
            .collect::<Vec<_>>()
        }
    };
    let expected = indexes("migrated_only").await;
    assert!(expected.len() > 15, "{expected:?}");
    assert_eq!(indexes("replay_a").await, expected);

    // The checksum sees a changed row, and names its table.
    sqlx::query("UPDATE replay_b.notes SET body = body || '!' WHERE note_id = 'note-5'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let b = checksum::checksums(&h.db.pool, "replay_b").await.unwrap();
    assert_eq!(checksum::differences(&a, &b), vec!["notes".to_owned()]);
}

fn released_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/released/events")
}

/// Every `proto/released/events/v*/*.binpb`, in version then file order.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir(released_dir())
        .expect("proto/released/events")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    versions.sort();
    let mut found = Vec::new();
    for version in versions {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&version)
            .expect("version dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "binpb"))
            .collect();
        files.sort();
        for file in files {
            found.push((
                file.display().to_string(),
                std::fs::read(&file).expect("fixture"),
            ));
        }
    }
    found
}

#[tokio::test]
#[allow(clippy::type_complexity)]
async fn events_of_every_released_contract_version_project_into_a_fresh_schema() {
    let h = Harness::new(1).await;
    let fixtures = fixtures();
    assert!(fixtures.len() >= 14, "{} fixtures", fixtures.len());
    let mut events: Vec<DealEvent> = Vec::new();
    for (name, bytes) in &fixtures {
        let event = DealEvent::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Published byte for byte as the old producer wrote them.
        h.producer
            .publish_encoded(&event, bytes)
            .await
            .expect("publish");
        events.push(event);
    }
    // The released story moves its deal out of `screening`: a pipeline
    // whose first stage that is (DEALMESH_CRM_STAGES) takes every command.
    let mut settings = h.settings("released");
    settings.initial_stage = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::StageChanged(s)) => Some(s.from_stage.clone()),
            _ => None,
        })
        .expect("a StageChanged fixture");
    let report = h.replay(&settings).await;
    assert_eq!(report.records, fixtures.len() as u64);
    assert_eq!(
        report.batch.skipped + report.batch.undecodable,
        0,
        "{report:?}"
    );

    // Every event is in `events` with its type, none skipped as unknown, and
    // decided by the version rule: a command applies only at the version it
    // expected (the number of events applied before it).
    let rows: Vec<(String, String, String, Option<String>, Vec<u8>)> = sqlx::query_as(
        "SELECT event_id, event_type, status, reject_code, envelope FROM released.events
         ORDER BY kafka_offset",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), events.len());
    let mut applied_before = 0_u64;
    let mut decided = std::collections::BTreeMap::new();
    for ((id, kind, status, code, envelope), (event, (name, bytes))) in
        rows.iter().zip(events.iter().zip(&fixtures))
    {
        assert_eq!(id, &event.event_id, "{name}");
        assert_eq!(
            kind,
            event.payload.as_ref().map(Payload::type_name).unwrap(),
            "{name}"
        );
        assert_eq!(envelope, bytes, "{name}: stored envelope");
        match event.expected_version {
            Some(v) if v != applied_before => {
                assert_eq!(
                    (status.as_str(), code.as_deref()),
                    ("rejected", Some("aborted")),
                    "{name}: expected version {v}, {applied_before} applied before it"
                );
            }
            _ => {
                assert_eq!(status, "applied", "{name}");
                applied_before += 1;
            }
        }
        decided.insert(kind.clone(), status.clone());
    }
    // (The released story's archive command expects version 12, but the
    // EnrichmentFailed published before it is applied too: it loses.)
    assert_eq!(decided["DealArchived"], "rejected");
    let rows: Vec<(String, String, String)> = rows
        .into_iter()
        .map(|(id, kind, status, _, _)| (id, kind, status))
        .collect();

    // The deal's row says what the events said.
    let sourced = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::DealSourced(s)) => Some((e.deal_id.clone(), s.clone())),
            _ => None,
        })
        .expect("a DealSourced fixture");
    let (deal_id, sourced) = sourced;
    let applied = rows.iter().filter(|r| r.2 == "applied").count() as i64;
    let applied_types: Vec<&str> = rows
        .iter()
        .filter(|r| r.2 == "applied")
        .map(|r| r.1.as_str())
        .collect();
    let (version, name, website, stage, owner, score, sector, archived): (
        i64,
        String,
        String,
        String,
        String,
        Option<f64>,
        String,
        bool,
    ) = sqlx::query_as(
        "SELECT version, name, website, stage, owner_id, score, sector, archived
         FROM released.deals WHERE deal_id = $1",
    )
    .bind(&deal_id)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(version, applied);
    assert_eq!((name, website), (sourced.name, sourced.website));
    assert!(!archived);
    for event in &events {
        let payload = event.payload.as_ref().unwrap();
        if !applied_types.contains(&payload.type_name()) {
            continue;
        }
        match payload {
            Payload::StageChanged(s) => assert_eq!(stage, s.to_stage),
            Payload::OwnerAssigned(o) => assert_eq!(owner, o.owner_id),
            Payload::DealScored(s) => assert_eq!(score, Some(s.score)),
            Payload::DealEnriched(e) => {
                assert_eq!(sector, e.analysis.clone().unwrap_or_default().sector)
            }
            Payload::NoteAdded(n) => {
                let body: String =
                    sqlx::query_scalar("SELECT body FROM released.notes WHERE deal_id = $1")
                        .bind(&deal_id)
                        .fetch_one(&h.db.pool)
                        .await
                        .unwrap();
                assert_eq!(body, n.body);
            }
            Payload::DealShared(s) => {
                let lps: Vec<String> = sqlx::query_scalar(
                    "SELECT lp_id FROM released.deal_shares WHERE deal_id = $1 ORDER BY lp_id",
                )
                .bind(&deal_id)
                .fetch_all(&h.db.pool)
                .await
                .unwrap();
                let mut expected = s.lp_ids.clone();
                expected.sort();
                assert_eq!(lps, expected);
            }
            Payload::VoteClosed(c) => {
                let status: String =
                    sqlx::query_scalar("SELECT status FROM released.votes WHERE vote_id = $1")
                        .bind(&c.vote_id)
                        .fetch_one(&h.db.pool)
                        .await
                        .unwrap();
                assert_eq!(status, "closed");
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_bad_target_is_refused_and_nothing_is_changed() {
    harness::init_telemetry();
    let db = dealmesh_testkit::TestDatabase::create().await;
    sqlx::query("CREATE SCHEMA taken")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE taken.precious (v text)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO taken.precious VALUES ('keep me')")
        .execute(&db.pool)
        .await
        .unwrap();

    let error = replay::create_schema(&db.url, "taken", 2)
        .await
        .expect_err("an existing schema is refused");
    assert!(matches!(error, Error::SchemaExists(_)), "{error}");
    assert!(error.to_string().contains("already exists"), "{error}");
    let kept: Vec<String> = sqlx::query_scalar("SELECT v FROM taken.precious")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(kept, vec!["keep me".to_owned()]);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'taken' AND tablename <> 'precious'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "no migration ran into the existing schema");

    let error = replay::create_schema(&db.url, "Not-A-Name", 2)
        .await
        .expect_err("a bad name is refused");
    assert!(matches!(error, Error::BadSchema(_)), "{error}");

    let mut missing = url::Url::parse(&db.url).unwrap();
    let name = format!("{}_missing", db.name);
    missing.set_path(&name);
    let error = replay::create_schema(missing.as_str(), "fresh", 2)
        .await
        .expect_err("a missing database is refused");
    assert!(matches!(error, Error::NoDatabase(_)), "{error}");
    assert!(error.to_string().contains("does not exist"), "{error}");
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!created, "the missing database was not created");

    for bad in ["yesterday", "2026-11-23", "2026-11-23T10:00:00", ""] {
        let error = replay::parse_as_of(bad).expect_err(bad);
        assert!(matches!(error, Error::BadAsOf { .. }), "{bad}: {error}");
        assert!(error.to_string().contains("RFC 3339"), "{error}");
    }
    assert_eq!(
        replay::parse_as_of("2026-11-23T11:00:00+01:00").unwrap(),
        "2026-11-23T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
}
