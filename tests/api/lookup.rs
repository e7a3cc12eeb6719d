use vehicle_state_test_support::app::{TestApp, spawn_app};
use vehicle_state_test_support::http::Reply;

#[tokio::test]
async fn vehicle_3_was_selling_at_ten_on_the_twelfth() {
    let app = spawn_app().await;

    let reply = app.state_at("3", "2022-09-12 10:00:00+00").await;

    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.body,
        r#"{"vehicle":{"id":3,"make":"VW","model":"GOLF"},"state":"selling","stateSince":"2022-09-11T23:21:38Z","until":"2022-09-12T12:41:41Z","timestamp":"2022-09-12T10:00:00Z"}"#
    );
    assert_eq!(reply.header("x-cache"), "MISS");
    assert_max_age_is_the_full_ttl(&reply);
}

#[tokio::test]
async fn every_accepted_timestamp_form_names_the_same_instant() {
    let app = spawn_app().await;
    let forms = [
        "2022-09-12T10:00:00Z",
        "2022-09-12T10:00:00+00:00",
        "2022-09-12T12:00:00+02:00",
        "2022-09-12T06:30:00-03:30",
        "2022-09-12T10:00:00.000Z",
        "2022-09-12 10:00:00+00",
        "2022-09-12 15:00:00+05",
        "2022-09-12 15:30:00+05:30",
        "2022-09-12 15:30:00+0530",
        "1662976800",
    ];

    for form in forms {
        let reply = app.state_at("3", form).await;

        assert_eq!(reply.status, 200, "{form}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["timestamp"], "2022-09-12T10:00:00Z", "{form}");
        assert_eq!(body["state"], "selling", "{form}");
        assert_eq!(body["stateSince"], "2022-09-11T23:21:38Z", "{form}");
    }
}

#[tokio::test]
async fn fractional_seconds_are_kept_to_the_microsecond() {
    let app = spawn_app().await;

    let reply = app.state_at("3", "2022-09-12T10:00:00.1234569Z").await;

    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["timestamp"], "2022-09-12T10:00:00.123456Z");
}

#[tokio::test]
async fn a_state_holds_from_its_exact_timestamp_inclusive() {
    let app = spawn_app().await;

    let at = app.state_at("3", "2022-09-11T23:21:38Z").await;
    let just_before = app.state_at("3", "2022-09-11T23:21:37.999999Z").await;

    assert_eq!(at.json()["state"], "selling");
    assert_eq!(at.json()["stateSince"], "2022-09-11T23:21:38Z");
    assert_eq!(just_before.json()["state"], "quoted");
    assert_eq!(just_before.json()["stateSince"], "2022-09-11T09:11:45Z");
}

#[tokio::test]
async fn each_vehicle_of_the_sample_gets_its_own_history() {
    let app = spawn_app().await;
    let cases = [
        (
            "1",
            "2022-09-10T10:23:54Z",
            "quoted",
            "2022-09-10T10:23:54Z",
            "BMW",
            "X1",
        ),
        (
            "2",
            "2022-09-11T17:03:16Z",
            "quoted",
            "2022-09-10T14:59:01Z",
            "AUDI",
            "A4",
        ),
        (
            "2",
            "2022-09-11T17:03:17Z",
            "selling",
            "2022-09-11T17:03:17Z",
            "AUDI",
            "A4",
        ),
        (
            "3",
            "2022-09-12T12:41:41Z",
            "sold",
            "2022-09-12T12:41:41Z",
            "VW",
            "GOLF",
        ),
    ];

    for (id, ts, state, since, make, model) in cases {
        let body = app.state_at(id, ts).await.json();

        assert_eq!(body["state"], state, "{id} at {ts}");
        assert_eq!(body["stateSince"], since, "{id} at {ts}");
        assert_eq!(body["vehicle"]["make"], make);
        assert_eq!(body["vehicle"]["model"], model);
        assert_eq!(body["vehicle"]["id"], id.parse::<i32>().expect("numeric"));
    }
}

