//! A fresh PostgreSQL database per test.

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use url::Url;

/// The server's maintenance database; `scripts/test` sets it.
const DATABASE_URL_ENV: &str = "DEALMESH_TEST_DATABASE_URL";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// An empty database of its own for one test, named `dmtest_<uuid>`.
///
/// It is not dropped when the test ends (that would need an async drop);
/// `scripts/test` drops the leftovers of earlier runs when it starts.
pub struct TestDatabase {
    /// Connection URL of the new database, for code that connects itself.
    pub url: String,
    /// The database's name.
    pub name: String,
    /// A small pool (at most 5 connections, so many tests fit under the
    /// server's connection limit) connected to it.
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates the database on the server at `DEALMESH_TEST_DATABASE_URL`
    /// (default `postgres://postgres@127.0.0.1:5432/postgres`).
    pub async fn create() -> TestDatabase {
        let server = server_url();
        // UUIDv7: unique, and sorts by creation time when debugging.
        let name = format!("dmtest_{}", uuid::Uuid::now_v7().simple());

        let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|err| {
            panic!(
                "cannot connect to PostgreSQL at {server}: {err}; start it (scripts/test does) \
                 or point {DATABASE_URL_ENV} at a server where this user may create databases"
            )
        });
        // The name is ours (letters, digits, underscore), so formatting it in is safe.
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("cannot create test database {name} on {server}: {err}"));
        let _ = admin.close().await;

        let mut url = Url::parse(&server)
            .unwrap_or_else(|err| panic!("{DATABASE_URL_ENV}={server} is not a URL: {err}"));
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to test database {name}: {err}"));
        TestDatabase { url, name, pool }
    }

    /// Drops the database (ending any session still connected to it): for
    /// benchmarks, whose databases are large. Panics if it cannot.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let server = server_url();
        let mut admin = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to PostgreSQL at {server}: {err}"));
        let name = &self.name;
        // The name is ours, as in `create`.
        sqlx::query(AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
        )))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("cannot drop test database {name}: {err}"));
        let _ = admin.close().await;
    }
}

fn server_url() -> String {
    std::env::var(DATABASE_URL_ENV)
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}
