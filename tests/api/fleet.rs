//! The fleet at an instant: `GET /fleet/states`, and what it counts is what the plain rule over
//! `"stateLogs"` says. A property test drives random histories (loaded as `seed` loads them,
//! with ties and states outside the lifecycle) and then random batches of late, duplicate and
//! out-of-order events through ingest's own statement, against a reference written here from
//! the rule, at instants on changes, a microsecond either side and on the sums' bucket edges.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use vehicle_state::domain::event::{StateChange, VehicleState};
use vehicle_state::domain::{Timestamp, VehicleId};
use vehicle_state_test_support::app::{TestApp, spawn_app, spawn_app_with};

/// The rule: each vehicle is in the state of its latest change at or before the instant (by
/// time, then lifecycle, then the state's bytes); that change, per vehicle.
fn latest_at(rows: &[(i32, String, i64)], at: i64) -> BTreeMap<i32, (i64, i32, &str)> {
    let rank = |state: &str| match state {
        "sold" => 3,
        "selling" => 2,
        "quoted" => 1,
        _ => 0,
    };
    let mut latest: BTreeMap<i32, (i64, i32, &str)> = BTreeMap::new();
    for (id, state, ts) in rows.iter().filter(|(_, _, ts)| *ts <= at) {
        let candidate = (*ts, rank(state), state.as_str());
        let best = latest.entry(*id).or_insert(candidate);
        if (candidate.0, candidate.1, candidate.2.as_bytes()) > (best.0, best.1, best.2.as_bytes())
        {
            *best = candidate;
        }
    }
    latest
}

