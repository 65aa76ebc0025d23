//! What every poller test needs: the real broker and a fresh database with
//! their own topics, the real ingestor, and a virtual clock that records
//! every wait instead of sleeping through it.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use dealmesh_eventlog::Topics;
use dealmesh_ingest::config::IngestConfig;
use dealmesh_ingest::ingestor::Ingestor;
use dealmesh_ingest::pollers::crunchbase::CrunchbasePoller;
use dealmesh_ingest::pollers::github::GithubPoller;
use dealmesh_ingest::pollers::state::{StateRow, StateStore};
use dealmesh_ingest::pollers::{Clock, SharedClock};
use dealmesh_proto::v1::DealSourced;
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_testkit::TestDatabase;
use futures::future::BoxFuture;

pub const GITHUB_TOKEN: &str = "ghp_test_token_0123456789";
pub const CRUNCHBASE_KEY: &str = "cb-test-user-key-0123456789";

/// Time that moves only when a poller waits: `now` is a fixed start plus
/// every wait so far.
pub struct VirtualClock {
    start: DateTime<Utc>,
    waits: Mutex<Vec<Duration>>,
}

impl VirtualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            // A whole second, so reset timestamps give exact waits.
            start: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            waits: Mutex::new(Vec::new()),
        })
    }

    pub fn waits(&self) -> Vec<Duration> {
        self.waits.lock().unwrap().clone()
    }

    pub fn total(&self) -> Duration {
        self.waits().iter().sum()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        self.start + chrono::Duration::from_std(self.total()).unwrap()
    }

    fn elapsed(&self) -> Duration {
        self.total()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.waits.lock().unwrap().push(duration);
        Box::pin(tokio::task::yield_now())
    }
}

pub struct Harness {
    pub bootstrap: String,
    pub topics: Topics,
    pub db: TestDatabase,
    pub env: Vec<(String, String)>,
    pub ingestor: Ingestor,
    pub state: StateStore,
    pub clock: Arc<VirtualClock>,
}

impl Harness {
    pub async fn start() -> Self {
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let db = TestDatabase::create().await;
        let env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), db.url.clone()),
            ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
            ("DEALMESH_TOPIC_PREFIX".into(), prefix.clone()),
            ("DEALMESH_DEAL_LOG_PARTITIONS".into(), "3".into()),
        ];
        let config = IngestConfig::from_source(&MapSource::new(env.clone())).unwrap();
        let (ingestor, pool) = dealmesh_ingest::app::ingestor_and_pool(&config, None)
            .await
            .expect("ingestor starts");
        Self {
            bootstrap,
            topics: Topics::new(&prefix),
            db,
            env,
            ingestor,
            state: StateStore::new(pool),
            clock: VirtualClock::new(),
        }
    }

    /// The service configuration with these poller settings on top.
    pub fn config(&self, extra: &[(&str, &str)]) -> IngestConfig {
        let mut env = self.env.clone();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        IngestConfig::from_source(&MapSource::new(env)).expect("poller config is valid")
    }

    /// A GitHub poller against `api_url` (a fresh instance is what a
    /// restarted service builds).
    pub fn github(&self, api_url: &str, extra: &[(&str, &str)]) -> GithubPoller {
        self.github_with_clock(api_url, extra, self.clock.clone())
    }

    pub fn github_with_clock(
        &self,
        api_url: &str,
        extra: &[(&str, &str)],
        clock: SharedClock,
    ) -> GithubPoller {
        let mut settings = vec![
            ("DEALMESH_INGEST_GITHUB_API_URL", api_url),
            ("DEALMESH_INGEST_GITHUB_TOKEN", GITHUB_TOKEN),
            ("DEALMESH_INGEST_GITHUB_SEARCHES", "topic:llm stars:>500"),
            ("DEALMESH_INGEST_POLLER_HTTP_TIMEOUT", "5s"),
        ];
        settings.extend_from_slice(extra);
        let config = self.config(&settings);
        GithubPoller::new(
            config.github,
            &config.poller_http,
            self.ingestor.clone(),
            self.state.clone(),
            clock,
        )
        .unwrap()
    }

    pub fn crunchbase(&self, api_url: &str, extra: &[(&str, &str)]) -> CrunchbasePoller {
        let mut settings = vec![
            ("DEALMESH_INGEST_CRUNCHBASE_API_URL", api_url),
            ("DEALMESH_INGEST_CRUNCHBASE_USER_KEY", CRUNCHBASE_KEY),
            (
                "DEALMESH_INGEST_CRUNCHBASE_SEARCHES",
                r#"{"seed-eu": {"field_ids": ["identifier", "short_description", "website_url", "num_employees_enum", "funding_total"], "query": [{"type": "predicate", "field_id": "last_funding_type", "operator_id": "includes", "values": ["seed"]}], "limit": 2}}"#,
            ),
            ("DEALMESH_INGEST_POLLER_HTTP_TIMEOUT", "5s"),
        ];
        settings.extend_from_slice(extra);
        let config = self.config(&settings);
        CrunchbasePoller::new(
            config.crunchbase,
            &config.poller_http,
            self.ingestor.clone(),
            self.state.clone(),
            self.clock.clone() as SharedClock,
        )
        .unwrap()
    }

    /// Every `DealSourced` on the deal log, as a consumer reads them.
    pub async fn sourced(&self) -> Vec<(DealEvent, DealSourced)> {
        dealmesh_testkit::read_deal_events(&self.bootstrap, &self.topics.deals)
            .await
            .into_iter()
            .map(|event| match event.payload.clone() {
                Some(Payload::DealSourced(sourced)) => (event, sourced),
                other => panic!("expected DealSourced, got {other:?}"),
            })
            .collect()
    }

    pub async fn state_of(&self, poller: &str, search: &str) -> StateRow {
        self.state
            .get(poller, search)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no state for {poller} {search:?}"))
    }
}

/// A fixture file from `tests/fixtures/`.
pub fn fixture(path: &str) -> serde_json::Value {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The deal id a company with these identity signals gets.
pub fn deal_id(website: Option<&str>, owner: Option<&str>, name: &str) -> String {
    dealmesh_ingest::company::CompanyKey::derive(website, owner, Some(name))
        .unwrap()
        .deal_id()
        .to_string()
}
