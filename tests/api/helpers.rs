//! Starts the real server, against real PostgreSQL and Redis, the way `main` does.
//!
//! Where the servers come from, in order: `TEST_DATABASE_URL` / `TEST_REDIS_URL`, else
//! `DATABASE_URL` / `REDIS_URL` (a server where the role may create databases, and a Redis; only
//! the server is used, each test makes its own database); otherwise PostgreSQL on 127.0.0.1:5432 and Redis
//! on 127.0.0.1:6379 when they answer; otherwise containers started with testcontainers (Docker
//! needed), removed when the test binary exits. With none of these the run fails and says how to
//! provide them: a test never passes by skipping.
//!
//! Each test gets a database of its own (created, migrated and seeded by the service's own code)
//! and a Redis key prefix of its own, and drops both when it ends, so tests run in parallel.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::HeaderMap;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use testcontainers_modules::testcontainers::runners::SyncRunner;
use tokio::sync::oneshot;
use vehicle_state::config::{
    CacheSettings, CompressionSettings, CorsSettings, DatabaseSettings, Dataset, HttpSettings,
    RedisMode, RedisSettings, ServeSettings, TraceSettings,
};
use vehicle_state::startup::Application;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The PostgreSQL and Redis the tests use, resolved once per test binary.
struct Servers {
    /// URL of a database on the server, with a role that may create databases.
    postgres: url::Url,
    redis: String,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();
/// Containers this binary started, removed at exit (statics are never dropped).
static CONTAINERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn servers() -> &'static Servers {
    // Resolved on a plain thread: testcontainers' blocking runner starts a runtime of its own,
    // which cannot happen inside a test's runtime.
    SERVERS.get_or_init(|| match std::thread::spawn(resolve_servers).join() {
        Ok(servers) => servers,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn resolve_servers() -> Servers {
    let from_env = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let postgres = from_env(["TEST_DATABASE_URL", "DATABASE_URL"]).unwrap_or_else(|| {
        if answers("127.0.0.1:5432") {
            "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned()
        } else {
            start_postgres_container()
        }
    });
    let redis = from_env(["TEST_REDIS_URL", "REDIS_URL"]).unwrap_or_else(|| {
        if answers("127.0.0.1:6379") {
            "redis://127.0.0.1:6379".to_owned()
        } else {
            start_redis_container()
        }
    });
    let postgres = url::Url::parse(&postgres)
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is not a URL ({e}): {postgres}"));
    Servers { postgres, redis }
}

fn answers(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a literal socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

const HOW_TO_PROVIDE: &str = "set TEST_DATABASE_URL and TEST_REDIS_URL (or DATABASE_URL and REDIS_URL), or run PostgreSQL on \
127.0.0.1:5432 (role postgres) and Redis on 127.0.0.1:6379, or make Docker available so \
testcontainers can start them";

fn start_postgres_container() -> String {
    use testcontainers_modules::postgres::Postgres;
    let container = Postgres::default().start().unwrap_or_else(|e| {
        panic!("no PostgreSQL for the tests: {e}. To provide one, {HOW_TO_PROVIDE}.")
    });
    let port = container
        .get_host_port_ipv4(5432)
        .expect("the container's PostgreSQL port");
    keep_until_exit(container.id());
    std::mem::forget(container);
    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
}

fn start_redis_container() -> String {
    use testcontainers_modules::redis::{REDIS_PORT, Redis};
    let container = Redis::default().start().unwrap_or_else(|e| {
        panic!("no Redis for the tests: {e}. To provide one, {HOW_TO_PROVIDE}.")
    });
    let port = container
        .get_host_port_ipv4(REDIS_PORT)
        .expect("the container's Redis port");
    keep_until_exit(container.id());
    std::mem::forget(container);
    format!("redis://127.0.0.1:{port}")
}

fn keep_until_exit(id: &str) {
    CONTAINERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id.to_owned());
}

#[dtor::dtor(unsafe)]
fn remove_containers() {
    // Runs at process exit; a panic here would abort, so none may escape.
    let _ignored = std::panic::catch_unwind(|| {
        let ids = CONTAINERS.lock().map(|ids| ids.clone()).unwrap_or_default();
        if !ids.is_empty() {
            let _status = std::process::Command::new("docker")
                .args(["rm", "--force", "--volumes"])
                .args(&ids)
                .status();
        }
    });
}

/// A builder for the tests' HTTP clients. The service's trace exporter has reqwest use rustls
/// with the process-wide crypto provider and none of its own, so a client in a test process
/// installs the same one (ring) first, or building it panics.
pub fn client_builder() -> reqwest::ClientBuilder {
    // Err: already installed, by an earlier client or the service in this process.
    let _installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Settings as `serve` would read them, every field explicit so the environment of the test run
/// cannot change them.
pub fn settings(database_url: &str, redis_url: &str, prefix: &str) -> ServeSettings {
    ServeSettings {
        database: DatabaseSettings {
            database_url: database_url
                .parse()
                .unwrap_or_else(|e| panic!("{database_url}: {e}")),
            db_pool_max_size: 5,
            db_acquire_timeout_ms: 1000,
            db_statement_timeout_ms: 2000,
            db_response_timeout_ms: 3000,
            db_max_lifetime_secs: 300,
        },
        redis: RedisSettings {
            redis_url: redis_url
                .parse()
                .unwrap_or_else(|e| panic!("{redis_url}: {e}")),
            redis_mode: RedisMode::Standalone,
            redis_sentinel_master: "mymaster".to_owned(),
            redis_sentinel_password: None,
            redis_ca_cert: None,
            redis_client_cert: None,
            redis_client_key: None,
            redis_pool_max_size: 4,
            redis_timeout_ms: 200,
            redis_retry_interval_ms: 250,
        },
        cache: CacheSettings {
            cache_ttl_secs: 60,
            local_cache_max_bytes: 8 * 1024 * 1024,
            stale_if_error_secs: 0,
            cache_key_prefix: prefix.to_owned(),
        },
        http: HttpSettings {
            bind_addr: "127.0.0.1:0".parse().expect("a literal address"),
            metrics_bind_addr: None,
            http_workers: Some(1),
            shutdown_drain_secs: 0,
            shutdown_timeout_secs: 5,
            retry_after_secs: 5,
            lookup_concurrency_limit: 256,
            overload_retry_after_secs: 1,
            lookup_batch_max: 100,
            lookup_batches_in_flight: 4,
            batch_max_lookups: 100,
            batch_max_body_bytes: 64 * 1024,
            http_client_request_timeout_ms: 5000,
            http_keep_alive_secs: 5,
            http_max_connections: 25_000,
        },
        cors: CorsSettings {
            cors_allowed_origins: None,
            cors_max_age_secs: 3600,
        },
        compression: CompressionSettings {
            compression: true,
            compression_min_bytes: 1024,
        },
        traces: TraceSettings::default(),
        db_probe_interval_ms: 50,
        migrate_on_start: true,
        seed: Some(Dataset::Sample),
    }
}

/// The address of the tests' PostgreSQL server.
pub fn postgres_addr() -> SocketAddr {
    let url = &servers().postgres;
    resolve(
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432),
    )
}

/// The address of the tests' Redis server.
pub fn redis_addr() -> SocketAddr {
    let url = url::Url::parse(&servers().redis).expect("a Redis URL");
    resolve(
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(6379),
    )
}

fn resolve(host: &str, port: u16) -> SocketAddr {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"))
}

/// `url` with its host and port replaced by 127.0.0.1:`port` (to route it through a proxy).
pub fn via_port(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_host(Some("127.0.0.1")).expect("a host");
    url.set_port(Some(port)).expect("a port");
    url.to_string()
}

pub fn redis_url() -> String {
    servers().redis.clone()
}

/// One running replica, with the database and key prefix it owns.
pub struct TestApp {
    pub address: String,
    /// `http://127.0.0.1:PORT` of METRICS_BIND_ADDR's server, when the settings ask for one.
    #[allow(
        dead_code,
        reason = "read by the metrics suite, which includes this file too"
    )]
    pub metrics_address: Option<String>,
    pub client: reqwest::Client,
    /// A pool on the test's own database, for arranging data and checking what changed.
    pub db: PgPool,
    pub redis: redis::Client,
    pub prefix: String,
    pub settings: ServeSettings,
    stop: Option<oneshot::Sender<()>>,
    /// Dropped after the server is told to stop (fields drop after `Drop::drop`).
    _scratch: Option<Scratch>,
}

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

/// A replica on a new database (migrated and seeded with the sample data) and a new key prefix.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// As [`spawn_app`], with settings changed by `tweak` before the server is built.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut ServeSettings)) -> TestApp {
    let scratch = Scratch::new();
    let mut settings = settings(&scratch.database_url, &redis_url(), &scratch.prefix);
    tweak(&mut settings);
    let mut app = start(settings).await;
    app._scratch = Some(scratch);
    app
}

