//! `POST /vehicles/states`: many lookups in one request, each answered as the single lookup
//! answers it, from the same cache entries.

use serde_json::{Value, json};

use vehicle_state_test_support::app::{spawn_app, spawn_app_with, spawn_replica_without_postgres};
use vehicle_state_test_support::http::Reply;

const T: &str = "2022-09-12T10:00:00Z";

fn results(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("cache-control"), "no-store");
    reply.json()["results"].as_array().expect("results").clone()
}

#[tokio::test]
async fn a_batch_answers_every_item_in_order_as_the_single_lookup_would() {
    let app = spawn_app().await;
    let cached = app.state_at("3", T).await;

    let reply = app
        .batch(json!([
            {"id": 3, "timestamp": T},
            {"id": 2, "timestamp": "1662976800"},
            {"id": 999, "timestamp": T},
            {"id": 1, "timestamp": "2022-09-01T00:00:00Z"},
            {"id": 0, "timestamp": T},
            {"id": 3, "timestamp": "yesterday"},
            {"id": 2, "timestamp": "2022-09-12 10:00:00+00"},
        ]))
        .await;
    let items = results(&reply);
    let single_after = app.state_at("2", T).await;
    let unknown_single = app.state_at("999", T).await;

    assert_eq!(items.len(), 7, "{items:?}");
    assert_eq!(items[0]["status"], 200);
    assert_eq!(items[0]["cache"], "HIT", "the single lookup's entry");
    assert_eq!(
        items[0]["answer"],
        cached.json(),
        "exactly the single lookup's body"
    );
    assert_eq!(items[1]["status"], 200);
    assert_eq!(items[1]["cache"], "MISS");
    assert_eq!(items[1]["answer"]["state"], "selling");
    assert_eq!(items[2]["status"], 404);
    assert_eq!(items[2]["problem"]["type"], "/problems/vehicle-not-found");
    assert_eq!(
        items[2]["problem"],
        unknown_single.json(),
        "the single lookup's problem"
    );
    assert_eq!(items[3]["status"], 404);
    assert_eq!(
        items[3]["problem"]["type"],
        "/problems/no-state-at-timestamp"
    );
    assert_eq!(items[4]["status"], 400);
    assert_eq!(items[4]["problem"]["type"], "/problems/invalid-vehicle-id");
    assert_eq!(items[4].get("cache"), None);
    assert_eq!(items[5]["status"], 400);
    assert_eq!(items[5]["problem"]["type"], "/problems/invalid-timestamp");
    assert_eq!(
        items[6], items[1],
        "a duplicate pair (another spelling) is the same answer"
    );
    assert_eq!(
        single_after.header("x-cache"),
        "HIT",
        "the batch warmed the single lookup"
    );
    assert_eq!(single_after.json(), items[1]["answer"]);
}

/// A batch admits to memory on second sight: an answer it reads from PostgreSQL goes to Redis
/// only (pairs asked once would churn memory); one it finds in Redis was asked before, and is
/// kept in memory too.
#[tokio::test]
async fn a_batch_keeps_in_memory_what_redis_held_not_what_it_read_first() {
    let app = spawn_app().await;

    // Read first: to Redis only.
    let once = results(
        &app.batch(json!([{"id": 3, "timestamp": "2022-09-13T00:00:00Z"}]))
            .await,
    );
    app.forget_redis().await;
    let once_after = app.state_at("3", "2022-09-13T00:00:00Z").await;
    // Read, then found in Redis: to memory too.
    let first = results(&app.batch(json!([{"id": 2, "timestamp": T}])).await);
    let second = results(&app.batch(json!([{"id": 2, "timestamp": T}])).await);
    app.forget_redis().await;
    let twice_after = app.state_at("2", T).await;

    assert_eq!(once[0]["cache"], "MISS");
    assert_eq!(
        once_after.header("x-cache"),
        "MISS",
        "read once: in Redis only, and Redis forgot it"
    );
    assert_eq!(once_after.json(), once[0]["answer"]);
    assert_eq!(first[0]["cache"], "MISS");
    assert_eq!(second[0]["cache"], "HIT", "from Redis");
    assert_eq!(twice_after.header("x-cache"), "HIT", "from memory");
    assert_eq!(twice_after.json(), first[0]["answer"]);
}

