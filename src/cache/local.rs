//! This replica's memory: the first tier, in front of Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use moka::Expiry;
use moka::future::Cache;

use super::{CacheKey, RenderedAnswer};

/// Where an answer in memory came from, for `X-Cache` on the request that fetched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Redis,
    Postgres,
    /// From PostgreSQL, and Redis failed (or was being left alone after a failure) to give or to
    /// take it: memory is the only cache that has it.
    PostgresWithoutRedis,
    /// Past its TTL, from Redis, because PostgreSQL could not answer; never kept in memory.
    Stale,
}

impl Source {
    /// Whether memory keeps an entry from here: on second sight. One Redis held was asked
    /// before (here or by another replica); one from PostgreSQL while Redis failed has no other
    /// cache. One just read from PostgreSQL is in Redis now, where the next ask finds it (and
    /// keeps it): keys asked once, most misses, would only churn memory and cost an insert each.
    pub fn kept_in_memory(self) -> bool {
        matches!(self, Source::Redis | Source::PostgresWithoutRedis)
    }
}

/// An answer held in memory until `expires_at`: the moment it stops being servable under the TTL
/// (counted from its read in PostgreSQL) or leaves Redis, whichever is first.
#[derive(Debug)]
pub struct LocalEntry {
    pub answer: RenderedAnswer,
    pub expires_at: Instant,
    pub source: Source,
    /// The strong `ETag` of a found answer's body, computed once here, not per request.
    pub etag: Option<HeaderValue>,
}

impl LocalEntry {
    pub fn new(answer: RenderedAnswer, expires_at: Instant, source: Source) -> Self {
        let etag = answer.etag();
        Self {
            answer,
            expires_at,
            source,
            etag,
        }
    }
}

/// Bounded by weight (bytes of key and body plus estimated bookkeeping), so
/// `LOCAL_CACHE_MAX_BYTES` caps, approximately, the memory it can take whatever the mix of answers.
#[derive(Clone)]
pub struct LocalCache {
    cache: Cache<CacheKey, Arc<LocalEntry>>,
}

/// Each entry lives exactly as long as its own `expires_at`.
struct UntilExpiry;

impl Expiry<CacheKey, Arc<LocalEntry>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Arc<LocalEntry>,
        created: Instant,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(created))
    }

    /// An entry replaced (by a batch that fetched the key again) lives by its own deadline.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Arc<LocalEntry>,
        updated: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(updated))
    }
}

/// Bytes counted per entry beyond its key and body: the entry and its allocations, moka's node,
/// timer-wheel and hash-table records, and the allocator's rounding. An estimate from RSS growth
/// under the cold benchmark, so the budget is approximate, not exact.
const ENTRY_OVERHEAD: usize = 512;

impl LocalCache {
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, entry: &Arc<LocalEntry>| {
                u32::try_from(key.as_str().len() + entry.answer.body.len() + ENTRY_OVERHEAD)
                    .unwrap_or(u32::MAX)
            })
            .expire_after(UntilExpiry)
            .build();
        Self { cache }
    }

    /// Keeps an entry, until its own deadline.
    pub async fn insert(&self, key: CacheKey, entry: Arc<LocalEntry>) {
        self.cache.insert(key, entry).await;
    }

    /// The entry for `key`, if held and not expired.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<LocalEntry>> {
        self.cache.get(key).await
    }
}
