//! Prometheus metrics: the series, where they are counted, and `GET /metrics`.
//!
//! Counters and histograms go through the `metrics` facade into one process-wide Prometheus
//! recorder (metrics-exporter-prometheus, without its HTTP listener: the service's own server
//! answers `/metrics`). Gauges that describe one replica's pools are read from the pools when
//! scraped, never kept. docs/operations.md says what each series is for.
//!
//! Each subsystem's series are named in a file of their own (`http`, `cache`, `db`, `ingest`,
//! `traces`); the middleware that counts requests is `middleware`; the recorder and the
//! exposition text are here.

mod cache;
mod db;
mod feed;
mod http;
mod ingest;
mod middleware;
mod traces;

use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use http::DURATION_BUCKETS;
use ingest::INGEST_BATCH_BUCKETS;

pub use cache::{
    LOOKUPS, LookupResult, REDIS_BATCH_SIZE, REDIS_ERRORS, REDIS_OPERATIONS, RedisNodesGauge,
};
pub use db::{DB_BATCH_SIZE, DB_ERRORS, FLEET_COUNTS};
pub use feed::{
    FEED_ANNOUNCEMENTS, FEED_FOLLOWING, FEED_INVALIDATIONS, FEED_LAG, SSE_ENDED, SSE_EVENTS,
    SSE_STREAMS, count_announcement,
};
pub use http::{AUTH_JWKS_FETCHES, AUTH_JWKS_KEYS, HTTP_DURATION, HTTP_REQUESTS, QUOTA_DECISIONS};
pub use ingest::{
    ConsumerGauge, INGEST_BATCH_SIZE, INGEST_COMMIT, INGEST_EVENTS, IngestResult,
    record_ingest_batch,
};
pub use middleware::{record_request, route_of};
pub use traces::{TRACE_SPANS_DROPPED, TRACE_SPANS_EXPORTED};

/// Bucket bounds of the batch-size histograms ([`REDIS_BATCH_SIZE`], [`DB_BATCH_SIZE`]).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

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
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(FEED_LAG.to_owned()), feed::FEED_LAG_BUCKETS)
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
    for from in ["sums", "table"] {
        metrics::counter!(FLEET_COUNTS, "from" => from).increment(0);
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

fn describe() {
    feed::describe();
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
        QUOTA_DECISIONS,
        "Quota decisions by outcome (allowed, limited) and by what decided (redis, lease, local while Redis fails); only while quotas are on."
    );
    metrics::describe_counter!(
        AUTH_JWKS_FETCHES,
        "Fetches of the identity provider's key set by outcome (ok, failed); only while access tokens are on."
    );
    metrics::describe_gauge!(
        AUTH_JWKS_KEYS,
        "Signing keys held from the identity provider's key set; only while access tokens are on."
    );
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
        "Redis calls that failed, by operation (get, set, ping, topology, quota) and kind (timeout, unreachable, read_only, reply, corrupt, skipped)."
    );
    metrics::describe_counter!(
        DB_ERRORS,
        "PostgreSQL lookups that failed, by kind (acquire_timeout, statement_timeout, unavailable, query)."
    );
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