/// Without Redis, memory is the only cache there is: what a batch reads from PostgreSQL then is
/// kept in memory at once.
#[tokio::test]
async fn without_redis_a_batch_keeps_what_it_read_in_memory() {
    let app = spawn_app_with(|s| s.redis.url = "redis://127.0.0.1:1".parse().expect("a URL")).await;

    let first = results(&app.batch(json!([{"id": 2, "timestamp": T}])).await);
    let after = app.state_at("2", T).await;

    assert_eq!(first[0]["cache"], "MISS");
    assert_eq!(after.header("x-cache"), "HIT", "from memory");
    assert_eq!(after.json(), first[0]["answer"]);
}

#[tokio::test]
async fn a_batch_during_a_postgres_outage_answers_cached_items_and_503s_the_others() {
    let app = spawn_app().await;
    app.state_at("3", T).await;
    let cut_off = spawn_replica_without_postgres(&app).await;

    let items = results(
        &cut_off
            .batch(json!([{"id": 3, "timestamp": T}, {"id": 2, "timestamp": T}]))
            .await,
    );

    assert_eq!(items[0]["status"], 200);
    assert_eq!(items[0]["cache"], "HIT", "from Redis");
    assert_eq!(items[1]["status"], 503);
    assert_eq!(
        items[1]["problem"]["type"],
        "/problems/database-unavailable"
    );
}

#[tokio::test]
async fn a_malformed_batch_is_a_problem_that_names_what_to_fix() {
    let app = spawn_app_with(|s| s.http.batch_max_body_bytes = 8192).await;
    let lookup = json!({"id": 3, "timestamp": T});

    let not_json = app.post("/vehicles/states", "application/json", "{").await;
    let wrong_type = app
        .batch(json!([lookup, {"id": "3", "timestamp": T}]))
        .await;
    let missing = app.batch(json!([{"id": 3}])).await;
    let unknown_field = app
        .post(
            "/vehicles/states",
            "application/json",
            r#"{"lookups":[],"extra":1}"#,
        )
        .await;
    let empty = app.batch(json!([])).await;
    let too_many = app.batch(Value::Array(vec![lookup.clone(); 101])).await;
    let too_large = app
        .post(
            "/vehicles/states",
            "application/json",
            format!("{{\"lookups\":[{}]}}", " ".repeat(9000)),
        )
        .await;
    let text = app
        .post("/vehicles/states", "text/plain", lookup.to_string())
        .await;
    let get = app.get("/vehicles/states").await;

    not_json.assert_problem(400, "/problems/invalid-body");
    let detail = wrong_type.assert_problem(400, "/problems/invalid-body");
    assert!(
        detail.starts_with("lookups[1].id: invalid type"),
        "{detail}"
    );
    let detail = missing.assert_problem(400, "/problems/invalid-body");
    assert!(detail.contains("timestamp"), "{detail}");
    unknown_field.assert_problem(400, "/problems/invalid-body");
    let detail = empty.assert_problem(400, "/problems/invalid-batch-size");
    assert!(detail.contains("1 to 100"), "{detail}");
    too_many.assert_problem(400, "/problems/invalid-batch-size");
    let detail = too_large.assert_problem(413, "/problems/body-too-large");
    assert!(detail.contains("8192"), "{detail}");
    text.assert_problem(415, "/problems/unsupported-media-type");
    get.assert_problem(405, "/problems/method-not-allowed");
    assert_eq!(get.header("allow"), "POST");
}

#[tokio::test]
async fn a_body_that_trickles_in_slower_than_the_request_timeout_is_a_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app =
        spawn_app_with(|s| s.http.client_request_timeout = std::time::Duration::from_millis(500))
            .await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let started = std::time::Instant::now();

    stream
        .write_all(
            b"POST /vehicles/states HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 60\r\n\r\n{\"lookups\":[",
        )
        .await
        .expect("the head and the start of the body");
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer before the test gives up")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("/problems/request-timeout"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
