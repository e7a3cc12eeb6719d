//! PostgreSQL: connecting, migrating, seeding and the one lookup query. No HTTP types here.

mod lookup;
mod seed;

pub use lookup::{LOOKUP_SQL, lookup};
pub use seed::seed;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseSettings;

/// The migrations, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that connects on first use, so the server can start (and report itself not ready)
/// while PostgreSQL is still down, and recovers by itself when it comes back.
pub fn connect(settings: &DatabaseSettings) -> PgPool {
    let statement_timeout = settings.db_statement_timeout_ms.to_string();
    let options = settings
        .database_url
        .options
        .clone()
        .application_name("vehicle-state")
        .options([("statement_timeout", statement_timeout.as_str())]);
    PgPoolOptions::new()
        .max_connections(settings.db_pool_max_size)
        .acquire_timeout(settings.acquire_timeout())
        .connect_lazy_with(options)
}

/// Creates the database if it is absent, then applies pending migrations. Replicas starting
/// together are safe: creation tolerates a twin that won the race, and the migrator holds an
/// advisory lock while it runs. The maintenance database is only touched when the target is
/// missing, so a role that may not connect to it works against an existing database.
pub async fn prepare(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let url = &settings.database_url;
    let pool = connect(settings);
    match pool.acquire().await {
        Ok(conn) => drop(conn),
        Err(e) if has_code(&e, "3D000") => {
            // 3D000 invalid_catalog_name: the database does not exist yet.
            match sqlx::Postgres::create_database(&url.text).await {
                Ok(()) => tracing::info!(database = %url, "created the database"),
                // 42P04 duplicate_database; 23505 when two CREATE DATABASE race on pg_database.
                Err(e) if has_code(&e, "42P04") || has_code(&e, "23505") => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create the database {url}"));
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach PostgreSQL at {url}")),
    }
    MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("cannot apply migrations to {url}"))?;
    pool.close().await;
    tracing::info!(database = %url, "migrations are up to date");
    Ok(())
}

fn has_code(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == code)
}

/// Whether PostgreSQL answers a trivial query (for `/readyz`).
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(drop)
        .map_err(DbError::from)
}

/// A failure to ask PostgreSQL. `Unavailable` is what a client may retry (and gets 503 for);
/// anything else is a defect or a schema mismatch.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("PostgreSQL is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("PostgreSQL query failed")]
    Query(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                // 08: connection exceptions; 57014: statement timeout; 57P01-57P03: the server is
                // shutting down or starting; 53300: too many connections.
                c.starts_with("08") || c == "57014" || c.starts_with("57P") || c == "53300"
            }),
            _ => false,
        };
        if unavailable {
            DbError::Unavailable(e)
        } else {
            DbError::Query(e)
        }
    }
}
