//! The `rebuild` and `audit` subcommands as a user runs them: the real
//! binary against the test broker and PostgreSQL.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/story.rs"]
mod story;

use std::process::{Command, Output};

use harness::Harness;

fn crm(h: &Harness, database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dealmesh-crm"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env(
            "DEALMESH_KAFKA_BOOTSTRAP_SERVERS",
            &h.kafka.bootstrap_servers,
        )
        .env("DEALMESH_TOPIC_PREFIX", &h.kafka.topic_prefix)
        // No token settings: rebuild and audit serve no API, so they must
        // not need them.
        .env("DEALMESH_CRM_BATCH_SIZE", "4")
        .output()
        .expect("dealmesh-crm runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn snapshot_checksum_and_verify_from_the_command_line() {
    let h = Harness::new(2).await;
    let start: chrono::DateTime<chrono::Utc> = "2026-10-01T08:00:00Z".parse().unwrap();
    let log = story::log(4, start);
    h.publish(&log).await;
    let url = h.db.url.clone();

    // rebuild into the live name's place: a fresh `crm` built from the log.
    let out = crm(&h, &url, &["rebuild", "--into", "crm"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("rebuilt {} records into crm", log.len())));

    let out = crm(&h, &url, &["audit", "verify"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("checkpoints match"), "{stdout}");
    assert!(stdout.contains("every table matches"), "{stdout}");

    let out = crm(
        &h,
        &url,
        &[
            "audit",
            "snapshot",
            "--as-of",
            "2026-10-01T12:00:00Z",
            "--into",
            "nov",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("schema nov holds the read model as of"));
    let stage: String = sqlx::query_scalar("SELECT stage FROM nov.deals WHERE deal_id = $1")
        .bind(story::deal_id(0))
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(stage, "screening");

    let out = crm(&h, &url, &["audit", "checksum", "--schema", "nov"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.lines().any(|l| l.starts_with("deals ")), "{stdout}");
    assert!(stdout.contains("(bookkeeping)"), "{stdout}");

    let out = crm(
        &h,
        &url,
        &["audit", "history", "--deal", &story::deal_id(1)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("DealSourced"),
        "{}",
        text(&out.stdout)
    );

    // Someone edits the read model by hand: verify says where.
    sqlx::query("UPDATE crm.notes SET body = 'edited'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let out = crm(&h, &url, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("DIFFERS"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("notes"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn bad_input_gets_a_clear_message_and_changes_nothing() {
    let h = Harness::new(1).await;
    let url = h.db.url.clone();
    sqlx::query("CREATE SCHEMA taken")
        .execute(&h.db.pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE taken.keep (v int)")
        .execute(&h.db.pool)
        .await
        .unwrap();

    let out = crm(
        &h,
        &url,
        &[
            "audit",
            "snapshot",
            "--as-of",
            "last tuesday",
            "--into",
            "x1",
        ],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("is not an RFC 3339 time"),
        "{}",
        text(&out.stderr)
    );

    let out = crm(
        &h,
        &url,
        &[
            "audit",
            "snapshot",
            "--as-of",
            "2026-10-01T12:00:00Z",
            "--into",
            "taken",
        ],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("schema taken already exists"),
        "{}",
        text(&out.stderr)
    );
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'taken'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(tables, 1, "nothing was written into the existing schema");

    let out = crm(&h, &url, &["rebuild", "--into", "taken"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));

    let mut missing = url::Url::parse(&url).unwrap();
    missing.set_path(&format!("{}_gone", h.db.name));
    let out = crm(
        &h,
        missing.as_str(),
        &[
            "audit",
            "snapshot",
            "--as-of",
            "2026-10-01T12:00:00Z",
            "--into",
            "x2",
        ],
    );
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(format!("{}_gone", h.db.name))
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(!created);

    let out = crm(&h, &url, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
}

#[tokio::test]
async fn serve_needs_token_settings_that_offline_commands_do_not() {
    let h = Harness::new(1).await;
    let out = crm(&h, &h.db.url, &["migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = crm(&h, &h.db.url, &["serve"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("DEALMESH_JWT_HS256_SECRET"), "{stderr}");
}

/// `serve` as a platform runs it: ready, then SIGTERM, then a clean exit
/// within the grace period.
#[tokio::test]
async fn serve_exits_zero_on_sigterm() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    let h = Harness::new(1).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dealmesh-crm"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &h.db.url)
        .env(
            "DEALMESH_KAFKA_BOOTSTRAP_SERVERS",
            &h.kafka.bootstrap_servers,
        )
        .env("DEALMESH_TOPIC_PREFIX", &h.kafka.topic_prefix)
        .env(
            "DEALMESH_JWT_HS256_SECRET",
            "a-test-secret-of-at-least-32-characters",
        )
        .env("DEALMESH_CRM_GRPC_ADDR", "127.0.0.1:0")
        .env("DEALMESH_CRM_ADMIN_ADDR", "127.0.0.1:0")
        .env("DEALMESH_SHUTDOWN_GRACE", "10s")
        .env("DEALMESH_LOG_FORMAT", "json")
        .env("DEALMESH_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("dealmesh-crm runs");
    let stdout = child.stdout.take().expect("piped stdout");
    // Every log line is kept: a failure shows what the service last said.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (lines, listening) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "listening" {
                    let _ = lines.send(entry["listener"].as_str().unwrap_or_default().to_owned());
                }
                log.lock().expect("log lock").push(line);
            }
        });
    }
    let log_tail = || {
        let log = log.lock().expect("log lock");
        log[log.len().saturating_sub(40)..].join("\n")
    };
    let mut listeners = Vec::new();
    while listeners.len() < 2 {
        let listener = listening
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "crm logs its gRPC and admin listeners within 60s; it logged:\n{}",
                    log_tail()
                )
            });
        listeners.push(listener);
    }

    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on crm") {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!(
                "crm still running 20s after SIGTERM (grace 10s); it logged:\n{}",
                log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "listeners were {listeners:?}; crm logged:\n{}",
        log_tail()
    );
}
