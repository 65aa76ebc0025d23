//! Analysis by a language model behind an OpenAI-compatible
//! chat-completions endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, most
//! gateways). The model is asked for JSON matching a schema, and its answer
//! is validated before use; an invalid answer is asked for again a bounded
//! number of times.

use std::sync::Arc;

use chrono::Utc;
use dealmesh_proto::v1::{Analysis, AnalyzerKind};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tracing::instrument;
use url::Url;

use super::{
    AnalysisError, AnalysisInput, AnalysisOutput, MAX_BUSINESS_MODEL_CHARS, MAX_RISK_CHARS,
    MAX_RISKS, MAX_SUMMARY_CHARS, SECTORS, validate,
};
use crate::config::LlmProvider;
use crate::provider::{CallError, Provider, truncate_chars};
use crate::signals::provenance;

/// Changes whenever the prompt or schema does, so an analyst can tell which
/// instructions produced an analysis.
pub const PROMPT_VERSION: &str = "deal-analysis-v1";

const SYSTEM_PROMPT: &str = "You are an analyst at a venture-capital fund. From the facts given \
about one company, write a neutral analysis. Use only the facts given; do not invent numbers. \
Answer with a JSON object with: summary (two sentences at most), sector (one of the listed \
sectors if any fits, else a short label), business_model (a short phrase), risks (a short list \
of the main risks, each a short phrase).";

pub struct LlmClient {
    provider: Arc<Provider>,
    kind: LlmProvider,
    url: Url,
    model: String,
    api_key: Option<SecretString>,
    validation_attempts: u32,
}

#[derive(Deserialize)]
struct Completion {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
    refusal: Option<String>,
}

impl LlmClient {
    /// `base` is the URL `/chat/completions` is appended to.
    pub fn new(
        provider: Arc<Provider>,
        kind: LlmProvider,
        base: &Url,
        model: String,
        api_key: Option<SecretString>,
        api_version: &str,
        validation_attempts: u32,
    ) -> Self {
        let mut url = crate::signals::endpoint(base, &["chat", "completions"]);
        if kind == LlmProvider::Azure {
            url.query_pairs_mut()
                .append_pair("api-version", api_version);
        }
        Self {
            provider,
            kind,
            url,
            model,
            api_key,
            validation_attempts: validation_attempts.max(1),
        }
    }

    fn source(&self) -> &'static str {
        match self.kind {
            LlmProvider::Azure => "azure-openai",
            _ => "openai-compatible",
        }
    }

    #[instrument(skip_all, fields(model = %self.model))]
    pub async fn analyze(&self, input: &AnalysisInput<'_>) -> Result<Analysis, AnalysisError> {
        let body = self.request_body(input);
        let mut calls = 0;
        let mut last_problem = String::new();
        for _ in 0..self.validation_attempts {
            let answer = self
                .provider
                .call(None, || {
                    let mut request = self
                        .provider
                        .client()
                        .post(self.url.clone())
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.to_string());
                    if let Some(key) = &self.api_key {
                        let (name, value) = match self.kind {
                            LlmProvider::Azure => ("api-key", key.expose_secret().to_owned()),
                            _ => (
                                AUTHORIZATION.as_str(),
                                format!("Bearer {}", key.expose_secret()),
                            ),
                        };
                        if let Ok(value) = HeaderValue::from_str(&value) {
                            request = request.header(name, value);
                        }
                    }
                    request
                })
                .await;
            let answer = match answer {
                Ok(answer) => {
                    calls += 1;
                    answer
                }
                Err(error) => {
                    let attempts = calls + error.attempts();
                    return Err(match error {
                        CallError::Transient { .. } => AnalysisError::Unavailable {
                            reason: error.to_string(),
                            attempts,
                        },
                        _ => AnalysisError::Rejected {
                            reason: error.to_string(),
                            attempts,
                        },
                    });
                }
            };
            match parse(&answer.body) {
                Ok((output, model)) => {
                    return Ok(Analysis {
                        provenance: Some(provenance(self.source(), Utc::now(), self.url.as_str())),
                        analyzer: AnalyzerKind::Llm as i32,
                        model: model.unwrap_or_else(|| self.model.clone()),
                        summary: output.summary,
                        sector: output.sector,
                        business_model: output.business_model,
                        risks: output.risks,
                        prompt_version: PROMPT_VERSION.to_owned(),
                    });
                }
                Err(problem) => {
                    tracing::warn!(%problem, attempt = calls, "model answer rejected");
                    last_problem = problem;
                }
            }
        }
        Err(AnalysisError::Rejected {
            reason: format!("model answer invalid after {calls} attempts: {last_problem}"),
            attempts: calls,
        })
    }

    fn request_body(&self, input: &AnalysisInput<'_>) -> serde_json::Value {
        json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": facts(input).to_string()},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "deal_analysis",
                    "strict": true,
                    "schema": schema(),
                },
            },
        })
    }
}

