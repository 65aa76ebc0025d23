//! One company through three channels, and the CSV import command.

mod common;

use std::process::Command;

use common::{PARTNER, PARTNER_SECRET, TestIngest};
use dealmesh_proto::v1::SubmitDealRequest;

fn import(ingest: &TestIngest, csv: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deals.csv");
    std::fs::write(&path, csv).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dealmesh-ingest"))
        .arg("import")
        .arg(&path)
        .env_clear()
        .envs(ingest.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DEALMESH_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_company_from_three_sources_is_one_deal() {
    let ingest = TestIngest::start().await;
    let mut client = ingest.client().await;
    let grpc = client
        .submit_deal(SubmitDealRequest {
            deal: Some(common::deal(
                "g-1",
                "Acme Robotics, Inc.",
                "https://www.acme.io/careers",
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();

    let body = br#"{"name":"ACME robotics","website":"acme.io"}"#;
    let webhook: serde_json::Value = reqwest::Client::new()
        .post(ingest.webhook_url(PARTNER))
        .header(
            "X-Signature-256",
            dealmesh_ingest::http::sign(PARTNER_SECRET, body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let output = import(&ingest, "name,website\nAcme Robotics,http://app.acme.io\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let events = ingest.events().await;
    assert_eq!(events.len(), 3, "three sightings");
    assert!(
        events.iter().all(|e| e.deal_id == grpc.deal_id),
        "one deal: {events:?}"
    );
    assert_eq!(webhook["deal_id"].as_str(), Some(grpc.deal_id.as_str()));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_with_bad_rows_is_reported_by_line_and_field_and_imports_nothing() {
    let ingest = TestIngest::start().await;
    let output = import(
        &ingest,
        "name,website,github_owner\nGood Co,good.io,\n,https://nameless.io,\nBad Site,ftp://bad.io,\nBad Owner,,-x-\n",
    );
    assert_eq!(output.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3: name: is required"), "{stderr}");
    assert!(stderr.contains("line 4: website:"), "{stderr}");
    assert!(stderr.contains("line 5: github_owner:"), "{stderr}");
    assert!(!stderr.contains("line 2"), "{stderr}");
    assert!(
        ingest.events().await.is_empty(),
        "a bad file imports nothing"
    );

    // Re-running a good file is idempotent.
    let good = "name,website\nGood Co,good.io\nOther,other.io\n";
    assert!(import(&ingest, good).status.success());
    let second = import(&ingest, good);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("(0 new, 2 already there)"));
    assert_eq!(ingest.events().await.len(), 2);
    ingest.stop().await;
}
