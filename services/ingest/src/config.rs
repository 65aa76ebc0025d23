//! The ingest service's configuration. Every key is documented in the README.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use dealmesh_eventlog::KafkaSettings;
use dealmesh_runtime::config::{ConfigError, Reader, Source};
use secrecy::{ExposeSecret, SecretString};

/// gRPC listen address. Default `0.0.0.0:50051`.
pub const GRPC_ADDR: &str = "DEALMESH_INGEST_GRPC_ADDR";
/// Webhook HTTP listen address. Default `0.0.0.0:8080`.
pub const HTTP_ADDR: &str = "DEALMESH_INGEST_HTTP_ADDR";
/// Admin (health, metrics) listen address. Default `0.0.0.0:9090`.
pub const ADMIN_ADDR: &str = "DEALMESH_INGEST_ADMIN_ADDR";
/// PostgreSQL URL of the idempotency store. Required.
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Connections in the PostgreSQL pool. Default 16.
pub const DATABASE_MAX_CONNECTIONS: &str = "DEALMESH_DATABASE_MAX_CONNECTIONS";
/// Largest `SubmitDeals` batch. Default 1000.
pub const MAX_BATCH: &str = "DEALMESH_INGEST_MAX_BATCH";
/// Largest webhook body in bytes. Default 262144 (256 KiB).
pub const MAX_BODY_BYTES: &str = "DEALMESH_INGEST_MAX_BODY_BYTES";
/// `DEALMESH_WEBHOOK_SECRET_<SOURCE>`: the HMAC-SHA256 secret of webhook
/// source `<source>` (lower-cased, `_` read as `-`). A source without a
/// secret is unknown and its webhooks are refused.
pub const WEBHOOK_SECRET_PREFIX: &str = "DEALMESH_WEBHOOK_SECRET_";
/// How long an idempotency key is remembered: a retry within it is answered
/// from the record, a submission under an older key is new again. `0` keeps
/// keys forever. Default `30d`; at least `1h` otherwise.
pub const KEY_RETENTION: &str = "DEALMESH_INGEST_KEY_RETENTION";
/// Time between two purges of keys past their retention. Default `1h`.
pub const KEY_PURGE_INTERVAL: &str = "DEALMESH_INGEST_KEY_PURGE_INTERVAL";
/// Create the topics on start if missing. Default true.
pub const PROVISION_TOPICS: &str = "DEALMESH_PROVISION_TOPICS";
/// Time to drain on SIGTERM. Default `25s`.
pub const SHUTDOWN_GRACE: &str = "DEALMESH_SHUTDOWN_GRACE";

// Sourcing pollers (see POLLERS.md).

