//! Events that can never be applied are dead-lettered with their reason and never block the
//! stream; a late change is answered once the cached answer's TTL is over.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use vehicle_state_test_support::process;
use vehicle_state_test_support::process::{Replica, metric, one_at_a_time};
use vehicle_state_test_support::scratch::Scratch;
use vehicle_state_test_support::servers::redis_url;

use crate::fixture::{Fixture, STREAM};
use crate::{publish_raw, tables, wait_for_tables};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_with_its_reason_and_the_good_events_are_applied() {
    let _turn = one_at_a_time().await;
    let fixture = Fixture::start("ingest-poison");
    let client = fixture.client().await;
    let mut dead = client
        .subscribe("vehicle-state.dead-letter")
        .await
        .expect("subscribe");
    let ingest = fixture.start_ingest().await;
    ingest.wait_ready(Duration::from_secs(10)).await;
    let js = jetstream::new(client.clone());

    let good = [
        (
            "vehicles.registered",
            r#"{"eventId":"r1","vehicleId":1,"make":"VW","model":"GOLF"}"#,
        ),
        (
            "vehicles.state_changed",
            r#"{"eventId":"c1","vehicleId":1,"state":"selling","timestamp":"2022-09-11T23:21:38Z"}"#,
        ),
        (
            "vehicles.state_changed",
            r#"{"eventId":"c2","vehicleId":1,"state":"sold","timestamp":1663000000}"#,
        ),
        // A change before its registration is kept, and counts once the vehicle is registered.
        (
            "vehicles.state_changed",
            r#"{"eventId":"c3","vehicleId":2,"state":"selling","timestamp":"2022-01-01 10:00:00+00"}"#,
        ),
        (
            "vehicles.registered",
            r#"{"eventId":"r2","vehicleId":2,"make":"BMW","model":"X1"}"#,
        ),
        // Registered, no change yet: quoted.
        (
            "vehicles.registered",
            r#"{"eventId":"r3","vehicleId":3,"make":"KIA","model":"RIO"}"#,
        ),
    ];
    let poison = [
        ("vehicles.state_changed", "not json", "not an event"),
        (
            "vehicles.state_changed",
            r#"{"eventId":"p1","vehicleId":1,"state":"scrapped","timestamp":"2022-09-11T23:21:38Z"}"#,
            "state: \"scrapped\" is not a state",
        ),
        (
            "vehicles.state_changed",
            r#"{"eventId":"p2","vehicleId":1,"state":"sold","timestamp":"yesterday"}"#,
            "timestamp: \"yesterday\"",
        ),
        (
            "vehicles.state_changed",
            r#"{"eventId":"p3","vehicleId":1,"state":"sold"}"#,
            "missing field `timestamp`",
        ),
        (
            "vehicles.registered",
            r#"{"eventId":"p4","vehicleId":2147483648,"make":"VW","model":"UP"}"#,
            "vehicleId: 2147483648 is not an integer",
        ),
        (
            "vehicles.scrapped",
            r#"{"eventId":"p5","vehicleId":1}"#,
            "subject vehicles.scrapped is neither",
        ),
    ];
    for (i, (subject, payload)) in good.iter().enumerate() {
        publish_raw(&js, subject, payload).await;
        if let Some((subject, payload, _)) = poison.get(i) {
            publish_raw(&js, subject, payload).await;
        }
    }
    // The same vehicle registered as something else: refused, dead-lettered, nothing changed.
    publish_raw(
        &js,
        "vehicles.registered",
        r#"{"eventId":"p6","vehicleId":1,"make":"AUDI","model":"A3"}"#,
    )
    .await;

    let mut letters = Vec::new();
    while letters.len() < poison.len() + 1 {
        let letter = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .unwrap_or_else(|_| panic!("only {} dead letters: {letters:?}", letters.len()))
            .expect("subscription open");
        let reason = letter
            .headers
            .as_ref()
            .and_then(|h| h.get("Vehicle-State-Reason"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        letters.push((
            reason,
            String::from_utf8_lossy(&letter.payload).into_owned(),
        ));
    }
    for (_, payload, reason) in poison {
        assert!(
            letters
                .iter()
                .any(|(r, p)| p == payload && r.starts_with(reason)),
            "no dead letter of {payload} with {reason:?}: {letters:?}"
        );
    }
    assert!(
        letters
            .iter()
            .any(|(r, _)| r == "vehicle 1 is already registered as VW GOLF"),
        "{letters:?}"
    );

    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("instant")
            .timestamp_micros()
    };
    let expected = crate::Tables {
        vehicles: vec![
            (1, "VW".into(), "GOLF".into(), "sold".into()),
            (2, "BMW".into(), "X1".into(), "selling".into()),
            (3, "KIA".into(), "RIO".into(), "quoted".into()),
        ],
        logs: vec![
            (1, "selling".into(), t("2022-09-11T23:21:38Z")),
            (1, "sold".into(), 1_663_000_000_000_000),
            (2, "selling".into(), t("2022-01-01T10:00:00Z")),
        ],
    };
    let got = wait_for_tables(fixture.database_url(), &expected, Duration::from_secs(10)).await;
    assert_eq!(got, expected);
    let dead_lettered = metric(
        &ingest,
        r#"vehicle_state_ingest_events_total{type="state_changed",result="dead_lettered"}"#,
    )
    .await;
    assert_eq!(dead_lettered, Some(4.0));
    let unknown = metric(
        &ingest,
        r#"vehicle_state_ingest_events_total{type="unknown",result="dead_lettered"}"#,
    )
    .await;
    assert_eq!(unknown, Some(1.0));
    assert_eq!(ingest.log_lines_with("event dead-lettered"), 7);
    let kept = js
        .get_stream("VEHICLE_EVENTS_DEAD_LETTERS")
        .await
        .expect("the dead-letter stream, created at start")
        .info()
        .await
        .expect("its info")
        .state
        .messages;
    assert_eq!(kept, 7, "every dead letter stored, not only sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_no_stream_stores_is_not_acked_until_one_does_and_none_is_too_large() {
    let _turn = one_at_a_time().await;
    let fixture = Fixture::start("ingest-dead-letters");
    let client = fixture.client().await;
    let js = jetstream::new(client.clone());
    // Streams managed elsewhere: the events' stream exists, nothing stores dead letters yet.
    js.create_stream(jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["vehicles.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("the events' stream");
    // The change feed's stream too: ingest acks nothing it has not announced.
    js.create_stream(jetstream::stream::Config {
        name: "VEHICLE_CHANGES".to_owned(),
        subjects: vec!["vehicle-state.changes.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("the change stream");
    let mut ingest = fixture.ingest();
    ingest.set("INGEST_CREATE_STREAM", "false");
    ingest.start().await;
    ingest.wait_ready(Duration::from_secs(10)).await;

    // A reason that would quote 2,000 bytes of the event; a payload as large as a message can
    // be, with no room left for a dead letter's headers.
    let long_state = "x".repeat(2_000);
    let quoting = format!(
        r#"{{"eventId":"q1","vehicleId":1,"state":"{long_state}","timestamp":"2022-09-11T23:21:38Z"}}"#
    );
    let max_payload = client.server_info().max_payload;
    let huge = "y".repeat(max_payload - 64);
    publish_raw(&js, "vehicles.state_changed", &quoting).await;
    publish_raw(&js, "vehicles.state_changed", &huge).await;
    publish_raw(
        &js,
        "vehicles.registered",
        r#"{"eventId":"r1","vehicleId":1,"make":"VW","model":"GOLF"}"#,
    )
    .await;

    let retried = r#"vehicle_state_ingest_events_total{type="state_changed",result="retried"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&ingest, retried).await.unwrap_or(0.0) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the poison was not held back\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead_lettered =
        r#"vehicle_state_ingest_events_total{type="state_changed",result="dead_lettered"}"#;
    let before_a_stream = metric(&ingest, dead_lettered).await;
    let registered = tables(fixture.database_url()).await.vehicles;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "POISON".to_owned(),
            subjects: vec!["vehicle-state.dead-letter".to_owned()],
            ..Default::default()
        })
        .await
        .expect("a dead-letter stream");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&ingest, dead_lettered).await.unwrap_or(0.0) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never dead-lettered\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut letters = Vec::new();
    for sequence in 1..=2 {
        letters.push(
            stream
                .get_raw_message(sequence)
                .await
                .expect("a dead letter"),
        );
    }

    assert_eq!(before_a_stream, Some(0.0), "acked only once stored");
    assert_eq!(
        registered,
        vec![(1, "VW".into(), "GOLF".into(), "quoted".into())],
        "the good event did not wait for the poison"
    );
    let header = |letter: &async_nats::jetstream::message::StreamMessage, name: &str| {
        letter
            .headers
            .get(name)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let quoted = letters
        .iter()
        .find(|l| l.payload.as_ref() == quoting.as_bytes())
        .expect("the quoting event, with its payload");
    let reason = header(quoted, "Vehicle-State-Reason");
    assert!(reason.len() <= 512, "{} bytes", reason.len());
    assert!(reason.starts_with("state: "), "{reason}");
    let too_large = letters
        .iter()
        .find(|l| l.payload.is_empty())
        .expect("the huge event, without its payload");
    assert_eq!(
        header(too_large, "Vehicle-State-Payload-Omitted"),
        huge.len().to_string()
    );
    assert_eq!(header(too_large, "Vehicle-State-Stream-Sequence"), "2");
    assert!(header(too_large, "Vehicle-State-Reason").starts_with("not an event"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_change_is_answered_once_the_cached_answer_expires() {
    let _turn = one_at_a_time().await;
    let fixture = Fixture::start("ingest-late");
    let client = fixture.client().await;
    let js = jetstream::new(client);
    let ingest = fixture.start_ingest().await;
    ingest.wait_ready(Duration::from_secs(10)).await;
    publish_raw(
        &js,
        "vehicles.registered",
        r#"{"eventId":"r","vehicleId":9,"make":"VW","model":"UP"}"#,
    )
    .await;
    publish_raw(
        &js,
        "vehicles.state_changed",
        r#"{"eventId":"a","vehicleId":9,"state":"quoted","timestamp":"2022-01-01T00:00:00Z"}"#,
    )
    .await;
    let settled = |n: usize| {
        let url = fixture.database_url().to_owned();
        async move {
            for _ in 0..100 {
                if tables(&url).await.logs.len() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("ingest did not store {n} changes");
        }
    };
    settled(1).await;
    let scratch = Scratch::new();
    let mut serve = Replica::new(
        &fixture.dir.0,
        fixture.database_url(),
        &redis_url(),
        &scratch.prefix,
    );
    serve.set("CACHE_TTL_SECS", "2");
    serve.start().await;
    let lookup = format!("{}/vehicles/9/timestamp/2022-06-01T00:00:00Z", serve.url());
    let state = |body: serde_json::Value| body["state"].as_str().unwrap_or_default().to_owned();
    let http = process::client();
    let first = http.get(&lookup).send().await.expect("GET");
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(state(first.json().await.expect("json")), "quoted");

    // A change from before the instant asked about arrives late.
    publish_raw(
        &js,
        "vehicles.state_changed",
        r#"{"eventId":"b","vehicleId":9,"state":"selling","timestamp":"2022-03-01T00:00:00Z"}"#,
    )
    .await;
    settled(2).await;
    let cached = http.get(&lookup).send().await.expect("GET");
    assert_eq!(cached.headers()["x-cache"], "HIT");
    assert_eq!(state(cached.json().await.expect("json")), "quoted");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = http.get(&lookup).send().await.expect("GET");
    assert_eq!(fresh.headers()["x-cache"], "MISS");
    assert_eq!(state(fresh.json().await.expect("json")), "selling");
}
