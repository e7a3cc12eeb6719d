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

    /// Whether the failure is every lookup's now, whatever its instant: the replica shed it,
    /// or PostgreSQL cannot answer. Otherwise it is a defect of the rows that one lookup read.
    pub(super) fn is_shared(&self) -> bool {
        match self {
            LookupError::Overloaded(_) => true,
            LookupError::Db(error) => error.is_unavailable(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant, SystemTime};

    use actix_web::web::Bytes;

    use crate::cache::local::Source;
    use crate::cache::{LocalEntry, RenderedAnswer, unix_ms};
    use crate::domain::Outcome;

    const SOURCES: [Source; 4] = [
        Source::Redis,
        Source::Postgres,
        Source::PostgresWithoutRedis,
        Source::Stale,
    ];

    /// A found answer read from PostgreSQL at `read_at`, held until `expires_at`.
    fn entry(read_at: SystemTime, expires_at: Instant) -> Arc<LocalEntry> {
        let answer = RenderedAnswer {
            outcome: Outcome::Found,
            body: Bytes::from_static(br#"{"state":"sold"}"#),
            read_at_ms: unix_ms(read_at),
            start_us: crate::cache::OPEN_START,
            end_us: crate::cache::OPEN_END,
            version: 0,
        };
        Arc::new(LocalEntry::new(answer, expires_at, Source::Redis))
    }

    #[test]
    fn the_request_that_fetched_an_answer_counts_it_by_where_it_came_from() {
        for (source, cache, result) in [
            (Source::Redis, "HIT", "redis_hit"),
            (Source::Postgres, "MISS", "miss"),
            (Source::PostgresWithoutRedis, "MISS", "redis_error"),
            (Source::Stale, "STALE", "stale"),
        ] {
            let (status, counted_as) = counted(true, source);

            assert_eq!(
                (status.as_str(), counted_as.label()),
                (cache, result),
                "{source:?}"
            );
        }
    }

    #[test]
    fn a_request_that_waited_on_another_fetch_is_a_coalesced_hit_unless_the_answer_is_stale() {
        for source in SOURCES {
            let waited = counted(false, source);

            if source == Source::Stale {
                assert_eq!(waited, (CacheStatus::Stale, LookupResult::Stale));
            } else {
                assert_eq!(
                    waited,
                    (CacheStatus::Hit, LookupResult::Coalesced),
                    "{source:?}"
                );
            }
            assert_ne!(
                counted(true, source).1,
                LookupResult::Coalesced,
                "the request that fetched {source:?} shared nothing"
            );
        }
    }

    #[test]
    fn a_shed_or_an_outage_is_every_instants_failure_and_a_defect_only_its_own() {
        assert!(LookupError::Overloaded(8).is_shared());
        assert!(LookupError::Db(DbError::Down).is_shared());
        assert!(LookupError::crashed().is_shared());
        assert!(!LookupError::Db(DbError::Query(sqlx::Error::RowNotFound)).is_shared());
    }

    #[test]
    fn a_shed_lookup_counts_as_shed_and_every_database_failure_as_an_error() {
        let shed = LookupError::Overloaded(8);
        let down = LookupError::Db(DbError::Down);
        let defect = LookupError::Db(DbError::Query(sqlx::Error::RowNotFound));

        assert_eq!(shed.counted_as(), LookupResult::Shed);
        assert_eq!(down.counted_as(), LookupResult::Error);
        assert_eq!(defect.counted_as(), LookupResult::Error);
        assert_eq!(LookupError::crashed().counted_as(), LookupResult::Error);
    }

    #[test]
    fn a_lookup_whose_task_crashed_may_be_retried() {
        let crashed = LookupError::crashed();

        assert!(
            matches!(&*crashed, LookupError::Db(error) if error.is_unavailable()),
            "{crashed:?} would be a 500, not a 503"
        );
    }

    #[test]
    fn every_cache_status_is_a_distinct_header_value() {
        let statuses = [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Stale];

        for status in statuses {
            let text = status.as_str();
            assert!(
                actix_web::http::header::HeaderValue::from_str(text).is_ok(),
                "{text}"
            );
        }
        let mut texts: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), statuses.len(), "{texts:?}");
    }

    #[test]
    fn an_answer_served_now_is_fresh_for_what_is_left_until_its_deadline() {
        let ttl_left = Duration::from_secs(30);
        let before = Instant::now();

        let served = Served::new(
            entry(SystemTime::now(), before + ttl_left),
            CacheStatus::Miss,
        );

        assert!(served.fresh_for <= ttl_left, "{:?}", served.fresh_for);
        // Less only by the time this test took to get here.
        assert!(
            served.fresh_for >= ttl_left.saturating_sub(before.elapsed()),
            "{:?}",
            served.fresh_for
        );
        assert_eq!(served.cache, CacheStatus::Miss);
    }

    #[test]
    fn an_answer_past_its_deadline_is_fresh_for_no_time_at_all() {
        let deadline = Instant::now()
            .checked_sub(Duration::from_secs(5))
            .expect("the clock has run for 5 s");

        let served = Served::new(entry(SystemTime::now(), deadline), CacheStatus::Stale);

        assert_eq!(served.fresh_for, Duration::ZERO);
    }

    #[test]
    fn the_age_is_whole_seconds_since_postgresql_was_asked_and_never_negative() {
        let now = SystemTime::now();
        let aged = |read_at: SystemTime| {
            Served::new(entry(read_at, Instant::now()), CacheStatus::Stale).age_secs()
        };

        // Rounded down, as `Age` is: 90.6 s is 90.
        assert_eq!(aged(now - Duration::from_millis(90_600)), 90);
        assert_eq!(aged(now - Duration::from_millis(400)), 0);
        // Another replica's clock, running ahead of this one's, wrote the answer.
        assert_eq!(aged(now + Duration::from_secs(3)), 0);
    }
}
