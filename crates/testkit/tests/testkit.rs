//! The testkit against the real broker and PostgreSQL it hands out.

use dealmesh_testkit::{
    TestDatabase, create_topic, kafka_bootstrap, read_deal_events, read_topic, unique_topic_prefix,
};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        // Linger so several records share a batch, as they do in production.
        .set("linger.ms", "20")
        .create()
        .expect("producer")
}

/// Sends all records at once, so they batch, and waits for every delivery.
async fn produce(bootstrap: &str, topic: &str, records: &[(&str, Vec<u8>)]) {
    let producer = producer(bootstrap);
    let mut deliveries = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "ce_id",
            value: Some(&format!("id-{i}")),
        });
        let record = FutureRecord::to(topic)
            .key(*key)
            .payload(value)
            .headers(headers);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(err, _)| err)
                .expect("enqueue"),
        );
    }
    for delivery in deliveries {
        delivery.await.expect("delivery").expect("delivered");
    }
}

#[tokio::test]
async fn read_topic_returns_every_produced_record() {
    let bootstrap = kafka_bootstrap().await;
    let topic = format!("{}deals", unique_topic_prefix());
    create_topic(&bootstrap, &topic, 3).await;
    create_topic(&bootstrap, &topic, 3).await; // idempotent

    let produced: Vec<(&str, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                ["a", "b", "c", "d"][i % 4],
                format!("value-{i}").into_bytes(),
            )
        })
        .collect();
    produce(&bootstrap, &topic, &produced).await;

    let records = read_topic(&bootstrap, &topic).await;
    assert_eq!(records.len(), produced.len(), "{records:#?}");
    for (i, (key, value)) in produced.iter().enumerate() {
        let record = records
            .iter()
            .find(|r| r.value.as_deref() == Some(value.as_slice()))
            .unwrap_or_else(|| panic!("record {i} missing"));
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(
            record.headers,
            vec![("ce_id".to_owned(), format!("id-{i}").into_bytes())]
        );
    }
    // Ordered by partition then offset, and a key's records keep their order.
    assert!(
        records
            .windows(2)
            .all(|w| (w[0].partition, w[0].offset) < (w[1].partition, w[1].offset))
    );
    for key in ["a", "b", "c", "d"] {
        let values: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
            .map(|r| r.value.clone().unwrap())
            .collect();
        let expected: Vec<_> = produced
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(values, expected, "order of key {key}");
    }
}

#[tokio::test]
async fn read_topic_of_an_empty_topic_is_empty() {
    let bootstrap = kafka_bootstrap().await;
    let topic = format!("{}empty", unique_topic_prefix());
    create_topic(&bootstrap, &topic, 2).await;
    assert!(read_topic(&bootstrap, &topic).await.is_empty());
}

#[tokio::test]
async fn read_deal_events_decodes_the_envelope() {
    let bootstrap = kafka_bootstrap().await;
    let topic = format!("{}deals", unique_topic_prefix());
    create_topic(&bootstrap, &topic, 1).await;
    let event = dealmesh_proto::DealEvent {
        event_id: "0196b0d2-0000-7000-8000-000000000001".into(),
        deal_id: "deal-1".into(),
        correlation_id: "corr-1".into(),
        ..Default::default()
    };
    produce(&bootstrap, &topic, &[("deal-1", event.encode_to_vec())]).await;

    assert_eq!(read_deal_events(&bootstrap, &topic).await, vec![event]);
}

#[test]
fn topic_prefixes_are_unique() {
    assert_ne!(unique_topic_prefix(), unique_topic_prefix());
}

#[tokio::test]
async fn test_database_is_fresh_empty_and_working() {
    let db = TestDatabase::create().await;
    let other = TestDatabase::create().await;
    assert_ne!(db.name, other.name);
    assert!(db.name.starts_with("dmtest_"));
    assert!(db.url.ends_with(&format!("/{}", db.name)), "{}", db.url);

    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(current, db.name);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);

    sqlx::query("CREATE TABLE deals (id text PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deals VALUES ('d1')")
        .execute(&db.pool)
        .await
        .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM deals")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(ids, ["d1"]);

    // The url reaches the same database.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM deals")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}
