use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{TestApp, redis_url, spawn_app};

/// The real binary, serving the database and prefix of `app`, with its log on a pipe.
fn start_binary(app: &TestApp, drain_secs: u64) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", &app.settings.database.database_url.text)
        .env("REDIS_URL", redis_url())
        .env("CACHE_KEY_PREFIX", &app.prefix)
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("MIGRATE_ON_START", "false")
        .env("HTTP_WORKERS", "1")
        .env("DB_STATEMENT_TIMEOUT_MS", "10000")
        .env("SHUTDOWN_DRAIN_SECS", drain_secs.to_string())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log on a thread until the end, so the pipe never fills; sends the address.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                let _receiver_gone =
                    tx.send(event["address"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the binary logs its address as JSON");
    (child, format!("http://{address}"))
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits (off the runtime's threads) for the process to exit, killing it past `within`.
async fn exit_status(mut child: Child, within: Duration) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || wait_for_exit(&mut child, within))
        .await
        .expect("wait task")
}

fn wait_for_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_finishes_in_flight_requests_and_exits_zero() {
    let app = spawn_app().await;
    let (child, address) = start_binary(&app, 1);
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    // Hold the lookup in PostgreSQL behind a lock, so the request is in flight across the stop.
    let mut lock = app.db.begin().await.expect("begin");
    sqlx::query(r#"LOCK TABLE "stateLogs" IN ACCESS EXCLUSIVE MODE"#)
        .execute(&mut *lock)
        .await
        .expect("lock");
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{address}/vehicles/3/timestamp/2022-09-12T10:00:00Z");
        async move { client.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let draining = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .expect("readyz while draining");
    assert_eq!(draining.status(), 503);
    let body: serde_json::Value = draining.json().await.expect("JSON");
    assert_eq!(body["status"], "shutting_down");
    // Past the drain the listener is closed; the held request is still being served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request waits for its lookup"
    );
    lock.commit().await.expect("release the lock");

    let response = in_flight
        .await
        .expect("task")
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.expect("JSON")["state"],
        "selling"
    );
    let status = exit_status(child, Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        client.get(format!("{address}/livez")).send().await.is_err(),
        "nothing listens any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_exits_zero_promptly_on_sigterm() {
    let app = spawn_app().await;
    let (child, address) = start_binary(&app, 0);
    assert_eq!(
        reqwest::get(format!("{address}/livez"))
            .await
            .expect("livez")
            .status(),
        200
    );

    let started = Instant::now();
    sigterm(&child);
    let status = exit_status(child, Duration::from_secs(10)).await;

    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
