//! The notify service's configuration. Every key is documented in the README.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dealmesh_auth::AuthConfig;
use dealmesh_eventlog::KafkaSettings;
use dealmesh_runtime::config::{ConfigError, Reader, Source};
use secrecy::{ExposeSecret, SecretString};

/// gRPC listen address (subscriptions API and live feed). Default `0.0.0.0:50055`.
pub const GRPC_ADDR: &str = "DEALMESH_NOTIFY_GRPC_ADDR";
/// Admin (health, metrics) listen address. Default `0.0.0.0:9095`.
pub const ADMIN_ADDR: &str = "DEALMESH_NOTIFY_ADMIN_ADDR";
/// PostgreSQL URL of the delivery log and projections. Required.
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Connections in the PostgreSQL pool. Default 16.
pub const DATABASE_MAX_CONNECTIONS: &str = "DEALMESH_DATABASE_MAX_CONNECTIONS";
/// Kafka consumer group. Default `dealmesh-notify`.
pub const CONSUMER_GROUP: &str = "DEALMESH_NOTIFY_CONSUMER_GROUP";
/// Deal-log records handled concurrently (records of one deal stay in
/// order). Default 16.
pub const CONSUMER_CONCURRENCY: &str = "DEALMESH_NOTIFY_CONSUMER_CONCURRENCY";
/// Optional TOML file of subscriptions defined by configuration.
pub const SUBSCRIPTIONS_FILE: &str = "DEALMESH_NOTIFY_SUBSCRIPTIONS_FILE";
/// Time a webhook endpoint has to answer. Default `10s`.
pub const WEBHOOK_TIMEOUT: &str = "DEALMESH_NOTIFY_WEBHOOK_TIMEOUT";
/// Attempts per delivery before it is marked dead. Default 8.
pub const MAX_ATTEMPTS: &str = "DEALMESH_NOTIFY_MAX_ATTEMPTS";
/// First retry delay; doubles each attempt, with jitter. Default `1s`.
pub const RETRY_BASE: &str = "DEALMESH_NOTIFY_RETRY_BASE";
/// Longest retry delay. Default `10m`.
pub const RETRY_MAX: &str = "DEALMESH_NOTIFY_RETRY_MAX";
/// Longest `Retry-After` honoured; a longer one is capped. Default `1h`.
pub const MAX_RETRY_AFTER: &str = "DEALMESH_NOTIFY_MAX_RETRY_AFTER";
/// Deliveries in flight at once, over all endpoints. Default 256.
pub const DISPATCH_CONCURRENCY: &str = "DEALMESH_NOTIFY_DISPATCH_CONCURRENCY";
/// Deliveries in flight at once to one endpoint (URL or email address).
/// Default 4.
pub const ENDPOINT_CONCURRENCY: &str = "DEALMESH_NOTIFY_ENDPOINT_CONCURRENCY";
/// How often the dispatcher looks for due retries when nothing wakes it.
/// Default `1s`.
pub const POLL_INTERVAL: &str = "DEALMESH_NOTIFY_POLL_INTERVAL";
/// Largest notification body; a bigger one is recorded as a failed
/// delivery. Default 262144 (256 KiB).
pub const MAX_PAYLOAD_BYTES: &str = "DEALMESH_NOTIFY_MAX_PAYLOAD_BYTES";
/// SMTP server host. Unset: email is disabled and email subscriptions are
/// refused.
pub const SMTP_HOST: &str = "DEALMESH_NOTIFY_SMTP_HOST";
/// SMTP port. Default 587.
pub const SMTP_PORT: &str = "DEALMESH_NOTIFY_SMTP_PORT";
/// SMTP user name; with `SMTP_PASSWORD`, authenticates.
pub const SMTP_USERNAME: &str = "DEALMESH_NOTIFY_SMTP_USERNAME";
/// SMTP password (secret).
pub const SMTP_PASSWORD: &str = "DEALMESH_NOTIFY_SMTP_PASSWORD";
/// `opportunistic` (STARTTLS when offered, the default), `required`
/// (STARTTLS or fail) or `wrapper` (implicit TLS, port 465).
pub const SMTP_TLS: &str = "DEALMESH_NOTIFY_SMTP_TLS";
/// Optional PEM file of extra CA certificates trusted for the SMTP server's
/// TLS certificate (a private CA).
pub const SMTP_CA_FILE: &str = "DEALMESH_NOTIFY_SMTP_CA_FILE";
/// Sender address. Default `dealmesh <notify@localhost>`.
pub const SMTP_FROM: &str = "DEALMESH_NOTIFY_SMTP_FROM";
/// How often digest emails are assembled. Default `24h`.
pub const DIGEST_INTERVAL: &str = "DEALMESH_NOTIFY_DIGEST_INTERVAL";
/// Create the topics on start if missing. Default true.
pub const PROVISION_TOPICS: &str = "DEALMESH_PROVISION_TOPICS";
/// Time to drain on SIGTERM. Default `25s`.
pub const SHUTDOWN_GRACE: &str = "DEALMESH_SHUTDOWN_GRACE";

