//! PostgreSQL and Redis going away and coming back while the service runs.

use std::time::{Duration, Instant};

use crate::chaos::ChaosProxy;
use crate::helpers::{Reply, TestApp, postgres_addr, redis_addr, spawn_app_with, via_port};

/// Asks until `done` holds for a reply, for at most `within`; returns every reply seen.
async fn poll(
    app: &TestApp,
    path: &str,
    within: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Vec<Reply> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let reply = app.get(path).await;
        let finished = done(&reply);
        seen.push(reply);
        if finished || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_answers_continue_and_caching_resumes_when_it_returns() {
    let proxy = ChaosProxy::start(redis_addr()).await;
    let app =
        spawn_app_with(|s| s.redis.redis_url = format!("redis://127.0.0.1:{}", proxy.port())).await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;
    assert_eq!(
        app.state_at("3", "2022-09-12T10:00:00Z")
            .await
            .header("x-cache"),
        "HIT"
    );

    proxy.cut();
    // Instants not asked before, so neither tier holds them.
    let during = [
        app.state_at("3", "2022-09-12T10:00:01Z").await,
        app.state_at("2", "2022-09-12T10:00:00Z").await,
        app.state_at("1", "2022-09-12T10:00:00Z").await,
    ];
    assert!(
        app.cache_keys().await.len() == 1,
        "nothing new reached Redis while it was away"
    );
    proxy.restore();
    // A new instant each time (memory would answer a repeat): once Redis is back, the answer
    // is written to it again, without a restart.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut written = false;
    for second in 0_i64.. {
        let ts = 1_662_976_900 + second;
        let reply = app.state_at("2", &ts.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let key = format!("{}:v2:state:2:{}", app.prefix, ts * 1_000_000);
        written = app.cache_keys().await.contains(&key);
        if written || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for reply in &during {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    assert_eq!(during[0].json()["state"], "selling");
    assert!(written, "caching in Redis resumed by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgres_goes_away_cached_answers_continue_and_the_service_recovers_when_it_returns()
{
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let app = spawn_app_with(|s| {
        let url = via_port(&s.database.database_url.text, proxy.port());
        s.database.database_url = url.parse().expect("a URL");
        s.database.db_acquire_timeout_ms = 500;
    })
    .await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;

    proxy.cut();
    let cached = app.state_at("3", "2022-09-12T10:00:00Z").await;
    let started = Instant::now();
    let uncached = app.state_at("2", "2022-09-12T10:00:00Z").await;
    let uncached_took = started.elapsed();
    let not_ready = app.get("/readyz").await;
    proxy.restore();
    let ready = poll(&app, "/readyz", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .await;
    let recovered = app.state_at("2", "2022-09-12T10:00:00Z").await;

    assert_eq!(cached.status, 200);
    assert_eq!(cached.header("x-cache"), "HIT");
    uncached.assert_problem(503, "/problems/database-unavailable");
    assert_eq!(uncached.header("retry-after"), "5");
    assert!(
        uncached_took < Duration::from_secs(3),
        "bounded by the acquire timeout: {uncached_took:?}"
    );
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["postgres"], "down");
    assert_eq!(
        ready.last().map(|r| r.status),
        Some(200),
        "ready again by itself"
    );
    assert_eq!(recovered.status, 200, "{}", recovered.body);
    assert_eq!(recovered.json()["state"], "selling");
}
