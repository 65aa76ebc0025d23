//! A real scoring service on port 0 against the test broker and a fresh
//! database, with its own topics and its own model file.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dealmesh_auth::{Claims, Role};
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics, envelope};
use dealmesh_proto::v1::scoring_service_client::ScoringServiceClient;
use dealmesh_proto::v1::{
    Analysis, CrunchbaseSignals, DealEnriched, DealScored, FundingRound, GithubSignals, Location,
    Money,
};
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use dealmesh_scoring::app::App;
use dealmesh_scoring::config::ScoringConfig;
use dealmesh_testkit::TestDatabase;
use prost::Message;
use tonic::transport::Channel;

pub const JWT_SECRET: &str = "scoring-test-secret-0123456789abcdef";
/// The model the local stack ships.
pub const THESIS: &str = include_str!("../thesis.toml");

pub struct TestScoring {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub bootstrap: String,
    pub prefix: String,
    pub topics: Topics,
    pub db: TestDatabase,
    pub model_path: PathBuf,
    pub env: Vec<(String, String)>,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestScoring {
    pub async fn start() -> Self {
        Self::start_with(THESIS).await
    }

    pub async fn start_with(model: &str) -> Self {
        Self::start_with_env(model, &[]).await
    }

    pub async fn start_with_env(model: &str, extra: &[(&str, &str)]) -> Self {
        init_telemetry();
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let db = TestDatabase::create().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let model_path = dir.path().join("thesis.toml");
        std::fs::write(&model_path, model).expect("model file written");
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
            ("DEALMESH_TOPIC_PREFIX".into(), prefix.clone()),
            ("DEALMESH_DEAL_LOG_PARTITIONS".into(), "3".into()),
            ("DEALMESH_SCORING_GRPC_ADDR".into(), "127.0.0.1:0".into()),
            ("DEALMESH_SCORING_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            (
                "DEALMESH_SCORING_MODEL_FILE".into(),
                model_path.display().to_string(),
            ),
            // Reloads in these tests go through the RPC, not the poller.
            ("DEALMESH_SCORING_MODEL_POLL".into(), "0s".into()),
            ("DEALMESH_JWT_HS256_SECRET".into(), JWT_SECRET.into()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut service = Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap,
            topics: Topics::new(&prefix),
            prefix,
            db,
            model_path,
            env,
            shutdown: CancellationToken::new(),
            task: None,
            _dir: dir,
        };
        service.run().await;
        service
    }

    pub fn config(&self) -> ScoringConfig {
        ScoringConfig::from_source(&MapSource::new(self.env.clone())).expect("test config is valid")
    }

    /// Starts (or restarts) the service on new ports.
    pub async fn run(&mut self) {
        let app = App::build(self.config()).await.expect("scoring starts");
        self.grpc_addr = app.grpc_addr;
        self.admin_addr = app.admin_addr;
        self.shutdown = CancellationToken::new();
        self.task = Some(tokio::spawn(app.run(self.shutdown.clone())));
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("run task joins")
                .expect("run ends cleanly");
        }
    }

    pub async fn client(&self) -> ScoringServiceClient<Channel> {
        ScoringServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("grpc connects")
    }

    /// A producer onto this service's deal log, as enrich would publish.
    pub fn producer(&self) -> EventProducer {
        let settings = KafkaSettings::new(&self.bootstrap, &self.prefix);
        EventProducer::new(&settings, self.topics.clone(), "/dealmesh/test").expect("producer")
    }

    pub async fn events(&self) -> Vec<DealEvent> {
        dealmesh_testkit::read_deal_events(&self.bootstrap, &self.topics.deals).await
    }

    /// Every DealScored on the log, with its envelope. Records that are not
    /// envelopes (the bad-input tests write some) are passed over.
    pub async fn scores(&self) -> Vec<(DealEvent, DealScored)> {
        dealmesh_testkit::read_topic(&self.bootstrap, &self.topics.deals)
            .await
            .into_iter()
            .filter_map(|record| DealEvent::decode(record.value?.as_slice()).ok())
            .filter_map(|event| match event.payload.clone() {
                Some(Payload::DealScored(scored)) => Some((event, scored)),
                _ => None,
            })
            .collect()
    }

