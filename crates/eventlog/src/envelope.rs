//! Building, encoding and decoding the event envelope.

use chrono::{DateTime, Utc};
use dealmesh_proto::v1::{Actor, ActorKind, Role};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;

use crate::{Error, Result};

/// The actor for events a service causes on its own.
pub fn service_actor(service: &str) -> Actor {
    Actor {
        kind: ActorKind::Service as i32,
        id: service.to_owned(),
        role: Role::Service as i32,
        display_name: service.to_owned(),
    }
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Encodes an envelope after checking the fields every consumer relies on.
pub fn encode(event: &DealEvent) -> Result<Vec<u8>> {
    validate(event)?;
    Ok(event.encode_to_vec())
}

/// Decodes an envelope and checks it is well-formed. An envelope whose
/// payload is of a type this build does not know decodes with `payload:
/// None`; callers decide whether to skip it.
pub fn decode(bytes: &[u8]) -> Result<DealEvent> {
    let event = DealEvent::decode(bytes)?;
    if event.event_id.is_empty() {
        return Err(Error::InvalidEvent("event_id is empty".into()));
    }
    if event.deal_id.is_empty() {
        return Err(Error::InvalidEvent("deal_id is empty".into()));
    }
    Ok(event)
}

fn validate(event: &DealEvent) -> Result<()> {
    if uuid::Uuid::parse_str(&event.event_id).is_err() {
        return Err(Error::InvalidEvent(format!(
            "event_id {:?} is not a uuid",
            event.event_id
        )));
    }
    if event.deal_id.is_empty() {
        return Err(Error::InvalidEvent("deal_id is empty".into()));
    }
    if event.occurred_at.is_none() {
        return Err(Error::InvalidEvent("occurred_at is missing".into()));
    }
    if event.payload.is_none() {
        return Err(Error::InvalidEvent("payload is missing".into()));
    }
    Ok(())
}

/// The payload's type name, or `Unknown` for a type newer than this build.
pub fn type_name(event: &DealEvent) -> &'static str {
    event.payload.as_ref().map_or("Unknown", Payload::type_name)
}
