//! Limits that keep one replica answering whatever clients do: the lookup concurrency limit
//! (overload is shed, not queued) and the HTTP server's own limits on slow, oversized and
//! malformed requests. Spoken over raw TCP where a well-behaved client cannot say it.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use vehicle_state_test_support::app::{TestApp, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_a_lookup_is_shed_at_once_and_cached_answers_still_flow() {
    let app = spawn_app_with(|s| s.http.lookup_concurrency_limit = 1).await;
    // Asked twice, so memory holds it (an answer is kept in memory on second sight).
    app.state_at("1", "2022-09-12T10:00:00Z").await;
    app.state_at("1", "2022-09-12T10:00:00Z").await;
    let lock = app.hold_lookups().await;
    // One lookup in flight, held in PostgreSQL, and a burst of requests for the same answer,
    // which share it rather than count against the limit.
    let same_key: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (
                app.client.clone(),
                format!("{}/vehicles/3/timestamp/1662976800", app.address),
            );
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.lookups_in_flight().await < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.lookups_in_flight().await,
        1,
        "the lookup is held in PostgreSQL"
    );

    let started = Instant::now();
    let shed = app.state_at("2", "2022-09-12T10:00:00Z").await;
    let shed_took = started.elapsed();
    let cached = app.state_at("1", "2022-09-12T10:00:00Z").await;
    let ready = app.get("/readyz").await;
    let keys_while_shed = app.cache_keys().await;
    drop(lock);
    let mut shared = Vec::new();
    for request in same_key {
        shared.push(request.await.expect("task").expect("a response"));
    }
    let after = app.state_at("2", "2022-09-12T10:00:00Z").await;

    let detail = shed.assert_problem(503, "/problems/overloaded");
    assert!(detail.contains("retry after 1 seconds"), "{detail}");
    assert_eq!(shed.header("retry-after"), "1");
    assert_eq!(shed.header("cache-control"), "no-store");
    assert!(
        shed_took < Duration::from_millis(500),
        "shed at once, not queued: {shed_took:?}"
    );
    assert_eq!(cached.status, 200);
    assert_eq!(cached.header("x-cache"), "HIT");
    assert_eq!(
        ready.status, 200,
        "overload is not unreadiness: {}",
        ready.body
    );
    assert!(
        shared.iter().all(|s| *s == 200),
        "requests sharing the one lookup in flight are not shed: {shared:?}"
    );
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(
        !keys_while_shed.iter().any(|k| k.ends_with(":segments:2")),
        "a shed request caches nothing: {keys_while_shed:?}"
    );
}

/// Sends `request` on a new connection and reads until the server closes it or `within` passes.
/// Returns the status of the first response (None when the server closed without one), whether
/// the server closed the connection, and how long it took.
async fn raw_exchange(app: &TestApp, request: &[u8], within: Duration) -> RawReply {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    read_reply(&mut stream, started, within).await
}

#[derive(Debug)]
struct RawReply {
    status: Option<u16>,
    closed: bool,
    took: Duration,
}

async fn read_reply(stream: &mut TcpStream, started: Instant, within: Duration) -> RawReply {
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    };
    let status = received
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok())
        .and_then(|code| code.parse().ok());
    RawReply {
        status,
        closed,
        took: started.elapsed(),
    }
}

