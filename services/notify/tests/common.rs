//! A real notify service on port 0 against the test broker and a fresh
//! database, with its own topics and consumer group; local webhook
//! receivers speaking real HTTP; events published to the real deal log.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use dealmesh_auth::{Claims, Role};
use dealmesh_eventlog::{EventProducer, KafkaSettings, Topics};
use dealmesh_notify::app::App;
use dealmesh_notify::config::NotifyConfig;
use dealmesh_proto::DealEvent;
use dealmesh_proto::v1::notify_service_client::NotifyServiceClient;
use dealmesh_proto::v1::{self as pb, deal_event::Payload};
use dealmesh_runtime::config::MapSource;
use dealmesh_runtime::shutdown::CancellationToken;
use dealmesh_testkit::TestDatabase;
use tonic::transport::Channel;

pub const JWT_SECRET: &str = "notify-test-jwt-secret-0123456789abcdef";

pub struct TestNotify {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub bootstrap: String,
    pub prefix: String,
    pub topics: Topics,
    pub db: TestDatabase,
    pub env: Vec<(String, String)>,
    pub producer: EventProducer,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The environment of a notify service on its own topics, group and database.
pub async fn test_env(db: &TestDatabase, bootstrap: &str, prefix: &str) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("DEALMESH_DATABASE_MAX_CONNECTIONS".into(), "8".into()),
        ("DEALMESH_KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.into()),
        ("DEALMESH_TOPIC_PREFIX".into(), prefix.into()),
        ("DEALMESH_DEAL_LOG_PARTITIONS".into(), "3".into()),
        (
            "DEALMESH_NOTIFY_CONSUMER_GROUP".into(),
            format!("{prefix}notify"),
        ),
        ("DEALMESH_NOTIFY_GRPC_ADDR".into(), "127.0.0.1:0".into()),
        ("DEALMESH_NOTIFY_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("DEALMESH_NOTIFY_RETRY_BASE".into(), "100ms".into()),
        ("DEALMESH_NOTIFY_RETRY_MAX".into(), "1s".into()),
        ("DEALMESH_NOTIFY_POLL_INTERVAL".into(), "100ms".into()),
        ("DEALMESH_JWT_HS256_SECRET".into(), JWT_SECRET.into()),
    ]
}

impl TestNotify {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        init_telemetry();
        let bootstrap = dealmesh_testkit::kafka_bootstrap().await;
        let prefix = dealmesh_testkit::unique_topic_prefix();
        let db = TestDatabase::create().await;
        let mut env = test_env(&db, &bootstrap, &prefix).await;
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).into(), (*v).into()));
        }
        let source = MapSource::new(env.clone());
        let config = NotifyConfig::from_source(&source).expect("test config is valid");
        let app = App::build(config).await.expect("notify starts");
        let (grpc_addr, admin_addr) = (app.grpc_addr, app.admin_addr);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        let topics = Topics::new(&prefix);
        let kafka = KafkaSettings::from_source(&source).expect("kafka settings");
        let producer = EventProducer::new(&kafka, topics.clone(), "/test").expect("producer");
        Self {
            grpc_addr,
            admin_addr,
            bootstrap,
            prefix,
            topics,
            db,
            env,
            producer,
            shutdown,
            task,
        }
    }

    /// Stops the service and starts a new one on the same database, topics
    /// and consumer group, as a restart would.
    pub async fn restart(self) -> Self {
        let TestNotify {
            bootstrap,
            prefix,
            topics,
            db,
            env,
            producer,
            shutdown,
            task,
            ..
        } = self;
        shutdown.cancel();
        task.await
            .expect("run task joins")
            .expect("run ends cleanly");
        let config =
            NotifyConfig::from_source(&MapSource::new(env.clone())).expect("test config is valid");
        let app = App::build(config).await.expect("notify starts again");
        let (grpc_addr, admin_addr) = (app.grpc_addr, app.admin_addr);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            grpc_addr,
            admin_addr,
            bootstrap,
            prefix,
            topics,
            db,
            env,
            producer,
            shutdown,
            task,
        }
    }

    pub async fn client(&self) -> NotifyServiceClient<Channel> {
        NotifyServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("grpc connects")
    }

    pub async fn publish(&self, event: &DealEvent) {
        self.producer.publish(event).await.expect("event published");
    }

    /// Deliveries of a subscription as (status, attempts, last_error).
    pub async fn deliveries(&self, subscription_id: &str) -> Vec<(String, i32, Option<String>)> {
        sqlx::query_as(
            "SELECT status, attempts, last_error FROM deliveries WHERE subscription_id = $1::uuid ORDER BY created_at, id",
        )
        .bind(subscription_id)
        .fetch_all(&self.db.pool)
        .await
        .expect("deliveries readable")
    }

    /// Waits until the projector has applied `event_id`.
    pub async fn applied(&self, event_id: &str) {
        let pool = self.db.pool.clone();
        let id = event_id.to_owned();
        wait_for(&format!("event {event_id} applied"), || {
            let pool = pool.clone();
            let id = id.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM applied_events WHERE event_id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                    == 1
            }
        })
        .await;
    }

    /// The admin server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops without waiting for sends in flight (a hung endpoint would hold
    /// a drain for its whole timeout).
    pub fn abandon(self) {
        self.shutdown.cancel();
        self.task.abort();
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("run task joins")
            .expect("run ends cleanly");
    }
}

