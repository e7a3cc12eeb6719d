//! The request path's PostgreSQL: its pool, and whether PostgreSQL is known to be down.
//!
//! sqlx's pool retries a refused connection until the acquire timeout, so on its own every
//! uncached request would wait `DB_ACQUIRE_TIMEOUT_MS` for its 503 while PostgreSQL is down,
//! although the refusal is known in a millisecond. Here, a failure that may mean PostgreSQL is
//! gone (a pooled connection found dead before use, a connection error, an acquire timeout)
//! starts one prober, which connects on its own, outside the pool. If that fails (refused, reset,
//! no such host, no answer within the acquire timeout), PostgreSQL is known down: requests that
//! need it fail at once, and so do those already waiting for a connection. The prober tries again
//! every `DB_PROBE_INTERVAL_MS`; the first connection it makes ends the outage. A busy pool is not
//! an outage: the probe connects, and requests keep the acquire timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{Connection, Executor};
use tokio::sync::watch;

use super::DbError;
use crate::config::{DatabaseSettings, DatabaseUrl};
use crate::domain::fleet::{FleetCounts, FleetVehicle};
use crate::domain::history::{HistoryPage, HistoryQuery};
use crate::domain::{Lookup, Timestamp, VehicleId};
use crate::telemetry::otel;

/// The pool and what is known of PostgreSQL's reachability; cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    reach: Arc<Reachability>,
}

/// Whether PostgreSQL is known down, and the one prober that finds out when it is back.
struct Reachability {
    /// `true` while PostgreSQL is known down.
    down: watch::Sender<bool>,
    /// Whether the prober runs.
    probing: AtomicBool,
    /// How the prober connects: the pool's own options.
    options: PgConnectOptions,
    /// For the log line (never with its password).
    url: DatabaseUrl,
    /// Bound on one probe: `DB_ACQUIRE_TIMEOUT_MS`, what a request would wait.
    timeout: Duration,
    /// `DB_PROBE_INTERVAL_MS`.
    interval: Duration,
    /// `DB_RESPONSE_TIMEOUT_MS`: how long a statement sent waits for its reply.
    response_timeout: Duration,
}

impl Database {
    /// The pool connects on first use (see [`super::connect()`]); `reachable` is what the start-up
    /// check found. When it found PostgreSQL unreachable, requests fail at once from the start,
    /// until the prober connects.
    pub fn new(settings: &DatabaseSettings, probe_interval: Duration, reachable: bool) -> Self {
        let (down, _) = watch::channel(false);
        let options = super::request_options(settings);
        let reach = Arc::new(Reachability {
            down,
            probing: AtomicBool::new(false),
            options: options.clone(),
            url: settings.url.clone(),
            timeout: settings.acquire_timeout,
            interval: probe_interval,
            response_timeout: settings.response_timeout,
        });
        let on_acquire = reach.clone();
        let pool = super::pool_options(settings)
            // What sqlx's own test before use does (a ping), and a dead connection is news:
            // without this, the pool would replace it silently and retry the refused connection
            // until the acquire timeout.
            .test_before_acquire(false)
            .before_acquire(move |conn, _meta| {
                let reach = on_acquire.clone();
                Box::pin(async move {
                    if conn.ping().await.is_ok() {
                        return Ok(true);
                    }
                    reach.suspect();
                    // Closed and replaced by the pool; the prober logs an outage if it is one.
                    Ok(false)
                })
            })
            .connect_lazy_with(options);
        let database = Self { pool, reach };
        if !reachable {
            database.reach.down.send_replace(true);
            database.reach.suspect();
        }
        database
    }

