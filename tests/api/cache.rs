use std::time::{Duration, Instant};

use vehicle_state_test_support::app::{
    spawn_app, spawn_app_with, spawn_replica, spawn_replica_without_postgres,
};

const README_ANSWER: &str = r#"{"vehicle":{"id":3,"make":"VW","model":"GOLF"},"state":"selling","stateSince":"2022-09-11T23:21:38Z","until":"2022-09-12T12:41:41Z","timestamp":"2022-09-12T10:00:00Z"}"#;

#[tokio::test]
async fn a_repeated_lookup_is_served_from_the_cache() {
    let app = spawn_app().await;

    let first = app.state_at("3", "2022-09-12T10:00:00Z").await;
    let second = app.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), "application/json");
    let max_age: u64 = second
        .header("cache-control")
        .strip_prefix("public, max-age=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cache-control: {}", second.header("cache-control")));
    assert!((58..=60).contains(&max_age), "max-age {max_age}");
    assert!(
        !second.body.contains("HIT") && !second.body.contains("cache"),
        "{}",
        second.body
    );
}

/// Memory keeps an answer on second sight: one just read from PostgreSQL is in Redis only (most
/// misses are keys asked once); asked again, it comes from Redis and is kept in memory too.
#[tokio::test]
async fn memory_keeps_an_answer_once_it_is_asked_again() {
    let app = spawn_app().await;

    let once = app.state_at("3", "2022-09-13T00:00:00Z").await;
    app.forget_redis().await;
    let once_after = app.state_at("3", "2022-09-13T00:00:00Z").await;
    let first = app.state_at("3", "2022-09-12T10:00:00Z").await;
    let second = app.state_at("3", "2022-09-12T10:00:00Z").await;
    app.forget_redis().await;
    let third = app.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(once.header("x-cache"), "MISS");
    assert_eq!(
        once_after.header("x-cache"),
        "MISS",
        "asked once: in Redis only, and Redis forgot it"
    );
    assert_eq!(once_after.body, once.body);
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(second.header("x-cache"), "HIT", "from Redis");
    assert_eq!(third.header("x-cache"), "HIT", "from memory");
    assert_eq!(third.body, first.body);
}

#[tokio::test]
async fn an_equivalent_spelling_of_the_instant_shares_the_cache_entry() {
    let app = spawn_app().await;

    let first = app.state_at("3", "2022-09-12 15:00:00+05").await;
    let second = app.state_at("3", "2022-09-12T10:00:00Z").await;
    let third = app.state_at("3", "1662976800").await;

    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(third.header("x-cache"), "HIT");
    assert_eq!(second.body, README_ANSWER);
    assert_eq!(third.body, README_ANSWER);
    assert_eq!(
        app.cache_keys().await,
        [format!("{}:v5:segments:{{3}}", app.prefix)]
    );
}

#[tokio::test]
async fn both_kinds_of_not_found_are_cached_too() {
    let app = spawn_app().await;

    for (id, ts, kind) in [
        ("9", "2022-09-12T10:00:00Z", "/problems/vehicle-not-found"),
        (
            "1",
            "2000-01-01T00:00:00Z",
            "/problems/no-state-at-timestamp",
        ),
    ] {
        let first = app.state_at(id, ts).await;
        let second = app.state_at(id, ts).await;

        first.assert_problem(404, kind);
        second.assert_problem(404, kind);
        assert_eq!(first.header("x-cache"), "MISS");
        assert_eq!(second.header("x-cache"), "HIT");
        assert_eq!(second.body, first.body);
        assert!(
            second
                .header("cache-control")
                .starts_with("public, max-age=")
        );
    }
}

#[tokio::test]
async fn a_cached_answer_is_kept_for_the_ttl_and_then_read_again() {
    let app = spawn_app_with(|s| s.cache.ttl_secs = 1).await;
    let first = app.state_at("3", "2030-01-01T00:00:00Z").await;
    assert_eq!(first.json()["state"], "sold");
    // A new state change is not seen while the answer is cached...
    app.add_state_log(3, "quoted", "2025-01-01 00:00:00+00")
        .await;
    let mut conn = app.redis_conn().await;
    let key = format!("{}:v5:segments:{{3}}", app.prefix);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        (1..=1000).contains(&pttl),
        "the entry expires within the TTL, got {pttl} ms"
    );

    let cached = app.state_at("3", "2030-01-01T00:00:00Z").await;

    assert_eq!(cached.header("x-cache"), "HIT");
    assert_eq!(cached.json()["state"], "sold");
    cached.assert_max_age_at_most(1);
    // ...and is, once the TTL has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = app.state_at("3", "2030-01-01T00:00:00Z").await;
    assert_eq!(fresh.header("x-cache"), "MISS");
    assert_eq!(fresh.json()["state"], "quoted");
    fresh.assert_max_age_at_most(1);
}

