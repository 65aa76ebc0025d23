//! Signals about a company from outside providers, each with its provenance
//! (source, fetched_at, URL).
//!
//! A source with nothing to look up, or that does not know the company, is a
//! gap in the enrichment, not a failure.

pub mod crunchbase;
pub mod github;

use chrono::{DateTime, Utc};
use dealmesh_proto::v1::{Provenance, SignalGap};

/// What a source gave: its signals (if any) and the gaps it found.
#[derive(Debug, Default)]
pub struct Fetched<T> {
    pub signals: Option<T>,
    pub gaps: Vec<SignalGap>,
}

impl<T> Fetched<T> {
    pub fn gap(source: &str, reason: impl Into<String>) -> Self {
        Self {
            signals: None,
            gaps: vec![gap(source, reason)],
        }
    }
}

pub fn gap(source: &str, reason: impl Into<String>) -> SignalGap {
    SignalGap {
        source: source.to_owned(),
        reason: reason.into(),
    }
}

pub fn provenance(source: &str, fetched_at: DateTime<Utc>, url: &str) -> Provenance {
    Provenance {
        source: source.to_owned(),
        fetched_at: Some(dealmesh_eventlog::envelope::timestamp(fetched_at)),
        url: url.to_owned(),
    }
}

/// Parses an RFC 3339 time from a provider into a protobuf timestamp.
pub fn timestamp(value: Option<&str>) -> Option<prost_types::Timestamp> {
    let at = DateTime::parse_from_rfc3339(value?).ok()?;
    Some(dealmesh_eventlog::envelope::timestamp(
        at.with_timezone(&Utc),
    ))
}

/// Joins `segments` (percent-encoded) onto a base URL that may carry a path
/// of its own (e.g. GitHub Enterprise's `/api/v3`).
pub fn endpoint(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}
