//! The enrich service's configuration. Every key is documented in the README.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use dealmesh_eventlog::KafkaSettings;
use dealmesh_runtime::config::{ConfigError, Reader, Source};
use secrecy::SecretString;
use url::Url;

/// Admin (health, metrics) listen address. Default `0.0.0.0:9090`.
pub const ADMIN_ADDR: &str = "DEALMESH_ENRICH_ADMIN_ADDR";
/// Consumer group of the service. Default `dealmesh-enrich`.
pub const GROUP_ID: &str = "DEALMESH_ENRICH_GROUP_ID";
/// Deals enriched at once (one deal's events are still handled one at a
/// time, in order). Default 32.
pub const CONCURRENCY: &str = "DEALMESH_ENRICH_CONCURRENCY";
/// How often finished offsets are committed. Default `1s`.
pub const COMMIT_INTERVAL: &str = "DEALMESH_ENRICH_COMMIT_INTERVAL";
/// Attempts per provider call before the deal gets `EnrichmentFailed`.
/// Default 4.
pub const RETRY_ATTEMPTS: &str = "DEALMESH_ENRICH_RETRY_ATTEMPTS";
/// First retry delay; doubles each attempt, with jitter. Default `500ms`.
pub const RETRY_BASE: &str = "DEALMESH_ENRICH_RETRY_BASE";
/// Longest wait between attempts, also the cap on an honoured
/// `Retry-After` or `X-RateLimit-Reset`. Default `30s`.
pub const RETRY_MAX: &str = "DEALMESH_ENRICH_RETRY_MAX";
/// Timeout of one GitHub or Crunchbase request. Default `10s`.
pub const HTTP_TIMEOUT: &str = "DEALMESH_ENRICH_HTTP_TIMEOUT";
/// Characters of a deal's description kept for analysis. Default 4000.
pub const MAX_DESCRIPTION_CHARS: &str = "DEALMESH_ENRICH_MAX_DESCRIPTION_CHARS";

/// GitHub REST API base URL. Default `https://api.github.com`.
pub const GITHUB_BASE_URL: &str = "DEALMESH_ENRICH_GITHUB_BASE_URL";
/// GitHub token (sent as `Authorization: Bearer`). Optional: unauthenticated
/// requests get a much lower rate limit.
pub const GITHUB_TOKEN: &str = "DEALMESH_ENRICH_GITHUB_TOKEN";
/// Request rate toward GitHub, `N/s`, `N/m` or `N/h`, or `off`. Default
/// `5000/h`.
pub const GITHUB_RATE: &str = "DEALMESH_ENRICH_GITHUB_RATE";
/// Set to `false` to skip GitHub entirely. Default true.
pub const GITHUB_ENABLED: &str = "DEALMESH_ENRICH_GITHUB_ENABLED";

/// Crunchbase API base URL. Default `https://api.crunchbase.com`.
pub const CRUNCHBASE_BASE_URL: &str = "DEALMESH_ENRICH_CRUNCHBASE_BASE_URL";
/// Crunchbase user key (sent as `X-cb-user-key`). Without it Crunchbase is
/// not queried and each deal records a gap.
pub const CRUNCHBASE_API_KEY: &str = "DEALMESH_ENRICH_CRUNCHBASE_API_KEY";
/// Request rate toward Crunchbase. Default `200/m`.
pub const CRUNCHBASE_RATE: &str = "DEALMESH_ENRICH_CRUNCHBASE_RATE";

