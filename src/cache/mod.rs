//! The two cache tiers, no SQL: this replica's memory (`local`), then Redis, shared by every
//! replica (`redis`). Both hold the same [`RenderedAnswer`] bytes under the same [`CacheKey`]:
//! for a lookup, the vehicle's known segments, each answering every instant inside it.
//!
//! Staleness: an answer carries the time it was read from PostgreSQL, and no tier serves it once
//! `CACHE_TTL_SECS` have passed since then, whichever replica wrote it and whichever serves it.

mod breaker;
mod connection;
mod entry;
mod error;
mod floors;
mod key;
pub mod local;
mod redis;
pub mod topology;

pub use self::error::CacheError;
pub use self::local::{LocalCache, LocalEntry};
pub use self::redis::{Cached, Granted, RedisCache};
pub use entry::{Corrupt, OPEN_END, OPEN_START, RenderedAnswer};
pub use floors::Floors;
pub use key::CacheKey;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How much longer an answer read from PostgreSQL at `read_at_ms` may be served under `ttl`, or
/// `None` once it may not. A read time up to a TTL ahead is another replica's clock running
/// ahead of ours and counts as no age; further ahead, the answer is not to be trusted.
pub fn time_left(read_at_ms: i64, ttl: Duration, now: SystemTime) -> Option<Duration> {
    let age_ms = unix_ms(now).saturating_sub(read_at_ms);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    if age_ms < -ttl_ms || age_ms >= ttl_ms {
        return None;
    }
    Some(ttl - Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_may_be_served_until_the_ttl_has_passed_since_it_was_read() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = unix_ms(now);
        let ttl = Duration::from_secs(60);
        assert_eq!(time_left(ms, ttl, now), Some(ttl));
        assert_eq!(
            time_left(ms - 59_999, ttl, now),
            Some(Duration::from_millis(1))
        );
        assert_eq!(time_left(ms - 60_000, ttl, now), None);
        assert_eq!(
            time_left(ms + 5_000, ttl, now),
            Some(ttl),
            "a writer's clock slightly ahead"
        );
        assert_eq!(
            time_left(ms + 60_001, ttl, now),
            None,
            "implausibly far ahead"
        );
        assert_eq!(time_left(i64::MIN, ttl, now), None);
        assert_eq!(time_left(i64::MAX, ttl, now), None);
    }
}
