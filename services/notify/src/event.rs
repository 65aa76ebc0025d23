//! What an event on the deal log means to people: its trigger, a one-line
//! summary, and the JSON shape of its notification.

use chrono::{DateTime, Utc};
use dealmesh_proto::v1::NotificationTrigger;
use dealmesh_proto::{DealEvent, Payload};
use serde_json::{Value, json};

/// Triggers an LP may hear about (on deals shared with them): the rest is
/// the fund's internal business.
pub const LP_TRIGGERS: [NotificationTrigger; 3] = [
    NotificationTrigger::DealShared,
    NotificationTrigger::VoteOpened,
    NotificationTrigger::VoteClosed,
];

pub fn trigger(payload: &Payload) -> NotificationTrigger {
    use NotificationTrigger as T;
    match payload {
        Payload::DealSourced(_) => T::DealSourced,
        Payload::DealEnriched(_) => T::DealEnriched,
        Payload::EnrichmentFailed(_) => T::EnrichmentFailed,
        Payload::DealScored(_) => T::DealScored,
        Payload::StageChanged(_) => T::StageChanged,
        Payload::OwnerAssigned(_) => T::OwnerAssigned,
        Payload::NoteAdded(_) => T::NoteAdded,
        Payload::DealShared(_) => T::DealShared,
        Payload::VoteOpened(_) => T::VoteOpened,
        Payload::VoteCast(_) => T::VoteCast,
        Payload::VoteClosed(_) => T::VoteClosed,
        Payload::DealsMerged(_) => T::DealsMerged,
        Payload::DealsUnmerged(_) => T::DealsUnmerged,
        Payload::DealArchived(_) => T::DealArchived,
    }
}

/// The trigger's name without the enum prefix, lower-case: `deal_scored`.
pub fn trigger_name(trigger: NotificationTrigger) -> String {
    trigger
        .as_str_name()
        .trim_start_matches("NOTIFICATION_TRIGGER_")
        .to_ascii_lowercase()
}

/// Parses `deal_scored` (or `DEAL_SCORED`, or the full enum name).
pub fn parse_trigger(name: &str) -> Option<NotificationTrigger> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("NOTIFICATION_TRIGGER_") {
        upper
    } else {
        format!("NOTIFICATION_TRIGGER_{upper}")
    };
    NotificationTrigger::from_str_name(&full).filter(|t| *t != NotificationTrigger::Unspecified)
}

pub fn occurred_at(event: &DealEvent) -> DateTime<Utc> {
    event
        .occurred_at
        .as_ref()
        .and_then(dealmesh_eventlog::envelope::from_timestamp)
        .unwrap_or(DateTime::UNIX_EPOCH)
}

