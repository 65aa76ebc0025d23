//! A plausible deal log with known times, for the replay tests, and an
//! oracle that folds the same events in memory, independently of the
//! projection, into the rows the read model should hold.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use dealmesh_eventlog::envelope;
use dealmesh_proto::v1::*;
use dealmesh_proto::{DealEvent, Payload};

pub const INITIAL_STAGE: &str = "sourced";

pub fn deal_id(n: usize) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("deal-{n}").as_bytes()).to_string()
}

fn event(
    deal: usize,
    seq: usize,
    at: DateTime<Utc>,
    expected_version: Option<u64>,
    payload: Payload,
) -> DealEvent {
    let user = matches!(
        payload,
        Payload::OwnerAssigned(_)
            | Payload::StageChanged(_)
            | Payload::NoteAdded(_)
            | Payload::DealShared(_)
            | Payload::VoteOpened(_)
            | Payload::DealsMerged(_)
            | Payload::DealArchived(_)
    );
    let actor = if user {
        Actor {
            kind: ActorKind::User as i32,
            id: "auth0|alice".into(),
            role: Role::Partner as i32,
            display_name: "Alice".into(),
        }
    } else if let Payload::VoteCast(c) = &payload {
        Actor {
            kind: ActorKind::User as i32,
            id: c.lp_id.clone(),
            role: Role::Lp as i32,
            display_name: c.lp_id.clone(),
        }
    } else {
        envelope::service_actor("ingest")
    };
    DealEvent {
        event_id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("deal-{deal}-event-{seq}").as_bytes(),
        )
        .to_string(),
        deal_id: deal_id(deal),
        occurred_at: Some(envelope::timestamp(at)),
        actor: Some(actor),
        correlation_id: format!("corr-{deal}"),
        causation_id: format!("cause-{deal}-{seq}"),
        expected_version,
        idempotency_key: if expected_version.is_some() {
            format!("key-{deal}-{seq}")
        } else {
            String::new()
        },
        payload: Some(payload),
    }
}