/// How to talk TLS to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    Opportunistic,
    Required,
    Wrapper,
}

#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub tls: SmtpTls,
    pub ca_file: Option<PathBuf>,
    pub from: String,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "REDACTED"))
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("from", &self.from)
            .finish()
    }
}

/// Delivery retry and concurrency settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub webhook_timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_retry_after: Duration,
    pub concurrency: usize,
    pub endpoint_concurrency: usize,
    pub poll_interval: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            webhook_timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            max_retry_after: Duration::from_secs(3600),
            concurrency: 256,
            endpoint_concurrency: 4,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl DispatchConfig {
    /// How long a claimed delivery stays claimed: past it, a crashed
    /// sender's delivery is picked up again.
    pub fn lease(&self) -> Duration {
        self.webhook_timeout + Duration::from_secs(5)
    }
}

#[derive(Clone)]
pub struct NotifyConfig {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub consumer_group: String,
    pub consumer_concurrency: usize,
    pub subscriptions_file: Option<PathBuf>,
    pub dispatch: DispatchConfig,
    pub max_payload_bytes: usize,
    pub smtp: Option<SmtpConfig>,
    pub digest_interval: Duration,
    pub provision_topics: bool,
    pub shutdown_grace: Duration,
    pub kafka: KafkaSettings,
    pub auth: AuthConfig,
}

