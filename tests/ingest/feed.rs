//! The change feed with real processes: `ingest` announces what it commits, and two replicas
//! following the feed answer the new state long before their TTL (an hour here), while Redis
//! is cleaned of the vehicle once.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

use vehicle_state_test_support::process::{Replica, client, metric, one_at_a_time};
use vehicle_state_test_support::servers::redis_url;

use crate::fixture::Fixture;

async fn publish_raw(js: &jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_owned(), payload.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// The state (or the status, for no answer) and `X-Cache` of vehicle 7 at `at` on `replica`.
async fn state(replica: &Replica, at: &str) -> (String, String) {
    let response = client()
        .get(format!("{}/vehicles/7/timestamp/{at}", replica.url()))
        .send()
        .await
        .expect("the replica answers");
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let state = match body["state"].as_str() {
        Some(state) if status == 200 => state.to_owned(),
        _ => status.to_string(),
    };
    (state, cache)
}

/// Asks until every replica says `want` at `at`; how long that took.
async fn until_all_say(replicas: &[&Replica], at: &str, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for replica in replicas {
            all &= state(replica, at).await.0 == want;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not every replica says {want} at {at}: {:?}",
            [state(replicas[0], at).await, state(replicas[1], at).await]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_ingest_commits_is_answered_by_both_replicas_long_before_the_ttl() {
    let _turn = one_at_a_time().await;
    let fixture = Fixture::start("feed-replicas");
    let ingest = fixture.start_ingest().await;
    ingest.wait_ready(Duration::from_secs(10)).await;
    let nats = fixture.client().await;
    let js = jetstream::new(nats.clone());
    let mut announced = nats
        .subscribe("vehicle-state.changes.7")
        .await
        .expect("subscribe");
    publish_raw(
        &js,
        "vehicles.registered",
        r#"{"eventId":"r7","vehicleId":7,"make":"VW","model":"UP"}"#,
    )
    .await;
    publish_raw(
        &js,
        "vehicles.state_changed",
        r#"{"eventId":"c1","vehicleId":7,"state":"selling","timestamp":"2022-01-01T00:00:00Z"}"#,
    )
    .await;
    let prefix = format!("feed-{}", std::process::id());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut replica = Replica::new(
            &fixture.dir.0,
            fixture.database_url(),
            &redis_url(),
            &prefix,
        );
        replica
            .set("NATS_URL", &fixture.nats.url())
            .set("CACHE_TTL_SECS", "3600");
        replica.start().await;
        replicas.push(replica);
    }
    let both = [&replicas[0], &replicas[1]];
    until_all_say(&both, "now", "selling").await;
    // Both replicas hold the current segment, in memory or Redis: asked again, a hit.
    for replica in both {
        for at in ["now", "2022-06-01T00:00:00Z"] {
            state(replica, at).await;
            assert_eq!(
                state(replica, at).await,
                ("selling".to_owned(), "HIT".to_owned())
            );
        }
    }

    // Sold late: inside the segment both replicas hold, cached for an hour.
    publish_raw(
        &js,
        "vehicles.state_changed",
        r#"{"eventId":"c2","vehicleId":7,"state":"sold","timestamp":"2022-03-01T00:00:00Z"}"#,
    )
    .await;
    let took = until_all_say(&both, "2022-06-01T00:00:00Z", "sold").await;
    until_all_say(&both, "now", "sold").await;

    println!("from publish to both replicas answering: {took:?}");
    assert_eq!(
        state(&replicas[0], "2022-02-01T00:00:00Z").await.0,
        "selling",
        "before the late change, as it was"
    );
    // Every event was announced, each as the vehicle stood after it.
    let mut versions = Vec::new();
    while versions.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(5), announced.next())
            .await
            .expect("three announcements")
            .expect("a message");
        let announcement: serde_json::Value =
            serde_json::from_slice(&message.payload).expect("JSON");
        assert_eq!(announcement["vehicleId"], 7, "{announcement}");
        versions.push(announcement["version"].as_u64().expect("a version"));
    }
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let last: u64 = *versions.last().expect("three");
    let pool = sqlx::PgPool::connect(fixture.database_url())
        .await
        .expect("connect");
    let stored: i64 = sqlx::query_scalar("SELECT version FROM vehicles WHERE id = 7")
        .fetch_one(&pool)
        .await
        .expect("the vehicle");
    assert_eq!(last, u64::try_from(stored).expect("positive"));
    // Redis was cleaned once, by one of the two, and keeps the floor.
    let redis = redis::Client::open(redis_url()).expect("a URL");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let floor: Option<u64> = redis::cmd("GET")
        .arg(format!("{prefix}:v5:floor:{{7}}"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(floor, Some(last));
    let mut in_redis = 0.0;
    for replica in both {
        assert_eq!(
            metric(replica, "vehicle_state_feed_following").await,
            Some(1.0)
        );
        assert!(
            metric(
                replica,
                r#"vehicle_state_feed_invalidations_total{tier="memory"}"#
            )
            .await
            .unwrap_or(0.0)
                >= 1.0
        );
        in_redis += metric(
            replica,
            r#"vehicle_state_feed_invalidations_total{tier="redis"}"#,
        )
        .await
        .unwrap_or(0.0);
    }
    assert!(
        (1.0..=3.0).contains(&in_redis),
        "each announcement carried out in Redis by one replica: {in_redis}"
    );
    assert!(
        metric(
            &ingest,
            r#"vehicle_state_ingest_announcements_total{outcome="stored"}"#
        )
        .await
        .unwrap_or(0.0)
            >= 3.0
    );
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:v5:floor:{{7}}"))
        .arg(format!("{prefix}:v5:segments:{{7}}"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
}
