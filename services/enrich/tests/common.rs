//! Local stand-ins for GitHub, Crunchbase and an OpenAI-compatible LLM that
//! serve the real-shaped bodies in `tests/fixtures/` with the real headers,
//! and a real enrich service on port 0 against the test broker.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use dealmesh_enrich::app::App;
use dealmesh_enrich::config::EnrichConfig;
use dealmesh_eventlog::envelope::timestamp;
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics};
use dealmesh_proto::v1::{Channel, DealSourced};
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const REPO_JSON: &str = include_str!("fixtures/github/repo.json");
pub const ORG_JSON: &str = include_str!("fixtures/github/org.json");
pub const USER_JSON: &str = include_str!("fixtures/github/user.json");
pub const CONTRIBUTORS_JSON: &str = include_str!("fixtures/github/contributors.json");
pub const COMMIT_ACTIVITY_JSON: &str = include_str!("fixtures/github/commit-activity.json");
pub const STARGAZERS_JSON: &str = include_str!("fixtures/github/stargazers-with-timestamps.json");
pub const ORGANIZATION_JSON: &str = include_str!("fixtures/crunchbase/organization.json");
pub const CHAT_COMPLETION_JSON: &str = include_str!("fixtures/llm/chat-completion.json");

/// Contributors the fake GitHub reports through its `Link: rel="last"`.
pub const CONTRIBUTOR_PAGES: u32 = 37;
/// Stars the fake GitHub gives within the last 30 days.
pub const RECENT_STARS: usize = 6;

/// GitHub's headers on a successful REST answer.
pub fn github_ok(body: impl Into<Vec<u8>>) -> ResponseTemplate {
    let reset = (Utc::now().timestamp() + 3600).to_string();
    ResponseTemplate::new(200)
        .set_body_raw(body.into(), "application/json; charset=utf-8")
        .insert_header("ETag", "W/\"7dc470913f1fe9bb6c7355b50a0737bc\"")
        .insert_header("X-RateLimit-Limit", "5000")
        .insert_header("X-RateLimit-Remaining", "4999")
        .insert_header("X-RateLimit-Reset", reset.as_str())
        .insert_header("X-RateLimit-Resource", "core")
        .insert_header("X-GitHub-Media-Type", "github.v3; format=json")
}

/// GitHub's answer to an exhausted primary rate limit.
pub fn github_rate_limited(reset_in_secs: i64) -> ResponseTemplate {
    let reset = (Utc::now().timestamp() + reset_in_secs).to_string();
    ResponseTemplate::new(403)
        .set_body_raw(
            r#"{"message":"API rate limit exceeded for 203.0.113.7.","documentation_url":"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}"#,
            "application/json; charset=utf-8",
        )
        .insert_header("X-RateLimit-Limit", "60")
        .insert_header("X-RateLimit-Remaining", "0")
        .insert_header("X-RateLimit-Reset", reset.as_str())
}

pub fn github_not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_raw(
        r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest/repos/repos#get-a-repository","status":"404"}"#,
        "application/json; charset=utf-8",
    )
}

pub fn server_error(status: u16) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        r#"{"message":"Server Error"}"#,
        "application/json; charset=utf-8",
    )
}

/// The stargazers fixture's one star, repeated at recent times and once at
/// its own old time, so the 30-day velocity is `RECENT_STARS / 30`.
pub fn stargazers_body() -> String {
    let fixture: Vec<serde_json::Value> =
        serde_json::from_str(STARGAZERS_JSON).expect("stargazers fixture");
    let star = fixture[0].clone();
    let mut stars = vec![star.clone()];
    for day in 1..=RECENT_STARS {
        let mut recent = star.clone();
        recent["starred_at"] = serde_json::Value::String(
            (Utc::now() - chrono::Duration::days(day as i64))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        );
        stars.push(recent);
    }
    serde_json::to_string(&stars).expect("json")
}

/// A fake GitHub answering every repository and organization with the
/// fixtures, after `latency`.
pub async fn github_fake(latency: Duration) -> MockServer {
    let server = MockServer::start().await;
    mount_github(&server, latency).await;
    server
}

