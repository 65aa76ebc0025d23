//! A deal's history: its events in log order, each with who did it, what
//! changed in a short phrase, and what caused it.
//!
//! All events of a deal sit in one partition (the key is the deal id), but
//! which partition depends on the producer's partitioner (librdkafka's
//! consistent_random, murmur2 for Java clients), so the history scans every
//! partition and keeps the records whose key, or else whose envelope, names
//! the deal. Only matching records are decoded. A deal's events are few, so
//! they are returned as a `Vec`.

use std::io::Write;

use dealmesh_eventlog::KafkaSettings;
use dealmesh_proto::Payload;
use dealmesh_proto::v1::{Ballot, VoteCloseReason, VoteResult, VoteRule};
use serde::Serialize;
use tracing::{instrument, warn};

use crate::export::{SkippedRecord, decode};
use crate::range::rfc3339;
use crate::reader::{self, Start};
use crate::row::EventRow;
use crate::{Error, Result};

/// One event of a deal's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub event: EventRow,
    /// What changed, in a short phrase, e.g. `screening → diligence`.
    pub change: String,
}

/// The events of `deal_id` in `topic`, in log order. Fails with
/// [`Error::UnknownDeal`] when the deal has none. Records that are not
/// events are skipped with a warning (see the export for a listing).
#[instrument(skip_all, fields(%topic, %deal_id), err)]
pub async fn history(
    settings: &KafkaSettings,
    topic: &str,
    deal_id: &str,
) -> Result<Vec<HistoryEntry>> {
    let deal_id = deal_id.trim();
    if deal_id.is_empty() {
        return Err(Error::EmptyDealId);
    }
    let (settings, topic, deal_id) = (settings.clone(), topic.to_owned(), deal_id.to_owned());
    crate::blocking(move || {
        let mut entries = Vec::new();
        let mut skipped: Vec<SkippedRecord> = Vec::new();
        let mut skipped_count = 0;
        reader::scan(&settings, &topic, Start::Beginning, |record| {
            if record
                .key
                .as_deref()
                .is_some_and(|key| key != deal_id.as_bytes())
            {
                return Ok(());
            }
            if let Some((row, event)) = decode(&record, &mut skipped, &mut skipped_count)
                && row.deal_id == deal_id
            {
                let change = describe(event.payload.as_ref());
                entries.push(HistoryEntry { event: row, change });
            }
            Ok(())
        })?;
        if entries.is_empty() {
            return Err(Error::UnknownDeal { deal_id, topic });
        }
        // Producers with different partitioners put one key in different
        // partitions; the entries are then in log order per partition only.
        if entries
            .iter()
            .any(|e| e.event.partition != entries[0].event.partition)
        {
            warn!(%deal_id, "the deal's events are in several partitions, listed partition by partition");
        }
        Ok(entries)
    })
    .await
}

