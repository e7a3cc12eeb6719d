use vehicle_state_test_support::app::spawn_app;
use vehicle_state_test_support::http::PROBLEM_JSON;

#[tokio::test]
async fn a_malformed_vehicle_id_is_a_bad_request_that_says_why() {
    let app = spawn_app().await;
    for id in [
        "0",
        "-1",
        "+3",
        "007",
        "2147483648",
        "99999999999999999999",
        "abc",
        "3.0",
        "%20%33",
    ] {
        let reply = app
            .get(&format!("/vehicles/{id}/timestamp/2022-09-12T10:00:00Z"))
            .await;

        let detail = reply.assert_problem(400, "/problems/invalid-vehicle-id");
        assert!(
            detail.contains("2147483647") || detail.contains("decimal"),
            "{id}: {detail}"
        );
        assert_eq!(
            reply.header("x-cache"),
            "",
            "{id}: a rejected request is not a lookup"
        );
    }
    assert!(
        app.cache_keys().await.is_empty(),
        "bad requests must not be cached"
    );
}

#[tokio::test]
async fn a_malformed_timestamp_is_a_bad_request_listing_the_accepted_forms() {
    let app = spawn_app().await;
    let cases = [
        ("2022-09-12", "no UTC offset"),
        ("2022-09-12T10:00:00", "no UTC offset"),
        ("2022-09-12 10:00:00", "no UTC offset"),
        ("2022-02-30T10:00:00Z", "does not exist"),
        ("2022-09-12T24:30:00Z", "does not exist"),
        ("99999999999999", "between"),
        ("today", "not in a recognised form"),
        ("NOW", "not in a recognised form"),
        ("2022-09-12T10:00:00+5", "not in a recognised form"),
        ("1662976800.5", "not in a recognised form"),
        (" 1662976800", "not in a recognised form"),
    ];
    for (ts, reason) in cases {
        let reply = app.state_at("3", ts).await;

        let detail = reply.assert_problem(400, "/problems/invalid-timestamp");
        assert!(detail.contains(reason), "{ts:?}: {detail}");
        assert!(
            detail.contains("RFC 3339") && detail.contains("Unix epoch seconds"),
            "{detail}"
        );
    }
    assert!(
        app.cache_keys().await.is_empty(),
        "bad requests must not be cached"
    );
}

#[tokio::test]
async fn a_bad_request_changes_nothing_in_the_database() {
    let app = spawn_app().await;
    let count = || async {
        sqlx::query_as::<_, (i64, i64)>(
            r#"SELECT (SELECT count(*) FROM vehicles), (SELECT count(*) FROM "stateLogs")"#,
        )
        .fetch_one(&app.db)
        .await
        .expect("counts")
    };
    let before = count().await;

    let reply = app
        .get("/vehicles/1;DROP%20TABLE%20vehicles/timestamp/1'%20OR%20'1'='1")
        .await;

    reply.assert_problem(400, "/problems/invalid-vehicle-id");
    assert_eq!(count().await, before);
}

#[tokio::test]
async fn percent_encoded_bytes_that_are_not_utf8_are_a_bad_request() {
    let app = spawn_app().await;

    // actix decodes path segments lossily, so these arrive as U+FFFD and fail to parse.
    let bad_ts = app.get("/vehicles/3/timestamp/%FF%FE").await;
    let bad_id = app.get("/vehicles/%FF/timestamp/1662976800").await;

    bad_ts.assert_problem(400, "/problems/invalid-timestamp");
    bad_id.assert_problem(400, "/problems/invalid-vehicle-id");
}

#[tokio::test]
async fn an_unknown_route_is_a_not_found_problem() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/vehicles",
        "/vehicles/3",
        "/vehicles/3/timestamp",
        "/vehicles/3/at/1662976800",
    ] {
        let reply = app.get(path).await;

        reply.assert_problem(404, "/problems/route-not-found");
    }
}

#[tokio::test]
async fn another_method_on_a_known_path_is_a_method_not_allowed_problem() {
    let app = spawn_app().await;

    let response = app
        .client
        .delete(format!("{}/vehicles/3/timestamp/1662976800", app.address))
        .send()
        .await
        .expect("DELETE");

    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    assert_eq!(response.headers()["content-type"], PROBLEM_JSON);
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(body["type"], "/problems/method-not-allowed");
    assert_eq!(body["status"], 405);
}