/// A second replica beside `app`: same database, same Redis and prefix, owning nothing.
pub async fn spawn_replica(app: &TestApp, tweak: impl FnOnce(&mut ServeSettings)) -> TestApp {
    let mut settings = app.settings.clone();
    settings.seed = None;
    settings.migrate_on_start = false;
    tweak(&mut settings);
    start(settings).await
}

/// A replica beside `app` whose PostgreSQL is unreachable (nothing listens on port 1), with a
/// short acquire timeout: it shares `app`'s Redis and prefix, so it sees what `app` cached.
pub async fn spawn_replica_without_postgres(app: &TestApp) -> TestApp {
    spawn_replica(app, |s| {
        s.database.database_url = "postgres://postgres@127.0.0.1:1/none"
            .parse()
            .expect("a URL");
        s.database.db_acquire_timeout_ms = 300;
    })
    .await
}

async fn start(settings: ServeSettings) -> TestApp {
    // The tests' own view of the app's database: same name, but straight to the server, never
    // through an app's proxy or dead address.
    let mut direct = servers().postgres.clone();
    direct.set_path(
        settings
            .database
            .database_url
            .options
            .get_database()
            .unwrap_or("postgres"),
    );
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(direct.as_str())
        .expect("a valid URL");
    // The tests' own view of Redis, never through an app's proxy or dead address.
    let redis = redis::Client::open(redis_url()).expect("a valid Redis URL");
    let prefix = settings.cache.cache_key_prefix.clone();
    let application = Application::build(settings.clone())
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let metrics_address = application
        .metrics_port()
        .map(|port| format!("http://127.0.0.1:{port}"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let result = application
            .run_until_stopped(async {
                // A dropped sender stops the server too.
                let _stopped = stopped.await;
            })
            .await;
        if let Err(e) = result {
            eprintln!("test server failed: {e:#}");
        }
    });
    let client = client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    TestApp {
        address,
        metrics_address,
        client,
        db,
        redis,
        prefix,
        settings,
        stop: Some(stop),
        _scratch: None,
    }
}

