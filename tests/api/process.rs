//! The real binary as a process: signals, exit codes and its log.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use vehicle_state_test_support::app::{TestApp, spawn_app};
use vehicle_state_test_support::chaos::ChaosProxy;
use vehicle_state_test_support::http::client_builder;
use vehicle_state_test_support::servers::{redis_addr, redis_url};

/// The binary with its JSON log events arriving on a channel.
struct Binary {
    child: Child,
    address: String,
    log: Receiver<serde_json::Value>,
}

/// The real binary, serving the database and prefix of `app`, with `extra` settings on top.
fn start_binary(app: &TestApp, extra: &[(&str, &str)]) -> Binary {
    let mut binary = spawn_binary(app, extra);
    let (listening, _) = wait_for_event(&binary, |e| e["message"] == "listening");
    binary.address = format!(
        "http://{}",
        listening["address"].as_str().unwrap_or_default()
    );
    binary
}

/// As [`start_binary`], without waiting for it to listen.
fn spawn_binary(app: &TestApp, extra: &[(&str, &str)]) -> Binary {
    spawn_command("serve", app, extra)
}

/// `vehicle-state <command>` with the settings of [`start_binary`] (those the command takes).
fn spawn_command(command: &str, app: &TestApp, extra: &[(&str, &str)]) -> Binary {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
        .arg(command)
        .env_clear()
        .env("DATABASE_URL", &app.settings.database.url.text)
        .env("REDIS_URL", redis_url())
        .env("CACHE_KEY_PREFIX", &app.prefix)
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("MIGRATE_ON_START", "false")
        .env("HTTP_WORKERS", "1")
        .env("DB_STATEMENT_TIMEOUT_MS", "10000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, log) = std::sync::mpsc::channel();
    // Reads the log on a thread until the process closes it, so the pipe never fills, and never
    // closes before the process does: a test done with the log drops its receiver, and the lines
    // the process writes while it stops are read and dropped here, instead of failing in the
    // process with a broken pipe (which tracing-subscriber reports on stderr).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let event = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            // Err: nobody reads any more; go on draining.
            let _ = tx.send(event);
        }
    });
    Binary {
        child,
        address: String::new(),
        log,
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Sends SIGTERM and waits for the exit; returns its status and how long it took.
async fn sigterm_and_wait(child: Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    sigterm(&child);
    let status = exit_status(child, Duration::from_secs(10)).await;
    (status, started.elapsed())
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
    let Binary { child, address, .. } = start_binary(&app, &[("SHUTDOWN_DRAIN_SECS", "1")]);
    let client = client_builder().build().expect("a client");
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
    let lock = app.hold_lookups().await;
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
    let Binary { child, address, .. } = start_binary(&app, &[]);
    assert_eq!(
        reqwest::get(format!("{address}/livez"))
            .await
            .expect("livez")
            .status(),
        200
    );

    let (status, took) = sigterm_and_wait(child).await;

    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_start_up_the_port_refuses_connections_and_sigterm_exits_zero_without_waiting() {
    let app = spawn_app().await;
    // Nothing listens on port 1, and the start-up would keep retrying for 30 s.
    let binary = spawn_binary(
        &app,
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/vs"),
            ("MIGRATE_ON_START", "true"),
            ("DB_ACQUIRE_TIMEOUT_MS", "30000"),
            ("RUST_LOG", "info,vehicle_state::startup=debug"),
        ],
    );
    let (bound, _) = wait_for_event(&binary, |e| {
        e["message"] == "port bound; connections are refused until the replica serves"
    });
    let addr: std::net::SocketAddr = bound["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("the bound address");
    // The port is the replica's, but not listened on: refused at once, so a balancer tries
    // another replica instead of waiting on this one.
    let connect = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, took) = sigterm_and_wait(binary.child).await;

    assert_ne!(addr.port(), 0);
    assert_eq!(
        connect.map(drop).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "refused, not queued"
    );
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_without_the_drain() {
    let app = spawn_app().await;
    let Binary { child, .. } = start_binary(&app, &[("SHUTDOWN_DRAIN_SECS", "60")]);

    let started = Instant::now();
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    let status = exit_status(child, Duration::from_secs(10)).await;

    assert_eq!(status.code(), Some(1), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_writes_one_json_log_line_with_its_request_id() {
    let app = spawn_app().await;
    let binary = start_binary(&app, &[]);
    let client = client_builder().build().expect("a client");

    for (id, path) in [
        ("req-lookup-1", "/vehicles/3/timestamp/1662976800"),
        ("req-bad-2", "/vehicles/x/timestamp/1"),
    ] {
        let response = client
            .get(format!("{}{path}", binary.address))
            .header("x-request-id", id)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.headers()["x-request-id"], id);
    }
    sigterm(&binary.child);
    let Binary { child, log, .. } = binary;
    let status = exit_status(child, Duration::from_secs(10)).await;
    assert!(status.success());

    let events: Vec<serde_json::Value> = log.try_iter().collect();
    for (id, path, status) in [
        ("req-lookup-1", "/vehicles/3/timestamp/1662976800", 200),
        ("req-bad-2", "/vehicles/x/timestamp/1", 400),
    ] {
        let lines: Vec<_> = events
            .iter()
            .filter(|e| e["span"]["request_id"] == id || e["request_id"] == id)
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        let (line, span) = (lines[0], &lines[0]["span"]);
        assert_eq!(line["message"], "request completed");
        assert_eq!(span["path"], path);
        assert_eq!(span["method"], "GET");
        assert_eq!(span["client"], "127.0.0.1", "the line names who sent it");
        assert_eq!(line["route"], "/vehicles/{id}/timestamp/{ts}");
        assert_eq!(line["status"], status);
        let latency_ms = line["latency_ms"].as_f64().expect("latency_ms, a number");
        // Whole microseconds: at most three decimals, as written.
        let text = line["latency_ms"].to_string();
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(latency_ms >= 0.0 && decimals <= 3, "{text}");
    }
}

/// The first log event, within 20 s, that `wanted` picks; the events before it are returned too.
fn wait_for_event(
    binary: &Binary,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = binary
            .log
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no such log event ({e}); before it: {before:?}"));
        if wanted(&event) {
            return (event, before);
        }
        before.push(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_the_log_says_whether_redis_answers_and_a_replica_without_it_still_serves() {
    let app = spawn_app().await;
    let with_redis = spawn_binary(&app, &[("REDIS_TIMEOUT_MS", "2000")]);
    let without_redis = spawn_binary(
        &app,
        &[
            ("REDIS_URL", "redis://:s3cret@127.0.0.1:1"),
            ("REDIS_TIMEOUT_MS", "500"),
        ],
    );
    let mut wrong_password = url::Url::parse(&redis_url()).expect("a Redis URL");
    wrong_password
        .set_password(Some("wr0ng-s3cret"))
        .expect("a password");
    let refused_login = spawn_binary(
        &app,
        &[
            ("REDIS_URL", wrong_password.as_str()),
            ("REDIS_TIMEOUT_MS", "500"),
        ],
    );

    let (answers, _) = wait_for_event(&with_redis, |e| e["message"] == "Redis answers");
    let (refused, _) = wait_for_event(&without_redis, |e| e["level"] == "WARN");
    let (login, _) = wait_for_event(&refused_login, |e| e["level"] == "WARN");
    let (listening, _) = wait_for_event(&without_redis, |e| e["message"] == "listening");
    let address = listening["address"].as_str().expect("an address");
    let lookup = reqwest::get(format!(
        "http://{address}/vehicles/3/timestamp/2022-09-12T10:00:00Z"
    ))
    .await
    .expect("a lookup");

    let url = url::Url::parse(&redis_url()).expect("a Redis URL");
    let named = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(6379)
    );
    assert_eq!(answers["redis"], named.as_str());
    assert_eq!(answers["mode"], "standalone");
    assert_eq!(
        refused["message"],
        "Redis cannot be reached; serving, with answers from PostgreSQL until it can"
    );
    assert_eq!(refused["redis"], "127.0.0.1:1");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("cannot connect to Redis: ") && error.contains("refused"),
        "{error}"
    );
    assert!(!refused.to_string().contains("s3cret"), "{refused}");
    assert!(
        login["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Redis refused the login: check the user and password in REDIS_URL"),
        "{login}"
    );
    assert!(!login.to_string().contains("s3cret"), "{login}");
    assert_eq!(lookup.status(), 200, "answered from PostgreSQL");
    for binary in [with_redis, without_redis, refused_login] {
        let (status, _) = sigterm_and_wait(binary.child).await;
        assert!(status.success(), "exit status {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_says_which_nats_it_cannot_reach_and_why_without_the_password() {
    let app = spawn_app().await;
    let ingest = spawn_command(
        "ingest",
        &app,
        &[
            ("NATS_URL", "nats://app:s3cret@127.0.0.1:1"),
            ("INGEST_BIND_ADDR", "127.0.0.1:0"),
        ],
    );

    let (refused, _) = wait_for_event(&ingest, |e| e["level"] == "WARN");

    assert_eq!(
        refused["message"],
        "cannot reach NATS at 127.0.0.1:1: connection refused: is nats-server running there?; trying again in 1s"
    );
    assert!(!refused.to_string().contains("s3cret"), "{refused}");
    let (status, _) = sigterm_and_wait(ingest.child).await;
    assert!(status.success(), "exit status {status}");
}

/// Every log event still to come, once the process has exited (its reader ends at the pipe's
/// end).
fn rest_of_log(log: Receiver<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    while let Ok(event) = log.recv_timeout(Duration::from_secs(5)) {
        events.push(event);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_known_down_the_log_says_so_once_not_once_per_request() {
    let app = spawn_app().await;
    let binary = spawn_binary(
        &app,
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/vs"),
            ("DB_ACQUIRE_TIMEOUT_MS", "300"),
            // Generous: no Redis warning (which names PostgreSQL too) on a loaded machine.
            ("REDIS_TIMEOUT_MS", "2000"),
        ],
    );
    let (listening, mut events) = wait_for_event(&binary, |e| e["message"] == "listening");
    let address = listening["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    let client = client_builder().build().expect("a client");

    let mut statuses = Vec::new();
    for second in 0..5 {
        let url = format!("http://{address}/vehicles/1/timestamp/2022-09-13T10:00:0{second}Z");
        statuses.push(client.get(url).send().await.expect("GET").status().as_u16());
    }
    sigterm(&binary.child);
    let Binary { child, log, .. } = binary;
    let status = exit_status(child, Duration::from_secs(10)).await;
    events.extend(rest_of_log(log));

    assert!(status.success(), "exit status {status}");
    assert_eq!(statuses, [503; 5]);
    let completed = events
        .iter()
        .filter(|e| e["message"] == "request completed" && e["status"] == 503)
        .count();
    assert_eq!(completed, 5, "each request has its one line: {events:?}");
    let outage: Vec<_> = events
        .iter()
        .filter(|e| {
            e["level"] == "WARN"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("PostgreSQL"))
        })
        .collect();
    assert_eq!(outage.len(), 1, "the outage, once: {outage:?}");
    assert!(
        outage[0]["cause"]
            .as_str()
            .unwrap_or_default()
            .starts_with("connection refused"),
        "{}",
        outage[0]
    );
    let errors: Vec<_> = events.iter().filter(|e| e["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "no line per request: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_returns_the_log_says_so_once() {
    let app = spawn_app().await;
    let proxy = ChaosProxy::start(redis_addr()).await;
    let redis = format!("redis://127.0.0.1:{}", proxy.port());
    let binary = start_binary(
        &app,
        &[
            ("REDIS_URL", redis.as_str()),
            ("REDIS_RETRY_INTERVAL_MS", "100"),
            // Generous, so a slow call on a loaded machine starts no second outage; the cut
            // itself is a dropped connection, found at once.
            ("REDIS_TIMEOUT_MS", "1000"),
            ("LOCAL_CACHE_MAX_BYTES", "0"),
        ],
    );
    let client = client_builder().build().expect("a client");
    let lookup = |second: u32| {
        let url = format!(
            "{}/vehicles/2/timestamp/{}",
            binary.address,
            1_662_976_800 + second
        );
        let client = client.clone();
        async move { client.get(url).send().await.expect("GET").status().as_u16() }
    };
    assert_eq!(lookup(0).await, 200);

    proxy.cut();
    let during = [lookup(1).await, lookup(2).await];
    proxy.restore();
    // The breaker waits max(REDIS_RETRY_INTERVAL_MS, REDIS_TIMEOUT_MS) before trying again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut second = 3;
    let back = loop {
        assert_eq!(lookup(second).await, 200);
        second += 1;
        let mut lines: Vec<serde_json::Value> = binary
            .log
            .try_iter()
            .filter(|e| e["message"] == "Redis answers again: answers are cached again")
            .collect();
        assert!(lines.len() <= 1, "said once: {lines:?}");
        if let Some(back) = lines.pop() {
            break back;
        }
        assert!(Instant::now() < deadline, "no line said Redis was back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for more in second..second + 3 {
        assert_eq!(lookup(more).await, 200);
    }
    sigterm(&binary.child);
    let Binary { child, log, .. } = binary;
    let status = exit_status(child, Duration::from_secs(10)).await;

    assert_eq!(during, [200, 200], "answered from PostgreSQL meanwhile");
    assert_eq!(back["level"], "INFO");
    assert!(back["unreachable_for_ms"].as_u64().is_some(), "{back}");
    let again: Vec<_> = rest_of_log(log)
        .into_iter()
        .filter(|e| e["message"] == "Redis answers again: answers are cached again")
        .collect();
    assert!(again.is_empty(), "said once: {again:?}");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_request_log_names_the_caller_and_never_the_key() {
    use sha2::Digest;
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("vs-keys-log-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let keys = dir.join("api-keys");
    let key = "s3cret-dashboard-key";
    let digest: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&keys, format!("dashboard {digest}\n")).expect("write the keys");
    let binary = start_binary(
        &app,
        &[("AUTH_API_KEYS_FILE", keys.to_str().expect("a path"))],
    );
    let client = client_builder().build().expect("a client");

    let served = client
        .get(format!(
            "{}/vehicles/3/timestamp/1662976800",
            binary.address
        ))
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", "req-with-key")
        .send()
        .await
        .expect("GET");
    let refused = client
        .get(format!(
            "{}/vehicles/3/timestamp/1662976800",
            binary.address
        ))
        .header("x-api-key", "wrong-key")
        .header("x-request-id", "req-bad-credential")
        .send()
        .await
        .expect("GET");
    sigterm(&binary.child);
    let Binary { child, log, .. } = binary;
    let status = exit_status(child, Duration::from_secs(10)).await;
    let events: Vec<serde_json::Value> = log.try_iter().collect();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(status.success());
    assert_eq!(served.status(), 200);
    assert_eq!(refused.status(), 401);
    let line = |id: &str| {
        events
            .iter()
            .find(|e| e["message"] == "request completed" && e["span"]["request_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id}'s line in {events:?}"))
    };
    assert_eq!(line("req-with-key")["span"]["caller"], "dashboard");
    assert_eq!(line("req-bad-credential")["status"], 401);
    assert!(line("req-bad-credential")["span"].get("caller").is_none());
    let text = events
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !text.contains(key) && !text.contains("wrong-key"),
        "a key was logged: {text}"
    );
}
