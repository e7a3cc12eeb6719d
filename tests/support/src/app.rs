//! Starts the real server in the test's process, against real PostgreSQL and Redis (see
//! [`crate::servers`] for where they come from), the way `main` does.
//!
//! Each test gets a database of its own (created, migrated and seeded by the service's own code)
//! and a Redis key prefix of its own, and drops both when it ends, so tests run in parallel.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::oneshot;
use vehicle_state::config::ServeSettings;
use vehicle_state::startup::Application;

use crate::http::{Reply, client_builder};
use crate::scratch::Scratch;
use crate::servers::{redis_url, servers};
use crate::settings::settings;

/// One running replica, with the database and key prefix it owns.
pub struct TestApp {
    pub address: String,
    /// `http://127.0.0.1:PORT` of METRICS_BIND_ADDR's server, when the settings ask for one.
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
        s.database.url = "postgres://postgres@127.0.0.1:1/none"
            .parse()
            .expect("a URL");
        s.database.acquire_timeout = Duration::from_millis(300);
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
            .url
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
    let prefix = settings.cache.key_prefix.clone();
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

    /// `POST path` with a body and these headers.
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<String>,
    ) -> Reply {
        let request = self
            .client
            .post(format!("{}{}", self.address, path))
            .body(body.into());
        self.send(request, headers, path).await
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