/// What the tests look at in a response.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts `Cache-Control: public, max-age=N` with N at most `max`, and returns N.
    pub fn assert_max_age_at_most(&self, max: u64) -> u64 {
        let cache_control = self.header("cache-control");
        let age = cache_control
            .strip_prefix("public, max-age=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cache-control: {cache_control}"));
        assert!(age <= max, "{cache_control}");
        age
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts an RFC 9457 problem of this status and type, and returns its detail.
    pub fn assert_problem(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), PROBLEM_JSON);
        let body = self.json();
        assert_eq!(body["type"], kind, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
        assert!(!detail.is_empty(), "{body}");
        detail
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let request = self.client.get(format!("{}{}", self.address, path));
        self.send(request, headers, path).await
    }

    /// `POST path` with a body of this content type.
    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<String>) -> Reply {
        let request = self
            .client
            .post(format!("{}{}", self.address, path))
            .body(body.into());
        self.send(request, &[("content-type", content_type)], path)
            .await
    }

    /// `POST /vehicles/states` with these lookups, as JSON.
    pub async fn batch(&self, lookups: serde_json::Value) -> Reply {
        let body = serde_json::json!({ "lookups": lookups }).to_string();
        self.post("/vehicles/states", "application/json", body)
            .await
    }

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
        path: &str,
    ) -> Reply {
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("a body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `GET /vehicles/{id}/timestamp/{ts}`, with `ts` percent-encoded as a client would.
    pub async fn state_at(&self, id: &str, ts: &str) -> Reply {
        let ts = ts
            .replace('%', "%25")
            .replace(' ', "%20")
            .replace('+', "%2B");
        self.get(&format!("/vehicles/{id}/timestamp/{ts}")).await
    }

    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        self.redis
            .get_multiplexed_async_connection()
            .await
            .expect("the test reaches Redis")
    }

    /// The keys this app's replicas wrote.
    pub async fn cache_keys(&self) -> Vec<String> {
        let mut conn = self.redis_conn().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// Deletes every key this app's replicas wrote to Redis (memory keeps what it holds).
    pub async fn forget_redis(&self) {
        let mut conn = self.redis_conn().await;
        for key in self.cache_keys().await {
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
    }

    pub async fn add_state_log(&self, vehicle: i32, state: &str, at: &str) {
        sqlx::query(r#"INSERT INTO "stateLogs" ("vehicleId", state, "timestamp") VALUES ($1, $2, $3::timestamptz)"#)
            .bind(vehicle)
            .bind(state)
            .bind(at)
            .execute(&self.db)
            .await
            .expect("insert a state log");
    }

    /// Holds every lookup of this app in PostgreSQL (an exclusive lock on "stateLogs") until the
    /// returned transaction ends.
    pub async fn hold_lookups(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut lock = self.db.begin().await.expect("begin");
        sqlx::query(r#"LOCK TABLE "stateLogs" IN ACCESS EXCLUSIVE MODE"#)
            .execute(&mut *lock)
            .await
            .expect("lock");
        lock
    }

    /// How many of the service's lookup queries are running on this app's database now.
    pub async fn lookups_in_flight(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' AND query = $1",
        )
        .bind(vehicle_state::db::LOOKUP_MANY_SQL)
        .fetch_one(&self.db)
        .await
        .expect("pg_stat_activity")
    }

    pub async fn add_vehicle(&self, id: i32, make: &str, model: &str, state: &str) {
        sqlx::query("INSERT INTO vehicles (id, make, model, state) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(make)
            .bind(model)
            .bind(state)
            .execute(&self.db)
            .await
            .expect("insert a vehicle");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _already_stopped = stop.send(());
        }
    }
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
                let mut redis = client
                    .get_multiplexed_async_connection()
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
