//! Every event written by a released version of the contract still decodes
//! with the current one, as the same type with the same key fields, and
//! re-encodes to the same bytes (a renumbered or retyped field would not).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dealmesh_proto::v1::{Ballot, Channel, CompanyKeyKind, Role, VoteResult};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;

fn released_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/released/events")
}

/// Every fixture file, as (version directory, file name, bytes).
fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut versions: Vec<_> = std::fs::read_dir(released_dir())
        .expect("proto/released/events exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    versions.sort();
    for version in versions {
        let mut files: Vec<_> = std::fs::read_dir(&version)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "binpb"))
            .collect();
        files.sort();
        for file in files {
            found.push((
                version.file_name().unwrap().to_string_lossy().into_owned(),
                file.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&file).unwrap(),
            ));
        }
    }
    found
}

/// `03-DealScored.binpb` → `DealScored`.
fn type_in_name(name: &str) -> &str {
    let stem = name.strip_suffix(".binpb").unwrap();
    stem.split_once('-').map_or(stem, |(_, t)| t)
}

#[test]
fn every_released_event_decodes_as_its_type_and_reencodes_byte_identical() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 14, "only {} fixtures", fixtures.len());
    for (version, name, bytes) in &fixtures {
        let at = format!("{version}/{name}");
        let event = DealEvent::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{at}: {e}"));
        let payload = event
            .payload
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: payload of no known type"));
        assert_eq!(payload.type_name(), type_in_name(name), "{at}");
        assert_eq!(event.encode_to_vec(), *bytes, "{at} re-encodes differently");

        uuid_v7(&event.event_id, &at);
        assert_eq!(event.deal_id.len(), 36, "{at}: deal_id {}", event.deal_id);
        let occurred_at = event.occurred_at.as_ref().expect("occurred_at");
        assert!(occurred_at.seconds > 1_700_000_000, "{at}: {occurred_at:?}");
        let actor = event.actor.as_ref().expect("actor");
        assert!(
            !actor.id.is_empty() && !actor.display_name.is_empty(),
            "{at}"
        );
        assert!(
            !event.correlation_id.is_empty() && !event.causation_id.is_empty(),
            "{at}"
        );
        key_fields(payload, &event, &at);
    }
}

#[test]
fn the_released_events_cover_every_payload_type_of_the_contract() {
    let pool = prost_reflect::DescriptorPool::decode(dealmesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let envelope = pool.get_message_by_name("dealmesh.v1.DealEvent").unwrap();
    let payload = envelope.oneofs().find(|o| o.name() == "payload").unwrap();
    let contract: BTreeSet<String> = payload
        .fields()
        .map(|f| f.kind().as_message().unwrap().name().to_owned())
        .collect();
    let covered: BTreeSet<String> = fixtures()
        .iter()
        .map(|(_, name, _)| type_in_name(name).to_owned())
        .collect();
    let missing: Vec<_> = contract.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "no released fixture for {missing:?}: write one with the write_event_fixtures example"
    );
}

fn uuid_v7(id: &str, at: &str) {
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{at}: event_id {id}"
    );
    assert!(
        parts[2].starts_with('7'),
        "{at}: event_id {id} is not a UUIDv7"
    );
}

/// The fields a projection of each type depends on.
fn key_fields(payload: &Payload, event: &DealEvent, at: &str) {
    let actor = event.actor.as_ref().unwrap();
    match payload {
        Payload::DealSourced(p) => {
            assert_eq!(p.channel, Channel::Poller as i32, "{at}");
            assert!(!p.name.is_empty() && !p.website.is_empty(), "{at}");
            let key = p.company_key.as_ref().expect("company_key");
            assert_eq!(key.kind, CompanyKeyKind::Domain as i32, "{at}");
            assert!(!key.value.is_empty() && !p.attributes.is_empty(), "{at}");
        }
        Payload::DealEnriched(p) => {
            assert!(p.github.as_ref().is_some_and(|g| g.stars > 0), "{at}");
            assert!(
                p.crunchbase
                    .as_ref()
                    .and_then(|c| c.funding_total.as_ref())
                    .is_some_and(|m| m.value_usd > 0),
                "{at}"
            );
            assert!(
                p.analysis.as_ref().is_some_and(|a| !a.sector.is_empty()),
                "{at}"
            );
            assert!(!p.source_event_id.is_empty(), "{at}");
        }
        Payload::EnrichmentFailed(p) => {
            assert!(!p.step.is_empty() && p.attempts > 0, "{at}");
        }
        Payload::DealScored(p) => {
            assert!((0.0..=100.0).contains(&p.score) && p.score > 0.0, "{at}");
            assert!(
                !p.model_version.is_empty() && !p.contributions.is_empty(),
                "{at}"
            );
        }
        Payload::StageChanged(p) => {
            assert_eq!(
                (p.from_stage.as_str(), p.to_stage.as_str()),
                ("screening", "diligence")
            );
            assert!(
                event.expected_version.is_some(),
                "{at}: a command carries its version"
            );
            assert_eq!(actor.role, Role::Partner as i32, "{at}");
        }
        Payload::OwnerAssigned(p) => assert!(!p.owner_id.is_empty(), "{at}"),
        Payload::NoteAdded(p) => assert!(!p.note_id.is_empty() && !p.body.is_empty(), "{at}"),
        Payload::DealShared(p) => assert!(!p.lp_ids.is_empty(), "{at}"),
        Payload::VoteOpened(p) => {
            assert!(!p.vote_id.is_empty() && p.deadline.is_some(), "{at}");
            assert!(!p.eligible_lp_ids.is_empty(), "{at}");
        }
        Payload::VoteCast(p) => {
            assert_eq!(p.ballot, Ballot::Yes as i32, "{at}");
            assert_eq!(actor.role, Role::Lp as i32, "{at}");
        }
        Payload::VoteClosed(p) => {
            assert_eq!(p.result, VoteResult::Passed as i32, "{at}");
            assert!(
                p.tally.is_some_and(|t| t.yes == 1 && t.eligible == 2),
                "{at}"
            );
        }
        Payload::DealsMerged(p) => assert!(!p.merged_deal_ids.is_empty(), "{at}"),
        Payload::DealsUnmerged(p) => {
            assert!(
                !p.unmerged_deal_ids.is_empty() && !p.merge_event_id.is_empty(),
                "{at}"
            );
        }
        Payload::DealArchived(p) => assert!(!p.reason.is_empty(), "{at}"),
    }
}
