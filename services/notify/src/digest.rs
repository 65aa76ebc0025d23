//! Daily digests: email deliveries of digest subscriptions wait (status
//! `digest`) until the digest step folds each recipient's waiting items into
//! one email delivery, in one transaction, which the dispatcher then sends
//! like any other.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Namespace of digest notification ids.
const DIGEST_NAMESPACE: Uuid = Uuid::from_u128(0x6e6f_7469_6679_4c5f_8000_6469_6765_7374);

#[derive(Deserialize)]
struct Item {
    subject: String,
    text: String,
}

/// Folds every item waiting since before `now` into one digest per
/// recipient; returns how many digests were written.
#[tracing::instrument(skip_all, fields(now = %now), err)]
pub async fn assemble(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let recipients: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT recipient FROM deliveries \
         WHERE status = 'digest' AND channel = 'email' AND created_at <= $1",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut written = 0;
    for recipient in recipients {
        let mut tx = pool.begin().await?;
        let items: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, body FROM deliveries \
             WHERE status = 'digest' AND channel = 'email' AND recipient = $1 AND created_at <= $2 \
             ORDER BY created_at, id FOR UPDATE SKIP LOCKED",
        )
        .bind(&recipient)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        if items.is_empty() {
            continue;
        }
        // The id is the set of items it carries: the same items, the same
        // digest, however often this step runs.
        let mut key = recipient.clone().into_bytes();
        for (id, _) in &items {
            key.extend_from_slice(id.as_bytes());
        }
        let notification_id = Uuid::new_v5(&DIGEST_NAMESPACE, &key);
        let mut text = format!(
            "{} notification(s) since your last digest:\n\n",
            items.len()
        );
        for (_, body) in &items {
            match serde_json::from_str::<Item>(body) {
                Ok(item) => {
                    text.push_str(&format!(
                        "* {}\n",
                        item.subject.trim_start_matches("[dealmesh] ")
                    ));
                    for line in item.text.lines().filter(|l| !l.trim().is_empty()) {
                        text.push_str(&format!("    {line}\n"));
                    }
                    text.push('\n');
                }
                Err(_) => text.push_str("* (an unreadable notification)\n\n"),
            }
        }
        let body = serde_json::json!({
            "subject": format!("[dealmesh] your digest: {} notification(s)", items.len()),
            "text": text,
        })
        .to_string();
        let ids: Vec<Uuid> = items.iter().map(|(id, _)| *id).collect();
        sqlx::query(
            "INSERT INTO deliveries (id, notification_id, recipient, channel, status, body) \
             VALUES ($1, $1, $2, 'email', 'pending', $3) ON CONFLICT DO NOTHING",
        )
        .bind(notification_id)
        .bind(&recipient)
        .bind(&body)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE deliveries SET status = 'digested', digest_id = $2 WHERE id = ANY($1)")
            .bind(&ids)
            .bind(notification_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(recipient, items = ids.len(), digest_id = %notification_id, "digest assembled");
        written += 1;
    }
    Ok(written)
}