pub async fn mount_github(server: &MockServer, latency: Duration) {
    let contributors_link = format!(
        "<{0}/repositories/1296269/contributors?per_page=1&anon=1&page=2>; rel=\"next\", <{0}/repositories/1296269/contributors?per_page=1&anon=1&page={CONTRIBUTOR_PAGES}>; rel=\"last\"",
        server.uri()
    );
    let routes: Vec<(&str, ResponseTemplate)> = vec![
        (r"^/repos/[^/]+/[^/]+$", github_ok(REPO_JSON)),
        (
            r"^/repos/[^/]+/[^/]+/contributors$",
            github_ok(CONTRIBUTORS_JSON).insert_header("Link", contributors_link.as_str()),
        ),
        (
            r"^/repos/[^/]+/[^/]+/stats/commit_activity$",
            github_ok(COMMIT_ACTIVITY_JSON),
        ),
        (
            r"^/repos/[^/]+/[^/]+/stargazers$",
            github_ok(stargazers_body()),
        ),
        (r"^/orgs/[^/]+$", github_ok(ORG_JSON)),
        (r"^/users/[^/]+$", github_ok(USER_JSON)),
        (r"^/users/[^/]+/repos$", github_ok(format!("[{REPO_JSON}]"))),
        (r"^/orgs/[^/]+/repos$", github_ok(format!("[{REPO_JSON}]"))),
    ];
    for (path, response) in routes {
        Mock::given(method("GET"))
            .and(path_regex(path))
            .respond_with(response.set_delay(latency))
            .mount(server)
            .await;
    }
}

/// A fake Crunchbase answering every organization with the fixture.
pub async fn crunchbase_fake(latency: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/api/v4/entities/organizations/[^/]+$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(ORGANIZATION_JSON, "application/json")
                .set_delay(latency),
        )
        .mount(&server)
        .await;
    server
}

/// A chat completion whose message content is `content`.
pub fn completion_with(content: &str) -> ResponseTemplate {
    let mut body: serde_json::Value = serde_json::from_str(CHAT_COMPLETION_JSON).expect("fixture");
    body["choices"][0]["message"]["content"] = serde_json::Value::String(content.to_owned());
    ResponseTemplate::new(200)
        .set_body_raw(serde_json::to_vec(&body).expect("json"), "application/json")
        .insert_header("x-request-id", "req_0123456789")
}

pub async fn llm_fake(latency: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/chat/completions$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(CHAT_COMPLETION_JSON, "application/json")
                .insert_header("x-request-id", "req_0123456789")
                .set_delay(latency),
        )
        .mount(&server)
        .await;
    server
}

/// Configuration pointing at the fakes, with quick retries.
pub fn env_for(
    github: &MockServer,
    crunchbase: Option<&MockServer>,
    llm: Option<&MockServer>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DEALMESH_ENRICH_GITHUB_BASE_URL".into(), github.uri()),
        ("DEALMESH_ENRICH_GITHUB_TOKEN".into(), "ghp_test".into()),
        ("DEALMESH_ENRICH_GITHUB_RATE".into(), "off".into()),
        ("DEALMESH_ENRICH_CRUNCHBASE_RATE".into(), "off".into()),
        ("DEALMESH_ENRICH_LLM_RATE".into(), "off".into()),
        ("DEALMESH_ENRICH_RETRY_ATTEMPTS".into(), "3".into()),
        ("DEALMESH_ENRICH_RETRY_BASE".into(), "20ms".into()),
        ("DEALMESH_ENRICH_RETRY_MAX".into(), "3s".into()),
        ("DEALMESH_ENRICH_HTTP_TIMEOUT".into(), "2s".into()),
        ("DEALMESH_ENRICH_LLM_TIMEOUT".into(), "2s".into()),
    ];
    if let Some(crunchbase) = crunchbase {
        env.push((
            "DEALMESH_ENRICH_CRUNCHBASE_BASE_URL".into(),
            crunchbase.uri(),
        ));
        env.push((
            "DEALMESH_ENRICH_CRUNCHBASE_API_KEY".into(),
            "cb-test-key".into(),
        ));
    }
    if let Some(llm) = llm {
        env.push((
            "DEALMESH_ENRICH_LLM_BASE_URL".into(),
            format!("{}/v1", llm.uri()),
        ));
        env.push(("DEALMESH_ENRICH_LLM_API_KEY".into(), "sk-test".into()));
        env.push(("DEALMESH_ENRICH_LLM_MODEL".into(), "gpt-4o-mini".into()));
    }
    env
}

pub fn config(env: &[(String, String)]) -> EnrichConfig {
    EnrichConfig::from_source(&MapSource::new(env.to_vec())).expect("test config is valid")
}