    /// The pool itself, for what is not on the request path (its gauge, closing it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// [`super::lookup_many`], failing at once while PostgreSQL is known down.
    pub async fn lookup_many(
        &self,
        pairs: &[(VehicleId, Timestamp)],
    ) -> Result<Vec<(Lookup, u64)>, DbError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "postgresql lookup_many",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "SELECT",
            db.query.summary = "lookup_many",
            vehicle_state.pairs = pairs.len(),
        );
        let call = self.answered(async |conn| super::lookup_many(conn, pairs).await);
        otel::traced(span, self.guarded(call)).await
    }

    /// [`super::history()`], failing at once while PostgreSQL is known down.
    pub async fn history(&self, query: &HistoryQuery) -> Result<(HistoryPage, u64), DbError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "postgresql history",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "SELECT",
            db.query.summary = "history",
        );
        let call = self.answered(async |conn| super::history(conn, query).await);
        otel::traced(span, self.guarded(call)).await
    }

    /// [`super::current`], failing at once while PostgreSQL is known down.
    pub async fn current(&self, ids: &[VehicleId]) -> Result<Vec<super::VehicleNow>, DbError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "postgresql current",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "SELECT",
            db.query.summary = "current",
            vehicle_state.vehicles = ids.len(),
        );
        let call = self.answered(async |conn| super::current(conn, ids).await);
        otel::traced(span, self.guarded(call)).await
    }

    /// [`super::fleet_counts`], failing at once while PostgreSQL is known down.
    pub async fn fleet_counts(
        &self,
        ats: &[Timestamp],
    ) -> Result<(Vec<FleetCounts>, bool), DbError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "postgresql fleet_counts",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "SELECT",
            db.query.summary = "fleet_counts",
            vehicle_state.instants = ats.len(),
        );
        let call = self.answered(async |conn| super::fleet_counts(conn, ats).await);
        otel::traced(span, self.guarded(call)).await
    }

    /// [`super::fleet_vehicles`], failing at once while PostgreSQL is known down.
    pub async fn fleet_vehicles(
        &self,
        state: &str,
        at: Timestamp,
        scan: super::ListScan,
        limit: u16,
    ) -> Result<(Vec<FleetVehicle>, bool), DbError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "postgresql fleet_vehicles",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "SELECT",
            db.query.summary = "fleet_vehicles",
        );
        let call =
            self.answered(async |conn| super::fleet_vehicles(conn, state, at, scan, limit).await);
        otel::traced(span, self.guarded(call)).await
    }

    /// Whether PostgreSQL answers a trivial query (for `/readyz`); at once while it is known
    /// down.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.guarded(self.answered(async |conn| {
            conn.execute("SELECT 1")
                .await
                .map(drop)
                .map_err(DbError::from)
        }))
        .await
    }

    /// Runs `statement` on a pooled connection (acquiring is bounded by the pool's own
    /// timeout), and waits at most `DB_RESPONSE_TIMEOUT_MS` for it to be answered. Past that,
    /// the connection is taken out of the pool and dropped (closed, not pinged: on a link that
    /// swallows packets a ping would wait as long) and the call fails as `no_response`.
    ///
    /// Why a bound of our own: `DB_STATEMENT_TIMEOUT_MS` is PostgreSQL's, and its error is a
    /// reply; when the network drops packets without a reset (a black hole), no reply comes,
    /// and without this the request would wait until TCP gives up, minutes later.
    async fn answered<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut conn = self.pool.acquire().await?;
        let result =
            super::answered_within(self.reach.response_timeout, statement(&mut conn)).await;
        if result.as_ref().is_err_and(|e| e.kind() == "no_response") {
            drop(conn.detach());
        }
        result
    }

    /// Runs `call`, unless PostgreSQL is known down; if it becomes known down while `call` waits
    /// (for a connection, typically), fails then. A failure that may mean PostgreSQL is gone
    /// starts the prober.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        let mut down = self.reach.down.subscribe();
        if *down.borrow_and_update() {
            return Err(DbError::Down);
        }
        let result = tokio::select! {
            biased;
            result = call => result,
            // Only `Ok` once it is down (an `Err` would mean the sender is gone, which it is
            // not while `self` holds it).
            Ok(_) = down.wait_for(|down| *down) => Err(DbError::Down),
        };
        if let Err(error) = &result
            && error.may_mean_unreachable()
        {
            self.reach.suspect();
        }
        result
    }
}

impl Reachability {
    /// Starts the prober unless it runs.
    fn suspect(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(self.clone().probe());
    }

    /// Connects outside the pool until a connection is made: PostgreSQL is down from the first
    /// failure until then.
    async fn probe(self: Arc<Self>) {
        loop {
            let attempt = PgConnection::connect_with(&self.options);
            let failure = match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(conn)) => {
                    if let Err(error) = conn.close().await {
                        tracing::debug!(error = %error, "closing the probe's connection");
                    }
                    None
                }
                Ok(Err(error)) => Some(super::connect::unreachable(&error, &self.url)),
                Err(_) => Some(format!(
                    "no connection within {} ms (DB_ACQUIRE_TIMEOUT_MS)",
                    self.timeout.as_millis()
                )),
            };
            match failure {
                None => {
                    if self.down.send_replace(false) {
                        tracing::info!(database = %self.url, "PostgreSQL answers again: requests ask it again");
                    }
                    break;
                }
                Some(cause) => {
                    if !self.down.send_replace(true) {
                        tracing::warn!(
                            database = %self.url,
                            cause = %cause,
                            probe_interval_ms = self.interval.as_millis() as u64,
                            "PostgreSQL cannot be reached: requests that need it are answered 503 at once until a probe connects"
                        );
                    }
                    tokio::time::sleep(self.interval).await;
                }
            }
        }
        self.probing.store(false, Ordering::Release);
    }
}
