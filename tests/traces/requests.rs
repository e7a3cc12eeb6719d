//! The request's server span continues the caller's trace; the work a miss does (Redis,
//! PostgreSQL) is under it; a gathered batch is linked to every request it answered; the log
//! line of a request carries its trace and span ids.

use std::time::Duration;

use vehicle_state_test_support::process::{
    TempDir, bounded, client, one_at_a_time, sample_database,
};

use crate::collector::{Collector, Exported, Mode};
use crate::{descends, log_events, new_ids, traced_replica, traceparent};

const ROUTE: &str = "/vehicles/{id}/timestamp/{ts}";
const PATH: &str = "/vehicles/3/timestamp/2022-09-12T10:00:00Z";
/// `SPAN_KIND_SERVER` and `SPAN_KIND_CLIENT` in OTLP.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn server_span<'a>(spans: &'a [Exported], trace: &str) -> Option<&'a Exported> {
    spans
        .iter()
        .find(|s| s.trace_id() == trace && s.span.kind == SERVER)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_continues_the_callers_trace_with_its_redis_and_postgresql_spans_under_it() {
    let _turn = one_at_a_time().await;
    bounded(async {
        let collector = Collector::start(Mode::Accept);
        let dir = TempDir::new("traces-lookup");
        let db = sample_database();
        let mut replica = traced_replica(&dir.0, &db, &collector);
        replica.start().await;
        let (trace, parent) = new_ids();

        let reply = client()
            .get(format!("{}{PATH}", replica.url()))
            .header("traceparent", traceparent(&trace, &parent))
            .header("tracestate", "vendor=1")
            .send()
            .await
            .expect("a lookup");
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["x-cache"], "MISS");

        let spans = collector
            .wait_for(Duration::from_secs(10), "the miss's spans", |spans| {
                server_span(spans, &trace).is_some()
                    && spans.iter().any(|s| {
                        s.trace_id() == trace
                            && s.attr("db.operation.name").as_deref() == Some("ZADD")
                    })
            })
            .await;
        let server = server_span(&spans, &trace).expect("the server span");
        assert_eq!(server.service, "vehicle-state");
        assert_eq!(
            server.parent_id(),
            parent,
            "the caller's span is its parent"
        );
        assert_eq!(server.name(), format!("GET {ROUTE}"));
        assert_eq!(server.span.trace_state, "vendor=1");
        for (key, value) in [
            ("http.request.method", "GET"),
            ("http.route", ROUTE),
            ("url.path", PATH),
            ("http.response.status_code", "200"),
            ("vehicle_state.cache", "MISS"),
        ] {
            assert_eq!(server.attr(key).as_deref(), Some(value), "{key}");
        }

        let under: Vec<&Exported> = spans
            .iter()
            .filter(|s| s.span_id() != server.span_id() && descends(&spans, s, server))
            .collect();
        let find = |system: &str, check: &dyn Fn(&Exported) -> bool| {
            under
                .iter()
                .find(|s| s.attr("db.system").as_deref() == Some(system) && check(s))
                .copied()
                .unwrap_or_else(|| panic!("no {system} span under the request: {under:#?}"))
        };
        let read = find("redis", &|s| {
            s.attr("db.operation.name").as_deref() == Some("ZRANGE")
        });
        assert_eq!(read.name(), "redis read");
        assert_eq!(read.span.kind, CLIENT);
        assert_eq!(read.attr("db.operation.batch.size").as_deref(), Some("1"));
        let written = find("redis", &|s| {
            s.attr("db.operation.name").as_deref() == Some("ZADD")
        });
        assert_eq!(written.name(), "redis write-back");
        let statement = find("postgresql", &|_| true);
        assert_eq!(statement.name(), "postgresql lookup_many");
        assert_eq!(statement.span.kind, CLIENT);
        assert_eq!(
            statement.attr("db.query.summary").as_deref(),
            Some("lookup_many")
        );
        assert_eq!(statement.attr("vehicle_state.pairs").as_deref(), Some("1"));
        assert!(
            read.span.end_time_unix_nano <= statement.span.start_time_unix_nano
                && statement.span.end_time_unix_nano <= written.span.start_time_unix_nano,
            "Redis, then PostgreSQL, then the write-back"
        );

        // Asked again without a traceparent: a trace of its own, answered from a cache.
        let again = client()
            .get(format!("{}{PATH}", replica.url()))
            .send()
            .await
            .expect("a lookup");
        assert_eq!(again.headers()["x-cache"], "HIT");
        let spans = collector
            .wait_for(Duration::from_secs(10), "the hit's server span", |spans| {
                spans.iter().any(|s| {
                    s.span.kind == SERVER && s.attr("vehicle_state.cache").as_deref() == Some("HIT")
                })
            })
            .await;
        let hit = spans
            .iter()
            .find(|s| {
                s.span.kind == SERVER && s.attr("vehicle_state.cache").as_deref() == Some("HIT")
            })
            .expect("the hit");
        assert_ne!(hit.trace_id(), trace, "a new trace");
        assert_eq!(hit.trace_id().len(), 32);
        assert!(hit.span.parent_span_id.is_empty(), "a root span");

        // The log line of the traced request joins its trace.
        let events = log_events(&replica);
        let line = events
            .iter()
            .find(|e| e["message"] == "request completed" && e["trace_id"] == trace.as_str())
            .unwrap_or_else(|| panic!("no log line with trace_id {trace}: {events:#?}"));
        assert_eq!(line["span_id"], server.span_id().as_str());
        assert_eq!(line["status"], 200);
        let hit_line = events.iter().find(|e| {
            e["message"] == "request completed" && e["trace_id"] == hit.trace_id().as_str()
        });
        assert!(hit_line.is_some(), "the hit's log line has its trace id");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gathered_batch_is_under_the_request_that_started_it_and_linked_to_the_others() {
    let _turn = one_at_a_time().await;
    bounded(async {
        let collector = Collector::start(Mode::Accept);
        let dir = TempDir::new("traces-gathered");
        let db = sample_database();
        let mut replica = traced_replica(&dir.0, &db, &collector);
        // One batch at a time, so misses arriving together queue and are gathered.
        replica.set("LOOKUP_BATCHES_IN_FLIGHT", "1");
        replica.start().await;

        const REQUESTS: usize = 48;
        let ids: Vec<(String, String)> = (0..REQUESTS).map(|_| new_ids()).collect();
        let client = client();
        let lookups = ids.iter().enumerate().map(|(i, (trace, parent))| {
            // A vehicle each (none of which exists): every one is a miss.
            let url = format!(
                "{}/vehicles/{}/timestamp/1662976800",
                replica.url(),
                1_000 + i
            );
            let request = client
                .get(url)
                .header("traceparent", traceparent(trace, parent));
            async move { request.send().await.expect("a lookup").status() }
        });
        let statuses = futures_util::future::join_all(lookups).await;
        assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");

        let traces: Vec<&str> = ids.iter().map(|(t, _)| t.as_str()).collect();
        let gathered = |s: &Exported| {
            s.name() == "lookup batch"
                && s.attr("vehicle_state.pairs")
                    .and_then(|p| p.parse::<usize>().ok())
                    .is_some_and(|p| p >= 2)
        };
        let spans = collector
            .wait_for(Duration::from_secs(10), "a gathered batch", |spans| {
                spans.iter().filter(|s| s.span.kind == SERVER).count() >= REQUESTS
                    && spans.iter().any(gathered)
            })
            .await;
        let batches: Vec<&Exported> = spans.iter().filter(|s| gathered(s)).collect();
        for batch in batches {
            let pairs: usize = batch
                .attr("vehicle_state.pairs")
                .and_then(|p| p.parse().ok())
                .expect("pairs");
            // Under the request that started it.
            assert!(traces.contains(&batch.trace_id().as_str()));
            let starter = server_span(&spans, &batch.trace_id()).expect("its request");
            assert!(descends(&spans, batch, starter), "under its request");
            // Linked to each other request it answered, and each of those to it.
            let links = batch.links();
            assert_eq!(links.len(), pairs - 1, "{links:?}");
            for (trace, span) in &links {
                assert_ne!(trace, &batch.trace_id());
                let other = server_span(&spans, trace)
                    .unwrap_or_else(|| panic!("a link to a request of ours: {trace}"));
                assert!(
                    spans.iter().any(|s| s.trace_id() == *trace
                        && s.span_id() == *span
                        && descends(&spans, s, other)),
                    "the link points into that request's trace"
                );
                assert!(
                    spans.iter().any(|s| s.trace_id() == *trace
                        && s.links().contains(&(batch.trace_id(), batch.span_id()))),
                    "that request's trace links back to the batch"
                );
            }
            // Its statement is one, for all its pairs.
            let statements: Vec<&Exported> = spans
                .iter()
                .filter(|s| s.name() == "postgresql lookup_many" && descends(&spans, s, batch))
                .collect();
            assert_eq!(statements.len(), 1, "{statements:#?}");
            assert_eq!(
                statements[0].attr("vehicle_state.pairs"),
                Some(pairs.to_string())
            );
        }
    })
    .await;
}
