//! Concurrent misses gathered into batches: a bad row fails only its own lookup, and a lone
//! lookup is not kept waiting for company.

use std::time::{Duration, Instant};

use serde_json::json;

use vehicle_state_test_support::app::{TestApp, spawn_app, spawn_replica};

#[tokio::test]
async fn a_row_that_breaks_the_statement_fails_only_its_own_lookup() {
    let app = spawn_app().await;
    // A state change at -infinity: it cannot become an instant, so its lookup fails.
    sqlx::raw_sql(
        r#"INSERT INTO vehicles (id, make, model, state) VALUES (50, 'SEAT', 'LEON', 'sold');
           INSERT INTO "stateLogs" ("vehicleId", state, "timestamp") VALUES (50, 'sold', '-infinity');"#,
    )
    .execute(&app.db)
    .await
    .expect("a bad row");

    let reply = app
        .batch(json!([
            {"id": 50, "timestamp": "2022-09-12T10:00:00Z"},
            {"id": 3, "timestamp": "2022-09-12T10:00:00Z"},
            {"id": 999, "timestamp": "2022-09-12T10:00:00Z"},
            {"id": 1, "timestamp": "2000-01-01T00:00:00Z"},
        ]))
        .await;
    let single = app.state_at("50", "2022-09-13T10:00:00Z").await;
    let history = app.get("/vehicles/50/history").await;

    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<_> = reply.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [Some(500), Some(200), Some(404), Some(404)]);
    single.assert_problem(500, "/problems/internal-error");
    history.assert_problem(500, "/problems/internal-error");
}

/// Median time of `n` lookups one after another, each of a vehicle not asked before (none of
/// them exists: each is a miss, read from PostgreSQL).
async fn median_lone_miss(app: &TestApp, first: i64, n: i64) -> Duration {
    let mut took = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let reply = app.state_at(&(first + i).to_string(), "1662976800").await;
        took.push(started.elapsed());
        assert_eq!(reply.status, 404, "{}", reply.body);
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    took.sort_unstable();
    took[took.len() / 2]
}

#[tokio::test]
async fn a_lone_miss_goes_out_at_once_as_without_gathering() {
    let app = spawn_app().await;
    let ungathered = spawn_replica(&app, |s| s.http.lookup_batch_max = 1).await;
    // Warm both (connections, prepared statements) before measuring.
    median_lone_miss(&app, 1_000_000, 5).await;
    median_lone_miss(&ungathered, 1_001_000, 5).await;

    let gathered = median_lone_miss(&app, 1_002_000, 41).await;
    let alone = median_lone_miss(&ungathered, 1_003_000, 41).await;

    eprintln!("a lone miss: {gathered:?} gathered, {alone:?} with LOOKUP_BATCH_MAX=1");
    assert!(
        gathered <= alone * 3 / 2 + Duration::from_millis(2),
        "no timer: a lone miss is not held ({gathered:?} against {alone:?})"
    );
}
