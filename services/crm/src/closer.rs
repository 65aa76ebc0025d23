//! Closes votes that reached their deadline, even if nobody calls, and
//! records a `VoteClosed` for votes the projector closed because every
//! eligible LP voted. The event id comes from the vote id, so several
//! replicas closing one vote publish one event (the projector drops the
//! copies).

use std::time::Duration;

use chrono::{DateTime, Utc};
use dealmesh_eventlog::{EventProducer, envelope, ids};
use dealmesh_proto::DealEvent;
use dealmesh_proto::Payload;
use dealmesh_proto::v1::{VoteCloseReason, VoteClosed, VoteRule};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::projection;

pub const SERVICE: &str = "dealmesh-crm";

#[derive(sqlx::FromRow)]
struct Due {
    vote_id: String,
    deal_id: String,
    deadline: DateTime<Utc>,
    status: String,
    closed_at: Option<DateTime<Utc>>,
    close_reason: i32,
    rule: i32,
    quorum: i32,
    opened_event_id: String,
}

/// The `VoteClosed` event for a vote, the same whoever builds it.
fn close_event(due: &Due, tally: dealmesh_proto::v1::VoteTally) -> DealEvent {
    let open = due.status == "open";
    let (at, reason) = if open {
        (due.deadline, VoteCloseReason::Deadline)
    } else {
        (
            due.closed_at.unwrap_or(due.deadline),
            VoteCloseReason::try_from(due.close_reason).unwrap_or(VoteCloseReason::AllVoted),
        )
    };
    let rule = VoteRule::try_from(due.rule).unwrap_or(VoteRule::SimpleMajority);
    DealEvent {
        event_id: ids::caused_event_id(due.deadline, &due.vote_id, "vote-close").to_string(),
        deal_id: due.deal_id.clone(),
        occurred_at: Some(envelope::timestamp(at)),
        actor: Some(envelope::service_actor(SERVICE)),
        correlation_id: due.opened_event_id.clone(),
        causation_id: due.opened_event_id.clone(),
        expected_version: None,
        idempotency_key: String::new(),
        payload: Some(Payload::VoteClosed(VoteClosed {
            vote_id: due.vote_id.clone(),
            result: projection::result(rule, due.quorum.max(0) as u32, &tally) as i32,
            tally: Some(tally),
            reason: reason as i32,
        })),
    }
}

/// One pass: publishes a close for every vote due. Returns how many.
#[tracing::instrument(skip_all, err)]
pub async fn close_due(pool: &PgPool, producer: &EventProducer) -> anyhow::Result<usize> {
    let due: Vec<Due> = sqlx::query_as(
        "SELECT vote_id, deal_id, deadline, status, closed_at, close_reason, rule, quorum, opened_event_id
         FROM votes
         WHERE (status = 'open' AND deadline <= now())
            OR (status = 'closed' AND close_event_id IS NULL)
         ORDER BY deadline LIMIT 500",
    )
    .fetch_all(pool)
    .await?;
    for vote in &due {
        let mut conn = pool.acquire().await?;
        let tally = projection::tally(&mut conn, &vote.vote_id).await?;
        drop(conn);
        let event = close_event(vote, tally);
        producer.publish(&event).await?;
        tracing::info!(vote_id = %vote.vote_id, deal_id = %vote.deal_id, "vote close published");
    }
    Ok(due.len())
}

/// Runs [`close_due`] every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    producer: EventProducer,
    interval: Duration,
    shutdown: CancellationToken,
) {
    dealmesh_runtime::shutdown::every(interval, &shutdown, || async {
        if let Err(error) = close_due(&pool, &producer).await {
            tracing::warn!(error = format!("{error:#}"), "vote closer pass failed");
        }
    })
    .await;
}
