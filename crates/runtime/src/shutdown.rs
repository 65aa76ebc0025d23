//! Graceful shutdown: a [`CancellationToken`] handed to every task, tripped
//! by SIGTERM or SIGINT, and a grace period for draining.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Default time between the signal and a forced exit. Kubernetes waits 30s
/// before SIGKILL; leave headroom.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sigterm; only ctrl-c stops the service");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("sigint received, draining"),
            _ = term.recv() => tracing::info!("sigterm received, draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        tracing::info!("ctrl-c received, draining");
    }
}

/// Runs `pass` now and then `interval` after each pass ends, until
/// `shutdown` is cancelled. A pass runs to its end; one that must stop
/// sooner watches `shutdown` itself.
pub async fn every<F, Fut>(interval: Duration, shutdown: &CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        pass().await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Cancels `token` when a signal arrives.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        signal().await;
        token.cancel();
    });
}

/// Waits for every tracked task to finish, at most `grace`. Returns false if
/// the grace period ran out first.
pub async fn drain(tasks: &TaskTracker, grace: Duration) -> bool {
    tasks.close();
    match tokio::time::timeout(grace, tasks.wait()).await {
        Ok(()) => {
            tracing::info!("drained");
            true
        }
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "grace period over, exiting with work in flight"
            );
            false
        }
    }
}