/// The counts the rule gives.
fn reference(rows: &[(i32, String, i64)], at: i64) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (_, _, state) in latest_at(rows, at).values() {
        *counts.entry((*state).to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The list the rule gives: the vehicles of `ids` in `state` at `at`, by id, with their change's
/// instant.
fn reference_list(
    rows: &[(i32, String, i64)],
    at: i64,
    state: &str,
    ids: std::ops::Range<i32>,
) -> Vec<(i32, Option<i64>)> {
    latest_at(rows, at)
        .into_iter()
        .filter(|(id, (_, _, s))| *s == state && ids.contains(id))
        .map(|(id, (ts, _, _))| (id, Some(ts)))
        .collect()
}

async fn all_rows(app: &TestApp) -> Vec<(i32, String, i64)> {
    sqlx::query_as(
        r#"SELECT "vehicleId", state, (EXTRACT(EPOCH FROM "timestamp") * 1000000)::int8 FROM "stateLogs""#,
    )
    .fetch_all(&app.db)
    .await
    .expect("the rows")
}

async fn exact(app: &TestApp) -> bool {
    sqlx::query_scalar("SELECT exact FROM fleet_status")
        .fetch_one(&app.db)
        .await
        .expect("the status")
}

/// 2022-09-12T00:00:00Z, on a 2^28 µs edge or not: the changes spread over 2^40 µs (12.7 days)
/// from here, across buckets of every size but the largest.
const BASE: i64 = 1_662_940_800_000_000;
const SPAN: i64 = 1 << 40;
const STATES: [&str; 5] = ["quoted", "selling", "sold", "archived", "Selling"];
const LIFECYCLE: [VehicleState; 3] = [
    VehicleState::Quoted,
    VehicleState::Selling,
    VehicleState::Sold,
];

/// An instant in the span: mostly on whole hours (so changes tie), some on a bucket edge, some
/// anywhere.
fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        (0i64..(SPAN / 3_600_000_000)).prop_map(|h| BASE + h * 3_600_000_000),
        (0i64..(SPAN >> 28)).prop_map(|b| ((BASE >> 28) + b) << 28),
        (0i64..SPAN).prop_map(|m| BASE + m),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    /// Loaded as `seed` loads: rows, then the sums built anew.
    loaded: Vec<(i32, usize, i64)>,
    /// Applied by ingest's statement, batch by batch: vehicle, lifecycle state, instant.
    batches: Vec<Vec<(i32, usize, i64)>>,
    probes: Vec<(usize, i64)>,
}

fn cases() -> impl Strategy<Value = Case> {
    let loaded = prop::collection::vec((0i32..6, 0usize..STATES.len(), instant()), 0..25);
    let event = (0i32..8, 0usize..3, instant());
    let batches = prop::collection::vec(prop::collection::vec(event, 1..12), 1..4);
    let probes = prop::collection::vec((0usize..64, -1i64..=1), 12);
    (loaded, batches, probes).prop_map(|(loaded, batches, probes)| Case {
        loaded,
        batches,
        probes,
    })
}

async fn check(app: &TestApp, first_vehicle: i32, case: &Case) {
    for (vehicle, state, at) in &case.loaded {
        sqlx::query(
            r#"INSERT INTO "stateLogs" ("vehicleId", state, "timestamp") VALUES ($1, $2, to_timestamp($3::float8 / 1000000))"#,
        )
        .bind(first_vehicle + vehicle)
        .bind(STATES[*state])
        .bind(*at as f64)
        .execute(&app.db)
        .await
        .expect("a row");
    }
    assert_eq!(
        exact(app).await,
        case.loaded.is_empty(),
        "a write not by ingest marks the sums inexact"
    );
    vehicle_state::db::rebuild_fleet(&mut app.db.acquire().await.expect("a connection"))
        .await
        .expect("a rebuild");
    assert!(exact(app).await);

    let mut instants: Vec<i64> = Vec::new();
    for batch in &case.batches {
        let changes: Vec<StateChange> = batch
            .iter()
            .map(|(vehicle, state, at)| StateChange {
                vehicle: VehicleId::parse(&(first_vehicle + vehicle).to_string()).expect("an id"),
                state: LIFECYCLE[*state],
                at: Timestamp::from_unix_micros(*at).expect("in range"),
            })
            .collect();
        let refs: Vec<&StateChange> = changes.iter().collect();
        vehicle_state::db::apply_events(&app.db, Duration::from_secs(10), &[], &refs)
            .await
            .expect("the batch applies");
        // Every batch twice: the second is all duplicates, and changes nothing.
        vehicle_state::db::apply_events(&app.db, Duration::from_secs(10), &[], &refs)
            .await
            .expect("the batch applies again");
        assert!(exact(app).await, "ingest keeps the sums exact");
        instants.extend(batch.iter().map(|(_, _, at)| *at));
    }
    instants.extend(case.loaded.iter().map(|(_, _, at)| *at));

    let rows = all_rows(app).await;
    let mut conn = app.db.acquire().await.expect("a connection");
    for (pick, nudge) in &case.probes {
        let at = instants[pick % instants.len()] + nudge;
        let (got, from_sums) = vehicle_state::db::fleet_counts(
            &mut conn,
            &[Timestamp::from_unix_micros(at).expect("in range")],
        )
        .await
        .expect("the counts");
        let got = got.into_iter().next().expect("one instant's counts");
        assert!(from_sums, "counted from the sums ingest kept");
        let want = reference(&rows, at);
        let got: BTreeMap<String, u64> = got
            .states
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.to_owned(), n))
            .collect();
        assert_eq!(got, want, "at {at}");
    }
    // The list, a few vehicles a page, over this case's vehicles: each state at each probe.
    for (pick, nudge) in &case.probes {
        let at = instants[pick % instants.len()] + nudge;
        for state in STATES {
            let want = reference_list(&rows, at, state, first_vehicle..first_vehicle + 10);
            let mut got = Vec::new();
            let mut after = Some(first_vehicle - 1);
            while let Some(from) = after {
                // Windows of a few ids, so pages span several; the open segments read by their
                // start or in id order, in turn.
                let scan = vehicle_state::db::ListScan {
                    after: Some(from),
                    window: 3,
                    open_by_start: from % 2 == 0,
                };
                let (page, from_segments) = vehicle_state::db::fleet_vehicles(
                    &mut conn,
                    state,
                    Timestamp::from_unix_micros(at).expect("in range"),
                    scan,
                    3,
                )
                .await
                .expect("a page");
                assert!(from_segments, "listed from the segments ingest kept");
                let ids: Vec<i32> = page.iter().map(|v| v.id).collect();
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order: {ids:?}");
                after = (page.len() == 3).then(|| ids[2]);
                got.extend(
                    page.into_iter()
                        .filter(|v| v.id < first_vehicle + 10)
                        .map(|v| (v.id, v.since.map(Timestamp::unix_micros))),
                );
                if after.is_some_and(|id| id >= first_vehicle + 10) {
                    break;
                }
            }
            assert_eq!(got, want, "{state} at {at}");
        }
    }
    // What ingest kept is what a rebuild makes.
    let segments_kept: Vec<(String, i16, i64, i32, i64, Option<i64>)> = sqlx::query_as(SEGMENTS)
        .fetch_all(&mut *conn)
        .await
        .expect("the segments");
    let kept: Vec<(i16, i64, String, i64)> = sqlx::query_as(
        "SELECT level, bucket, state, delta FROM fleet_sums WHERE delta <> 0 ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("the sums");
    vehicle_state::db::rebuild_fleet(&mut conn)
        .await
        .expect("a rebuild");
    let rebuilt: Vec<(i16, i64, String, i64)> = sqlx::query_as(
        "SELECT level, bucket, state, delta FROM fleet_sums WHERE delta <> 0 ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("the sums");
    assert_eq!(
        kept, rebuilt,
        "the sums ingest kept are those a rebuild makes"
    );
    let segments_rebuilt: Vec<(String, i16, i64, i32, i64, Option<i64>)> = sqlx::query_as(SEGMENTS)
        .fetch_all(&mut *conn)
        .await
        .expect("the segments");
    assert_eq!(
        segments_kept, segments_rebuilt,
        "the segments ingest kept are those a rebuild makes"
    );
}

const SEGMENTS: &str = r#"SELECT state, level, bucket, "vehicleId", since, until FROM fleet_segments ORDER BY 1, 2, 3, 4, 5"#;

#[test]
fn counts_follow_the_rule_through_seeding_and_late_duplicate_and_out_of_order_events() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let app = runtime.block_on(spawn_app());
    // Each case its own vehicles; the counts are the whole fleet's, every case's rows included.
    let next = std::sync::atomic::AtomicI32::new(10_000);
    let config = ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in cases())| {
        let first = next.fetch_add(10, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(check(&app, first, &case));
    });
}

