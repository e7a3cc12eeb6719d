//! A database and a Redis key prefix of a test's own, removed when it ends, so tests run in
//! parallel and leave nothing behind.

use crate::servers::servers;

/// How long removing a test's keys may wait on Redis (connecting, and each command).
const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A database and a key prefix that a test made and that are removed when it ends, passed or not.
pub struct Scratch {
    pub database: String,
    pub database_url: String,
    pub prefix: String,
}

impl Scratch {
    /// As [`Scratch::new`], with the database created empty (no migrations).
    pub async fn with_empty_database() -> Self {
        let scratch = Self::new();
        let mut admin =
            <sqlx::PgConnection as sqlx::Connection>::connect(servers().postgres.as_str())
                .await
                .expect("connect to the tests' PostgreSQL");
        let create = format!(r#"CREATE DATABASE "{}""#, scratch.database);
        sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(create))
            .await
            .expect("create the database");
        scratch
    }

    /// A new database name and key prefix, both unique (the database is made by whoever uses it).
    #[allow(
        clippy::new_without_default,
        reason = "each call names a new database and prefix: not a default value"
    )]
    pub fn new() -> Self {
        let database = format!("vs_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = servers().postgres.clone();
        url.set_path(&database);
        let prefix = format!("vs-test-{}", uuid::Uuid::new_v4().simple());
        Self {
            database,
            database_url: url.to_string(),
            prefix,
        }
    }
}

/// Whether the tests' PostgreSQL server has a database of this name.
pub async fn database_exists(name: &str) -> bool {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(servers().postgres.as_str())
        .await
        .expect("connect to the tests' PostgreSQL");
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("look the database up")
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (database, prefix) = (self.database.clone(), self.prefix.clone());
        let admin = servers().postgres.to_string();
        let redis = servers().redis.clone();
        // Drop cannot await, and the test's runtime may be shutting down: clean up on a thread
        // with a runtime of its own, and wait for it.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("connect to drop the test database");
                let drop = format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#);
                sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(drop))
                    .await
                    .expect("drop the test database");
                let client = redis::Client::open(redis).expect("a Redis URL");
                // redis-rs's default response timeout (500 ms) is short for a machine still
                // busy with the test's load: a slow KEYS is no failure of the test.
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CLEANUP_TIMEOUT))
                    .set_response_timeout(Some(CLEANUP_TIMEOUT));
                let mut redis = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect("connect to Redis");
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}:*"))
                    .query_async(&mut redis)
                    .await
                    .expect("KEYS");
                if !keys.is_empty() {
                    redis::cmd("DEL")
                        .arg(keys)
                        .query_async::<()>(&mut redis)
                        .await
                        .expect("DEL");
                }
            });
        });
        if cleanup.join().is_err() && !std::thread::panicking() {
            panic!("the test's database or keys could not be removed");
        }
    }
}
