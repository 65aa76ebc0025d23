//! PostgreSQL: every CRM table lives in one schema, named by configuration,
//! which each connection puts first on its `search_path`. The migrations
//! name no schema, so the same files build the live read model or a fresh
//! one beside it.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to PostgreSQL with `schema` as every connection's search path,
/// creating the database and the schema if they do not exist.
pub async fn connect(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    use sqlx::migrate::MigrateDatabase;
    anyhow::ensure!(
        crate::config::is_name(schema),
        "schema {schema:?} is not a plain lower-case identifier"
    );
    if !sqlx::Postgres::database_exists(url)
        .await
        .context("cannot reach PostgreSQL")?
    {
        // Two processes may race here; losing the race is fine.
        if let Err(error) = sqlx::Postgres::create_database(url).await {
            tracing::debug!(%error, "create database");
        } else {
            tracing::info!("database created");
        }
    }
    let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid URL")?;
    let bootstrap = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .context("cannot connect to PostgreSQL")?;
    // The name was checked above (lower-case letters, digits, '_').
    bootstrap
        .execute(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .await
        .or_else(|error| match &error {
            // A concurrent CREATE SCHEMA IF NOT EXISTS can still collide.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                Ok(Default::default())
            }
            _ => Err(error),
        })
        .context("cannot create the schema")?;
    bootstrap.close().await;
    let set_path = format!("SET search_path TO {schema}");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _meta| {
            let set_path = set_path.clone();
            Box::pin(async move {
                conn.execute(AssertSqlSafe(set_path)).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")
}

/// Applies the migrations to the pool's schema.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("migrations failed")?;
    Ok(())
}

/// The NOTIFY channel the projector signals after each committed batch.
pub fn notify_channel(schema: &str) -> String {
    format!("dealmesh_crm_{schema}")
}
