//! PostgreSQL and Redis going away and coming back while the service runs.

use std::time::{Duration, Instant};

use vehicle_state_test_support::app::{
    TestApp, spawn_app, spawn_app_with, spawn_replica, spawn_replica_without_postgres,
};
use vehicle_state_test_support::chaos::ChaosProxy;
use vehicle_state_test_support::http::Reply;
use vehicle_state_test_support::servers::{postgres_addr, redis_addr, via_port};

/// Asks until `done` holds for a reply, for at most `within`; returns every reply seen.
async fn poll(
    app: &TestApp,
    path: &str,
    within: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Vec<Reply> {
    poll_every(app, path, Duration::from_millis(100), within, done).await
}

/// [`poll`], asking every `every`.
async fn poll_every(
    app: &TestApp,
    path: &str,
    every: Duration,
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
        tokio::time::sleep(every).await;
    }
}

/// An app whose Redis is reached through a proxy the test can cut.
async fn spawn_app_behind_a_redis_proxy() -> (ChaosProxy, TestApp) {
    let proxy = ChaosProxy::start(redis_addr()).await;
    let app = spawn_app_with(|s| {
        s.redis.url = format!("redis://127.0.0.1:{}", proxy.port())
            .parse()
            .expect("a URL")
    })
    .await;
    (proxy, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_answers_continue_and_caching_resumes_when_it_returns() {
    let (proxy, app) = spawn_app_behind_a_redis_proxy().await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;
    assert_eq!(
        app.state_at("3", "2022-09-12T10:00:00Z")
            .await
            .header("x-cache"),
        "HIT"
    );

    proxy.cut();
    // Segments not asked before, so neither tier holds them.
    let during = [
        app.state_at("3", "2022-09-11T10:00:00Z").await,
        app.state_at("2", "2022-09-12T10:00:00Z").await,
        app.state_at("1", "2022-09-12T10:00:00Z").await,
    ];
    assert!(
        app.cache_keys().await.len() == 1,
        "nothing new reached Redis while it was away"
    );
    proxy.restore();
    // A new vehicle each time (memory would answer any instant of one it holds): once Redis is
    // back, the answer (here, that there is no such vehicle) is written to it again, without a
    // restart.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut written = false;
    for n in 0_i64.. {
        let id = 100_000 + n;
        let reply = app.state_at(&id.to_string(), "1662976900").await;
        assert_eq!(reply.status, 404, "{}", reply.body);
        let key = format!("{}:v5:segments:{{{id}}}", app.prefix);
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
    assert_eq!(during[0].json()["state"], "quoted");
    assert!(written, "caching in Redis resumed by itself");
}

/// A worker's Redis connection closed while it sat idle (Redis's `timeout`, a NAT or a load
/// balancer in between, a restart between two requests) costs nothing: the next call finds it
/// broken, and tries once more on a new connection before counting Redis as unreachable, so the
/// answer is cached as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_closed_while_idle_is_replaced_within_the_next_call() {
    let (proxy, app) = spawn_app_behind_a_redis_proxy().await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;

    proxy.cut();
    proxy.restore();
    let after = app.state_at("2", "2022-09-12T10:00:00Z").await;
    let keys = app.cache_keys().await;

    assert_eq!(after.status, 200, "{}", after.body);
    assert!(
        keys.contains(&format!("{}:v5:segments:{{2}}", app.prefix)),
        "written back to Redis, on a new connection: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgres_goes_away_cached_answers_continue_and_the_service_recovers_when_it_returns()
{
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let app = spawn_app_with(|s| {
        let url = via_port(&s.database.url.text, proxy.port());
        s.database.url = url.parse().expect("a URL");
        s.database.acquire_timeout = Duration::from_millis(500);
    })
    .await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;

    proxy.cut();
    let cached = app.state_at("3", "2022-09-12T10:00:00Z").await;
    // The first uncached lookup finds the pooled connection dead; a probe confirms the outage.
    let (uncached, uncached_took) = timed(app.state_at("2", "2022-09-12T10:00:00Z")).await;
    // From then on PostgreSQL is known down: lookups it would answer fail at once, as does
    // readiness.
    let mut known_down = Vec::new();
    for second in 0..20 {
        let ts = (1_662_976_900 + second).to_string();
        known_down.push(timed(app.state_at("1", &ts)).await);
    }
    let (not_ready, not_ready_took) = timed(app.get("/readyz")).await;
    proxy.restore();
    let restored = Instant::now();
    let ready = poll_every(
        &app,
        "/readyz",
        Duration::from_millis(5),
        Duration::from_secs(10),
        |r| r.status == 200,
    )
    .await;
    let ready_after = restored.elapsed();
    let recovered = app.state_at("2", "2022-09-12T10:00:00Z").await;

    let slowest = known_down
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "PostgreSQL cut: first uncached lookup 503 in {} ms; the next {} in at most {} ms; /readyz 503 in {} ms; ready {} ms after it was back",
        uncached_took.as_millis(),
        known_down.len(),
        slowest.as_millis(),
        not_ready_took.as_millis(),
        ready_after.as_millis()
    );
    assert_eq!(cached.status, 200);
    assert_eq!(cached.header("x-cache"), "HIT");
    uncached.assert_problem(503, "/problems/database-unavailable");
    assert_eq!(uncached.header("retry-after"), "5");
    assert!(
        uncached_took < Duration::from_millis(500 + 200),
        "bounded by the acquire timeout: {uncached_took:?}"
    );
    for (reply, took) in &known_down {
        reply.assert_problem(503, "/problems/database-unavailable");
        assert_eq!(reply.header("retry-after"), "5");
        assert!(
            *took < Duration::from_millis(50),
            "known down: the 503 at once, not after the acquire timeout: {took:?}"
        );
    }
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["postgres"], "down");
    assert!(
        not_ready_took < Duration::from_millis(50),
        "known down: /readyz at once: {not_ready_took:?}"
    );
    assert_eq!(
        ready.last().map(|r| r.status),
        Some(200),
        "ready again by itself"
    );
    assert_eq!(recovered.status, 200, "{}", recovered.body);
    assert_eq!(recovered.json()["state"], "selling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_postgres_is_unreachable_answers_503_at_once_and_recovers() {
    let seeded = spawn_app().await;
    let proxy = ChaosProxy::start(postgres_addr()).await;
    proxy.cut();
    let app = spawn_replica(&seeded, |s| {
        let url = via_port(&s.database.url.text, proxy.port());
        s.database.url = url.parse().expect("a URL");
        s.database.acquire_timeout = Duration::from_millis(2000);
    })
    .await;

    let (first, first_took) = timed(app.state_at("2", "2022-09-12T10:00:00Z")).await;
    let (not_ready, not_ready_took) = timed(app.get("/readyz")).await;
    proxy.restore();
    let ready = poll(&app, "/readyz", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .await;
    let answered = app.state_at("2", "2022-09-12T10:00:00Z").await;

    first.assert_problem(503, "/problems/database-unavailable");
    assert!(
        first_took < Duration::from_millis(50),
        "the start-up check found it unreachable: no 2 s wait: {first_took:?}"
    );
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready_took < Duration::from_millis(50),
        "{not_ready_took:?}"
    );
    assert_eq!(ready.last().map(|r| r.status), Some(200));
    assert_eq!(answered.status, 200, "{}", answered.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_misses_answers_return_as_soon_as_postgres_does() {
    // Misses that arrive while a batch is out are gathered; through an outage, those queued
    // before it was seen fail at once. Once PostgreSQL is back, none may still fail.
    let proxy = ChaosProxy::start(postgres_addr()).await;
    let app = std::sync::Arc::new(
        spawn_app_with(|s| {
            let url = via_port(&s.database.url.text, proxy.port());
            s.database.url = url.parse().expect("a URL");
            s.database.acquire_timeout = Duration::from_millis(300);
        })
        .await,
    );
    // Open loop: a request every millisecond whatever the answers, as from many front ends.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut requests = Vec::new();
            // A new vehicle every time (none of them exists): each request is a miss in both
            // tiers, as a new segment is.
            for n in 0_i64.. {
                every.tick().await;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let app = app.clone();
                requests.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let reply = app.state_at(&(1_000 + n).to_string(), "1662976900").await;
                    let unavailable = reply.status == 503
                        && reply.json()["type"] == "/problems/database-unavailable";
                    (sent, reply.status, unavailable)
                }));
            }
            requests
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.restore();
    let ready = poll_every(
        &app,
        "/readyz",
        Duration::from_millis(5),
        Duration::from_secs(10),
        |r| r.status == 200,
    )
    .await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for request in load.await.expect("the load task") {
        seen.push(request.await.expect("a request task"));
    }

    // Only "database unavailable" is counted against it: a request shed as overloaded (the
    // open loop can outrun a debug build on two cores) is not what is measured here.
    let settled = back + Duration::from_millis(200);
    let count = |during: &dyn Fn(&Instant) -> bool, what: &dyn Fn(u16, bool) -> bool| {
        seen.iter()
            .filter(|(sent, status, unavailable)| during(sent) && what(*status, *unavailable))
            .count()
    };
    let before = |sent: &Instant| *sent < back;
    let after = |sent: &Instant| *sent > settled;
    let unavailable = |_: u16, unavailable: bool| unavailable;
    let answered = |status: u16, _: bool| status == 404;
    let any = |_: u16, _: bool| true;
    eprintln!(
        "steady misses through a PostgreSQL cut: before it was back, {} of {} answered 'database unavailable'; from 200 ms after, {} of {} (and {} answered)",
        count(&before, &unavailable),
        count(&before, &any),
        count(&after, &unavailable),
        count(&after, &any),
        count(&after, &answered),
    );
    assert_eq!(ready.last().map(|r| r.status), Some(200));
    assert!(count(&before, &unavailable) > 0, "the cut was seen");
    assert!(
        count(&after, &answered) > 100,
        "steady load answered after: {}",
        count(&after, &answered)
    );
    assert_eq!(
        count(&after, &unavailable),
        0,
        "no miss sent 200 ms after PostgreSQL was back is told it is unavailable"
    );
}

/// A reply and how long it took.
async fn timed(request: impl Future<Output = Reply>) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = request.await;
    (reply, started.elapsed())
}

#[tokio::test]
async fn with_stale_if_error_an_answer_past_its_ttl_is_served_marked_stale_while_postgres_is_down()
{
    let app = spawn_app_with(|s| {
        s.cache.ttl_secs = 1;
        s.cache.stale_if_error_secs = 30;
    })
    .await;
    let fresh = app.state_at("3", "2022-09-12T10:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut_off = spawn_replica_without_postgres(&app).await;

    let stale = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;
    let again = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;
    let uncached = cut_off.state_at("2", "2022-09-12T10:00:00Z").await;
    let refreshed = app.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(fresh.header("x-cache"), "MISS");
    let cache_control = fresh.header("cache-control");
    assert!(
        cache_control.starts_with("public, max-age=")
            && cache_control.ends_with(", stale-if-error=30"),
        "downstream caches are told the same window: {cache_control}"
    );
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert_eq!(stale.body, fresh.body);
    assert_eq!(stale.header("x-cache"), "STALE");
    assert_eq!(
        stale.header("cache-control"),
        "public, max-age=0, stale-if-error=30"
    );
    assert_eq!(
        again.header("x-cache"),
        "STALE",
        "a stale answer is never kept in memory as if it were fresh"
    );
    let age: u64 = stale.header("age").parse().expect("an Age header");
    assert!((1..30).contains(&age), "age {age}");
    uncached.assert_problem(503, "/problems/database-unavailable");
    assert_eq!(
        refreshed.header("x-cache"),
        "MISS",
        "with PostgreSQL up, a stale answer is read again, never served"
    );
}

#[tokio::test]
async fn without_stale_if_error_no_answer_is_served_past_its_ttl() {
    let app = spawn_app_with(|s| s.cache.ttl_secs = 1).await;
    let fresh = app.state_at("3", "2022-09-12T10:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut_off = spawn_replica_without_postgres(&app).await;

    let expired = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;

    fresh.assert_max_age_at_most(1);
    expired.assert_problem(503, "/problems/database-unavailable");
    assert!(
        app.cache_keys().await.is_empty(),
        "gone from Redis at the TTL"
    );
}

#[tokio::test]
async fn a_stale_answer_past_the_stale_if_error_window_is_not_served() {
    let app = spawn_app_with(|s| {
        s.cache.ttl_secs = 1;
        s.cache.stale_if_error_secs = 1;
    })
    .await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let cut_off = spawn_replica_without_postgres(&app).await;

    let too_old = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;

    too_old.assert_problem(503, "/problems/database-unavailable");
}

#[tokio::test]
async fn connections_older_than_db_max_lifetime_secs_are_replaced_so_a_dns_failover_is_followed() {
    let app = spawn_app_with(|s| s.database.max_lifetime = Duration::from_secs(1)).await;
    let database = app
        .settings
        .database
        .url
        .options
        .get_database()
        .expect("a database name")
        .to_owned();
    let backends = || async {
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'vehicle-state'",
        )
        .bind(&database)
        .fetch_all(&app.db)
        .await
        .expect("pg_stat_activity");
        pids.into_iter().map(|(pid,)| pid).collect::<Vec<_>>()
    };
    // Three vehicles: three misses.
    app.state_at("3", "2022-09-12T10:00:01Z").await;
    let first = backends().await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The next lookup finds its connection past its lifetime: it is closed when given back,
    // and the lookup after that opens a new one.
    let reply = app.state_at("2", "2022-09-12T10:00:02Z").await;
    let next = app.state_at("1", "2022-09-12T10:00:03Z").await;
    let later = backends().await;

    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(next.status, 200, "{}", next.body);
    assert!(!first.is_empty(), "the service held a connection");
    assert!(
        !later.is_empty(),
        "and holds one again: {first:?} then {later:?}"
    );
    assert!(
        first.iter().all(|pid| !later.contains(pid)),
        "every connection was replaced: {first:?} then {later:?}"
    );
}
