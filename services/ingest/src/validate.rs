//! Validation at the edge: a raw submission (from gRPC, a webhook or a CSV
//! row) becomes a [`Submission`], or a list of every field that is wrong.

use std::collections::BTreeMap;

use dealmesh_proto::v1::DealSubmission;
use dealmesh_runtime::grpc::Violation;
use sha2::{Digest, Sha256};

use crate::company::{self, CompanyKey, KeyError};

pub const MAX_IDEMPOTENCY_KEY: usize = 200;
pub const MAX_NAME: usize = 300;
pub const MAX_EXTERNAL_ID: usize = 200;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_URL: usize = 2048;
pub const MAX_ATTRIBUTES: usize = 100;
pub const MAX_ATTRIBUTE_KEY: usize = 100;
pub const MAX_ATTRIBUTE_VALUE: usize = 2000;

/// Lower-case source name: `[a-z0-9][a-z0-9_-]*`, at most 63 characters.
pub fn is_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A submission that passed validation, with its company key.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub idempotency_key: String,
    pub source: String,
    pub external_id: String,
    pub name: String,
    pub website: String,
    pub github_owner: String,
    pub github_repo: String,
    pub description: String,
    pub attributes: BTreeMap<String, String>,
    pub source_url: String,
    pub company_key: CompanyKey,
}

impl Submission {
    /// SHA-256 over every field, so a reused key with other content is seen.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut hasher = Sha256::new();
        for field in [
            &self.source,
            &self.external_id,
            &self.name,
            &self.website,
            &self.github_owner,
            &self.github_repo,
            &self.description,
            &self.source_url,
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        for (key, value) in &self.attributes {
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(key.as_bytes());
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        }
        hasher.finalize().to_vec()
    }
}

