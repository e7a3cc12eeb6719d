//! Redis on a test host of its own, the link to it slow, lossy or a black hole, under load.
//! PostgreSQL (the shared server, on loopback) keeps working: it is the other tier, and no
//! request may fail.

use std::time::Duration;

use vehicle_state_test_support::load::{figure, figure_or_never, mixed};
use vehicle_state_test_support::netns::{Fault, Host};
use vehicle_state_test_support::process::redis::RedisServer;
use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, one_at_a_time, sample_database,
};
use vehicle_state_test_support::scratch::Scratch;

use crate::scenario::under_fault_watching;

/// `REDIS_TIMEOUT_MS` and `REDIS_RETRY_INTERVAL_MS` as shipped.
const TIMEOUT: Duration = Duration::from_millis(100);
const RETRY_INTERVAL: Duration = Duration::from_millis(1000);
/// A request waits at most a Redis read and a write-back, each bounded by the timeout, plus
/// PostgreSQL's answer and everything else (HTTP, scheduling on two busy cores).
const BOUND: Duration = Duration::from_millis(2 * 100 + 800);
/// After the link heals, answers are written to Redis again within this: the next call after
/// the retry interval connects.
const RECOVERY: Duration = Duration::from_millis(1000 + 1000);

struct Setup {
    replica: Replica,
    redis: RedisServer,
    _scratch: Scratch,
    _dir: TempDir,
    host: Host,
}

async fn a_replica_of_redis_on_a_host_of_its_own() -> Setup {
    let host = Host::new();
    let redis = RedisServer::start_at(host.place(), None, &[]).await;
    let scratch = sample_database();
    let dir = TempDir::new("net-redis");
    let mut replica = Replica::new(&dir.0, &scratch.database_url, &redis.url(), &scratch.prefix);
    replica
        .set("REDIS_TIMEOUT_MS", &TIMEOUT.as_millis().to_string())
        .set(
            "REDIS_RETRY_INTERVAL_MS",
            &RETRY_INTERVAL.as_millis().to_string(),
        );
    replica.start().await;
    Setup {
        replica,
        redis,
        _scratch: scratch,
        _dir: dir,
        host,
    }
}

/// Runs `fault` on the link to Redis under load and checks what holds for every fault: no
/// request fails or waits past [`BOUND`], and new answers are written to Redis again within
/// [`RECOVERY`] of healing. Returns the timeline for the fault's own checks.
async fn holds_under(fault: Fault) -> crate::scenario::Timeline {
    let mut setup = a_replica_of_redis_on_a_host_of_its_own().await;
    let url = setup.replica.url();
    let redis = &setup.redis;
    let keys_at_heal = std::cell::Cell::new(None);
    // Half hot answers (cached), half new instants (each written to Redis once answered): once
    // healed, new keys appear when caching works again.
    let (timeline, written_again) =
        under_fault_watching(&mut setup.host, &url, 8, mixed(), fault, &[], async || {
            let Ok(keys) = redis.try_query::<u64>(&redis::cmd("DBSIZE")).await else {
                return false;
            };
            match keys_at_heal.get() {
                None => {
                    keys_at_heal.set(Some(keys));
                    false
                }
                Some(at_heal) => keys > at_heal,
            }
        })
        .await;

    eprintln!("Redis, {fault}: {}", timeline.report.summary("load"));
    eprintln!("  {}", timeline.during_summary());
    let from = |x_cache: &str| {
        timeline
            .during()
            .filter(|s| s.x_cache.as_deref() == Some(x_cache))
            .count()
    };
    eprintln!(
        "  during the fault: {} HIT (memory or Redis), {} MISS (PostgreSQL); new answers written to Redis {} after healing",
        from("HIT"),
        from("MISS"),
        figure_or_never(written_again)
    );
    let unexpected = timeline.unexpected(false);
    assert!(
        unexpected.is_empty(),
        "a Redis fault never fails a request: {} failed, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(3)]
    );
    timeline.assert_no_request_over(BOUND, &fault.to_string());
    assert!(
        written_again.is_some_and(|t| t <= RECOVERY),
        "answers are cached again within {} of healing: {}",
        figure(RECOVERY),
        figure_or_never(written_again)
    );
    timeline
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_50_ms_more_latency_to_redis_no_request_fails_or_waits_past_its_timeouts() {
    let _serial = one_at_a_time().await;
    bounded(async {
        holds_under(Fault::Latency(Duration::from_millis(50))).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_10_percent_loss_to_redis_no_request_fails_or_waits_past_its_timeouts() {
    let _serial = one_at_a_time().await;
    bounded(async {
        holds_under(Fault::Loss(0.10)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_is_black_holed_answers_come_from_postgresql_and_caching_resumes_after() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let timeline = holds_under(Fault::BlackHole).await;
        assert!(
            timeline
                .during()
                .any(|s| s.x_cache.as_deref() == Some("MISS")),
            "answers came from PostgreSQL during the black hole"
        );
    })
    .await;
}
