//! A signal reaches a service from the moment `cancel_on_signal` returns.
//!
//! Alone in its test binary: the signal is sent to this test process.
#![cfg(unix)]

use std::time::Duration;

use dealmesh_runtime::shutdown::{self, CancellationToken};

/// SIGTERM is sent before the runtime runs any other task. Were the handler
/// installed by a task, the default action would end this process.
#[tokio::test(flavor = "current_thread")]
async fn a_sigterm_right_after_the_call_cancels_the_token() {
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed: {status}");
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("the token is cancelled within 10s of SIGTERM");
}
