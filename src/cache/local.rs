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
    /// The same tag, weak (`W/`): for an answer at `now`, whose body moves with the clock.
    pub weak_etag: Option<HeaderValue>,
}

impl LocalEntry {
    pub fn new(answer: RenderedAnswer, expires_at: Instant, source: Source) -> Self {
        let etag = answer.etag();
        let weak_etag = etag
            .as_ref()
            .and_then(|etag| HeaderValue::from_bytes(&[&b"W/"[..], etag.as_bytes()].concat()).ok());
        Self {
            answer,
            expires_at,
            source,
            etag,
            weak_etag,
        }
    }
}

/// What memory holds under one key: the entries known for it, sorted by segment start and never
/// overlapping, so the one that covers an instant is found by binary search.
#[derive(Debug)]
pub struct Held {
    entries: Vec<Arc<LocalEntry>>,
    /// The latest of the entries' deadlines: when the whole key goes.
    expires_at: Instant,
}

impl Held {
    /// The entry covering `at_us`, if one is held and not past its own deadline.
    fn covering(&self, at_us: i64, now: Instant) -> Option<&Arc<LocalEntry>> {
        let after = self
            .entries
            .partition_point(|entry| entry.answer.start_us <= at_us);
        let entry = self.entries.get(after.checked_sub(1)?)?;
        (entry.answer.covers(at_us) && entry.expires_at > now).then_some(entry)
    }

    fn weight(&self, key: &CacheKey) -> u32 {
        let bytes: usize = self
            .entries
            .iter()
            .map(|entry| entry.answer.body.len() + ENTRY_OVERHEAD)
            .sum();
        u32::try_from(key.as_str().len() + bytes).unwrap_or(u32::MAX)
    }
}

/// Bounded by weight (bytes of key and bodies plus estimated bookkeeping per entry), so
/// `LOCAL_CACHE_MAX_BYTES` caps, approximately, the memory it can take whatever the mix of answers.
#[derive(Clone)]
pub struct LocalCache {
    cache: Cache<CacheKey, Arc<Held>>,
}

/// Each key lives as long as the latest deadline of its entries (each entry's own is checked
/// when it is read).
struct UntilExpiry;