#[tokio::test]
async fn counts_at_an_instant_list_the_lifecycle_and_are_cached() {
    let app = spawn_app().await;
    // The sample: vehicle 1 quoted from 09-10, 2 selling from 09-11 17:03, 3 sold from 09-12 12:41.
    let at = app.get("/fleet/states?at=2022-09-12T12:00:00Z").await;
    assert_eq!(at.status, 200, "{}", at.body);
    assert_eq!(at.header("x-cache"), "MISS");
    assert_eq!(
        at.json(),
        serde_json::json!({
            "at": "2022-09-12T12:00:00Z",
            "states": {"quoted": 1, "selling": 2, "sold": 0},
            "total": 3
        })
    );
    assert_eq!(
        at.body,
        r#"{"at":"2022-09-12T12:00:00Z","states":{"quoted":1,"selling":2,"sold":0},"total":3}"#,
        "the lifecycle's order"
    );
    let again = app.get("/fleet/states?at=2022-09-12%2014:00:00%2B02").await;
    assert_eq!(
        again.header("x-cache"),
        "HIT",
        "the same instant, written otherwise"
    );
    assert!(
        again
            .header("cache-control")
            .starts_with("public, max-age=")
    );

    let before = app.get("/fleet/states?at=2022-09-10T10:23:53Z").await;
    assert_eq!(before.json()["total"], 0);
    let now = app.get("/fleet/states").await;
    assert_eq!(now.json()["states"]["sold"], 1, "{}", now.body);
    assert_eq!(now.json()["total"], 3);
    assert_eq!(
        app.get("/fleet/states?at=now").await.header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn a_write_not_by_ingest_is_counted_at_once_from_the_table_itself() {
    let app = spawn_app().await;
    app.add_state_log(7, "archived", "2022-09-11T00:00:00Z")
        .await;

    let counts = app.get("/fleet/states?at=2022-09-11T12:00:00Z").await;

    assert_eq!(counts.status, 200, "{}", counts.body);
    assert_eq!(
        counts.json()["states"],
        serde_json::json!({"quoted": 3, "selling": 0, "sold": 0, "archived": 1})
    );
    assert!(!exact(&app).await);
    let metrics = app.get("/metrics").await.body;
    // The recorder is the test process's: other tests may have counted too.
    let from_table: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"vehicle_state_fleet_counts_total{from="table"} "#))
        .and_then(|n| n.parse().ok())
        .expect("the series");
    assert!(from_table >= 1.0, "{metrics}");
}

#[tokio::test]
async fn bad_instants_are_a_400_that_names_the_parameter() {
    let app = spawn_app().await;
    for (query, kind) in [
        ("at=yesterday", "/problems/invalid-timestamp"),
        ("at=2022-09-12T10:00:00", "/problems/invalid-timestamp"),
        ("at=2022-09-12T10:00:00Z&at=now", "/problems/invalid-query"),
    ] {
        let reply = app.get(&format!("/fleet/states?{query}")).await;
        reply.assert_problem(400, kind);
    }
    let plus = app.get("/fleet/states?at=2022-09-12T10:00:00+02:00").await;
    plus.assert_problem(400, "/problems/invalid-timestamp");
    assert!(plus.body.contains("%2B"), "{}", plus.body);
}

/// A count reads the sums by their primary key and the last minutes' changes by the timestamp
/// index, planned generically as the service's connections plan; the plain rule's scan of
/// `"stateLogs"` is in the plan but never runs while the sums are exact.
#[tokio::test]
async fn a_count_is_index_range_scans_and_never_scans_the_table_while_the_sums_are_exact() {
    let app = spawn_app().await;
    sqlx::raw_sql(
        r#"INSERT INTO "stateLogs" SELECT g, s, TIMESTAMPTZ '2020-01-01' + (g || ' minutes')::interval
             FROM generate_series(100, 20099) g, unnest(ARRAY['quoted', 'selling', 'sold']) s;
           SELECT vehicle_state_fleet_rebuild();"#,
    )
    .execute(&app.db)
    .await
    .expect("bulk rows");
    // Apart: VACUUM refuses the implicit transaction of several statements.
    for vacuum in [
        r#"VACUUM (ANALYZE) "stateLogs""#,
        "VACUUM (ANALYZE) fleet_sums",
    ] {
        sqlx::query(vacuum).execute(&app.db).await.expect("vacuum");
    }
    let mut conn = app.db.acquire().await.expect("a connection");
    let prepare = format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE counts(int8[], timestamptz[], timestamptz[]) AS {};",
        vehicle_state::db::COUNTS_SQL
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
        .execute(&mut *conn)
        .await
        .expect("prepare");
    // 2020-01-06T11:40:00Z, inside a finest bucket with changes before it.
    let micros: i64 = 1_578_310_800_000_000;
    let start =
        (micros >> vehicle_state::db::FINEST_BUCKET_BITS) << vehicle_state::db::FINEST_BUCKET_BITS;
    let execute = format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE counts(ARRAY[{micros}, {micros} + 86400000000], ARRAY[to_timestamp({micros}::numeric / 1000000), to_timestamp({micros}::numeric / 1000000 + 86400)], ARRAY[to_timestamp({start}::numeric / 1000000), to_timestamp({start}::numeric / 1000000 + 86400)])"
    );
    let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(execute))
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    let plan: String = plan.into_iter().map(|(line,)| line + "\n").collect();

    assert!(
        plan.contains("Index Only Scan using fleet_sums_pkey"),
        "{plan}"
    );
    assert!(plan.contains("stateLogs_timestamp_idx"), "{plan}");
    assert!(plan.contains("stateLogs_vehicleId_timestamp_idx"), "{plan}");
    for line in plan
        .lines()
        .filter(|l| l.contains("Seq Scan on \"stateLogs\""))
    {
        assert!(line.contains("never executed"), "{plan}");
    }
    assert!(
        plan.lines()
            .any(|l| l.contains("Index Only Scan") && !l.contains("never executed")),
        "the changes of the last minutes are read: {plan}"
    );
}

