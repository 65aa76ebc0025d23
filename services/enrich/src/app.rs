//! Wiring: providers, analyzer, producer, consumer loop, admin server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dealmesh_eventlog::{ConsumerLoop, ConsumerSettings, EventProducer, topics};
use dealmesh_runtime::admin::{self, Readiness};
use dealmesh_runtime::shutdown::CancellationToken;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::analysis::Analyzer;
use crate::analysis::llm::LlmClient;
use crate::config::{EnrichConfig, LlmProvider};
use crate::enricher::Enricher;
use crate::handler::{CE_SOURCE, EnrichHandler, HandlerMetrics};
use crate::provider::{Provider, ProviderMetrics};
use crate::signals::crunchbase::CrunchbaseClient;
use crate::signals::github::GithubClient;

/// The enricher `config` describes: one rate-limited provider each for
/// GitHub, Crunchbase (when a key is set) and the LLM (when configured).
pub fn enricher(config: &EnrichConfig, metrics: ProviderMetrics) -> anyhow::Result<Enricher> {
    let github = if config.github.enabled {
        let provider = Provider::new(
            "github",
            config.http_timeout,
            config.github.rate,
            config.retry,
            metrics.clone(),
        )?;
        Some(GithubClient::new(
            provider,
            config.github.base_url.clone(),
            config.github.token.clone(),
        ))
    } else {
        None
    };
    let crunchbase = match &config.crunchbase.api_key {
        Some(key) => {
            let provider = Provider::new(
                "crunchbase",
                config.http_timeout,
                config.crunchbase.rate,
                config.retry,
                metrics.clone(),
            )?;
            Some(CrunchbaseClient::new(
                provider,
                config.crunchbase.base_url.clone(),
                key.clone(),
            ))
        }
        None => None,
    };
    let analyzer = match (&config.llm.provider, &config.llm.base_url) {
        (LlmProvider::Builtin, _) | (_, None) => Analyzer::Builtin,
        (kind, Some(base)) => {
            let provider = Provider::new(
                "llm",
                config.llm.timeout,
                config.llm.rate,
                config.retry,
                metrics,
            )?;
            Analyzer::Llm(LlmClient::new(
                provider,
                *kind,
                base,
                config.llm.model.clone(),
                config.llm.api_key.clone(),
                &config.llm.api_version,
                config.llm.validation_attempts,
            ))
        }
    };
    Ok(Enricher {
        github,
        crunchbase,
        analyzer,
        max_description_chars: config.max_description_chars,
    })
}

/// A built service: admin port bound, topics ready, not yet consuming.
pub struct App {
    pub admin_addr: SocketAddr,
    admin_listener: TcpListener,
    consumer: ConsumerLoop<EnrichHandler>,
    producer: EventProducer,
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl App {
    pub async fn build(config: EnrichConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut registry = Registry::default();
        let topics = if config.provision_topics {
            topics::provision(&config.kafka)
                .await
                .context("cannot provision topics")?
        } else {
            topics::Topics::new(&config.kafka.topic_prefix)
        };
        let producer = EventProducer::new(&config.kafka, topics.clone(), CE_SOURCE)?
            .with_metrics(&mut registry);
        let enricher = enricher(&config, ProviderMetrics::register(&mut registry))?;
        let handler = EnrichHandler::new(
            Arc::new(enricher),
            producer.clone(),
            HandlerMetrics::register(&mut registry),
        );
        let mut settings = ConsumerSettings::new(config.group_id.clone(), topics.deals.clone());
        settings.concurrency = config.concurrency;
        settings.commit_interval = config.commit_interval;
        let consumer = ConsumerLoop::new(config.kafka.clone(), settings, handler, producer.clone())
            .with_metrics(&mut registry);
        let admin_listener = admin::bind(config.admin_addr, "admin").await?;
        let readiness = Readiness::default();
        readiness.register("consumer");
        Ok(Self {
            admin_addr: admin_listener.local_addr()?,
            admin_listener,
            consumer,
            producer,
            registry: Arc::new(registry),
            readiness,
        })
    }

    /// Consumes until `shutdown` is cancelled, then stops fetching, lets the
    /// deals in flight finish, commits, and flushes the producer.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_admin = CancellationToken::new();
        let admin_server = tokio::spawn(admin::serve(
            self.admin_listener,
            admin::router(self.readiness.clone(), self.registry.clone()),
            stop_admin.clone(),
        ));
        self.readiness.set("consumer", true);
        tracing::info!("enrich consuming");
        let draining = {
            let readiness = self.readiness.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                readiness.start_draining();
            })
        };
        let result = self.consumer.run(shutdown).await;
        draining.abort();
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await??;
        stop_admin.cancel();
        admin_server.await??;
        result?;
        tracing::info!("enrich stopped");
        Ok(())
    }
}
