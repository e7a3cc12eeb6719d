//! An answer says until when it holds (`until`, the next state change after the instant), and
//! what it says is what the plain rule over `"stateLogs"` says: a property test drives random
//! histories (ties, the same second twice, states outside the lifecycle) and random instants
//! (on a change, a microsecond either side, between and beyond) against a reference written
//! here from the rule, not from the service's SQL.

use std::time::Duration;

use proptest::prelude::*;
use vehicle_state_test_support::app::{TestApp, spawn_app, spawn_app_with};

/// The rule: of the changes at or before the instant, the latest by time, then lifecycle
/// (`sold` > `selling` > `quoted` > any other), then the state's bytes; `until` is the first
/// change after the instant.
fn reference(history: &[(i64, &str)], at: i64) -> Option<((i64, String), Option<i64>)> {
    let rank = |state: &str| match state {
        "sold" => 3,
        "selling" => 2,
        "quoted" => 1,
        _ => 0,
    };
    let answer = history
        .iter()
        .filter(|(ts, _)| *ts <= at)
        .max_by(|a, b| (a.0, rank(a.1), a.1.as_bytes()).cmp(&(b.0, rank(b.1), b.1.as_bytes())))
        .map(|(ts, state)| (*ts, (*state).to_owned()));
    let until = history
        .iter()
        .map(|(ts, _)| *ts)
        .filter(|ts| *ts > at)
        .min();
    answer.map(|answer| (answer, until))
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .expect("in range")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

const STATES: [&str; 5] = ["quoted", "selling", "sold", "archived", "Selling"];

fn histories() -> impl Strategy<Value = Vec<(i64, &'static str)>> {
    // Changes within a day, on whole seconds mostly (so ties happen), some to the microsecond.
    let change = (
        0i64..40,
        prop::bool::weighted(0.2),
        0i64..1_000_000,
        0usize..STATES.len(),
    )
        .prop_map(|(step, fractional, micros, state)| {
            let at =
                1_662_940_800_000_000 + step * 1_800_000_000 + if fractional { micros } else { 0 };
            (at, STATES[state])
        });
    prop::collection::vec(change, 1..12)
}

async fn check(app: &TestApp, vehicle: i32, history: &[(i64, &str)], instants: &[i64]) {
    app.add_vehicle(vehicle, "MAKE", "MODEL", "quoted").await;
    for (at, state) in history {
        app.add_state_log(vehicle, state, &rfc3339(*at)).await;
    }
    // Each instant twice: the second is answered by a segment a cache holds (memory or Redis),
    // which must say what PostgreSQL said.
    for &at in instants.iter().chain(instants) {
        let reply = app.state_at(&vehicle.to_string(), &rfc3339(at)).await;
        match reference(history, at) {
            None => {
                reply.assert_problem(404, "/problems/no-state-at-timestamp");
            }
            Some(((since, state), until)) => {
                assert_eq!(reply.status, 200, "{vehicle} at {at}: {}", reply.body);
                let body = reply.json();
                let context = format!("vehicle {vehicle} at {}: {history:?}", rfc3339(at));
                assert_eq!(body["state"], state, "{context}");
                assert_eq!(body["stateSince"], rfc3339(since), "{context}");
                match until {
                    Some(until) => assert_eq!(body["until"], rfc3339(until), "{context}"),
                    None => assert!(body["until"].is_null(), "{context}: {}", reply.body),
                }
            }
        }
    }
}

#[test]
fn answers_and_their_intervals_follow_the_rule_over_random_histories() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let app = runtime.block_on(spawn_app());
    // Each case its own vehicle, so histories never mix.
    let next_vehicle = std::sync::atomic::AtomicI32::new(10_000);
    let config = ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    };
    proptest!(config, |(history in histories(), picks in prop::collection::vec((0usize..12, -1i64..=1, prop::bool::weighted(0.25), 0i64..80), 6))| {
        // Instants on a change and a microsecond either side, and some anywhere in (and past) the
        // day, before the first change included.
        let instants: Vec<i64> = picks
            .iter()
            .map(|&(index, nudge, anywhere, step)| {
                if anywhere {
                    1_662_940_800_000_000 - 3_600_000_000 + step * 1_000_000_000
                } else {
                    history[index % history.len()].0 + nudge
                }
            })
            .collect();
        let vehicle = next_vehicle.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(check(&app, vehicle, &history, &instants));
    });
}

