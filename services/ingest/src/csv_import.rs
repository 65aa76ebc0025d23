//! `dealmesh-ingest import FILE.csv`: every row a deal.
//!
//! Columns by header name: `name` (required), `website`, `github_owner`,
//! `github_repo`, `external_id`, `description`, `source_url`,
//! `idempotency_key`; any other column is kept as an attribute. Every row is
//! checked first; if any is bad, each bad row is reported by line and field
//! and nothing is written (unless `partial` is set, which imports the good
//! rows).

use std::collections::BTreeMap;
use std::io::Read;

use dealmesh_proto::v1::{Channel, DealSubmission};
use sha2::{Digest, Sha256};

use crate::ingestor::{Ingestor, Receipt, Refusal};
use crate::validate::{self, Submission};

const KNOWN: &[&str] = &[
    "name",
    "website",
    "github_owner",
    "github_repo",
    "external_id",
    "description",
    "source_url",
    "idempotency_key",
];

/// A problem with one row (or the file, at line 1 for the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.field, self.message)
    }
}

/// The rows of a CSV file: the good ones and a report of the bad.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<(u64, Submission)>,
    pub errors: Vec<RowError>,
}

/// Parses and validates every row. `source` names the import's source.
pub fn parse(reader: impl Read, source: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let headers = match csv.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            parsed.errors.push(RowError {
                line: 1,
                field: "header".into(),
                message: e.to_string(),
            });
            return parsed;
        }
    };
    if !headers.iter().any(|h| h == "name") {
        parsed.errors.push(RowError {
            line: 1,
            field: "header".into(),
            message: "a \"name\" column is required".into(),
        });
        return parsed;
    }
    let mut seen_keys: BTreeMap<String, u64> = BTreeMap::new();
    for result in csv.records() {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                parsed.errors.push(RowError {
                    line,
                    field: "row".into(),
                    message: match e.kind() {
                        csv::ErrorKind::UnequalLengths {
                            expected_len, len, ..
                        } => {
                            format!("has {len} fields, the header has {expected_len}")
                        }
                        csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".into(),
                        _ => e.to_string(),
                    },
                });
                continue;
            }
        };
        let line = record.position().map_or(0, csv::Position::line);
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut attributes = BTreeMap::new();
        for (header, value) in headers.iter().zip(record.iter()) {
            if KNOWN.contains(&header) {
                fields.insert(header, value.to_owned());
            } else if !value.is_empty() {
                attributes.insert(header.to_owned(), value.to_owned());
            }
        }
        let take =
            |fields: &mut BTreeMap<&str, String>, k: &str| fields.remove(k).unwrap_or_default();
        let mut raw = DealSubmission {
            idempotency_key: take(&mut fields, "idempotency_key"),
            source: source.to_owned(),
            external_id: take(&mut fields, "external_id"),
            name: take(&mut fields, "name"),
            website: take(&mut fields, "website"),
            github_owner: take(&mut fields, "github_owner"),
            github_repo: take(&mut fields, "github_repo"),
            description: take(&mut fields, "description"),
            attributes: attributes.into_iter().collect(),
            source_url: take(&mut fields, "source_url"),
        };
        if raw.idempotency_key.is_empty() {
            // Re-importing the same row writes nothing new; a changed row is
            // a new sighting.
            raw.idempotency_key = row_key(&raw);
        }
        match validate::validate(raw, "") {
            Ok(submission) => {
                if let Some(first) = seen_keys.insert(submission.idempotency_key.clone(), line) {
                    parsed.errors.push(RowError {
                        line,
                        field: "idempotency_key".into(),
                        message: format!("repeats line {first}"),
                    });
                } else {
                    parsed.rows.push((line, submission));
                }
            }
            Err(violations) => parsed
                .errors
                .extend(violations.into_iter().map(|v| RowError {
                    line,
                    field: v.field,
                    message: v.description,
                })),
        }
    }
    parsed
}

fn row_key(raw: &DealSubmission) -> String {
    let mut hasher = Sha256::new();
    for field in [
        &raw.name,
        &raw.website,
        &raw.github_owner,
        &raw.github_repo,
        &raw.external_id,
        &raw.description,
        &raw.source_url,
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    let mut attributes: Vec<_> = raw.attributes.iter().collect();
    attributes.sort();
    for (k, v) in attributes {
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(v.as_bytes());
    }
    format!("csv-row:{}", hex::encode(&hasher.finalize()[..16]))
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Report {
    pub imported: Vec<(u64, Receipt)>,
    /// Rows the log refused (an explicit idempotency key reused for
    /// different content).
    pub errors: Vec<RowError>,
}

/// Lands the parsed good rows (in chunks of `batch`) on the log.
pub async fn import(
    ingestor: &Ingestor,
    rows: &[(u64, Submission)],
    batch: usize,
    correlation_id: &str,
) -> Result<Report, crate::ingestor::Error> {
    let mut report = Report::default();
    for chunk in rows.chunks(batch.max(1)) {
        let submissions: Vec<Submission> = chunk.iter().map(|(_, s)| s.clone()).collect();
        let outcomes = ingestor
            .submit(&submissions, Channel::Csv, correlation_id)
            .await?;
        for ((line, _), outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                Ok(receipt) => report.imported.push((*line, receipt)),
                Err(Refusal::KeyReused) => report.errors.push(RowError {
                    line: *line,
                    field: "idempotency_key".into(),
                    message: "was already used for a different row".into(),
                }),
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rows_parse_and_extra_columns_become_attributes() {
        let csv = "name,website,stage_hint\nAcme,https://acme.io,seed\nBeta Labs,,\n";
        let parsed = parse(csv.as_bytes(), "csv");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.rows.len(), 2);
        let (line, acme) = &parsed.rows[0];
        assert_eq!(*line, 2);
        assert_eq!(
            acme.attributes.get("stage_hint").map(String::as_str),
            Some("seed")
        );
        assert_eq!(
            parsed.rows[1].1.company_key.as_canonical_string(),
            "name:beta labs"
        );
    }

    #[test]
    fn every_bad_row_is_reported_by_line_and_field() {
        let csv = "name,website,github_owner\nAcme,https://acme.io,\n,https://x.io,\nGood,ftp://bad,\nShort\nOk Co,,-bad-\n";
        let parsed = parse(csv.as_bytes(), "csv");
        let got: Vec<(u64, &str)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [(3, "name"), (4, "website"), (5, "row"), (6, "github_owner")]
        );
        assert_eq!(parsed.rows.len(), 1);
        assert!(
            parsed.errors[2]
                .to_string()
                .contains("line 5: row: has 1 fields, the header has 3")
        );
    }

    #[test]
    fn a_file_without_a_name_column_is_refused() {
        let parsed = parse("website\nacme.io\n".as_bytes(), "csv");
        assert_eq!(parsed.errors[0].line, 1);
        assert!(parsed.rows.is_empty());
    }

    #[test]
    fn the_same_row_gets_the_same_key() {
        let a = parse("name\nAcme\n".as_bytes(), "csv");
        let b = parse("name\nAcme\n".as_bytes(), "csv");
        assert_eq!(a.rows[0].1.idempotency_key, b.rows[0].1.idempotency_key);
    }
}
