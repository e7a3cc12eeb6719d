//! Ingest from NATS JetStream with real processes: a private `nats-server -js` per test, or a
//! cluster of three (see `vehicle_state_test_support::process::nats` for which binary), the service's own binary as `ingest` and
//! `publish`, and PostgreSQL (the shared server, or a private one where a test stops it).
//!
//! The reference for "the right tables" is `seed synthetic` with the same seed: applying the
//! events `publish synthetic` sends, in any order and with duplicates, must give the same rows.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod delivery;
mod faults;
mod feed;
mod fixture;
mod nats_cluster;
mod network;
mod poison;

use std::time::{Duration, Instant};

use vehicle_state_test_support::process::run_binary;
use vehicle_state_test_support::scratch::Scratch;

/// Rows of both tables, sorted: `vehicles` (id, make, model, state) and `"stateLogs"`
/// (vehicle, state, Unix microseconds).
#[derive(Debug, PartialEq, Eq)]
pub struct Tables {
    pub vehicles: Vec<(i32, String, String, String)>,
    pub logs: Vec<(i32, String, i64)>,
}

pub async fn tables(database_url: &str) -> Tables {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
    let vehicles = sqlx::query_as("SELECT id, make, model, state FROM vehicles ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("vehicles");
    let logs = sqlx::query_as(
        r#"SELECT "vehicleId", state, (EXTRACT(EPOCH FROM "timestamp") * 1000000)::int8
           FROM "stateLogs" ORDER BY 1, 3, 2"#,
    )
    .fetch_all(&pool)
    .await
    .expect("stateLogs");
    pool.close().await;
    Tables { vehicles, logs }
}

/// The tables `seed synthetic --vehicles N --random-seed S` loads.
pub async fn reference(vehicles: u32, seed: u64) -> Tables {
    let scratch = Scratch::new();
    run_binary(
        &[
            "seed",
            "synthetic",
            "--vehicles",
            &vehicles.to_string(),
            "--random-seed",
            &seed.to_string(),
        ],
        &[("DATABASE_URL", &scratch.database_url)],
    );
    tables(&scratch.database_url).await
}

/// Publishes `payload` on `subject` as it is, and waits until a stream has stored it.
pub async fn publish_raw(js: &async_nats::jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_owned(), payload.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// A new database of the test's own with the schema and no rows.
pub fn migrated_database() -> Scratch {
    let scratch = Scratch::new();
    run_binary(&["migrate"], &[("DATABASE_URL", &scratch.database_url)]);
    scratch
}

/// `publish synthetic` into `stream` on the server at `nats_url`.
pub fn publish(nats_url: &str, stream: &str, vehicles: u32, seed: u64, flags: &[&str]) {
    let (vehicles, seed) = (vehicles.to_string(), seed.to_string());
    let mut args = vec![
        "publish",
        "synthetic",
        "--vehicles",
        &vehicles,
        "--seed",
        &seed,
    ];
    args.extend_from_slice(flags);
    run_binary(&args, &[("NATS_URL", nats_url), ("INGEST_STREAM", stream)]);
}

/// Polls until the database holds `expected`, for at most `within`; returns what it last held.
pub async fn wait_for_tables(database_url: &str, expected: &Tables, within: Duration) -> Tables {
    let deadline = Instant::now() + within;
    loop {
        let now = tables(database_url).await;
        if &now == expected || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that the database holds the reference tables, saying how many changes and vehicles
/// it holds instead, then what `context` says (built only on failure: the ingest processes' last
/// log lines, what the test did).
#[track_caller]
pub fn assert_tables_are_the_reference(
    got: &Tables,
    expected: &Tables,
    context: impl FnOnce() -> String,
) {
    assert!(
        got == expected,
        "{} of {} changes, {} of {} vehicles\n{}",
        got.logs.len(),
        expected.logs.len(),
        got.vehicles.len(),
        expected.vehicles.len(),
        context()
    );
}

/// Rows of `"stateLogs"` now.
pub async fn log_rows(database_url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
    let count = sqlx::query_scalar(r#"SELECT count(*) FROM "stateLogs""#)
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    count
}

/// The invariant: every registered vehicle's state is that of its latest change (by time, ties
/// in lifecycle order, as the lookup orders them), or `quoted` with none. Returns the vehicles
/// that break it.
pub async fn vehicles_off_their_latest_change(database_url: &str) -> Vec<i32> {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
    let off = sqlx::query_scalar(
        r#"SELECT v.id FROM vehicles v
           WHERE v.state IS DISTINCT FROM COALESCE((
               SELECT l.state FROM "stateLogs" l WHERE l."vehicleId" = v.id
               ORDER BY l."timestamp" DESC,
                   CASE l.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END DESC,
                   l.state COLLATE "C" DESC
               LIMIT 1), 'quoted')
           ORDER BY v.id"#,
    )
    .fetch_all(&pool)
    .await
    .expect("invariant query");
    pool.close().await;
    off
}
