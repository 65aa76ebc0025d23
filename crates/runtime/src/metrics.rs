//! Prometheus metrics: one registry per process, served at `/metrics` by the
//! admin server, plus a tower layer that times every gRPC call.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// Buckets from 0.5 ms to ~16 s, for handler and request latencies.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// Per-method gRPC counters and latency.
#[derive(Clone)]
pub struct GrpcMetrics {
    handled: Family<GrpcLabels, Counter>,
    latency: Family<MethodLabel, Histogram>,
}

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let handled = Family::<GrpcLabels, Counter>::default();
        let latency = Family::<MethodLabel, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by method and status code",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC handler latency until response headers, by method",
            latency.clone(),
        );
        Self { handled, latency }
    }

    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let elapsed = started.elapsed().as_secs_f64();
            // Errors are sent trailers-only, so their status is in the
            // headers; a successful unary call carries it in the trailers.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".to_owned()),
                Err(_) => "Transport".to_owned(),
            };
            metrics
                .latency
                .get_or_create(&MethodLabel {
                    method: method.clone(),
                })
                .observe(elapsed);
            metrics
                .handled
                .get_or_create(&GrpcLabels { method, code })
                .inc();
            response
        })
    }
}

/// The process's registry after every component has registered.
pub type SharedRegistry = Arc<Registry>;

pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(%error, "metrics encoding failed");
    }
    out
}
