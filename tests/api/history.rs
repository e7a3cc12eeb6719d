//! `GET /vehicles/{id}/history`: the timeline, in the lookup's order, a page at a time.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use vehicle_state_test_support::app::{TestApp, spawn_app};
use vehicle_state_test_support::http::Reply;

fn changes(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["changes"].as_array().expect("changes").clone()
}

#[tokio::test]
async fn the_timeline_lists_each_state_with_when_it_began_and_ended() {
    let app = spawn_app().await;

    let all = app.get("/vehicles/3/history").await;
    let window = app
        .get("/vehicles/3/history?from=2022-09-11T12:00:00Z&to=2022-09-12%2012:00:00%2B00")
        .await;
    let before_any = app.get("/vehicles/3/history?to=2022-09-01T00:00:00Z").await;
    let again = app.get("/vehicles/3/history").await;

    assert_eq!(
        all.json(),
        json!({
            "vehicle": {"id": 3, "make": "VW", "model": "GOLF"},
            "changes": [
                {"state": "quoted", "at": "2022-09-11T09:11:45Z", "until": "2022-09-11T23:21:38Z"},
                {"state": "selling", "at": "2022-09-11T23:21:38Z", "until": "2022-09-12T12:41:41Z"},
                {"state": "sold", "at": "2022-09-12T12:41:41Z", "until": null}
            ],
            "next": null
        })
    );
    assert_eq!(all.header("x-cache"), "MISS");
    all.assert_max_age_at_most(60);
    let window = changes(&window);
    assert_eq!(
        window
            .iter()
            .map(|c| c["state"].as_str())
            .collect::<Vec<_>>(),
        [Some("quoted"), Some("selling")],
        "the change in effect at `from`, then those up to `to`"
    );
    assert_eq!(
        window[1]["until"], "2022-09-12T12:41:41Z",
        "until may lie past `to`"
    );
    assert_eq!(changes(&before_any), Vec::<Value>::new());
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(again.body, all.body);
    let etag = all.header("etag").to_owned();
    let not_modified = app
        .get_with("/vehicles/3/history", &[("if-none-match", &etag)])
        .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), etag);
}

/// A new vehicle `id` whose history holds `n` changes over a few hours, with equal timestamps
/// and exact duplicates (`"stateLogs"` has no key).
async fn vehicle_with_history(
    app: &TestApp,
    id: i32,
    rng: &mut ChaCha8Rng,
    n: usize,
) -> Vec<(String, i64)> {
    sqlx::query(
        "INSERT INTO vehicles (id, make, model, state) VALUES ($1, 'SEAT', 'IBIZA', 'quoted')",
    )
    .bind(id)
    .execute(&app.db)
    .await
    .expect("a vehicle");
    let mut logs = Vec::new();
    for _ in 0..n {
        let state = ["quoted", "selling", "sold"][rng.random_range(0..3)];
        // Few distinct seconds, so equal timestamps are common.
        let at = 1_662_976_800 + rng.random_range(0..(n as i64 / 2 + 1)) * 3600;
        app.add_state_log(
            id,
            state,
            &format!(
                "{}",
                chrono::DateTime::from_timestamp(at, 0).expect("valid")
            ),
        )
        .await;
        logs.push((state.to_owned(), at));
    }
    logs
}

#[tokio::test]
async fn for_every_instant_the_timeline_agrees_with_the_lookup() {
    let app = spawn_app().await;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for round in 0..8 {
        // A vehicle of its own each round: no answer cached for an earlier history applies.
        let id = 100 + round as i32;
        let logs = vehicle_with_history(&app, id, &mut rng, 2 + round).await;
        let (first, last) = (
            logs.iter().map(|(_, at)| *at).min().expect("logs"),
            logs.iter().map(|(_, at)| *at).max().expect("logs"),
        );
        let timeline = changes(
            &app.get(&format!(
                "/vehicles/{id}/history?limit=1000&from={}",
                first - 1
            ))
            .await,
        );
        assert!(timeline.len() <= logs.len());
        for _ in 0..12 {
            let t = rng.random_range(first - 3600..=last + 3600) + 17;
            let lookup = app.get(&format!("/vehicles/{id}/timestamp/{t}")).await;
            let in_effect = timeline.iter().rev().find(|c| {
                let at = chrono::DateTime::parse_from_rfc3339(c["at"].as_str().expect("at"))
                    .expect("RFC 3339");
                at.timestamp() <= t
            });
            match in_effect {
                None => lookup.assert_problem(404, "/problems/no-state-at-timestamp"),
                Some(change) => {
                    let answer = lookup.json();
                    assert_eq!(lookup.status, 200, "{}", lookup.body);
                    assert_eq!(answer["state"], change["state"], "at {t}: {timeline:?}");
                    assert_eq!(answer["stateSince"], change["at"], "at {t}");
                    "".to_owned()
                }
            };
        }
    }
}

