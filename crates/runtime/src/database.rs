//! The PostgreSQL settings every stateful service shares, and connecting
//! with the database created on first start.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;

use crate::config::{ConfigError, Reader, Source, redact_url};

/// PostgreSQL URL of the service's database. Required by services that keep
/// state; the database is created on start if it does not exist.
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Connections in the service's PostgreSQL pool. Default 16.
pub const DATABASE_MAX_CONNECTIONS: &str = "DEALMESH_DATABASE_MAX_CONNECTIONS";

/// How long a request waits for a pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
}

impl DatabaseSettings {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let url = r.required_string(DATABASE_URL)?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                DATABASE_URL,
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        let max_connections = r.parse(DATABASE_MAX_CONNECTIONS, 16)?;
        if max_connections == 0 {
            return Err(ConfigError::new(
                DATABASE_MAX_CONNECTIONS,
                "must be at least 1",
            ));
        }
        Ok(Self {
            url: SecretString::from(url),
            max_connections,
        })
    }

    /// Creates the database if it does not exist yet.
    pub async fn ensure_database(&self) -> anyhow::Result<()> {
        let url = self.url.expose_secret();
        if !sqlx::Postgres::database_exists(url)
            .await
            .context("cannot reach PostgreSQL")?
        {
            // Two replicas starting together may race to create it.
            if let Err(error) = sqlx::Postgres::create_database(url).await
                && !sqlx::Postgres::database_exists(url).await.unwrap_or(false)
            {
                return Err(error).context("cannot create the database");
            }
            tracing::info!("database created");
        }
        Ok(())
    }

    /// Pool options sized from these settings, for callers that add their
    /// own connection set-up (e.g. a `search_path`).
    pub fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
    }

    /// Creates the database if missing and connects a pool to it.
    pub async fn connect(&self) -> anyhow::Result<PgPool> {
        self.ensure_database().await?;
        self.pool_options()
            .connect(self.url.expose_secret())
            .await
            .context("cannot connect to PostgreSQL")
    }
}

/// Shows the URL with its password redacted.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapSource;

    #[test]
    fn the_password_never_reaches_the_printed_settings() {
        let settings = DatabaseSettings::from_source(&MapSource::new([(
            DATABASE_URL,
            "postgres://app:s3cret@db:5432/dealmesh",
        )]))
        .unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("app:REDACTED@db:5432/dealmesh"),
            "{printed}"
        );
        assert_eq!(settings.max_connections, 16);
    }

    #[test]
    fn a_missing_or_foreign_url_names_the_key() {
        let err = DatabaseSettings::from_source(&MapSource::default()).unwrap_err();
        assert_eq!(err.key, DATABASE_URL);
        let err = DatabaseSettings::from_source(&MapSource::new([(DATABASE_URL, "mysql://db/x")]))
            .unwrap_err();
        assert_eq!(err.key, DATABASE_URL);
    }
}
