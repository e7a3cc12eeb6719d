//! Redis behind three sentinels on a test host of its own; the first sentinel the service is
//! given swallows every packet. Another sentinel names the master, so answers are cached as
//! usual: the black-holed one costs nothing.

use std::time::{Duration, Instant};

use vehicle_state_test_support::load::{Load, figure, figure_or_never, uncached};
use vehicle_state_test_support::netns::{Fault, Host};
use vehicle_state_test_support::process::redis::{MASTER_SET, Sentinel};
use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, one_at_a_time, sample_database,
};

/// `REDIS_TIMEOUT_MS` as shipped: the bound on asking one sentinel, too.
const TIMEOUT: Duration = Duration::from_millis(100);
/// Answers reach the master within this of the load's start, although the first sentinel
/// listed never answers (asked in order, as redis-rs does, each connection would wait out its
/// fixed 1 s connect timeout on it first, past REDIS_TIMEOUT_MS: never).
const CACHED_WITHIN: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_first_sentinel_is_black_holed_answers_are_cached_through_another() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut host = Host::new();
        let set = Sentinel::start_at(host.place(), 3, None).await;
        let scratch = sample_database();
        let dir = TempDir::new("net-sentinel");
        let mut replica = Replica::new(&dir.0, &scratch.database_url, &set.url(), &scratch.prefix);
        replica
            .set("REDIS_MODE", "sentinel")
            .set("REDIS_SENTINEL_MASTER", MASTER_SET)
            .set("REDIS_TIMEOUT_MS", &TIMEOUT.as_millis().to_string());
        // Before the replica starts: every connection it makes must find the master without
        // the first sentinel.
        host.fault(Fault::BlackHole, &set.sentinel_ports[..1]);
        replica.start().await;

        let started = Instant::now();
        let load = Load::start(&replica.url(), 4, uncached());
        let mut cached_after = None;
        while started.elapsed() < Duration::from_secs(5) {
            if set.master.dbsize().await > 0 {
                cached_after = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let keys_at_end = set.master.dbsize().await;
        let report = load.stop().await;

        eprintln!("{}", report.summary("first of three sentinels black-holed"));
        eprintln!(
            "  first answer cached on the master {} after the load began; {keys_at_end} keys after {}",
            figure_or_never(cached_after),
            figure(started.elapsed())
        );
        report.assert_no_failures("a sentinel black-holed");
        assert!(
            cached_after.is_some_and(|t| t <= CACHED_WITHIN),
            "answers cached through another sentinel within {}: {}",
            figure(CACHED_WITHIN),
            figure_or_never(cached_after)
        );
        let misses = report.samples.len() as u64;
        assert!(
            keys_at_end * 10 >= misses * 9,
            "nearly every uncached answer was written to Redis: {keys_at_end} keys for {misses} lookups"
        );
        drop(replica);
        drop(set);
        drop(host);
    })
    .await;
}
