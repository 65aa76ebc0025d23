//! The scoring service's configuration. Every key is documented in the
//! README.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dealmesh_auth::AuthConfig;
use dealmesh_eventlog::KafkaSettings;
use dealmesh_runtime::config::{ConfigError, Reader, Source};
use dealmesh_runtime::database::DatabaseSettings;

/// gRPC listen address. Default `0.0.0.0:50054`.
pub const GRPC_ADDR: &str = "DEALMESH_SCORING_GRPC_ADDR";
/// Admin (health, metrics) listen address. Default `0.0.0.0:9094`.
pub const ADMIN_ADDR: &str = "DEALMESH_SCORING_ADMIN_ADDR";
/// The thesis model file (TOML). Default `thesis.toml`.
pub const MODEL_FILE: &str = "DEALMESH_SCORING_MODEL_FILE";
/// How often the model file is checked for changes; `0s` turns polling off
/// (SIGHUP and the ReloadScoringModel RPC still reload). Default `5s`.
pub const MODEL_POLL: &str = "DEALMESH_SCORING_MODEL_POLL";
/// Re-score every stored deal when the model changes, as `rescore` does.
/// Default false (run `dealmesh-scoring rescore` by hand). With several
/// replicas each re-scores; the ids are the same, so consumers drop the
/// copies.
pub const RESCORE_ON_RELOAD: &str = "DEALMESH_SCORING_RESCORE_ON_RELOAD";
/// Consumer group id. Default `<topic prefix>scoring`.
pub const GROUP_ID: &str = "DEALMESH_SCORING_GROUP_ID";
/// Deals scored concurrently (one deal's events stay in order). Default 16.
pub const CONCURRENCY: &str = "DEALMESH_SCORING_CONCURRENCY";
/// Connections in the PostgreSQL pool. Default 16.
pub use dealmesh_runtime::database::DATABASE_MAX_CONNECTIONS;
/// PostgreSQL URL of the scoring state (created if missing). Required.
pub use dealmesh_runtime::database::DATABASE_URL;
/// Create the topics on start if missing. Default true.
pub const PROVISION_TOPICS: &str = "DEALMESH_PROVISION_TOPICS";
/// Time to drain on SIGTERM. Default `25s`.
pub const SHUTDOWN_GRACE: &str = "DEALMESH_SHUTDOWN_GRACE";

#[derive(Clone)]
pub struct ScoringConfig {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub model_file: PathBuf,
    pub model_poll: Duration,
    pub rescore_on_reload: bool,
    pub group_id: String,
    pub concurrency: usize,
    pub database: DatabaseSettings,
    pub provision_topics: bool,
    pub shutdown_grace: Duration,
    pub kafka: KafkaSettings,
    pub auth: AuthConfig,
}

impl ScoringConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let kafka = KafkaSettings::from_source(source)?;
        let concurrency: usize = r.parse(CONCURRENCY, 16)?;
        if concurrency == 0 {
            return Err(ConfigError::new(CONCURRENCY, "must be at least 1"));
        }
        let model_file = PathBuf::from(r.string(MODEL_FILE, "thesis.toml"));
        if model_file.as_os_str().is_empty() {
            return Err(ConfigError::new(MODEL_FILE, "must not be empty"));
        }
        Ok(Self {
            grpc_addr: r.parse(GRPC_ADDR, SocketAddr::from(([0, 0, 0, 0], 50054)))?,
            admin_addr: r.parse(ADMIN_ADDR, SocketAddr::from(([0, 0, 0, 0], 9094)))?,
            model_file,
            model_poll: r.duration(MODEL_POLL, Duration::from_secs(5))?,
            rescore_on_reload: r.bool(RESCORE_ON_RELOAD, false)?,
            group_id: r.string(GROUP_ID, &format!("{}scoring", kafka.topic_prefix)),
            concurrency,
            database: DatabaseSettings::from_source(source)?,
            provision_topics: r.bool(PROVISION_TOPICS, true)?,
            shutdown_grace: r
                .duration(SHUTDOWN_GRACE, dealmesh_runtime::shutdown::DEFAULT_GRACE)?,
            auth: AuthConfig::from_source(source)?,
            kafka,
        })
    }
}

/// Prints the effective configuration; the database and auth settings
/// redact their own secrets.
impl fmt::Debug for ScoringConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScoringConfig")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("model_file", &self.model_file)
            .field("model_poll", &self.model_poll)
            .field("rescore_on_reload", &self.rescore_on_reload)
            .field("group_id", &self.group_id)
            .field("concurrency", &self.concurrency)
            .field("database", &self.database)
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
            (DATABASE_URL, "postgres://app:s3cret@db:5432/scoring"),
            (
                dealmesh_auth::JWT_HS256_SECRET,
                "jwt-secret-0123456789abcdef0123456789",
            ),
        ]
    }

    #[test]
    fn secrets_never_reach_the_printed_config() {
        let config = ScoringConfig::from_source(&MapSource::new(base())).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("jwt-secret-0123456789"), "{printed}");
        assert_eq!(config.group_id, "dealmesh.scoring");
        assert_eq!(config.model_poll, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut pairs = base();
        pairs.push((CONCURRENCY, "0"));
        let err = ScoringConfig::from_source(&MapSource::new(pairs)).unwrap_err();
        assert_eq!(err.key, CONCURRENCY);
        let mut pairs = base();
        pairs.push((MODEL_POLL, "soon"));
        let err = ScoringConfig::from_source(&MapSource::new(pairs)).unwrap_err();
        assert_eq!(err.key, MODEL_POLL);
        let err = ScoringConfig::from_source(&MapSource::default()).unwrap_err();
        assert_eq!(err.key, DATABASE_URL);
    }
}