#[tokio::test]
async fn a_series_counts_at_each_step_and_shares_what_it_read_with_single_counts() {
    let app = spawn_app().await;
    let single = app.get("/fleet/states?at=2022-09-12T00:00:00Z").await;
    assert_eq!(single.header("x-cache"), "MISS");

    let series = app
        .get("/fleet/states/series?from=2022-09-10T00:00:00Z&to=2022-09-13T06:00:00Z&every=P1D")
        .await;

    assert_eq!(series.status, 200, "{}", series.body);
    assert_eq!(
        series.header("x-cache"),
        "MISS",
        "three of four points were read"
    );
    let body = series.json();
    assert_eq!(body["every"], "P1D");
    assert_eq!(body["to"], "2022-09-13T06:00:00Z");
    let points: Vec<(String, u64)> = body["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            (
                p["at"].as_str().expect("at").to_owned(),
                p["total"].as_u64().expect("total"),
            )
        })
        .collect();
    assert_eq!(
        points,
        [
            ("2022-09-10T00:00:00Z".to_owned(), 0),
            ("2022-09-11T00:00:00Z".to_owned(), 2),
            ("2022-09-12T00:00:00Z".to_owned(), 3),
            ("2022-09-13T00:00:00Z".to_owned(), 3),
        ]
    );
    assert_eq!(
        body["points"][2],
        single.json(),
        "the same counts as a single count"
    );
    assert_eq!(
        body["points"][3]["states"],
        serde_json::json!({"quoted": 1, "selling": 1, "sold": 1})
    );
    let again = app
        .get("/fleet/states/series?from=2022-09-10T00:00:00Z&to=2022-09-13T06:00:00Z&every=day")
        .await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.json()["points"], body["points"]);
    let point = app.get("/fleet/states?at=2022-09-13T00:00:00Z").await;
    assert_eq!(
        point.header("x-cache"),
        "HIT",
        "a point of a series is a count held"
    );
}

