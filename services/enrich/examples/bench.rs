//! Enrichment throughput against local fake providers with a set latency:
//! how far concurrency hides provider latency.
//!
//! ```sh
//! cargo run --release -p dealmesh-enrich --example bench -- \
//!     --latency-ms 50 --concurrency 1,4,16,64 --deals 256
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
use dealmesh_enrich::config::EnrichConfig;
use dealmesh_enrich::enricher::Outcome;
use dealmesh_enrich::provider::ProviderMetrics;
use dealmesh_proto::v1::DealSourced;
use dealmesh_runtime::config::MapSource;
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
        let config = EnrichConfig::from_source(&MapSource::new([
            ("DEALMESH_ENRICH_GITHUB_BASE_URL", github.uri()),
            ("DEALMESH_ENRICH_GITHUB_RATE", "off".into()),
            ("DEALMESH_ENRICH_CRUNCHBASE_BASE_URL", crunchbase.uri()),
            ("DEALMESH_ENRICH_CRUNCHBASE_API_KEY", "bench".into()),
            ("DEALMESH_ENRICH_CRUNCHBASE_RATE", "off".into()),
            ("DEALMESH_ENRICH_LLM_BASE_URL", format!("{}/v1", llm.uri())),
            ("DEALMESH_ENRICH_LLM_RATE", "off".into()),
        ]))?;
        for &concurrency in &args.concurrency {
            // A fresh enricher per run, so no run revalidates another's ETags.
            let enricher = dealmesh_enrich::app::enricher(&config, ProviderMetrics::default())?;
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
