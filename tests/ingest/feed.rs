//! The change feed with real processes: `ingest` announces what it commits, and two replicas
//! following the feed answer the new state long before their TTL (an hour here), while Redis
//! is cleaned of the vehicle once.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

use vehicle_state_test_support::process::{Replica, client, metric, one_at_a_time};
use vehicle_state_test_support::servers::redis_url;

use crate::fixture::Fixture;
use crate::publish_raw;

/// `n` replicas following the fixture's feed, on its database and the machine's Redis under
/// `prefix`, each with `settings` too, started.
async fn following(
    fixture: &Fixture,
    prefix: &str,
    n: usize,
    settings: &[(&str, &str)],
) -> Vec<Replica> {
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        let mut replica =
            Replica::new(&fixture.dir.0, fixture.database_url(), &redis_url(), prefix);
        replica.set("NATS_URL", &fixture.nats.url());
        for (name, value) in settings {
            replica.set(name, value);
        }
        replica.start().await;
        replicas.push(replica);
    }
    replicas
}

/// The response's `X-Cache` (empty without one).
fn x_cache(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The state (or the status, for no answer) and `X-Cache` of vehicle 7 at `at` on `replica`.
async fn state(replica: &Replica, at: &str) -> (String, String) {
    let response = client()
        .get(format!("{}/vehicles/7/timestamp/{at}", replica.url()))
        .send()
        .await
        .expect("the replica answers");
    let status = response.status().as_u16();
    let cache = x_cache(&response);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let state = match body["state"].as_str() {
        Some(state) if status == 200 => state.to_owned(),
        _ => status.to_string(),
    };
    (state, cache)
}

/// The fleet's counts at `at` on `replica` (`states`), and `X-Cache`.
async fn fleet(replica: &Replica, at: &str) -> (serde_json::Value, String) {
    let response = client()
        .get(format!("{}/fleet/states?at={at}", replica.url()))
        .send()
        .await
        .expect("the replica answers");
    let cache = x_cache(&response);
    let body: serde_json::Value = response.json().await.expect("JSON");
    (body["states"].clone(), cache)
}

/// The ids of the vehicles in `state` at `at` on `replica` (a first page), and `X-Cache`.
async fn listed(replica: &Replica, state: &str, at: &str) -> (Vec<i64>, String) {
    let response = client()
        .get(format!(
            "{}/fleet/vehicles?state={state}&at={at}",
            replica.url()
        ))
        .send()
        .await
        .expect("the replica answers");
    let cache = x_cache(&response);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let ids = body["vehicles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["id"].as_i64())
        .collect();
    (ids, cache)
}

/// The next announcement of vehicle 7 on `announced`: its version.
async fn announcement_version(announced: &mut async_nats::Subscriber) -> u64 {
    let message = tokio::time::timeout(Duration::from_secs(5), announced.next())
        .await
        .expect("three announcements")
        .expect("a message");
    let announcement: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON");
    assert_eq!(announcement["vehicleId"], 7, "{announcement}");
    announcement["version"].as_u64().expect("a version")
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
    let replicas = following(&fixture, &prefix, 2, &[("CACHE_TTL_SECS", "3600")]).await;
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

    // The first two announcements (the registration, the change) reach the replicas a moment
    // after ingest commits, maybe after they answered from PostgreSQL: counts read in the second
    // one arrives are dropped by design (it may have come after them). Read past that second.
    let mut versions = Vec::new();
    while versions.len() < 2 {
        versions.push(announcement_version(&mut announced).await);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The fleet's counts, held for an hour too: at an instant after the late change below, and
    // at one before it.
    for replica in both {
        for at in ["2022-06-01T00:00:00Z", "2022-02-01T00:00:00Z"] {
            let (states, _) = fleet(replica, at).await;
            assert_eq!(states["selling"], 1, "{states}");
            assert_eq!(fleet(replica, at).await.1, "HIT");
        }
        // And the list of those sold after it: without 7, held.
        assert!(
            !listed(replica, "sold", "2022-06-01T00:00:00Z")
                .await
                .0
                .contains(&7)
        );
        assert_eq!(
            listed(replica, "sold", "2022-06-01T00:00:00Z").await.1,
            "HIT"
        );
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
    // The counts the late change moved are read again; those before it are still held.
    for replica in both {
        let started = Instant::now();
        while fleet(replica, "2022-06-01T00:00:00Z").await.0["sold"] != 1 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the counts after the late change are not read again"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // So is the list it moved 7 into.
        while !listed(replica, "sold", "2022-06-01T00:00:00Z")
            .await
            .0
            .contains(&7)
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the list after the late change is not read again"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (before, cache) = fleet(replica, "2022-02-01T00:00:00Z").await;
        assert_eq!(
            (before["selling"].clone(), cache.as_str()),
            (serde_json::json!(1), "HIT"),
            "before the late change: held"
        );
    }
    assert_eq!(
        state(&replicas[0], "2022-02-01T00:00:00Z").await.0,
        "selling",
        "before the late change, as it was"
    );
    // Every event was announced, each as the vehicle stood after it.
    while versions.len() < 3 {
        versions.push(announcement_version(&mut announced).await);
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

/// One Server-Sent Event: its `id`, `event` and `data` (empty when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    id: String,
    event: String,
    data: String,
}

/// A stream of changes being read, event by event.
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Events {
    async fn open(url: &str, last_event_id: Option<&str>) -> (u16, String, Self) {
        // No overall timeout, as the support client has: a stream lasts as long as the test.
        let streaming = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        let mut request = streaming.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("the replica answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let events = Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        };
        (status, content_type, events)
    }

    /// The next event (comments and `retry:`-only blocks passed over); `None` when the stream
    /// ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    id: String::new(),
                    event: String::new(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = v.to_owned();
                    }
                }
                if !event.event.is_empty() {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")?
                .ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn json(event: &Event) -> serde_json::Value {
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{event:?}: {e}"))
}

async fn change(js: &jetstream::Context, event_id: &str, vehicle: i32, state: &str, at: &str) {
    publish_raw(
        js,
        "vehicles.state_changed",
        &format!(
            r#"{{"eventId":"{event_id}","vehicleId":{vehicle},"state":"{state}","timestamp":"{at}"}}"#
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_changes_resumes_on_another_replica_without_losing_or_repeating_one() {
    let _turn = one_at_a_time().await;
    let fixture = Fixture::start("feed-streams");
    let ingest = fixture.start_ingest().await;
    ingest.wait_ready(Duration::from_secs(10)).await;
    let js = jetstream::new(fixture.client().await);
    publish_raw(
        &js,
        "vehicles.registered",
        r#"{"eventId":"r7","vehicleId":7,"make":"VW","model":"UP"}"#,
    )
    .await;
    change(&js, "a", 7, "quoted", "2022-01-01T00:00:00Z").await;
    let prefix = format!("streams-{}", std::process::id());
    let replicas = following(&fixture, &prefix, 2, &[("CHANGES_KEEPALIVE_SECS", "1")]).await;
    until_all_say(&[&replicas[0], &replicas[1]], "now", "quoted").await;

    // On the first replica: a snapshot, then each change as it comes.
    let url = |replica: &Replica| format!("{}/vehicles/7/changes", replica.url());
    let (status, content_type, mut first) = Events::open(&url(&replicas[0]), None).await;
    assert_eq!((status, content_type.as_str()), (200, "text/event-stream"));
    let snapshot = first.next().await.expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    let data = json(&snapshot);
    assert_eq!(
        (data["state"].as_str(), data["reason"].as_str()),
        (Some("quoted"), Some("start")),
        "{data}"
    );
    change(&js, "b", 7, "selling", "2022-02-01T00:00:00Z").await;
    let b = first.next().await.expect("a change");
    assert_eq!(
        (b.event.as_str(), json(&b)["state"].as_str()),
        ("change", Some("selling"))
    );
    drop(first);

    // Missed while away: two changes, and one of another vehicle.
    change(&js, "c", 7, "sold", "2022-03-01T00:00:00Z").await;
    change(&js, "x", 8, "quoted", "2022-03-01T00:00:00Z").await;
    change(&js, "d", 7, "sold", "2021-12-01T00:00:00Z").await;

    // Back, on the other replica, with the last id received.
    let (status, _, mut second) = Events::open(&url(&replicas[1]), Some(&b.id)).await;
    assert_eq!(status, 200);
    let c = second.next().await.expect("c, replayed");
    let d = second.next().await.expect("d, replayed");
    change(&js, "e", 7, "selling", "2022-04-01T00:00:00Z").await;
    let e = second.next().await.expect("e, live");
    let got: Vec<_> = [&c, &d, &e]
        .iter()
        .map(|event| {
            let data = json(event);
            (
                event.event.clone(),
                data["change"]["timestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("change".to_owned(), "2022-03-01T00:00:00Z".to_owned()),
            ("change".to_owned(), "2021-12-01T00:00:00Z".to_owned()),
            ("change".to_owned(), "2022-04-01T00:00:00Z".to_owned()),
        ],
        "every change missed, in order, then the live one, none twice"
    );
    let ids: Vec<u64> = [&b, &c, &d, &e]
        .iter()
        .map(|event| event.id.parse().expect("a number"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        json(&e)["state"],
        "selling",
        "the state after e: the latest change"
    );

    // Two vehicles on one stream; then the replica stops, and says so.
    let (status, _, mut both) =
        Events::open(&format!("{}/changes?ids=7,8", replicas[1].url()), None).await;
    assert_eq!(status, 200);
    let snapshots = [both.next().await.expect("7"), both.next().await.expect("8")];
    assert_eq!(
        snapshots
            .iter()
            .map(|s| (s.event.clone(), json(s)["vehicleId"].as_i64()))
            .collect::<Vec<_>>(),
        [
            ("snapshot".to_owned(), Some(7)),
            ("snapshot".to_owned(), Some(8))
        ]
    );
    assert_eq!(
        json(&snapshots[1])["vehicle"],
        serde_json::Value::Null,
        "8 is not registered"
    );
    replicas[1].send_sigterm();
    let end = both.next().await.expect("an end event");
    assert_eq!(end.event, "end");
    assert!(
        json(&end)["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("stopping")
    );

    // Bad requests are problems, and a replica without the feed says it has none.
    let bad = client()
        .get(format!("{}/changes?ids=7,x", replicas[0].url()))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status().as_u16(), 400);
    let bad = client()
        .get(url(&replicas[0]))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(
        metric(
            &replicas[0],
            r#"vehicle_state_change_stream_events_total{event="change"}"#
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_a_replica_stays_ready_and_correct_and_follows_again_when_it_is_back() {
    let _turn = one_at_a_time().await;
    let mut fixture = Fixture::start("feed-outage");
    let ingest = fixture.start_ingest().await;
    ingest.wait_ready(Duration::from_secs(10)).await;
    let js = jetstream::new(fixture.client().await);
    publish_raw(
        &js,
        "vehicles.registered",
        r#"{"eventId":"r7","vehicleId":7,"make":"VW","model":"UP"}"#,
    )
    .await;
    change(&js, "a", 7, "quoted", "2022-01-01T00:00:00Z").await;
    drop(js);
    // A short TTL: without the feed, a change is answered once it has passed.
    let prefix = format!("outage-{}", std::process::id());
    let replica = following(&fixture, &prefix, 1, &[("CACHE_TTL_SECS", "2")])
        .await
        .remove(0);
    until_all_say(&[&replica, &replica], "now", "quoted").await;
    assert_eq!(
        metric(&replica, "vehicle_state_feed_following").await,
        Some(1.0)
    );

    tokio::task::block_in_place(|| fixture.nats.stop());
    let down = Instant::now();
    let mut following = None;
    while down.elapsed() < Duration::from_secs(5) {
        let ready = client()
            .get(format!("{}/readyz", replica.url()))
            .send()
            .await
            .expect("answers");
        assert_eq!(
            ready.status().as_u16(),
            200,
            "readiness does not depend on NATS"
        );
        assert_eq!(state(&replica, "now").await.0, "quoted");
        following = metric(&replica, "vehicle_state_feed_following").await;
        if following == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        following,
        Some(0.0),
        "the gauge says the feed is not followed"
    );
    // A stream opened meanwhile starts from PostgreSQL, and catches up once NATS is back.
    let (status, _, mut events) =
        Events::open(&format!("{}/vehicles/7/changes", replica.url()), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&events.next().await.expect("a snapshot"))["state"],
        "quoted"
    );

    // A change committed while the replica cannot hear of it (straight into PostgreSQL, as
    // ingest cannot announce it either): answered once the TTL has passed, as without a feed.
    let pool = sqlx::PgPool::connect(fixture.database_url())
        .await
        .expect("connect");
    sqlx::query(
        r#"INSERT INTO "stateLogs" ("vehicleId", state, "timestamp") VALUES (7, 'selling', '2022-02-01T00:00:00Z')"#,
    )
    .execute(&pool)
    .await
    .expect("insert");
    let took = until_all_say(&[&replica, &replica], "now", "selling").await;
    assert!(took <= Duration::from_secs(4), "within the TTL: {took:?}");

    // Back: the replica follows again, and the stream opened during the outage gets the next
    // change.
    tokio::task::block_in_place(|| fixture.nats.resume());
    let back = Instant::now();
    while metric(&replica, "vehicle_state_feed_following").await != Some(1.0) {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "{}",
            replica.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let js = jetstream::new(fixture.client().await);
    change(&js, "b", 7, "sold", "2022-03-01T00:00:00Z").await;
    // Ingest's own pull resumes within a heartbeat or two of NATS's return.
    let committed = Instant::now();
    while state(&replica, "now").await.0 != "sold" {
        assert!(
            committed.elapsed() < Duration::from_secs(30),
            "{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sold = events.next().await.expect("the change");
    assert_eq!(json(&sold)["change"]["state"], "sold");
}
