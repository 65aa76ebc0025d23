//! Test support: a real Kafka-API broker and a fresh PostgreSQL database per test.
//!
//! Tests run against the real thing and in parallel, so every helper hands out
//! something no other test sees: a topic prefix, a database.
//!
//! ```no_run
//! # async fn example() {
//! let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
//! let topic = format!("{}deals", dealmesh_testkit::unique_topic_prefix());
//! dealmesh_testkit::create_topic(&bootstrap, &topic, 3).await;
//! let db = dealmesh_testkit::TestDatabase::create().await;
//! // ... run the code under test against `bootstrap`, `topic` and `db.pool` ...
//! let events = dealmesh_testkit::read_deal_events(&bootstrap, &topic).await;
//! # }
//! ```

mod broker;
mod database;
mod topics;

pub use broker::kafka_bootstrap;
pub use database::TestDatabase;
pub use topics::{TopicRecord, create_topic, read_deal_events, read_topic, unique_topic_prefix};

/// Peak resident memory (`VmHWM`, KiB) of process `pid`, from
/// `/proc/<pid>/status`: for benchmarks that report what a process used.
/// `None` off Linux or once the process is gone.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs blocking client calls (librdkafka, process spawning) off the async
/// runtime, re-raising a panic with its original message.
async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}
