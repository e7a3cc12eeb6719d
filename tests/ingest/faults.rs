//! Ingest through failures: killed mid-batch, PostgreSQL stopped, NATS restarted, SIGTERM. Each
//! ends with exactly the tables `seed synthetic` loads: nothing lost, nothing doubled.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::Connection;

use vehicle_state_test_support::process;
use vehicle_state_test_support::process::nats::NatsServer;
use vehicle_state_test_support::process::{
    PgServer, Replica, TempDir, metric, one_at_a_time, run_binary, wait_until_ok,
};

use crate::fixture::{Fixture, STREAM};
use crate::{
    assert_tables_are_the_reference, log_rows, publish, reference, tables, wait_for_tables,
};

const SEED: u64 = 5;
/// Enough events (about 3.7 per vehicle) that ingest, in batches of 25, is still busy when the
/// fault strikes.
const VEHICLES: u32 = 6000;

/// Waits until ingest has stored some changes but not all of them.
async fn wait_until_midway(database_url: &str, total: usize) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = log_rows(database_url).await;
        if rows > 0 {
            assert!(
                (rows as usize) < total,
                "ingest finished before the fault; make the test's batches smaller"
            );
            return rows;
        }
        assert!(Instant::now() < deadline, "ingest never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ingest` in batches of 25, so that it is still busy when the fault strikes.
fn slow(mut ingest: Replica) -> Replica {
    ingest.set("INGEST_BATCH_MAX", "25");
    ingest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_then_restarted_stores_every_change_exactly_once() {
    let _turn = one_at_a_time().await;
    let expected = reference(VEHICLES, SEED).await;
    let fixture = Fixture::start("ingest-kill");
    fixture.publish(VEHICLES, SEED, &["--shuffle"]);
    let mut ingest = slow(fixture.ingest());
    ingest.start().await;

    let rows = wait_until_midway(fixture.database_url(), expected.logs.len()).await;
    ingest.kill9();
    println!(
        "killed with {rows} of {} changes stored",
        expected.logs.len()
    );
    ingest.start().await;
    // What the killed process had applied but not acked comes back after INGEST_ACK_WAIT_SECS
    // (5 s here) and is found duplicate.
    let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(60)).await;

    assert_tables_are_the_reference(&got, &expected, || ingest.log_tail());
    // The change feed too: each registration and each change announced once, though what the
    // killed process had committed and not acked was delivered, and announced, again.
    let events = (expected.vehicles.len() + expected.logs.len()) as u64;
    let js = async_nats::jetstream::new(fixture.client().await);
    let mut announced = 0;
    for _ in 0..100 {
        announced = js
            .get_stream("VEHICLE_CHANGES")
            .await
            .expect("the change stream")
            .get_info()
            .await
            .expect("its state")
            .state
            .messages;
        if announced >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(announced, events, "announcements for {events} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_during_ingest_loses_and_doubles_nothing() {
    let _turn = one_at_a_time().await;
    let expected = reference(VEHICLES, SEED).await;
    let nats = NatsServer::start();
    let pg = PgServer::start();
    let database_url = pg.url("ingest");
    run_binary(&["migrate"], &[("DATABASE_URL", &database_url)]);
    let dir = TempDir::new("ingest-pg");
    publish(&nats.url(), STREAM, VEHICLES, SEED, &["--shuffle"]);
    let mut ingest = slow(Replica::ingest(&dir.0, &database_url, &nats.url(), STREAM));
    ingest.set("DB_ACQUIRE_TIMEOUT_MS", "500");
    ingest.start().await;
    wait_until_midway(&database_url, expected.logs.len()).await;

    tokio::task::block_in_place(|| pg.stop());
    let readyz = format!("{}/readyz", ingest.url());
    let mut saw_not_ready = false;
    for _ in 0..40 {
        let status = process::client().get(&readyz).send().await;
        if status.is_ok_and(|r| r.status() == 503) {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.resume());
    let ready_again = wait_until_ok(&readyz, Duration::from_secs(20)).await;
    let got = wait_for_tables(&database_url, &expected, Duration::from_secs(60)).await;

    assert!(
        saw_not_ready,
        "/readyz never said 503 while PostgreSQL was down"
    );
    assert!(ready_again, "/readyz not 200 after PostgreSQL came back");
    assert_tables_are_the_reference(&got, &expected, || ingest.log_tail());
    assert!(
        ingest.log_lines_with("PostgreSQL cannot take the batch") > 0,
        "no batch was retried: {}",
        ingest.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_during_ingest_and_ingest_resumes_by_itself() {
    let _turn = one_at_a_time().await;
    let expected = reference(VEHICLES, SEED).await;
    let mut fixture = Fixture::start("ingest-nats");
    fixture.publish(VEHICLES, SEED, &["--shuffle"]);
    let mut ingest = slow(fixture.ingest());
    ingest.start().await;
    wait_until_midway(fixture.database_url(), expected.logs.len()).await;

    tokio::task::block_in_place(|| fixture.nats.stop());
    let stopped_at = log_rows(fixture.database_url()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| fixture.nats.resume());
    let restarted = Instant::now();
    let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(60)).await;

    assert_tables_are_the_reference(&got, &expected, || {
        format!(
            "{stopped_at} changes when NATS stopped\n{}",
            ingest.log_tail()
        )
    });
    println!(
        "NATS down 1 s with {stopped_at} of {} changes stored; all stored {:.1} s after the restart",
        expected.logs.len(),
        restarted.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_exits_zero_and_a_restart_completes() {
    let _turn = one_at_a_time().await;
    let expected = reference(VEHICLES, SEED).await;
    let fixture = Fixture::start("ingest-term");
    fixture.publish(VEHICLES, SEED, &["--shuffle"]);
    let mut ingest = slow(fixture.ingest());
    ingest.start().await;
    wait_until_midway(fixture.database_url(), expected.logs.len()).await;

    ingest.send_sigterm();
    let status = ingest.wait_exit(Duration::from_secs(10)).await;
    let at_stop = tables(fixture.database_url()).await;
    ingest.start().await;
    let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(60)).await;

    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(at_stop.logs.len() < expected.logs.len());
    assert_tables_are_the_reference(&got, &expected, || ingest.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_write_dead_letters_nothing_and_is_caught_up_once_it_can() {
    // As after a failover that left DATABASE_URL on a standby: every write fails (SQLSTATE
    // 25006), for a reason that is the database's, not the events'.
    let _turn = one_at_a_time().await;
    const FEW: u32 = 50;
    let expected = reference(FEW, SEED).await;
    let fixture = Fixture::start("ingest-read-only");
    let mut admin = sqlx::PgConnection::connect(fixture.database_url())
        .await
        .expect("connect");
    // The name is the test's own scratch database's.
    let read_only = |on: &str| {
        sqlx::AssertSqlSafe(format!(
            r#"ALTER DATABASE "{}" SET default_transaction_read_only = {on}"#,
            fixture.db.database
        ))
    };
    sqlx::query(read_only("on"))
        .execute(&mut admin)
        .await
        .expect("read-only");
    let client = fixture.client().await;
    let mut dead = client
        .subscribe("vehicle-state.dead-letter")
        .await
        .expect("subscribe");
    fixture.publish(FEW, SEED, &[]);
    let ingest = fixture.start_ingest().await;

    let retried = r#"vehicle_state_ingest_events_total{type="state_changed",result="retried"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&ingest, retried).await.unwrap_or(0.0) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "never retried\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let while_read_only = log_rows(fixture.database_url()).await;
    sqlx::query(read_only("DEFAULT"))
        .execute(&mut admin)
        .await
        .expect("writable");
    // Its connections keep the setting they started with: end them, as a failover would.
    sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&fixture.db.database)
    .execute(&mut admin)
    .await
    .expect("terminate");
    let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(30)).await;
    let letter = tokio::time::timeout(Duration::from_millis(500), dead.next()).await;

    assert_eq!(while_read_only, 0);
    assert_tables_are_the_reference(&got, &expected, || ingest.log_tail());
    assert!(
        letter.is_err(),
        "a valid event was dead-lettered: {:?}",
        letter.ok().flatten().map(|m| m.headers)
    );
    for kind in ["registered", "state_changed"] {
        let series =
            format!(r#"vehicle_state_ingest_events_total{{type="{kind}",result="dead_lettered"}}"#);
        let count = metric(&ingest, &series).await.unwrap_or(0.0);
        assert_eq!(count, 0.0, "{series}");
    }
}
