//! Prometheus metrics: the series, where they are counted, and `GET /metrics`.
//!
//! Counters and histograms go through the `metrics` facade into one process-wide Prometheus
//! recorder (metrics-exporter-prometheus, without its HTTP listener: the service's own server
//! answers `/metrics`). Gauges that describe one replica's pools are read from the pools when
//! scraped, never kept. The README's metrics reference says what each series is for.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::event::EventKind;

/// Requests by route template (never the raw path) and status.
pub const HTTP_REQUESTS: &str = "vehicle_state_http_requests_total";
/// Time from a request's head to its response, by route template.
pub const HTTP_DURATION: &str = "vehicle_state_http_request_duration_seconds";
/// Lookups by where the answer came from, each counted once: `memory_hit`, `redis_hit`, `miss`
/// (read from PostgreSQL), `redis_error` (read from PostgreSQL because Redis failed),
/// `coalesced` (waited for another request's fetch of the same answer), `stale`
/// (`STALE_IF_ERROR_SECS`), `shed` (`LOOKUP_CONCURRENCY_LIMIT`), `error`.
pub const LOOKUPS: &str = "vehicle_state_lookups_total";
/// Where a lookup's answer came from: the `result` label of [`LOOKUPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    MemoryHit,
    RedisHit,
    Miss,
    RedisError,
    Coalesced,
    Stale,
    Shed,
    Error,
}

impl LookupResult {
    pub const ALL: [LookupResult; 8] = [
        LookupResult::MemoryHit,
        LookupResult::RedisHit,
        LookupResult::Miss,
        LookupResult::RedisError,
        LookupResult::Coalesced,
        LookupResult::Stale,
        LookupResult::Shed,
        LookupResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LookupResult::MemoryHit => "memory_hit",
            LookupResult::RedisHit => "redis_hit",
            LookupResult::Miss => "miss",
            LookupResult::RedisError => "redis_error",
            LookupResult::Coalesced => "coalesced",
            LookupResult::Stale => "stale",
            LookupResult::Shed => "shed",
            LookupResult::Error => "error",
        }
    }

    /// Counts one lookup with this result, through a handle registered once (a lookup does not
    /// hash its labels into the registry each time).
    pub fn count(self) {
        static HANDLES: OnceLock<[metrics::Counter; 8]> = OnceLock::new();
        let handles = HANDLES.get_or_init(|| {
            Self::ALL.map(|result| metrics::counter!(LOOKUPS, "result" => result.label()))
        });
        handles[self as usize].increment(1);
    }
}

/// How many keys each Redis read of gathered misses (or of a batch request) asked for.
pub const REDIS_BATCH_SIZE: &str = "vehicle_state_redis_batch_size";
/// How many (vehicle, instant) pairs each lookup statement answered.
pub const DB_BATCH_SIZE: &str = "vehicle_state_db_batch_size";
/// Bucket bounds of the batch-size histograms.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Redis calls that failed, by operation and kind.
/// Spans that never reached the collector, by `reason`: `queue_full` (finished while
/// OTEL_BSP_MAX_QUEUE_SIZE spans were waiting) or `export_failed` (refused, unreachable, timed out).
pub const TRACE_SPANS_DROPPED: &str = "vehicle_state_trace_spans_dropped_total";
/// Spans the collector accepted.
pub const TRACE_SPANS_EXPORTED: &str = "vehicle_state_trace_spans_exported_total";
pub const REDIS_ERRORS: &str = "vehicle_state_redis_errors_total";
/// PostgreSQL lookups that failed, by kind: `acquire_timeout` (no connection in time: the pool is
/// busy or PostgreSQL unreachable), `statement_timeout`, `unavailable` (connection lost, server
/// shutting down), `query` (a defect).
pub const DB_ERRORS: &str = "vehicle_state_db_errors_total";

/// Bucket bounds of [`HTTP_DURATION`], in seconds: from a memory hit to the timeouts.
const DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often the recorder drains histogram samples that no scrape has read.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide recorder's handle, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        // Only fails for an empty list of buckets, which DURATION_BUCKETS is not.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(REDIS_BATCH_SIZE.to_owned()), BATCH_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(DB_BATCH_SIZE.to_owned()), BATCH_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(INGEST_BATCH_SIZE.to_owned()),
                    INGEST_BATCH_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(INGEST_COMMIT.to_owned()), DURATION_BUCKETS)
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "another metrics recorder is installed; /metrics shows only gauges");
        }
        describe();
        handle
    })
}

