//! Enrichment throughput against local fake providers with a set latency:
//! how far concurrency hides provider latency.
//!
//! ```sh
//! cargo run --release -p dealmesh-enrich --example enrich_bench -- \
//!     --latency-ms 50 --concurrency 1,4,16,64 --deals 256 [--through-log]
//! ```
//!
//! Every deal names a GitHub repository and a Crunchbase organization and
//! is analysed by an OpenAI-compatible LLM, so one deal is six requests in
//! three sequential round trips: the repository, then its contributors,
//! commit activity and stargazers at once (Crunchbase runs alongside), then
//! the LLM. "ideal" is `concurrency / (3 * latency)`. The fakes serve the
//! fixtures in `tests/fixtures/`.

use std::time::{Duration, Instant};

use clap::Parser;
use dealmesh_enrich::app::App;
use dealmesh_enrich::config::EnrichConfig;
use dealmesh_enrich::enricher::Outcome;
use dealmesh_enrich::provider::ProviderMetrics;
use dealmesh_eventlog::envelope::timestamp;
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics};
use dealmesh_proto::v1::DealSourced;
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use futures::StreamExt;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Parser)]
struct Args {
    /// Provider latencies to measure, in milliseconds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50")]
    latency_ms: Vec<u64>,
    /// Deals enriched at once, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Deals per measurement.
    #[arg(long, default_value_t = 256)]
    deals: usize,
    /// Run the whole service against a broker (`DEALMESH_TEST_KAFKA_BOOTSTRAP`,
    /// else a tansu of its own): publish the deals as `DealSourced` and time
    /// until every one is enriched, instead of calling the enricher directly.
    #[arg(long)]
    through_log: bool,
}

const REPO: &str = include_str!("../tests/fixtures/github/repo.json");
const CONTRIBUTORS: &str = include_str!("../tests/fixtures/github/contributors.json");
const COMMITS: &str = include_str!("../tests/fixtures/github/commit-activity.json");
const STARS: &str = include_str!("../tests/fixtures/github/stargazers-with-timestamps.json");
const ORGANIZATION: &str = include_str!("../tests/fixtures/crunchbase/organization.json");
const COMPLETION: &str = include_str!("../tests/fixtures/llm/chat-completion.json");

async fn fake(routes: &[(&str, &str, &'static str)], latency: Duration) -> MockServer {
    let server = MockServer::start().await;
    for (verb, path, body) in routes {
        Mock::given(method(*verb))
            .and(path_regex(*path))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_raw(*body, "application/json")
                    .set_delay(latency),
            )
            .mount(&server)
            .await;
    }
    server
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| latency (ms) | concurrency | deals | seconds | deals/s | ideal deals/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &latency_ms in &args.latency_ms {
        let latency = Duration::from_millis(latency_ms);
        let github = fake(
            &[
                ("GET", r"^/repos/[^/]+/[^/]+$", REPO),
                ("GET", r"^/repos/[^/]+/[^/]+/contributors$", CONTRIBUTORS),
                (
                    "GET",
                    r"^/repos/[^/]+/[^/]+/stats/commit_activity$",
                    COMMITS,
                ),
                ("GET", r"^/repos/[^/]+/[^/]+/stargazers$", STARS),
            ],
            latency,
        )
        .await;
        let crunchbase = fake(
            &[(
                "GET",
                r"^/api/v4/entities/organizations/[^/]+$",
                ORGANIZATION,
            )],
            latency,
        )
        .await;
        let llm = fake(&[("POST", r"^/v1/chat/completions$", COMPLETION)], latency).await;
        let env: Vec<(&str, String)> = vec![
            ("DEALMESH_ENRICH_GITHUB_BASE_URL", github.uri()),
            ("DEALMESH_ENRICH_GITHUB_RATE", "off".into()),
            ("DEALMESH_ENRICH_CRUNCHBASE_BASE_URL", crunchbase.uri()),
            ("DEALMESH_ENRICH_CRUNCHBASE_API_KEY", "bench".into()),
            ("DEALMESH_ENRICH_CRUNCHBASE_RATE", "off".into()),
            ("DEALMESH_ENRICH_LLM_BASE_URL", format!("{}/v1", llm.uri())),
            ("DEALMESH_ENRICH_LLM_RATE", "off".into()),
        ];
        for &concurrency in &args.concurrency {
            let deals: Vec<DealSourced> = (0..args.deals)
                .map(|i| DealSourced {
                    source: "bench".into(),
                    name: format!("Deal {i}"),
                    github_owner: format!("owner{i}"),
                    github_repo: "repo".into(),
                    description: "Forecasting software for utilities.".into(),
                    attributes: [("crunchbase_permalink".to_owned(), format!("deal-{i}"))].into(),
                    ..Default::default()
                })
                .collect();
            let seconds = if args.through_log {
                through_log(&env, concurrency, deals).await?
            } else {
                direct(&env, concurrency, &deals).await?
            };
            let ideal = if latency.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.1}", concurrency as f64 / (3.0 * latency.as_secs_f64()))
            };
            println!(
                "| {latency_ms} | {concurrency} | {} | {seconds:.2} | {:.1} | {ideal} |",
                args.deals,
                args.deals as f64 / seconds,
            );
        }
    }
    Ok(())
}

