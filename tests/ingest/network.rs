//! Ingest with its nats-server on a test host of its own (`vehicle_state_test_support::netns`), the link
//! slow, lossy or a black hole for a few seconds while ingest is mid-way through the stream.
//! What must hold: nothing lost, nothing doubled, and the lag back to 0 within a stated time of
//! the link healing; the health endpoints answer within their own bound throughout.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vehicle_state_test_support::load::{figure, figure_or_never};
use vehicle_state_test_support::netns::{Fault, Host};
use vehicle_state_test_support::process;
use vehicle_state_test_support::process::{
    Replica, TempDir, free_port, metric, nats, one_at_a_time,
};

use crate::{
    log_rows, migrated_database, publish, reference, vehicles_off_their_latest_change,
    wait_for_tables,
};

const SEED: u64 = 9;
/// Enough events (about 3.7 per vehicle) that ingest, in batches of 25, is mid-way when the
/// fault begins.
const VEHICLES: u32 = 6000;
const FAULT_FOR: Duration = Duration::from_secs(3);
/// The ingest process's health endpoints bound each check (CHECK_TIMEOUT in src/ingest/http.rs),
/// so `/readyz` answers within this whatever the link does.
const HEALTH_BOUND: Duration = Duration::from_millis(1500);
/// After the link heals, every event is applied (the lag back to 0) within this: TCP resends
/// what was lost (its backoff after a 3 s black hole reaches a few seconds), the pull and its
/// heartbeats resume, and what is left of the stream is applied. Since the change feed, a batch
/// is acked only once its announcements are stored: one whose publish was lost in the black hole
/// fails after JetStream's publish timeout (5 s), and its events come back NAKed (18.3 s seen
/// once in CI against the 15 s this was before).
const RECOVERY: Duration = Duration::from_secs(25);

/// A nats-server with JetStream on `host`, killed when dropped.
struct NatsOnHost {
    url: String,
    child: Child,
    _dir: TempDir,
}

impl NatsOnHost {
    fn start(host: &Host) -> Self {
        let place = host.place();
        let port = free_port();
        let dir = TempDir::new("nats-net");
        let child = place
            .command(nats::binary())
            .args(["-js", "-a", &place.ip, "-p", &port.to_string(), "-sd"])
            .arg(dir.0.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((place.ip.as_str(), port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            url: format!("nats://{}:{port}", place.ip),
            child,
            _dir: dir,
        }
    }
}

impl Drop for NatsOnHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The consumer's lag as ingest reports it: pending plus delivered and not yet acked; None while
/// it cannot say.
async fn lag(ingest: &Replica) -> Option<f64> {
    Some(
        metric(ingest, "vehicle_state_ingest_pending").await?
            + metric(ingest, "vehicle_state_ingest_ack_pending").await?,
    )
}

async fn ingest_holds_under(fault: Fault) {
    let _serial = one_at_a_time().await;
    let expected = reference(VEHICLES, SEED).await;
    let mut host = Host::new();
    let nats = NatsOnHost::start(&host);
    let dir = TempDir::new("ingest-net");
    let db = migrated_database();
    publish(&nats.url, "VEHICLE_EVENTS", VEHICLES, SEED, &["--shuffle"]);
    let mut ingest = Replica::ingest(&dir.0, &db.database_url, &nats.url, "VEHICLE_EVENTS");
    ingest.set("INGEST_BATCH_MAX", "25");
    ingest.start().await;

    // Mid-way: some changes stored, not all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let rows = log_rows(&db.database_url).await;
        if rows > 0 {
            break rows;
        }
        assert!(Instant::now() < deadline, "ingest never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        (before as usize) < expected.logs.len(),
        "ingest finished before the fault"
    );

    host.fault(fault, &[]);
    let faulted_at = Instant::now();
    let client = process::client();
    let mut slowest_health = Duration::ZERO;
    while faulted_at.elapsed() < FAULT_FOR {
        let asked = Instant::now();
        let answered = client
            .get(format!("{}/readyz", ingest.url()))
            .send()
            .await
            .is_ok();
        assert!(answered, "/readyz answered during {fault}");
        slowest_health = slowest_health.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_heal = log_rows(&db.database_url).await;
    host.heal();
    let healed_at = Instant::now();

    let mut caught_up = None;
    while healed_at.elapsed() < RECOVERY * 2 {
        if lag(&ingest).await == Some(0.0)
            && log_rows(&db.database_url).await as usize == expected.logs.len()
        {
            caught_up = Some(healed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = wait_for_tables(&db.database_url, &expected, Duration::from_secs(5)).await;
    eprintln!(
        "ingest, NATS behind {fault} for {}: {} of {} changes stored before, {} more during; lag 0 and every change stored {} after healing; slowest /readyz during the fault {}",
        figure(FAULT_FOR),
        before,
        expected.logs.len(),
        at_heal - before,
        figure_or_never(caught_up),
        figure(slowest_health),
    );
    assert_eq!(now, expected, "nothing lost, nothing doubled");
    assert!(
        vehicles_off_their_latest_change(&db.database_url)
            .await
            .is_empty(),
        "every vehicle's state is its latest change"
    );
    assert!(
        caught_up.is_some_and(|t| t <= RECOVERY),
        "the lag is back to 0 within {} of healing: {}",
        figure(RECOVERY),
        figure_or_never(caught_up)
    );
    assert!(
        slowest_health <= HEALTH_BOUND,
        "/readyz answered within {}: {}",
        figure(HEALTH_BOUND),
        figure(slowest_health)
    );
    drop(ingest);
    drop(nats);
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_50_ms_more_latency_to_nats_ingest_loses_and_doubles_nothing() {
    ingest_holds_under(Fault::Latency(Duration::from_millis(50))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_10_percent_loss_to_nats_ingest_loses_and_doubles_nothing() {
    ingest_holds_under(Fault::Loss(0.10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nats_is_black_holed_ingest_resumes_after_and_loses_and_doubles_nothing() {
    ingest_holds_under(Fault::BlackHole).await;
}