#[tokio::test]
async fn one_replica_serves_what_another_cached() {
    let app = spawn_app().await;
    let other = spawn_replica(&app, |_| {}).await;

    let first = app.state_at("3", "2022-09-12T10:00:00Z").await;
    let from_other = other.state_at("3", "2022-09-12 10:00:00+00").await;

    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(from_other.header("x-cache"), "HIT");
    assert_eq!(from_other.body, README_ANSWER);
}

#[tokio::test]
async fn garbage_in_redis_is_replaced_by_an_answer_from_postgres() {
    let app = spawn_app().await;
    let key = format!("{}:v5:segments:{{3}}", app.prefix);
    let mut conn = app.redis_conn().await;
    // A member where the answer at the instant asked would be, that is not an answer.
    redis::pipe()
        .cmd("ZADD")
        .arg(&key)
        .arg(1_662_976_800_000_000_i64)
        .arg(b"\xff\x00not json")
        .cmd("EXPIRE")
        .arg(&key)
        .arg(60)
        .query_async::<()>(&mut conn)
        .await
        .expect("ZADD");

    let first = app.state_at("3", "2022-09-12T10:00:00Z").await;
    let second = app.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(first.status, 200);
    assert_eq!(first.body, README_ANSWER);
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.body, README_ANSWER);
}

#[tokio::test]
async fn when_redis_is_down_answers_come_from_postgres() {
    // Port 1 on loopback: nothing listens, so every connection is refused.
    let app = spawn_app_with(|s| s.redis.url = "redis://127.0.0.1:1".parse().expect("a URL")).await;

    for id in ["3", "2", "1"] {
        let reply = app.state_at(id, "1662976800").await;

        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-cache"), "MISS");
    }
    // This replica's memory still serves what it read, at any instant of its segment.
    for ts in ["1662976800", "1662976801", "2022-09-12T12:00:00Z"] {
        let repeat = app.state_at("3", ts).await;
        assert_eq!(repeat.header("x-cache"), "HIT", "{ts}");
        assert_eq!(repeat.json()["state"], "selling");
    }
    let repeat = app.state_at("3", "1662976800").await;
    assert_eq!(repeat.body, README_ANSWER);
}

#[tokio::test]
async fn when_redis_hangs_answers_come_from_postgres_within_the_redis_timeout() {
    // A listener that accepts and never answers: every Redis call must give up on its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let app = spawn_app_with(|s| {
        s.redis.url = format!("redis://127.0.0.1:{port}").parse().expect("a URL");
        s.redis.timeout = Duration::from_millis(150);
    })
    .await;

    for id in ["3", "2", "1"] {
        let started = Instant::now();
        let reply = app.state_at(id, "1662976800").await;
        let took = started.elapsed();

        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-cache"), "MISS");
        // One bounded read and one bounded write, plus the lookup itself.
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }
    silent.abort();
}

#[tokio::test]
async fn when_postgres_is_down_an_uncached_lookup_is_unavailable_with_retry_after() {
    let app = spawn_app().await;
    let cut_off = spawn_replica_without_postgres(&app).await;

    let started = Instant::now();
    let reply = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;

    let detail = reply.assert_problem(503, "/problems/database-unavailable");
    assert_eq!(reply.header("retry-after"), "5");
    assert_eq!(reply.header("cache-control"), "no-store");
    assert!(
        !detail.contains("127.0.0.1") && !detail.contains("refused"),
        "no internals: {detail}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the acquire timeout"
    );
    assert!(app.cache_keys().await.is_empty(), "a failure is not cached");
}

#[tokio::test]
async fn when_postgres_is_down_a_cached_answer_is_still_served() {
    let app = spawn_app().await;
    let cut_off = spawn_replica_without_postgres(&app).await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;

    let reply = cut_off.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-cache"), "HIT");
    assert_eq!(reply.body, README_ANSWER);
}

