//! Far more concurrent lookups than one replica can serve: the excess is shed at once with
//! 503 + Retry-After, so the latency of what is served stays bounded and memory stays flat.

use std::time::Duration;

use vehicle_state_test_support::load;
use vehicle_state_test_support::load::{Load, uncached};
use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, execute, one_at_a_time, sample_database,
};
use vehicle_state_test_support::servers::redis_url;

/// Every lookup costs PostgreSQL about 20 ms per vehicle row it visits (a view over the real
/// table that sleeps), so capacity is small and known: about pool size / 20 ms.
async fn make_every_lookup_cost_20_ms(database_url: &str) {
    execute(
        database_url,
        &[
            "ALTER TABLE vehicles RENAME TO vehicles_data",
            "CREATE VIEW vehicles AS SELECT * FROM vehicles_data WHERE pg_sleep(0.02) IS NOT NULL",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_many_times_capacity_excess_lookups_are_shed_and_latency_and_memory_stay_bounded() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let scratch = sample_database();
        make_every_lookup_cost_20_ms(&scratch.database_url).await;
        let dir = TempDir::new("overload");
        let mut replica =
            Replica::new(&dir.0, &scratch.database_url, &redis_url(), &scratch.prefix);
        replica
            .set("DB_POOL_MAX_SIZE", "4")
            .set("LOOKUP_CONCURRENCY_LIMIT", "16")
            .set("DB_ACQUIRE_TIMEOUT_MS", "2000");
        replica.start().await;
        // Warm up, so memory is measured from a replica that has served.
        let warm = Load::start(&replica.url(), 4, uncached());
        tokio::time::sleep(Duration::from_millis(500)).await;
        warm.stop().await;
        let rss_before = replica.rss_kib();

        // 128 clients each waiting for its answer before asking again: 32 times what the pool
        // serves at once, 8 times the concurrency limit.
        let load = Load::start(&replica.url(), 128, uncached());
        tokio::time::sleep(Duration::from_secs(4)).await;
        let rss_under_load = replica.rss_kib();
        let report = load.stop().await;

        eprintln!(
            "{}",
            report.summary("128 clients on a replica limited to 16 lookups")
        );
        let served = |s: &load::Sample| matches!(s.outcome, Ok(200 | 404));
        let shed = |s: &load::Sample| s.outcome == Ok(503);
        eprintln!(
            "served: {} (p50 {}, p99 {}); shed: {} (p99 {}); \
         RSS {} KiB before, {} KiB under load",
            report.count(200) + report.count(404),
            load::figure(report.latency(0.5, served)),
            load::figure(report.latency(0.99, served)),
            report.count(503),
            load::figure(report.latency(0.99, shed)),
            rss_before,
            rss_under_load
        );
        assert!(
            report.count(200) + report.count(404) > 50,
            "lookups were still served"
        );
        assert!(report.count(503) > 0, "the excess was shed");
        for s in report.samples.iter().filter(|s| !served(s)) {
            assert_eq!(s.outcome, Ok(503), "only shed, never failed: {s:?}");
            assert_eq!(
                s.problem_type.as_deref(),
                Some("/problems/overloaded"),
                "{s:?}"
            );
            assert_eq!(s.retry_after.as_deref(), Some("1"), "{s:?}");
        }
        assert!(
            report.latency(0.99, served) < Duration::from_millis(1500),
            "served lookups wait a bounded queue, not the pool's 2 s acquire timeout: {:?}",
            report.latency(0.99, served)
        );
        assert!(
            report.max() < Duration::from_secs(2),
            "no request waited out the acquire timeout: {:?}",
            report.max()
        );
        assert!(
            rss_under_load < rss_before + 20 * 1024,
            "memory stays flat: {rss_before} KiB before, {rss_under_load} KiB under load"
        );
    })
    .await;
}
