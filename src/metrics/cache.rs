//! The lookup and Redis series.

use std::sync::OnceLock;

/// Lookups by where the answer came from, each counted once: `memory_hit`, `redis_hit`, `miss`
/// (read from PostgreSQL), `redis_error` (read from PostgreSQL because Redis failed),
/// `coalesced` (waited for another request's fetch of the same answer), `stale`
/// (`STALE_IF_ERROR_SECS`), `shed` (`LOOKUP_CONCURRENCY_LIMIT`), `error`.
pub const LOOKUPS: &str = "vehicle_state_lookups_total";
/// Where a lookup's answer came from: the `result` label of [`LOOKUPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    MemoryHit,
    RedisHit,
    Miss,
    RedisError,
    Coalesced,
    Stale,
    Shed,
    Error,
}

impl LookupResult {
    pub const ALL: [LookupResult; 8] = [
        LookupResult::MemoryHit,
        LookupResult::RedisHit,
        LookupResult::Miss,
        LookupResult::RedisError,
        LookupResult::Coalesced,
        LookupResult::Stale,
        LookupResult::Shed,
        LookupResult::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LookupResult::MemoryHit => "memory_hit",
            LookupResult::RedisHit => "redis_hit",
            LookupResult::Miss => "miss",
            LookupResult::RedisError => "redis_error",
            LookupResult::Coalesced => "coalesced",
            LookupResult::Stale => "stale",
            LookupResult::Shed => "shed",
            LookupResult::Error => "error",
        }
    }

    /// Counts one lookup with this result, through a handle registered once (a lookup does not
    /// hash its labels into the registry each time).
    pub fn count(self) {
        static HANDLES: OnceLock<[metrics::Counter; 8]> = OnceLock::new();
        let handles = HANDLES.get_or_init(|| {
            Self::ALL.map(|result| metrics::counter!(LOOKUPS, "result" => result.label()))
        });
        handles[self as usize].increment(1);
    }
}

/// How many keys each Redis read of gathered misses (or of a batch request) asked for.
pub const REDIS_BATCH_SIZE: &str = "vehicle_state_redis_batch_size";

/// Redis calls that failed, by operation and kind.
pub const REDIS_ERRORS: &str = "vehicle_state_redis_errors_total";

/// The `operation` label of [`REDIS_ERRORS`].
pub const REDIS_OPERATIONS: [&str; 6] = ["get", "set", "ping", "topology", "quota", "invalidate"];

/// The Redis topology one replica sees, as scraped: `REDIS_MODE` and how many nodes of each
/// role answer (0 and 0 while Redis cannot be reached).
#[derive(Debug, Clone, Copy)]
pub struct RedisNodesGauge {
    pub mode: &'static str,
    pub masters: usize,
    pub replicas: usize,
}

#[cfg(test)]
mod tests {
    use super::LookupResult;

    #[test]
    fn lookup_results_are_listed_in_declaration_order() {
        // `count` indexes its handles by discriminant.
        for (i, result) in LookupResult::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, i, "{}", result.label());
        }
    }
}
