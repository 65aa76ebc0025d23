//! Realistic sample events: one deal's story through every event type of
//! the contract, deterministic (same input, same bytes). They are the source
//! of the encoded fixtures under `proto/released/events/` and of the audit
//! tests, and serve any test that needs a plausible log.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use dealmesh_eventlog::envelope::{service_actor, timestamp};
use dealmesh_eventlog::ids::{caused_event_id, derived_event_id};
use dealmesh_proto::v1::{
    Actor, ActorKind, Analysis, AnalyzerKind, Ballot, Channel, CompanyKey, CompanyKeyKind,
    CrunchbaseSignals, DealArchived, DealEnriched, DealScored, DealShared, DealSourced,
    DealsMerged, DealsUnmerged, EnrichmentFailed, FeatureContribution, FundingRound, GithubSignals,
    Location, Money, NoteAdded, OwnerAssigned, Provenance, Role, SignalGap, StageChanged, VoteCast,
    VoteCloseReason, VoteClosed, VoteOpened, VoteResult, VoteRule, VoteTally,
};
use dealmesh_proto::{DealEvent, Payload};

/// A company to tell a story about.
#[derive(Debug, Clone)]
pub struct SampleCompany {
    pub deal_id: String,
    pub name: String,
    /// Registrable domain, e.g. `tessellate.dev`.
    pub domain: String,
    pub github_owner: String,
    pub github_repo: String,
    pub sector: String,
}

impl SampleCompany {
    /// Tessellate, a developer-tools company, deal
    /// `6f1c2a3e-5b7d-5c1e-9a4f-2d8e7b6c5a41`.
    pub fn tessellate() -> Self {
        Self {
            deal_id: "6f1c2a3e-5b7d-5c1e-9a4f-2d8e7b6c5a41".into(),
            name: "Tessellate Labs".into(),
            domain: "tessellate.dev".into(),
            github_owner: "tessellate-labs".into(),
            github_repo: "tessellate".into(),
            sector: "developer tools".into(),
        }
    }

    /// Northwind Grid, a climate-software company.
    pub fn northwind() -> Self {
        Self {
            deal_id: "0b9e4d21-7c3a-5f68-8e12-4a6b9c0d3e57".into(),
            name: "Northwind Grid".into(),
            domain: "northwindgrid.com".into(),
            github_owner: "northwind-grid".into(),
            github_repo: "gridsim".into(),
            sector: "climate software".into(),
        }
    }

    /// Quillstack, a fintech company.
    pub fn quillstack() -> Self {
        Self {
            deal_id: "d3a7f5c9-2e14-5b80-a6c3-91f0e8d7b246".into(),
            name: "Quillstack".into(),
            domain: "quillstack.io".into(),
            github_owner: "quillstack".into(),
            github_repo: "ledger".into(),
            sector: "fintech".into(),
        }
    }
}

fn user(id: &str, name: &str, role: Role) -> Actor {
    Actor {
        kind: ActorKind::User as i32,
        id: id.into(),
        role: role as i32,
        display_name: name.into(),
    }
}

fn provenance(source: &str, at: DateTime<Utc>, url: String) -> Option<Provenance> {
    Some(Provenance {
        source: source.into(),
        fetched_at: Some(timestamp(at)),
        url,
    })
}