#[tokio::test]
async fn an_instant_in_the_future_gets_the_latest_state() {
    let app = spawn_app().await;

    let reply = app.state_at("3", "2999-01-01T00:00:00Z").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["state"], "sold");
    assert_eq!(reply.json()["stateSince"], "2022-09-12T12:41:41Z");
}

#[tokio::test]
async fn before_the_first_state_change_the_vehicle_had_no_state() {
    let app = spawn_app().await;

    let reply = app.state_at("1", "2022-09-10T10:23:53Z").await;

    let detail = reply.assert_problem(404, "/problems/no-state-at-timestamp");
    assert!(
        detail.contains("vehicle 1") && detail.contains("2022-09-10T10:23:53Z"),
        "{detail}"
    );
    assert_eq!(reply.header("x-cache"), "MISS");
    assert_max_age_is_the_full_ttl(&reply);
}

#[tokio::test]
async fn a_vehicle_without_any_state_change_had_no_state() {
    let app = spawn_app().await;
    app.add_vehicle(4, "SEAT", "IBIZA", "quoted").await;

    let reply = app.state_at("4", "2030-01-01T00:00:00Z").await;

    reply.assert_problem(404, "/problems/no-state-at-timestamp");
}

#[tokio::test]
async fn an_unknown_vehicle_is_not_found() {
    let app = spawn_app().await;

    let reply = app.state_at("2147483647", "2022-09-12T10:00:00Z").await;

    let detail = reply.assert_problem(404, "/problems/vehicle-not-found");
    assert!(detail.contains("2147483647"), "{detail}");
    assert_eq!(reply.header("x-cache"), "MISS");
}

#[tokio::test]
async fn state_changes_at_the_same_instant_resolve_to_the_later_lifecycle_state() {
    let app = spawn_app().await;
    app.add_vehicle(5, "FIAT", "500", "sold").await;
    // Inserted latest-lifecycle first, so physical order would give the wrong answer.
    app.add_state_log(5, "sold", "2023-01-01 12:00:00+00").await;
    app.add_state_log(5, "selling", "2023-01-01 12:00:00+00")
        .await;
    app.add_state_log(5, "quoted", "2023-01-01 12:00:00+00")
        .await;
    app.add_vehicle(6, "KIA", "RIO", "selling").await;
    app.add_state_log(6, "selling", "2023-01-01 12:00:00+00")
        .await;
    app.add_state_log(6, "quoted", "2023-01-01 12:00:00+00")
        .await;
    // States outside the lifecycle rank below it, and between themselves by text.
    app.add_vehicle(7, "OPEL", "CORSA", "quoted").await;
    app.add_state_log(7, "archived", "2023-01-01 12:00:00+00")
        .await;
    app.add_state_log(7, "quoted", "2023-01-01 12:00:00+00")
        .await;
    app.add_vehicle(8, "OPEL", "ASTRA", "quoted").await;
    app.add_state_log(8, "archived", "2023-01-01 12:00:00+00")
        .await;
    app.add_state_log(8, "blocked", "2023-01-01 12:00:00+00")
        .await;

    for (id, expected) in [
        ("5", "sold"),
        ("6", "selling"),
        ("7", "quoted"),
        ("8", "blocked"),
    ] {
        let reply = app.state_at(id, "2023-01-01T12:00:00Z").await;

        assert_eq!(reply.json()["state"], expected, "vehicle {id}");
        assert_eq!(reply.json()["stateSince"], "2023-01-01T12:00:00Z");
    }
}

