//! Event-to-webhook latency and delivery throughput with many subscribed
//! endpoints on one local receiver, against the real broker and PostgreSQL.
//!
//! ```sh
//! cargo bench -p dealmesh-notify --bench webhook_latency
//! NOTIFY_BENCH_ENDPOINTS=1000 NOTIFY_BENCH_EVENTS=20 NOTIFY_BENCH_GAP_MS=500 \
//!   cargo bench -p dealmesh-notify --bench webhook_latency
//! ```
//!
//! Every event is a DealScored that all endpoints subscribe to, so each
//! event fans out to one delivery per endpoint. Latency is from just before
//! the event is published to the deal log until the receiver has the POST.

#[path = "../tests/common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::NotificationTrigger as T;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
    let at = Instant::now();
    let event_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    arrivals.lock().unwrap().push((event_id, at));
    "ok"
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let endpoints = env_or("NOTIFY_BENCH_ENDPOINTS", 1000);
    let events = env_or("NOTIFY_BENCH_EVENTS", 20);
    let gap = Duration::from_millis(env_or("NOTIFY_BENCH_GAP_MS", 500) as u64);

    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/hook/{n}", axum::routing::post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let notify = TestNotify::start_with(&[("DEALMESH_DATABASE_MAX_CONNECTIONS", "32")]).await;
    for n in 0..endpoints {
        subscribe(
            &notify,
            webhook_subscription(&format!("http://{addr}/hook/{n}"), &[T::DealScored]),
            &format!("partner-{n}"),
            Role::Partner,
        )
        .await;
    }
    eprintln!("{endpoints} endpoints subscribed; publishing {events} events {gap:?} apart");

    let deal = new_deal_id();
    let mut published: HashMap<String, Instant> = HashMap::new();
    for i in 0..events {
        let event = scored(&deal, 50.0 + i as f64);
        published.insert(event.event_id.clone(), Instant::now());
        notify.publish(&event).await;
        tokio::time::sleep(gap).await;
    }
    let expected = endpoints * events;
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrivals = arrivals.lock().unwrap().clone();
    let first_publish = published.values().min().copied().unwrap();
    let last_arrival = arrivals.iter().map(|(_, at)| *at).max().unwrap();
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(id, at)| published.get(id).map(|p| at.duration_since(*p)))
        .collect();
    latencies.sort();
    let span = last_arrival.duration_since(first_publish);
    println!(
        "endpoints: {endpoints}, events: {events} ({gap:?} apart), deliveries: {} of {expected}",
        latencies.len()
    );
    println!(
        "event-to-webhook latency: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    println!(
        "throughput: {:.0} deliveries/s over {:?} (first publish to last arrival)",
        latencies.len() as f64 / span.as_secs_f64(),
        span
    );
    notify.abandon();
}
