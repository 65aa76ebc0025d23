//! Graceful shutdown: a [`CancellationToken`] handed to every task, tripped
//! by SIGTERM or SIGINT, and a grace period for draining.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Default time between the signal and a forced exit. Kubernetes waits 30s
/// before SIGKILL; leave headroom.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// Cancels `token` on the first SIGTERM or SIGINT.
///
/// The handlers are installed before this returns, not when a task first
/// runs: a signal that arrives a moment after the call drains the service
/// instead of killing it with the default action.
pub fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => tracing::info!("sigterm received, draining"),
                    _ = int.recv() => tracing::info!("sigint received, draining"),
                },
                (Ok(mut only), Err(error)) | (Err(error), Ok(mut only)) => {
                    tracing::warn!(%error, "cannot listen for one of sigterm and sigint");
                    only.recv().await;
                    tracing::info!("signal received, draining");
                }
                (Err(error), Err(_)) => {
                    tracing::error!(%error, "cannot listen for sigterm or sigint");
                    return;
                }
            }
            token.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("ctrl-c received, draining");
            token.cancel();
        }
    });
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