impl NotifyConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let defaults = DispatchConfig::default();
        let dispatch = DispatchConfig {
            webhook_timeout: positive(&r, WEBHOOK_TIMEOUT, defaults.webhook_timeout)?,
            max_attempts: at_least_one(
                r.parse(MAX_ATTEMPTS, defaults.max_attempts)?,
                MAX_ATTEMPTS,
            )?,
            retry_base: positive(&r, RETRY_BASE, defaults.retry_base)?,
            retry_max: positive(&r, RETRY_MAX, defaults.retry_max)?,
            max_retry_after: r.duration(MAX_RETRY_AFTER, defaults.max_retry_after)?,
            concurrency: at_least_one(
                r.parse(DISPATCH_CONCURRENCY, defaults.concurrency)?,
                DISPATCH_CONCURRENCY,
            )?,
            endpoint_concurrency: at_least_one(
                r.parse(ENDPOINT_CONCURRENCY, defaults.endpoint_concurrency)?,
                ENDPOINT_CONCURRENCY,
            )?,
            poll_interval: positive(&r, POLL_INTERVAL, defaults.poll_interval)?,
        };
        let smtp = match r.optional_string(SMTP_HOST) {
            None => None,
            Some(host) => Some(SmtpConfig {
                host,
                port: r.parse(SMTP_PORT, 587)?,
                username: r.optional_string(SMTP_USERNAME),
                password: r.secret(SMTP_PASSWORD),
                tls: match r
                    .string(SMTP_TLS, "opportunistic")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "opportunistic" => SmtpTls::Opportunistic,
                    "required" => SmtpTls::Required,
                    "wrapper" => SmtpTls::Wrapper,
                    other => {
                        return Err(ConfigError::new(
                            SMTP_TLS,
                            format!(
                                "invalid value {other:?}: expected opportunistic, required or wrapper"
                            ),
                        ));
                    }
                },
                ca_file: r.optional_string(SMTP_CA_FILE).map(PathBuf::from),
                from: {
                    let from = r.string(SMTP_FROM, "dealmesh <notify@localhost>");
                    if from.parse::<lettre::message::Mailbox>().is_err() {
                        return Err(ConfigError::new(
                            SMTP_FROM,
                            format!("{from:?} is not an email address"),
                        ));
                    }
                    from
                },
            }),
        };
        Ok(Self {
            grpc_addr: r.parse(GRPC_ADDR, SocketAddr::from(([0, 0, 0, 0], 50055)))?,
            admin_addr: r.parse(ADMIN_ADDR, SocketAddr::from(([0, 0, 0, 0], 9095)))?,
            database_url: SecretString::from(r.required_string(DATABASE_URL)?),
            database_max_connections: r.parse(DATABASE_MAX_CONNECTIONS, 16)?,
            consumer_group: r.string(CONSUMER_GROUP, "dealmesh-notify"),
            consumer_concurrency: at_least_one(
                r.parse(CONSUMER_CONCURRENCY, 16)?,
                CONSUMER_CONCURRENCY,
            )?,
            subscriptions_file: r.optional_string(SUBSCRIPTIONS_FILE).map(PathBuf::from),
            dispatch,
            max_payload_bytes: r.parse(MAX_PAYLOAD_BYTES, 256 * 1024)?,
            smtp,
            digest_interval: positive(&r, DIGEST_INTERVAL, Duration::from_secs(86_400))?,
            provision_topics: r.bool(PROVISION_TOPICS, true)?,
            shutdown_grace: r
                .duration(SHUTDOWN_GRACE, dealmesh_runtime::shutdown::DEFAULT_GRACE)?,
            kafka: KafkaSettings::from_source(source)?,
            auth: AuthConfig::from_source(source)?,
        })
    }
}

fn positive(r: &Reader<'_>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = r.duration(key, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(key, "must be more than zero"));
    }
    Ok(value)
}

fn at_least_one<T: PartialOrd + From<u8>>(value: T, key: &str) -> Result<T, ConfigError> {
    if value < T::from(1) {
        return Err(ConfigError::new(key, "must be at least 1"));
    }
    Ok(value)
}

/// Prints the effective configuration with secrets redacted.
impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field(
                "database_url",
                &dealmesh_runtime::config::redact_url(self.database_url.expose_secret()),
            )
            .field("database_max_connections", &self.database_max_connections)
            .field("consumer_group", &self.consumer_group)
            .field("consumer_concurrency", &self.consumer_concurrency)
            .field("subscriptions_file", &self.subscriptions_file)
            .field("dispatch", &self.dispatch)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("smtp", &self.smtp)
            .field("digest_interval", &self.digest_interval)
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
                dealmesh_auth::JWT_HS256_SECRET,
                "jwt-secret-0123456789-0123456789-abc",
            ),
        ]
    }

    #[test]
    fn secrets_never_reach_the_printed_config() {
        let mut pairs = base();
        pairs.extend([(SMTP_HOST, "mail.example"), (SMTP_PASSWORD, "smtp-pw-XYZ")]);
        let config = NotifyConfig::from_source(&MapSource::new(pairs)).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(!printed.contains("smtp-pw-XYZ"), "{printed}");
        assert!(!printed.contains("jwt-secret-0123456789"), "{printed}");
        assert!(printed.contains("mail.example"), "{printed}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value) in [
            (MAX_ATTEMPTS, "0"),
            (WEBHOOK_TIMEOUT, "0s"),
            (SMTP_TLS, "sometimes"),
            (ENDPOINT_CONCURRENCY, "none"),
        ] {
            let mut pairs = base();
            pairs.push((SMTP_HOST, "mail.example"));
            pairs.push((key, value));
            let err = NotifyConfig::from_source(&MapSource::new(pairs)).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn missing_database_url_names_the_key() {
        let err = NotifyConfig::from_source(&MapSource::new(base()[1..].to_vec())).unwrap_err();
        assert_eq!(err.key, DATABASE_URL);
    }
}
