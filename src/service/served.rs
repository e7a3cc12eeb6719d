//! What a lookup comes to: an answer with where it came from and how long it stays fresh, or why
//! there is none; and how each is counted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cache::local::Source;
use crate::cache::{LocalEntry, unix_ms};
use crate::db::DbError;
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

impl LookupError {
    /// A task that was to answer went away (it panicked, or the runtime is stopping): the
    /// lookup cannot be answered now, and may be retried.
    pub fn crashed() -> Arc<Self> {
        Arc::new(LookupError::Db(DbError::Unavailable(
            sqlx::Error::WorkerCrashed,
        )))
    }

    /// How a lookup that failed so is counted in `vehicle_state_lookups_total`.
    pub(super) fn counted_as(&self) -> LookupResult {
        match self {
            LookupError::Overloaded(_) => LookupResult::Shed,
            LookupError::Db(_) => LookupResult::Error,
        }
    }
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
    /// An entry served now: fresh for what is left until its deadline.
    pub(super) fn new(entry: Arc<LocalEntry>, cache: CacheStatus) -> Self {
        let fresh_for = entry.expires_at.saturating_duration_since(Instant::now());
        Self {
            entry,
            cache,
            fresh_for,
        }
    }

    /// Seconds since the answer was read from PostgreSQL (for `Age` on a stale answer).
    pub fn age_secs(&self) -> u64 {
        let age_ms = unix_ms(SystemTime::now()).saturating_sub(self.entry.answer.read_at_ms);
        u64::try_from(age_ms / 1000).unwrap_or(0)
    }
}

/// What an entry fetched for this request is, by where it came from: `X-Cache` and the lookup
/// result it counts as.
pub(super) fn arrived(source: Source) -> (CacheStatus, LookupResult) {
    match source {
        Source::Stale => (CacheStatus::Stale, LookupResult::Stale),
        Source::Postgres => (CacheStatus::Miss, LookupResult::Miss),
        Source::PostgresWithoutRedis => (CacheStatus::Miss, LookupResult::RedisError),
        Source::Redis => (CacheStatus::Hit, LookupResult::RedisHit),
    }
}

/// What an entry a request waited for is: a request that waited on another's fetch
/// (`fetched_here` false) shared it, and counts as a coalesced HIT, unless the answer is stale,
/// which is STALE whoever fetched it.
pub(super) fn counted(fetched_here: bool, source: Source) -> (CacheStatus, LookupResult) {
    match (fetched_here, source) {
        (false, source) if source != Source::Stale => (CacheStatus::Hit, LookupResult::Coalesced),
        (_, source) => arrived(source),
    }
}
