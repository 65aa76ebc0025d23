//! The analysis of a deal: a summary, a sector, a business model and risks,
//! written either by a language model or, when none is configured, by the
//! built-in deterministic analyzer.

pub mod builtin;
pub mod llm;

use dealmesh_proto::v1::{Analysis, CrunchbaseSignals, GithubSignals};
use serde::Deserialize;

/// Sectors the analysis prefers. A model may answer with another sector, as
/// long as it is a short label (see [`normalize_sector`]).
pub const SECTORS: &[&str] = &[
    "ai-ml",
    "climate-software",
    "energy",
    "fintech",
    "insurtech",
    "healthtech",
    "biotech",
    "devtools",
    "infrastructure",
    "security",
    "data",
    "edtech",
    "ecommerce",
    "logistics",
    "mobility",
    "proptech",
    "hr-tech",
    "legaltech",
    "govtech",
    "agtech",
    "media",
    "gaming",
    "hardware",
    "robotics",
    "consumer",
    "other",
];

pub const MAX_SUMMARY_CHARS: usize = 600;
pub const MAX_SECTOR_CHARS: usize = 40;
pub const MAX_BUSINESS_MODEL_CHARS: usize = 160;
pub const MAX_RISKS: usize = 8;
pub const MAX_RISK_CHARS: usize = 200;

/// What the analyzer sees of a deal.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisInput<'a> {
    pub name: &'a str,
    pub website: &'a str,
    /// Already cut to the configured length.
    pub description: &'a str,
    pub github: Option<&'a GithubSignals>,
    pub crunchbase: Option<&'a CrunchbaseSignals>,
}

/// Why no analysis could be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AnalysisError {
    /// The provider could not be reached or kept failing; later may work.
    #[error("{reason}")]
    Unavailable { reason: String, attempts: u32 },
    /// The provider refused the request or kept answering with output that
    /// fails validation.
    #[error("{reason}")]
    Rejected { reason: String, attempts: u32 },
}

impl AnalysisError {
    pub fn attempts(&self) -> u32 {
        match self {
            AnalysisError::Unavailable { attempts, .. }
            | AnalysisError::Rejected { attempts, .. } => *attempts,
        }
    }
}

pub enum Analyzer {
    Builtin,
    Llm(llm::LlmClient),
}

impl Analyzer {
    pub async fn analyze(&self, input: &AnalysisInput<'_>) -> Result<Analysis, AnalysisError> {
        match self {
            Analyzer::Builtin => Ok(builtin::analyze(input)),
            Analyzer::Llm(client) => client.analyze(input).await,
        }
    }
}

/// The JSON object the model must answer with (extra fields are ignored).
#[derive(Debug, Deserialize)]
pub struct AnalysisOutput {
    pub summary: String,
    pub sector: String,
    pub business_model: String,
    pub risks: Vec<String>,
}

/// Checks a model's answer field by field; the error says which field is
/// wrong and how.
pub fn validate(output: AnalysisOutput) -> Result<AnalysisOutput, String> {
    let summary = output.summary.trim().to_owned();
    if summary.is_empty() {
        return Err("summary is empty".into());
    }
    if summary.chars().count() > MAX_SUMMARY_CHARS {
        return Err(format!(
            "summary is longer than {MAX_SUMMARY_CHARS} characters"
        ));
    }
    let sector = normalize_sector(&output.sector)
        .ok_or_else(|| format!("sector {:?} is not a short label", clip(&output.sector)))?;
    let business_model = output.business_model.trim().to_owned();
    if business_model.is_empty() {
        return Err("business_model is empty".into());
    }
    if business_model.chars().count() > MAX_BUSINESS_MODEL_CHARS {
        return Err(format!(
            "business_model is longer than {MAX_BUSINESS_MODEL_CHARS} characters"
        ));
    }
    if output.risks.len() > MAX_RISKS {
        return Err(format!("risks: more than {MAX_RISKS} given"));
    }
    let mut risks = Vec::with_capacity(output.risks.len());
    for (i, risk) in output.risks.iter().enumerate() {
        let risk = risk.trim();
        if risk.is_empty() {
            return Err(format!("risks[{i}] is empty"));
        }
        if risk.chars().count() > MAX_RISK_CHARS {
            return Err(format!(
                "risks[{i}] is longer than {MAX_RISK_CHARS} characters"
            ));
        }
        risks.push(risk.to_owned());
    }
    Ok(AnalysisOutput {
        summary,
        sector,
        business_model,
        risks,
    })
}

/// A sector as a lower-case label: one of [`SECTORS`], or free text of at
/// most [`MAX_SECTOR_CHARS`] letters, digits, spaces, `-`, `&` and `/`.
pub fn normalize_sector(sector: &str) -> Option<String> {
    let lowered = sector.trim().to_lowercase();
    if SECTORS.contains(&lowered.as_str()) {
        return Some(lowered);
    }
    let label: String = lowered.split_whitespace().collect::<Vec<_>>().join("-");
    let ok = !label.is_empty()
        && label.chars().count() <= MAX_SECTOR_CHARS
        && label
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '&' | '/'));
    ok.then_some(label)
}

fn clip(text: &str) -> String {
    crate::provider::truncate_chars(text, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(summary: &str, sector: &str, risks: &[&str]) -> AnalysisOutput {
        AnalysisOutput {
            summary: summary.into(),
            sector: sector.into(),
            business_model: "B2B SaaS".into(),
            risks: risks.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn valid_output_is_normalized() {
        let ok = validate(output(
            "  Grid software. ",
            "Climate-Software",
            &["long sales"],
        ))
        .unwrap();
        assert_eq!(ok.summary, "Grid software.");
        assert_eq!(ok.sector, "climate-software");
        let free = validate(output("x", "Space Tech", &[])).unwrap();
        assert_eq!(free.sector, "space-tech");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (output("", "fintech", &[]), "summary"),
            (
                output(&"x".repeat(MAX_SUMMARY_CHARS + 1), "fintech", &[]),
                "summary",
            ),
            (output("x", "{\"drop table\"}", &[]), "sector"),
            (
                output("x", &"a".repeat(MAX_SECTOR_CHARS + 1), &[]),
                "sector",
            ),
            (output("x", "fintech", &[""]), "risks[0]"),
            (output("x", "fintech", &["r"; MAX_RISKS + 1]), "risks"),
        ];
        for (bad, field) in cases {
            let err = validate(bad).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