/// Deals through the enricher alone, `concurrency` at a time.
async fn direct(
    env: &[(&str, String)],
    concurrency: usize,
    deals: &[DealSourced],
) -> anyhow::Result<f64> {
    let config = EnrichConfig::from_source(&MapSource::new(env.iter().cloned()))?;
    // A fresh enricher per run, so no run revalidates another's ETags.
    let enricher = dealmesh_enrich::app::enricher(&config, ProviderMetrics::default())?;
    let started = Instant::now();
    let outcomes: Vec<Outcome> = futures::stream::iter(deals.iter().enumerate())
        .map(|(i, deal)| {
            let enricher = &enricher;
            async move { enricher.enrich(&format!("bench-{i}"), deal).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed(_)))
        .count();
    anyhow::ensure!(failed == 0, "{failed} deals failed");
    Ok(seconds)
}

/// Deals through the running service: published to a fresh deal log, timed
/// from the first publish until the service counts them all enriched.
async fn through_log(
    env: &[(&str, String)],
    concurrency: usize,
    deals: Vec<DealSourced>,
) -> anyhow::Result<f64> {
    let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
    let prefix = dealmesh_testkit::unique_topic_prefix();
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    env.extend([
        ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
        ("DEALMESH_TOPIC_PREFIX".into(), prefix.clone()),
        ("DEALMESH_ENRICH_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        (
            "DEALMESH_ENRICH_CONCURRENCY".into(),
            concurrency.to_string(),
        ),
        ("DEALMESH_ENRICH_GROUP_ID".into(), format!("{prefix}enrich")),
    ]);
    let app = App::build(EnrichConfig::from_source(&MapSource::new(env))?).await?;
    let metrics_url = format!("http://{}/metrics", app.admin_addr);
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(app.run(shutdown.clone()));
    let producer = EventProducer::new(
        &KafkaSettings::new(bootstrap, prefix.clone()),
        Topics::new(&prefix),
        "/bench",
    )?;
    let client = reqwest::Client::new();

    // One deal first, so joining the group is not timed.
    let warm_up = DealSourced {
        name: "Warm-up".into(),
        ..Default::default()
    };
    producer.publish(&sourced_event(warm_up)).await?;
    wait_handled(&client, &metrics_url, 1).await?;

    let started = Instant::now();
    let total = deals.len() + 1;
    futures::future::try_join_all(deals.into_iter().map(|deal| {
        let producer = producer.clone();
        async move { producer.publish(&sourced_event(deal)).await }
    }))
    .await?;
    wait_handled(&client, &metrics_url, total).await?;
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    service.await??;
    Ok(seconds)
}

fn sourced_event(deal: DealSourced) -> DealEvent {
    let deal_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, deal.name.as_bytes());
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: deal_id.to_string(),
        occurred_at: Some(timestamp(chrono::Utc::now())),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        payload: Some(Payload::DealSourced(deal)),
        ..Default::default()
    }
}

/// Waits until the service's `dealmesh_enrich_deals_total` reaches `count`;
/// fails if any deal failed.
async fn wait_handled(client: &reqwest::Client, url: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = client.get(url).send().await?.text().await?;
        let (mut enriched, mut failed) = (0.0, 0.0);
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("dealmesh_enrich_deals_total{") {
                let value: f64 = rest.rsplit(' ').next().unwrap_or("0").parse()?;
                if rest.contains("\"enriched\"") {
                    enriched += value;
                } else {
                    failed += value;
                }
            }
        }
        anyhow::ensure!(failed == 0.0, "{failed} deals failed");
        if enriched as usize >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "deals not enriched after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
