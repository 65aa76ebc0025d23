//! The admin HTTP server every service runs: `/healthz` (alive),
//! `/readyz` (ready for traffic; every registered component must be up and
//! the service not draining) and `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::SharedRegistry;

/// Default admin address (health probes and metrics).
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9090";

/// Named components that must all be ready for `/readyz` to answer 200.
#[derive(Clone, Default)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<String, bool>>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Readiness {
    /// Declares a component, not ready yet.
    pub fn register(&self, name: &str) {
        self.lock().entry(name.to_owned()).or_insert(false);
    }

    pub fn set(&self, name: &str, ready: bool) {
        self.lock().insert(name.to_owned(), ready);
    }

    /// From now on `/readyz` answers 503 so load balancers stop sending work.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::SeqCst)
            && self.lock().values().all(|ready| *ready)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    registry: SharedRegistry,
}

pub fn router(readiness: Readiness, registry: SharedRegistry) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            readiness,
            registry,
        })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let components = state.readiness.lock().clone();
    let draining = state
        .readiness
        .draining
        .load(std::sync::atomic::Ordering::SeqCst);
    let ready = state.readiness.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "draining": draining,
        "components": components,
    });
    (status, Json(body))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr`, logging the bound address.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {what} on {addr}: {e}")))?;
    tracing::info!(addr = %listener.local_addr()?, listener = what, "listening");
    Ok(listener)
}