/// Validates `raw`; `path` prefixes every violation's field name (e.g.
/// `deals[3].`), so callers can point at the exact field.
pub fn validate(raw: DealSubmission, path: &str) -> Result<Submission, Vec<Violation>> {
    let mut violations = Vec::new();
    let mut violation = |field: &str, description: String| {
        violations.push(Violation::new(format!("{path}{field}"), description));
    };

    let idempotency_key = raw.idempotency_key.trim().to_owned();
    if idempotency_key.is_empty() {
        violation("idempotency_key", "is required".into());
    } else if idempotency_key.chars().count() > MAX_IDEMPOTENCY_KEY {
        violation(
            "idempotency_key",
            format!("must be at most {MAX_IDEMPOTENCY_KEY} characters"),
        );
    } else if idempotency_key.chars().any(char::is_control) {
        violation(
            "idempotency_key",
            "must not contain control characters".into(),
        );
    }

    let source = raw.source.trim().to_owned();
    if source.is_empty() {
        violation("source", "is required".into());
    } else if !is_source_name(&source) {
        violation(
            "source",
            format!("{source:?} must be lower-case letters, digits, '-' or '_' (at most 63)"),
        );
    }

    let name = raw.name.trim().to_owned();
    if name.is_empty() {
        violation("name", "is required".into());
    } else if name.chars().count() > MAX_NAME {
        violation("name", format!("must be at most {MAX_NAME} characters"));
    }

    for (field, value, max) in [
        ("external_id", &raw.external_id, MAX_EXTERNAL_ID),
        ("description", &raw.description, MAX_DESCRIPTION),
        ("website", &raw.website, MAX_URL),
        ("source_url", &raw.source_url, MAX_URL),
    ] {
        if value.chars().count() > max {
            violation(field, format!("must be at most {max} characters"));
        }
    }

    let website = raw.website.trim().to_owned();
    // The website decides the company key when present: its domain is
    // worked out once, here.
    let mut domain = None;
    if !website.is_empty() && website.chars().count() <= MAX_URL {
        match company::registrable_domain(&website) {
            Ok(registrable) => domain = Some(registrable),
            Err(e) => violation("website", e.to_string()),
        }
    }

    let github_owner = raw.github_owner.trim().to_owned();
    if !github_owner.is_empty()
        && let Err(e) = company::normalize_github_owner(&github_owner)
    {
        violation("github_owner", e.to_string());
    }
    let github_repo = raw.github_repo.trim().to_owned();
    if !github_repo.is_empty() {
        if github_owner.is_empty() {
            violation("github_repo", "needs github_owner".into());
        }
        if github_repo.len() > 100
            || !github_repo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            || github_repo == "."
            || github_repo == ".."
        {
            violation(
                "github_repo",
                format!("{github_repo:?} is not a GitHub repository name"),
            );
        }
    }

    let source_url = raw.source_url.trim().to_owned();
    if !source_url.is_empty() && source_url.len() <= MAX_URL {
        match url::Url::parse(&source_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => violation("source_url", "must be an http or https URL".into()),
            Err(e) => violation("source_url", format!("is not a URL: {e}")),
        }
    }

    if raw.attributes.len() > MAX_ATTRIBUTES {
        violation("attributes", format!("at most {MAX_ATTRIBUTES} entries"));
    }
    for (key, value) in &raw.attributes {
        if key.is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY {
            violation(
                "attributes",
                format!("key {key:?} must be 1 to {MAX_ATTRIBUTE_KEY} characters"),
            );
        }
        if value.chars().count() > MAX_ATTRIBUTE_VALUE {
            violation(
                &format!("attributes[{key}]"),
                format!("must be at most {MAX_ATTRIBUTE_VALUE} characters"),
            );
        }
    }

    if !violations.is_empty() {
        return Err(violations);
    }
    // Every field is valid here, so a website is present exactly when its
    // domain is known.
    let company_key = match domain {
        Some(domain) => CompanyKey::from_registrable_domain(domain),
        None => CompanyKey::derive(
            None,
            Some(&github_owner)
                .filter(|s| !s.is_empty())
                .map(String::as_str),
            Some(&name).filter(|s| !s.is_empty()).map(String::as_str),
        )
        .map_err(|e| {
            let field = match e {
                KeyError::EmptyName | KeyError::NoIdentity => "name",
                KeyError::InvalidGithubOwner { .. } => "github_owner",
                _ => "website",
            };
            vec![Violation::new(format!("{path}{field}"), e.to_string())]
        })?,
    };
    Ok(Submission {
        idempotency_key,
        source,
        external_id: raw.external_id.trim().to_owned(),
        name,
        website,
        github_owner,
        github_repo,
        description: raw.description.trim().to_owned(),
        attributes: raw.attributes.into_iter().collect(),
        source_url,
        company_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> DealSubmission {
        DealSubmission {
            idempotency_key: "k1".into(),
            source: "partner-x".into(),
            name: "Acme Robotics".into(),
            website: "https://www.acme.io/about".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_submission_gets_its_company_key() {
        let s = validate(valid(), "").unwrap();
        assert_eq!(s.company_key.as_canonical_string(), "domain:acme.io");
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let raw = DealSubmission {
            idempotency_key: String::new(),
            source: "Bad Source".into(),
            name: " ".into(),
            website: "ftp://acme.io".into(),
            github_repo: "x y".into(),
            ..Default::default()
        };
        let violations = validate(raw, "deals[2].").unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        for expected in [
            "deals[2].idempotency_key",
            "deals[2].source",
            "deals[2].name",
            "deals[2].website",
            "deals[2].github_repo",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn oversize_fields_are_refused() {
        let mut raw = valid();
        raw.description = "x".repeat(MAX_DESCRIPTION + 1);
        let violations = validate(raw, "").unwrap_err();
        assert_eq!(violations[0].field, "description");
    }

    #[test]
    fn fingerprint_changes_with_content() {
        let a = validate(valid(), "").unwrap();
        let mut raw = valid();
        raw.description = "new".into();
        let b = validate(raw, "").unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            a.fingerprint(),
            validate(valid(), "").unwrap().fingerprint()
        );
    }
}
