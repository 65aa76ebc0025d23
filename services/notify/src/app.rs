//! Wiring: connect, migrate, load configured subscriptions, bind, then run
//! the consumer, the dispatcher, the digest clock and the gRPC API until
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dealmesh_auth::Authenticator;
use dealmesh_eventlog::{ConsumerLoop, ConsumerSettings, EventProducer, Topics, topics};
use dealmesh_proto::v1::notify_service_server::NotifyServiceServer;
use dealmesh_runtime::admin::{self, Readiness};
use dealmesh_runtime::metrics::GrpcMetrics;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;
use dealmesh_runtime::shutdown::CancellationToken;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::NotifyConfig;
use crate::dispatch::{Dispatcher, email::EmailSender};
use crate::feed::{self, Feed};
use crate::grpc::NotifyApi;
use crate::projector::Projector;
use crate::subscription;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const GRPC_SERVICE: &str = "dealmesh.v1.NotifyService";
/// CloudEvents source of what notify writes (dead letters).
pub const CE_SOURCE: &str = "/dealmesh/notify";

/// Connects to PostgreSQL, creating the database if it does not exist.
pub async fn connect(config: &NotifyConfig) -> anyhow::Result<PgPool> {
    use sqlx::migrate::MigrateDatabase;
    let url = config.database_url.expose_secret();
    if !sqlx::Postgres::database_exists(url)
        .await
        .context("cannot reach PostgreSQL")?
    {
        sqlx::Postgres::create_database(url)
            .await
            .context("cannot create the database")?;
        tracing::info!("database created");
    }
    PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("cannot connect to PostgreSQL")
}

/// Reads the subscriptions file named in the configuration, if any; every
/// problem is one line of the error.
pub fn configured_subscriptions(
    config: &NotifyConfig,
) -> anyhow::Result<Vec<subscription::NewSubscription>> {
    match &config.subscriptions_file {
        None => Ok(Vec::new()),
        Some(path) => subscription::file::load(path, config.smtp.is_some())
            .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n"))),
    }
}

/// A built service: ports bound, database migrated, not yet serving.
pub struct App {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    config: NotifyConfig,
    pool: PgPool,
    topics: Topics,
    registry: Registry,
    grpc_metrics: GrpcMetrics,
    readiness: Readiness,
}

impl App {
    pub async fn build(config: NotifyConfig) -> anyhow::Result<Self> {
        let configured = configured_subscriptions(&config)?;
        let pool = connect(&config).await?;
        MIGRATOR.run(&pool).await.context("migrations failed")?;
        subscription::file::sync(&pool, &configured)
            .await
            .context("cannot store the configured subscriptions")?;
        let topics = if config.provision_topics {
            topics::provision(&config.kafka)
                .await
                .context("cannot provision topics")?
        } else {
            Topics::new(&config.kafka.topic_prefix)
        };
        let mut registry = Registry::default();
        let grpc_metrics = GrpcMetrics::register(&mut registry);
        let grpc_listener = admin::bind(config.grpc_addr, "grpc").await?;
        let admin_listener = admin::bind(config.admin_addr, "admin").await?;
        let readiness = Readiness::default();
        readiness.register("grpc");
        readiness.register("consumer");
        Ok(Self {
            grpc_addr: grpc_listener.local_addr()?,
            admin_addr: admin_listener.local_addr()?,
            grpc_listener,
            admin_listener,
            config,
            pool,
            topics,
            registry,
            grpc_metrics,
            readiness,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs until `shutdown`: stops taking requests and fetching records,
    /// finishes the sends in flight, commits, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let wake = Arc::new(Notify::new());
        let last_feed_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM feed")
            .fetch_one(&self.pool)
            .await?;
        let (feed_head, feed_head_rx) = watch::channel(last_feed_id);

        let projector = Projector::new(
            self.pool.clone(),
            self.config.max_payload_bytes,
            wake.clone(),
            feed_head.clone(),
        );
        let mut settings = ConsumerSettings::new(&self.config.consumer_group, &self.topics.deals);
        settings.concurrency = self.config.consumer_concurrency;
        let dead_letters = EventProducer::new(&self.config.kafka, self.topics.clone(), CE_SOURCE)?;
        let consumer =
            ConsumerLoop::new(self.config.kafka.clone(), settings, projector, dead_letters)
                .with_metrics(&mut self.registry);

        let email = match &self.config.smtp {
            Some(smtp) => Some(EmailSender::new(
                smtp,
                self.config.dispatch.webhook_timeout,
            )?),
            None => None,
        };
        let dispatcher = Dispatcher::new(
            self.pool.clone(),
            self.config.dispatch.clone(),
            email,
            wake.clone(),
        )?
        .with_metrics(&mut self.registry);

        let (health_reporter, health_service) =
            dealmesh_runtime::grpc::health(&[GRPC_SERVICE]).await;
        let (reflection_v1, reflection_v1alpha) =
            dealmesh_runtime::grpc::reflection(&[dealmesh_proto::FILE_DESCRIPTOR_SET])?;
        let api = NotifyServiceServer::new(NotifyApi::new(
            self.pool.clone(),
            Authenticator::new(&self.config.auth),
            self.config.smtp.is_some(),
            Feed::new(self.pool.clone(), feed_head_rx),
            shutdown.clone(),
        ));

        let stop = CancellationToken::new();
        let grpc = {
            let stop = stop.clone();
            tonic::transport::Server::builder()
                .layer(self.grpc_metrics.layer())
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(api)
                .serve_with_incoming_shutdown(
                    dealmesh_runtime::grpc::incoming(self.grpc_listener),
                    async move { stop.cancelled().await },
                )
        };
        let admin_server = admin::serve(
            self.admin_listener,
            admin::router(self.readiness.clone(), Arc::new(self.registry)),
            stop.clone(),
        );

        let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));
        let dispatcher_task = tokio::spawn(dispatcher.run(shutdown.clone()));
        let listener_task =
            tokio::spawn(feed::listen(self.pool.clone(), feed_head, shutdown.clone()));
        let digest_task = tokio::spawn(digest_clock(
            self.pool.clone(),
            self.config.digest_interval,
            wake.clone(),
            shutdown.clone(),
        ));
        self.readiness.set("grpc", true);
        self.readiness.set("consumer", true);
        tracing::info!(grpc = %self.grpc_addr, admin = %self.admin_addr, "notify serving");

        let drain = {
            let readiness = self.readiness.clone();
            let stop = stop.clone();
            async move {
                shutdown.cancelled().await;
                readiness.start_draining();
                dealmesh_runtime::grpc::set_not_serving(&health_reporter, &[GRPC_SERVICE]).await;
                stop.cancel();
            }
        };
        let servers = async {
            tokio::try_join!(async { grpc.await.map_err(anyhow::Error::from) }, async {
                admin_server.await.map_err(anyhow::Error::from)
            })
        };
        let (_, served) = tokio::join!(drain, servers);
        served?;
        consumer_task.await?.context("consumer failed")?;
        dispatcher_task.await?;
        listener_task.await?;
        digest_task.await?;
        tracing::info!("notify stopped");
        Ok(())
    }
}

async fn digest_clock(
    pool: PgPool,
    interval: Duration,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match crate::digest::assemble(&pool, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(_) => wake.notify_one(),
            Err(error) => tracing::warn!(%error, "digest failed; the items wait for the next one"),
        }
    }
}
