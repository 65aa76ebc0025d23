//! The live feed behind `Subscribe`.
//!
//! Feed rows get their ids in commit order (the projector appends under an
//! advisory lock), so "every row after my cursor" is the whole truth at any
//! moment: a reader replays from PostgreSQL, then waits for the head to move
//! (in-process for this replica's writes, LISTEN/NOTIFY for the others') and
//! reads again. Replay and live are one loop; nothing is skipped or repeated.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dealmesh_auth::Principal;
use dealmesh_proto::v1::{FeedItem, NotificationTrigger, SubscribeResponse};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::event::LP_TRIGGERS;

/// PostgreSQL channel on which appended feed ids are announced.
pub const FEED_CHANNEL: &str = "dealmesh_notify_feed";
const PAGE: i64 = 500;
/// Read again this often even if nothing announced a new row.
const FALLBACK_POLL: Duration = Duration::from_secs(2);
const CURSOR_PREFIX: &str = "f1.";

pub fn encode_cursor(id: i64) -> String {
    format!("{CURSOR_PREFIX}{id}")
}

/// The feed id a cursor stands for; empty is the beginning.
pub fn decode_cursor(cursor: &str) -> Result<i64, String> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .ok_or_else(|| format!("{cursor:?} is not a cursor this server issued"))
}

/// What a caller asked to see.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub after: i64,
    pub triggers: Vec<i32>,
    pub deal_ids: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    event_id: String,
    deal_id: String,
    deal_name: String,
    trigger: i32,
    summary: String,
    occurred_at: DateTime<Utc>,
    event: Vec<u8>,
}

#[derive(Clone)]
pub struct Feed {
    pool: PgPool,
    head: watch::Receiver<i64>,
}

impl Feed {
    pub fn new(pool: PgPool, head: watch::Receiver<i64>) -> Self {
        Self { pool, head }
    }

    /// Streams the caller's feed from `selection.after` on, until the caller
    /// goes away or `shutdown`.
    pub fn stream(
        &self,
        principal: Principal,
        selection: Selection,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<Result<SubscribeResponse, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(status) = this.pump(&principal, selection, &tx, shutdown).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        rx
    }

    async fn pump(
        &self,
        principal: &Principal,
        selection: Selection,
        tx: &mpsc::Sender<Result<SubscribeResponse, Status>>,
        shutdown: CancellationToken,
    ) -> Result<(), Status> {
        let mut head = self.head.clone();
        let mut cursor = selection.after;
        loop {
            // Marked seen before reading: a row committed while we read
            // moves the head again and we read once more.
            head.mark_unchanged();
            let rows = self
                .page(principal, &selection, cursor)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "feed read failed");
                    Status::unavailable("the feed is unavailable; resume from your last cursor")
                })?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                cursor = row.id;
                let Some(item) = to_item(principal, row) else {
                    continue;
                };
                if tx
                    .send(Ok(SubscribeResponse { item: Some(item) }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(Status::unavailable("server is shutting down; resume from your last cursor")),
                () = tx.closed() => return Ok(()),
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                () = tokio::time::sleep(FALLBACK_POLL) => {}
            }
        }
    }

    async fn page(
        &self,
        principal: &Principal,
        selection: &Selection,
        after: i64,
    ) -> Result<Vec<Row>, sqlx::Error> {
        let lp = principal.is_lp().then(|| {
            principal
                .lp_id
                .clone()
                .unwrap_or_else(|| principal.subject.clone())
        });
        let lp_triggers: Vec<i32> = LP_TRIGGERS.iter().map(|t| *t as i32).collect();
        sqlx::query_as::<_, Row>(
            "SELECT f.id, f.event_id, f.deal_id, coalesce(d.name, '') AS deal_name, f.trigger, f.summary, \
               f.occurred_at, f.event \
             FROM feed f LEFT JOIN deals d ON d.deal_id = f.deal_id \
             WHERE f.id > $1 \
               AND (cardinality($2::int[]) = 0 OR f.trigger = ANY($2)) \
               AND (cardinality($3::text[]) = 0 OR f.deal_id = ANY($3)) \
               AND ($4::text IS NULL OR (f.trigger = ANY($5) AND EXISTS ( \
                 SELECT 1 FROM deal_shares s WHERE s.deal_id = f.deal_id AND s.lp_id = $4))) \
             ORDER BY f.id LIMIT $6",
        )
        .bind(after)
        .bind(&selection.triggers)
        .bind(&selection.deal_ids)
        .bind(lp)
        .bind(&lp_triggers)
        .bind(PAGE)
        .fetch_all(&self.pool)
        .await
    }
}

/// The item as this caller may see it: an LP sees a share or a vote only if
/// it concerns them, and never the other LPs on it.
fn to_item(principal: &Principal, row: Row) -> Option<FeedItem> {
    let mut event = DealEvent::decode(row.event.as_slice()).ok()?;
    let mut summary = row.summary;
    if principal.is_lp() {
        let lp = principal.lp_id.as_deref().unwrap_or(&principal.subject);
        match event.payload.as_mut() {
            Some(Payload::DealShared(shared)) => {
                if !shared.lp_ids.iter().any(|id| id == lp) {
                    return None;
                }
                shared.lp_ids = vec![lp.to_owned()];
                let name = if row.deal_name.is_empty() {
                    "a deal"
                } else {
                    row.deal_name.as_str()
                };
                summary = format!("{name} was shared with you");
            }
            Some(Payload::VoteOpened(opened)) => {
                if !opened.eligible_lp_ids.is_empty()
                    && !opened.eligible_lp_ids.iter().any(|id| id == lp)
                {
                    return None;
                }
                opened.eligible_lp_ids.retain(|id| id == lp);
            }
            Some(Payload::VoteClosed(_)) => {}
            _ => return None,
        }
    }
    Some(FeedItem {
        cursor: encode_cursor(row.id),
        event_id: row.event_id,
        deal_id: row.deal_id,
        deal_name: row.deal_name,
        trigger: NotificationTrigger::try_from(row.trigger).unwrap_or_default() as i32,
        summary,
        occurred_at: Some(dealmesh_eventlog::envelope::timestamp(row.occurred_at)),
        event: Some(event),
    })
}

/// Moves `head` when another replica announces a feed row, until `shutdown`.
pub async fn listen(pool: PgPool, head: watch::Sender<i64>, shutdown: CancellationToken) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "feed listener cannot connect, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        if let Err(error) = listener.listen(FEED_CHANNEL).await {
            tracing::warn!(%error, "feed listener cannot listen, retrying");
            continue;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                notification = listener.recv() => match notification {
                    Ok(n) => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            head.send_if_modified(|h| { let moved = id > *h; *h = (*h).max(id); moved });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "feed listener lost its connection");
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Ok(42));
        assert_eq!(decode_cursor(""), Ok(0));
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor("f1.-1").is_err());
        assert!(decode_cursor("f1.x").is_err());
    }
}
