//! Wiring: connect, migrate, provision, bind, project, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dealmesh_auth::Authenticator;
use dealmesh_eventlog::{EventProducer, Topics, topics};
use dealmesh_proto::v1::crm_service_server::CrmServiceServer;
use dealmesh_runtime::admin::{self, Readiness};
use dealmesh_runtime::metrics::GrpcMetrics;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;
use dealmesh_runtime::shutdown::{CancellationToken, TaskTracker};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::commands::{Commands, Projected};
use crate::config::CrmConfig;
use crate::grpc::CrmApi;
use crate::projector::{Projector, ProjectorSettings};
use crate::read::ReadModel;
use crate::{closer, db};

/// The CloudEvents `source` of every event the CRM writes.
pub const CE_SOURCE: &str = "/dealmesh/crm";
const GRPC_SERVICE: &str = "dealmesh.v1.CrmService";

/// Connects to the configured schema and applies the migrations.
pub async fn database(config: &CrmConfig) -> anyhow::Result<PgPool> {
    let pool = db::connect(
        config.database_url.expose_secret(),
        &config.schema,
        config.database_max_connections,
    )
    .await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

/// The projector over the configured log and schema.
pub fn projector(config: &CrmConfig, pool: PgPool, topics: &Topics) -> Projector {
    Projector::new(
        pool,
        config.kafka.clone(),
        ProjectorSettings {
            topic: topics.deals.clone(),
            batch_size: config.batch_size,
            linger: config.batch_linger,
            initial_stage: config.pipeline.initial_stage().to_owned(),
            notify_channel: db::notify_channel(&config.schema),
        },
    )
}

/// A built service: ports bound, dependencies connected, not yet serving.
pub struct App {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    config: CrmConfig,
    pool: PgPool,
    topics: Topics,
    producer: EventProducer,
    registry: Registry,
    grpc_metrics: GrpcMetrics,
    readiness: Readiness,
}

impl App {
    pub async fn build(config: CrmConfig) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let grpc_metrics = GrpcMetrics::register(&mut registry);
        let pool = database(&config).await?;
        let topics = if config.provision_topics {
            topics::provision(&config.kafka)
                .await
                .context("cannot provision topics")?
        } else {
            Topics::new(&config.kafka.topic_prefix)
        };
        let producer = EventProducer::new(&config.kafka, topics.clone(), CE_SOURCE)?
            .with_metrics(&mut registry);
        let grpc_listener = admin::bind(config.grpc_addr, "grpc").await?;
        let admin_listener = admin::bind(config.admin_addr, "admin").await?;
        let readiness = Readiness::default();
        readiness.register("grpc");
        if config.run_projector {
            readiness.register("projector");
        }
        Ok(Self {
            grpc_addr: grpc_listener.local_addr()?,
            admin_addr: admin_listener.local_addr()?,
            grpc_listener,
            admin_listener,
            config,
            pool,
            topics,
            producer,
            registry,
            grpc_metrics,
            readiness,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` is cancelled, then stops taking requests,
    /// lets the projector finish its batch and flushes the producer.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let background = CancellationToken::new();
        if self.config.run_projector {
            let projector = projector(&self.config, self.pool.clone(), &self.topics)
                .with_metrics(&mut self.registry);
            let readiness = self.readiness.clone();
            let stop = background.clone();
            tasks.spawn(async move {
                let ready = move || readiness.set("projector", true);
                if let Err(error) = projector.run(stop, ready).await {
                    tracing::error!(%error, "projector stopped");
                }
            });
        }
        tasks.spawn(closer::run(
            self.pool.clone(),
            self.producer.clone(),
            self.config.vote_close_interval,
            background.clone(),
        ));
        let projected = Projected::listen(
            self.pool.clone(),
            db::notify_channel(&self.config.schema),
            background.clone(),
        );
        let commands = Commands::new(
            self.pool.clone(),
            self.producer.clone(),
            projected,
            self.config.command_timeout,
        );
        let api = CrmApi::new(
            Authenticator::new(self.config.auth.as_ref().context(
                "token verification is not configured (DEALMESH_JWT_HS256_SECRET or DEALMESH_JWT_JWKS_URL)",
            )?),
            ReadModel::new(self.pool.clone()),
            commands,
            self.config.pipeline.clone(),
            self.config.max_note_chars,
        );
        let (health_reporter, health_service) =
            dealmesh_runtime::grpc::health(&[GRPC_SERVICE]).await;
        let (reflection_v1, reflection_v1alpha) =
            dealmesh_runtime::grpc::reflection(&[dealmesh_proto::FILE_DESCRIPTOR_SET])?;
        let registry = Arc::new(std::mem::take(&mut self.registry));

        let stop = CancellationToken::new();
        let grpc = {
            let stop = stop.clone();
            tonic::transport::Server::builder()
                .layer(self.grpc_metrics.layer())
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(CrmServiceServer::new(api))
                .serve_with_incoming_shutdown(
                    // Small unary answers must not wait for a delayed ACK
                    // (Nagle): the builder's nodelay applies only to
                    // listeners it binds itself.
                    tokio_stream::wrappers::TcpListenerStream::new(self.grpc_listener).map(
                        |stream| {
                            if let Ok(stream) = &stream
                                && let Err(error) = stream.set_nodelay(true)
                            {
                                tracing::debug!(%error, "cannot set TCP_NODELAY");
                            }
                            stream
                        },
                    ),
                    async move { stop.cancelled().await },
                )
        };
        let admin_server = admin::serve(
            self.admin_listener,
            admin::router(self.readiness.clone(), registry),
            stop.clone(),
        );
        self.readiness.set("grpc", true);
        tracing::info!("crm serving");

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
        let (_, result) = tokio::join!(drain, servers);
        // Requests are done: now the projector and the closer may stop.
        background.cancel();
        tasks.close();
        tasks.wait().await;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await??;
        result?;
        tracing::info!("crm stopped");
        Ok(())
    }
}