/// Vehicles 100 to 20,099, three changes each: enough rows that a sequential scan would be the
/// planner's choice without the index.
async fn add_bulk_rows(app: &TestApp) {
    sqlx::raw_sql(
        r#"INSERT INTO vehicles SELECT g, 'MAKE', 'MODEL', 'sold' FROM generate_series(100, 20099) g;
           INSERT INTO "stateLogs" SELECT g, s, TIMESTAMPTZ '2020-01-01' + (g || ' minutes')::interval
             FROM generate_series(100, 20099) g, unnest(ARRAY['quoted', 'selling', 'sold']) s;
           ANALYZE vehicles; ANALYZE "stateLogs";"#,
    )
    .execute(&app.db)
    .await
    .expect("bulk rows");
}

#[tokio::test]
async fn the_lookup_statement_is_answered_by_index_scans() {
    let app = spawn_app().await;
    add_bulk_rows(&app).await;

    let explain = format!("EXPLAIN {}", vehicle_state::db::LOOKUP_MANY_SQL);
    let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(explain))
        .bind(vec![5000_i32, 17])
        .bind(vec![chrono::Utc::now(), chrono::Utc::now()])
        .fetch_all(&app.db)
        .await
        .expect("explain");
    let plan: String = plan.into_iter().map(|(line,)| line + "\n").collect();

    assert!(plan.contains("vehicles_pkey"), "{plan}");
    assert!(plan.contains("stateLogs_vehicleId_timestamp_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let reply = app.state_at("5000", "2030-01-01T00:00:00Z").await;
    assert_eq!(reply.json()["state"], "sold");
}

/// The service's connections plan generically (`plan_cache_mode = force_generic_plan`, so that
/// no execution is planned again): the generic plans, for any batch length and any page, are
/// the same index probes.
#[tokio::test]
async fn the_service_statements_keep_their_index_plans_when_generic() {
    let app = spawn_app().await;
    add_bulk_rows(&app).await;
    let mut conn = app.db.acquire().await.expect("a connection");
    let prepare = format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE lookup AS {}; PREPARE page AS {};",
        vehicle_state::db::LOOKUP_MANY_SQL,
        vehicle_state::db::HISTORY_SQL
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
        .execute(&mut *conn)
        .await
        .expect("prepare");

    for execute in [
        "EXECUTE lookup('{5000}', '{2030-01-01}')",
        "EXECUTE lookup('{5000,17,20099,100,3}', '{2030-01-01,2021-01-01,2020-01-02,2019-01-01,2030-01-01}')",
        "EXECUTE page(5000, NULL, NULL, -1, '', 51)",
        "EXECUTE page(5000, '2020-01-04', '2020-01-04', 4, '', 51)",
        "EXECUTE page(5000, NULL, '2020-01-04', 2, 'selling', 11)",
    ] {
        let plan: Vec<(String,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN {execute}")))
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
        let plan: String = plan.into_iter().map(|(line,)| line + "\n").collect();

        assert!(plan.contains("vehicles_pkey"), "{execute}\n{plan}");
        assert!(
            plan.contains("stateLogs_vehicleId_timestamp_idx"),
            "{execute}\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{execute}\n{plan}");
    }
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let app = spawn_app().await;
    for path in [
        "/vehicles/3/timestamp/1662976800",
        "/vehicles/3/history",
        "/livez",
        "/readyz",
        "/metrics",
        "/explore/",
        "/swagger-ui/",
        "/api-docs/openapi.json",
    ] {
        let get = app.get(path).await;
        let response = app
            .client
            .head(format!("{}{path}", app.address))
            .send()
            .await
            .expect("HEAD");

        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers().get("content-type"),
            get.headers.get("content-type"),
            "{path}"
        );
        assert_eq!(response.text().await.expect("body"), "", "{path}");
    }
}

/// On a miss the answer is as fresh as it gets: the whole TTL, less the query's milliseconds
/// (max-age is rounded down, so it never promises more than the TTL).
fn assert_max_age_is_the_full_ttl(reply: &Reply) {
    let cache_control = reply.header("cache-control");
    assert!(
        ["public, max-age=60", "public, max-age=59"].contains(&cache_control),
        "{cache_control}"
    );
}