/// A bearer token for `sub` in `role` (LPs: `lp_id` = `sub`).
pub fn token(sub: &str, role: Role) -> String {
    let claims = if role == Role::Lp {
        Claims::lp(sub, Duration::from_secs(600))
    } else {
        Claims::new(sub, role, Duration::from_secs(600))
    };
    dealmesh_auth::mint_hs256(JWT_SECRET, &claims)
}

pub fn authed<T>(message: T, sub: &str, role: Role) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(sub, role))
            .parse()
            .expect("header value"),
    );
    request
}

/// Polls `check` until it holds; fails the test after a minute. This bounds a
/// wait for asynchronous work; it measures nothing.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn init_telemetry() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let config = dealmesh_runtime::telemetry::TelemetryConfig::from_source(
            &MapSource::new([("DEALMESH_LOG", "warn"), ("DEALMESH_LOG_FORMAT", "text")]),
            "dealmesh-notify-test",
        )
        .expect("telemetry config");
        std::mem::forget(dealmesh_runtime::telemetry::init(&config).expect("telemetry"));
    });
}

// ---- events ----

pub fn event(deal_id: &str, payload: Payload) -> DealEvent {
    DealEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        deal_id: deal_id.into(),
        occurred_at: Some(dealmesh_eventlog::envelope::timestamp(chrono::Utc::now())),
        actor: Some(dealmesh_eventlog::envelope::service_actor("test")),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        payload: Some(payload),
        ..Default::default()
    }
}

pub fn new_deal_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn sourced(deal_id: &str, name: &str) -> DealEvent {
    event(
        deal_id,
        Payload::DealSourced(pb::DealSourced {
            source: "scout".into(),
            name: name.into(),
            website: format!("{}.example", name.to_lowercase()),
            ..Default::default()
        }),
    )
}

