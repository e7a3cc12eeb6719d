//! A collector that is down, hangs or refuses never reaches an answer: every lookup answers as
//! fast as without tracing allows, what cannot be exported is dropped and counted, and memory
//! stays flat however long it lasts.

use std::time::{Duration, Instant};

use vehicle_state_test_support::process::{
    self, Replica, TempDir, bounded, client, free_port, one_at_a_time, sample_database,
};
use vehicle_state_test_support::servers::redis_url;

use crate::collector::{Collector, Mode};
use crate::traced_replica;

/// The export timeout the replicas get: a hanging collector holds each export this long, so a
/// request that waited on the exporter would take at least this.
const EXPORT_TIMEOUT_MS: u64 = 2000;
/// No lookup may take this long (debug build, two cores, the load and the replica sharing them).
const SLOWEST_ALLOWED: Duration = Duration::from_millis(1000);
/// Growth of resident memory allowed over the second, longer half of the load.
const RSS_GROWTH_ALLOWED_KIB: u64 = 8 * 1024;

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing listens on the endpoint's port.
    Down,
    Hang,
    Refuse,
}

/// Closed-loop lookups, 8 at a time, each a key of its own (a miss: Redis and PostgreSQL spans
/// too), from `from`; returns the latencies, sorted.
async fn load(replica: &Replica, from: usize, count: usize) -> Vec<Duration> {
    let client = client();
    let base = replica.url();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, base, next) = (client.clone(), base.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= from + count {
                    return latencies;
                }
                let url = format!(
                    "{base}/vehicles/{}/timestamp/{}",
                    1 + i % 4,
                    1_600_000_000 + i
                );
                let started = Instant::now();
                let reply = client.get(url).send().await.expect("an answer");
                let status = reply.status();
                let body = reply.text().await.expect("a body");
                latencies.push(started.elapsed());
                assert!(status == 200 || status == 404, "{status}: {body}");
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a load task"));
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn metric(replica: &Replica, name: &str) -> f64 {
    process::metric(replica, name)
        .await
        .unwrap_or_else(|| panic!("no {name}"))
}

async fn scenario(fault: Fault) {
    let dir = TempDir::new("traces-faults");
    let db = sample_database();
    // Without tracing first: what the same load costs when nothing is exported.
    let mut plain = Replica::new(&dir.0, &db.database_url, &redis_url(), &db.prefix);
    plain.start().await;
    let untraced = load(&plain, 0, 1500).await;
    drop(plain);

    let collector = Collector::start(match fault {
        Fault::Hang => Mode::Hang,
        Fault::Refuse => Mode::Refuse,
        Fault::Down => Mode::Accept,
    });
    let mut replica = traced_replica(&dir.0, &db, &collector);
    if matches!(fault, Fault::Down) {
        replica.set(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{}", free_port()),
        );
    }
    replica
        .set("OTEL_BSP_MAX_QUEUE_SIZE", "256")
        .set("OTEL_EXPORTER_OTLP_TIMEOUT", &EXPORT_TIMEOUT_MS.to_string())
        .set("RUST_LOG", "warn");
    replica.start().await;

    let warm = load(&replica, 10_000, 1500).await;
    let rss_warm = replica.rss_kib();
    let mut latencies = load(&replica, 20_000, 4000).await;
    let rss_after = replica.rss_kib();
    latencies.extend(warm);
    latencies.sort();

    let dropped_full = metric(
        &replica,
        r#"vehicle_state_trace_spans_dropped_total{reason="queue_full"}"#,
    )
    .await;
    let dropped_failed = metric(
        &replica,
        r#"vehicle_state_trace_spans_dropped_total{reason="export_failed"}"#,
    )
    .await;
    let exported = metric(&replica, "vehicle_state_trace_spans_exported_total").await;
    println!(
        "{fault:?}: untraced p50 {:?} p99 {:?} max {:?}; traced p50 {:?} p99 {:?} max {:?}; \
         dropped queue_full {dropped_full} export_failed {dropped_failed}, exported {exported}; \
         RSS {rss_warm} KiB -> {rss_after} KiB; {} exports tried",
        percentile(&untraced, 0.5),
        percentile(&untraced, 0.99),
        untraced.last().copied().unwrap_or_default(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        collector.posts(),
    );
    let slowest = latencies.last().copied().unwrap_or_default();
    assert!(
        slowest < SLOWEST_ALLOWED,
        "{fault:?}: a lookup took {slowest:?}: {}",
        replica.log_tail()
    );
    assert!(
        dropped_full + dropped_failed > 0.0,
        "{fault:?}: nothing dropped or nothing counted"
    );
    assert_eq!(exported, 0.0, "{fault:?}: nothing can have been exported");
    match fault {
        // Each export waits out its timeout while spans keep coming: the queue overflows.
        Fault::Hang => {
            assert!(
                dropped_full > 0.0,
                "{fault:?}: the bounded queue never overflowed"
            );
            assert!(collector.posts() > 0, "the exporter tried");
        }
        Fault::Refuse => {
            assert!(
                dropped_failed > 0.0,
                "{fault:?}: refused exports not counted"
            );
            assert!(collector.posts() > 0, "the exporter tried");
        }
        Fault::Down => assert!(
            dropped_failed > 0.0,
            "{fault:?}: failed exports not counted"
        ),
    }
    assert!(
        rss_after <= rss_warm + RSS_GROWTH_ALLOWED_KIB,
        "{fault:?}: RSS grew from {rss_warm} KiB to {rss_after} KiB"
    );
    // A failing exporter says so in the log, without a line per span. A hanging collector holds
    // the first export for the whole export timeout, and the load may end before that: wait for
    // the line, up to a few timeouts.
    let deadline = Instant::now() + Duration::from_millis(3 * EXPORT_TIMEOUT_MS);
    let mut warnings = replica.log_lines_with("could not be exported");
    while warnings == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        warnings = replica.log_lines_with("could not be exported");
    }
    assert!(
        (1..=50).contains(&warnings),
        "{fault:?}: {warnings} log lines about failed exports: {}",
        replica.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_drops_and_counts_spans_and_answers_are_unaffected() {
    let _turn = one_at_a_time().await;
    bounded(scenario(Fault::Down)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_drops_and_counts_spans_and_answers_are_unaffected() {
    let _turn = one_at_a_time().await;
    bounded(scenario(Fault::Hang)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_refuses_drops_and_counts_spans_and_answers_are_unaffected() {
    let _turn = one_at_a_time().await;
    bounded(scenario(Fault::Refuse)).await;
}
