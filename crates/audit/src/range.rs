//! The period of an export: `[from, to)` over the envelope's `occurred_at`.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{Error, Result};

/// A half-open period `[from, to)`; an absent bound is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl TimeRange {
    /// Every event, however old or new.
    pub fn all() -> Self {
        Self::default()
    }

    /// Parses the `--from` and `--to` flags (RFC 3339, any offset). `from`
    /// must be before `to`.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self> {
        let from = from.map(|v| parse_time("--from", v)).transpose()?;
        let to = to.map(|v| parse_time("--to", v)).transpose()?;
        Self::new(from, to)
    }

    /// A period from already parsed bounds; `from` must be before `to`.
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<Self> {
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(Error::EmptyRange {
                from: rfc3339(from),
                to: rfc3339(to),
            });
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at < to)
    }
}

fn parse_time(flag: &'static str, value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::BadTime {
            flag,
            value: value.to_owned(),
        })
}

/// The one way times are printed: RFC 3339 in UTC, `Z`, with as many
/// fractional digits as needed.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_half_open_and_offsets_are_normalized() {
        let range = TimeRange::parse(
            Some("2026-11-23T11:00:00+01:00"),
            Some("2026-11-24T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(rfc3339(range.from.unwrap()), "2026-11-23T10:00:00Z");
        assert!(range.contains("2026-11-23T10:00:00Z".parse().unwrap()));
        assert!(!range.contains("2026-11-23T09:59:59.999Z".parse().unwrap()));
        assert!(!range.contains("2026-11-24T00:00:00Z".parse().unwrap()));
        assert!(TimeRange::all().contains("1970-01-01T00:00:00Z".parse().unwrap()));
    }

    #[test]
    fn bad_bounds_name_the_flag() {
        let err = TimeRange::parse(Some("yesterday"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"--from "yesterday" is not an RFC 3339 time, e.g. 2026-11-23T10:00:00Z"#
        );
        let err = TimeRange::parse(None, Some("2026-11-23")).unwrap_err();
        assert!(err.to_string().starts_with("--to \"2026-11-23\""), "{err}");
        let err = TimeRange::parse(Some("2026-11-24T00:00:00Z"), Some("2026-11-23T00:00:00Z"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--from 2026-11-24T00:00:00Z is not before --to 2026-11-23T00:00:00Z"
        );
        assert!(
            TimeRange::parse(Some("2026-11-23T00:00:00Z"), Some("2026-11-23T00:00:00Z")).is_err()
        );
    }
}
