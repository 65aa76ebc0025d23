//! Consumes the deal log: keeps what notify needs to decide audiences (deal
//! names, sectors, owners, LP shares, vote eligibility), appends to the feed,
//! and writes the deliveries each event causes, all in one PostgreSQL
//! transaction per event. Only after that commits does the consumer loop
//! count the record as done and commit its offset, so a crash anywhere
//! before loses nothing, and a redelivered event is dropped by its id.

use std::sync::Arc;

use dealmesh_eventlog::ids::{caused_event_id, derived_event_id};
use dealmesh_eventlog::{HandleError, Handler, Record};
use dealmesh_proto::v1::NotificationTrigger;
use dealmesh_proto::{DealEvent, Payload};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::event::{self, LP_TRIGGERS};
use crate::subscription::{self, Stored};

/// Advisory lock key held while appending to the feed, so feed ids commit
/// in order (`notify.feed` in ASCII).
pub const FEED_LOCK: i64 = 0x6e6f_7469_6679_6664;

/// What notify knows about the deal an event is about, after the event.
#[derive(Debug, Clone, Default)]
pub struct DealContext {
    pub name: String,
    /// Lower-cased.
    pub sector: String,
    pub owner_id: String,
    pub shared_with: Vec<String>,
    /// For vote events: the vote's eligible LPs (empty: not restricted).
    pub vote_eligible: Vec<String>,
}

/// Whether `subscription` hears about `event`. LPs hear only about deals
/// shared with them, and only the triggers in [`LP_TRIGGERS`].
pub fn hears(subscription: &Stored, event: &DealEvent, deal: &DealContext) -> bool {
    let Some(payload) = &event.payload else {
        return false;
    };
    let trigger = event::trigger(payload);
    if !subscription.triggers.contains(&(trigger as i32)) {
        return false;
    }
    if !subscription.deal_ids.is_empty() && !subscription.deal_ids.contains(&event.deal_id) {
        return false;
    }
    if !subscription.sectors.is_empty() && !subscription.sectors.contains(&deal.sector) {
        return false;
    }
    if let Some(min) = subscription.min_score {
        match payload {
            Payload::DealScored(scored) if scored.score >= min => {}
            _ => return false,
        }
    }
    if subscription.owned_deals_only && deal.owner_id != subscription.subscriber {
        return false;
    }
    if subscription.is_lp() {
        let Some(lp) = subscription.lp_id.as_deref() else {
            return false;
        };
        if !LP_TRIGGERS.contains(&trigger) || !deal.shared_with.iter().any(|s| s == lp) {
            return false;
        }
        match payload {
            Payload::DealShared(shared) => return shared.lp_ids.iter().any(|s| s == lp),
            Payload::VoteOpened(_) | Payload::VoteClosed(_) => {
                return deal.vote_eligible.is_empty() || deal.vote_eligible.iter().any(|s| s == lp);
            }
            _ => return false,
        }
    }
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The outcome of applying one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Seen before: nothing written.
    Duplicate,
    /// Appended at `feed_id`, with `deliveries` new deliveries.
    New { feed_id: i64, deliveries: u64 },
}

#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    max_payload_bytes: usize,
    dispatcher_wake: Arc<Notify>,
    feed_head: watch::Sender<i64>,
}

impl Projector {
    pub fn new(
        pool: PgPool,
        max_payload_bytes: usize,
        dispatcher_wake: Arc<Notify>,
        feed_head: watch::Sender<i64>,
    ) -> Self {
        Self {
            pool,
            max_payload_bytes,
            dispatcher_wake,
            feed_head,
        }
    }

