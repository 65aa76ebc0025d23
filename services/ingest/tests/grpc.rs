//! The gRPC API against a real broker and PostgreSQL.

mod common;

use common::{TestIngest, deal};
use dealmesh_proto::Payload;
use dealmesh_proto::v1::{SubmitDealRequest, SubmitDealsRequest, submit_deals_result::Outcome};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_deal_lands_once_and_a_retry_writes_nothing() {
    let ingest = TestIngest::start().await;
    let mut client = ingest.client().await;
    let request = || SubmitDealRequest {
        deal: Some(deal(
            "scout-1",
            "Acme Robotics",
            "https://www.acme.io/about",
        )),
    };

    let first = client
        .submit_deal(request())
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert!(!first.duplicate);
    assert!(first.offset >= 0);
    assert_eq!(first.company_key.as_ref().unwrap().value, "acme.io");

    let retry = client
        .submit_deal(request())
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.event_id, first.event_id);
    assert_eq!(
        (retry.partition, retry.offset),
        (first.partition, first.offset)
    );

    let events = ingest.events().await;
    assert_eq!(events.len(), 1, "a retry must not write a second event");
    let event = &events[0];
    assert_eq!(event.event_id, first.event_id);
    assert_eq!(event.deal_id, first.deal_id);
    let Some(Payload::DealSourced(sourced)) = &event.payload else {
        panic!("expected DealSourced, got {:?}", event.payload);
    };
    assert_eq!(sourced.name, "Acme Robotics");
    assert_eq!(sourced.source, "scout-service");

    // Any Kafka client can tell what the record is from its headers.
    let records = dealmesh_testkit::read_topic(&ingest.bootstrap, &ingest.topics.deals).await;
    let header = |name: &str| {
        records[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .unwrap_or_else(|| panic!("header {name} missing"))
    };
    assert_eq!(header("ce_id"), first.event_id);
    assert_eq!(header("ce_type"), "dealmesh.v1.DealSourced");
    assert_eq!(header("ce_specversion"), "1.0");
    assert_eq!(header("ce_source"), "/dealmesh/ingest");
    assert!(header("traceparent").starts_with("00-"));
    assert_eq!(records[0].key.as_deref(), Some(first.deal_id.as_bytes()));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_answers_per_item_and_writes_only_the_valid_ones() {
    let ingest = TestIngest::start().await;
    let mut client = ingest.client().await;
    let mut bad = deal("b-2", "", "ftp://nope");
    bad.source = "Not Valid".into();
    let deals = vec![
        deal("b-1", "Alpha", "alpha.dev"),
        bad,
        deal("b-3", "Beta GmbH", "https://beta.co.uk/jobs"),
        deal("b-1", "Alpha", "alpha.dev"),
    ];
    let results = client
        .submit_deals(SubmitDealsRequest { deals })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 4);
    assert_eq!(
        results.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let Some(Outcome::Receipt(alpha)) = &results[0].outcome else {
        panic!("{:?}", results[0])
    };
    assert!(!alpha.duplicate);
    let Some(Outcome::Error(error)) = &results[1].outcome else {
        panic!("{:?}", results[1])
    };
    assert_eq!(error.code, "INVALID_ARGUMENT");
    let fields: Vec<&str> = error
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(
        fields.contains(&"deals[1].name")
            && fields.contains(&"deals[1].website")
            && fields.contains(&"deals[1].source"),
        "{fields:?}"
    );
    let Some(Outcome::Receipt(beta)) = &results[2].outcome else {
        panic!("{:?}", results[2])
    };
    assert_eq!(beta.company_key.as_ref().unwrap().value, "beta.co.uk");
    let Some(Outcome::Receipt(again)) = &results[3].outcome else {
        panic!("{:?}", results[3])
    };
    assert!(again.duplicate);
    assert_eq!(again.event_id, alpha.event_id);

    let events = ingest.events().await;
    assert_eq!(events.len(), 2);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_argument_with_field_violations_and_write_nothing() {
    let ingest = TestIngest::start_with(&[("DEALMESH_INGEST_MAX_BATCH", "3")]).await;
    let mut client = ingest.client().await;

    let status = client
        .submit_deal(SubmitDealRequest { deal: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut missing = deal("", "", "");
    missing.website = "http://192.168.0.1/".into();
    let status = client
        .submit_deal(SubmitDealRequest {
            deal: Some(missing),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status
        .get_details_bad_request()
        .expect("BadRequest details");
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(fields.contains(&"deal.idempotency_key"), "{fields:?}");
    assert!(fields.contains(&"deal.name"), "{fields:?}");
    assert!(fields.contains(&"deal.website"), "{fields:?}");

    let too_many = (0..4)
        .map(|i| deal(&format!("k{i}"), "X", "x.io"))
        .collect();
    let status = client
        .submit_deals(SubmitDealsRequest { deals: too_many })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "deals"
    );

    let status = client
        .submit_deals(SubmitDealsRequest { deals: vec![] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut huge = deal("big", "Big", "big.io");
    huge.description = "x".repeat(20_000);
    let status = client
        .submit_deal(SubmitDealRequest { deal: Some(huge) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert!(
        ingest.events().await.is_empty(),
        "bad input must not write an event"
    );

    // A key reused for different content is refused, and the first event
    // stays the only one.
    client
        .submit_deal(SubmitDealRequest {
            deal: Some(deal("same-key", "One", "one.io")),
        })
        .await
        .unwrap();
    let status = client
        .submit_deal(SubmitDealRequest {
            deal: Some(deal("same-key", "Two", "two.io")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "deal.idempotency_key"
    );
    assert_eq!(ingest.events().await.len(), 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_retries_of_one_key_write_one_event() {
    let ingest = TestIngest::start().await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = ingest.client().await;
        calls.push(tokio::spawn(async move {
            client
                .submit_deal(SubmitDealRequest {
                    deal: Some(deal("race", "Race Inc", "race.io")),
                })
                .await
                .unwrap()
                .into_inner()
                .receipt
                .unwrap()
        }));
    }
    let mut receipts = Vec::new();
    for call in calls {
        receipts.push(call.await.unwrap());
    }
    assert_eq!(receipts.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(receipts.iter().all(|r| r.event_id == receipts[0].event_id));
    assert_eq!(ingest.events().await.len(), 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reflection_and_metrics_are_served() {
    let ingest = TestIngest::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", ingest.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "dealmesh.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut client = ingest.client().await;
    for _ in 0..2 {
        client
            .submit_deal(SubmitDealRequest {
                deal: Some(deal("m-1", "Metered", "metered.io")),
            })
            .await
            .unwrap();
    }

    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{}/readyz", ingest.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let live = http
        .get(format!("http://{}/healthz", ingest.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains("/dealmesh.v1.IngestService/SubmitDeal"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dealmesh_produced_records_total"),
        "{metrics}"
    );
    for line in [
        r#"ingest_submissions_total{channel="grpc",outcome="new"} 1"#,
        r#"ingest_submissions_total{channel="grpc",outcome="duplicate"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    ingest.stop().await;
}