    /// Reads the log until `done` holds for the DealScored events on it, or
    /// panics after a minute.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[(DealEvent, DealScored)]) -> bool,
    ) -> Vec<(DealEvent, DealScored)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let scores = self.scores().await;
            if done(&scores) {
                return scores;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within a minute; log has {} score(s)",
                scores.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Reads the log until a DealScored answers each of `source_event_ids`
    /// (the service works in the background), or panics after a minute.
    pub async fn wait_for_scores(&self, source_event_ids: &[&str]) -> Vec<(DealEvent, DealScored)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let scores = self.scores().await;
            let missing: Vec<&&str> = source_event_ids
                .iter()
                .filter(|id| !scores.iter().any(|(_, s)| s.source_event_id == **id))
                .collect();
            if missing.is_empty() {
                return scores;
            }
            assert!(
                Instant::now() < deadline,
                "no DealScored for {missing:?} within a minute; log has {} score(s)",
                scores.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A request carrying a bearer token for `role`.
pub fn authed<T>(message: T, role: Role) -> tonic::Request<T> {
    let token = dealmesh_auth::mint_hs256(
        JWT_SECRET,
        &Claims::new("test-user", role, Duration::from_secs(600)),
    );
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    request
}

/// The service's telemetry, as `main` installs it, once per test process.
fn init_telemetry() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let config = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
            &MapSource::new([("DEALMESH_LOG", "warn"), ("DEALMESH_LOG_FORMAT", "text")]),
            "dealmesh-scoring-test",
        )
        .expect("telemetry config");
        // Kept for the whole process: dropping it would stop tracing.
        std::mem::forget(dealmesh_runtime::telemetry::init(&config).expect("telemetry"));
    });
}

/// A DealEnriched envelope for `deal_id`, as enrich publishes it.
pub fn enriched_event(deal_id: &str, enriched: DealEnriched) -> DealEvent {
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: deal_id.to_owned(),
        occurred_at: Some(envelope::timestamp(chrono::Utc::now())),
        actor: Some(envelope::service_actor("dealmesh-enrich")),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        causation_id: uuid::Uuid::now_v7().to_string(),
        payload: Some(Payload::DealEnriched(enriched)),
        ..Default::default()
    }
}

pub fn new_deal_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Signals of a company squarely on the shipped thesis: developer tools,
/// seed, US, strong and active open-source traction, $3M raised.
pub fn on_thesis() -> DealEnriched {
    signals(
        "Developer Tools",
        "seed",
        "USA",
        25_000,
        40.0,
        80,
        50,
        3_000_000,
    )
}

/// Signals of a company far from it: insurance, series C, Brazil, little
/// traction, $45M raised.
pub fn off_thesis() -> DealEnriched {
    signals("Insurance", "series_c", "BR", 120, 0.2, 3, 1, 45_000_000)
}

#[allow(clippy::too_many_arguments)]
pub fn signals(
    sector: &str,
    stage: &str,
    country_code: &str,
    stars: i64,
    star_velocity_30d: f64,
    contributors: i64,
    commits_per_week: i64,
    funding_usd: i64,
) -> DealEnriched {
    DealEnriched {
        github: Some(GithubSignals {
            owner: "acme".into(),
            repo: "acme".into(),
            stars,
            forks: stars / 10,
            contributors,
            weekly_commits: vec![commits_per_week; 52],
            star_velocity_30d,
            ..Default::default()
        }),
        crunchbase: Some(CrunchbaseSignals {
            permalink: "acme".into(),
            funding_total: Some(Money {
                value: funding_usd,
                currency: "USD".into(),
                value_usd: funding_usd,
            }),
            last_round: Some(FundingRound {
                investment_type: stage.into(),
                announced_on: "2026-01-15".into(),
                money_raised: None,
            }),
            headcount_band: "c_00011_00050".into(),
            founded_on: "2023-02-01".into(),
            categories: vec!["Software".into()],
            location: Some(Location {
                country_code: country_code.into(),
                ..Default::default()
            }),
            operating_status: "active".into(),
            ..Default::default()
        }),
        analysis: Some(Analysis {
            sector: sector.into(),
            business_model: "open core".into(),
            summary: "a company".into(),
            ..Default::default()
        }),
        source_event_id: uuid::Uuid::now_v7().to_string(),
        gaps: vec![],
    }
}
