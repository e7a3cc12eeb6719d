//! `GET /metrics`: each series is there and moves when its event happens. The recorder is one
//! per process and tests run in parallel, so counters are compared as "grew by at least".

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::helpers::{
    TestApp, spawn_app, spawn_app_with, spawn_replica, spawn_replica_without_postgres,
};

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
            (
                key.to_owned(),
                value.parse().unwrap_or_else(|_| panic!("a value: {l}")),
            )
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

fn lookups(result: &str) -> String {
    format!("vehicle_state_lookups_total{{result=\"{result}\"}}")
}

const ROUTE: &str = "/vehicles/{id}/timestamp/{ts}";

#[tokio::test]
async fn every_series_is_exposed_from_the_first_scrape() {
    let app = spawn_app().await;

    let samples = scrape(&app).await;
    let text = app.get("/metrics").await.body;

    for result in [
        "memory_hit",
        "redis_hit",
        "miss",
        "coalesced",
        "stale",
        "shed",
        "error",
    ] {
        value(&samples, &lookups(result));
    }
    for operation in ["get", "set", "ping"] {
        for kind in ["timeout", "unreachable", "reply", "corrupt", "skipped"] {
            value(
                &samples,
                &format!(
                    "vehicle_state_redis_errors_total{{operation=\"{operation}\",kind=\"{kind}\"}}"
                ),
            );
        }
    }
    for kind in ["timeout", "unavailable", "query"] {
        value(
            &samples,
            &format!("vehicle_state_db_errors_total{{kind=\"{kind}\"}}"),
        );
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
    ] {
        assert!(text.contains(series), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_counted_by_where_the_answer_came_from() {
    let app = spawn_app().await;
    let other = spawn_replica(&app, |_| {}).await;
    let requests = format!("vehicle_state_http_requests_total{{route=\"{ROUTE}\",status=\"200\"}}");
    let timed = format!("vehicle_state_http_request_duration_seconds_count{{route=\"{ROUTE}\"}}");
    let unmatched = "vehicle_state_http_requests_total{route=\"unmatched\",status=\"404\"}";
    let before = scrape(&app).await;

    app.state_at("3", "2022-09-12T10:00:00Z").await; // miss
    app.state_at("3", "2022-09-12T10:00:00Z").await; // memory hit
    other.state_at("3", "2022-09-12T10:00:00Z").await; // Redis hit
    app.get("/no/such/route/12345").await;
    // Twenty requests for one answer held in PostgreSQL: one fetches, the others wait for it.
    let lock = app.hold_lookups().await;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (
                app.client.clone(),
                format!("{}/vehicles/2/timestamp/1662976800", app.address),
            );
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.lookups_in_flight().await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = scrape(&app).await;
    drop(lock);
    for request in burst {
        assert_eq!(request.await.expect("task").expect("a response"), 200);
    }
    let after = scrape(&app).await;

    let grew = |key: &str, by: f64| {
        // A labelled series first seen in this test was absent before: zero.
        let was = before.get(key).copied().unwrap_or(0.0);
        let is = value(&after, key);
        assert!(is >= was + by, "{key}: {was} -> {is}, expected +{by}");
    };
    grew(&lookups("miss"), 2.0);
    grew(&lookups("memory_hit"), 1.0);
    grew(&lookups("redis_hit"), 1.0);
    grew(&lookups("coalesced"), 1.0);
    grew(&requests, 23.0);
    grew(&timed, 23.0);
    grew(unmatched, 1.0);
    assert!(
        value(
            &during,
            "vehicle_state_db_pool_connections{state=\"in_use\"}"
        ) >= 1.0,
        "a connection is in use while a lookup is held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_redis_and_postgres_and_shed_lookups_are_counted() {
    // Redis: nothing listens on port 1.
    let app = spawn_app_with(|s| {
        s.redis.redis_url = "redis://127.0.0.1:1".to_owned();
        s.http.lookup_concurrency_limit = 1;
        s.database.db_statement_timeout_ms = 300;
    })
    .await;
    let down = spawn_replica_without_postgres(&app).await;
    let before = scrape(&app).await;

    app.state_at("3", "2022-09-12T10:00:00Z").await;
    down.state_at("1", "2022-09-12T10:00:00Z").await;
    // A statement timeout, with the only permit taken, then a lookup shed for lack of one.
    let lock = app.hold_lookups().await;
    let held = tokio::spawn({
        let (client, url) = (
            app.client.clone(),
            format!("{}/vehicles/2/timestamp/1662976800", app.address),
        );
        async move { client.get(url).send().await.map(|r| r.status()) }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.lookups_in_flight().await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = app.state_at("1", "1662976801").await;
    let timed_out = held.await.expect("task").expect("a response");
    drop(lock);
    let after = scrape(&app).await;

    assert_eq!(shed.status, 503);
    assert_eq!(timed_out, 503);
    let grew = |key: &str| {
        let (was, is) = (value(&before, key), value(&after, key));
        assert!(is > was, "{key}: {was} -> {is}");
    };
    grew("vehicle_state_redis_errors_total{operation=\"get\",kind=\"unreachable\"}");
    grew("vehicle_state_db_errors_total{kind=\"timeout\"}");
    grew(&lookups("shed"));
    grew(&lookups("error"));
    let unavailable = |s: &HashMap<String, f64>| {
        value(s, "vehicle_state_db_errors_total{kind=\"unavailable\"}")
            + value(s, "vehicle_state_db_errors_total{kind=\"timeout\"}")
    };
    assert!(unavailable(&after) >= unavailable(&before) + 2.0);
}