/// LLM provider: `openai` (also vLLM, Ollama and other compatible
/// gateways), `azure`, or `builtin`. Default `builtin` unless a base URL is
/// set, then `openai`.
pub const LLM_PROVIDER: &str = "DEALMESH_ENRICH_LLM_PROVIDER";
/// Base URL the chat-completions path is appended to, e.g.
/// `https://api.openai.com/v1`, `http://localhost:11434/v1`, or for Azure
/// `https://NAME.openai.azure.com/openai/deployments/DEPLOYMENT`.
pub const LLM_BASE_URL: &str = "DEALMESH_ENRICH_LLM_BASE_URL";
/// Model name sent in the request. Default `gpt-4o-mini`.
pub const LLM_MODEL: &str = "DEALMESH_ENRICH_LLM_MODEL";
/// API key: `Authorization: Bearer` (openai) or `api-key` (azure).
pub const LLM_API_KEY: &str = "DEALMESH_ENRICH_LLM_API_KEY";
/// Azure OpenAI `api-version`. Default `2024-10-21`.
pub const LLM_API_VERSION: &str = "DEALMESH_ENRICH_LLM_API_VERSION";
/// Timeout of one chat-completions request. Default `60s`.
pub const LLM_TIMEOUT: &str = "DEALMESH_ENRICH_LLM_TIMEOUT";
/// Request rate toward the LLM. Default `500/m`.
pub const LLM_RATE: &str = "DEALMESH_ENRICH_LLM_RATE";
/// Attempts when the model answers with output that fails validation.
/// Default 3.
pub const LLM_VALIDATION_ATTEMPTS: &str = "DEALMESH_ENRICH_LLM_VALIDATION_ATTEMPTS";

/// Create the topics on start if missing. Default true.
pub const PROVISION_TOPICS: &str = "DEALMESH_PROVISION_TOPICS";
/// Time to drain on SIGTERM. Default `25s`.
pub const SHUTDOWN_GRACE: &str = "DEALMESH_SHUTDOWN_GRACE";

/// Which analyzer writes the summary, sector, business model and risks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProvider {
    /// The deterministic built-in analyzer: no key, no network.
    Builtin,
    /// Any OpenAI-compatible endpoint (`Authorization: Bearer`).
    OpenAi,
    /// Azure OpenAI (`api-key` header, `api-version` query parameter).
    Azure,
}

#[derive(Clone)]
pub struct LlmConfig {
    pub provider: LlmProvider,
    pub base_url: Option<Url>,
    pub model: String,
    pub api_key: Option<SecretString>,
    pub api_version: String,
    pub timeout: Duration,
    pub rate: Option<Rate>,
    pub validation_attempts: u32,
}

/// A request rate: `per` requests... one `every` period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m`, `N/h`; `off` (or `0`) means no limit.
    pub fn parse(value: &str) -> Result<Option<Rate>, String> {
        let v = value.trim().to_ascii_lowercase();
        if v == "off" || v == "0" || v == "none" {
            return Ok(None);
        }
        let bad = || format!("invalid rate {value:?}: expected e.g. 5000/h, 200/m, 10/s or off");
        let (n, unit) = v.split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(NonZeroU32::new(requests).map(|requests| Rate { requests, per }))
    }
}

#[derive(Clone)]
pub struct GithubConfig {
    pub enabled: bool,
    pub base_url: Url,
    pub token: Option<SecretString>,
    pub rate: Option<Rate>,
}

#[derive(Clone)]
pub struct CrunchbaseConfig {
    pub base_url: Url,
    pub api_key: Option<SecretString>,
    pub rate: Option<Rate>,
}

/// How provider calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

#[derive(Clone)]
pub struct EnrichConfig {
    pub admin_addr: SocketAddr,
    pub group_id: String,
    pub concurrency: usize,
    pub commit_interval: Duration,
    pub retry: RetryPolicy,
    pub http_timeout: Duration,
    pub max_description_chars: usize,
    pub github: GithubConfig,
    pub crunchbase: CrunchbaseConfig,
    pub llm: LlmConfig,
    pub provision_topics: bool,
    pub shutdown_grace: Duration,
    pub kafka: KafkaSettings,
}

