//! The CRM's configuration. Every key is documented in the README.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use dealmesh_auth::AuthConfig;
use dealmesh_eventlog::KafkaSettings;
use dealmesh_runtime::config::{ConfigError, Reader, Source};
use secrecy::{ExposeSecret, SecretString};

/// gRPC listen address. Default `0.0.0.0:50053`.
pub const GRPC_ADDR: &str = "DEALMESH_CRM_GRPC_ADDR";
/// Admin (health, metrics) listen address. Default `0.0.0.0:9093`.
pub const ADMIN_ADDR: &str = "DEALMESH_CRM_ADMIN_ADDR";
/// PostgreSQL URL of the read model. Required.
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Connections in the PostgreSQL pool. Default 16.
pub const DATABASE_MAX_CONNECTIONS: &str = "DEALMESH_DATABASE_MAX_CONNECTIONS";
/// PostgreSQL schema holding every CRM table. Default `crm`.
pub const SCHEMA: &str = "DEALMESH_CRM_SCHEMA";
/// Pipeline stages in order, comma-separated; the first is where a sourced
/// deal starts. Default `sourced,screening,diligence,ic,term_sheet,invested,passed`.
pub const STAGES: &str = "DEALMESH_CRM_STAGES";
/// Allowed stage moves, `from:to|to;from:to...`. Default: each stage to the
/// next and back to the previous, any open stage to `passed`, `passed` back
/// to the first stage.
pub const TRANSITIONS: &str = "DEALMESH_CRM_TRANSITIONS";
/// Most records the projector applies in one transaction. Default 500.
pub const BATCH_SIZE: &str = "DEALMESH_CRM_BATCH_SIZE";
/// How long the projector waits to fill a batch. Default `20ms`.
pub const BATCH_LINGER: &str = "DEALMESH_CRM_BATCH_LINGER";
/// Run the projector inside `serve`. Default true.
pub const RUN_PROJECTOR: &str = "DEALMESH_CRM_RUN_PROJECTOR";
/// How long a command waits for its event to be projected. Default `10s`.
pub const COMMAND_TIMEOUT: &str = "DEALMESH_CRM_COMMAND_TIMEOUT";
/// How often open votes are checked against their deadline. Default `1s`.
pub const VOTE_CLOSE_INTERVAL: &str = "DEALMESH_CRM_VOTE_CLOSE_INTERVAL";
/// Longest note body in characters. Default 10000.
pub const MAX_NOTE_CHARS: &str = "DEALMESH_CRM_MAX_NOTE_CHARS";
/// Create the topics on start if missing. Default true.
pub const PROVISION_TOPICS: &str = "DEALMESH_PROVISION_TOPICS";
/// Time to drain on SIGTERM. Default `25s`.
pub const SHUTDOWN_GRACE: &str = "DEALMESH_SHUTDOWN_GRACE";

const DEFAULT_STAGES: &str = "sourced,screening,diligence,ic,term_sheet,invested,passed";

/// Pipeline stages and the moves allowed between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub stages: Vec<String>,
    pub transitions: BTreeMap<String, BTreeSet<String>>,
}

impl Pipeline {
    /// Where a newly sourced deal starts.
    pub fn initial_stage(&self) -> &str {
        &self.stages[0]
    }

    pub fn is_stage(&self, stage: &str) -> bool {
        self.stages.iter().any(|s| s == stage)
    }

    pub fn allows(&self, from: &str, to: &str) -> bool {
        self.transitions
            .get(from)
            .is_some_and(|to_set| to_set.contains(to))
    }

