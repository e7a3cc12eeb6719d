//! PostgreSQL: connecting, migrating, seeding and the one lookup query. No HTTP types here.

// First: its `latest_first!` is used by the modules after it.
#[macro_use]
mod lookup;
mod connect;
mod database;
mod fleet;
mod history;
mod ingest;
mod seed;
mod synthetic;

pub use connect::check_connection;
pub use database::Database;
pub use fleet::{
    BY_RULE_SQL, COUNTS_SQL, FINEST_BUCKET_BITS, ListScan, OPEN_BY_START_MAX, VEHICLES_SQL,
    counts as fleet_counts, rebuild as rebuild_fleet, vehicles as fleet_vehicles,
};
pub use history::{HISTORY_SQL, history};

pub use synthetic::{SyntheticHistory, generate};

pub use lookup::{CURRENT_SQL, LOOKUP_MANY_SQL, LOOKUP_SQL, current, lookup_many};

pub use ingest::{
    APPLY_SQL, Applied, BatchOutcome, INGEST_LOCK_SPACE, VehicleNow, apply as apply_events,
};

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;

use crate::config::{DatabaseSettings, SeedData};

/// The migrations, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The request path's pool. It connects on first use, so the server can start (and report itself
/// not ready) while PostgreSQL is still down, and recovers by itself when it comes back. Every
/// statement is bounded by `DB_STATEMENT_TIMEOUT_MS`.
pub fn connect(settings: &DatabaseSettings) -> PgPool {
    pool_options(settings).connect_lazy_with(request_options(settings))
}

/// How request-path connections are made: `DATABASE_URL`, named, with the statement timeout and
/// generic plans.
///
/// `plan_cache_mode = force_generic_plan`: the lookup statement takes arrays, and with PostgreSQL's
/// default a custom plan (for the array's actual length) always looks cheaper than the generic
/// one for the small batches that gathering makes, so every execution was planned again: a
/// quarter of a millisecond of PostgreSQL's CPU per statement, more than the index probes of ten
/// pairs. The generic plans of the service's statements are the index probes the custom ones
/// are (`the_service_statements_keep_their_index_plans_when_generic`).
///
/// `jit = off`: every statement here is index probes of a millisecond or less, which JIT
/// compilation cannot speed up; but a plan's estimated cost decides it, and the estimates of
/// branches that never run count too (the plain rule the fleet's counts fall back on, an apply
/// statement for a large batch): compiling them took 440 ms of a count that runs in 0.2 ms.
fn request_options(settings: &DatabaseSettings) -> sqlx::postgres::PgConnectOptions {
    let statement_timeout = settings.statement_timeout.as_millis().to_string();
    settings
        .url
        .options
        .clone()
        .application_name("vehicle-state")
        .options([
            ("statement_timeout", statement_timeout.as_str()),
            ("plan_cache_mode", "force_generic_plan"),
            ("jit", "off"),
        ])
}

/// A pool for migrations and seeding: no statement timeout, since building an index on a large
/// table, or waiting for another replica's migrations, takes as long as it takes.
fn connect_for_maintenance(settings: &DatabaseSettings) -> PgPool {
    // Warnings and errors only: `CREATE TABLE IF NOT EXISTS _sqlx_migrations` would otherwise
    // log PostgreSQL's "already exists, skipping" notice on every start.
    let options = settings
        .url
        .options
        .clone()
        .application_name("vehicle-state migrate")
        .options([("client_min_messages", "warning")]);
    pool_options(settings)
        .max_connections(2)
        .connect_lazy_with(options)
}

fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.pool_max_size)
        .acquire_timeout(settings.acquire_timeout)
        .max_lifetime(settings.max_lifetime)
}

/// Creates the database if it is absent, then applies pending migrations. Replicas starting
/// together are safe: creation tolerates a twin that won the race, and the migrator holds an
/// advisory lock while it runs. The maintenance database is only touched when the target is
/// missing, so a role that may not connect to it works against an existing database.
/// Then, with `seed_with`, loads that data set.
pub async fn prepare(
    settings: &DatabaseSettings,
    seed_with: Option<SeedData>,
) -> anyhow::Result<()> {
    let url = &settings.url;
    let pool = connect_for_maintenance(settings);
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
        // A refused connection was retried until the acquire timeout: find out why.
        Err(sqlx::Error::PoolTimedOut) => return Err(connect::diagnose(settings).await),
        Err(e) => return Err(connect::failure(&e, url)),
    }
    let before = applied_versions(&pool).await;
    MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("cannot apply migrations to {url}"))?;
    let after = applied_versions(&pool).await;
    let mut newly = 0;
    for migration in MIGRATOR.iter() {
        if !before.contains(&migration.version) && after.contains(&migration.version) {
            newly += 1;
            tracing::info!(
                database = %url,
                version = migration.version,
                description = %migration.description,
                "migration applied"
            );
        }
    }
    if newly == 0 {
        tracing::info!(database = %url, migrations = after.len(), "migrations are up to date: none pending");
    }
    match seed_with {
        None => {}
        Some(SeedData::Sample) => seed::sample(&pool).await?,
        Some(SeedData::Synthetic(settings)) => synthetic::load(&pool, settings).await?,
    }
    pool.close().await;
    Ok(())
}