/// The JSON schema of the answer, with the same bounds [`validate`] checks.
fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["summary", "sector", "business_model", "risks"],
        "properties": {
            "summary": {"type": "string", "maxLength": MAX_SUMMARY_CHARS},
            "sector": {
                "type": "string",
                "description": format!("one of: {}", SECTORS.join(", ")),
            },
            "business_model": {"type": "string", "maxLength": MAX_BUSINESS_MODEL_CHARS},
            "risks": {
                "type": "array",
                "maxItems": MAX_RISKS,
                "items": {"type": "string", "maxLength": MAX_RISK_CHARS},
            },
        },
    })
}

/// The facts about the company, as a JSON document for the user message.
/// Text from outside is only ever data here, never instructions.
fn facts(input: &AnalysisInput<'_>) -> serde_json::Value {
    let mut facts = json!({
        "name": input.name,
        "website": input.website,
        "description": input.description,
        "sectors": SECTORS,
    });
    if let Some(g) = input.github {
        let recent_commits: i64 = g.weekly_commits.iter().rev().take(12).sum();
        facts["github"] = json!({
            "repository": if g.repo.is_empty() { g.owner.clone() } else { format!("{}/{}", g.owner, g.repo) },
            "description": truncate_chars(&g.description, 500),
            "stars": g.stars,
            "forks": g.forks,
            "contributors": g.contributors,
            "commits_last_12_weeks": recent_commits,
            "stars_per_day_last_30_days": g.star_velocity_30d,
            "language": g.primary_language,
            "topics": g.topics,
            "license": g.license,
        });
    }
    if let Some(c) = input.crunchbase {
        facts["crunchbase"] = json!({
            "description": truncate_chars(&c.short_description, 500),
            "funding_total_usd": c.funding_total.as_ref().map(|m| m.value_usd),
            "last_round": c.last_round.as_ref().map(|r| json!({"type": r.investment_type, "announced_on": r.announced_on})),
            "headcount_band": c.headcount_band,
            "founded_on": c.founded_on,
            "categories": c.categories,
            "country": c.location.as_ref().map(|l| l.country.clone()),
            "operating_status": c.operating_status,
        });
    }
    facts
}

/// The validated analysis in a chat completion, and the model that wrote
/// it; or what is wrong with the answer.
fn parse(body: &[u8]) -> Result<(AnalysisOutput, Option<String>), String> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| format!("not a chat completion: {e}"))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or("the completion has no choices")?;
    let message = choice.message.ok_or("the choice has no message")?;
    if let Some(refusal) = message.refusal.filter(|r| !r.trim().is_empty()) {
        return Err(format!(
            "the model refused: {}",
            truncate_chars(&refusal, 200)
        ));
    }
    let content = message.content.unwrap_or_default();
    if content.trim().is_empty() {
        return Err("the message content is empty".into());
    }
    let output: AnalysisOutput = serde_json::from_str(content.trim()).map_err(|e| {
        let cut = if choice.finish_reason.as_deref() == Some("length") {
            " (the answer was cut at the token limit)"
        } else {
            ""
        };
        format!("the content is not the requested JSON{cut}: {e}")
    })?;
    let output = validate(output)?;
    Ok((output, completion.model.filter(|m| !m.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "model": "m-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }))
        .unwrap()
    }

    #[test]
    fn the_fixture_completion_parses() {
        let body = include_bytes!("../../tests/fixtures/llm/chat-completion.json");
        let (output, model) = parse(body).unwrap();
        assert_eq!(output.sector, "climate-software");
        assert_eq!(output.risks.len(), 2);
        assert_eq!(model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    }

    #[test]
    fn wrong_answers_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (b"<html>bad gateway</html>", "not a chat completion"),
            (br#"{"choices": []}"#, "no choices"),
            (
                &completion("Sure! Here is the analysis: ..."),
                "not the requested JSON",
            ),
            (&completion(r#"{"summary": "x"}"#), "not the requested JSON"),
            (
                &completion(
                    r#"{"summary": "", "sector": "fintech", "business_model": "x", "risks": []}"#,
                ),
                "summary is empty",
            ),
            (
                &completion(r#"{"summary": "x", "sector": 7, "business_model": "x", "risks": []}"#),
                "not the requested JSON",
            ),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
