//! Hostile clients against one replica (the real binary, two workers as by default): each
//! attack is what a client sent when the service was tried as an attacker would, and each test
//! names the bound it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use vehicle_state_test_support::load::figure;
use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, client, one_at_a_time, rss_kib_of, sample_database,
};
use vehicle_state_test_support::servers::redis_url;

/// The resident memory no attack may take a replica past (issue 32's target): the replica's own
/// bound with the default settings is far below it (docs/deployment.md, *Memory*).
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// A replica of the sample data with the default number of workers (two on this machine).
async fn replica(dir: &TempDir, scratch: &vehicle_state_test_support::scratch::Scratch) -> Replica {
    let mut replica = Replica::new(&dir.0, &scratch.database_url, &redis_url(), &scratch.prefix);
    replica.set("HTTP_WORKERS", "2");
    replica
}

/// Samples the replica's resident memory every 50 ms until `stop` is set; returns the peak.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib_of(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

/// A well-behaved client asking one lookup after another until `stop` is set; returns the
/// latencies of its answers (every one must be a 200).
fn normal_client(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let client = client();
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let reply = client
                .get(format!("{base}/vehicles/2/timestamp/2022-09-12T10:00:00Z"))
                .send()
                .await;
            let status = reply.as_ref().map(|r| r.status().as_u16()).ok();
            let body = match reply {
                Ok(reply) => reply.text().await.unwrap_or_default(),
                Err(error) => error.to_string(),
            };
            latencies.push(started.elapsed());
            assert_eq!(status, Some(200), "a normal lookup is answered: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies
    })
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    assert!(
        !latencies.is_empty(),
        "the normal client was answered at all"
    );
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

