//! Wiring: connect, migrate, provision, bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dealmesh_eventlog::{EventProducer, topics};
use dealmesh_proto::v1::ingest_service_server::IngestServiceServer;
use dealmesh_runtime::admin::{self, Readiness};
use dealmesh_runtime::metrics::GrpcMetrics;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;
use dealmesh_runtime::shutdown::CancellationToken;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

use crate::config::IngestConfig;
use crate::grpc::IngestApi;
use crate::ingestor::Ingestor;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const GRPC_SERVICE: &str = "dealmesh.v1.IngestService";

/// Connects to PostgreSQL, creating the database if it does not exist.
pub async fn connect(config: &IngestConfig) -> anyhow::Result<sqlx::PgPool> {
    use anyhow::Context;
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

/// The ingestor with its database and producer, for serving and importing.
pub async fn ingestor(
    config: &IngestConfig,
    registry: Option<&mut Registry>,
) -> anyhow::Result<Ingestor> {
    Ok(ingestor_and_pool(config, registry).await?.0)
}

/// The ingestor and its connection pool (the pollers keep their state in
/// the same database).
pub async fn ingestor_and_pool(
    config: &IngestConfig,
    registry: Option<&mut Registry>,
) -> anyhow::Result<(Ingestor, sqlx::PgPool)> {
    use anyhow::Context;
    let pool = connect(config).await?;
    MIGRATOR.run(&pool).await.context("migrations failed")?;
    let topics = if config.provision_topics {
        topics::provision(&config.kafka)
            .await
            .context("cannot provision topics")?
    } else {
        topics::Topics::new(&config.kafka.topic_prefix)
    };
    let producer = EventProducer::new(&config.kafka, topics, crate::ingestor::CE_SOURCE)?;
    let ingestor = match registry {
        Some(registry) => {
            Ingestor::new(pool.clone(), producer.with_metrics(registry)).with_metrics(registry)
        }
        None => Ingestor::new(pool.clone(), producer),
    };
    Ok((ingestor, pool))
}

/// A built service: ports bound, dependencies connected, not yet serving.
pub struct App {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    admin_listener: TcpListener,
    config: IngestConfig,
    ingestor: Ingestor,
    pool: sqlx::PgPool,
    poller_metrics: crate::pollers::metrics::PollerMetrics,
    purger: Option<crate::retention::Purger>,
    registry: Arc<Registry>,
    grpc_metrics: GrpcMetrics,
    readiness: Readiness,
}

impl App {
    pub async fn build(config: IngestConfig) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let grpc_metrics = GrpcMetrics::register(&mut registry);
        let poller_metrics = crate::pollers::metrics::PollerMetrics::register(&mut registry);
        let (ingestor, pool) = ingestor_and_pool(&config, Some(&mut registry)).await?;
        let purger = config.key_retention.map(|keep| {
            crate::retention::Purger::new(pool.clone(), keep, config.key_purge_interval)
                .with_metrics(&mut registry)
        });
        let grpc_listener = admin::bind(config.grpc_addr, "grpc").await?;
        let http_listener = admin::bind(config.http_addr, "http").await?;
        let admin_listener = admin::bind(config.admin_addr, "admin").await?;
        let readiness = Readiness::default();
        readiness.register("grpc");
        readiness.register("http");
        Ok(Self {
            grpc_addr: grpc_listener.local_addr()?,
            http_addr: http_listener.local_addr()?,
            admin_addr: admin_listener.local_addr()?,
            grpc_listener,
            http_listener,
            admin_listener,
            config,
            ingestor,
            pool,
            poller_metrics,
            purger,
            registry: Arc::new(registry),
            grpc_metrics,
            readiness,
        })
    }

    pub fn ingestor(&self) -> &Ingestor {
        &self.ingestor
    }

    /// Serves until `shutdown` is cancelled, then stops taking requests,
    /// finishes those in flight and flushes the producer.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health_reporter, health_service) =
            dealmesh_runtime::grpc::health(&[GRPC_SERVICE]).await;
        let (reflection_v1, reflection_v1alpha) =
            dealmesh_runtime::grpc::reflection(&[dealmesh_proto::FILE_DESCRIPTOR_SET])?;
        let api =
            IngestServiceServer::new(IngestApi::new(self.ingestor.clone(), self.config.max_batch))
                .max_decoding_message_size(16 * 1024 * 1024);

        // Each server stops on its own token, cancelled once readiness and
        // health have told load balancers to go away.
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
        let http = admin::serve(
            self.http_listener,
            crate::http::router(
                self.ingestor.clone(),
                self.config.webhook_secrets.clone(),
                self.config.max_body_bytes,
            ),
            stop.clone(),
        );
        let admin_server = admin::serve(
            self.admin_listener,
            admin::router(self.readiness.clone(), self.registry.clone()),
            stop.clone(),
        );
        self.readiness.set("grpc", true);
        self.readiness.set("http", true);
        // Pollers stop at once on shutdown (every wait is cancellable); a
        // page being published is finished first.
        let pollers = crate::pollers::spawn(
            &self.config,
            &self.ingestor,
            &self.pool,
            &self.poller_metrics,
            &shutdown,
        )?;
        let purger = self
            .purger
            .take()
            .map(|purger| purger.spawn(shutdown.clone()));
        tracing::info!("ingest serving");

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
            tokio::try_join!(
                async { grpc.await.map_err(anyhow::Error::from) },
                async { http.await.map_err(anyhow::Error::from) },
                async { admin_server.await.map_err(anyhow::Error::from) }
            )
        };
        let (_, result) = tokio::join!(drain, servers);
        result?;
        for poller in pollers {
            if let Err(error) = poller.await {
                tracing::error!(error = %error, "poller task failed");
            }
        }
        if let Some(purger) = purger
            && let Err(error) = purger.await
        {
            tracing::error!(error = %error, "key purge task failed");
        }
        let ingestor = self.ingestor.clone();
        tokio::task::spawn_blocking(move || ingestor.flush(Duration::from_secs(10))).await??;
        tracing::info!("ingest stopped");
        Ok(())
    }
}
