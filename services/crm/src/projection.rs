//! Applying one event to the read model: the same code for the live
//! projector and for a replay, and deterministic (every time comes from the
//! event, nothing from the clock), so two replays of one log give the same
//! tables.
//!
//! A deal's version is the number of events applied to it. An event with
//! `expected_version` (a command) is applied only if the deal is still at
//! that version and its state allows it; otherwise it is recorded as
//! rejected and changes nothing else. The decision is kept in `events`,
//! where commands wait for it.

use chrono::{DateTime, Utc};
use dealmesh_eventlog::envelope;
use dealmesh_proto::v1::{self, VoteCloseReason, VoteResult, VoteRule};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;
use sqlx::PgConnection;

/// Where a record sits on the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How the projector decided an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Applied {
        version: i64,
    },
    /// A command that lost; `code` is `aborted` or `failed_precondition`.
    Rejected {
        code: &'static str,
        reason: String,
    },
    /// Nothing to do: its effect was already there.
    Ignored {
        reason: String,
    },
    /// A payload type this build does not know.
    Skipped,
    /// This event id was applied before.
    Duplicate,
}

impl Decision {
    fn status(&self) -> &'static str {
        match self {
            Decision::Applied { .. } => "applied",
            Decision::Rejected { .. } => "rejected",
            Decision::Ignored { .. } => "ignored",
            Decision::Skipped => "skipped",
            Decision::Duplicate => "duplicate",
        }
    }
}

pub const ABORTED: &str = "aborted";
pub const FAILED_PRECONDITION: &str = "failed_precondition";

struct Refusal {
    code: &'static str,
    reason: String,
}

fn refuse(reason: impl Into<String>) -> Refusal {
    Refusal {
        code: FAILED_PRECONDITION,
        reason: reason.into(),
    }
}

#[derive(sqlx::FromRow)]
struct DealState {
    version: i64,
    stage: String,
}

#[derive(sqlx::FromRow)]
struct VoteState {
    deal_id: String,
    status: String,
    deadline: DateTime<Utc>,
    eligible_lp_ids: Vec<String>,
    rule: i32,
    quorum: i32,
}

/// Applies `event` (whose encoding is `bytes`) read at `position`, inside
/// the caller's transaction. `initial_stage` is where a new deal starts.
pub async fn apply(
    conn: &mut PgConnection,
    event: &DealEvent,
    bytes: &[u8],
    position: &Position,
    initial_stage: &str,
) -> Result<Decision, sqlx::Error> {
    let at = event
        .occurred_at
        .as_ref()
        .and_then(envelope::from_timestamp);
    let actor = event.actor.clone().unwrap_or_default();
    let inserted = sqlx::query(
        "INSERT INTO events (event_id, deal_id, event_type, occurred_at, actor_id, actor_role,
             correlation_id, causation_id, idempotency_key, expected_version, kafka_topic,
             kafka_partition, kafka_offset, envelope, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'pending')
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&event.event_id)
    .bind(&event.deal_id)
    .bind(envelope::type_name(event))
    .bind(at)
    .bind(&actor.id)
    .bind(actor.role)
    .bind(&event.correlation_id)
    .bind(&event.causation_id)
    .bind(&event.idempotency_key)
    .bind(event.expected_version.map(|v| v as i64))
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .bind(bytes)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Decision::Duplicate);
    }

    let decision = match &event.payload {
        None => {
            tracing::warn!(event_id = %event.event_id, "event of an unknown type kept, not applied");
            Decision::Skipped
        }
        Some(payload) => decide_and_apply(conn, event, payload, at, initial_stage).await?,
    };
    let (code, reason, version) = match &decision {
        Decision::Applied { version } => (None, String::new(), *version),
        Decision::Rejected { code, reason } => (
            Some(*code),
            reason.clone(),
            current_version(conn, &event.deal_id).await?,
        ),
        Decision::Ignored { reason } => (
            None,
            reason.clone(),
            current_version(conn, &event.deal_id).await?,
        ),
        Decision::Skipped | Decision::Duplicate => (
            None,
            String::new(),
            current_version(conn, &event.deal_id).await?,
        ),
    };
    sqlx::query(
        "UPDATE events SET status = $2, reject_code = $3, reason = $4, deal_version = $5
         WHERE event_id = $1",
    )
    .bind(&event.event_id)
    .bind(decision.status())
    .bind(code)
    .bind(reason)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    Ok(decision)
}

