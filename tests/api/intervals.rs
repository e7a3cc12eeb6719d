//! An answer says until when it holds (`until`, the next state change after the instant), and
//! what it says is what the plain rule over `"stateLogs"` says: a property test drives random
//! histories (ties, the same second twice, states outside the lifecycle) and random instants
//! (on a change, a microsecond either side, between and beyond) against a reference written
//! here from the rule, not from the service's SQL.

use proptest::prelude::*;
use vehicle_state_test_support::app::{TestApp, spawn_app};

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
    for &at in instants {
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
