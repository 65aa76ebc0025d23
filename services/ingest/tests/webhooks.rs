//! Signed webhooks and the OpenAPI document.

mod common;

use common::{PARTNER, PARTNER_SECRET, TestIngest};
use dealmesh_ingest::http::sign;
use serde_json::{Value, json};

async fn post(
    ingest: &TestIngest,
    source: &str,
    body: &[u8],
    signature: Option<String>,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(ingest.webhook_url(source))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Signature-256", signature);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("every answer is a JSON body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_lands_once_and_a_redelivery_is_acknowledged() {
    let ingest = TestIngest::start().await;
    let body = json!({
        "name": "Nimbus Data",
        "website": "https://nimbus-data.com",
        "external_id": "px-991",
        "round": "seed",
        "employees": 12
    })
    .to_string();
    let signature = sign(PARTNER_SECRET, body.as_bytes());

    let (status, receipt) = post(
        &ingest,
        PARTNER,
        body.as_bytes(),
        Some(signature.clone()),
        Some("delivery-1"),
    )
    .await;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(receipt["duplicate"], false);
    assert_eq!(receipt["company_key"], "domain:nimbus-data.com");

    let (status, again) = post(
        &ingest,
        PARTNER,
        body.as_bytes(),
        Some(signature),
        Some("delivery-1"),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], receipt["event_id"]);

    let events = ingest.events().await;
    assert_eq!(events.len(), 1);
    let Some(dealmesh_proto::Payload::DealSourced(sourced)) = &events[0].payload else {
        panic!()
    };
    assert_eq!(sourced.source, PARTNER);
    assert_eq!(sourced.channel, dealmesh_proto::v1::Channel::Webhook as i32);
    // Fields the schema does not name are kept verbatim as attributes.
    assert_eq!(
        sourced.attributes.get("round").map(String::as_str),
        Some("seed")
    );
    assert_eq!(
        sourced.attributes.get("employees").map(String::as_str),
        Some("12")
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_webhooks_get_a_json_error_and_write_nothing() {
    let ingest = TestIngest::start_with(&[("DEALMESH_INGEST_MAX_BODY_BYTES", "2048")]).await;
    let good = br#"{"name":"Acme","website":"acme.io"}"#;

    let (status, body) = post(&ingest, PARTNER, good, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_signature");

    let wrong = sign("some-other-secret-0123456789", good);
    let (status, body) = post(&ingest, PARTNER, good, Some(wrong), None).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        "the signature does not match the body"
    );

    let (status, _) = post(&ingest, PARTNER, good, Some("md5=abc".into()), None).await;
    assert_eq!(status, 401);

    let (status, body) = post(
        &ingest,
        "nobody",
        good,
        Some(sign(PARTNER_SECRET, good)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_source");

    let malformed = b"{\"name\": ";
    let (status, body) = post(
        &ingest,
        PARTNER,
        malformed,
        Some(sign(PARTNER_SECRET, malformed)),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed_json");

    let invalid = br#"{"name":"","website":"localhost","github_owner":"-bad-"}"#;
    let (status, body) = post(
        &ingest,
        PARTNER,
        invalid,
        Some(sign(PARTNER_SECRET, invalid)),
        None,
    )
    .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["error"]["field_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "website", "github_owner"]);

    let oversize = format!(r#"{{"name":"Big","description":"{}"}}"#, "x".repeat(4096));
    let (status, body) = post(
        &ingest,
        PARTNER,
        oversize.as_bytes(),
        Some(sign(PARTNER_SECRET, oversize.as_bytes())),
        None,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "body_too_large");

    assert!(
        ingest.events().await.is_empty(),
        "no bad webhook may write an event"
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_the_webhook() {
    let ingest = TestIngest::start().await;
    let doc: Value = reqwest::get(format!("http://{}/openapi.json", ingest.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let post = &doc["paths"]["/v1/webhooks/{source}"]["post"];
    for status in [
        "202", "200", "400", "401", "404", "413", "422", "500", "503",
    ] {
        assert!(
            post["responses"][status].is_object(),
            "response {status} undocumented"
        );
    }
    ingest.stop().await;
}