async fn current_version(conn: &mut PgConnection, deal_id: &str) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT version FROM deals WHERE deal_id = $1")
            .bind(deal_id)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(0),
    )
}

async fn decide_and_apply(
    conn: &mut PgConnection,
    event: &DealEvent,
    payload: &Payload,
    at: Option<DateTime<Utc>>,
    initial_stage: &str,
) -> Result<Decision, sqlx::Error> {
    let deal_id = event.deal_id.as_str();
    let deal: Option<DealState> =
        sqlx::query_as("SELECT version, stage FROM deals WHERE deal_id = $1 FOR UPDATE")
            .bind(deal_id)
            .fetch_optional(&mut *conn)
            .await?;
    let is_command = event.expected_version.is_some();
    if let Some(expected) = event.expected_version {
        match &deal {
            None => {
                return Ok(Decision::Rejected {
                    code: FAILED_PRECONDITION,
                    reason: format!("deal {deal_id} does not exist"),
                });
            }
            Some(d) if d.version as u64 != expected => {
                return Ok(Decision::Rejected {
                    code: ABORTED,
                    reason: format!(
                        "deal {deal_id} is at version {}, the command expected version {expected}",
                        d.version
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if let Err(refusal) = check(conn, event, deal.as_ref(), payload, at).await? {
        return Ok(if is_command {
            Decision::Rejected {
                code: refusal.code,
                reason: refusal.reason,
            }
        } else {
            Decision::Ignored {
                reason: refusal.reason,
            }
        });
    }
    // An event for a deal the log has not sourced (yet) still lands, on a
    // bare deal row, so nothing the log says is lost.
    let updated_at = at.unwrap_or(DateTime::UNIX_EPOCH);
    sqlx::query(
        "INSERT INTO deals (deal_id, version, stage, updated_at, last_event_id)
         VALUES ($1, 0, $2, $3, $4) ON CONFLICT (deal_id) DO NOTHING",
    )
    .bind(deal_id)
    .bind(initial_stage)
    .bind(updated_at)
    .bind(&event.event_id)
    .execute(&mut *conn)
    .await?;
    effects(conn, event, payload, at).await?;
    let version: i64 = sqlx::query_scalar(
        "UPDATE deals SET version = version + 1, updated_at = $2, last_event_id = $3
         WHERE deal_id = $1 RETURNING version",
    )
    .bind(deal_id)
    .bind(updated_at)
    .bind(&event.event_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Decision::Applied { version })
}

/// What the deal's state forbids, whoever sent the event.
async fn check(
    conn: &mut PgConnection,
    event: &DealEvent,
    deal: Option<&DealState>,
    payload: &Payload,
    at: Option<DateTime<Utc>>,
) -> Result<Result<(), Refusal>, sqlx::Error> {
    let deal_id = event.deal_id.as_str();
    Ok(match payload {
        Payload::StageChanged(s) => match deal {
            Some(d) if d.stage != s.from_stage => Err(refuse(format!(
                "deal is in stage {}, not {}",
                d.stage, s.from_stage
            ))),
            _ => Ok(()),
        },
        Payload::VoteOpened(v) => {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM votes WHERE vote_id = $1)")
                    .bind(&v.vote_id)
                    .fetch_one(&mut *conn)
                    .await?;
            if exists {
                Err(refuse(format!("vote {} already exists", v.vote_id)))
            } else {
                Ok(())
            }
        }
        Payload::VoteCast(c) => match vote(conn, &c.vote_id).await? {
            Some(v) if v.deal_id != deal_id => {
                Err(refuse(format!("no vote {} on this deal", c.vote_id)))
            }
            None => Err(refuse(format!("no vote {} on this deal", c.vote_id))),
            Some(v) if v.status != "open" => Err(refuse(format!("vote {} is closed", c.vote_id))),
            Some(v) if at.is_some_and(|at| at > v.deadline) => {
                Err(refuse(format!("vote {} passed its deadline", c.vote_id)))
            }
            Some(v) if !v.eligible_lp_ids.contains(&c.lp_id) => Err(refuse(format!(
                "LP {} may not vote on {}",
                c.lp_id, c.vote_id
            ))),
            Some(_) => Ok(()),
        },
        Payload::VoteClosed(c) => match vote(conn, &c.vote_id).await? {
            Some(v) if v.deal_id == deal_id && v.status == "open" => Ok(()),
            Some(v) if v.deal_id == deal_id => {
                // Closing a vote that already closed (all LPs voted, or a
                // second closer) records the close event, nothing more.
                sqlx::query("UPDATE votes SET close_event_id = coalesce(close_event_id, $2) WHERE vote_id = $1")
                    .bind(&c.vote_id)
                    .bind(&event.event_id)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())?;
                Err(refuse(format!("vote {} is already closed", c.vote_id)))
            }
            _ => Err(refuse(format!("no vote {} on this deal", c.vote_id))),
        },
        _ => Ok(()),
    })
}

async fn vote(conn: &mut PgConnection, vote_id: &str) -> Result<Option<VoteState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT deal_id, status, deadline, eligible_lp_ids, rule, quorum FROM votes
         WHERE vote_id = $1 FOR UPDATE",
    )
    .bind(vote_id)
    .fetch_optional(&mut *conn)
    .await
}

/// Records which event set each field.
async fn provenance(
    conn: &mut PgConnection,
    deal_id: &str,
    fields: &[(&str, String)],
    source: &str,
    event_id: &str,
    at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let (names, values): (Vec<&str>, Vec<String>) = fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (*n, v.clone()))
        .unzip();
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO field_provenance (deal_id, field, value, source, event_id, recorded_at)
         SELECT $1, f, v, $4, $5, $6 FROM UNNEST($2::text[], $3::text[]) AS t(f, v)
         ON CONFLICT (deal_id, field) DO UPDATE SET value = excluded.value,
             source = excluded.source, event_id = excluded.event_id,
             recorded_at = excluded.recorded_at",
    )
    .bind(deal_id)
    .bind(&names)
    .bind(&values)
    .bind(source)
    .bind(event_id)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn effects(
    conn: &mut PgConnection,
    event: &DealEvent,
    payload: &Payload,
    at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let deal_id = event.deal_id.as_str();
    let event_id = event.event_id.as_str();
    let actor = event.actor.clone().unwrap_or_default();
    match payload {
        Payload::DealSourced(s) => {
            let key = s
                .company_key
                .as_ref()
                .map(|k| format!("{}:{}", key_kind(k.kind), k.value))
                .unwrap_or_default();
            sqlx::query(
                "UPDATE deals SET
                     name = CASE WHEN $2 <> '' THEN $2 ELSE name END,
                     website = CASE WHEN $3 <> '' THEN $3 ELSE website END,
                     github_owner = CASE WHEN $4 <> '' THEN $4 ELSE github_owner END,
                     github_repo = CASE WHEN $5 <> '' THEN $5 ELSE github_repo END,
                     description = CASE WHEN $6 <> '' THEN $6 ELSE description END,
                     company_key = CASE WHEN $7 <> '' THEN $7 ELSE company_key END,
                     sourced_at = coalesce(sourced_at, $8)
                 WHERE deal_id = $1",
            )
            .bind(deal_id)
            .bind(&s.name)
            .bind(&s.website)
            .bind(&s.github_owner)
            .bind(&s.github_repo)
            .bind(&s.description)
            .bind(&key)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            let seen_at = s.seen_at.as_ref().and_then(envelope::from_timestamp).or(at);
            sqlx::query(
                "INSERT INTO deal_sources (deal_id, source, external_id, source_url, seen_at, event_id)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (deal_id, source, external_id) DO UPDATE SET
                     source_url = excluded.source_url, seen_at = excluded.seen_at,
                     event_id = excluded.event_id",
            )
            .bind(deal_id)
            .bind(&s.source)
            .bind(&s.external_id)
            .bind(&s.source_url)
            .bind(seen_at)
            .bind(event_id)
            .execute(&mut *conn)
            .await?;
            provenance(
                conn,
                deal_id,
                &[
                    ("name", s.name.clone()),
                    ("website", s.website.clone()),
                    ("github_owner", s.github_owner.clone()),
                    ("github_repo", s.github_repo.clone()),
                    ("description", s.description.clone()),
                ],
                &s.source,
                event_id,
                seen_at,
            )
            .await?;
        }
        Payload::DealEnriched(e) => {
            let analysis = e.analysis.clone().unwrap_or_default();
            sqlx::query(
                "UPDATE deals SET enrichment = $2, enrichment_error = '',
                     sector = CASE WHEN $3 THEN $4 ELSE sector END,
                     summary = CASE WHEN $3 THEN $5 ELSE summary END,
                     business_model = CASE WHEN $3 THEN $6 ELSE business_model END,
                     risks = CASE WHEN $3 THEN $7 ELSE risks END
                 WHERE deal_id = $1",
            )
            .bind(deal_id)
            .bind(e.encode_to_vec())
            .bind(e.analysis.is_some())
            .bind(&analysis.sector)
            .bind(&analysis.summary)
            .bind(&analysis.business_model)
            .bind(&analysis.risks)
            .execute(&mut *conn)
            .await?;
            if let Some(a) = &e.analysis {
                let (source, fetched) = signal_origin(a.provenance.as_ref(), "analysis", at);
                provenance(
                    conn,
                    deal_id,
                    &[
                        ("sector", a.sector.clone()),
                        ("summary", a.summary.clone()),
                        ("business_model", a.business_model.clone()),
                        ("risks", a.risks.join("; ")),
                    ],
                    &source,
                    event_id,
                    fetched,
                )
                .await?;
            }
            if let Some(g) = &e.github {
                let (source, fetched) = signal_origin(g.provenance.as_ref(), "github", at);
                provenance(
                    conn,
                    deal_id,
                    &[
                        ("github.stars", g.stars.to_string()),
                        ("github.contributors", g.contributors.to_string()),
                        ("github.primary_language", g.primary_language.clone()),
                    ],
                    &source,
                    event_id,
                    fetched,
                )
                .await?;
            }
            if let Some(c) = &e.crunchbase {
                let (source, fetched) = signal_origin(c.provenance.as_ref(), "crunchbase", at);
                let funding = c
                    .funding_total
                    .as_ref()
                    .map(|m| m.value_usd.to_string())
                    .unwrap_or_default();
                provenance(
                    conn,
                    deal_id,
                    &[
                        ("crunchbase.funding_total_usd", funding),
                        ("crunchbase.headcount_band", c.headcount_band.clone()),
                        ("crunchbase.founded_on", c.founded_on.clone()),
                    ],
                    &source,
                    event_id,
                    fetched,
                )
                .await?;
            }
        }
        Payload::EnrichmentFailed(f) => {
            sqlx::query("UPDATE deals SET enrichment_error = $2 WHERE deal_id = $1")
                .bind(deal_id)
                .bind(format!("{}: {}", f.step, f.reason))
                .execute(&mut *conn)
                .await?;
        }
        Payload::DealScored(s) => {
            sqlx::query(
                "UPDATE deals SET score = $2, score_model_version = $3, score_detail = $4,
                     score_event_id = $5 WHERE deal_id = $1",
            )
            .bind(deal_id)
            .bind(s.score)
            .bind(&s.model_version)
            .bind(s.encode_to_vec())
            .bind(event_id)
            .execute(&mut *conn)
            .await?;
            provenance(
                conn,
                deal_id,
                &[("score", format!("{:.2}", s.score))],
                &format!("scoring/{}", s.model_version),
                event_id,
                at,
            )
            .await?;
        }
        Payload::StageChanged(s) => {
            sqlx::query("UPDATE deals SET stage = $2 WHERE deal_id = $1")
                .bind(deal_id)
                .bind(&s.to_stage)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO stage_history (event_id, deal_id, from_stage, to_stage, reason,
                     actor_id, actor_role, changed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(event_id)
            .bind(deal_id)
            .bind(&s.from_stage)
            .bind(&s.to_stage)
            .bind(&s.reason)
            .bind(&actor.id)
            .bind(actor.role)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Payload::OwnerAssigned(o) => {
            sqlx::query("UPDATE deals SET owner_id = $2 WHERE deal_id = $1")
                .bind(deal_id)
                .bind(&o.owner_id)
                .execute(&mut *conn)
                .await?;
        }
        Payload::NoteAdded(n) => {
            sqlx::query(
                "INSERT INTO notes (note_id, deal_id, body, author_id, author_role, event_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (note_id) DO NOTHING",
            )
            .bind(if n.note_id.is_empty() { event_id } else { &n.note_id })
            .bind(deal_id)
            .bind(&n.body)
            .bind(&actor.id)
            .bind(actor.role)
            .bind(event_id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Payload::DealShared(s) => {
            sqlx::query(
                "INSERT INTO deal_shares (deal_id, lp_id, event_id, shared_at)
                 SELECT $1, lp, $3, $4 FROM UNNEST($2::text[]) AS t(lp)
                 ON CONFLICT (deal_id, lp_id) DO NOTHING",
            )
            .bind(deal_id)
            .bind(&s.lp_ids)
            .bind(event_id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Payload::VoteOpened(v) => {
            let deadline = v
                .deadline
                .as_ref()
                .and_then(envelope::from_timestamp)
                .unwrap_or(DateTime::UNIX_EPOCH);
            sqlx::query(
                "INSERT INTO votes (vote_id, deal_id, question, deadline, eligible_lp_ids, rule,
                     quorum, status, opened_at, opened_event_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9)",
            )
            .bind(&v.vote_id)
            .bind(deal_id)
            .bind(&v.question)
            .bind(deadline)
            .bind(&v.eligible_lp_ids)
            .bind(v.rule)
            .bind(v.quorum as i32)
            .bind(at)
            .bind(event_id)
            .execute(&mut *conn)
            .await?;
        }
        Payload::VoteCast(c) => {
            sqlx::query(
                "INSERT INTO ballots (vote_id, lp_id, ballot, comment, event_id, cast_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (vote_id, lp_id) DO UPDATE SET ballot = excluded.ballot,
                     comment = excluded.comment, event_id = excluded.event_id,
                     cast_at = excluded.cast_at",
            )
            .bind(&c.vote_id)
            .bind(&c.lp_id)
            .bind(c.ballot)
            .bind(&c.comment)
            .bind(event_id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            let all_voted: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (
                     SELECT 1 FROM votes v, UNNEST(v.eligible_lp_ids) AS e(lp)
                     WHERE v.vote_id = $1
                       AND NOT EXISTS (SELECT 1 FROM ballots b WHERE b.vote_id = v.vote_id AND b.lp_id = e.lp))",
            )
            .bind(&c.vote_id)
            .fetch_one(&mut *conn)
            .await?;
            if all_voted {
                close_vote(conn, &c.vote_id, VoteCloseReason::AllVoted, at, None).await?;
            }
        }
        Payload::VoteClosed(c) => {
            let reason = match VoteCloseReason::try_from(c.reason) {
                Ok(VoteCloseReason::Unspecified) | Err(_) => VoteCloseReason::ClosedByPartner,
                Ok(reason) => reason,
            };
            close_vote(conn, &c.vote_id, reason, at, Some(event_id)).await?;
        }
        Payload::DealsMerged(m) => {
            sqlx::query(
                "UPDATE deals SET merged_into = $1 WHERE deal_id = ANY($2) AND deal_id <> $1",
            )
            .bind(deal_id)
            .bind(&m.merged_deal_ids)
            .execute(&mut *conn)
            .await?;
        }
        Payload::DealsUnmerged(u) => {
            sqlx::query(
                "UPDATE deals SET merged_into = NULL WHERE deal_id = ANY($2) AND merged_into = $1",
            )
            .bind(deal_id)
            .bind(&u.unmerged_deal_ids)
            .execute(&mut *conn)
            .await?;
        }
        Payload::DealArchived(a) => {
            sqlx::query(
                "UPDATE deals SET archived = true, archived_reason = $2 WHERE deal_id = $1",
            )
            .bind(deal_id)
            .bind(&a.reason)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

fn signal_origin(
    provenance: Option<&v1::Provenance>,
    default_source: &str,
    at: Option<DateTime<Utc>>,
) -> (String, Option<DateTime<Utc>>) {
    match provenance {
        Some(p) => (
            if p.source.is_empty() {
                default_source.to_owned()
            } else {
                p.source.clone()
            },
            p.fetched_at
                .as_ref()
                .and_then(envelope::from_timestamp)
                .or(at),
        ),
        None => (default_source.to_owned(), at),
    }
}

fn key_kind(kind: i32) -> &'static str {
    match v1::CompanyKeyKind::try_from(kind) {
        Ok(v1::CompanyKeyKind::Domain) => "domain",
        Ok(v1::CompanyKeyKind::GithubOwner) => "github",
        Ok(v1::CompanyKeyKind::Name) => "name",
        _ => "unknown",
    }
}

/// The tally of a vote's ballots.
pub async fn tally(conn: &mut PgConnection, vote_id: &str) -> Result<v1::VoteTally, sqlx::Error> {
    let (yes, no, abstain, eligible): (i64, i64, i64, i32) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE b.ballot = 1), count(*) FILTER (WHERE b.ballot = 2),
                count(*) FILTER (WHERE b.ballot = 3),
                (SELECT cardinality(eligible_lp_ids) FROM votes WHERE vote_id = $1)
         FROM ballots b WHERE b.vote_id = $1",
    )
    .bind(vote_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(v1::VoteTally {
        yes: yes as u32,
        no: no as u32,
        abstain: abstain as u32,
        eligible: eligible.max(0) as u32,
    })
}

/// The outcome of a vote under its rule.
pub fn result(rule: VoteRule, quorum: u32, tally: &v1::VoteTally) -> VoteResult {
    let cast = tally.yes + tally.no + tally.abstain;
    if rule == VoteRule::Quorum && cast < quorum {
        return VoteResult::NoQuorum;
    }
    if tally.yes > tally.no {
        VoteResult::Passed
    } else {
        VoteResult::Rejected
    }
}

async fn close_vote(
    conn: &mut PgConnection,
    vote_id: &str,
    reason: VoteCloseReason,
    at: Option<DateTime<Utc>>,
    close_event_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let Some(state) = vote(conn, vote_id).await? else {
        return Ok(());
    };
    let tally = tally(conn, vote_id).await?;
    let rule = VoteRule::try_from(state.rule).unwrap_or(VoteRule::SimpleMajority);
    let outcome = result(rule, state.quorum.max(0) as u32, &tally);
    sqlx::query(
        "UPDATE votes SET status = 'closed', closed_at = $2, yes = $3, no = $4, abstain = $5,
             result = $6, close_reason = $7, close_event_id = coalesce($8, close_event_id)
         WHERE vote_id = $1",
    )
    .bind(vote_id)
    .bind(at)
    .bind(tally.yes as i32)
    .bind(tally.no as i32)
    .bind(tally.abstain as i32)
    .bind(outcome as i32)
    .bind(reason as i32)
    .bind(close_event_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(yes: u32, no: u32, abstain: u32) -> v1::VoteTally {
        v1::VoteTally {
            yes,
            no,
            abstain,
            eligible: 5,
        }
    }

    #[test]
    fn majority_of_ballots_cast_decides() {
        assert_eq!(
            result(VoteRule::SimpleMajority, 0, &t(2, 1, 2)),
            VoteResult::Passed
        );
        assert_eq!(
            result(VoteRule::SimpleMajority, 0, &t(1, 1, 0)),
            VoteResult::Rejected
        );
        assert_eq!(
            result(VoteRule::SimpleMajority, 0, &t(0, 0, 0)),
            VoteResult::Rejected
        );
    }

    #[test]
    fn quorum_counts_abstentions_as_present() {
        assert_eq!(
            result(VoteRule::Quorum, 3, &t(2, 0, 0)),
            VoteResult::NoQuorum
        );
        assert_eq!(result(VoteRule::Quorum, 3, &t(2, 0, 1)), VoteResult::Passed);
        assert_eq!(
            result(VoteRule::Quorum, 3, &t(1, 2, 0)),
            VoteResult::Rejected
        );
    }
}
