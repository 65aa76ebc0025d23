//! Kafka settings shared by every service, read from the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use dealmesh_runtime::config::{ConfigError, Reader, Source};
use rdkafka::ClientConfig;

/// Comma-separated `host:port` list. Default `127.0.0.1:9092`.
pub const BOOTSTRAP_SERVERS: &str = "DEALMESH_KAFKA_BOOTSTRAP_SERVERS";
/// Prefix of every topic name, so several installations can share a
/// cluster. Default `dealmesh.`.
pub const TOPIC_PREFIX: &str = "DEALMESH_TOPIC_PREFIX";
/// Partitions of the deal log when it is created. Default 12.
pub const DEAL_LOG_PARTITIONS: &str = "DEALMESH_DEAL_LOG_PARTITIONS";
/// Replication factor of created topics. Default 1; use 3 in production.
pub const REPLICATION_FACTOR: &str = "DEALMESH_TOPIC_REPLICATION_FACTOR";
/// Retention of the dead-letter topic. Default `30d`. The deal log itself
/// is always kept forever.
pub const DEAD_LETTER_RETENTION: &str = "DEALMESH_DEAD_LETTER_RETENTION";
/// Any `KAFKA_<NAME>` variable is passed to librdkafka as property
/// `<name>` lower-cased with `_` turned into `.`, e.g.
/// `KAFKA_SECURITY_PROTOCOL=SASL_SSL` sets `security.protocol`.
pub const PASSTHROUGH_PREFIX: &str = "KAFKA_";

#[derive(Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    pub deal_log_partitions: i32,
    pub replication_factor: i32,
    pub dead_letter_retention: Duration,
    /// librdkafka properties from `KAFKA_*`, applied last so they win.
    pub passthrough: BTreeMap<String, String>,
}

impl KafkaSettings {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let topic_prefix = r.string(TOPIC_PREFIX, "dealmesh.");
        if !topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(ConfigError::new(
                TOPIC_PREFIX,
                "may contain only ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        let deal_log_partitions = r.parse(DEAL_LOG_PARTITIONS, 12)?;
        if deal_log_partitions < 1 {
            return Err(ConfigError::new(DEAL_LOG_PARTITIONS, "must be at least 1"));
        }
        let replication_factor = r.parse(REPLICATION_FACTOR, 1)?;
        if replication_factor < 1 {
            return Err(ConfigError::new(REPLICATION_FACTOR, "must be at least 1"));
        }
        let passthrough = r
            .with_prefix(PASSTHROUGH_PREFIX)
            .into_iter()
            .map(|(key, value)| {
                let property = key[PASSTHROUGH_PREFIX.len()..]
                    .to_ascii_lowercase()
                    .replace('_', ".");
                (property, value)
            })
            .collect();
        Ok(Self {
            bootstrap_servers: r.string(BOOTSTRAP_SERVERS, "127.0.0.1:9092"),
            topic_prefix,
            deal_log_partitions,
            replication_factor,
            dead_letter_retention: r
                .duration(DEAD_LETTER_RETENTION, Duration::from_secs(30 * 86_400))?,
            passthrough,
        })
    }

    /// Settings for a broker at `bootstrap` with topic prefix `prefix`; the
    /// rest default. Handy in tests and tools.
    pub fn new(bootstrap: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap.into(),
            topic_prefix: prefix.into(),
            deal_log_partitions: 12,
            replication_factor: 1,
            dead_letter_retention: Duration::from_secs(30 * 86_400),
            passthrough: BTreeMap::new(),
        }
    }

    /// A librdkafka config with the bootstrap servers and the passthrough
    /// properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.passthrough {
            config.set(key, value);
        }
        config
    }
}

/// Property names whose values are secrets and never printed.
fn is_secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "token",
        ".pem",
        "key.location",
        "keystore",
    ]
    .iter()
    .any(|needle| name.contains(needle))
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passthrough: BTreeMap<&str, &str> = self
            .passthrough
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) {
                    "[REDACTED]"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic_prefix", &self.topic_prefix)
            .field("deal_log_partitions", &self.deal_log_partitions)
            .field("replication_factor", &self.replication_factor)
            .field("dead_letter_retention", &self.dead_letter_retention)
            .field("passthrough", &passthrough)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_runtime::config::MapSource;

    #[test]
    fn passthrough_maps_to_librdkafka_names_and_redacts_secrets() {
        let source = MapSource::new([
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
        ]);
        let settings = KafkaSettings::from_source(&source).unwrap();
        assert_eq!(settings.passthrough["security.protocol"], "SASL_SSL");
        assert_eq!(settings.passthrough["sasl.password"], "hunter2");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("SCRAM-SHA-512"), "{printed}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err =
            KafkaSettings::from_source(&MapSource::new([(DEAL_LOG_PARTITIONS, "0")])).unwrap_err();
        assert_eq!(err.key, DEAL_LOG_PARTITIONS);
        let err = KafkaSettings::from_source(&MapSource::new([(TOPIC_PREFIX, "a b")])).unwrap_err();
        assert_eq!(err.key, TOPIC_PREFIX);
    }
}
