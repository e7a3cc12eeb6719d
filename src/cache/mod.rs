//! Redis: answers kept for `CACHE_TTL_SECS`. No SQL here.
//!
//! Redis only speeds answers up. Every call is bounded by `REDIS_TIMEOUT_MS` (pool wait and
//! connecting included) and its failure is returned to the caller, which logs it and asks
//! PostgreSQL instead. Broken connections are replaced by the pool, so the cache comes back by
//! itself when Redis does.

mod key;

pub use key::CacheKey;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use deadpool_redis::{Pool, Runtime};
use serde::{Deserialize, Serialize};

use crate::config::{CacheSettings, RedisSettings};
use crate::domain::Lookup;

/// A lookup answer read from Redis, and how much longer it may be served.
#[derive(Debug)]
pub struct Cached {
    pub lookup: Lookup,
    pub remaining: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no Redis connection")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("the cached value is not a lookup answer")]
    Corrupt(#[from] serde_json::Error),
}

/// What is stored under a key: the answer and when it was read from PostgreSQL.
#[derive(Serialize, Deserialize)]
struct Entry<L> {
    #[serde(rename = "readAt")]
    read_at_ms: i64,
    lookup: L,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub struct Cache {
    pool: Pool,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
    errors: AtomicU64,
}

impl Cache {
    /// Builds the pool; connects on first use, so a Redis that is down does not stop the start.
    pub fn new(redis: &RedisSettings, cache: &CacheSettings) -> anyhow::Result<Self> {
        let timeout = redis.timeout();
        let pool = deadpool_redis::Config::from_url(redis.redis_url.clone())
            .builder()
            .context("REDIS_URL: cannot configure the Redis pool")?
            .max_size(usize::try_from(redis.redis_pool_max_size).unwrap_or(usize::MAX))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot build the Redis pool")?;
        Ok(Self {
            pool,
            prefix: cache.cache_key_prefix.clone(),
            ttl: Duration::from_secs(cache.cache_ttl_secs.into()),
            timeout,
            errors: AtomicU64::new(0),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn key(&self, id: crate::domain::VehicleId, at: crate::domain::Instant) -> CacheKey {
        CacheKey::new(&self.prefix, id, at)
    }

    /// The cached answer and its remaining lifetime, read in one pipeline (GET and PTTL).
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Cached>, CacheError> {
        let (value, pttl): (Option<Vec<u8>>, i64) = self
            .bounded(async {
                let mut conn = self.pool.get().await?;
                let reply = redis::pipe()
                    .get(key.as_str())
                    .pttl(key.as_str())
                    .query_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await?;
        let Some(value) = value else { return Ok(None) };
        let entry: Entry<Lookup> = serde_json::from_slice(&value)?;
        // This replica's TTL bounds the answer's age even when the entry was written by a replica
        // with a longer one. A read time up to a TTL ahead is a writer's clock running ahead of
        // ours and counts as no age; further ahead, the entry is not to be trusted.
        let age_ms = unix_ms(SystemTime::now()).saturating_sub(entry.read_at_ms);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        if age_ms < -ttl_ms || age_ms >= ttl_ms {
            return Ok(None);
        }
        let left = self.ttl - Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
        // PTTL is negative when the key vanished between the two commands (-2) or has no expiry
        // (-1, which this service never writes): serve it, but let nobody keep it.
        let remaining = Duration::from_millis(u64::try_from(pttl).unwrap_or(0)).min(left);
        Ok(Some(Cached {
            lookup: entry.lookup,
            remaining,
        }))
    }

    /// Stores an answer read from PostgreSQL at `read_at`, for the configured TTL.
    pub async fn put(
        &self,
        key: &CacheKey,
        lookup: &Lookup,
        read_at: SystemTime,
    ) -> Result<(), CacheError> {
        let value = serde_json::to_vec(&Entry {
            read_at_ms: unix_ms(read_at),
            lookup,
        })?;
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        self.bounded(async {
            let mut conn = self.pool.get().await?;
            redis::cmd("SET")
                .arg(key.as_str())
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        self.bounded(async {
            let mut conn = self.pool.get().await?;
            redis::cmd("PING").query_async::<()>(&mut *conn).await?;
            Ok(())
        })
        .await
    }

    /// Counts a failed call. Callers log the error itself, where they know what they were doing.
    pub fn record_error(&self) -> u64 {
        self.errors.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Failed Redis calls since start.
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        // A multiplexed connection is safe to abandon mid-command: its reply is discarded.
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(CacheError::Timeout(self.timeout)))
    }
}