/// A sourced deal for GitHub `owner/repo` (either may be empty) and an
/// optional Crunchbase permalink.
pub fn sourced(name: &str, owner: &str, repo: &str, permalink: Option<&str>) -> DealSourced {
    let mut attributes = BTreeMap::new();
    if let Some(permalink) = permalink {
        attributes.insert("crunchbase_permalink".to_owned(), permalink.to_owned());
    }
    DealSourced {
        source: "scout-service".into(),
        channel: Channel::Grpc as i32,
        name: name.into(),
        website: format!("{}.example", name.to_lowercase().replace(' ', "")),
        github_owner: owner.into(),
        github_repo: repo.into(),
        description: format!("{name} builds forecasting software for utilities."),
        attributes,
        ..Default::default()
    }
}

/// The envelope ingest would write for `deal`.
pub fn sourced_event(deal: DealSourced) -> DealEvent {
    let deal_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, deal.name.as_bytes());
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: deal_id.to_string(),
        occurred_at: Some(timestamp(Utc::now())),
        actor: Some(dealmesh_eventlog::envelope::service_actor("scout-service")),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        causation_id: String::new(),
        expected_version: None,
        idempotency_key: format!("key-{}", deal.name),
        payload: Some(Payload::DealSourced(deal)),
    }
}

/// A fresh topic prefix with its deal log and dead-letter topics.
pub struct TestLog {
    pub bootstrap: String,
    pub prefix: String,
    pub topics: Topics,
    pub producer: EventProducer,
}

impl TestLog {
    pub async fn create() -> Self {
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let topics = Topics::new(&prefix);
        dealmesh_testkit::create_topic(&bootstrap, &topics.deals, 3).await;
        dealmesh_testkit::create_topic(&bootstrap, &topics.dead_letter, 1).await;
        let producer = EventProducer::new(
            &KafkaSettings::new(bootstrap.clone(), prefix.clone()),
            topics.clone(),
            "/test/ingest",
        )
        .expect("producer");
        Self {
            bootstrap,
            prefix,
            topics,
            producer,
        }
    }

    /// Environment naming this log's broker and topics.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(),
                self.bootstrap.clone(),
            ),
            ("DEALMESH_TOPIC_PREFIX".into(), self.prefix.clone()),
            ("DEALMESH_DEAL_LOG_PARTITIONS".into(), "3".into()),
            ("DEALMESH_ENRICH_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
            (
                "DEALMESH_ENRICH_GROUP_ID".into(),
                format!("{}enrich", self.prefix),
            ),
            ("DEALMESH_ENRICH_COMMIT_INTERVAL".into(), "200ms".into()),
        ]
    }

    pub async fn publish(&self, event: &DealEvent) {
        self.producer.publish(event).await.expect("broker acks");
    }

    /// Every event on the deal log; records that are not events (a test
    /// may put garbage there on purpose) are left out.
    pub async fn events(&self) -> Vec<DealEvent> {
        dealmesh_testkit::read_topic(&self.bootstrap, &self.topics.deals)
            .await
            .into_iter()
            .filter_map(|record| {
                <DealEvent as prost::Message>::decode(record.value?.as_slice()).ok()
            })
            .collect()
    }

    /// Reads the log until `done` holds for it; panics after two minutes
    /// with what the log holds.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[DealEvent]) -> bool,
    ) -> Vec<DealEvent> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let events = self.events().await;
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; the log holds {} events",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Outputs of the enrich service on the log (enriched or failed).
pub fn enrichments(events: &[DealEvent]) -> Vec<&DealEvent> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.payload,
                Some(Payload::DealEnriched(_)) | Some(Payload::EnrichmentFailed(_))
            )
        })
        .collect()
}

/// A running enrich service.
pub struct TestEnrich {
    pub admin_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestEnrich {
    pub async fn start(env: Vec<(String, String)>) -> Self {
        init_telemetry();
        let app = App::build(config(&env)).await.expect("enrich starts");
        let shutdown = CancellationToken::new();
        let admin_addr = app.admin_addr;
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            admin_addr,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("run task joins")
            .expect("run ends cleanly");
    }
}

fn init_telemetry() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let config = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
            &MapSource::new([("DEALMESH_LOG", "warn"), ("DEALMESH_LOG_FORMAT", "text")]),
            "dealmesh-enrich-test",
        )
        .expect("telemetry config");
        std::mem::forget(dealmesh_runtime::telemetry::init(&config).expect("telemetry"));
    });
}
