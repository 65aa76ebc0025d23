//! A real CRM on port 0 against the test broker and a fresh database, with
//! its own topics; deals are seeded by publishing the events ingest, enrich
//! and scoring would.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use dealmesh_auth::{Claims, Role, mint_hs256};
use dealmesh_crm::app::App;
use dealmesh_crm::config::CrmConfig;
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics, envelope};
use dealmesh_proto::v1::crm_service_client::CrmServiceClient;
use dealmesh_proto::v1::*;
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use dealmesh_testkit::TestDatabase;
use tonic::transport::Channel;

pub const SECRET: &str = "crm-test-secret-0123456789abcdef";

pub struct TestCrm {
    pub grpc_addr: SocketAddr,
    pub bootstrap: String,
    pub topics: Topics,
    pub db: TestDatabase,
    pub producer: EventProducer,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub env: Vec<(String, String)>,
}

pub fn init_telemetry() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let config = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
            &MapSource::new([("DEALMESH_LOG", "warn"), ("DEALMESH_LOG_FORMAT", "text")]),
            "dealmesh-crm-test",
        )
        .expect("telemetry config");
        std::mem::forget(dealmesh_runtime::telemetry::init(&config).expect("telemetry"));
    });
}

impl TestCrm {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        init_telemetry();
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let db = TestDatabase::create().await;
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("DEALMESH_DATABASE_MAX_CONNECTIONS".into(), "6".into()),
            ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
            ("DEALMESH_TOPIC_PREFIX".into(), prefix.clone()),
            ("DEALMESH_DEAL_LOG_PARTITIONS".into(), "3".into()),
            ("DEALMESH_CRM_GRPC_ADDR".into(), "127.0.0.1:0".into()),
            ("DEALMESH_CRM_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            ("DEALMESH_CRM_BATCH_LINGER".into(), "5ms".into()),
            ("DEALMESH_CRM_VOTE_CLOSE_INTERVAL".into(), "100ms".into()),
            ("DEALMESH_CRM_MAX_NOTE_CHARS".into(), "500".into()),
            ("DEALMESH_JWT_HS256_SECRET".into(), SECRET.into()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).into(), (*v).into()));
        }
        let config = CrmConfig::from_source(&MapSource::new(env.clone())).expect("test config");
        let app = App::build(config).await.expect("crm starts");
        let grpc_addr = app.grpc_addr;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        let topics = Topics::new(&prefix);
        let producer = EventProducer::new(
            &KafkaSettings::new(bootstrap.clone(), prefix.clone()),
            topics.clone(),
            "/dealmesh/test",
        )
        .expect("producer");
        Self {
            grpc_addr,
            bootstrap,
            topics,
            db,
            producer,
            shutdown,
            task,
            env,
        }
    }

    pub async fn client(&self) -> CrmServiceClient<Channel> {
        CrmServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("grpc connects")
    }

    /// Publishes a sourced, enriched and scored deal and waits until the
    /// read model has it. Returns the deal id.
    pub async fn seed_deal(&self, name: &str, sector: &str, summary: &str, score: f64) -> String {
        let deal_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string();
        for event in deal_events(&deal_id, name, sector, summary, score) {
            self.producer.publish(&event).await.expect("publish");
        }
        self.wait_version(&deal_id, 3).await;
        deal_id
    }

    /// Waits until the deal has reached `version` in the read model.
    pub async fn wait_version(&self, deal_id: &str, version: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT version FROM crm.deals WHERE deal_id = $1")
                    .bind(deal_id)
                    .fetch_optional(&self.db.pool)
                    .await
                    .ok()
                    .flatten();
            if v.is_some_and(|v| v >= version) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "deal {deal_id} did not reach version {version} (at {v:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.db.pool)
            .await
            .expect("count query")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("run task joins")
            .expect("run ends cleanly");
    }
}

pub fn token(sub: &str, role: Role) -> String {
    mint_hs256(SECRET, &Claims::new(sub, role, Duration::from_secs(600)))
}

pub fn lp_token(lp_id: &str) -> String {
    mint_hs256(SECRET, &Claims::lp(lp_id, Duration::from_secs(600)))
}

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

pub fn command(key: &str, deal_id: &str) -> Option<CrmCommand> {
    Some(CrmCommand {
        idempotency_key: key.into(),
        deal_id: deal_id.into(),
        expected_version: None,
    })
}

pub fn event(deal_id: &str, payload: Payload) -> DealEvent {
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: deal_id.into(),
        occurred_at: Some(envelope::timestamp(Utc::now())),
        actor: Some(envelope::service_actor("test")),
        correlation_id: "corr".into(),
        causation_id: String::new(),
        expected_version: None,
        idempotency_key: String::new(),
        payload: Some(payload),
    }
}

/// What ingest, enrich and scoring say about one company.
pub fn deal_events(
    deal_id: &str,
    name: &str,
    sector: &str,
    summary: &str,
    score: f64,
) -> Vec<DealEvent> {
    let domain = format!("{}.example", name.to_lowercase().replace(' ', "-"));
    vec![
        event(
            deal_id,
            Payload::DealSourced(DealSourced {
                source: "github".into(),
                channel: dealmesh_proto::v1::Channel::Poller as i32,
                external_id: format!("gh-{name}"),
                name: name.into(),
                website: format!("https://{domain}"),
                github_owner: name.to_lowercase(),
                description: format!("{name} does things"),
                company_key: Some(CompanyKey {
                    kind: CompanyKeyKind::Domain as i32,
                    value: domain,
                }),
                ..Default::default()
            }),
        ),
        event(
            deal_id,
            Payload::DealEnriched(DealEnriched {
                github: Some(GithubSignals {
                    provenance: Some(Provenance {
                        source: "github".into(),
                        fetched_at: Some(envelope::timestamp(Utc::now())),
                        url: String::new(),
                    }),
                    stars: 1200,
                    ..Default::default()
                }),
                analysis: Some(Analysis {
                    provenance: Some(Provenance {
                        source: "llm".into(),
                        fetched_at: Some(envelope::timestamp(Utc::now())),
                        url: String::new(),
                    }),
                    analyzer: AnalyzerKind::Builtin as i32,
                    summary: summary.into(),
                    sector: sector.into(),
                    business_model: "saas".into(),
                    risks: vec!["competition".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        event(
            deal_id,
            Payload::DealScored(DealScored {
                score,
                model_version: "thesis-v1".into(),
                contributions: vec![FeatureContribution {
                    feature: "github_stars".into(),
                    value: 0.8,
                    weight: 0.5,
                    contribution: score / 2.0,
                    explanation: "popular repository".into(),
                }],
                ..Default::default()
            }),
        ),
    ]
}