/// `rebuild-fleet`: migrations, then [`rebuild_fleet`] on a connection of its own.
pub async fn rebuild_fleet_sums(settings: &DatabaseSettings) -> anyhow::Result<()> {
    prepare(settings, None).await?;
    let pool = connect_for_maintenance(settings);
    let started = std::time::Instant::now();
    let mut conn = pool
        .acquire()
        .await
        .with_context(|| format!("cannot connect to {}", settings.url))?;
    let rows = fleet::rebuild(&mut conn)
        .await
        .context("cannot build the fleet's sums (fleet_sums)")?;
    // The visibility map, so counts and pages read the keys alone (index-only scans).
    for table in ["fleet_sums", "fleet_segments"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("cannot vacuum {table}"))?;
    }
    drop(conn);
    pool.close().await;
    tracing::info!(
        rows,
        seconds = started.elapsed().as_secs_f64(),
        "fleet's sums built anew: counts are read from them again"
    );
    Ok(())
}

/// Versions recorded as applied (none when the migrations table does not exist yet).
async fn applied_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
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

/// `statement`, waiting at most `limit` (`DB_RESPONSE_TIMEOUT_MS`) for its reply; past it, a
/// `no_response` failure. The caller drops the connection then (see [`Database`]): a ping to
/// return it to the pool would wait as long.
pub(crate) async fn answered_within<T, E: Into<DbError>>(
    limit: std::time::Duration,
    statement: impl Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, statement).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DbError::no_response(limit)),
    }
}

/// A failure to ask PostgreSQL. `Unavailable` is what a client may retry (and gets 503 for);
/// anything else is a defect or a schema mismatch.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("PostgreSQL is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Not asked: a connection to it failed, and no probe has connected since.
    #[error("PostgreSQL is unavailable: it could not be reached, and no probe has connected since")]
    Down,
    #[error("PostgreSQL query failed")]
    Query(#[source] sqlx::Error),
}

impl DbError {
    /// Every value [`DbError::kind`] returns.
    pub const KINDS: [&'static str; 6] = [
        "acquire_timeout",
        "statement_timeout",
        "no_response",
        "unavailable",
        "down",
        "query",
    ];

    /// No reply within `DB_RESPONSE_TIMEOUT_MS` to a statement sent (see
    /// [`Database`]): PostgreSQL, or the network to it, swallowed it.
    fn no_response(waited: std::time::Duration) -> Self {
        DbError::Unavailable(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no reply from PostgreSQL within {} ms (DB_RESPONSE_TIMEOUT_MS): the connection is dropped",
                waited.as_millis()
            ),
        )))
    }

    /// The `kind` label of `vehicle_state_db_errors_total`. sqlx retries a refused connection
    /// until the acquire timeout, so a PostgreSQL that has just gone down shows as
    /// `acquire_timeout` (as does a pool whose connections are all busy), then as `down` once a
    /// probe has confirmed it (see [`Database`]).
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Unavailable(sqlx::Error::PoolTimedOut) => "acquire_timeout",
            DbError::Unavailable(sqlx::Error::Database(d))
                if d.code().as_deref() == Some("57014") =>
            {
                "statement_timeout"
            }
            DbError::Unavailable(sqlx::Error::Io(e))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                "no_response"
            }
            DbError::Unavailable(_) => "unavailable",
            DbError::Down => "down",
            DbError::Query(_) => "query",
        }
    }

    /// Whether a client may retry (503), as opposed to a defect (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_) | DbError::Down)
    }

    /// Whether this failure may mean PostgreSQL cannot be reached, so that a probe should tell:
    /// not a statement past its timeout, a serialization failure or a deadlock, which show a
    /// server that answers.
    pub fn may_mean_unreachable(&self) -> bool {
        match self {
            DbError::Unavailable(sqlx::Error::Database(d)) => {
                !matches!(d.code().as_deref(), Some("57014" | "40001" | "40P01"))
            }
            DbError::Unavailable(_) => true,
            DbError::Down | DbError::Query(_) => false,
        }
    }
}

/// Connections of the pool: in use, and idle.
pub fn pool_gauge(pool: &PgPool) -> crate::metrics::PoolGauge {
    let idle = pool.num_idle();
    let size = usize::try_from(pool.size()).unwrap_or(usize::MAX);
    crate::metrics::PoolGauge {
        in_use: size.saturating_sub(idle),
        idle,
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            // Protocol: the connection closed in the middle of a message, as when PostgreSQL
            // (or the network) goes away during the TLS request that `sslmode=prefer` sends.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                // 08: connection exceptions; 57014: statement timeout; 57P01-57P03: the server is
                // shutting down or starting; 53300: too many connections; 40001: on a read
                // replica, a query cancelled by a conflict with recovery; 40P01: a deadlock.
                c.starts_with("08")
                    || c == "57014"
                    || c.starts_with("57P")
                    || c == "53300"
                    || c == "40001"
                    || c == "40P01"
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