/// Run the GitHub poller in `serve`. Default false.
pub const GITHUB_ENABLED: &str = "DEALMESH_INGEST_GITHUB_ENABLED";
/// GitHub REST API base URL. Default `https://api.github.com`.
pub const GITHUB_API_URL: &str = "DEALMESH_INGEST_GITHUB_API_URL";
/// GitHub token, sent as a bearer token. Optional (unauthenticated search is
/// limited to 10 requests a minute).
pub const GITHUB_TOKEN: &str = "DEALMESH_INGEST_GITHUB_TOKEN";
/// Repository searches, `;`-separated, in GitHub search syntax, e.g.
/// `topic:llm stars:>500;language:rust topic:database`.
pub const GITHUB_SEARCHES: &str = "DEALMESH_INGEST_GITHUB_SEARCHES";
/// Order of search results: `updated` (default: recently pushed first, so
/// new activity lands on page 1, which the ETag covers), `stars`, `forks`,
/// `help-wanted-issues`, or `best-match` (GitHub's default order).
pub const GITHUB_SORT: &str = "DEALMESH_INGEST_GITHUB_SORT";
/// Time between two GitHub polls. Default `15m`.
pub const GITHUB_INTERVAL: &str = "DEALMESH_INGEST_GITHUB_INTERVAL";
/// Results per search page, 1 to 100. Default 100.
pub const GITHUB_PER_PAGE: &str = "DEALMESH_INGEST_GITHUB_PER_PAGE";
/// Pages fetched per search and run; the next run resumes after them.
/// Default 10 (GitHub serves at most 1000 results per search).
pub const GITHUB_MAX_PAGES: &str = "DEALMESH_INGEST_GITHUB_MAX_PAGES";
/// Run the Crunchbase poller in `serve`. Default false.
pub const CRUNCHBASE_ENABLED: &str = "DEALMESH_INGEST_CRUNCHBASE_ENABLED";
/// Crunchbase API base URL. Default `https://api.crunchbase.com`.
pub const CRUNCHBASE_API_URL: &str = "DEALMESH_INGEST_CRUNCHBASE_API_URL";
/// Crunchbase v4 user key (`X-cb-user-key`). Required when the Crunchbase
/// poller is enabled or run.
pub const CRUNCHBASE_USER_KEY: &str = "DEALMESH_INGEST_CRUNCHBASE_USER_KEY";
/// Organization searches as a JSON object, search name to the body of
/// `POST /api/v4/searches/organizations` (without `after_id`).
pub const CRUNCHBASE_SEARCHES: &str = "DEALMESH_INGEST_CRUNCHBASE_SEARCHES";
/// Path of a JSON file holding the same object as
/// [`CRUNCHBASE_SEARCHES`]; the two are merged, a name in both is an error.
pub const CRUNCHBASE_SEARCHES_FILE: &str = "DEALMESH_INGEST_CRUNCHBASE_SEARCHES_FILE";
/// Crunchbase calls per minute, 1 to 200 (the documented limit). Default 180.
pub const CRUNCHBASE_CALLS_PER_MINUTE: &str = "DEALMESH_INGEST_CRUNCHBASE_CALLS_PER_MINUTE";
/// Time between two Crunchbase polls. Default `1h`.
pub const CRUNCHBASE_INTERVAL: &str = "DEALMESH_INGEST_CRUNCHBASE_INTERVAL";
/// Pages fetched per search and run. Default 20.
pub const CRUNCHBASE_MAX_PAGES: &str = "DEALMESH_INGEST_CRUNCHBASE_MAX_PAGES";
/// Timeout of one provider HTTP request. Default `30s`.
pub const POLLER_HTTP_TIMEOUT: &str = "DEALMESH_INGEST_POLLER_HTTP_TIMEOUT";
/// Attempts per provider request before a run gives up (5xx, timeouts, rate
/// limits). Default 5.
pub const POLLER_MAX_ATTEMPTS: &str = "DEALMESH_INGEST_POLLER_MAX_ATTEMPTS";

#[derive(Clone)]
pub struct IngestConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub webhook_secrets: BTreeMap<String, SecretString>,
    /// `None`: keys are kept forever.
    pub key_retention: Option<Duration>,
    pub key_purge_interval: Duration,
    pub provision_topics: bool,
    pub shutdown_grace: Duration,
    pub kafka: KafkaSettings,
    pub github: crate::pollers::GithubSettings,
    pub crunchbase: crate::pollers::CrunchbaseSettings,
    pub poller_http: crate::pollers::HttpSettings,
}

