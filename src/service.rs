//! The lookup with its cache: the one place that decides HIT or MISS.

use std::time::{Duration, SystemTime};

use sqlx::PgPool;

use crate::cache::{Cache, Cached};
use crate::db::{self, DbError};
use crate::domain::{Instant, Lookup, VehicleId};

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
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
    pub lookup: Lookup,
    pub cache: CacheStatus,
    pub fresh_for: Duration,
}

/// Cache-aside: Redis first; on a miss, a Redis failure or an unreadable value, PostgreSQL, and
/// the answer written back before it is returned, so the next request for it (on any replica) is
/// a hit. A Redis failure is logged and counted, never passed to the client.
pub async fn vehicle_state(
    pool: &PgPool,
    cache: &Cache,
    id: VehicleId,
    at: Instant,
) -> Result<Served, DbError> {
    let key = cache.key(id, at);
    match cache.get(&key).await {
        Ok(Some(Cached { lookup, remaining })) => {
            return Ok(Served {
                lookup,
                cache: CacheStatus::Hit,
                fresh_for: remaining,
            });
        }
        Ok(None) => {}
        Err(error) => {
            let errors = cache.record_error();
            tracing::warn!(error = %crate::error::chain(&error), key = key.as_str(), errors, "cache read failed; asking PostgreSQL");
        }
    }
    // Taken before the query, so the recorded age errs on the old side.
    let read_at = SystemTime::now();
    let lookup = db::lookup(pool, id, at).await?;
    if let Err(error) = cache.put(&key, &lookup, read_at).await {
        let errors = cache.record_error();
        tracing::warn!(error = %crate::error::chain(&error), key = key.as_str(), errors, "cache write failed");
    }
    Ok(Served {
        lookup,
        cache: CacheStatus::Miss,
        fresh_for: cache.ttl(),
    })
}
