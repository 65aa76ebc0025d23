//! Graceful shutdown: a [`CancellationToken`] handed to every task, tripped
//! by SIGTERM or SIGINT, and a grace period for draining.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Default time between the signal and a forced exit. Kubernetes waits 30s
/// before SIGKILL; leave headroom.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// An OS signal, listened for from the moment the value is made: one sent
/// right after cannot meet the default action (which ends the process for
/// SIGTERM, SIGINT and SIGHUP). If it cannot be listened for, a warning
/// names it and [`OsSignal::recv`] never resolves. Off Unix only the
/// interrupt exists (as ctrl-c, listened for from the first `recv`).
pub struct OsSignal {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))]
    ctrl_c: bool,
}

impl OsSignal {
    pub fn terminate() -> Self {
        #[cfg(unix)]
        return Self::listen(tokio::signal::unix::SignalKind::terminate(), "sigterm");
        #[cfg(not(unix))]
        Self { ctrl_c: false }
    }

    pub fn interrupt() -> Self {
        #[cfg(unix)]
        return Self::listen(tokio::signal::unix::SignalKind::interrupt(), "sigint");
        #[cfg(not(unix))]
        Self { ctrl_c: true }
    }

    pub fn hangup() -> Self {
        #[cfg(unix)]
        return Self::listen(tokio::signal::unix::SignalKind::hangup(), "sighup");
        #[cfg(not(unix))]
        Self { ctrl_c: false }
    }

    #[cfg(unix)]
    fn listen(kind: tokio::signal::unix::SignalKind, name: &str) -> Self {
        let signal = tokio::signal::unix::signal(kind)
            .inspect_err(|error| tracing::warn!(%error, signal = name, "cannot listen for signal"))
            .ok();
        Self { signal }
    }

    /// Resolves on the next delivery.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        #[cfg(not(unix))]
        if self.ctrl_c && tokio::signal::ctrl_c().await.is_ok() {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT; the handlers are in place
/// when this returns.
pub fn cancel_on_signal(token: CancellationToken) {
    let mut term = OsSignal::terminate();
    let mut int = OsSignal::interrupt();
    tokio::spawn(async move {
        tokio::select! {
            () = term.recv() => tracing::info!("sigterm received, draining"),
            () = int.recv() => tracing::info!("sigint received, draining"),
        }
        token.cancel();
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
