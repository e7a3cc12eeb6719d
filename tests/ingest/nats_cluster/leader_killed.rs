//! The leader of an R3 stream and of ingest's consumer killed mid-ingest, back, then another
//! node restarted: what ingest stored, how long it stood still, and the consumer's lag.

use std::time::{Duration, Instant};

use async_nats::jetstream;

use vehicle_state_test_support::process::nats::{self, NatsCluster};
use vehicle_state_test_support::process::{Replica, TempDir, metric};

use super::jetstream::{
    jetstream_of, lead_stream_and_consumer, stream_state, wait_for_leaders,
    wait_until_replicas_current,
};
use super::progress::Progress;
use super::{CONSUMER, SEED, STREAM};
use crate::{
    assert_tables_are_the_reference, log_rows, migrated_database, publish, reference, tables,
    vehicles_off_their_latest_change,
};

/// About 3.7 events a vehicle (37,000 or so): enough that ingest, in batches of `BATCH`, is a
/// quarter of the way through them when the leader is killed, and still busy when the second
/// node restarts (once the killed one is back and caught up, some seconds later).
const VEHICLES: u32 = 10_000;
const BATCH: &str = "10";
/// From the kill to a new leader of the stream: nats-server's Raft followers call an election
/// when they have not heard from the leader for 4 to 9 s (randomised); this allows one full
/// timeout, a second round, and the answer.
const NEW_LEADER_BOUND: Duration = Duration::from_secs(20);
/// The longest ingest may stand still after a fault. When the consumer's leader goes away
/// while ingest's connection stays up, the pull request ingest had open there goes with it;
/// ingest pulls again at once when the server answers "no responders" or a heartbeat is missed
/// (async-nats alone would wait for that request to expire, 30 s + 5 s), so the stall is the
/// election (4 to 9 s) and at most one heartbeat interval (5 s) more.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// From the second node's restart until every event is applied and the consumer's lag is zero:
/// a stall as above, the rest of the events, and redelivery of what was delivered and not acked
/// (after INGEST_ACK_WAIT_SECS, 5 s here).
const CATCH_UP_BOUND: Duration = Duration::from_secs(90);

