//! A log record as one flat row: where it sits in the log, the envelope,
//! the payload as JSON, and the CloudEvents headers.
//!
//! The payload is rendered with the canonical protobuf JSON mapping
//! (through the contract's own descriptors, so a field added to the
//! contract shows up without a change here), with the proto field names
//! (`from_stage`), every field present even at its default, enums by name
//! (`BALLOT_YES`) and 64-bit integers as JSON numbers. The envelope's actor
//! kind and role are short lower-case words (`user`, `partner`).

use std::sync::OnceLock;

use base64::Engine;
use chrono::{DateTime, Utc};
use dealmesh_eventlog::{envelope, headers};
use dealmesh_proto::DealEvent;
use dealmesh_proto::v1::{ActorKind, Role};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde::Serialize;

use crate::reader::LogRecord;

/// The `type` of an event whose payload this build does not know (written
/// by a newer producer).
pub const UNKNOWN_TYPE: &str = "Unknown";

/// One event of the log, flattened for export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record timestamp (when it was published).
    #[serde(serialize_with = "ser_opt_time")]
    pub kafka_timestamp: Option<DateTime<Utc>>,
    /// The record key (the deal id, as the producer wrote it).
    pub key: Option<String>,
    pub event_id: String,
    pub deal_id: String,
    /// The payload type, e.g. `StageChanged`, or `Unknown`.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(serialize_with = "ser_time")]
    pub occurred_at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_role: String,
    pub actor_display_name: String,
    pub correlation_id: String,
    pub causation_id: String,
    pub expected_version: Option<u64>,
    pub idempotency_key: String,
    /// The payload as JSON; `null` for an `Unknown` type.
    pub payload: serde_json::Value,
    /// For an `Unknown` type only: the whole record value, base64, so
    /// nothing the newer producer wrote is lost.
    pub raw_base64: Option<String>,
    pub ce_id: Option<String>,
    pub ce_type: Option<String>,
    pub ce_source: Option<String>,
    pub ce_time: Option<String>,
    pub ce_specversion: Option<String>,
    pub traceparent: Option<String>,
}

/// Why a record could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

impl EventRow {
    /// Decodes a record of the deal log. An envelope with a payload type
    /// this build does not know becomes an `Unknown` row; a record that is
    /// not an envelope at all is [`Undecodable`]. Returns the decoded
    /// envelope too.
    pub fn from_record(record: &LogRecord) -> Result<(EventRow, DealEvent), Undecodable> {
        let value = record
            .value
            .as_deref()
            .ok_or_else(|| Undecodable("the record has no value".into()))?;
        let event = envelope::decode(value).map_err(|err| Undecodable(err.to_string()))?;
        let occurred_at = event
            .occurred_at
            .as_ref()
            .and_then(envelope::from_timestamp)
            .ok_or_else(|| Undecodable("occurred_at is missing or out of range".into()))?;
        let (event_type, payload, raw_base64) = match &event.payload {
            Some(payload) => (
                payload.type_name().to_owned(),
                payload_json(value).map_err(Undecodable)?,
                None,
            ),
            None => (
                UNKNOWN_TYPE.to_owned(),
                serde_json::Value::Null,
                Some(base64::engine::general_purpose::STANDARD.encode(value)),
            ),
        };
        let actor = event.actor.clone().unwrap_or_default();
        let header = |key| headers::get(&record.headers, key).map(str::to_owned);
        let row = EventRow {
            partition: record.partition,
            offset: record.offset,
            kafka_timestamp: record
                .timestamp_ms
                .and_then(DateTime::from_timestamp_millis),
            key: record
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id: event.event_id.clone(),
            deal_id: event.deal_id.clone(),
            event_type,
            occurred_at,
            actor_kind: actor_kind(actor.kind),
            actor_id: actor.id,
            actor_role: role(actor.role),
            actor_display_name: actor.display_name,
            correlation_id: event.correlation_id.clone(),
            causation_id: event.causation_id.clone(),
            expected_version: event.expected_version,
            idempotency_key: event.idempotency_key.clone(),
            payload,
            raw_base64,
            ce_id: header(headers::CE_ID),
            ce_type: header(headers::CE_TYPE),
            ce_source: header(headers::CE_SOURCE),
            ce_time: header(headers::CE_TIME),
            ce_specversion: header(headers::CE_SPECVERSION),
            traceparent: header(headers::TRACEPARENT),
        };
        Ok((row, event))
    }
}

/// `ACTOR_KIND_USER` → `user`; an unspecified kind is empty, a number this
/// build does not know is kept as the number.
pub fn actor_kind(kind: i32) -> String {
    match ActorKind::try_from(kind) {
        Ok(ActorKind::Unspecified) => String::new(),
        Ok(kind) => short_enum(kind.as_str_name(), "ACTOR_KIND_"),
        Err(_) => kind.to_string(),
    }
}

/// `ROLE_PARTNER` → `partner`, like [`actor_kind`].
pub fn role(role: i32) -> String {
    match Role::try_from(role) {
        Ok(Role::Unspecified) => String::new(),
        Ok(role) => short_enum(role.as_str_name(), "ROLE_"),
        Err(_) => role.to_string(),
    }
}

fn short_enum(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptor set is compiled into dealmesh-proto by protoc from
        // the same files as the types, so it always decodes.
        DescriptorPool::decode(dealmesh_proto::FILE_DESCRIPTOR_SET)
            .expect("dealmesh-proto's file descriptor set decodes")
    })
}

fn deal_event_descriptor() -> &'static MessageDescriptor {
    static DESCRIPTOR: OnceLock<MessageDescriptor> = OnceLock::new();
    DESCRIPTOR.get_or_init(|| {
        descriptor_pool()
            .get_message_by_name("dealmesh.v1.DealEvent")
            .expect("dealmesh.v1.DealEvent is in the contract")
    })
}

/// The set payload of an encoded envelope as JSON.
fn payload_json(value: &[u8]) -> Result<serde_json::Value, String> {
    let descriptor = deal_event_descriptor();
    let message = DynamicMessage::decode(descriptor.clone(), value).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    for oneof in descriptor.oneofs().filter(|o| o.name() == "payload") {
        for field in oneof.fields() {
            if message.has_field(&field)
                && let Some(payload) = message.get_field(&field).as_message()
            {
                return payload
                    .serialize_with_options(serde_json::value::Serializer, &options)
                    .map_err(|e| e.to_string());
            }
        }
    }
    Ok(serde_json::Value::Null)
}

fn ser_time<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::range::rfc3339(*at))
}

fn ser_opt_time<S: serde::Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => ser_time(at, s),
        None => s.serialize_none(),
    }
}
