//! Record headers: CloudEvents Kafka protocol binding (binary mode) and W3C
//! trace context, so any Kafka client can tell what a record is and one trace
//! follows a deal across every hop.

use std::collections::HashMap;

use dealmesh_proto::DealEvent;
use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope;

pub const CE_ID: &str = "ce_id";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TIME: &str = "ce_time";
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_SUBJECT: &str = "ce_subject";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The content type of every deal-log value.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

/// CloudEvents headers for `event`, sent by `source` (a URI reference such as
/// `/dealmesh/ingest`), plus the current span's trace context.
pub fn for_event(event: &DealEvent, source: &str) -> OwnedHeaders {
    for_event_traced(event, source, &current_trace())
}

/// [`for_event`] with a trace context taken once, by [`current_trace`], for
/// many records sent from one span.
pub fn for_event_traced(event: &DealEvent, source: &str, trace: &TraceHeaders) -> OwnedHeaders {
    let time = event
        .occurred_at
        .as_ref()
        .and_then(envelope::from_timestamp)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let ce_type = event
        .payload
        .as_ref()
        .map(|p| p.cloudevents_type())
        .unwrap_or_else(|| "dealmesh.v1.Unknown".to_owned());
    let mut headers = OwnedHeaders::new_with_capacity(7 + trace.0.len());
    for (key, value) in [
        (CE_SPECVERSION, "1.0"),
        (CE_ID, event.event_id.as_str()),
        (CE_TYPE, ce_type.as_str()),
        (CE_SOURCE, source),
        (CE_TIME, time.as_str()),
        (CE_SUBJECT, event.deal_id.as_str()),
        (CONTENT_TYPE, PROTOBUF_CONTENT_TYPE),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    trace.add_to(headers)
}

/// A trace context as record headers (`traceparent`, `tracestate`).
#[derive(Debug, Clone, Default)]
pub struct TraceHeaders(HashMap<String, String>);

impl TraceHeaders {
    fn add_to(&self, mut headers: OwnedHeaders) -> OwnedHeaders {
        for (key, value) in &self.0 {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_str()),
            });
        }
        headers
    }
}

/// The current span's trace context, as headers.
pub fn current_trace() -> TraceHeaders {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MapCarrier(&mut carrier));
    });
    TraceHeaders(carrier)
}

/// The OpenTelemetry context carried by a record's headers (empty if none).
pub fn extract_context(headers: &[(String, Vec<u8>)]) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    for (key, value) in headers {
        if (key == TRACEPARENT || key == TRACESTATE)
            && let Ok(value) = std::str::from_utf8(value)
        {
            carrier.insert(key.clone(), value.to_owned());
        }
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MapCarrier(&mut carrier))
    })
}

/// Copies a consumed record's headers into owned pairs.
pub fn to_pairs<H: Headers>(headers: Option<&H>) -> Vec<(String, Vec<u8>)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .map(|h| {
            (
                h.key.to_owned(),
                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
            )
        })
        .collect()
}

/// The value of header `key`, if present and UTF-8.
pub fn get<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