/// The replica still answers a normal request at once.
async fn assert_still_serving(app: &TestApp) {
    let started = Instant::now();
    let reply = app.state_at("3", "2022-09-12T10:00:00Z").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_after_the_request_timeout_without_holding_up_others() {
    let app = spawn_app_with(|s| s.http.client_request_timeout = Duration::from_secs(1)).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    // Slowloris: many connections, each sending a header line now and then, never finishing.
    let slow: Vec<_> = (0..100)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let started = Instant::now();
                let _ = stream
                    .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
                    .await;
                let (mut reader, mut writer) = stream.into_split();
                let trickle = tokio::spawn(async move {
                    for i in 0..20 {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        if writer
                            .write_all(format!("X-{i}: y\r\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                let mut buf = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut buf));
                let outcome = read.await;
                trickle.abort();
                (
                    outcome.is_ok(),
                    String::from_utf8_lossy(&buf).into_owned(),
                    started.elapsed(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The one worker thread still serves everyone else while they dawdle.
    assert_still_serving(&app).await;
    for connection in slow {
        let (closed, received, took) = connection.await.expect("task");
        assert!(closed, "a slow client was never cut off");
        assert!(
            received.is_empty() || received.starts_with("HTTP/1.1 408"),
            "{received}"
        );
        assert!(took < Duration::from_secs(3), "cut off after {took:?}");
    }
}

#[tokio::test]
async fn oversized_and_malformed_requests_get_a_4xx_or_a_closed_connection_never_a_5xx() {
    let app = spawn_app().await;
    let huge_path = format!(
        "GET /vehicles/3/timestamp/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "9".repeat(200_000)
    );
    let long_path = format!(
        "GET /vehicles/3/timestamp/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "9".repeat(2_000)
    );
    let huge_header = format!(
        "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let many_headers = format!(
        "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a 200 KB path", huge_path.into_bytes()),
        ("a 2 KB timestamp", long_path.into_bytes()),
        ("a 200 KB header", huge_header.into_bytes()),
        ("500 headers", many_headers.into_bytes()),
        (
            "raw bytes that are not UTF-8 in the path",
            b"GET /vehicles/\xff\xfe/timestamp/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "a broken percent-encoding",
            b"GET /vehicles/%zz/timestamp/%f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("a request line that is not HTTP", b"HELLO THERE\r\n\r\n".to_vec()),
        (
            "a body on a GET that never arrives in full",
            b"GET /vehicles/3/timestamp/1662976800 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000000000\r\n\r\npartial".to_vec(),
        ),
        (
            "a malformed chunked body",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n".to_vec(),
        ),
        (
            "two conflicting lengths",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
        ),
    ];

    for (what, request) in cases {
        let reply = raw_exchange(&app, &request, Duration::from_secs(8)).await;
        eprintln!("{what}: {reply:?}");

        match reply.status {
            None => assert!(
                reply.closed,
                "{what}: neither an answer nor a close: {reply:?}"
            ),
            Some(status) => assert!(
                (400..500).contains(&status) || (status == 200 && what.contains("body")),
                "{what}: {reply:?}"
            ),
        }
        assert!(reply.took < Duration::from_secs(6), "{what}: {reply:?}");
        assert_still_serving(&app).await;
    }
}

#[tokio::test]
async fn pipelined_requests_are_each_answered_in_order_one_at_a_time() {
    let app = spawn_app().await;
    // Ten requests in one write, the last closing the connection: the replica reads one head at
    // a time, but a client that pipelines still gets every answer, in order.
    let mut requests = Vec::new();
    for id in 1..=9 {
        requests.extend_from_slice(
            format!(
                "GET /vehicles/{id}/timestamp/2022-09-12T10:00:00Z HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    requests.extend_from_slice(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let addr = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");

    stream.write_all(&requests).await.expect("write");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the connection is closed after the last answer")
        .expect("read");

    let text = String::from_utf8_lossy(&received);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..at + 12])
        .collect();
    // Vehicles 1 to 3 exist in the sample data, 4 to 9 do not; then /livez.
    assert_eq!(
        statuses,
        [
            "200", "200", "200", "404", "404", "404", "404", "404", "404", "200"
        ],
        "{text}"
    );
    let answers: Vec<usize> = (1..=9)
        .map(|id| {
            text.find(&format!("{{\"vehicle\":{{\"id\":{id},"))
                .or_else(|| text.find(&format!("no vehicle has id {id}\"")))
                .expect("each vehicle's answer")
        })
        .collect();
    assert!(
        answers.windows(2).all(|w| w[0] < w[1]),
        "in order: {answers:?}"
    );
}

#[tokio::test]
async fn a_chunked_body_is_refused_with_411_unread_and_its_connection_closed() {
    let app = spawn_app().await;
    let request =
        b"POST /vehicles/states HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\n\r\n10\r\n{\"lookups\":[{\"id\r\n";

    let reply = raw_exchange(&app, request, Duration::from_secs(5)).await;

    assert_eq!(reply.status, Some(411), "{reply:?}");
    assert!(reply.closed, "the connection is closed: {reply:?}");
    assert!(reply.took < Duration::from_secs(2), "{reply:?}");
    let addr = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let problem: serde_json::Value = serde_json::from_str(body).expect("a problem");
    assert_eq!(problem["type"], "/problems/length-required");
    assert_eq!(problem["status"], 411);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("send the body with Content-Length"),
        "{problem}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_still_serving(&app).await;
}