fn url(r: &Reader<'_>, key: &str, default: &str) -> Result<Url, ConfigError> {
    let raw = r.string(key, default);
    let parsed =
        Url::parse(&raw).map_err(|e| ConfigError::new(key, format!("invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(key, "must be an http or https URL"));
    }
    Ok(parsed)
}

fn rate(r: &Reader<'_>, key: &str, default: &str) -> Result<Option<Rate>, ConfigError> {
    Rate::parse(&r.string(key, default)).map_err(|message| ConfigError::new(key, message))
}

impl EnrichConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let concurrency: usize = r.parse(CONCURRENCY, 32)?;
        if concurrency == 0 {
            return Err(ConfigError::new(CONCURRENCY, "must be at least 1"));
        }
        let attempts: u32 = r.parse(RETRY_ATTEMPTS, 4)?;
        if attempts == 0 {
            return Err(ConfigError::new(RETRY_ATTEMPTS, "must be at least 1"));
        }
        let max_description_chars: usize = r.parse(MAX_DESCRIPTION_CHARS, 4000)?;
        if max_description_chars < 100 {
            return Err(ConfigError::new(
                MAX_DESCRIPTION_CHARS,
                "must be at least 100",
            ));
        }
        let llm_base_url = match r.optional_string(LLM_BASE_URL) {
            Some(_) => Some(url(&r, LLM_BASE_URL, "")?),
            None => None,
        };
        let provider = match r
            .optional_string(LLM_PROVIDER)
            .map(|p| p.to_ascii_lowercase())
        {
            None if llm_base_url.is_some() => LlmProvider::OpenAi,
            None => LlmProvider::Builtin,
            Some(p) => match p.as_str() {
                "builtin" | "none" => LlmProvider::Builtin,
                "openai" | "vllm" | "ollama" | "openai-compatible" => LlmProvider::OpenAi,
                "azure" | "azure-openai" => LlmProvider::Azure,
                _ => {
                    return Err(ConfigError::new(
                        LLM_PROVIDER,
                        format!("unknown provider {p:?}: expected openai, azure or builtin"),
                    ));
                }
            },
        };
        if provider != LlmProvider::Builtin && llm_base_url.is_none() {
            return Err(ConfigError::new(
                LLM_BASE_URL,
                "is required when an LLM provider is configured",
            ));
        }
        let validation_attempts: u32 = r.parse(LLM_VALIDATION_ATTEMPTS, 3)?;
        if validation_attempts == 0 {
            return Err(ConfigError::new(
                LLM_VALIDATION_ATTEMPTS,
                "must be at least 1",
            ));
        }
        Ok(Self {
            admin_addr: r.parse(ADMIN_ADDR, SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            group_id: r.string(GROUP_ID, "dealmesh-enrich"),
            concurrency,
            commit_interval: r.duration(COMMIT_INTERVAL, Duration::from_secs(1))?,
            retry: RetryPolicy {
                attempts,
                base: r.duration(RETRY_BASE, Duration::from_millis(500))?,
                max: r.duration(RETRY_MAX, Duration::from_secs(30))?,
            },
            http_timeout: r.duration(HTTP_TIMEOUT, Duration::from_secs(10))?,
            max_description_chars,
            github: GithubConfig {
                enabled: r.bool(GITHUB_ENABLED, true)?,
                base_url: url(&r, GITHUB_BASE_URL, "https://api.github.com")?,
                token: r.secret(GITHUB_TOKEN),
                rate: rate(&r, GITHUB_RATE, "5000/h")?,
            },
            crunchbase: CrunchbaseConfig {
                base_url: url(&r, CRUNCHBASE_BASE_URL, "https://api.crunchbase.com")?,
                api_key: r.secret(CRUNCHBASE_API_KEY),
                rate: rate(&r, CRUNCHBASE_RATE, "200/m")?,
            },
            llm: LlmConfig {
                provider,
                base_url: llm_base_url,
                model: r.string(LLM_MODEL, "gpt-4o-mini"),
                api_key: r.secret(LLM_API_KEY),
                api_version: r.string(LLM_API_VERSION, "2024-10-21"),
                timeout: r.duration(LLM_TIMEOUT, Duration::from_secs(60))?,
                rate: rate(&r, LLM_RATE, "500/m")?,
                validation_attempts,
            },
            provision_topics: r.bool(PROVISION_TOPICS, true)?,
            shutdown_grace: r
                .duration(SHUTDOWN_GRACE, dealmesh_runtime::shutdown::DEFAULT_GRACE)?,
            kafka: KafkaSettings::from_source(source)?,
        })
    }
}

fn shown(secret: &Option<SecretString>) -> &'static str {
    if secret.is_some() {
        "[REDACTED]"
    } else {
        "unset"
    }
}