impl IngestConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let max_batch: usize = r.parse(MAX_BATCH, 1000)?;
        if max_batch == 0 {
            return Err(ConfigError::new(MAX_BATCH, "must be at least 1"));
        }
        let mut webhook_secrets = BTreeMap::new();
        for (key, value) in r.with_prefix(WEBHOOK_SECRET_PREFIX) {
            let name = key[WEBHOOK_SECRET_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace('_', "-");
            if !crate::validate::is_source_name(&name) {
                return Err(ConfigError::new(
                    key,
                    "source name must be lower-case letters, digits, '-' or '_'",
                ));
            }
            if value.len() < 16 {
                return Err(ConfigError::new(
                    key,
                    "secret must be at least 16 characters",
                ));
            }
            webhook_secrets.insert(name, SecretString::from(value));
        }
        let key_retention = r.duration(KEY_RETENTION, Duration::from_secs(30 * 86_400))?;
        if !key_retention.is_zero() && key_retention < Duration::from_secs(3600) {
            return Err(ConfigError::new(
                KEY_RETENTION,
                "must be 0 (keep keys forever) or at least 1h, longer than any retry",
            ));
        }
        let key_purge_interval = r.duration(KEY_PURGE_INTERVAL, Duration::from_secs(3600))?;
        if key_purge_interval.is_zero() {
            return Err(ConfigError::new(KEY_PURGE_INTERVAL, "must be more than 0"));
        }
        Ok(Self {
            grpc_addr: r.parse(GRPC_ADDR, SocketAddr::from(([0, 0, 0, 0], 50051)))?,
            http_addr: r.parse(HTTP_ADDR, SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            admin_addr: r.parse(ADMIN_ADDR, SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            database_url: SecretString::from(r.required_string(DATABASE_URL)?),
            database_max_connections: r.parse(DATABASE_MAX_CONNECTIONS, 16)?,
            max_batch,
            max_body_bytes: r.parse(MAX_BODY_BYTES, 256 * 1024)?,
            webhook_secrets,
            key_retention: (!key_retention.is_zero()).then_some(key_retention),
            key_purge_interval,
            provision_topics: r.bool(PROVISION_TOPICS, true)?,
            shutdown_grace: r
                .duration(SHUTDOWN_GRACE, dealmesh_runtime::shutdown::DEFAULT_GRACE)?,
            kafka: KafkaSettings::from_source(source)?,
            github: crate::pollers::GithubSettings::from_reader(&r)?,
            crunchbase: crate::pollers::CrunchbaseSettings::from_reader(&r)?,
            poller_http: crate::pollers::HttpSettings::from_reader(&r)?,
        })
    }
}

/// Prints the effective configuration with secrets redacted: the database
/// password, every webhook secret and the poller credentials.
impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let database_url = dealmesh_runtime::config::redact_url(self.database_url.expose_secret());
        f.debug_struct("IngestConfig")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("admin_addr", &self.admin_addr)
            .field("database_url", &database_url)
            .field("database_max_connections", &self.database_max_connections)
            .field("max_batch", &self.max_batch)
            .field("max_body_bytes", &self.max_body_bytes)
            .field(
                "webhook_sources",
                &self.webhook_secrets.keys().collect::<Vec<_>>(),
            )
            .field("key_retention", &self.key_retention)
            .field("key_purge_interval", &self.key_purge_interval)
            .field("provision_topics", &self.provision_topics)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("kafka", &self.kafka)
            .field("github", &self.github)
            .field("crunchbase", &self.crunchbase)
            .field("poller_http", &self.poller_http)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_runtime::config::MapSource;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![(DATABASE_URL, "postgres://app:s3cret@db:5432/dealmesh")]
    }

    #[test]
    fn secrets_never_reach_the_printed_config() {
        let mut pairs = base();
        pairs.push((
            "DEALMESH_WEBHOOK_SECRET_ACME_PARTNERS",
            "0123456789abcdefXYZ",
        ));
        let config = IngestConfig::from_source(&MapSource::new(pairs)).unwrap();
        assert!(config.webhook_secrets.contains_key("acme-partners"));
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("acme-partners"), "{printed}");
    }

    #[test]
    fn missing_database_url_names_the_key() {
        let err = IngestConfig::from_source(&MapSource::default()).unwrap_err();
        assert_eq!(err.key, DATABASE_URL);
    }

    #[test]
    fn key_retention_is_off_at_zero_and_at_least_an_hour_otherwise() {
        let with = |value: &'static str| {
            let mut pairs = base();
            pairs.push((KEY_RETENTION, value));
            IngestConfig::from_source(&MapSource::new(pairs))
        };
        let default = IngestConfig::from_source(&MapSource::new(base())).unwrap();
        assert_eq!(
            default.key_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(with("0").unwrap().key_retention, None);
        assert_eq!(
            with("7d").unwrap().key_retention,
            Some(Duration::from_secs(7 * 86_400))
        );
        for refused in ["59m", "10s", "a week"] {
            assert_eq!(with(refused).unwrap_err().key, KEY_RETENTION, "{refused}");
        }
    }

    #[test]
    fn short_webhook_secret_is_refused() {
        let mut pairs = base();
        pairs.push(("DEALMESH_WEBHOOK_SECRET_X", "short"));
        let err = IngestConfig::from_source(&MapSource::new(pairs)).unwrap_err();
        assert_eq!(err.key, "DEALMESH_WEBHOOK_SECRET_X");
    }
}