/// The events of `deals` deals, each event at `start` + deal minutes +
/// step hours, returned in the order they are published (by time, so
/// deals interleave). Covers commands that win and lose (a stale
/// version), a stage move from the wrong stage, votes closed by the last
/// ballot, merges across deals (and an unmerge), archiving.
pub fn log(deals: usize, start: DateTime<Utc>) -> Vec<DealEvent> {
    let mut all = Vec::new();
    for d in 0..deals {
        let at = |h: i64| start + TimeDelta::minutes(d as i64) + TimeDelta::hours(h);
        let vote_id = format!("vote-{d}");
        let mut seq = 0;
        let mut push = |h: i64, expected: Option<u64>, payload: Payload| {
            seq += 1;
            all.push(event(d, seq, at(h), expected, payload));
        };
        push(
            0,
            None,
            Payload::DealSourced(DealSourced {
                source: "github".into(),
                channel: Channel::Poller as i32,
                external_id: format!("gh-{d}"),
                name: format!("Company {d}"),
                website: format!("https://company-{d}.example"),
                github_owner: format!("company{d}"),
                description: format!("Company {d} builds things"),
                company_key: Some(CompanyKey {
                    kind: CompanyKeyKind::Domain as i32,
                    value: format!("company-{d}.example"),
                }),
                ..Default::default()
            }),
        );
        push(
            1,
            None,
            Payload::DealEnriched(DealEnriched {
                analysis: Some(Analysis {
                    sector: ["fintech", "devtools", "climate"][d % 3].into(),
                    summary: format!("summary of company {d}"),
                    business_model: "saas".into(),
                    risks: vec!["competition".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        push(
            2,
            None,
            Payload::DealScored(DealScored {
                score: (d % 10) as f64 / 10.0 + 0.05,
                model_version: "thesis-v1".into(),
                ..Default::default()
            }),
        );
        push(
            3,
            Some(3),
            Payload::OwnerAssigned(OwnerAssigned {
                owner_id: format!("partner-{}", d % 3),
                previous_owner_id: String::new(),
            }),
        );
        push(
            4,
            Some(4),
            Payload::StageChanged(StageChanged {
                from_stage: "sourced".into(),
                to_stage: "screening".into(),
                reason: "looks good".into(),
            }),
        );
        push(
            5,
            None,
            Payload::NoteAdded(NoteAdded {
                note_id: format!("note-{d}"),
                body: format!("first call with company {d}"),
            }),
        );
        // Stale: the deal is at version 6 by now.
        push(
            6,
            Some(4),
            Payload::StageChanged(StageChanged {
                from_stage: "screening".into(),
                to_stage: "diligence".into(),
                reason: "stale command".into(),
            }),
        );
        // Not a command, from the wrong stage: ignored.
        push(
            7,
            None,
            Payload::StageChanged(StageChanged {
                from_stage: "ic".into(),
                to_stage: "term_sheet".into(),
                reason: "wrong stage".into(),
            }),
        );
        push(
            8,
            None,
            Payload::DealShared(DealShared {
                lp_ids: vec!["lp-1".into(), "lp-2".into()],
                message: String::new(),
            }),
        );
        push(
            9,
            None,
            Payload::VoteOpened(VoteOpened {
                vote_id: vote_id.clone(),
                question: "invest?".into(),
                deadline: Some(envelope::timestamp(at(100))),
                eligible_lp_ids: vec!["lp-1".into(), "lp-2".into()],
                rule: VoteRule::SimpleMajority as i32,
                quorum: 0,
            }),
        );
        push(
            10,
            None,
            Payload::VoteCast(VoteCast {
                vote_id: vote_id.clone(),
                lp_id: "lp-1".into(),
                ballot: Ballot::Yes as i32,
                comment: String::new(),
            }),
        );
        if d % 2 == 0 {
            push(
                11,
                None,
                Payload::VoteCast(VoteCast {
                    vote_id: vote_id.clone(),
                    lp_id: "lp-2".into(),
                    ballot: if d % 4 == 0 { Ballot::No } else { Ballot::Yes } as i32,
                    comment: "ok".into(),
                }),
            );
        }
        if d % 3 == 0 && d + 1 < deals {
            push(
                12,
                None,
                Payload::DealsMerged(DealsMerged {
                    merged_deal_ids: vec![deal_id(d + 1)],
                    reason: "same company".into(),
                }),
            );
        }
        if d % 6 == 0 && d + 1 < deals {
            push(
                13,
                None,
                Payload::DealsUnmerged(DealsUnmerged {
                    unmerged_deal_ids: vec![deal_id(d + 1)],
                    merge_event_id: String::new(),
                    reason: "not the same".into(),
                }),
            );
        }
        if d % 5 == 4 {
            push(
                14,
                None,
                Payload::DealArchived(DealArchived {
                    reason: "passed".into(),
                }),
            );
        }
    }
    all.sort_by_key(|e| {
        e.occurred_at
            .as_ref()
            .and_then(envelope::from_timestamp)
            .unwrap_or(DateTime::UNIX_EPOCH)
    });
    all
}

/// A deal as the oracle folds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deal {
    pub version: i64,
    pub stage: String,
    pub owner_id: String,
    pub name: String,
    pub sector: String,
    pub score: Option<f64>,
    pub archived: bool,
    pub merged_into: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    pub deal_id: String,
    pub status: String,
    pub eligible: Vec<String>,
    pub yes: i32,
    pub no: i32,
}

/// The read model as the oracle expects it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    pub deals: BTreeMap<String, Deal>,
    /// event id → status
    pub events: BTreeMap<String, String>,
    /// note id → (deal, body)
    pub notes: BTreeMap<String, (String, String)>,
    pub shares: BTreeSet<(String, String)>,
    pub votes: BTreeMap<String, Vote>,
    /// (vote, lp) → ballot
    pub ballots: BTreeMap<(String, String), i32>,
    pub stage_history: BTreeSet<(String, String, String)>,
}

/// Folds `events` (in log order) that occurred at or before `as_of`.
pub fn fold(events: &[DealEvent], as_of: Option<DateTime<Utc>>) -> Expected {
    let mut x = Expected::default();
    let mut merges: Vec<(DateTime<Utc>, String, Vec<String>, bool)> = Vec::new();
    for e in events {
        let at = e
            .occurred_at
            .as_ref()
            .and_then(envelope::from_timestamp)
            .expect("story events have times");
        if as_of.is_some_and(|t| at > t) {
            continue;
        }
        let payload = e.payload.as_ref().expect("payload");
        let existing = x.deals.get(&e.deal_id).cloned();
        if let Some(expected) = e.expected_version
            && existing
                .as_ref()
                .is_none_or(|d| d.version as u64 != expected)
        {
            x.events.insert(e.event_id.clone(), "rejected".into());
            continue;
        }
        // What the deal's state forbids.
        let refused = match payload {
            Payload::StageChanged(s) => existing.as_ref().is_some_and(|d| d.stage != s.from_stage),
            Payload::VoteCast(c) => match x.votes.get(&c.vote_id) {
                Some(v) => {
                    v.deal_id != e.deal_id || v.status != "open" || !v.eligible.contains(&c.lp_id)
                }
                None => true,
            },
            Payload::VoteOpened(v) => x.votes.contains_key(&v.vote_id),
            _ => false,
        };
        if refused {
            let status = if e.expected_version.is_some() {
                "rejected"
            } else {
                "ignored"
            };
            x.events.insert(e.event_id.clone(), status.into());
            continue;
        }
        let deal = x.deals.entry(e.deal_id.clone()).or_insert_with(|| Deal {
            version: 0,
            stage: INITIAL_STAGE.into(),
            owner_id: String::new(),
            name: String::new(),
            sector: String::new(),
            score: None,
            archived: false,
            merged_into: None,
            updated_at: at,
        });
        deal.version += 1;
        deal.updated_at = at;
        x.events.insert(e.event_id.clone(), "applied".into());
        match payload {
            Payload::DealSourced(s) => deal.name = s.name.clone(),
            Payload::DealEnriched(en) => {
                if let Some(a) = &en.analysis {
                    deal.sector = a.sector.clone();
                }
            }
            Payload::DealScored(s) => deal.score = Some(s.score),
            Payload::OwnerAssigned(o) => deal.owner_id = o.owner_id.clone(),
            Payload::StageChanged(s) => {
                deal.stage = s.to_stage.clone();
                x.stage_history.insert((
                    e.deal_id.clone(),
                    s.from_stage.clone(),
                    s.to_stage.clone(),
                ));
            }
            Payload::NoteAdded(n) => {
                x.notes
                    .insert(n.note_id.clone(), (e.deal_id.clone(), n.body.clone()));
            }
            Payload::DealShared(s) => {
                for lp in &s.lp_ids {
                    x.shares.insert((e.deal_id.clone(), lp.clone()));
                }
            }
            Payload::VoteOpened(v) => {
                x.votes.insert(
                    v.vote_id.clone(),
                    Vote {
                        deal_id: e.deal_id.clone(),
                        status: "open".into(),
                        eligible: v.eligible_lp_ids.clone(),
                        yes: 0,
                        no: 0,
                    },
                );
            }
            Payload::VoteCast(c) => {
                x.ballots
                    .insert((c.vote_id.clone(), c.lp_id.clone()), c.ballot);
                let cast: BTreeSet<&String> = x
                    .ballots
                    .keys()
                    .filter(|(v, _)| *v == c.vote_id)
                    .map(|(_, lp)| lp)
                    .collect();
                let vote = x.votes.get_mut(&c.vote_id).expect("checked above");
                if vote.eligible.iter().all(|lp| cast.contains(lp)) {
                    vote.status = "closed".into();
                    let ballots: Vec<i32> = x
                        .ballots
                        .iter()
                        .filter(|((v, _), _)| *v == c.vote_id)
                        .map(|(_, b)| *b)
                        .collect();
                    vote.yes = ballots.iter().filter(|b| **b == Ballot::Yes as i32).count() as i32;
                    vote.no = ballots.iter().filter(|b| **b == Ballot::No as i32).count() as i32;
                }
            }
            Payload::DealsMerged(m) => {
                merges.push((at, e.deal_id.clone(), m.merged_deal_ids.clone(), true));
            }
            Payload::DealsUnmerged(u) => {
                merges.push((at, e.deal_id.clone(), u.unmerged_deal_ids.clone(), false));
            }
            Payload::DealArchived(_) => deal.archived = true,
            _ => {}
        }
    }
    // Merges mark other deals: in time order, over every deal there is.
    merges.sort_by_key(|m| m.0);
    for (_, target, others, merge) in merges {
        for other in others {
            if let Some(deal) = x.deals.get_mut(&other)
                && other != target
            {
                if merge {
                    deal.merged_into = Some(target.clone());
                } else if deal.merged_into.as_deref() == Some(target.as_str()) {
                    deal.merged_into = None;
                }
            }
        }
    }
    x
}

/// The same rows, read from a schema of the read model.
#[allow(clippy::type_complexity)]
pub async fn read(pool: &sqlx::PgPool, schema: &str) -> Expected {
    let q = |sql: &str| sqlx::AssertSqlSafe(sql.replace("{s}", schema));
    let mut x = Expected::default();
    let deals: Vec<(
        String,
        i64,
        String,
        String,
        String,
        String,
        Option<f64>,
        bool,
        Option<String>,
        DateTime<Utc>,
    )> = sqlx::query_as(q(
        "SELECT deal_id, version, stage, owner_id, name, sector, score, archived, merged_into,
                updated_at FROM {s}.deals",
    ))
    .fetch_all(pool)
    .await
    .expect("deals");
    for (id, version, stage, owner_id, name, sector, score, archived, merged_into, updated_at) in
        deals
    {
        x.deals.insert(
            id,
            Deal {
                version,
                stage,
                owner_id,
                name,
                sector,
                score,
                archived,
                merged_into,
                updated_at,
            },
        );
    }
    x.events = sqlx::query_as(q("SELECT event_id, status FROM {s}.events"))
        .fetch_all(pool)
        .await
        .expect("events")
        .into_iter()
        .collect();
    x.notes = sqlx::query_as::<_, (String, String, String)>(q(
        "SELECT note_id, deal_id, body FROM {s}.notes",
    ))
    .fetch_all(pool)
    .await
    .expect("notes")
    .into_iter()
    .map(|(n, d, b)| (n, (d, b)))
    .collect();
    x.shares = sqlx::query_as(q("SELECT deal_id, lp_id FROM {s}.deal_shares"))
        .fetch_all(pool)
        .await
        .expect("shares")
        .into_iter()
        .collect();
    let votes: Vec<(String, String, String, Vec<String>, i32, i32)> = sqlx::query_as(q(
        "SELECT vote_id, deal_id, status, eligible_lp_ids, yes, no FROM {s}.votes",
    ))
    .fetch_all(pool)
    .await
    .expect("votes");
    for (vote_id, deal_id, status, eligible, yes, no) in votes {
        x.votes.insert(
            vote_id,
            Vote {
                deal_id,
                status,
                eligible,
                yes,
                no,
            },
        );
    }
    x.ballots = sqlx::query_as::<_, (String, String, i32)>(q(
        "SELECT vote_id, lp_id, ballot FROM {s}.ballots",
    ))
    .fetch_all(pool)
    .await
    .expect("ballots")
    .into_iter()
    .map(|(v, l, b)| ((v, l), b))
    .collect();
    x.stage_history = sqlx::query_as(q(
        "SELECT deal_id, from_stage, to_stage FROM {s}.stage_history",
    ))
    .fetch_all(pool)
    .await
    .expect("stage history")
    .into_iter()
    .collect();
    x
}