pub fn enriched(deal_id: &str, sector: &str) -> DealEvent {
    event(
        deal_id,
        Payload::DealEnriched(pb::DealEnriched {
            analysis: Some(pb::Analysis {
                sector: sector.into(),
                summary: "a company".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
}

pub fn scored(deal_id: &str, score: f64) -> DealEvent {
    event(
        deal_id,
        Payload::DealScored(pb::DealScored {
            score,
            model_version: "thesis-v1".into(),
            ..Default::default()
        }),
    )
}

pub fn stage_changed(deal_id: &str, from: &str, to: &str) -> DealEvent {
    event(
        deal_id,
        Payload::StageChanged(pb::StageChanged {
            from_stage: from.into(),
            to_stage: to.into(),
            reason: String::new(),
        }),
    )
}

pub fn owner_assigned(deal_id: &str, owner: &str) -> DealEvent {
    event(
        deal_id,
        Payload::OwnerAssigned(pb::OwnerAssigned {
            owner_id: owner.into(),
            previous_owner_id: String::new(),
        }),
    )
}

pub fn note_added(deal_id: &str, body: &str) -> DealEvent {
    event(
        deal_id,
        Payload::NoteAdded(pb::NoteAdded {
            note_id: uuid::Uuid::now_v7().to_string(),
            body: body.into(),
        }),
    )
}

pub fn shared(deal_id: &str, lps: &[&str]) -> DealEvent {
    event(
        deal_id,
        Payload::DealShared(pb::DealShared {
            lp_ids: lps.iter().map(|s| (*s).into()).collect(),
            message: "have a look".into(),
        }),
    )
}

pub fn vote_opened(deal_id: &str, vote_id: &str, eligible: &[&str]) -> DealEvent {
    event(
        deal_id,
        Payload::VoteOpened(pb::VoteOpened {
            vote_id: vote_id.into(),
            question: "Invest?".into(),
            eligible_lp_ids: eligible.iter().map(|s| (*s).into()).collect(),
            rule: pb::VoteRule::SimpleMajority as i32,
            ..Default::default()
        }),
    )
}

pub fn vote_closed(deal_id: &str, vote_id: &str) -> DealEvent {
    event(
        deal_id,
        Payload::VoteClosed(pb::VoteClosed {
            vote_id: vote_id.into(),
            tally: Some(pb::VoteTally {
                yes: 2,
                no: 1,
                abstain: 0,
                eligible: 3,
            }),
            result: pb::VoteResult::Passed as i32,
            reason: pb::VoteCloseReason::AllVoted as i32,
        }),
    )
}

// ---- subscriptions ----

pub fn webhook_subscription(url: &str, triggers: &[pb::NotificationTrigger]) -> pb::Subscription {
    pb::Subscription {
        name: "test".into(),
        triggers: triggers.iter().map(|t| *t as i32).collect(),
        channel: Some(pb::subscription::Channel::Webhook(pb::WebhookChannel {
            url: url.into(),
            secret: String::new(),
            format: pb::WebhookFormat::Json as i32,
        })),
        ..Default::default()
    }
}

/// Creates a subscription as `sub` in `role`; returns (id, signing secret).
pub async fn subscribe(
    notify: &TestNotify,
    subscription: pb::Subscription,
    sub: &str,
    role: Role,
) -> (String, String) {
    let response = notify
        .client()
        .await
        .create_subscription(authed(
            pb::CreateSubscriptionRequest {
                subscription: Some(subscription),
            },
            sub,
            role,
        ))
        .await
        .expect("subscription created")
        .into_inner();
    (
        response.subscription.expect("subscription").subscription_id,
        response.signing_secret,
    )
}

// ---- webhook receivers ----

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// How a receiver answers its n-th request (0-based).
pub type Behaviour = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

#[derive(Clone)]
pub enum Answer {
    Status(u16),
    StatusWithHeader(u16, &'static str, &'static str),
    /// Never answers (until the client gives up).
    Hang,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let state = (received.clone(), behaviour);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            received,
        }
    }

    pub async fn ok() -> Self {
        Self::start(Arc::new(|_| Answer::Status(200))).await
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub async fn wait_for_count(&self, n: usize) -> Vec<Received> {
        let me = self.clone();
        wait_for(&format!("{n} request(s) at {}", self.url), || {
            let me = me.clone();
            async move { me.count() >= n }
        })
        .await;
        self.all()
    }
}

type ReceiverState = (Arc<Mutex<Vec<Received>>>, Behaviour);

async fn handle(
    State((received, behaviour)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = {
        let mut all = received.lock().unwrap();
        all.push(Received {
            at: Instant::now(),
            headers,
            body,
        });
        all.len() - 1
    };
    match behaviour(n) {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::StatusWithHeader(code, name, value) => (
            StatusCode::from_u16(code).unwrap(),
            [(name, value)],
            "slow down",
        )
            .into_response(),
        Answer::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}