    pub fn allowed_from(&self, from: &str) -> Vec<&str> {
        self.transitions
            .get(from)
            .map(|set| set.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The default transitions over `stages`: forward one, back one, any
    /// stage to `passed` and `passed` back to the start. `invested` is final.
    fn default_transitions(stages: &[String]) -> BTreeMap<String, BTreeSet<String>> {
        let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let open: Vec<&String> = stages
            .iter()
            .filter(|s| *s != "passed" && *s != "invested")
            .collect();
        for (i, stage) in open.iter().enumerate() {
            let entry = map.entry((*stage).clone()).or_default();
            if let Some(next) = stages.get(stages.iter().position(|s| s == *stage).unwrap_or(0) + 1)
                && next != "passed"
            {
                entry.insert(next.clone());
            }
            if i > 0 {
                entry.insert(open[i - 1].clone());
            }
            if stages.iter().any(|s| s == "passed") {
                entry.insert("passed".to_owned());
            }
        }
        if stages.iter().any(|s| s == "passed") {
            map.entry("passed".to_owned())
                .or_default()
                .insert(stages[0].clone());
        }
        map
    }

    pub fn parse(stages: &str, transitions: Option<&str>) -> Result<Self, ConfigError> {
        let stages: Vec<String> = stages
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if stages.is_empty() {
            return Err(ConfigError::new(STAGES, "needs at least one stage"));
        }
        for stage in &stages {
            if !is_name(stage) {
                return Err(ConfigError::new(
                    STAGES,
                    format!("stage {stage:?}: use lower-case letters, digits and '_'"),
                ));
            }
        }
        if stages.iter().collect::<BTreeSet<_>>().len() != stages.len() {
            return Err(ConfigError::new(STAGES, "a stage is listed twice"));
        }
        let transitions = match transitions {
            None => Self::default_transitions(&stages),
            Some(text) => {
                let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
                    let Some((from, tos)) = rule.split_once(':') else {
                        return Err(ConfigError::new(
                            TRANSITIONS,
                            format!("rule {rule:?}: expected from:to|to"),
                        ));
                    };
                    let from = from.trim();
                    for stage in std::iter::once(from).chain(tos.split('|').map(str::trim)) {
                        if !stages.iter().any(|s| s == stage) {
                            return Err(ConfigError::new(
                                TRANSITIONS,
                                format!("rule {rule:?}: {stage:?} is not a stage"),
                            ));
                        }
                    }
                    map.entry(from.to_owned())
                        .or_default()
                        .extend(tos.split('|').map(|s| s.trim().to_owned()));
                }
                map
            }
        };
        Ok(Self {
            stages,
            transitions,
        })
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::parse(DEFAULT_STAGES, None).unwrap_or_else(|_| Self {
            stages: vec!["sourced".to_owned()],
            transitions: BTreeMap::new(),
        })
    }
}

/// Lower-case letters, digits and `_`, starting with a letter or `_`, at
/// most 63 characters: safe to use as a PostgreSQL identifier unquoted.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Clone)]
pub struct CrmConfig {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub schema: String,
    pub pipeline: Pipeline,
    pub batch_size: usize,
    pub batch_linger: Duration,
    pub run_projector: bool,
    pub command_timeout: Duration,
    pub vote_close_interval: Duration,
    pub max_note_chars: usize,
    pub provision_topics: bool,
    pub shutdown_grace: Duration,
    pub kafka: KafkaSettings,
    /// Token verification; always set for `serve`.
    pub auth: Option<AuthConfig>,
}

impl CrmConfig {
    /// The configuration of `serve`: token verification is required.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Self::parse(source, true)
    }

    /// The configuration of commands that serve no API (`migrate`,
    /// `rebuild`, `audit`): token settings are read only when given.
    pub fn for_offline_commands(source: &dyn Source) -> Result<Self, ConfigError> {
        Self::parse(source, false)
    }

