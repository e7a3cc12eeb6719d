//! The lookup with its caches: the one place that decides HIT or MISS.

use std::sync::Arc;
use std::time::{Duration, Instant as Clock, SystemTime};

use actix_web::web::Bytes;
use sqlx::PgPool;

use crate::cache::local::Source;
use crate::cache::{Answer, CacheKey, LocalCache, LocalEntry, RedisCache, unix_ms};
use crate::db::{self, DbError};
use crate::domain::{Instant, VehicleId};

/// Where an answer came from, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From this replica's memory (including an answer fetched for a concurrent identical
    /// request this one waited on) or from Redis.
    Hit,
    /// Read from PostgreSQL for this request.
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
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

/// The lookup path and everything it reads from.
pub struct StateService {
    pub db: PgPool,
    pub redis: Arc<RedisCache>,
    pub local: LocalCache,
}

impl StateService {
    /// Memory first; then, once per key however many requests ask at the same moment, Redis,
    /// and on a miss, a Redis failure or an unreadable value, PostgreSQL, whose answer is written
    /// back to Redis before it is returned. A Redis failure is logged and counted, never passed
    /// to the client.
    pub async fn vehicle_state(&self, id: VehicleId, at: Instant) -> Result<Served, Arc<DbError>> {
        let key = self.redis.key(id, at);
        if let Some(entry) = self.local.get(&key).await {
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
        let (entry, fetched_here) = tokio::spawn(async move {
            let fetch = fetch(db, redis, key.clone(), id, at);
            local.get_or_fetch(key, fetch).await
        })
        .await
        .unwrap_or_else(|_| Err(Arc::new(DbError::Unavailable(sqlx::Error::WorkerCrashed))))?;
        let cache = match (fetched_here, entry.source) {
            (true, Source::Postgres) => CacheStatus::Miss,
            _ => CacheStatus::Hit,
        };
        let fresh_for = entry.expires_at.saturating_duration_since(Clock::now());
        Ok(Served {
            entry,
            cache,
            fresh_for,
        })
    }
}

async fn fetch(
    db: PgPool,
    redis: Arc<RedisCache>,
    key: CacheKey,
    id: VehicleId,
    at: Instant,
) -> Result<Arc<LocalEntry>, DbError> {
    // Taken before asking, so memory never keeps the answer longer than Redis does.
    let asked = Clock::now();
    match redis.get(&key).await {
        Ok(Some((answer, remaining))) => {
            let expires_at = asked + remaining;
            return Ok(Arc::new(LocalEntry {
                answer,
                expires_at,
                source: Source::Redis,
            }));
        }
        Ok(None) => {}
        Err(error) => {
            let errors = redis.record_error();
            tracing::warn!(error = %crate::error::chain(&error), key = key.as_str(), errors, "cache read failed; asking PostgreSQL");
        }
    }
    // Taken before the query, so the recorded age errs on the old side.
    let read_at = SystemTime::now();
    let started = Clock::now();
    let lookup = db::lookup(&db, id, at).await?;
    let (outcome, body) = lookup.render();
    let answer = Answer {
        outcome,
        body: Bytes::from(body),
        read_at_ms: unix_ms(read_at),
    };
    if let Err(error) = redis.put(&key, &answer).await {
        let errors = redis.record_error();
        tracing::warn!(error = %crate::error::chain(&error), key = key.as_str(), errors, "cache write failed");
    }
    let expires_at = started + redis.ttl();
    Ok(Arc::new(LocalEntry {
        answer,
        expires_at,
        source: Source::Postgres,
    }))
}