#[tokio::test]
async fn a_series_that_is_too_long_or_malformed_is_a_400_that_says_why() {
    let app = spawn_app_with(|s| s.http.fleet_series_max_points = 24).await;
    for (query, kind, says) in [
        (
            "from=2022-09-10T00:00:00Z&to=2022-09-11T00:00:00Z&every=PT1H",
            "/problems/invalid-query",
            "more than 24 points",
        ),
        (
            "from=2022-09-10T00:00:00Z&every=P1Y",
            "/problems/invalid-query",
            "`every` must be",
        ),
        (
            "from=2022-09-10T00:00:00Z&every=PT30S",
            "/problems/invalid-query",
            "`every` must be",
        ),
        (
            "to=2022-09-10T00:00:00Z&every=P1D",
            "/problems/invalid-query",
            "`from` is required",
        ),
        (
            "from=2022-09-10T00:00:00Z",
            "/problems/invalid-query",
            "`every` is required",
        ),
        (
            "from=2022-09-12T00:00:00Z&to=2022-09-10T00:00:00Z&every=P1D",
            "/problems/invalid-query",
            "is after `to`",
        ),
        (
            "from=2022-09-10&every=P1D",
            "/problems/invalid-timestamp",
            "`from`",
        ),
        (
            "from=2022-09-10T00:00:00Z&to=soon&every=P1D",
            "/problems/invalid-timestamp",
            "`to`",
        ),
        (
            "from=2022-09-10T00:00:00Z&every=P1D&every=P1W",
            "/problems/invalid-query",
            "more than once",
        ),
    ] {
        let reply = app.get(&format!("/fleet/states/series?{query}")).await;
        reply.assert_problem(400, kind);
        assert!(reply.body.contains(says), "{query}: {}", reply.body);
    }
    let fits = app
        .get("/fleet/states/series?from=2022-09-10T00:00:00Z&to=2022-09-10T23:00:00Z&every=PT1H")
        .await;
    assert_eq!(fits.status, 200, "{}", fits.body);
    assert_eq!(fits.json()["points"].as_array().map(Vec::len), Some(24));
}

#[tokio::test]
async fn the_vehicles_in_a_state_are_listed_in_id_order_a_page_at_a_time() {
    let app = spawn_app().await;
    // The sample at 09-12 12:00: 1 quoted, 2 and 3 selling.
    let first = app
        .get("/fleet/vehicles?state=selling&at=2022-09-12T12:00:00Z&limit=1")
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), "MISS");
    let next = first.json()["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    assert_eq!(
        first.json(),
        serde_json::json!({
            "state": "selling",
            "at": "2022-09-12T12:00:00Z",
            "vehicles": [{"id": 2, "make": "AUDI", "model": "A4", "since": "2022-09-11T17:03:17Z"}],
            "next": next,
        })
    );
    let second = app
        .get(&format!(
            "/fleet/vehicles?state=selling&limit=1&after={next}"
        ))
        .await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(
        second.json(),
        serde_json::json!({
            "state": "selling",
            "at": "2022-09-12T12:00:00Z",
            "vehicles": [{"id": 3, "make": "VW", "model": "GOLF", "since": "2022-09-11T23:21:38Z"}],
            "next": null,
        }),
        "the cursor carries the instant"
    );
    let again = app
        .get("/fleet/vehicles?state=selling&at=2022-09-12%2014:00:00%2B02&limit=1")
        .await;
    assert_eq!(
        again.header("x-cache"),
        "HIT",
        "the same page, written otherwise"
    );
    assert!(
        again
            .header("cache-control")
            .starts_with("public, max-age=")
    );

    let whole = app
        .get("/fleet/vehicles?state=selling&at=2022-09-12T12:00:00Z")
        .await;
    let ids: Vec<i64> = whole.json()["vehicles"]
        .as_array()
        .expect("vehicles")
        .iter()
        .map(|v| v["id"].as_i64().expect("an id"))
        .collect();
    assert_eq!(ids, vec![2, 3]);
    assert_eq!(whole.json()["next"], serde_json::Value::Null);

    // Now (the default): 3 is sold; an unregistered vehicle counts, with no make or model.
    app.add_state_log(99, "sold", "2022-09-13T00:00:00Z").await;
    let sold = app.get("/fleet/vehicles?state=sold").await;
    assert_eq!(sold.status, 200, "{}", sold.body);
    assert_eq!(
        sold.json()["vehicles"],
        serde_json::json!([
            {"id": 3, "make": "VW", "model": "GOLF", "since": "2022-09-12T12:41:41Z"},
            {"id": 99, "make": null, "model": null, "since": "2022-09-13T00:00:00Z"}
        ]),
        "listed by the plain rule while the segments are not exact"
    );
    let none = app
        .get("/fleet/vehicles?state=archived&at=2022-09-12T12:00:00Z")
        .await;
    assert_eq!(none.status, 200, "{}", none.body);
    assert_eq!(none.json()["vehicles"], serde_json::json!([]));
}