/// The company's story from `start` on, one event of every type, an hour
/// apart, in this order: DealSourced, DealEnriched, DealScored,
/// OwnerAssigned, StageChanged, NoteAdded, DealShared, VoteOpened, VoteCast,
/// VoteClosed, DealsMerged, DealsUnmerged, EnrichmentFailed, DealArchived.
/// Each event names its cause and carries the ids a real producer sets.
pub fn story(company: &SampleCompany, start: DateTime<Utc>) -> Vec<DealEvent> {
    let c = company;
    let at = |hours: i64| start + TimeDelta::hours(hours);
    let alice = || user("auth0|alice", "Alice Chen", Role::Partner);
    let bob = || user("auth0|bob", "Bob Okafor", Role::Analyst);
    let lp = || user("lp-harbor", "Harbor Pension Fund", Role::Lp);
    let vote_id = format!("vote-{}", &c.deal_id[..8]);
    let other_deal = derived_event_id(start, &[c.deal_id.as_bytes(), b"duplicate"]).to_string();

    let mut events: Vec<DealEvent> = Vec::new();
    let push = |hours: i64,
                actor: Actor,
                cause: Option<usize>,
                command: Option<(u64, &str)>,
                payload: Payload,
                events: &mut Vec<DealEvent>| {
        let occurred_at = at(hours);
        let type_name = payload.type_name();
        let (event_id, causation_id, correlation_id) = match cause {
            Some(i) => {
                let cause: &DealEvent = &events[i];
                let cause_at = cause
                    .occurred_at
                    .as_ref()
                    .and_then(dealmesh_eventlog::envelope::from_timestamp)
                    .unwrap_or(start);
                (
                    caused_event_id(cause_at, &cause.event_id, type_name).to_string(),
                    cause.event_id.clone(),
                    cause.correlation_id.clone(),
                )
            }
            None => {
                let id =
                    derived_event_id(occurred_at, &[c.deal_id.as_bytes(), type_name.as_bytes()])
                        .to_string();
                let request = format!("req-{}", &id[24..]);
                (id, request.clone(), request)
            }
        };
        events.push(DealEvent {
            event_id,
            deal_id: c.deal_id.clone(),
            occurred_at: Some(timestamp(occurred_at)),
            actor: Some(actor),
            correlation_id,
            causation_id,
            expected_version: command.map(|(v, _)| v),
            idempotency_key: command.map(|(_, k)| k.to_owned()).unwrap_or_default(),
            payload: Some(payload),
        });
    };

    push(
        0,
        service_actor("ingest"),
        None,
        None,
        Payload::DealSourced(DealSourced {
            source: "github".into(),
            channel: Channel::Poller as i32,
            external_id: format!("{}/{}", c.github_owner, c.github_repo),
            name: c.name.clone(),
            website: format!("https://{}", c.domain),
            github_owner: c.github_owner.clone(),
            github_repo: c.github_repo.clone(),
            description: format!("{}: open-source {}", c.name, c.sector),
            attributes: BTreeMap::from([
                ("language".to_owned(), "Rust".to_owned()),
                ("trending_rank".to_owned(), "7".to_owned()),
            ]),
            company_key: Some(CompanyKey {
                kind: CompanyKeyKind::Domain as i32,
                value: c.domain.clone(),
            }),
            source_url: format!("https://github.com/{}/{}", c.github_owner, c.github_repo),
            seen_at: Some(timestamp(at(0) - TimeDelta::minutes(3))),
        }),
        &mut events,
    );
    push(
        1,
        service_actor("enrich"),
        Some(0),
        None,
        Payload::DealEnriched(DealEnriched {
            github: Some(GithubSignals {
                provenance: provenance(
                    "github",
                    at(1),
                    format!(
                        "https://api.github.com/repos/{}/{}",
                        c.github_owner, c.github_repo
                    ),
                ),
                owner: c.github_owner.clone(),
                repo: c.github_repo.clone(),
                stars: 4812,
                forks: 231,
                contributors: 64,
                open_issues: 87,
                weekly_commits: vec![12, 18, 9, 22, 31, 27, 19, 25],
                star_velocity_30d: 38.5,
                primary_language: "Rust".into(),
                topics: vec!["developer-tools".into(), "wasm".into()],
                license: "Apache-2.0".into(),
                created_at: Some(timestamp(start - TimeDelta::days(700))),
                pushed_at: Some(timestamp(at(0) - TimeDelta::hours(5))),
                description: format!("{} core", c.name),
            }),
            crunchbase: Some(CrunchbaseSignals {
                provenance: provenance(
                    "crunchbase",
                    at(1),
                    format!("https://www.crunchbase.com/organization/{}", c.github_owner),
                ),
                permalink: c.github_owner.clone(),
                funding_total: Some(Money {
                    value: 4_500_000,
                    currency: "USD".into(),
                    value_usd: 4_500_000,
                }),
                last_round: Some(FundingRound {
                    investment_type: "seed".into(),
                    announced_on: "2026-03-14".into(),
                    money_raised: Some(Money {
                        value: 3_000_000,
                        currency: "USD".into(),
                        value_usd: 3_000_000,
                    }),
                }),
                headcount_band: "c_00011_00050".into(),
                founded_on: "2024-09-01".into(),
                categories: vec!["Developer Tools".into(), "Open Source".into()],
                location: Some(Location {
                    city: "Berlin".into(),
                    region: "Berlin".into(),
                    country_code: "DEU".into(),
                    country: "Germany".into(),
                }),
                short_description: format!("{} builds {}", c.name, c.sector),
                operating_status: "active".into(),
                num_funding_rounds: 2,
            }),
            analysis: Some(Analysis {
                provenance: provenance("llm", at(1), String::new()),
                analyzer: AnalyzerKind::Llm as i32,
                model: "gpt-4o-mini".into(),
                summary: format!("{} sells {} to platform teams.", c.name, c.sector),
                sector: c.sector.clone(),
                business_model: "open core".into(),
                risks: vec!["crowded market".into(), "single maintainer risk".into()],
                prompt_version: "analysis-v3".into(),
            }),
            source_event_id: events[0].event_id.clone(),
            gaps: vec![SignalGap {
                source: "linkedin".into(),
                reason: "not configured".into(),
            }],
        }),
        &mut events,
    );
    push(
        2,
        service_actor("scoring"),
        Some(1),
        None,
        Payload::DealScored(DealScored {
            score: 78.4,
            model_version: "thesis-2026.11".into(),
            contributions: vec![
                FeatureContribution {
                    feature: "star_velocity_30d".into(),
                    value: 0.77,
                    weight: 30.0,
                    contribution: 23.1,
                    explanation: "38.5 stars a day over 30 days".into(),
                },
                FeatureContribution {
                    feature: "funding_stage".into(),
                    value: 1.0,
                    weight: 20.0,
                    contribution: 20.0,
                    explanation: "seed, within thesis".into(),
                },
            ],
            failed_filters: vec![],
            source_event_id: events[1].event_id.clone(),
        }),
        &mut events,
    );
    push(
        3,
        alice(),
        None,
        Some((3, "assign-7d2f")),
        Payload::OwnerAssigned(OwnerAssigned {
            owner_id: "auth0|bob".into(),
            previous_owner_id: String::new(),
        }),
        &mut events,
    );
    push(
        4,
        alice(),
        None,
        Some((4, "stage-19ab")),
        Payload::StageChanged(StageChanged {
            from_stage: "screening".into(),
            to_stage: "diligence".into(),
            reason: "strong developer pull, seed round within thesis".into(),
        }),
        &mut events,
    );
    push(
        5,
        bob(),
        None,
        Some((5, "note-5c01")),
        Payload::NoteAdded(NoteAdded {
            note_id: "note-5c01".into(),
            body: "Call with the founders: 40 paying teams, 120% net revenue retention, \
                   hiring a first sales lead in Q1."
                .into(),
        }),
        &mut events,
    );
    push(
        6,
        alice(),
        None,
        Some((6, "share-88e0")),
        Payload::DealShared(DealShared {
            lp_ids: vec!["lp-harbor".into(), "lp-meridian".into()],
            message: "Co-investment opportunity, memo attached.".into(),
        }),
        &mut events,
    );
    push(
        7,
        alice(),
        None,
        Some((7, "vote-open-31c4")),
        Payload::VoteOpened(VoteOpened {
            vote_id: vote_id.clone(),
            question: format!("Co-invest in the {} seed extension?", c.name),
            deadline: Some(timestamp(at(7) + TimeDelta::days(7))),
            eligible_lp_ids: vec!["lp-harbor".into(), "lp-meridian".into()],
            rule: VoteRule::Quorum as i32,
            quorum: 1,
        }),
        &mut events,
    );
    push(
        8,
        lp(),
        None,
        Some((8, "ballot-a4f2")),
        Payload::VoteCast(VoteCast {
            vote_id: vote_id.clone(),
            lp_id: "lp-harbor".into(),
            ballot: Ballot::Yes as i32,
            comment: "Happy to follow at pro rata.".into(),
        }),
        &mut events,
    );
    push(
        9,
        service_actor("crm"),
        Some(7),
        None,
        Payload::VoteClosed(VoteClosed {
            vote_id,
            tally: Some(VoteTally {
                yes: 1,
                no: 0,
                abstain: 0,
                eligible: 2,
            }),
            result: VoteResult::Passed as i32,
            reason: VoteCloseReason::ClosedByPartner as i32,
        }),
        &mut events,
    );
    push(
        10,
        alice(),
        None,
        Some((10, "merge-0e9d")),
        Payload::DealsMerged(DealsMerged {
            merged_deal_ids: vec![other_deal.clone()],
            reason: format!("same company sourced by name \"{}\"", c.name),
        }),
        &mut events,
    );
    push(
        11,
        alice(),
        Some(10),
        Some((11, "unmerge-6b11")),
        Payload::DealsUnmerged(DealsUnmerged {
            unmerged_deal_ids: vec![other_deal],
            merge_event_id: events[10].event_id.clone(),
            reason: "different company with a similar name".into(),
        }),
        &mut events,
    );
    push(
        12,
        service_actor("enrich"),
        Some(0),
        None,
        Payload::EnrichmentFailed(EnrichmentFailed {
            source_event_id: events[0].event_id.clone(),
            step: "crunchbase".into(),
            reason: "HTTP 429 Too Many Requests".into(),
            attempts: 5,
            retryable: true,
        }),
        &mut events,
    );
    push(
        13,
        alice(),
        None,
        Some((12, "archive-f310")),
        Payload::DealArchived(DealArchived {
            reason: "passed: valuation above our seed range".into(),
        }),
        &mut events,
    );
    events
}
