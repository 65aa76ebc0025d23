//! Logs through `tracing` (JSON in production), traces exported over OTLP
//! when an endpoint is configured, and W3C trace context propagation.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, Reader, Source};

/// `json` or `text`. Default: `text` on a terminal, `json` otherwise.
pub const LOG_FORMAT: &str = "DEALMESH_LOG_FORMAT";
/// A `tracing` filter such as `info` or `info,dealmesh_ingest=debug`.
/// `RUST_LOG` is honoured when this is unset. Default `info`.
pub const LOG_FILTER: &str = "DEALMESH_LOG";
/// Standard OpenTelemetry variable: where to send traces (OTLP over HTTP,
/// e.g. `http://otel-collector:4318`). Unset: no traces are exported.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Standard OpenTelemetry variable overriding the reported service name.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub service_name: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    pub fn from_source(source: &dyn Source, service_name: &str) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let log_format = match r.optional_string(LOG_FORMAT).as_deref() {
            None if std::io::stdout().is_terminal() => LogFormat::Text,
            None => LogFormat::Json,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    LOG_FORMAT,
                    format!("invalid value {other:?}: expected json or text"),
                ));
            }
        };
        let log_filter = r
            .optional_string(LOG_FILTER)
            .or_else(|| r.optional_string("RUST_LOG"))
            .unwrap_or_else(|| "info".to_owned());
        EnvFilter::try_new(&log_filter).map_err(|e| {
            ConfigError::new(LOG_FILTER, format!("invalid filter {log_filter:?}: {e}"))
        })?;
        Ok(Self {
            service_name: r.string(OTEL_SERVICE_NAME, service_name),
            log_format,
            log_filter,
            otlp_endpoint: r.optional_string(OTLP_ENDPOINT),
        })
    }
}

/// Flushes exported traces when dropped; keep it alive for the whole run.
#[must_use = "dropping the guard flushes and stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber and propagator. Call it once, first thing
/// in `main`, outside the async runtime: the OTLP exporter runs its own
/// blocking HTTP client on a background thread.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // A provider is installed even without an exporter, so every span has a
    // real trace id and `traceparent` is carried across hops regardless.
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if config.otlp_endpoint.is_some() {
        // The exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Spans reach the trace layer whatever the log filter says, so a quiet
    // log level never breaks trace propagation.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(config.service_name.clone()))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);

    let fmt_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(EnvFilter::new(&config.log_filter)))
        .with(otel_layer)
        .try_init()?;
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}