/// Lookups of one vehicle at many instants of one segment, all at once: one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instants_of_one_segment_asked_at_once_share_one_read() {
    let app = std::sync::Arc::new(spawn_app().await);
    let lock = app.hold_lookups().await;
    // Vehicle 2 is selling from 2022-09-11T17:03:17Z on: twenty instants inside that segment.
    let asks: Vec<_> = (0..20_i64)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                app.state_at("2", &(1_662_980_000 + n * 3_600).to_string())
                    .await
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.lookups_in_flight().await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = app.lookups_in_flight().await;
    drop(lock);
    let mut misses = 0;
    for ask in asks {
        let reply = ask.await.expect("a reply");
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["stateSince"], "2022-09-11T17:03:17Z");
        misses += usize::from(reply.header("x-cache") == "MISS");
    }

    assert_eq!(in_flight, 1, "one statement for the twenty instants");
    assert_eq!(misses, 1, "one read; the others shared it");
}

/// `now` is the server's clock; asked again it is a hit, and a client polling it with the
/// weak tag it got is answered 304 until the state changes.
#[tokio::test]
async fn now_is_the_servers_clock_and_a_poll_with_its_tag_is_304_until_the_state_changes() {
    let app = spawn_app_with(|s| s.cache.ttl_secs = 1).await;
    let before = chrono::Utc::now();
    let first = app.state_at("2", "now").await;
    let after = chrono::Utc::now();
    let again = app.state_at("2", "now").await;

    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(again.header("x-cache"), "HIT");
    let asked: chrono::DateTime<chrono::Utc> = first.json()["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("an instant");
    assert!(
        before - chrono::Duration::microseconds(1) <= asked && asked <= after,
        "{asked}"
    );
    assert!(first.json()["until"].is_null());
    // `now` moves with the clock: caches downstream ask again each time, with the tag.
    assert_eq!(first.header("cache-control"), "no-cache");
    assert_eq!(again.header("cache-control"), "no-cache");
    let tag = first.header("etag").to_owned();
    assert!(tag.starts_with("W/\""), "a weak tag: {tag}");
    assert_eq!(
        again.header("etag"),
        tag,
        "the same answer, another instant"
    );
    assert_ne!(again.json()["timestamp"], first.json()["timestamp"]);
    let polled = app
        .get_with("/vehicles/2/timestamp/now", &[("if-none-match", &tag)])
        .await;
    assert_eq!(polled.status, 304);
    assert_eq!(polled.header("etag"), tag);
    assert_eq!(polled.header("cache-control"), "no-cache");
    // The tag of the same answer at a fixed instant is the strong one.
    let fixed = app.state_at("2", "2030-01-01T00:00:00Z").await;
    assert_eq!(format!("W/{}", fixed.header("etag")), tag);

    // The vehicle is sold now: within the TTL, the poll gets the new answer and a new tag.
    app.add_state_log(2, "sold", &chrono::Utc::now().to_rfc3339())
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let changed = app
        .get_with("/vehicles/2/timestamp/now", &[("if-none-match", &tag)])
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.json()["state"], "sold");
    assert_ne!(changed.header("etag"), tag);

    // A word other than `now` is refused, as any text that is no instant is.
    app.state_at("2", "later")
        .await
        .assert_problem(400, "/problems/invalid-timestamp");
}

/// A change that arrives late, inside a segment a cache holds, is answered once that segment's
/// TTL has passed, and not before: the promise counts from the read, not from the instant.
#[tokio::test]
async fn a_late_change_inside_a_cached_segment_is_seen_within_the_ttl() {
    let app = spawn_app_with(|s| s.cache.ttl_secs = 1).await;
    // Vehicle 3 is selling from 2022-09-11T23:21:38Z to 2022-09-12T12:41:41Z.
    let read = app.state_at("3", "2022-09-12T01:00:00Z").await;
    assert_eq!(read.json()["until"], "2022-09-12T12:41:41Z");
    app.add_state_log(3, "quoted", "2022-09-12 06:00:00+00")
        .await;

    let cached = app.state_at("3", "2022-09-12T08:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before_it = app.state_at("3", "2022-09-12T01:00:00Z").await;
    let after_it = app.state_at("3", "2022-09-12T08:00:00Z").await;

    assert_eq!(
        cached.header("x-cache"),
        "HIT",
        "another instant of the segment read"
    );
    assert_eq!(cached.json()["state"], "selling");
    cached.assert_max_age_at_most(1);
    assert_eq!(before_it.json()["state"], "selling");
    assert_eq!(before_it.json()["until"], "2022-09-12T06:00:00Z");
    assert_eq!(after_it.json()["state"], "quoted");
    assert_eq!(after_it.json()["stateSince"], "2022-09-12T06:00:00Z");
    assert_eq!(after_it.json()["until"], "2022-09-12T12:41:41Z");
}
