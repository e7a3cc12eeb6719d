//! Ingest: `publish` puts each event's trace context in its NATS headers; the ingest batch that
//! applies them links every one, with the apply statement and the commit under it; a dead letter
//! has a span of its own and carries the batch's context on to whoever reads it.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use vehicle_state_test_support::process::nats::NatsServer;
use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, nats, one_at_a_time, run_binary,
};
use vehicle_state_test_support::scratch::Scratch;

use crate::collector::{Collector, Exported, Mode};
use crate::{descends, new_ids, traceparent};

/// `SPAN_KIND_PRODUCER` and `SPAN_KIND_CONSUMER` in OTLP.
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_batch_links_the_published_events_and_a_dead_letter_carries_the_trace_on() {
    let _turn = one_at_a_time().await;
    bounded(async {
        let collector = Collector::start(Mode::Accept);
        println!("nats-server: {}", nats::version());
        let nats = NatsServer::start();
        let dir = TempDir::new("traces-ingest");
        let db = Scratch::new();
        run_binary(&["migrate"], &[("DATABASE_URL", &db.database_url)]);
        let tracing = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ];
        let mut ingest = Replica::ingest(&dir.0, &db.database_url, &nats.url(), "VEHICLE_EVENTS");
        for (name, value) in &tracing {
            ingest.set(name, value);
        }
        ingest.start().await;
        ingest.wait_ready(Duration::from_secs(10)).await;

        // `publish` exits once every event is stored; its spans are flushed as it stops.
        let nats_url = nats.url();
        let mut env = vec![
            ("NATS_URL", nats_url.as_str()),
            ("INGEST_STREAM", "VEHICLE_EVENTS"),
        ];
        env.extend(tracing.iter().map(|(k, v)| (*k, v.as_str())));
        run_binary(
            &[
                "publish",
                "synthetic",
                "--vehicles",
                "20",
                "--random-seed",
                "3",
            ],
            &env,
        );

        let published = |spans: &[Exported]| -> Vec<(String, String)> {
            spans
                .iter()
                .filter(|s| s.service == "vehicle-state-publish" && s.name() == "publish")
                .map(|s| (s.trace_id(), s.span_id()))
                .collect()
        };
        let linked = |spans: &[Exported]| -> Vec<(String, String)> {
            spans
                .iter()
                .filter(|s| s.name() == "ingest batch")
                .flat_map(|s| s.links())
                .collect()
        };
        let spans = collector
            .wait_for(
                Duration::from_secs(20),
                "ingest batches linking every published event",
                |spans| {
                    let published = published(spans);
                    let linked = linked(spans);
                    !published.is_empty() && published.iter().all(|p| linked.contains(p))
                },
            )
            .await;
        let publishes: Vec<&Exported> = spans
            .iter()
            .filter(|s| s.service == "vehicle-state-publish" && s.name() == "publish")
            .collect();
        assert!(
            publishes.len() >= 20,
            "one span per event: {}",
            publishes.len()
        );
        let run = spans
            .iter()
            .find(|s| s.name() == "publish synthetic")
            .expect("the run's span");
        for publish in &publishes {
            assert_eq!(publish.span.kind, PRODUCER);
            assert_eq!(
                publish.parent_id(),
                run.span_id(),
                "each event under the run"
            );
            assert_eq!(publish.attr("messaging.system").as_deref(), Some("nats"));
        }
        let batches: Vec<&Exported> = spans
            .iter()
            .filter(|s| s.name() == "ingest batch")
            .collect();
        for batch in &batches {
            assert_eq!(batch.service, "vehicle-state-ingest");
            assert_eq!(batch.span.kind, CONSUMER);
            assert!(batch.span.parent_span_id.is_empty(), "a trace of its own");
        }
        // Each batch that applied something has its statement and commit under it.
        let applied: Vec<&&Exported> = batches
            .iter()
            .filter(|b| {
                spans
                    .iter()
                    .any(|s| s.name() == "postgresql apply_events" && descends(&spans, s, b))
            })
            .collect();
        assert!(!applied.is_empty(), "no apply statement under a batch");
        for batch in applied {
            let commit = spans
                .iter()
                .find(|s| s.name() == "postgresql COMMIT" && descends(&spans, s, batch))
                .unwrap_or_else(|| panic!("no commit under {batch:?}"));
            assert_eq!(commit.attr("db.system").as_deref(), Some("postgresql"));
        }

        // A poison event, published with a trace context of its own.
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut dead = client
            .subscribe("vehicle-state.dead-letter")
            .await
            .expect("subscribe");
        let (trace, parent) = new_ids();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", traceparent(&trace, &parent).as_str());
        jetstream::new(client.clone())
            .publish_with_headers(
                "vehicles.state_changed",
                headers,
                r#"{"eventId":"p1","vehicleId":1,"state":"scrapped","timestamp":1663000000}"#
                    .into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        let letter = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("a dead letter")
            .expect("subscription open");
        let carried = letter
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.to_string())
            .expect("the dead letter carries a traceparent");

        let spans = collector
            .wait_for(
                Duration::from_secs(10),
                "the dead-letter publish",
                |spans| spans.iter().any(|s| s.name() == "dead-letter publish"),
            )
            .await;
        let letter_span = spans
            .iter()
            .find(|s| s.name() == "dead-letter publish")
            .expect("the dead-letter span");
        assert_eq!(letter_span.span.kind, PRODUCER);
        assert_eq!(
            letter_span.attr("messaging.destination.name").as_deref(),
            Some("vehicle-state.dead-letter")
        );
        assert_eq!(
            carried.split('-').nth(1),
            Some(letter_span.trace_id().as_str()),
            "the dead letter's traceparent is the dead-letter span's trace: {carried}"
        );
        let batch = spans
            .iter()
            .find(|s| s.name() == "ingest batch" && descends(&spans, letter_span, s))
            .expect("the dead letter is under its ingest batch");
        assert!(
            batch
                .links()
                .iter()
                .any(|(t, s)| *t == trace && *s == parent),
            "the batch links the poison event's context: {:?}",
            batch.links()
        );
    })
    .await;
}