#[tokio::test]
async fn a_list_asked_wrongly_is_a_400_that_says_why() {
    let app = spawn_app().await;
    for (query, says) in [
        ("at=2022-09-12T10:00:00Z", "`state` is required"),
        ("state=", "`state` is required"),
        (
            "state=selling&limit=0",
            "`limit` must be an integer from 1 to 1000",
        ),
        (
            "state=selling&limit=1001",
            "`limit` must be an integer from 1 to 1000",
        ),
        ("state=selling&after=zz", "`after` is not a cursor"),
        (
            "state=selling&state=sold",
            "`state` is given more than once",
        ),
        ("state=selling&at=yesterday", "at"),
        ("state=sel%00ling", "NUL"),
    ] {
        let reply = app.get(&format!("/fleet/vehicles?{query}")).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(
            reply.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains(says)),
            "{query}: {}",
            reply.body
        );
    }
    let long = "s".repeat(257);
    let reply = app.get(&format!("/fleet/vehicles?state={long}")).await;
    assert_eq!(reply.status, 400, "{}", reply.body);

    let first = app
        .get("/fleet/vehicles?state=selling&at=2022-09-12T12:00:00Z&limit=1")
        .await;
    let next = first.json()["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let elsewhere = app
        .get(&format!(
            "/fleet/vehicles?state=selling&at=2022-09-12T13:00:00Z&limit=1&after={next}"
        ))
        .await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.body);
    assert!(
        elsewhere.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("continues the listing at 2022-09-12T12:00:00Z")),
        "{}",
        elsewhere.body
    );
}

#[tokio::test]
async fn a_page_is_index_range_scans_of_the_segments_and_never_reads_the_table_while_they_are_exact()
 {
    let app = spawn_app().await;
    sqlx::query("VACUUM (ANALYZE) fleet_segments")
        .execute(&app.db)
        .await
        .expect("a vacuum");
    let mut conn = app.db.acquire().await.expect("a connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE page(text, int8, int8, int8, bool, int8) AS {}",
        vehicle_state::db::VEHICLES_SQL.as_str()
    )))
    .execute(&mut *conn)
    .await
    .expect("prepared");
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("set");
    let plan: Vec<(String,)> = sqlx::query_as(
        "EXPLAIN (ANALYZE, COSTS OFF) EXECUTE page('selling', 1662984000000000, -9223372036854775808, 101, false, 100000)",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("a plan");
    let plan: String = plan.into_iter().map(|(l,)| l + "\n").collect();
    assert!(plan.contains("Merge Append"), "{plan}");
    assert_eq!(
        plan.matches("Index Only Scan using fleet_segments_pkey")
            .count(),
        17,
        "{plan}"
    );
    assert!(!plan.contains("stateLogs"), "{plan}");
    for line in plan.lines().filter(|l| l.contains("Index Only Scan")) {
        assert!(
            !line.contains("never executed") || line.contains("open_since"),
            "{plan}"
        );
    }
    assert_eq!(
        plan.matches(r#"AND ("vehicleId" <= $6)"#).count(),
        17,
        "every range of the key ends with the window: {plan}"
    );
}
