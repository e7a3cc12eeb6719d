//! The lookup with its caches: the one place that decides HIT or MISS.

mod batch;

use std::sync::Arc;
use std::time::{Duration, Instant as Clock, SystemTime};

use actix_web::web::Bytes;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::cache::local::Source;
use crate::cache::{Answer, CacheKey, Cached, LocalCache, LocalEntry, RedisCache, unix_ms};
use crate::db::{self, DbError};
use crate::domain::history::{HistoryPage, HistoryQuery};
use crate::domain::{Instant, Outcome, VehicleId};
use crate::metrics::LookupResult;

/// Why a lookup has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// `LOOKUP_CONCURRENCY_LIMIT` lookups were already in flight: shed, not queued.
    #[error("{0} lookups are already in flight (LOOKUP_CONCURRENCY_LIMIT)")]
    Overloaded(u32),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Where an answer came from, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From this replica's memory (including an answer fetched for a concurrent identical
    /// request this one waited on) or from Redis.
    Hit,
    /// Read from PostgreSQL for this request.
    Miss,
    /// Older than the TTL, served because PostgreSQL could not answer (`STALE_IF_ERROR_SECS`).
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// An answer, with where it came from and how much longer it may be served.
#[derive(Debug)]
pub struct Served {
    pub entry: Arc<LocalEntry>,
    pub cache: CacheStatus,
    pub fresh_for: Duration,
}

impl Served {
    /// Seconds since the answer was read from PostgreSQL (for `Age` on a stale answer).
    pub fn age_secs(&self) -> u64 {
        let age_ms = unix_ms(SystemTime::now()).saturating_sub(self.entry.answer.read_at_ms);
        u64::try_from(age_ms / 1000).unwrap_or(0)
    }
}

/// The lookup path and everything it reads from.
pub struct StateService {
    pub db: PgPool,
    pub redis: Arc<RedisCache>,
    pub local: LocalCache,
    /// One permit per lookup in flight past memory (`LOOKUP_CONCURRENCY_LIMIT`).
    limit: Arc<Semaphore>,
    max_in_flight: u32,
}

impl StateService {
    pub fn new(db: PgPool, redis: Arc<RedisCache>, local: LocalCache, max_in_flight: u32) -> Self {
        let permits = usize::try_from(max_in_flight).unwrap_or(Semaphore::MAX_PERMITS);
        Self {
            db,
            redis,
            local,
            limit: Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS))),
            max_in_flight,
        }
    }

    /// Memory first; then, once per key however many requests ask at the same moment, Redis,
    /// and on a miss, a Redis failure or an unreadable value, PostgreSQL, whose answer is written
    /// back to Redis before it is returned. A Redis failure is logged and counted, never passed
    /// to the client. Only the request that starts a fetch takes a permit of the concurrency
    /// limit; without one it fails at once (and so do the requests waiting on it).
    pub async fn vehicle_state(
        &self,
        id: VehicleId,
        at: Instant,
    ) -> Result<Served, Arc<LookupError>> {
        let key = self.redis.key(id, at);
        self.cached(key, move |db| async move {
            Ok(db::lookup(&db, id, at).await?.render())
        })
        .await
    }

    /// A page of a vehicle's timeline, cached exactly like a lookup (its own key, the same TTL
    /// bound, single flight, shedding and stale-if-error).
    pub async fn history(&self, query: HistoryQuery) -> Result<Served, Arc<LookupError>> {
        let key = self.redis.history_key(&query);
        self.cached(key, move |db| async move {
            Ok(match db::history(&db, &query).await? {
                HistoryPage::Found(page) => (
                    Outcome::Found,
                    // A struct of strings, integers and instants always serialises.
                    serde_json::to_vec(&page).unwrap_or_default(),
                ),
                HistoryPage::UnknownVehicle => (Outcome::UnknownVehicle, Vec::new()),
            })
        })
        .await
    }

    /// The answer under `key`: memory, then (once per key however many ask) Redis, then `load`
    /// from PostgreSQL, written back to Redis.
    async fn cached<L, F>(&self, key: CacheKey, load: L) -> Result<Served, Arc<LookupError>>
    where
        L: FnOnce(PgPool) -> F + Send + 'static,
        F: Future<Output = Result<(Outcome, Vec<u8>), DbError>> + Send,
    {
        if let Some(entry) = self.local.get(&key).await {
            LookupResult::MemoryHit.count();
            let fresh_for = entry.expires_at.saturating_duration_since(Clock::now());
            return Ok(Served {
                entry,
                cache: CacheStatus::Hit,
                fresh_for,
            });
        }
        // A miss runs as a task of its own: if the client that started the fetch goes away, the
        // fetch goes on, and the requests waiting on it (or arriving after) still share it
        // instead of starting the query again.
        let (local, db, redis) = (self.local.clone(), self.db.clone(), self.redis.clone());
        let (limit, max_in_flight) = (self.limit.clone(), self.max_in_flight);
        let (entry, fetched_here) = tokio::spawn(async move {
            let fetch = {
                let key = key.clone();
                async move {
                    let _permit = limit
                        .try_acquire_owned()
                        .map_err(|_| LookupError::Overloaded(max_in_flight))?;
                    fetch(db, redis, key, load).await
                }
            };
            local.get_or_fetch(key, fetch).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Arc::new(LookupError::Db(DbError::Unavailable(
                sqlx::Error::WorkerCrashed,
            ))))
        })
        .inspect_err(|error| match **error {
            LookupError::Overloaded(_) => LookupResult::Shed.count(),
            LookupError::Db(_) => LookupResult::Error.count(),
        })?;
        let (cache, result) = match (fetched_here, entry.source) {
            (_, Source::Stale) => (CacheStatus::Stale, LookupResult::Stale),
            (false, _) => (CacheStatus::Hit, LookupResult::Coalesced),
            (true, Source::Postgres) => (CacheStatus::Miss, LookupResult::Miss),
            (true, Source::PostgresWithoutRedis) => (CacheStatus::Miss, LookupResult::RedisError),
            (true, Source::Redis) => (CacheStatus::Hit, LookupResult::RedisHit),
        };
        result.count();
        let fresh_for = entry.expires_at.saturating_duration_since(Clock::now());
        Ok(Served {
            entry,
            cache,
            fresh_for,
        })
    }
}

