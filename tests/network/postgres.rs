//! PostgreSQL on a test host of its own, the link to it slow, lossy or a black hole, under load.
//! Redis (the shared server, on loopback) keeps working, so cached answers are the other tier.

use std::time::Duration;

use vehicle_state_test_support::load;
use vehicle_state_test_support::load::{figure, figure_or_never, mixed};
use vehicle_state_test_support::netns::{Fault, Host};
use vehicle_state_test_support::process::{
    PgServer, Replica, TempDir, bounded, one_at_a_time, run_binary,
};
use vehicle_state_test_support::servers::redis_url;

use crate::scenario::{Timeline, under_fault, under_fault_after};

/// The replica's PostgreSQL timeouts in these tests.
const ACQUIRE: Duration = Duration::from_millis(1000);
const STATEMENT: Duration = Duration::from_millis(1000);
const RESPONSE: Duration = Duration::from_millis(1500);
/// No request may wait longer than acquiring a connection and waiting for a reply allow, plus
/// this for everything else (HTTP, Redis, scheduling on two busy cores).
const MARGIN: Duration = Duration::from_millis(500);
/// After the link heals, an uncached lookup is answered within this: a probe that was
/// connecting when the link healed gives up after `ACQUIRE`, the next one connects.
const RECOVERY: Duration = Duration::from_millis(2000);

/// Fields drop in order: the replica, then PostgreSQL, then the host and its link.
struct Setup {
    replica: Replica,
    _postgres: PgServer,
    _dir: TempDir,
    host: Host,
}

async fn a_replica_of_postgresql_on_a_host_of_its_own() -> Setup {
    let host = Host::new();
    let postgres = tokio::task::block_in_place(|| PgServer::start_at(host.place()));
    let database_url = postgres.url("vehicle_state");
    run_binary(&["seed", "sample"], &[("DATABASE_URL", &database_url)]);
    let dir = TempDir::new("net-pg");
    let prefix = format!("vs-test-{}", uuid::Uuid::new_v4().simple());
    let mut replica = Replica::new(&dir.0, &database_url, &redis_url(), &prefix);
    replica
        .set("DB_ACQUIRE_TIMEOUT_MS", &ACQUIRE.as_millis().to_string())
        .set(
            "DB_STATEMENT_TIMEOUT_MS",
            &STATEMENT.as_millis().to_string(),
        )
        .set("DB_RESPONSE_TIMEOUT_MS", &RESPONSE.as_millis().to_string());
    replica.start().await;
    replica.wait_ready(Duration::from_secs(10)).await;
    Setup {
        replica,
        _postgres: postgres,
        _dir: dir,
        host,
    }
}

fn answered_by_postgresql(s: &load::Sample) -> bool {
    matches!(s.outcome, Ok(200 | 404)) && s.x_cache.as_deref() == Some("MISS")
}

/// Prints the figures of `fault`, and checks what holds for every fault that may cost
/// availability: only answers and 503 `database-unavailable`, none past the timeouts' bound,
/// and, when `recovery` says so, an uncached lookup answered within it of healing.
fn holds(timeline: &Timeline, fault: Fault, recovery: Option<Duration>) {
    eprintln!("PostgreSQL, {fault}: {}", timeline.report.summary("load"));
    eprintln!("  {}", timeline.during_summary());
    let recovered = timeline.recovered_after(answered_by_postgresql);
    eprintln!(
        "  an uncached lookup answered {} after healing",
        figure_or_never(recovered)
    );
    let unexpected = timeline.unexpected(true);
    assert!(
        unexpected.is_empty(),
        "only answers and 503 database-unavailable: {} others, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(3)]
    );
    timeline.assert_no_request_over(ACQUIRE + RESPONSE + MARGIN, &fault.to_string());
    if let Some(bound) = recovery {
        assert!(
            recovered.is_some_and(|r| r <= bound),
            "recovered within {}: {}",
            figure(bound),
            figure_or_never(recovered)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_50_ms_more_latency_to_postgresql_every_lookup_is_answered() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut setup = a_replica_of_postgresql_on_a_host_of_its_own().await;
        let fault = Fault::Latency(Duration::from_millis(50));
        let url = setup.replica.url();
        let timeline = under_fault(&mut setup.host, &url, 8, mixed(), fault, &[]).await;

        eprintln!("PostgreSQL, {fault}: {}", timeline.report.summary("load"));
        eprintln!("  {}", timeline.during_summary());
        let unexpected = timeline.unexpected(false);
        assert!(
            unexpected.is_empty(),
            "every lookup is answered: {} were not, e.g. {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(3)]
        );
        let slow: Vec<_> = timeline
            .during()
            .filter(|s| answered_by_postgresql(s))
            .collect();
        let slowest = slow.iter().map(|s| s.took).max().unwrap_or_default();
        assert!(slow.len() > 10, "uncached lookups went on during the fault");
        assert!(
            slowest >= Duration::from_millis(50),
            "the latency was there: the slowest uncached lookup took {}",
            figure(slowest)
        );
        // Nothing near a timeout: a connection's ping and the statement are a round trip each.
        timeline.assert_no_request_over(ACQUIRE, "50 ms latency");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_10_percent_loss_to_postgresql_lookups_are_answered_or_503_within_their_timeouts() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut setup = a_replica_of_postgresql_on_a_host_of_its_own().await;
        let fault = Fault::Loss(0.10);
        let url = setup.replica.url();
        let timeline = under_fault(&mut setup.host, &url, 8, mixed(), fault, &[]).await;

        holds(&timeline, fault, Some(RECOVERY));
        assert!(
            timeline
                .during()
                .filter(|s| answered_by_postgresql(s))
                .count()
                > 10,
            "most uncached lookups are still answered through a lossy link"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgresql_is_black_holed_requests_end_within_their_timeouts_and_recover_after() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut setup = a_replica_of_postgresql_on_a_host_of_its_own().await;
        let fault = Fault::BlackHole;
        let url = setup.replica.url();
        let timeline = under_fault(&mut setup.host, &url, 8, mixed(), fault, &[]).await;

        holds(&timeline, fault, Some(RECOVERY));
        assert!(
            timeline
                .during()
                .any(|s| s.outcome == Ok(200) && s.x_cache.as_deref() == Some("HIT")),
            "cached answers were served during the black hole"
        );
        assert!(
            timeline.during().any(|s| s.outcome == Ok(503)),
            "uncached lookups were answered 503 during the black hole, not left waiting"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_open_postgresql_connections_are_swallowed_requests_end_within_their_timeouts() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut setup = a_replica_of_postgresql_on_a_host_of_its_own().await;
        let fault = Fault::DeadConnections;
        let url = setup.replica.url();
        // New connections work throughout, so PostgreSQL is never found down: only the bound on
        // a statement's reply (DB_RESPONSE_TIMEOUT_MS) and on acquiring (the ping of a pooled
        // connection) keep requests from waiting until TCP gives up. 100 ms of latency from
        // the start keeps statements in flight when the connections are swallowed.
        let latency = Fault::Latency(Duration::from_millis(100));
        let timeline =
            under_fault_after(&mut setup.host, &url, 8, mixed(), Some(latency), fault, &[]).await;

        holds(&timeline, fault, None);
        let answered_during = timeline
            .during()
            .filter(|s| answered_by_postgresql(s))
            .count();
        assert!(
            answered_during > 0,
            "new connections answered uncached lookups during the fault"
        );
    })
    .await;
}
