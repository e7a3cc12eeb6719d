//! `GET /metrics`: each series is there from the first scrape and moves, by exactly as much as it
//! should, when its event happens. A test binary of its own, its tests taking turns: the recorder
//! is one per process, so exact counts need nothing else counting at the same time.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use vehicle_state_test_support::app::{
    TestApp, spawn_app, spawn_app_with, spawn_replica, spawn_replica_without_postgres,
};

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Every sample of a scrape, keyed by its name and labels as written (`name{a="b"}`).
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let reply = app.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    reply
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample: {l}"));
            let value = value.parse().unwrap_or_else(|_| panic!("a value: {l}"));
            (key.to_owned(), value)
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| {
        panic!(
            "no series {key} in {:?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

/// How much `key` grew between two scrapes (a labelled series not seen before counts from 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    value(after, key) - before.get(key).copied().unwrap_or(0.0)
}

fn lookups(result: &str) -> String {
    format!("vehicle_state_lookups_total{{result=\"{result}\"}}")
}

fn db_errors(kind: &str) -> String {
    format!("vehicle_state_db_errors_total{{kind=\"{kind}\"}}")
}

fn redis_errors(operation: &str, kind: &str) -> String {
    format!("vehicle_state_redis_errors_total{{operation=\"{operation}\",kind=\"{kind}\"}}")
}

const ROUTE: &str = "/vehicles/{id}/timestamp/{ts}";

/// Waits until a lookup of `app` is running in PostgreSQL.
async fn wait_for_a_lookup_in_flight(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.lookups_in_flight().await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(app.lookups_in_flight().await >= 1, "a lookup is held");
}

fn get_in_background(
    app: &TestApp,
    path: &str,
) -> tokio::task::JoinHandle<Result<u16, reqwest::Error>> {
    let (client, url) = (app.client.clone(), format!("{}{path}", app.address));
    tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
}

#[tokio::test]
async fn every_series_is_exposed_from_the_first_scrape() {
    let _serial = one_at_a_time().await;
    let app = spawn_app().await;

    let samples = scrape(&app).await;
    let text = app.get("/metrics").await.body;

    for result in [
        "memory_hit",
        "redis_hit",
        "miss",
        "redis_error",
        "coalesced",
        "stale",
        "shed",
        "error",
    ] {
        value(&samples, &lookups(result));
    }
    for operation in ["get", "set", "ping"] {
        for kind in ["timeout", "unreachable", "reply", "corrupt", "skipped"] {
            value(&samples, &redis_errors(operation, kind));
        }
    }
    for kind in [
        "acquire_timeout",
        "statement_timeout",
        "no_response",
        "unavailable",
        "down",
        "query",
    ] {
        value(&samples, &db_errors(kind));
    }
    for pool in ["db", "redis"] {
        for state in ["in_use", "idle"] {
            value(
                &samples,
                &format!("vehicle_state_{pool}_pool_connections{{state=\"{state}\"}}"),
            );
        }
    }
    let build = format!(
        "vehicle_state_build_info{{version=\"{}\",git_sha=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
    assert!(
        text.contains("vehicle_state_http_requests_total{route=\"/metrics\",status=\"200\"}"),
        "the first scrape is counted by the second: {text}"
    );
    for series in [
        "# TYPE vehicle_state_http_requests_total counter",
        "# TYPE vehicle_state_http_request_duration_seconds histogram",
        "# TYPE vehicle_state_lookups_total counter",
        "# TYPE vehicle_state_db_pool_connections gauge",
        "# TYPE vehicle_state_build_info gauge",
    ] {
        assert!(text.contains(series), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lookup_is_counted_once_by_where_its_answer_came_from() {
    let _serial = one_at_a_time().await;
    let app = spawn_app().await;
    let other = spawn_replica(&app, |_| {}).await;
    let requests = format!("vehicle_state_http_requests_total{{route=\"{ROUTE}\",status=\"200\"}}");
    let timed = format!("vehicle_state_http_request_duration_seconds_count{{route=\"{ROUTE}\"}}");
    let unmatched = "vehicle_state_http_requests_total{route=\"unmatched\",status=\"404\"}";
    let before = scrape(&app).await;

    app.state_at("3", "2022-09-12T10:00:00Z").await; // miss
    app.state_at("3", "2022-09-12T10:00:00Z").await; // Redis hit (then kept in memory)
    app.state_at("3", "2022-09-12T10:00:00Z").await; // memory hit
    other.state_at("3", "2022-09-12T10:00:00Z").await; // Redis hit
    app.get("/no/such/route").await;
    // Twenty requests for one answer held in PostgreSQL: one reads it, the others wait for it
    // (or, arriving after, find it in memory).
    let lock = app.hold_lookups().await;
    let burst: Vec<_> = (0..20)
        .map(|_| get_in_background(&app, "/vehicles/2/timestamp/1662976800"))
        .collect();
    wait_for_a_lookup_in_flight(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = scrape(&app).await;
    drop(lock);
    for request in burst {
        assert_eq!(request.await.expect("task").expect("a response"), 200);
    }
    let after = scrape(&app).await;

    let grew = |key: &str| delta(&before, &after, key);
    assert_eq!(grew(&lookups("miss")), 2.0);
    assert_eq!(grew(&lookups("redis_hit")), 2.0);
    assert!(
        grew(&lookups("coalesced")) >= 1.0,
        "the burst shared one read"
    );
    assert_eq!(
        grew(&lookups("coalesced")) + grew(&lookups("memory_hit")),
        20.0,
        "the repeat from memory and nineteen requests of the burst, each counted once"
    );
    for other_result in ["redis_error", "stale", "shed", "error"] {
        assert_eq!(grew(&lookups(other_result)), 0.0, "{other_result}");
    }
    assert_eq!(grew(&requests), 24.0);
    assert_eq!(grew(&timed), 24.0);
    assert_eq!(grew(unmatched), 1.0);
    assert_eq!(
        value(
            &during,
            "vehicle_state_db_pool_connections{state=\"in_use\"}"
        ),
        1.0,
        "the held lookup's connection"
    );
    assert!(value(&after, "vehicle_state_db_pool_connections{state=\"idle\"}") >= 1.0);
    assert_eq!(
        value(
            &after,
            "vehicle_state_redis_pool_connections{state=\"in_use\"}"
        ),
        2.0,
        "a multiplexed connection per thread that asked Redis: the start-up check's and the one HTTP worker's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_redis_and_postgres_are_counted_by_kind() {
    let _serial = one_at_a_time().await;
    let app = spawn_app_with(|s| {
        // Nothing listens on port 1.
        s.redis.url = "redis://127.0.0.1:1".parse().expect("a URL");
        s.redis.retry_interval = Duration::from_secs(60);
        s.database.statement_timeout = Duration::from_millis(300);
    })
    .await;
    let down = spawn_replica_without_postgres(&app).await;
    let before = scrape(&app).await;

    // Redis refused: the answer comes from PostgreSQL; the write-back is skipped.
    let from_postgres = app.state_at("3", "2022-09-12T10:00:00Z").await;
    // PostgreSQL unreachable, as the replica's start-up check found: failed at once, as `down`.
    let unreachable = down.state_at("1", "2022-09-12T10:00:00Z").await;
    // A lookup held past the statement timeout.
    let lock = app.hold_lookups().await;
    let timed_out = app.state_at("2", "2022-09-12T10:00:00Z").await;
    drop(lock);
    // A defect: the table is gone.
    sqlx::query(r#"DROP TABLE "stateLogs""#)
        .execute(&app.db)
        .await
        .expect("drop the table");
    let broken = app.state_at("1", "1662976800").await;
    let after = scrape(&app).await;

    assert_eq!(from_postgres.status, 200);
    assert_eq!(unreachable.status, 503);
    assert_eq!(timed_out.status, 503);
    assert_eq!(broken.status, 500);
    let grew = |key: &str| delta(&before, &after, key);
    assert_eq!(
        grew(&redis_errors("get", "unreachable")),
        2.0,
        "the first lookup of each of the two replicas"
    );
    assert_eq!(
        grew(&redis_errors("set", "skipped")),
        1.0,
        "Redis is left alone after the failure"
    );
    assert_eq!(
        grew(&lookups("redis_error")),
        1.0,
        "answered by PostgreSQL because Redis failed"
    );
    assert!(
        grew(&redis_errors("get", "skipped")) >= 2.0,
        "later lookups skip Redis"
    );
    assert_eq!(grew(&db_errors("down")), 1.0);
    assert_eq!(
        grew(&db_errors("acquire_timeout")),
        0.0,
        "known down: not waited for"
    );
    assert_eq!(grew(&db_errors("statement_timeout")), 1.0);
    assert_eq!(grew(&db_errors("query")), 1.0);
    assert_eq!(grew(&lookups("error")), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_and_stale_answers_are_counted() {
    let _serial = one_at_a_time().await;
    let app = spawn_app_with(|s| {
        s.http.lookup_concurrency_limit = 1;
        s.cache.ttl_secs = 1;
        s.cache.stale_if_error_secs = 30;
    })
    .await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;
    let before = scrape(&app).await;

    // The one permit is held by a lookup waiting in PostgreSQL; another answer is shed.
    let lock = app.hold_lookups().await;
    let held = get_in_background(&app, "/vehicles/2/timestamp/1662976800");
    wait_for_a_lookup_in_flight(&app).await;
    let shed = app.state_at("1", "2022-09-12T10:00:00Z").await;
    drop(lock);
    assert_eq!(held.await.expect("task").expect("a response"), 200);
    // Past the TTL, with PostgreSQL out of reach: the stale answer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut_off = spawn_replica_without_postgres(&app).await;
    let stale = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;
    let after = scrape(&app).await;

    assert_eq!(shed.status, 503);
    assert_eq!(stale.header("x-cache"), "STALE");
    assert_eq!(delta(&before, &after, &lookups("shed")), 1.0);
    assert_eq!(delta(&before, &after, &lookups("stale")), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_gathered_into_few_statements() {
    let _serial = one_at_a_time().await;
    let app = spawn_app().await;
    let statements = "vehicle_state_db_batch_size_count";
    let pairs = "vehicle_state_db_batch_size_sum";
    let redis_reads = "vehicle_state_redis_batch_size_count";
    let before = scrape(&app).await;

    // Sixty distinct uncached lookups while PostgreSQL holds the first batches: the rest queue
    // (no timer) and go out together once those return.
    let lock = app.hold_lookups().await;
    let burst: Vec<_> = (0..60)
        .map(|i| {
            // A vehicle each (none of which exists): the same vehicle at another instant would
            // share its segment's fetch.
            let path = format!("/vehicles/{}/timestamp/1662976800", 1_000 + i);
            get_in_background(&app, &path)
        })
        .collect();
    wait_for_a_lookup_in_flight(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = app.lookups_in_flight().await;
    drop(lock);
    for request in burst {
        assert_eq!(request.await.expect("task").expect("a response"), 404);
    }
    let after = scrape(&app).await;

    let grew = |key: &str| delta(&before, &after, key);
    eprintln!(
        "60 misses: {} statements, {} Redis reads, {held} statements held at once",
        grew(statements),
        grew(redis_reads)
    );
    assert_eq!(grew(pairs), 60.0, "every miss asked PostgreSQL once");
    assert!(
        grew(statements) <= 10.0,
        "far fewer statements than misses: {}",
        grew(statements)
    );
    assert!(
        grew(redis_reads) <= 10.0,
        "and Redis reads: {}",
        grew(redis_reads)
    );
    assert!(
        held <= 4,
        "at most LOOKUP_BATCHES_IN_FLIGHT (4) at once: {held}"
    );
    assert_eq!(grew(&lookups("miss")), 60.0, "each lookup counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_preflight_is_neither_a_request_nor_a_lookup_in_the_metrics() {
    let _serial = one_at_a_time().await;
    let origins = vehicle_state::config::CorsOrigins::parse("https://dashboard.example.com")
        .expect("an origin");
    let app = spawn_app_with(|s| s.cors.allowed_origins = Some(origins)).await;
    let before = scrape(&app).await;

    for path in [
        "/vehicles/states",
        "/vehicles/3/timestamp/2022-09-12T10:00:00Z",
    ] {
        let reply = app
            .client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", app.address))
            .header("origin", "https://dashboard.example.com")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .expect("a response");
        assert_eq!(reply.status(), 200, "{path}");
    }
    let after = scrape(&app).await;

    let moved: Vec<_> = after
        .iter()
        .filter(|(key, _)| {
            key.starts_with("vehicle_state_lookups_total")
                || key.starts_with("vehicle_state_http_requests_total")
                || key.starts_with("vehicle_state_http_request_duration_seconds_count")
        })
        .filter(|(key, value)| before.get(*key).copied().unwrap_or(0.0) != **value)
        .map(|(key, _)| key)
        // The first scrape itself is a request to /metrics.
        .filter(|key| !key.contains("route=\"/metrics\""))
        .collect();
    assert!(moved.is_empty(), "preflights moved {moved:?}");
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("vehicle_state_lookups_total")),
        "the series are read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_bind_addr_metrics_are_served_on_their_own_port_only() {
    let _serial = one_at_a_time().await;
    let app = spawn_app_with(|s| {
        s.http.metrics_bind_addr = Some(vehicle_state::config::OptionalAddr(Some(
            "127.0.0.1:0".parse().expect("an address"),
        )))
    })
    .await;
    let metrics = app
        .metrics_address
        .clone()
        .expect("a port of its own for /metrics");
    assert_ne!(metrics, app.address);

    app.get("/metrics")
        .await
        .assert_problem(404, "/problems/route-not-found");
    let answer = app.get("/vehicles/3/timestamp/2022-09-12T10:00:00Z").await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let get = |path: &str| {
        let url = format!("{metrics}{path}");
        let client = app.client.clone();
        async move {
            let reply = client.get(url).send().await.expect("a response");
            let status = reply.status().as_u16();
            (status, reply.text().await.expect("a body"))
        }
    };
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "vehicle_state_http_requests_total{{route=\"{ROUTE}\",status=\"200\"}} "
        ))),
        "the public port's lookup is counted in what the metrics port serves:\n{text}"
    );
    let (status, text) = get("/vehicles/3/timestamp/2022-09-12T10:00:00Z").await;
    assert_eq!(
        status, 404,
        "the metrics port serves nothing but /metrics: {text}"
    );
}
