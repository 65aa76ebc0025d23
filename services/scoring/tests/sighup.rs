//! SIGHUP reloads the model file, as `kill -HUP` does to a running service.
//!
//! Alone in its test binary: the signal goes to this test process, and every
//! service in it reloads.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::GetScoringModelRequest;
use dealmesh_proto::v1::scoring_service_client::ScoringServiceClient;
use tonic::transport::Channel;

async fn model_version(client: &mut ScoringServiceClient<Channel>) -> String {
    client
        .get_scoring_model(authed(GetScoringModelRequest {}, Role::Analyst))
        .await
        .expect("GetScoringModel answers")
        .into_inner()
        .model_version
}

#[tokio::test]
async fn sighup_reloads_a_changed_model_file() {
    // The service never polls the file (DEALMESH_SCORING_MODEL_POLL=0s):
    // only the signal or the RPC can reload it.
    let service = TestScoring::start().await;
    let mut client = service.client().await;
    // Answered: the service is serving, so its handler is in place.
    let before = model_version(&mut client).await;
    assert!(before.starts_with("2026.11-1+"), "{before}");

    std::fs::write(
        &service.model_path,
        THESIS.replace("version = \"2026.11-1\"", "version = \"2026.12-1\""),
    )
    .expect("model file written");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -HUP failed: {status}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = model_version(&mut client).await;
        if now.starts_with("2026.12-1+") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still on {now} 10s after SIGHUP (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