/// Registers every value of the labels a lookup, Redis or PostgreSQL series can take, at zero,
/// so each series is there from the first scrape (a rate over a series that appears late is
/// wrong). The Redis and PostgreSQL error kinds are the callers' (this module knows no layer
/// above it).
pub fn register_at_zero(redis_error_kinds: &[&'static str], db_error_kinds: &[&'static str]) {
    for result in LookupResult::ALL {
        metrics::counter!(LOOKUPS, "result" => result.label()).increment(0);
    }
    for operation in REDIS_OPERATIONS {
        for kind in redis_error_kinds {
            metrics::counter!(REDIS_ERRORS, "operation" => operation, "kind" => *kind).increment(0);
        }
    }
    for kind in db_error_kinds {
        metrics::counter!(DB_ERRORS, "kind" => *kind).increment(0);
    }
}

/// The `operation` label of [`REDIS_ERRORS`].
pub const REDIS_OPERATIONS: [&str; 4] = ["get", "set", "ping", "topology"];

fn describe() {
    metrics::describe_histogram!(
        REDIS_BATCH_SIZE,
        "Keys per Redis read of misses past memory: gathered single lookups or one batch request."
    );
    metrics::describe_histogram!(
        DB_BATCH_SIZE,
        "(vehicle, instant) pairs per PostgreSQL lookup statement."
    );
    metrics::describe_counter!(
        INGEST_EVENTS,
        "Events taken from the broker, by type (registered, state_changed, unknown) and result (applied, duplicate, dead_lettered, retried)."
    );
    metrics::describe_histogram!(INGEST_BATCH_SIZE, "Events per ingest transaction.");
    metrics::describe_histogram!(
        INGEST_COMMIT,
        metrics::Unit::Seconds,
        "Time to apply and commit one ingest batch."
    );
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status.");
    metrics::describe_counter!(
        TRACE_SPANS_DROPPED,
        "Spans never exported, by reason (queue_full, export_failed); only while tracing is on."
    );
    metrics::describe_counter!(
        TRACE_SPANS_EXPORTED,
        "Spans the OTLP collector accepted; only while tracing is on."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's head to its response, by route template."
    );
    metrics::describe_counter!(
        LOOKUPS,
        "Lookups by where the answer came from: memory_hit, redis_hit, miss, redis_error, coalesced, stale, shed, error."
    );
    metrics::describe_counter!(
        REDIS_ERRORS,
        "Redis calls that failed, by operation (get, set, ping, topology) and kind (timeout, unreachable, read_only, reply, corrupt, skipped)."
    );
    metrics::describe_counter!(
        DB_ERRORS,
        "PostgreSQL lookups that failed, by kind (acquire_timeout, statement_timeout, unavailable, query)."
    );
}

/// Counts every request and times it, labelled by the route template it matched.
pub async fn record_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let response = next.call(req).await?;
    let route = route_of(response.request());
    let status = response.status().as_u16();
    RequestSeries::with(route, status, |series| {
        series.duration.record(started.elapsed());
        series.requests.increment(1);
    });
    Ok(response)
}

/// The route template a request matched (`unmatched` when none), as a label. A named resource
/// (every route of ours: actix names each after its handler) is looked up once and then served
/// from a table, so a request neither walks the resource map nor allocates for its label.
pub fn route_of(req: &HttpRequest) -> &'static str {
    static TEMPLATES: LazyLock<RwLock<HashMap<String, &'static str>>> =
        LazyLock::new(Default::default);
    let Some(name) = req.match_name() else {
        return req.match_pattern().map_or("unmatched", intern);
    };
    if let Some(template) = read(&TEMPLATES).get(name) {
        return template;
    }
    let template = req.match_pattern().map_or("unmatched", intern);
    write(&TEMPLATES).insert(name.to_owned(), template);
    template
}

/// One `&'static str` per distinct route template. Templates come from the routes the app
/// registers, never from a request's path, so this holds a handful of strings for the life of
/// the process.
fn intern(template: String) -> &'static str {
    static INTERNED: LazyLock<RwLock<Vec<&'static str>>> = LazyLock::new(Default::default);
    if let Some(known) = read(&INTERNED).iter().find(|t| **t == template) {
        return known;
    }
    let mut interned = write(&INTERNED);
    if let Some(known) = interned.iter().find(|t| **t == template) {
        return known;
    }
    let leaked: &'static str = Box::leak(template.into_boxed_str());
    interned.push(leaked);
    leaked
}

/// The HTTP series of one route and status, registered on first use and kept.
struct RequestSeries {
    duration: metrics::Histogram,
    requests: metrics::Counter,
}

impl RequestSeries {
    fn with(route: &'static str, status: u16, record: impl FnOnce(&RequestSeries)) {
        static SERIES: LazyLock<RwLock<HashMap<(&'static str, u16), RequestSeries>>> =
            LazyLock::new(Default::default);
        if let Some(series) = read(&SERIES).get(&(route, status)) {
            return record(series);
        }
        let series = RequestSeries {
            duration: metrics::histogram!(HTTP_DURATION, "route" => route),
            requests: metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()),
        };
        record(&series);
        write(&SERIES).insert((route, status), series);
    }
}