pub async fn scenario() {
    // Arrange: three nodes, every event on an R3 stream, ingest started on all three URLs.
    let expected = reference(VEHICLES, SEED).await;
    let events = expected.vehicles.len() + expected.logs.len();
    let mut cluster = NatsCluster::start(3);
    cluster.wait_for_meta_leader(Duration::from_secs(30)).await;
    let urls = cluster.urls();
    let js = jetstream_of(&cluster).await;
    let dir = TempDir::new("ingest-r3");
    let db = migrated_database();
    publish(
        &urls,
        STREAM,
        VEHICLES,
        SEED,
        &["--shuffle", "--ingest-stream-replicas", "3"],
    );
    let (replicas, published) = stream_state(&js).await;
    let mut ingest = Replica::ingest(&dir.0, &db.database_url, &urls, STREAM);
    ingest.set("INGEST_BATCH_MAX", BATCH);
    ingest.set("INGEST_STREAM_REPLICAS", "3");
    ingest.start().await;
    let progress = Progress::watch(db.database_url.clone());
    let quarter = expected.logs.len() as i64 / 4;
    let midway = progress.wait_above(quarter, Instant::now() + Duration::from_secs(60));
    assert!(
        midway.await,
        "ingest never got a quarter of the way\n{}",
        ingest.log_tail()
    );
    let leader = lead_stream_and_consumer(&js).await;
    let meta_leader = cluster.wait_for_meta_leader(Duration::from_secs(5)).await;

    // Act: the leader crashes; once new ones lead, it comes back and catches up; once ingest
    // applies events again, another node, the one leading the consumer now, is restarted as an
    // operator would.
    cluster.node(&leader).kill9();
    let killed = Instant::now();
    let at_kill = log_rows(&db.database_url).await as usize;
    let (new_leader, new_consumer_leader) = wait_for_leaders(&js, Some(&leader)).await;
    let to_new_leader = killed.elapsed();
    let step = |what: String| println!("{:5.1} s  {what}", killed.elapsed().as_secs_f64());
    step(format!(
        "new stream leader {new_leader} (consumer leader {new_consumer_leader})"
    ));
    tokio::task::block_in_place(|| cluster.node(&leader).resume());
    cluster.wait_healthy(&leader, Duration::from_secs(30)).await;
    wait_until_replicas_current(&js).await;
    step(format!("{leader} back and caught up"));
    let resumed = progress
        .wait_above(progress.rows(), killed + RECOVERY_BOUND)
        .await;
    step(format!("ingest applying again: {resumed}"));
    let (stream_leader, consumer_leader) = wait_for_leaders(&js, None).await;
    let others = cluster.nodes.iter().map(|n| n.name().to_owned());
    let second = [consumer_leader, stream_leader]
        .into_iter()
        .chain(others)
        .find(|name| *name != leader)
        .expect("another node");
    let at_second = log_rows(&db.database_url).await as usize;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| {
        let node = cluster.node(&second);
        node.stop();
        node.resume();
    });
    cluster.wait_healthy(&second, Duration::from_secs(30)).await;
    wait_until_replicas_current(&js).await;
    let (last_leader, last_consumer_leader) = wait_for_leaders(&js, None).await;
    step(format!(
        "{second} restarted and caught up (stream leader {last_leader}, consumer leader \
         {last_consumer_leader})"
    ));
    let caught_up = wait_until_caught_up(&js, &ingest, &db.database_url, events, restarted).await;
    let (to_lag_zero, after_restart) = (killed.elapsed(), restarted.elapsed());
    step("every event applied, lag 0".to_owned());

    // Assert: what was measured first, then what must hold.
    let got = tables(&db.database_url).await;
    let (_, messages) = stream_state(&js).await;
    // The change feed (R3 too): each registration and each change announced once, however
    // often its event was delivered (announcements made again carry the change's own id).
    let announced = js
        .get_stream("VEHICLE_CHANGES")
        .await
        .expect("the change stream")
        .get_info()
        .await
        .expect("its state");
    let (pause_from, pause) = progress.longest_pause_after(killed);
    let counted = |kind: &str, result: &str| {
        format!(r#"vehicle_state_ingest_events_total{{type="{kind}",result="{result}"}}"#)
    };
    let mut again = 0.0;
    for kind in ["registered", "state_changed"] {
        again += metric(&ingest, &counted(kind, "duplicate"))
            .await
            .unwrap_or(0.0);
    }
    println!(
        "{}; 3 nodes, R3 stream and consumer; {events} events ({} changes), batches of {BATCH}\n\
         killed {leader}, the stream's and the consumer's leader (meta leader {meta_leader}), \
         with {at_kill} changes stored; JetStream named new leaders after {:.1} s (bound \
         {NEW_LEADER_BOUND:?})\n\
         ingest stood still at most {:.1} s, from {:.1} s after the kill (bound \
         {RECOVERY_BOUND:?}); it logged {} missed heartbeats\n\
         restarted {second} with {at_second} changes stored; every event applied and lag 0 \
         {:.1} s after the kill, {:.1} s after the restart (bound {CATCH_UP_BOUND:?})\n\
         {again} events delivered again and found duplicate; the stream holds {messages} \
         messages",
        nats::version(),
        expected.logs.len(),
        to_new_leader.as_secs_f64(),
        pause.as_secs_f64(),
        pause_from.as_secs_f64(),
        ingest.log_lines_with("missed idle heartbeat"),
        to_lag_zero.as_secs_f64(),
        after_restart.as_secs_f64(),
    );
    assert_tables_are_the_reference(&got, &expected, || ingest.log_tail());
    assert_eq!(
        vehicles_off_their_latest_change(&db.database_url).await,
        Vec::<i32>::new()
    );
    assert!(
        caught_up.is_some(),
        "lag not back to zero within {CATCH_UP_BOUND:?} of the second restart\n{}",
        ingest.log_tail()
    );
    assert!(
        at_kill < expected.logs.len() && at_second < expected.logs.len(),
        "ingest finished before a fault ({at_kill} and {at_second} of {} changes): make BATCH \
         smaller or VEHICLES larger",
        expected.logs.len()
    );
    // One process did all of it: what it counts as applied was stored once each.
    assert_eq!(
        metric(&ingest, &counted("state_changed", "applied")).await,
        Some(expected.logs.len() as f64)
    );
    assert_eq!(
        metric(&ingest, &counted("registered", "applied")).await,
        Some(expected.vehicles.len() as f64)
    );
    // Nor did the stream lose or double any, through two changes of leader.
    assert_eq!(
        (replicas, published, messages),
        (3, events as u64, events as u64),
        "the stream's replicas, and its messages after publish and at the end, for {events} \
         events"
    );
    assert_eq!(
        (announced.config.num_replicas, announced.state.messages),
        (3, events as u64),
        "the change stream's replicas and announcements, for {events} events"
    );
    assert_ne!(new_leader, leader);
    assert!(
        to_new_leader <= NEW_LEADER_BOUND,
        "new leaders after {to_new_leader:?}, more than {NEW_LEADER_BOUND:?}"
    );
    assert!(
        resumed && pause <= RECOVERY_BOUND,
        "ingest stood still {pause:?} from {pause_from:?} after the kill, more than \
         {RECOVERY_BOUND:?}\n{}",
        ingest.log_tail()
    );
}

/// Waits until the database holds `events`' rows and nothing is left for the consumer, as
/// JetStream says (`num_pending` + `num_ack_pending`) and as ingest's own gauges say; None if
/// not within [`CATCH_UP_BOUND`] of `since`.
async fn wait_until_caught_up(
    js: &jetstream::Context,
    ingest: &Replica,
    database_url: &str,
    events: usize,
    since: Instant,
) -> Option<()> {
    let deadline = since + CATCH_UP_BOUND;
    while Instant::now() < deadline {
        let t = tables(database_url).await;
        let stored = t.vehicles.len() + t.logs.len();
        let consumer = match js.get_stream(STREAM).await {
            Ok(stream) => stream.consumer_info(CONSUMER).await.ok(),
            Err(_) => None,
        };
        let lag = consumer.map(|c| c.num_pending + c.num_ack_pending as u64);
        let pending = metric(ingest, "vehicle_state_ingest_pending").await;
        let ack_pending = metric(ingest, "vehicle_state_ingest_ack_pending").await;
        if stored == events && lag == Some(0) && pending == Some(0.0) && ack_pending == Some(0.0) {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