impl Expiry<CacheKey, Arc<Held>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        held: &Arc<Held>,
        created: Instant,
    ) -> Option<Duration> {
        Some(held.expires_at.saturating_duration_since(created))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        held: &Arc<Held>,
        updated: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(held.expires_at.saturating_duration_since(updated))
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
            .weigher(|key: &CacheKey, held: &Arc<Held>| held.weight(key))
            .expire_after(UntilExpiry)
            .build();
        Self { cache }
    }

    /// Keeps an entry under `key`, until its own deadline, beside the others held there: those
    /// past their deadline, any whose segment overlaps the new one's (read before a change
    /// that split or ended it), and any read at an older version of the vehicle, are let go. Two inserts under one key at the same moment may
    /// keep only one of the two entries: the other is fetched again when next asked.
    pub async fn insert(&self, key: CacheKey, entry: Arc<LocalEntry>) {
        let now = Instant::now();
        let (start, end) = (entry.answer.start_us, entry.answer.end_us);
        let mut entries: Vec<Arc<LocalEntry>> = match self.cache.get(&key).await {
            Some(held) => held
                .entries
                .iter()
                .filter(|e| {
                    e.expires_at > now
                        && (e.answer.end_us <= start || e.answer.start_us >= end)
                        // Read at an older version of the vehicle than the new entry: the
                        // vehicle has changed since, whatever the floor says yet.
                        && e.answer.version >= entry.answer.version
                })
                .cloned()
                .collect(),
            None => Vec::with_capacity(1),
        };
        let at = entries.partition_point(|e| e.answer.start_us < start);
        entries.insert(at, entry);
        let expires_at = entries.iter().map(|e| e.expires_at).max().unwrap_or(now);
        self.cache
            .insert(
                key,
                Arc::new(Held {
                    entries,
                    expires_at,
                }),
            )
            .await;
    }

    /// Keeps `entry` under `key` unless the change feed has announced a later version of its
    /// vehicle (`floors`), checked before and again after the insert: the feed raises a floor
    /// before it drops the vehicle, so either the check sees the floor or the drop comes after
    /// the insert. Every entry left under the key is then no older than `entry` (see
    /// [`Self::insert`]), so the one check covers them all.
    pub async fn keep(&self, key: CacheKey, entry: Arc<LocalEntry>, floors: &super::Floors) {
        if !floors.admit(&key, &entry.answer) {
            return;
        }
        self.insert(key.clone(), entry.clone()).await;
        if !floors.admit(&key, &entry.answer) {
            self.invalidate(&key).await;
        }
    }

    /// Lets go of everything held under `key` (a vehicle the change feed says has changed).
    pub async fn invalidate(&self, key: &CacheKey) {
        self.cache.invalidate(key).await;
    }

    /// The entry under `key` that covers `at_us`, if held and not expired.
    pub async fn get(&self, key: &CacheKey, at_us: i64) -> Option<Arc<LocalEntry>> {
        let held = self.cache.get(key).await?;
        held.covering(at_us, Instant::now()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use actix_web::web::Bytes;

    use crate::cache::RenderedAnswer;
    use crate::domain::Outcome;

    fn entry(start_us: i64, end_us: i64, expires_at: Instant) -> Arc<LocalEntry> {
        versioned(start_us, end_us, expires_at, 0)
    }

    fn versioned(start_us: i64, end_us: i64, expires_at: Instant, version: u64) -> Arc<LocalEntry> {
        let answer = RenderedAnswer {
            outcome: Outcome::Found,
            body: Bytes::from(format!("{{\"start\":{start_us}}}")),
            read_at_ms: 0,
            start_us,
            end_us,
            version,
        };
        Arc::new(LocalEntry::new(answer, expires_at, Source::Redis))
    }

    #[tokio::test]
    async fn an_entry_read_at_a_later_version_lets_the_older_ones_go_and_the_floor_guards_all() {
        let cache = LocalCache::new(1 << 20);
        let floors = crate::cache::Floors::new(Duration::from_secs(60));
        let later = Instant::now() + Duration::from_secs(60);
        cache
            .keep(key(), versioned(0, 100, later, 4), &floors)
            .await;
        cache
            .keep(key(), versioned(200, 300, later, 5), &floors)
            .await;

        assert!(
            cache.get(&key(), 50).await.is_none(),
            "read at 4, the vehicle is at 5"
        );
        assert_eq!(
            cache.get(&key(), 250).await.map(|e| e.answer.version),
            Some(5)
        );

        // The feed announces 6: nothing older is kept from now on.
        floors.raise(crate::domain::VehicleId::parse("3").expect("id"), 6);
        cache.invalidate(&key()).await;
        cache
            .keep(key(), versioned(200, 300, later, 5), &floors)
            .await;
        assert!(cache.get(&key(), 250).await.is_none());
        cache
            .keep(key(), versioned(200, 300, later, 6), &floors)
            .await;
        assert_eq!(
            cache.get(&key(), 250).await.map(|e| e.answer.version),
            Some(6)
        );
    }

    fn key() -> CacheKey {
        CacheKey::new("t", crate::domain::VehicleId::parse("3").expect("id"))
    }

    #[tokio::test]
    async fn every_instant_inside_a_held_segment_is_answered_by_it() {
        let cache = LocalCache::new(1 << 20);
        let later = Instant::now() + Duration::from_secs(60);
        cache.insert(key(), entry(100, 200, later)).await;
        cache.insert(key(), entry(300, i64::MAX, later)).await;
        cache.insert(key(), entry(i64::MIN, 100, later)).await;

        for (at, start) in [
            (i64::MIN, Some(i64::MIN)),
            (99, Some(i64::MIN)),
            (100, Some(100)),
            (199, Some(100)),
            (200, None),
            (299, None),
            (300, Some(300)),
            (i64::MAX - 1, Some(300)),
        ] {
            let got = cache.get(&key(), at).await;
            assert_eq!(got.map(|e| e.answer.start_us), start, "at {at}");
        }
    }

    #[tokio::test]
    async fn a_segment_read_later_replaces_those_it_overlaps_and_expired_ones_go() {
        let cache = LocalCache::new(1 << 20);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        // Current since 100, as read before a change at 150 arrived late.
        cache.insert(key(), entry(100, i64::MAX, later)).await;
        cache.insert(key(), entry(150, i64::MAX, later)).await;
        assert_eq!(
            cache.get(&key(), 120).await.map(|e| e.answer.start_us),
            None
        );
        assert_eq!(
            cache.get(&key(), 170).await.map(|e| e.answer.start_us),
            Some(150)
        );

        cache.insert(key(), entry(0, 50, now)).await;
        assert!(cache.get(&key(), 10).await.is_none(), "past its deadline");
    }
}
