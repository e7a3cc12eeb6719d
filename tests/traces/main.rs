//! OpenTelemetry traces, as a collector sees them: the service's binary (`serve`, `ingest`,
//! `publish`) exporting over OTLP/HTTP to a receiver of the tests' own that decodes the official
//! protobuf messages (`collector.rs`). Tracing is set up once per process, so every test runs the
//! real binary with the `OTEL_*` variables a user would set.

// Test code: a failed assumption is a failed test (Cargo.toml denies these outside tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod collector;
mod failures;
mod ingest;
mod off;
mod requests;

use std::path::Path;

use vehicle_state_test_support::process::Replica;
use vehicle_state_test_support::scratch::Scratch;
use vehicle_state_test_support::servers::redis_url;

use collector::{Collector, Exported};

/// A replica of `db` that exports its spans to `collector` every 100 ms, logging at `info`.
pub fn traced_replica(dir: &Path, db: &Scratch, collector: &Collector) -> Replica {
    let mut replica = Replica::new(dir, &db.database_url, &redis_url(), &db.prefix);
    replica
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .set("OTEL_BSP_SCHEDULE_DELAY", "100")
        .set("RUST_LOG", "info");
    replica
}

/// A `traceparent` of a sampled trace: `00-TRACE-PARENT-01`.
pub fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// A random trace id and span id, as hex.
pub fn new_ids() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

/// Whether `span` is `ancestor` or below it, following parents among `spans` of its trace.
pub fn descends(spans: &[Exported], span: &Exported, ancestor: &Exported) -> bool {
    let mut at = span.clone();
    for _ in 0..32 {
        if at.trace_id() != ancestor.trace_id() {
            return false;
        }
        if at.span_id() == ancestor.span_id() {
            return true;
        }
        let parent = at.parent_id();
        match spans
            .iter()
            .find(|s| s.trace_id() == at.trace_id() && s.span_id() == parent)
        {
            Some(next) => at = next.clone(),
            None => return false,
        }
    }
    false
}

/// The JSON lines of a process's log (its standard output).
pub fn log_events(replica: &Replica) -> Vec<serde_json::Value> {
    replica
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