#[tokio::test]
async fn pages_visit_every_change_once_in_order() {
    let app = spawn_app().await;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let logs = vehicle_with_history(&app, 100, &mut rng, 9).await;
    let distinct: std::collections::BTreeSet<_> = logs.iter().collect();

    let whole = changes(&app.get("/vehicles/100/history?limit=1000").await);
    let mut paged = Vec::new();
    let mut path = "/vehicles/100/history?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let reply = app.get(&path).await;
        paged.extend(changes(&reply));
        pages += 1;
        match reply.json()["next"].as_str() {
            Some(next) => path = format!("/vehicles/100/history?limit=2&after={next}"),
            None => break,
        }
        assert!(pages < 20, "pages end");
    }

    assert!(distinct.len() < logs.len(), "the history has duplicates");
    assert_eq!(
        whole.len(),
        distinct.len(),
        "one change per distinct row, ties included"
    );
    assert_eq!(paged, whole);
    assert_eq!(pages, distinct.len().div_ceil(2));
}

#[tokio::test]
async fn a_bad_history_query_is_a_problem_that_names_what_to_fix() {
    let app = spawn_app().await;

    let unknown = app.get("/vehicles/999/history").await;
    let bad_from = app.get("/vehicles/3/history?from=yesterday").await;
    let reversed = app
        .get("/vehicles/3/history?from=2022-09-12T00:00:00Z&to=2022-09-11T00:00:00Z")
        .await;
    let zero = app.get("/vehicles/3/history?limit=0").await;
    let too_many = app.get("/vehicles/3/history?limit=1001").await;
    let not_a_cursor = app.get("/vehicles/3/history?after=abc").await;
    let twice = app.get("/vehicles/3/history?limit=1&limit=2").await;
    let bad_id = app.get("/vehicles/x/history").await;

    unknown.assert_problem(404, "/problems/vehicle-not-found");
    let detail = bad_from.assert_problem(400, "/problems/invalid-timestamp");
    assert!(detail.starts_with("`from`:"), "{detail}");
    let detail = reversed.assert_problem(400, "/problems/invalid-query");
    assert!(detail.contains("after `to`"), "{detail}");
    zero.assert_problem(400, "/problems/invalid-query");
    too_many.assert_problem(400, "/problems/invalid-query");
    not_a_cursor.assert_problem(400, "/problems/invalid-query");
    twice.assert_problem(400, "/problems/invalid-query");
    bad_id.assert_problem(400, "/problems/invalid-vehicle-id");
}

/// In a query string `+` stands for a space, so `from=…+02:00` arrives as `…T12:00:00 02:00`:
/// the 400 says to send `%2B`, and with `%2B` the same window is answered.
#[tokio::test]
async fn an_offset_whose_plus_arrived_as_a_space_is_refused_saying_to_send_percent_2b() {
    let app = spawn_app().await;

    let bare_plus = app
        .get("/vehicles/3/history?from=2022-09-12T12:00:00+02:00")
        .await;
    let encoded = app
        .get("/vehicles/3/history?from=2022-09-12T12:00:00%2B02:00")
        .await;

    let detail = bare_plus.assert_problem(400, "/problems/invalid-timestamp");
    assert!(detail.starts_with("`from`:"), "{detail}");
    assert!(detail.contains("send it as `%2B`"), "{detail}");
    assert_eq!(encoded.status, 200, "{}", encoded.body);
    assert_eq!(encoded.json()["changes"][0]["state"], "selling");
}
