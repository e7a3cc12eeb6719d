//! The ingest series: what became of each event, and each transaction's size and time.

use std::time::Duration;

use crate::domain::event::EventKind;

/// Events taken from the broker, by type (`registered`, `state_changed`, `unknown` for a subject
/// that is neither) and result.
pub const INGEST_EVENTS: &str = "vehicle_state_ingest_events_total";
/// Events per ingest transaction.
pub const INGEST_BATCH_SIZE: &str = "vehicle_state_ingest_batch_size";
/// Time to apply and commit one ingest batch.
pub const INGEST_COMMIT: &str = "vehicle_state_ingest_commit_seconds";
pub(super) const INGEST_BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

/// What became of an event: the `result` label of [`INGEST_EVENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestResult {
    /// Stored now.
    Applied,
    /// Already stored (delivered or published again): nothing changed.
    Duplicate,
    /// Can never be applied: sent to the dead-letter subject with the reason, and acked.
    DeadLettered,
    /// PostgreSQL could not take its batch: NAKed, delivered again later.
    Retried,
}

impl IngestResult {
    pub const ALL: [IngestResult; 4] = [
        IngestResult::Applied,
        IngestResult::Duplicate,
        IngestResult::DeadLettered,
        IngestResult::Retried,
    ];

    pub fn label(self) -> &'static str {
        match self {
            IngestResult::Applied => "applied",
            IngestResult::Duplicate => "duplicate",
            IngestResult::DeadLettered => "dead_lettered",
            IngestResult::Retried => "retried",
        }
    }

    pub fn count(self, kind: EventKind) {
        self.count_of(Some(kind));
    }

    /// Counts one event of `kind` (`None`: a subject that names no kind).
    pub fn count_of(self, kind: Option<EventKind>) {
        let kind = kind.map_or("unknown", EventKind::token);
        metrics::counter!(INGEST_EVENTS, "type" => kind, "result" => self.label()).increment(1);
    }

    /// Every type and result at zero, so each series is there from the first scrape.
    pub fn register_at_zero() {
        for result in Self::ALL {
            for kind in EventKind::ALL.map(Some).into_iter().chain([None]) {
                let kind = kind.map_or("unknown", EventKind::token);
                metrics::counter!(INGEST_EVENTS, "type" => kind, "result" => result.label())
                    .increment(0);
            }
        }
    }
}

/// One ingest transaction: its size and how long applying and committing it took.
pub fn record_ingest_batch(events: usize, took: Duration) {
    metrics::histogram!(INGEST_BATCH_SIZE).record(events as f64);
    metrics::histogram!(INGEST_COMMIT).record(took);
}

/// The consumer as scraped: messages not yet delivered, and delivered but not yet acked.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerGauge {
    pub pending: u64,
    pub ack_pending: usize,
}