/// Prints the effective configuration; keys and tokens are only said to be
/// set or unset.
impl fmt::Debug for EnrichConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrichConfig")
            .field("admin_addr", &self.admin_addr)
            .field("group_id", &self.group_id)
            .field("concurrency", &self.concurrency)
            .field("commit_interval", &self.commit_interval)
            .field("retry", &self.retry)
            .field("http_timeout", &self.http_timeout)
            .field("max_description_chars", &self.max_description_chars)
            .field("github_enabled", &self.github.enabled)
            .field("github_base_url", &self.github.base_url.as_str())
            .field("github_token", &shown(&self.github.token))
            .field("github_rate", &self.github.rate)
            .field("crunchbase_base_url", &self.crunchbase.base_url.as_str())
            .field("crunchbase_api_key", &shown(&self.crunchbase.api_key))
            .field("crunchbase_rate", &self.crunchbase.rate)
            .field("llm_provider", &self.llm.provider)
            .field("llm_base_url", &self.llm.base_url.as_ref().map(Url::as_str))
            .field("llm_model", &self.llm.model)
            .field("llm_api_key", &shown(&self.llm.api_key))
            .field("llm_timeout", &self.llm.timeout)
            .field("llm_rate", &self.llm.rate)
            .field("provision_topics", &self.provision_topics)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("kafka", &self.kafka)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_runtime::config::MapSource;

    #[test]
    fn defaults_run_with_no_keys_and_the_builtin_analyzer() {
        let config = EnrichConfig::from_source(&MapSource::default()).unwrap();
        assert_eq!(config.llm.provider, LlmProvider::Builtin);
        assert!(config.crunchbase.api_key.is_none());
        assert_eq!(config.concurrency, 32);
    }

    #[test]
    fn secrets_never_reach_the_printed_config() {
        let config = EnrichConfig::from_source(&MapSource::new([
            (GITHUB_TOKEN, "ghp_supersecret"),
            (CRUNCHBASE_API_KEY, "cb-supersecret"),
            (LLM_BASE_URL, "http://127.0.0.1:11434/v1"),
            (LLM_API_KEY, "sk-supersecret"),
        ]))
        .unwrap();
        assert_eq!(config.llm.provider, LlmProvider::OpenAi);
        let printed = format!("{config:?}");
        assert!(!printed.contains("supersecret"), "{printed}");
        assert!(printed.contains("11434"), "{printed}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (GITHUB_RATE, "fast"),
            (CONCURRENCY, "0"),
            (LLM_PROVIDER, "skynet"),
            (GITHUB_BASE_URL, "ftp://x"),
            (RETRY_BASE, "soon"),
        ];
        for (key, value) in cases {
            let err = EnrichConfig::from_source(&MapSource::new([(key, value)])).unwrap_err();
            assert_eq!(err.key, key, "{value}");
        }
        let err =
            EnrichConfig::from_source(&MapSource::new([(LLM_PROVIDER, "azure")])).unwrap_err();
        assert_eq!(err.key, LLM_BASE_URL);
    }

    #[test]
    fn rates_parse_and_off_means_unlimited() {
        let rate = Rate::parse("200/m").unwrap().unwrap();
        assert_eq!(rate.requests.get(), 200);
        assert_eq!(rate.per, Duration::from_secs(60));
        assert_eq!(Rate::parse("off").unwrap(), None);
        assert!(Rate::parse("200").is_err());
    }
}
