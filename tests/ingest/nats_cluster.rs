//! Ingest from a three-node JetStream cluster (an R3 stream and consumer), `NATS_URL` naming all
//! three: the leader of the stream and of ingest's consumer killed mid-ingest, then, once it is
//! back, another node restarted. Nothing lost, nothing doubled, the consumer's lag back to zero.
//!
//! The events of the ingest test are all published before the kill; the second test publishes
//! across a kill of the stream's leader: while a stream has no leader JetStream answers a
//! publish at once with "no responders", and `publish` sends what is in flight again until
//! `PUBLISH_RETRY_SECS` has passed (the same message ids: nothing is stored twice).

mod jetstream;
mod leader_killed;
mod progress;
mod publish_across;

use std::time::Duration;

use vehicle_state_test_support::process::one_at_a_time;

const SEED: u64 = 23;
const STREAM: &str = "VEHICLE_EVENTS";
/// Ingest's default consumer.
const CONSUMER: &str = "vehicle-state-ingest";
/// The whole scenario; past it the test fails and every process it started is stopped.
const DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_loses_and_doubles_nothing_when_its_leader_is_killed_and_another_node_restarts()
 {
    let _turn = one_at_a_time().await;
    if tokio::time::timeout(DEADLINE, leader_killed::scenario())
        .await
        .is_err()
    {
        panic!("the scenario did not finish within {DEADLINE:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_outlasts_an_election_when_the_stream_leader_is_killed_and_stores_each_event_once()
{
    let _turn = one_at_a_time().await;
    if tokio::time::timeout(DEADLINE, publish_across::publish_across_a_kill())
        .await
        .is_err()
    {
        panic!("the scenario did not finish within {DEADLINE:?}");
    }
}