/// One line for people. `deal_name` may be empty when the deal was never
/// sourced under a name notify has seen.
pub fn summary(event: &DealEvent, deal_name: &str) -> String {
    let deal = if deal_name.is_empty() {
        format!("deal {}", event.deal_id)
    } else {
        deal_name.to_owned()
    };
    let Some(payload) = &event.payload else {
        return format!("{deal}: something happened");
    };
    match payload {
        Payload::DealSourced(p) => format!("{deal} was sourced from {}", p.source),
        Payload::DealEnriched(p) => match p.analysis.as_ref().filter(|a| !a.sector.is_empty()) {
            Some(a) => format!("{deal} was enriched (sector: {})", a.sector),
            None => format!("{deal} was enriched"),
        },
        Payload::EnrichmentFailed(p) => {
            format!("{deal}: enrichment failed at {}: {}", p.step, p.reason)
        }
        Payload::DealScored(p) => format!("{deal} scored {:.1}", p.score),
        Payload::StageChanged(p) => format!(
            "{deal} moved from {} to {}",
            or_none(&p.from_stage),
            p.to_stage
        ),
        Payload::OwnerAssigned(p) => format!("{deal} is now owned by {}", p.owner_id),
        Payload::NoteAdded(p) => format!("{deal}: new note: {}", first_line(&p.body, 120)),
        Payload::DealShared(p) => format!("{deal} was shared with {} LP(s)", p.lp_ids.len()),
        Payload::VoteOpened(p) => format!("{deal}: vote opened: {}", p.question),
        Payload::VoteCast(_) => format!("{deal}: a vote was cast"),
        Payload::VoteClosed(p) => {
            let result = dealmesh_proto::v1::VoteResult::try_from(p.result)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("VOTE_RESULT_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| "unknown".into());
            format!("{deal}: vote closed: {result}")
        }
        Payload::DealsMerged(p) => {
            format!("{deal}: {} deal(s) merged into it", p.merged_deal_ids.len())
        }
        Payload::DealsUnmerged(p) => {
            format!("{deal}: {} deal(s) unmerged", p.unmerged_deal_ids.len())
        }
        Payload::DealArchived(p) => format!("{deal} was archived: {}", p.reason),
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

fn first_line(text: &str, max_chars: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max_chars {
        let cut: String = line.chars().take(max_chars).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

/// The event's facts as JSON, for webhook bodies.
pub fn data(event: &DealEvent) -> Value {
    let Some(payload) = &event.payload else {
        return Value::Null;
    };
    match payload {
        Payload::DealSourced(p) => json!({
            "source": p.source, "name": p.name, "website": p.website,
            "github_owner": p.github_owner, "description": p.description,
        }),
        Payload::DealEnriched(p) => {
            let a = p.analysis.clone().unwrap_or_default();
            json!({"summary": a.summary, "sector": a.sector, "business_model": a.business_model, "risks": a.risks})
        }
        Payload::EnrichmentFailed(p) => {
            json!({"step": p.step, "reason": p.reason, "attempts": p.attempts})
        }
        Payload::DealScored(p) => json!({
            "score": p.score, "model_version": p.model_version, "failed_filters": p.failed_filters,
        }),
        Payload::StageChanged(p) => {
            json!({"from_stage": p.from_stage, "to_stage": p.to_stage, "reason": p.reason})
        }
        Payload::OwnerAssigned(p) => {
            json!({"owner_id": p.owner_id, "previous_owner_id": p.previous_owner_id})
        }
        Payload::NoteAdded(p) => json!({"note_id": p.note_id, "body": p.body}),
        Payload::DealShared(p) => json!({"lp_ids": p.lp_ids, "message": p.message}),
        Payload::VoteOpened(p) => json!({
            "vote_id": p.vote_id, "question": p.question,
            "deadline": p.deadline.as_ref().and_then(dealmesh_eventlog::envelope::from_timestamp),
        }),
        Payload::VoteCast(p) => json!({"vote_id": p.vote_id}),
        Payload::VoteClosed(p) => {
            let t = p.tally.unwrap_or_default();
            json!({
                "vote_id": p.vote_id,
                "result": dealmesh_proto::v1::VoteResult::try_from(p.result).map(|r| r.as_str_name()).unwrap_or("VOTE_RESULT_UNSPECIFIED"),
                "tally": {"yes": t.yes, "no": t.no, "abstain": t.abstain, "eligible": t.eligible},
            })
        }
        Payload::DealsMerged(p) => {
            json!({"merged_deal_ids": p.merged_deal_ids, "reason": p.reason})
        }
        Payload::DealsUnmerged(p) => {
            json!({"unmerged_deal_ids": p.unmerged_deal_ids, "reason": p.reason})
        }
        Payload::DealArchived(p) => json!({"reason": p.reason}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_round_trip() {
        for value in 1..=14 {
            let trigger = NotificationTrigger::try_from(value).unwrap();
            assert_eq!(parse_trigger(&trigger_name(trigger)), Some(trigger));
        }
        assert_eq!(
            parse_trigger("DEAL_SCORED"),
            Some(NotificationTrigger::DealScored)
        );
        assert_eq!(parse_trigger("unspecified"), None);
        assert_eq!(parse_trigger("deal_scoredx"), None);
    }
}