async fn fetch<L, F>(
    db: PgPool,
    redis: Arc<RedisCache>,
    key: CacheKey,
    load: L,
) -> Result<Arc<LocalEntry>, LookupError>
where
    L: FnOnce(PgPool) -> F,
    F: Future<Output = Result<(Outcome, Vec<u8>), DbError>>,
{
    // Taken before asking, so memory never keeps the answer longer than Redis does.
    let asked = Clock::now();
    let mut stale = None;
    let mut redis_failed = false;
    match redis.get(&key).await {
        Ok(Cached::Fresh(answer, remaining)) => {
            let expires_at = asked + remaining;
            return Ok(Arc::new(LocalEntry::new(answer, expires_at, Source::Redis)));
        }
        Ok(Cached::Stale(answer)) => stale = Some(answer),
        Ok(Cached::Absent) => {}
        Err(error) => {
            redis_failed = true;
            if let Some(errors) = redis.record_error("get", &error) {
                tracing::warn!(error = %crate::telemetry::chain(&error), key = key.as_str(), errors, "cache read failed; asking PostgreSQL");
            }
        }
    }
    // Taken before the query, so the recorded age errs on the old side.
    let read_at = SystemTime::now();
    let started = Clock::now();
    let lookup = load(db).await.inspect_err(|error| {
        metrics::counter!(crate::metrics::DB_ERRORS, "kind" => error.kind()).increment(1);
    });
    let lookup = match lookup {
        Ok(lookup) => lookup,
        Err(error @ DbError::Unavailable(_)) => {
            let Some(answer) = stale else {
                return Err(error.into());
            };
            tracing::warn!(error = %crate::telemetry::chain(&error), key = key.as_str(), "PostgreSQL cannot answer; serving a stale answer (STALE_IF_ERROR_SECS)");
            // Expired on arrival: memory hands it to the requests waiting now, and keeps it for
            // nobody else, so the next request asks PostgreSQL again.
            return Ok(Arc::new(LocalEntry::new(
                answer,
                Clock::now(),
                Source::Stale,
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let (outcome, body) = lookup;
    let answer = Answer {
        outcome,
        body: Bytes::from(body),
        read_at_ms: unix_ms(read_at),
    };
    match redis.put(&key, &answer).await {
        Ok(()) => {}
        Err(error) => {
            if let Some(errors) = redis.record_error("set", &error) {
                tracing::warn!(error = %crate::telemetry::chain(&error), key = key.as_str(), errors, "cache write failed");
            }
        }
    }
    let expires_at = started + redis.ttl();
    let source = if redis_failed {
        Source::PostgresWithoutRedis
    } else {
        Source::Postgres
    };
    Ok(Arc::new(LocalEntry::new(answer, expires_at, source)))
}