/// A 100-lookup batch of vehicles no request asked before (none of which exists): every item
/// is a miss, read from PostgreSQL, as a batch of new pairs was before answers were cached per
/// segment (instants of the sample's vehicles would now be answered from memory, and the
/// batches would only be CPU, shared fairly with the normal client on two workers).
fn batch_body(seed: u64) -> String {
    let lookups: Vec<String> = (0..100u64)
        .map(|i| {
            let id = 1_000 + seed * 100 + i;
            format!(r#"{{"id":{id},"timestamp":"1662976800"}}"#)
        })
        .collect();
    format!(r#"{{"lookups":[{}]}}"#, lookups.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_connections_asking_brotli_batches_keep_memory_bounded_and_lookups_fast() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let scratch = sample_database();
        let dir = TempDir::new("brotli");
        let mut replica = replica(&dir, &scratch).await;
        replica.start().await;
        let rss_before = replica.rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = watch_rss(replica.pid(), stop.clone());
        let answered = Arc::new(AtomicU64::new(0));

        // 200 connections, each posting 100-lookup batches that prefer Brotli, for 6 s.
        let attackers: Vec<_> = (0..200u64)
            .map(|n| {
                let (url, stop, answered) = (
                    format!("{}/vehicles/states", replica.url()),
                    stop.clone(),
                    answered.clone(),
                );
                tokio::spawn(async move {
                    // One connection per attacker.
                    let client = client();
                    let mut seed = n * 1_000;
                    while !stop.load(Ordering::Relaxed) {
                        seed += 1;
                        let reply = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("accept-encoding", "br")
                            .body(batch_body(seed))
                            .send()
                            .await;
                        if let Ok(reply) = reply {
                            let coding = reply
                                .headers()
                                .get("content-encoding")
                                .map(|v| v.to_str().unwrap_or_default().to_owned());
                            if reply.bytes().await.is_ok() && coding.as_deref() == Some("br") {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let normal = normal_client(replica.url(), stop.clone());
        tokio::time::sleep(Duration::from_secs(6)).await;
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            attacker.await.expect("attacker");
        }
        let latencies = normal.await.expect("normal client");
        let peak = peak.await.expect("watcher");

        let p99 = p99(latencies);
        let answered = answered.load(Ordering::Relaxed);
        eprintln!(
            "brotli batches: {answered} Brotli answers to 200 connections; RSS {rss_before} KiB before, peak {peak} KiB; a normal lookup's p99 {}",
            figure(p99)
        );
        assert!(answered > 200, "the batches were answered, in Brotli: {answered}");
        assert!(
            peak < RSS_BOUND_KIB,
            "RSS stays under {RSS_BOUND_KIB} KiB: peak {peak} KiB"
        );
        // A debug build on two cores shared with 200 attacking clients, whose every batch is
        // 100 misses (a statement, 100 write-backs of three Redis commands each, 100 problem
        // bodies) and then a Brotli encoding: the release binary's p99 is what bench/attacks
        // reports (under 100 ms); here, bounded (0.9 to 1.1 s seen on two cores in CI).
        assert!(
            p99 < Duration::from_secs(2),
            "a normal lookup is not held behind the encoders: p99 {p99:?}"
        );
    })
    .await;
}

/// One GET, as a client pipelines it.
const GET: &[u8] = b"GET /vehicles/2/timestamp/2022-09-12T10:00:00Z HTTP/1.1\r\nhost: x\r\n\r\n";

/// Writes `requests` on `stream` again and again until `until`, never reading; a write that
/// cannot go through within 200 ms (the replica stopped reading) is given up and tried again.
/// Returns whether the replica dropped the connection meanwhile.
async fn pipeline_without_reading(stream: &mut TcpStream, requests: &[u8], until: Instant) -> bool {
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), stream.write_all(requests)).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => return true,
        }
    }
    false
}

/// Whether the replica has closed `stream`: what it sent is read, then the end (or a reset)
/// must come within 1 s; a connection it still holds would go on answering instead.
async fn closed_by_the_replica(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_connections_pipelining_without_reading_keep_memory_bounded_and_are_not_held() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let scratch = sample_database();
        let dir = TempDir::new("pipelining");
        let mut replica = replica(&dir, &scratch).await;
        replica.start().await;
        let rss_before = replica.rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = watch_rss(replica.pid(), stop.clone());
        let address = format!("127.0.0.1:{}", replica.port);

        // 100 connections writing GETs back to back for 6 s and never reading, then silent
        // (still never reading) for the keep-alive (5 s) and send (10 s) timeouts and 2 s more:
        // by then the replica must have let each one go.
        let requests: Vec<u8> = GET.repeat(64);
        let pipelining_ends = Instant::now() + Duration::from_millis(6_500);
        let attackers: Vec<_> = (0..100)
            .map(|_| {
                let (address, requests) = (address.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(&address).await.expect("connect");
                    let dropped =
                        pipeline_without_reading(&mut stream, &requests, pipelining_ends).await;
                    (stream, dropped)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let normal = normal_client(replica.url(), stop.clone());
        tokio::time::sleep(Duration::from_secs(6)).await;
        stop.store(true, Ordering::Relaxed);
        let latencies = normal.await.expect("normal client");
        let peak = peak.await.expect("watcher");
        let mut streams = Vec::new();
        for attacker in attackers {
            streams.push(attacker.await.expect("attacker"));
        }
        let rss_after = replica.rss_kib();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut let_go = 0;
        for (stream, dropped) in &mut streams {
            if *dropped || closed_by_the_replica(stream).await {
                let_go += 1;
            }
        }

        let p99 = p99(latencies);
        eprintln!(
            "pipelining: RSS {rss_before} KiB before, peak {peak} KiB, {rss_after} KiB after; a normal lookup's p99 {}; {let_go} of 100 connections let go 12 s after their clients fell silent",
            figure(p99)
        );
        assert!(
            peak < RSS_BOUND_KIB,
            "RSS stays under {RSS_BOUND_KIB} KiB: peak {peak} KiB"
        );
        assert!(
            p99 < Duration::from_secs(1),
            "a normal lookup is still answered promptly: p99 {p99:?}"
        );
        assert_eq!(
            let_go, 100,
            "no connection is held past the keep-alive and send timeouts"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_ask_for_large_answers_and_never_read_are_dropped_at_the_send_timeout() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let scratch = sample_database();
        let dir = TempDir::new("slow-readers");
        let mut replica = replica(&dir, &scratch).await;
        let send_timeout = Duration::from_secs(2);
        // No byte budget per connection: it would close these connections before their writes
        // stall, and the send timeout is what is tried here.
        replica
            .set("HTTP_SEND_TIMEOUT_MS", "2000")
            .set("HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION", "1073741824");
        replica.start().await;
        let rss_before = replica.rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = watch_rss(replica.pid(), stop.clone());
        let address = format!("127.0.0.1:{}", replica.port);

        // 20 connections each asking for Swagger UI's script (about 1.4 MB, uncompressed) over
        // and over, never reading: the answers fill the sockets, and the replica's writes stall.
        let asset = b"GET /swagger-ui/swagger-ui-bundle.js HTTP/1.1\r\nhost: x\r\n\r\n".repeat(8);
        let started = Instant::now();
        let attackers: Vec<_> = (0..20)
            .map(|_| {
                let (address, asset) = (address.clone(), asset.clone());
                tokio::spawn(async move {
                    // A small receive window, as a client that reads nothing soon has.
                    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
                    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
                    let mut stream = socket
                        .connect(address.parse().expect("an address"))
                        .await
                        .expect("connect");
                    let until = Instant::now() + Duration::from_secs(8);
                    let dropped = pipeline_without_reading(&mut stream, &asset, until).await;
                    (dropped, started.elapsed())
                })
            })
            .collect();
        let normal = normal_client(replica.url(), stop.clone());
        let mut dropped = Vec::new();
        for attacker in attackers {
            dropped.push(attacker.await.expect("attacker"));
        }
        stop.store(true, Ordering::Relaxed);
        let latencies = normal.await.expect("normal client");
        let peak = peak.await.expect("watcher");

        let p99 = p99(latencies);
        let count = dropped.iter().filter(|(d, _)| *d).count();
        let latest = dropped.iter().map(|(_, at)| *at).max().unwrap_or_default();
        let earliest = dropped.iter().map(|(_, at)| *at).min().unwrap_or_default();
        eprintln!(
            "slow readers: {count} of 20 connections dropped, the first {} and the last {} after the attack began (send timeout {}); RSS {rss_before} KiB before, peak {peak} KiB; a normal lookup's p99 {}",
            figure(earliest),
            figure(latest),
            figure(send_timeout),
            figure(p99)
        );
        // Within the 8 s the clients keep at it (a connection still held then counts as not
        // dropped above), and none before its writes have stalled for the send timeout.
        assert_eq!(count, 20, "every connection that reads nothing is dropped");
        assert!(
            earliest >= send_timeout,
            "not dropped before the send timeout: {earliest:?}"
        );
        assert!(
            peak < RSS_BOUND_KIB,
            "RSS stays under {RSS_BOUND_KIB} KiB: peak {peak} KiB"
        );
        // No bound on the normal lookup's latency here: a debug build reads Swagger UI's files
        // from the disk on every request (rust-embed), about 50 ms of a worker's time each.
    })
    .await;
}

/// Sends `head` (and `first` bytes of its body) on a new connection, then a byte every 100 ms
/// and never the whole body; returns the status line the replica answered with (if any) and how
/// long after the head the replica closed the connection (None: still open after `within`).
async fn unfinished_body(
    address: &str,
    head: &str,
    first: &[u8],
    within: Duration,
) -> (Option<String>, Option<Duration>) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first).await.expect("first bytes");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let status = String::from_utf8_lossy(&answer).lines().next().map(str::to_owned);
                    return (status, Some(started.elapsed()));
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                // A write error is the replica closing: the next read says so.
                let _ = stream.write_all(b" ").await;
            }
        }
    }
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .map(str::to_owned);
    (status, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_that_never_end_are_answered_and_their_connections_closed_within_the_body_timeout() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let scratch = sample_database();
        let dir = TempDir::new("bodies");
        let mut replica = replica(&dir, &scratch).await;
        // A body timeout of 2 s, and 30 connections per worker: the 50 unfinished bodies below
        // would hold every connection if they were never closed.
        replica
            .set("HTTP_CLIENT_REQUEST_TIMEOUT_MS", "2000")
            .set("HTTP_MAX_CONNECTIONS", "30");
        replica.start().await;
        let address = format!("127.0.0.1:{}", replica.port);
        let body_timeout = Duration::from_secs(2);
        let bound = body_timeout + Duration::from_secs(1);
        let within = Duration::from_secs(10);

        // A batch that announces 60,000 bytes and trickles them, 50 times at once: a 408 each at
        // the body timeout, then closed.
        let batch = "POST /vehicles/states HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n";
        let batches: Vec<_> = (0..50)
            .map(|_| {
                let address = address.clone();
                tokio::spawn(async move { unfinished_body(&address, batch, b"{", within).await })
            })
            .collect();
        // A chunked batch whose body never ends: refused at once, unread, and closed.
        let chunked = "POST /vehicles/states HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        let (chunked_status, chunked_closed) =
            unfinished_body(&address, chunked, b"1\r\n{\r\n", within).await;
        // A GET with a chunked body: the same.
        let get = "GET /vehicles/2/timestamp/2022-09-12T10:00:00Z HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        let (get_status, get_closed) = unfinished_body(&address, get, b"1\r\n{\r\n", within).await;
        // A GET that announces a body it never sends: answered without it, then closed.
        let get_with_length = "GET /vehicles/2/timestamp/2022-09-12T10:00:00Z HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n";
        let (length_status, length_closed) =
            unfinished_body(&address, get_with_length, b"", within).await;
        let mut batch_results = Vec::new();
        for batch in batches {
            batch_results.push(batch.await.expect("batch task"));
        }
        // Every connection was given back: a normal client is served.
        let after = client()
            .get(format!(
                "{}/vehicles/2/timestamp/2022-09-12T10:00:00Z",
                replica.url()
            ))
            .send()
            .await
            .map(|r| r.status().as_u16());

        let slowest = batch_results.iter().filter_map(|(_, c)| *c).max();
        let shown = |d: Option<Duration>| d.map(figure).unwrap_or_else(|| "never".into());
        eprintln!(
            "unfinished bodies: 50 batches closed at most {} after their head (bound {}); chunked batch {}, chunked GET {}, GET with an unsent body {}",
            shown(slowest),
            figure(bound),
            shown(chunked_closed),
            shown(get_closed),
            shown(length_closed),
        );
        for (status, closed) in &batch_results {
            assert_eq!(
                status.as_deref(),
                Some("HTTP/1.1 408 Request Timeout"),
                "a batch whose body does not arrive in time is a 408"
            );
            let closed = closed.expect("the connection is closed");
            assert!(
                closed >= body_timeout - Duration::from_millis(200) && closed <= bound,
                "closed within the body timeout + 1 s ({bound:?}): {closed:?}"
            );
        }
        for (what, status, closed, expected) in [
            ("chunked batch", chunked_status, chunked_closed, "HTTP/1.1 411 Length Required"),
            ("chunked GET", get_status, get_closed, "HTTP/1.1 411 Length Required"),
            ("GET with an unsent body", length_status, length_closed, "HTTP/1.1 200 OK"),
        ] {
            assert_eq!(status.as_deref(), Some(expected), "{what}");
            let closed = closed.unwrap_or_else(|| panic!("{what}: the connection is closed"));
            assert!(
                closed <= Duration::from_secs(1),
                "{what}: an unread body's connection is closed once answered: {closed:?}"
            );
        }
        assert_eq!(after.ok(), Some(200), "other clients are served");
    })
    .await;
}