    /// Applies one event (encoded as `raw`) in one transaction.
    #[tracing::instrument(skip_all, fields(event_id = %event.event_id, deal_id = %event.deal_id), err)]
    pub async fn apply(&self, event: &DealEvent, raw: &[u8]) -> Result<Applied, ProjectError> {
        let Some(payload) = &event.payload else {
            return Ok(Applied::Duplicate);
        };
        let mut tx = self.pool.begin().await?;
        let fresh =
            sqlx::query("INSERT INTO applied_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(&event.event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(Applied::Duplicate);
        }
        project(&mut tx, event, payload).await?;
        let deal = context(&mut tx, event, payload).await?;
        let trigger = event::trigger(payload);
        let summary = event::summary(event, &deal.name);

        let mut batch = Batch::default();
        for subscription in subscription::listening(&mut *tx, trigger).await? {
            if hears(&subscription, event, &deal) {
                self.delivery(&mut batch, &subscription, event, trigger, &deal, &summary);
            }
        }
        let deliveries = batch.insert(&mut tx).await?;

        // Taken last and held to commit: feed ids become visible in order.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FEED_LOCK)
            .execute(&mut *tx)
            .await?;
        let feed_id: i64 = sqlx::query_scalar(
            "INSERT INTO feed (event_id, deal_id, trigger, summary, occurred_at, event) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&event.event_id)
        .bind(&event.deal_id)
        .bind(trigger as i32)
        .bind(&summary)
        .bind(event::occurred_at(event))
        .bind(raw)
        .fetch_one(&mut *tx)
        .await?;
        // Delivered at commit, to other replicas' feed readers.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::feed::FEED_CHANNEL)
            .bind(feed_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;

        self.feed_head.send_if_modified(|head| {
            let advanced = feed_id > *head;
            *head = (*head).max(feed_id);
            advanced
        });
        if deliveries > 0 {
            self.dispatcher_wake.notify_one();
        }
        tracing::debug!(feed_id, deliveries, "event applied");
        Ok(Applied::New {
            feed_id,
            deliveries,
        })
    }

    /// Adds the delivery `subscription` gets for `event` to `batch`.
    fn delivery(
        &self,
        batch: &mut Batch,
        subscription: &Stored,
        event: &DealEvent,
        trigger: NotificationTrigger,
        deal: &DealContext,
        summary: &str,
    ) {
        let occurred_at = event::occurred_at(event);
        // One notification per event: a recipient that several of its
        // subscriptions match on one channel still hears it once (the
        // delivery key is notification, recipient, channel).
        let notification_id = caused_event_id(occurred_at, &event.event_id, "notify");
        let notification = notification_id.to_string();
        let id = derived_event_id(
            occurred_at,
            &[
                b"delivery",
                notification.as_bytes(),
                subscription.channel.as_bytes(),
                subscription.target.as_bytes(),
            ],
        );
        let body = if subscription.channel == "email" {
            json!({
                "subject": format!("[dealmesh] {summary}"),
                "text": email_text(subscription, event, summary, deal),
            })
        } else if subscription.webhook_format == "slack" {
            json!({ "text": format!("*dealmesh*: {summary}") })
        } else {
            json!({
                "delivery_id": id,
                "notification_id": notification_id,
                "subscription_id": subscription.id,
                "subscription_name": subscription.name,
                "trigger": event::trigger_name(trigger),
                "event_type": dealmesh_eventlog::envelope::type_name(event),
                "event_id": event.event_id,
                "deal_id": event.deal_id,
                "deal_name": deal.name,
                "occurred_at": occurred_at,
                "summary": summary,
                "data": event::data(event),
            })
        }
        .to_string();
        let (status, last_error) = if body.len() > self.max_payload_bytes {
            (
                "dead",
                Some(format!(
                    "payload is {} bytes, over the limit of {} bytes ({})",
                    body.len(),
                    self.max_payload_bytes,
                    crate::config::MAX_PAYLOAD_BYTES
                )),
            )
        } else if subscription.channel == "email" && subscription.digest {
            ("digest", None)
        } else {
            ("pending", None)
        };
        if batch.ids.contains(&id) {
            // An older subscription already reaches this recipient on this
            // channel: the id is derived from exactly that key.
            return;
        }
        if let Some(error) = &last_error {
            tracing::warn!(delivery_id = %id, subscription_id = %subscription.id, error, "delivery refused");
        }
        batch.ids.push(id);
        batch.notification_ids.push(notification_id);
        batch.recipients.push(subscription.target.clone());
        batch.channels.push(subscription.channel.clone());
        batch.subscription_ids.push(subscription.id);
        batch.event_ids.push(event.event_id.clone());
        batch.statuses.push(status.to_owned());
        batch.bodies.push(body);
        batch.last_errors.push(last_error);
    }
}

/// The deliveries one event causes, written with one statement.
#[derive(Default)]
struct Batch {
    ids: Vec<Uuid>,
    notification_ids: Vec<Uuid>,
    recipients: Vec<String>,
    channels: Vec<String>,
    subscription_ids: Vec<Uuid>,
    event_ids: Vec<String>,
    statuses: Vec<String>,
    bodies: Vec<String>,
    last_errors: Vec<Option<String>>,
}

impl Batch {
    /// Inserts what is new; returns how many new deliveries are pending.
    async fn insert(self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(0);
        }
        let pending: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO deliveries (id, notification_id, recipient, channel, subscription_id, event_id, status, body, last_error) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::text[]) \
             ON CONFLICT DO NOTHING RETURNING status = 'pending'",
        )
        .bind(&self.ids)
        .bind(&self.notification_ids)
        .bind(&self.recipients)
        .bind(&self.channels)
        .bind(&self.subscription_ids)
        .bind(&self.event_ids)
        .bind(&self.statuses)
        .bind(&self.bodies)
        .bind(&self.last_errors)
        .fetch_all(&mut *tx)
        .await?;
        Ok(pending.into_iter().filter(|p| *p).count() as u64)
    }
}

