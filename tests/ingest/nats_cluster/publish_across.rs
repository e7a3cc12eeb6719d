//! `publish` across a kill of the stream's leader.

use std::time::{Duration, Instant};

use vehicle_state_test_support::process::TempDir;
use vehicle_state_test_support::process::nats::NatsCluster;

use super::jetstream::{jetstream_of, stream_state, wait_for_leaders_of_stream};
use super::{SEED, STREAM};
use crate::publish;

/// `publish` outlasts a leader's election: from the kill, it finishes within the retry window
/// (`PUBLISH_RETRY_SECS`, 30 s) plus the time to send what is left.
const PUBLISH_BOUND: Duration = Duration::from_secs(60);

pub async fn publish_across_a_kill() {
    const PUBLISHED: u32 = 20_000;
    let mut cluster = NatsCluster::start(3);
    cluster.wait_for_meta_leader(Duration::from_secs(30)).await;
    let urls = cluster.urls();
    let js = jetstream_of(&cluster).await;
    // The stream first (a small publish), so its leader is known before the run that is cut.
    publish(&urls, STREAM, 1, SEED, &["--ingest-stream-replicas", "3"]);
    let (leader, _) = wait_for_leaders_of_stream(&js).await;
    // How many events the run sends, known before it starts: loading the reference takes
    // seconds, long enough on a busy machine for the whole publish to finish before the kill.
    let events = {
        let expected = crate::reference(PUBLISHED, SEED).await;
        (expected.vehicles.len() + expected.logs.len()) as u64
    };

    let dir = TempDir::new("publish-r3");
    let log = std::fs::File::create(dir.0.join("publish.log")).expect("publish's log");
    let mut publisher = std::process::Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
        .args(["publish", "synthetic", "--vehicles", &PUBLISHED.to_string()])
        .args([
            "--random-seed",
            &SEED.to_string(),
            "--ingest-stream-replicas",
            "3",
        ])
        .env_clear()
        .env("NATS_URL", &urls)
        .env("INGEST_STREAM", STREAM)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("publish starts");
    // Mid-run: some events stored, not all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stored) = stream_state(&js).await;
        if stored > events / 10 {
            assert!(stored < events, "publish finished before the kill");
            break;
        }
        assert!(Instant::now() < deadline, "publish never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.node(&leader).kill9();
    let killed = Instant::now();
    let status = tokio::task::block_in_place(|| {
        loop {
            if let Some(status) = publisher.try_wait().expect("publish's status") {
                break Some(status);
            }
            if killed.elapsed() > PUBLISH_BOUND {
                let _ = publisher.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let took = killed.elapsed();
    let log = std::fs::read_to_string(dir.0.join("publish.log")).unwrap_or_default();
    let retries = log.matches("sending what is in flight again").count();
    let (replicas, stored) = stream_state(&js).await;
    println!(
        "publish of {events} events, the stream's leader {leader} killed mid-run: exited {status:?} {took:.1?} after the kill, {retries} rounds of sending again; the stream holds {stored} messages on {replicas} replicas"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "publish finished, successfully, within {PUBLISH_BOUND:?} of the kill: {status:?}\n{log}"
    );
    assert!(retries > 0, "publish met the election (it sent again)");
    assert_eq!(stored, events, "every event stored once");
}
