//! At least once, in any order: the same tables whatever order and however often events arrive,
//! with one ingest process or two.

use std::time::Duration;

use vehicle_state_test_support::process::nats;
use vehicle_state_test_support::process::{metric, one_at_a_time};

use crate::fixture::Fixture;
use crate::{
    assert_tables_are_the_reference, reference, vehicles_off_their_latest_change, wait_for_tables,
};

const SEED: u64 = 11;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_order_shuffled_and_duplicated_events_give_the_tables_of_seed_synthetic() {
    let _turn = one_at_a_time().await;
    const VEHICLES: u32 = 400;
    let expected = reference(VEHICLES, SEED).await;
    println!("nats-server: {}", nats::version());
    for (stream, flags) in [
        ("IN_ORDER", &[][..]),
        ("SHUFFLED", &["--shuffle"][..]),
        ("DUPLICATED", &["--shuffle", "--duplicates", "0.3"][..]),
    ] {
        // A server each: the streams would all take `vehicles.>`.
        let fixture = Fixture::with_stream("ingest-orders", stream);
        fixture.publish(VEHICLES, SEED, flags);
        let mut ingest = fixture.start_ingest().await;

        let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(30)).await;

        assert_tables_are_the_reference(&got, &expected, || {
            format!("stream {stream}\n{}", ingest.log_tail())
        });
        let applied = metric(
            &ingest,
            r#"vehicle_state_ingest_events_total{type="state_changed",result="applied"}"#,
        )
        .await;
        assert_eq!(applied, Some(expected.logs.len() as f64), "{stream}");
        let duplicates = metric(
            &ingest,
            r#"vehicle_state_ingest_events_total{type="state_changed",result="duplicate"}"#,
        )
        .await
        .unwrap_or(0.0);
        if stream == "DUPLICATED" {
            assert!(duplicates > 0.0, "{stream}: no duplicate counted");
        } else {
            assert_eq!(duplicates, 0.0, "{stream}");
        }
        // Everything acked: nothing left for the consumer.
        let mut drained = false;
        for _ in 0..50 {
            let pending = metric(&ingest, "vehicle_state_ingest_pending").await;
            let ack_pending = metric(&ingest, "vehicle_state_ingest_ack_pending").await;
            if pending == Some(0.0) && ack_pending == Some(0.0) {
                drained = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(drained, "{stream}: the consumer still has events pending");
        ingest.send_sigterm();
        let status = ingest.wait_exit(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "{stream}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_processes_share_the_consumer_and_keep_the_invariant() {
    let _turn = one_at_a_time().await;
    const VEHICLES: u32 = 3000;
    let expected = reference(VEHICLES, SEED).await;
    let fixture = Fixture::start("ingest-two");
    // Small batches: the two processes then apply changes of the same vehicles side by side.
    let (mut first, mut second) = (fixture.ingest(), fixture.ingest());
    for process in [&mut first, &mut second] {
        process.set("INGEST_BATCH_MAX", "20");
        process.start().await;
    }

    fixture.publish(VEHICLES, SEED, &["--shuffle", "--duplicates", "0.2"]);
    let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(60)).await;

    assert_tables_are_the_reference(&got, &expected, || {
        format!("{}\n{}", first.log_tail(), second.log_tail())
    });
    assert_eq!(
        vehicles_off_their_latest_change(fixture.database_url()).await,
        Vec::<i32>::new()
    );
    let label = r#"vehicle_state_ingest_events_total{type="state_changed",result="applied"}"#;
    let (a, b) = (
        metric(&first, label).await.unwrap_or(0.0),
        metric(&second, label).await.unwrap_or(0.0),
    );
    println!("changes applied: {a} by one process, {b} by the other");
    assert_eq!(a + b, expected.logs.len() as f64);
}