/// What an event changed, in a short phrase. `None` is a type this build
/// does not know.
pub fn describe(payload: Option<&Payload>) -> String {
    let Some(payload) = payload else {
        return "event of a type this version does not know (written by a newer producer)".into();
    };
    match payload {
        Payload::DealSourced(p) => {
            let mut phrase = format!("sourced from {}", or_dash(&p.source));
            if !p.name.is_empty() {
                phrase.push_str(&format!(": {}", p.name));
            }
            if !p.website.is_empty() {
                phrase.push_str(&format!(" ({})", p.website));
            } else if !p.github_owner.is_empty() {
                phrase.push_str(&format!(" (github {})", p.github_owner));
            }
            phrase
        }
        Payload::DealEnriched(p) => {
            let mut parts = Vec::new();
            if let Some(g) = &p.github {
                parts.push(format!("github {}/{} {} stars", g.owner, g.repo, g.stars));
            }
            if let Some(c) = &p.crunchbase {
                let mut part = format!("crunchbase {}", c.permalink);
                if let Some(total) = &c.funding_total {
                    part.push_str(&format!(" raised {} {}", total.value, total.currency));
                }
                parts.push(part);
            }
            if let Some(a) = &p.analysis {
                parts.push(format!(
                    "analysis by {}: {}",
                    or_dash(&a.model),
                    or_dash(&a.sector)
                ));
            }
            for gap in &p.gaps {
                parts.push(format!("no {} ({})", gap.source, gap.reason));
            }
            if parts.is_empty() {
                "enriched with nothing".into()
            } else {
                format!("enriched: {}", parts.join(", "))
            }
        }
        Payload::EnrichmentFailed(p) => format!(
            "enrichment step {} failed after {} attempt{}: {}{}",
            or_dash(&p.step),
            p.attempts,
            if p.attempts == 1 { "" } else { "s" },
            p.reason,
            if p.retryable { " (retryable)" } else { "" }
        ),
        Payload::DealScored(p) => {
            let mut phrase = format!(
                "scored {:.1} by model {}",
                p.score,
                or_dash(&p.model_version)
            );
            if !p.failed_filters.is_empty() {
                phrase.push_str(&format!(", failed {}", p.failed_filters.join(", ")));
            }
            phrase
        }
        Payload::StageChanged(p) => {
            let mut phrase = format!("{} → {}", or_dash(&p.from_stage), or_dash(&p.to_stage));
            if !p.reason.is_empty() {
                phrase.push_str(&format!(": {}", p.reason));
            }
            phrase
        }
        Payload::OwnerAssigned(p) => {
            format!(
                "owner {} → {}",
                or_dash(&p.previous_owner_id),
                or_dash(&p.owner_id)
            )
        }
        Payload::NoteAdded(p) => format!("note {}: {}", p.note_id, excerpt(&p.body, 80)),
        Payload::DealShared(p) => {
            let mut phrase = format!("shared with {}", p.lp_ids.join(", "));
            if !p.message.is_empty() {
                phrase.push_str(&format!(": {}", excerpt(&p.message, 60)));
            }
            phrase
        }
        Payload::VoteOpened(p) => {
            let rule = match VoteRule::try_from(p.rule) {
                Ok(VoteRule::Quorum) => format!("quorum {}", p.quorum),
                Ok(VoteRule::SimpleMajority) => "simple majority".into(),
                _ => "no rule".into(),
            };
            let mut phrase = format!(
                "vote {} opened: {} ({}, {} eligible",
                p.vote_id,
                excerpt(&p.question, 80),
                rule,
                p.eligible_lp_ids.len()
            );
            if let Some(deadline) = p
                .deadline
                .as_ref()
                .and_then(dealmesh_eventlog::envelope::from_timestamp)
            {
                phrase.push_str(&format!(", until {}", rfc3339(deadline)));
            }
            phrase.push(')');
            phrase
        }
        Payload::VoteCast(p) => {
            let ballot = match Ballot::try_from(p.ballot) {
                Ok(Ballot::Yes) => "yes",
                Ok(Ballot::No) => "no",
                Ok(Ballot::Abstain) => "abstain",
                _ => "an unknown ballot",
            };
            let mut phrase = format!("{} voted {} on {}", p.lp_id, ballot, p.vote_id);
            if !p.comment.is_empty() {
                phrase.push_str(&format!(": {}", excerpt(&p.comment, 60)));
            }
            phrase
        }
        Payload::VoteClosed(p) => {
            let result = match VoteResult::try_from(p.result) {
                Ok(VoteResult::Passed) => "passed",
                Ok(VoteResult::Rejected) => "rejected",
                Ok(VoteResult::NoQuorum) => "no quorum",
                _ => "no result",
            };
            let reason = match VoteCloseReason::try_from(p.reason) {
                Ok(VoteCloseReason::Deadline) => " at the deadline",
                Ok(VoteCloseReason::AllVoted) => ", all voted",
                Ok(VoteCloseReason::ClosedByPartner) => ", closed by a partner",
                _ => "",
            };
            let tally = p.tally.unwrap_or_default();
            format!(
                "vote {} closed{}: {} ({} yes, {} no, {} abstain of {})",
                p.vote_id, reason, result, tally.yes, tally.no, tally.abstain, tally.eligible
            )
        }
        Payload::DealsMerged(p) => {
            let mut phrase = format!("merged {}", p.merged_deal_ids.join(", "));
            if !p.reason.is_empty() {
                phrase.push_str(&format!(": {}", p.reason));
            }
            phrase
        }
        Payload::DealsUnmerged(p) => {
            let mut phrase = format!(
                "unmerged {} (undoes {})",
                p.unmerged_deal_ids.join(", "),
                or_dash(&p.merge_event_id)
            );
            if !p.reason.is_empty() {
                phrase.push_str(&format!(": {}", p.reason));
            }
            phrase
        }
        Payload::DealArchived(p) => {
            if p.reason.is_empty() {
                "archived".into()
            } else {
                format!("archived: {}", p.reason)
            }
        }
    }
}

/// Writes one line per entry:
/// `2026-11-23T10:00:00Z  Alice Chen (partner)  StageChanged  screening → diligence  caused by <id>`.
pub fn render_history(entries: &[HistoryEntry], out: &mut impl Write) -> std::io::Result<()> {
    for entry in entries {
        let e = &entry.event;
        let who = if e.actor_display_name.is_empty() {
            or_dash(&e.actor_id).to_owned()
        } else {
            e.actor_display_name.clone()
        };
        let role = if e.actor_role.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.actor_role)
        };
        write!(
            out,
            "{}  {}{}  {}  {}",
            rfc3339(e.occurred_at),
            who,
            role,
            e.event_type,
            entry.change
        )?;
        if !e.causation_id.is_empty() {
            write!(out, "  caused by {}", e.causation_id)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The first `max` characters of `s` on one line, with `…` if cut.
fn excerpt(s: &str, max: usize) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        line
    } else {
        let cut: String = line.chars().take(max).collect();
        format!("{}…", cut.trim_end())
    }
}
