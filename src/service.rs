//! The lookup with its caches: the one place that decides HIT or MISS.

use std::sync::Arc;
use std::time::{Duration, Instant as Clock, SystemTime};

use actix_web::web::Bytes;
use sqlx::PgPool;

use crate::cache::local::Source;
use crate::cache::{Answer, LocalCache, LocalEntry, RedisCache, unix_ms};
use crate::db::{self, DbError};
use crate::domain::{Instant, VehicleId};

/// Where an answer came from, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From this replica's memory or from Redis.
    Hit,
    /// Read from PostgreSQL for this request (or for the identical one it waited on).
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
    pub redis: RedisCache,
    pub local: LocalCache,
}

impl StateService {
    /// Memory first; then, once per key however many requests ask at the same moment, Redis,
    /// and on a miss, a Redis failure or an unreadable value, PostgreSQL, whose answer is written
    /// back to Redis before it is returned. A Redis failure is logged and counted, never passed
    /// to the client.
    pub async fn vehicle_state(&self, id: VehicleId, at: Instant) -> Result<Served, Arc<DbError>> {
        let key = self.redis.key(id, at);
        let (entry, fetched_here) = self
            .local
            .get_or_fetch(key.clone(), self.fetch(&key, id, at))
            .await?;
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

    async fn fetch(
        &self,
        key: &crate::cache::CacheKey,
        id: VehicleId,
        at: Instant,
    ) -> Result<Arc<LocalEntry>, DbError> {
        match self.redis.get(key).await {
            Ok(Some((answer, remaining))) => {
                let expires_at = Clock::now() + remaining;
                return Ok(Arc::new(LocalEntry {
                    answer,
                    expires_at,
                    source: Source::Redis,
                }));
            }
            Ok(None) => {}
            Err(error) => {
                let errors = self.redis.record_error();
                tracing::warn!(error = %crate::error::chain(&error), key = key.as_str(), errors, "cache read failed; asking PostgreSQL");
            }
        }
        // Taken before the query, so the recorded age errs on the old side.
        let read_at = SystemTime::now();
        let started = Clock::now();
        let lookup = db::lookup(&self.db, id, at).await?;
        let (outcome, body) = lookup.render();
        let answer = Answer {
            outcome,
            body: Bytes::from(body),
            read_at_ms: unix_ms(read_at),
        };
        if let Err(error) = self.redis.put(key, &answer).await {
            let errors = self.redis.record_error();
            tracing::warn!(error = %crate::error::chain(&error), key = key.as_str(), errors, "cache write failed");
        }
        let expires_at = started + self.redis.ttl();
        Ok(Arc::new(LocalEntry {
            answer,
            expires_at,
            source: Source::Postgres,
        }))
    }
}
