use vehicle_state_test_support::app::{spawn_app, spawn_app_with, spawn_replica_without_postgres};

#[tokio::test]
async fn livez_says_the_process_serves() {
    let app = spawn_app().await;

    let reply = app.get("/livez").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");
    assert_eq!(reply.header("cache-control"), "no-store");
}

#[tokio::test]
async fn readyz_is_ready_when_postgres_and_redis_answer() {
    let app = spawn_app().await;

    let reply = app.get("/readyz").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "ready", "postgres": "up", "redis": "up"})
    );
}

#[tokio::test]
async fn readyz_reports_redis_down_but_stays_ready() {
    let app = spawn_app_with(|s| s.redis.url = "redis://127.0.0.1:1".parse().expect("a URL")).await;

    let reply = app.get("/readyz").await;

    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "ready", "postgres": "up", "redis": "down"})
    );
}

#[tokio::test]
async fn readyz_is_not_ready_without_postgres_while_livez_stays_up() {
    let app = spawn_app().await;
    let cut_off = spawn_replica_without_postgres(&app).await;

    let ready = cut_off.get("/readyz").await;
    let live = cut_off.get("/livez").await;

    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json(),
        serde_json::json!({"status": "not_ready", "postgres": "down", "redis": "up"})
    );
    assert_eq!(live.status, 200);
}

#[tokio::test]
async fn a_request_id_is_returned_taken_from_the_request_or_made_up() {
    let app = spawn_app().await;

    let given = app
        .get_with("/livez", &[("x-request-id", "lb-7f3a:42")])
        .await;
    let made = app.get("/livez").await;
    let refused = app
        .get_with(
            "/vehicles/x/timestamp/1",
            &[("x-request-id", &"x".repeat(200))],
        )
        .await;

    assert_eq!(given.header("x-request-id"), "lb-7f3a:42");
    assert!(
        uuid::Uuid::parse_str(made.header("x-request-id")).is_ok(),
        "{}",
        made.header("x-request-id")
    );
    assert_eq!(refused.status, 400);
    assert!(
        uuid::Uuid::parse_str(refused.header("x-request-id")).is_ok(),
        "an unusable id is replaced"
    );
}