#[tokio::test]
async fn a_replica_with_a_shorter_ttl_bounds_the_age_of_what_a_longer_ttl_replica_cached() {
    let app = spawn_app().await;
    let short = spawn_replica(&app, |s| s.cache.ttl_secs = 1).await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;

    let young = short.state_at("3", "2022-09-12T10:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let too_old = short.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(young.header("x-cache"), "HIT");
    young.assert_max_age_at_most(1);
    assert_eq!(
        too_old.header("x-cache"),
        "MISS",
        "the entry is older than this replica's TTL"
    );
    assert_eq!(too_old.body, README_ANSWER);
}

#[tokio::test]
async fn a_cached_entry_with_an_absurd_read_time_is_refetched_not_a_crash() {
    let app = spawn_app().await;
    let mut conn = app.redis_conn().await;
    for (ts, read_at) in [(1_662_976_800_i64, i64::MIN), (1_662_976_801, i64::MAX)] {
        // An "unknown vehicle" answer for every instant, in the stored format, read at an
        // impossible time.
        let mut value = vec![b'U'];
        for n in [read_at, i64::MIN, i64::MAX] {
            value.extend_from_slice(&n.to_be_bytes());
        }
        let key = format!("{}:v5:segments:{{3}}", app.prefix);
        redis::pipe()
            .cmd("DEL")
            .arg(&key)
            .cmd("ZADD")
            .arg(&key)
            .arg("-inf")
            .arg(value)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(60)
            .query_async::<()>(&mut conn)
            .await
            .expect("ZADD");
        // (What the first round read from PostgreSQL went to Redis, and memory kept none of it
        // on first sight.)

        let reply = app.state_at("3", &ts.to_string()).await;

        assert_eq!(reply.status, 200, "readAt {read_at}: {}", reply.body);
        assert_eq!(reply.header("x-cache"), "MISS");
        assert_eq!(reply.json()["state"], "selling");
    }
}

#[tokio::test]
async fn an_answer_learned_from_redis_leaves_memory_when_it_leaves_redis() {
    let app = spawn_app_with(|s| s.cache.ttl_secs = 2).await;
    let other = spawn_replica(&app, |_| {}).await;
    app.state_at("3", "2022-09-12T10:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The other replica learns it from Redis with under a second left, not a fresh two seconds.
    let learned = other.state_at("3", "2022-09-12T10:00:00Z").await;
    let remembered = other.state_at("3", "2022-09-12T10:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let expired = other.state_at("3", "2022-09-12T10:00:00Z").await;

    assert_eq!(learned.header("x-cache"), "HIT");
    assert_eq!(learned.header("cache-control"), "public, max-age=0");
    assert_eq!(remembered.header("x-cache"), "HIT");
    assert_eq!(remembered.header("cache-control"), "public, max-age=0");
    assert_eq!(
        expired.header("x-cache"),
        "MISS",
        "two seconds after the read, no tier serves it"
    );
    assert_eq!(expired.body, README_ANSWER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_identical_misses_makes_one_query() {
    let app = spawn_app_with(|s| s.http.workers = Some(2)).await;
    // Hold the lookup in PostgreSQL so that every request of the burst arrives while it waits.
    let lock = app.hold_lookups().await;
    let url = format!("{}/vehicles/3/timestamp/1662976800", app.address);
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (app.client.clone(), url.clone());
            tokio::spawn(async move {
                let response = client.get(url).send().await.expect("GET");
                let cache = response.headers()["x-cache"]
                    .to_str()
                    .unwrap_or_default()
                    .to_owned();
                (
                    response.status().as_u16(),
                    cache,
                    response.text().await.expect("body"),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let in_flight = app.lookups_in_flight().await;
    lock.commit().await.expect("release");
    let mut replies = Vec::new();
    for request in burst {
        replies.push(request.await.expect("task"));
    }

    assert_eq!(in_flight, 1, "one query for 200 identical requests");
    assert!(
        replies
            .iter()
            .all(|(status, _, body)| *status == 200 && body == README_ANSWER)
    );
    let misses = replies
        .iter()
        .filter(|(_, cache, _)| cache == "MISS")
        .count();
    assert!(misses >= 1, "the request that asked PostgreSQL says MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_does_not_abandon_the_lookup_others_share() {
    // Holds whether or not the server drops the handler of a client that left (actix's HTTP/1
    // dispatcher did not, here): the fetch is a task of its own, so it is never redone.
    let app = spawn_app().await;
    let lock = app.hold_lookups().await;
    let url = format!("{}/vehicles/3/timestamp/1662976800", app.address);
    let leaver = tokio::spawn(app.client.get(&url).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    leaver.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stayer = tokio::spawn(app.client.get(&url).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = app.lookups_in_flight().await;
    lock.commit().await.expect("release");
    let response = stayer.await.expect("task").expect("answered");

    assert_eq!(
        in_flight, 1,
        "the first query went on after its client left, and was shared"
    );
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), README_ANSWER);
}
