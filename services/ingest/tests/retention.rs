//! `serve` forgets idempotency keys past their retention, on its own.

mod common;

use std::time::Duration;

use common::{TestIngest, deal};
use dealmesh_proto::v1::SubmitDealRequest;

/// With a retention of one hour and a purge every second, a key recorded
/// two hours ago is gone within seconds, counted in `/metrics`, and its next
/// submission is a new event; a key recorded just now is still answered as
/// a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn serve_forgets_keys_past_their_retention() {
    let ingest = TestIngest::start_with(&[
        ("DEALMESH_INGEST_KEY_RETENTION", "1h"),
        ("DEALMESH_INGEST_KEY_PURGE_INTERVAL", "1s"),
    ])
    .await;
    let mut client = ingest.client().await;
    let mut submit = async |key: &str| {
        client
            .submit_deal(SubmitDealRequest {
                deal: Some(deal(key, "Acme Robotics", "https://acme.io")),
            })
            .await
            .expect("submitted")
            .into_inner()
            .receipt
            .expect("a receipt")
    };
    let aged = submit("aged").await;
    let fresh = submit("fresh").await;

    // Two hours pass for "aged": its batch is moved back, id and time, as if
    // it had been recorded then.
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    let old_id = uuid::Builder::from_unix_timestamp_millis(
        u64::try_from(two_hours_ago.timestamp_millis()).unwrap(),
        &[7; 10],
    )
    .into_uuid();
    let mut tx = ingest.db.pool.begin().await.unwrap();
    let batch: uuid::Uuid = sqlx::query_scalar(
        "SELECT batch_id FROM ingest_submissions WHERE idempotency_key = 'aged'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE ingest_submissions SET batch_id = $1 WHERE batch_id = $2")
        .bind(old_id)
        .bind(batch)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE ingest_batches SET batch_id = $1, recorded_at = $2 WHERE batch_id = $3")
        .bind(old_id)
        .bind(two_hours_ago)
        .bind(batch)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let batch_of = |key: &'static str| {
        let pool = ingest.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT batch_id FROM ingest_submissions WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };

    let mut waited = Duration::ZERO;
    while batch_of("aged").await.is_some() {
        assert!(
            waited < Duration::from_secs(20),
            "the aged key is still on record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert!(batch_of("fresh").await.is_some(), "a fresh key is kept");
    let batches: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT batch_id FROM ingest_batches")
        .fetch_all(&ingest.db.pool)
        .await
        .unwrap();
    assert_eq!(batches, [batch_of("fresh").await.unwrap()]);
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains("ingest_idempotency_keys_forgotten_total 1"),
        "{metrics}"
    );

    let again = submit("aged").await;
    assert!(!again.duplicate, "a forgotten key is new again");
    assert_ne!(again.event_id, aged.event_id);
    let retry = submit("fresh").await;
    assert!(retry.duplicate);
    assert_eq!(retry.event_id, fresh.event_id);
    assert_eq!(ingest.events().await.len(), 3);
    ingest.stop().await;
}