    fn parse(source: &dyn Source, serves_api: bool) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let schema = r.string(SCHEMA, "crm");
        if !is_name(&schema) {
            return Err(ConfigError::new(
                SCHEMA,
                "use lower-case letters, digits and '_' (at most 63), starting with a letter",
            ));
        }
        let pipeline = Pipeline::parse(
            &r.string(STAGES, DEFAULT_STAGES),
            r.optional_string(TRANSITIONS).as_deref(),
        )?;
        let batch_size: usize = r.parse(BATCH_SIZE, 500)?;
        if batch_size == 0 {
            return Err(ConfigError::new(BATCH_SIZE, "must be at least 1"));
        }
        let max_note_chars: usize = r.parse(MAX_NOTE_CHARS, 10_000)?;
        if max_note_chars == 0 {
            return Err(ConfigError::new(MAX_NOTE_CHARS, "must be at least 1"));
        }
        Ok(Self {
            grpc_addr: r.parse(GRPC_ADDR, SocketAddr::from(([0, 0, 0, 0], 50053)))?,
            admin_addr: r.parse(ADMIN_ADDR, SocketAddr::from(([0, 0, 0, 0], 9093)))?,
            database_url: SecretString::from(r.required_string(DATABASE_URL)?),
            database_max_connections: r.parse(DATABASE_MAX_CONNECTIONS, 16)?,
            schema,
            pipeline,
            batch_size,
            batch_linger: r.duration(BATCH_LINGER, Duration::from_millis(20))?,
            run_projector: r.bool(RUN_PROJECTOR, true)?,
            command_timeout: r.duration(COMMAND_TIMEOUT, Duration::from_secs(10))?,
            vote_close_interval: r.duration(VOTE_CLOSE_INTERVAL, Duration::from_secs(1))?,
            max_note_chars,
            provision_topics: r.bool(PROVISION_TOPICS, true)?,
            shutdown_grace: r
                .duration(SHUTDOWN_GRACE, dealmesh_runtime::shutdown::DEFAULT_GRACE)?,
            kafka: KafkaSettings::from_source(source)?,
            auth: if serves_api
                || r.optional_string(dealmesh_auth::JWT_HS256_SECRET).is_some()
                || r.optional_string(dealmesh_auth::JWT_JWKS_URL).is_some()
            {
                Some(AuthConfig::from_source(source)?)
            } else {
                None
            },
        })
    }
}

/// Prints the effective configuration with the database password redacted
/// (the auth settings redact their own secret).
impl fmt::Debug for CrmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let database_url = dealmesh_runtime::config::redact_url(self.database_url.expose_secret());
        f.debug_struct("CrmConfig")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("database_url", &database_url)
            .field("database_max_connections", &self.database_max_connections)
            .field("schema", &self.schema)
            .field("pipeline", &self.pipeline)
            .field("batch_size", &self.batch_size)
            .field("batch_linger", &self.batch_linger)
            .field("run_projector", &self.run_projector)
            .field("command_timeout", &self.command_timeout)
            .field("vote_close_interval", &self.vote_close_interval)
            .field("max_note_chars", &self.max_note_chars)
            .field("provision_topics", &self.provision_topics)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("kafka", &self.kafka)
            .field("auth", &self.auth)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_runtime::config::MapSource;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            (DATABASE_URL, "postgres://app:s3cret@db:5432/dealmesh"),
            (
                "DEALMESH_JWT_HS256_SECRET",
                "dev-secret-0123456789abcdef0123456",
            ),
        ]
    }

    #[test]
    fn default_pipeline_moves_forward_back_and_to_passed() {
        let p = Pipeline::default();
        assert_eq!(p.initial_stage(), "sourced");
        assert!(p.allows("sourced", "screening"));
        assert!(p.allows("screening", "sourced"));
        assert!(p.allows("diligence", "passed"));
        assert!(p.allows("term_sheet", "invested"));
        assert!(p.allows("passed", "sourced"));
        assert!(!p.allows("sourced", "invested"));
        assert!(!p.allows("invested", "passed"));
        assert!(p.allows("term_sheet", "passed"));
    }

    #[test]
    fn transitions_are_configuration_and_name_unknown_stages() {
        let p = Pipeline::parse("a,b,c", Some("a:b|c; b:a")).unwrap();
        assert!(p.allows("a", "c"));
        assert!(!p.allows("c", "a"));
        let err = Pipeline::parse("a,b", Some("a:z")).unwrap_err();
        assert_eq!(err.key, TRANSITIONS);
        assert!(err.message.contains("\"z\""), "{err}");
    }

    #[test]
    fn bad_schema_is_refused_and_password_redacted() {
        let mut pairs = base();
        pairs.push((SCHEMA, "Robert'); drop"));
        let err = CrmConfig::from_source(&MapSource::new(pairs)).unwrap_err();
        assert_eq!(err.key, SCHEMA);
        let config = CrmConfig::from_source(&MapSource::new(base())).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("dev-secret-0123"), "{printed}");
    }
}
