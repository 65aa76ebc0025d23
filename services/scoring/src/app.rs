//! Wiring: load the model, connect, migrate, provision, bind, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dealmesh_auth::Authenticator;
use dealmesh_eventlog::{ConsumerLoop, ConsumerSettings, EventProducer, topics};
use dealmesh_proto::v1::scoring_service_server::ScoringServiceServer;
use dealmesh_runtime::admin::{self, Readiness};
use dealmesh_runtime::metrics::GrpcMetrics;
use dealmesh_runtime::shutdown::CancellationToken;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::config::ScoringConfig;
use crate::grpc::ScoringApi;
use crate::handler::{CE_SOURCE, Scorer, ScoringHandler};
use crate::reload::ModelHandle;
use crate::store::{MIGRATOR, Store};

const GRPC_SERVICE: &str = "dealmesh.v1.ScoringService";

/// Connects to PostgreSQL, creating the database if it does not exist.
pub async fn connect(config: &ScoringConfig) -> anyhow::Result<sqlx::PgPool> {
    config.database.connect().await
}

/// The scorer with its model, migrated store and producer, for serving and
/// for `rescore`.
pub async fn scorer(
    config: &ScoringConfig,
    mut registry: Option<&mut Registry>,
) -> anyhow::Result<Scorer> {
    let model = ModelHandle::load(&config.model_file)
        .with_context(|| format!("model file {} rejected", config.model_file.display()))?;
    let pool = connect(config).await?;
    MIGRATOR.run(&pool).await.context("migrations failed")?;
    let topics = if config.provision_topics {
        topics::provision(&config.kafka)
            .await
            .context("cannot provision topics")?
    } else {
        topics::Topics::new(&config.kafka.topic_prefix)
    };
    let mut producer = EventProducer::new(&config.kafka, topics, CE_SOURCE)?;
    if let Some(registry) = registry.as_deref_mut() {
        producer = producer.with_metrics(registry);
        model.register_metrics(registry);
    }
    let scorer = Scorer::new(model, Store::new(pool), producer);
    Ok(match registry {
        Some(registry) => scorer.with_metrics(registry),
        None => scorer,
    })
}

/// A built service: ports bound, model loaded, dependencies connected, not
/// yet serving.
pub struct App {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    config: ScoringConfig,
    scorer: Scorer,
    consumer: ConsumerLoop<ScoringHandler>,
    registry: Arc<Registry>,
    grpc_metrics: GrpcMetrics,
    readiness: Readiness,
}

impl App {
    pub async fn build(config: ScoringConfig) -> anyhow::Result<Self> {
        let mut registry = Registry::default();
        let grpc_metrics = GrpcMetrics::register(&mut registry);
        let scorer = scorer(&config, Some(&mut registry)).await?;
        let dead_letters = scorer.producer().clone();
        let mut settings = ConsumerSettings::new(
            config.group_id.clone(),
            scorer.producer().topics().deals.clone(),
        );
        settings.concurrency = config.concurrency;
        let consumer = ConsumerLoop::new(
            config.kafka.clone(),
            settings,
            ScoringHandler::new(scorer.clone()),
            dead_letters,
        )
        .with_metrics(&mut registry);
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
            scorer,
            consumer,
            registry: Arc::new(registry),
            grpc_metrics,
            readiness,
        })
    }

    pub fn model(&self) -> &ModelHandle {
        self.scorer.model()
    }

    /// Serves until `shutdown` is cancelled, then stops fetching, finishes
    /// the records in hand, commits and flushes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health_reporter, health_service) =
            dealmesh_runtime::grpc::health(&[GRPC_SERVICE]).await;
        let (reflection_v1, reflection_v1alpha) =
            dealmesh_runtime::grpc::reflection(&[dealmesh_proto::FILE_DESCRIPTOR_SET])?;
        let api = ScoringServiceServer::new(ScoringApi::new(
            self.scorer.model().clone(),
            self.scorer.store().clone(),
            Authenticator::new(&self.config.auth),
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
            admin::router(self.readiness.clone(), self.registry.clone()),
            stop.clone(),
        );
        let watcher = tokio::spawn(
            self.scorer
                .model()
                .clone()
                .watch(self.config.model_poll, stop.clone()),
        );
        let rescorer = self.config.rescore_on_reload.then(|| {
            tokio::spawn(rescore_on_change(
                self.scorer.clone(),
                self.config.concurrency,
                stop.clone(),
            ))
        });
        let consumer_stop = CancellationToken::new();
        let mut consumer = tokio::spawn(self.consumer.run(consumer_stop.clone()));
        self.readiness.set("grpc", true);
        self.readiness.set("consumer", true);
        tracing::info!(model_version = %self.scorer.model().current().model.version, "scoring serving");

        let drain = {
            let readiness = self.readiness.clone();
            let stop = stop.clone();
            async move {
                // A consumer that stops on its own (it cannot reach the
                // broker, say) takes the service down with its error rather
                // than leaving an API up over a dead pipeline.
                let ended_early = tokio::select! {
                    () = shutdown.cancelled() => None,
                    joined = &mut consumer => Some(joined),
                };
                readiness.start_draining();
                dealmesh_runtime::grpc::set_not_serving(&health_reporter, &[GRPC_SERVICE]).await;
                let drained = match ended_early {
                    Some(joined) => {
                        tracing::error!("consumer stopped unexpectedly, shutting down");
                        joined.map(|result| {
                            result.and_then(|()| {
                                Err(dealmesh_eventlog::Error::InvalidEvent(
                                    "consumer stopped unexpectedly".into(),
                                ))
                            })
                        })
                    }
                    None => {
                        consumer_stop.cancel();
                        consumer.await
                    }
                };
                stop.cancel();
                drained
            }
        };
        let servers = async {
            tokio::try_join!(async { grpc.await.map_err(anyhow::Error::from) }, async {
                admin_server.await.map_err(anyhow::Error::from)
            })
        };
        let (drained, result) = tokio::join!(drain, servers);
        result?;
        drained.context("consumer task failed")??;
        let _ = watcher.await;
        if let Some(rescorer) = rescorer {
            let _ = rescorer.await;
        }
        let producer = self.scorer.producer().clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await??;
        tracing::info!("scoring stopped");
        Ok(())
    }
}

/// Re-scores every stored deal each time the model in use changes, until
/// `stop`. A failed pass is logged; the next change runs a full pass again.
async fn rescore_on_change(scorer: Scorer, concurrency: usize, stop: CancellationToken) {
    let mut versions = scorer.model().subscribe();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let version = versions.borrow_and_update().clone();
        tracing::info!(model_version = %version, "model changed, rescoring every deal");
        tokio::select! {
            () = stop.cancelled() => return,
            result = crate::rescore::rescore(&scorer, concurrency) => {
                if let Err(error) = result {
                    tracing::error!(%error, model_version = %version, "rescore failed");
                }
            }
        }
    }
}
