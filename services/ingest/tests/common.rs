//! A real ingest service on port 0 against the test broker and a fresh
//! database, with its own topics.

#![allow(dead_code)]

use std::net::SocketAddr;

use dealmesh_eventlog::Topics;
use dealmesh_ingest::app::App;
use dealmesh_ingest::config::IngestConfig;
use dealmesh_proto::v1::ingest_service_client::IngestServiceClient;
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use dealmesh_testkit::TestDatabase;
use tonic::transport::Channel;

pub const PARTNER: &str = "partner-x";
pub const PARTNER_SECRET: &str = "partner-x-secret-0123456789";

pub struct TestIngest {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub bootstrap: String,
    pub topics: Topics,
    pub db: TestDatabase,
    pub env: Vec<(String, String)>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestIngest {
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
            ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
            ("DEALMESH_TOPIC_PREFIX".into(), prefix.clone()),
            ("DEALMESH_DEAL_LOG_PARTITIONS".into(), "3".into()),
            ("DEALMESH_INGEST_GRPC_ADDR".into(), "127.0.0.1:0".into()),
            ("DEALMESH_INGEST_HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("DEALMESH_INGEST_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            (
                "DEALMESH_WEBHOOK_SECRET_PARTNER_X".into(),
                PARTNER_SECRET.into(),
            ),
        ];
        for (k, v) in extra {
            env.push(((*k).into(), (*v).into()));
        }
        let config =
            IngestConfig::from_source(&MapSource::new(env.clone())).expect("test config is valid");
        let app = App::build(config).await.expect("ingest starts");
        let shutdown = CancellationToken::new();
        let (grpc_addr, http_addr, admin_addr) = (app.grpc_addr, app.http_addr, app.admin_addr);
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            grpc_addr,
            http_addr,
            admin_addr,
            bootstrap,
            topics: Topics::new(&prefix),
            db,
            env,
            shutdown,
            task,
        }
    }

    pub async fn client(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("grpc connects")
    }

    pub async fn events(&self) -> Vec<dealmesh_proto::DealEvent> {
        dealmesh_testkit::read_deal_events(&self.bootstrap, &self.topics.deals).await
    }

    /// The Prometheus text the admin port serves at `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn webhook_url(&self, source: &str) -> String {
        format!("http://{}/v1/webhooks/{source}", self.http_addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("run task joins")
            .expect("run ends cleanly");
    }
}

/// The service's telemetry, as `main` installs it, once per test process.
fn init_telemetry() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let config = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
            &MapSource::new([("DEALMESH_LOG", "warn"), ("DEALMESH_LOG_FORMAT", "text")]),
            "dealmesh-ingest-test",
        )
        .expect("telemetry config");
        // Kept for the whole process: dropping it would stop tracing.
        std::mem::forget(dealmesh_runtime::telemetry::init(&config).expect("telemetry"));
    });
}

pub fn deal(key: &str, name: &str, website: &str) -> dealmesh_proto::v1::DealSubmission {
    dealmesh_proto::v1::DealSubmission {
        idempotency_key: key.into(),
        source: "scout-service".into(),
        name: name.into(),
        website: website.into(),
        ..Default::default()
    }
}