fn email_text(
    subscription: &Stored,
    event: &DealEvent,
    summary: &str,
    deal: &DealContext,
) -> String {
    let mut text = format!("{summary}\n\n");
    if !deal.name.is_empty() {
        text.push_str(&format!("Deal: {} ({})\n", deal.name, event.deal_id));
    } else {
        text.push_str(&format!("Deal: {}\n", event.deal_id));
    }
    text.push_str(&format!(
        "When: {}\n",
        event::occurred_at(event).to_rfc3339()
    ));
    if let Some(Payload::NoteAdded(note)) = &event.payload {
        text.push_str(&format!("\n{}\n", note.body));
    }
    text.push_str(&format!(
        "\nYou receive this because of subscription \"{}\" ({}).\n",
        subscription.name, subscription.id
    ));
    text
}

/// Updates notify's own view of the deal.
async fn project(
    tx: &mut PgConnection,
    event: &DealEvent,
    payload: &Payload,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO deals (deal_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&event.deal_id)
        .execute(&mut *tx)
        .await?;
    match payload {
        Payload::DealSourced(p) if !p.name.is_empty() => {
            sqlx::query("UPDATE deals SET name = $2 WHERE deal_id = $1")
                .bind(&event.deal_id)
                .bind(&p.name)
                .execute(&mut *tx)
                .await?;
        }
        Payload::DealEnriched(p) => {
            if let Some(sector) = p
                .analysis
                .as_ref()
                .map(|a| a.sector.trim())
                .filter(|s| !s.is_empty())
            {
                sqlx::query("UPDATE deals SET sector = $2 WHERE deal_id = $1")
                    .bind(&event.deal_id)
                    .bind(sector.to_lowercase())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Payload::OwnerAssigned(p) => {
            sqlx::query("UPDATE deals SET owner_id = $2 WHERE deal_id = $1")
                .bind(&event.deal_id)
                .bind(&p.owner_id)
                .execute(&mut *tx)
                .await?;
        }
        Payload::DealShared(p) => {
            sqlx::query(
                "INSERT INTO deal_shares (deal_id, lp_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(&event.deal_id)
            .bind(&p.lp_ids)
            .execute(&mut *tx)
            .await?;
        }
        Payload::VoteOpened(p) => {
            sqlx::query(
                "INSERT INTO votes (vote_id, deal_id, eligible_lp_ids) VALUES ($1, $2, $3) \
                 ON CONFLICT (vote_id) DO NOTHING",
            )
            .bind(&p.vote_id)
            .bind(&event.deal_id)
            .bind(&p.eligible_lp_ids)
            .execute(&mut *tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

async fn context(
    tx: &mut PgConnection,
    event: &DealEvent,
    payload: &Payload,
) -> Result<DealContext, sqlx::Error> {
    let (name, sector, owner_id): (String, String, String) =
        sqlx::query_as("SELECT name, sector, owner_id FROM deals WHERE deal_id = $1")
            .bind(&event.deal_id)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_default();
    let shared_with: Vec<String> =
        sqlx::query_scalar("SELECT lp_id FROM deal_shares WHERE deal_id = $1")
            .bind(&event.deal_id)
            .fetch_all(&mut *tx)
            .await?;
    let vote_id = match payload {
        Payload::VoteOpened(p) => Some(&p.vote_id),
        Payload::VoteClosed(p) => Some(&p.vote_id),
        Payload::VoteCast(p) => Some(&p.vote_id),
        _ => None,
    };
    let vote_eligible = match vote_id {
        Some(vote_id) => sqlx::query_scalar("SELECT eligible_lp_ids FROM votes WHERE vote_id = $1")
            .bind(vote_id)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(DealContext {
        name,
        sector,
        owner_id,
        shared_with,
        vote_eligible,
    })
}

impl Handler for Projector {
    async fn handle(&self, record: &Record) -> Result<(), HandleError> {
        let event = record.event()?;
        if event.payload.is_none() {
            tracing::debug!(event_id = %event.event_id, "event type unknown to this build, skipped");
            return Ok(());
        }
        let raw = record.value.as_deref().unwrap_or_default();
        self.apply(&event, raw)
            .await
            .map(|_| ())
            .map_err(|e| HandleError::Transient(e.to_string()))
    }
}