/// A lock only ever held to read or insert into a map, never across a panic: a poisoned one
/// still holds a consistent map.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Connections of one pool, as scraped.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauge {
    pub in_use: usize,
    pub idle: usize,
}

/// The Redis topology one replica sees, as scraped: `REDIS_MODE` and how many nodes of each
/// role answer (0 and 0 while Redis cannot be reached).
#[derive(Debug, Clone, Copy)]
pub struct RedisNodesGauge {
    pub mode: &'static str,
    pub masters: usize,
    pub replicas: usize,
}

/// The exposition text: the recorder's series, then this replica's pools, Redis topology and
/// build.
pub fn render(postgres: PoolGauge, redis: PoolGauge, nodes: RedisNodesGauge) -> String {
    let mut text = handle().render();
    for (name, help, pool) in [
        (
            "vehicle_state_db_pool_connections",
            "PostgreSQL connections of this replica's pool, in use or idle.",
            postgres,
        ),
        (
            "vehicle_state_redis_pool_connections",
            "Redis connections of this replica: in use (the multiplexed connection lookups share, and any taken for a check) or idle in the pool.",
            redis,
        ),
    ] {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{state=\"in_use\"}} {}\n{name}{{state=\"idle\"}} {}\n",
            pool.in_use, pool.idle
        ));
    }
    let RedisNodesGauge {
        mode,
        masters,
        replicas,
    } = nodes;
    text.push_str(&format!(
        "# HELP vehicle_state_redis_nodes Redis nodes this replica sees, by topology (REDIS_MODE) and role; 0 while it cannot reach Redis.\n\
         # TYPE vehicle_state_redis_nodes gauge\n\
         vehicle_state_redis_nodes{{mode=\"{mode}\",role=\"master\"}} {masters}\n\
         vehicle_state_redis_nodes{{mode=\"{mode}\",role=\"replica\"}} {replicas}\n"
    ));
    text.push_str(&build_info());
    text
}

/// Events taken from the broker, by type (`registered`, `state_changed`, `unknown` for a subject
/// that is neither) and result.
pub const INGEST_EVENTS: &str = "vehicle_state_ingest_events_total";
/// Events per ingest transaction.
pub const INGEST_BATCH_SIZE: &str = "vehicle_state_ingest_batch_size";
/// Time to apply and commit one ingest batch.
pub const INGEST_COMMIT: &str = "vehicle_state_ingest_commit_seconds";
const INGEST_BATCH_BUCKETS: &[f64] = &[
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

/// The ingest process's exposition text: the recorder's series, its pool, the consumer's lag
/// (absent while NATS cannot say) and the build.
pub fn render_ingest(postgres: PoolGauge, consumer: Option<ConsumerGauge>) -> String {
    let mut text = handle().render();
    text.push_str(&format!(
        "# HELP vehicle_state_db_pool_connections PostgreSQL connections of this process's pool, in use or idle.\n\
         # TYPE vehicle_state_db_pool_connections gauge\n\
         vehicle_state_db_pool_connections{{state=\"in_use\"}} {}\n\
         vehicle_state_db_pool_connections{{state=\"idle\"}} {}\n",
        postgres.in_use, postgres.idle
    ));
    if let Some(ConsumerGauge {
        pending,
        ack_pending,
    }) = consumer
    {
        text.push_str(&format!(
            "# HELP vehicle_state_ingest_pending Events in the stream not yet delivered to any ingest process (the lag).\n\
             # TYPE vehicle_state_ingest_pending gauge\n\
             vehicle_state_ingest_pending {pending}\n\
             # HELP vehicle_state_ingest_ack_pending Events delivered and not yet acked (being applied, or waiting to be delivered again).\n\
             # TYPE vehicle_state_ingest_ack_pending gauge\n\
             vehicle_state_ingest_ack_pending {ack_pending}\n"
        ));
    }
    text.push_str(&build_info());
    text
}

fn build_info() -> String {
    format!(
        "# HELP vehicle_state_build_info The running build: version and git commit.\n\
         # TYPE vehicle_state_build_info gauge\n\
         vehicle_state_build_info{{version=\"{}\",git_sha=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        env!("VEHICLE_STATE_GIT_SHA"),
    )
}

#[cfg(test)]
mod tests {
    use super::LookupResult;

    #[test]
    fn lookup_results_are_listed_in_declaration_order() {
        // `count` indexes its handles by discriminant.
        for (i, result) in LookupResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, i, "{}", result.label());
        }
    }
}
