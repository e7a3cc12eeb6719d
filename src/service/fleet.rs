//! The fleet at an instant: counts per state, from PostgreSQL's `fleet_sums`, kept in this
//! replica's memory for `CACHE_TTL_SECS` from the read.
//!
//! Memory only, not Redis: a count is one statement of about a millisecond whatever the fleet's
//! size, and each replica reads an instant at most once per TTL (concurrent askers share one
//! read), so a shared tier would save little and cost a round trip on every hit.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{CacheStatus, LookupError};
use crate::db::{Database, ListScan, OPEN_BY_START_MAX};
use crate::domain::Timestamp;
use crate::domain::fleet::{FleetCounts, FleetVehicles, list_page};
use crate::metrics::FLEET_COUNTS;

/// Instants whose counts this replica keeps at most (`now` included): a few hundred bytes each.
const FLEET_CACHE_ENTRIES: u64 = 100_000;
/// Bytes of pages of the list this replica keeps at most (weighed as their JSON's rough size).
const FLEET_PAGES_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// The fewest ids a page's first window spans.
const MIN_WINDOW: u64 = 1024;
/// The first window when the counts that size it could not be read.
const FALLBACK_WINDOW: u32 = 65_536;

/// A page of the list asked for: the state, the instant, the last id of the page before (none:
/// the first page) and how many.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub state: String,
    pub at: FleetInstant,
    pub after: Option<i32>,
    pub limit: u16,
}

/// A page as read, and when; and as served.
pub type PageRead = Held<FleetVehicles>;
pub type PageServed = Served<FleetVehicles>;

/// What a count is asked for: an instant, or `now` (the server's clock when it is read, and kept
/// like any other answer: a client asking `now` gets counts at most `CACHE_TTL_SECS` old, whose
/// `at` says when).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FleetInstant {
    At(Timestamp),
    Now,
}

/// What was read (counts, or a page of the list), and when.
#[derive(Debug)]
pub struct Held<T> {
    pub value: T,
    read_at: Instant,
    /// The second of this replica's clock it was read in, for [`Changes::since`].
    read_second: u64,
}

impl<T> Held<T> {
    fn new(value: T, read_at: Instant, started: Instant) -> Arc<Self> {
        Arc::new(Self {
            value,
            read_at,
            read_second: read_at.saturating_duration_since(started).as_secs(),
        })
    }
}

/// A read a miss makes, boxed (see [`Fleet::held_or_read`]).
type Read<'a, T> = Pin<Box<dyn Future<Output = Result<T, LookupError>> + Send + 'a>>;

/// Counts as read, and when.
pub type FleetRead = Held<FleetCounts>;

/// The instants of the changes the feed announced, per second of arrival over the last TTL: for
/// each second, the earliest instant changed. Counts read in a second at or before one whose
/// earliest change is at or before their instant no longer hold. A second is as fine as it
/// needs to be: a change announced in the second of a read drops it (it may have come after).
#[derive(Debug, Default)]
struct Changes {
    /// (second since start, earliest change's microseconds), oldest first.
    seconds: VecDeque<(u64, i64)>,
}

impl Changes {
    fn announced(&mut self, second: u64, micros: i64, keep_secs: u64) {
        match self.seconds.back_mut() {
            Some((last, earliest)) if *last == second => *earliest = (*earliest).min(micros),
            _ => self.seconds.push_back((second, micros)),
        }
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| s + keep_secs < second)
        {
            self.seconds.pop_front();
        }
    }

    /// Whether a change at or before `micros` was announced in `second` or after.
    fn since(&self, second: u64, micros: i64) -> bool {
        self.seconds
            .iter()
            .rev()
            .take_while(|(s, _)| *s >= second)
            .any(|(_, earliest)| *earliest <= micros)
    }
}

/// What is served: from memory or read now, and for how long more it may be reused.
#[derive(Debug, Clone)]
pub struct Served<T> {
    pub read: Arc<Held<T>>,
    pub cache: CacheStatus,
    pub fresh_for: Duration,
}

/// Counts as served.
pub type FleetServed = Served<FleetCounts>;

/// The fleet's counts and the memory they are kept in.
pub struct Fleet {
    db: Database,
    cache: moka::future::Cache<FleetInstant, Arc<FleetRead>>,
    pages: moka::future::Cache<PageKey, Arc<PageRead>>,
    ttl: Duration,
    /// The lookups' `LOOKUP_CONCURRENCY_LIMIT`, shared: a count is a statement like a lookup's.
    limit: Arc<Semaphore>,
    max_in_flight: u32,
    /// When the last warning of inexact sums was logged (at most one a TTL).
    warned: std::sync::Mutex<Option<Instant>>,
    /// What the change feed announced, when this replica follows it.
    changes: std::sync::Mutex<Changes>,
    /// This replica's start: seconds of [`Changes`] count from it.
    started: Instant,
}

impl Fleet {
    pub(super) fn new(
        db: Database,
        ttl: Duration,
        limit: Arc<Semaphore>,
        max_in_flight: u32,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(FLEET_CACHE_ENTRIES)
            .time_to_live(ttl)
            .build();
        let pages = moka::future::Cache::builder()
            .max_capacity(FLEET_PAGES_CACHE_BYTES)
            .weigher(|key: &PageKey, read: &Arc<PageRead>| {
                let vehicles = read.value.vehicles.len();
                u32::try_from(key.state.len() + 128 + 96 * vehicles).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Self {
            db,
            cache,
            pages,
            ttl,
            limit,
            max_in_flight,
            warned: std::sync::Mutex::new(None),
            changes: std::sync::Mutex::new(Changes::default()),
            started: Instant::now(),
        }
    }

    /// The change feed announced a change at `at`: counts at `at` and later, and any at `now`,
    /// read before it are no longer served.
    pub fn changed_at(&self, at: Timestamp) {
        let second = self.started.elapsed().as_secs();
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        changes.announced(second, at.unix_micros(), self.ttl.as_secs() + 1);
    }

    /// Whether counts held may no longer be served: read `CACHE_TTL_SECS` ago or more (memory's
    /// own expiry counts from the insert, which comes after the read), or before a change they
    /// no longer hold after; for `now`, before any change.
    fn outdated<T>(&self, key: FleetInstant, read: &Held<T>) -> bool {
        if read.read_at.elapsed() >= self.ttl {
            return true;
        }
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let up_to = match key {
            FleetInstant::At(at) => at.unix_micros(),
            FleetInstant::Now => i64::MAX,
        };
        changes.since(read.read_second, up_to)
    }

    /// What `cache` holds for `key` at `instant`, if it may still be served; else `read`, once
    /// however many ask at once, kept (a failed read is not). Stamped before `read` starts: a
    /// change announced while it runs drops it, and its TTL runs from there. `read` makes the
    /// read boxed, on a miss only (an allocation a miss): a page's read asks counts through here
    /// too, and the futures nested in place overflowed a worker thread's stack in a debug build.
    async fn held_or_read<'r, K, T>(
        &self,
        cache: &moka::future::Cache<K, Arc<Held<T>>>,
        key: K,
        instant: FleetInstant,
        read: impl FnOnce() -> Read<'r, T>,
    ) -> Result<Served<T>, Arc<LookupError>>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        if let Some(held) = cache.get(&key).await {
            if !self.outdated(instant, &held) {
                // A hit: one lookup in memory, not a second through `entry`.
                return Ok(self.served(held, CacheStatus::Hit));
            }
            cache.invalidate(&key).await;
        }
        let entry = cache
            .entry(key)
            .or_try_insert_with(async {
                let read_at = Instant::now();
                Ok::<_, LookupError>(Held::new(read().await?, read_at, self.started))
            })
            .await?;
        let status = if entry.is_fresh() {
            CacheStatus::Miss
        } else {
            CacheStatus::Hit
        };
        Ok(self.served(entry.into_value(), status))
    }

    /// A page of the vehicles in a state at an instant: memory first, as counts are (dropped by
    /// the same changes); on a miss one statement, however many ask at once, shed at once when
    /// `LOOKUP_CONCURRENCY_LIMIT` statements are in flight. At `now` the page's instant is the
    /// server's clock at the read, which its `next` cursor carries to the pages after it.
    pub async fn vehicles(&self, key: PageKey) -> Result<PageServed, Arc<LookupError>> {
        let instant = key.at;
        let read = || -> Read<'_, _> {
            Box::pin(async {
                let at = match key.at {
                    FleetInstant::At(at) => at,
                    FleetInstant::Now => Timestamp::now(),
                };
                let scan = self.scan(&key, at).await;
                let _permit = self
                    .limit
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| LookupError::Overloaded(self.max_in_flight))?;
                // One more than the page: whether there is a next one.
                let (vehicles, from_segments) = self
                    .db
                    .fleet_vehicles(&key.state, at, scan, key.limit.saturating_add(1))
                    .await?;
                self.counted(from_segments);
                Ok(list_page(key.state.clone(), at, key.limit, vehicles))
            })
        };
        self.held_or_read(&self.pages, key.clone(), instant, read)
            .await
    }

    /// How a page's read goes, from the counts (in memory, or one statement each): the vehicles
    /// in the state at T and in the whole fleet give the ids a page spans (twice that for the
    /// first window), and few in the state reads the open segments by their start. Without
    /// counts (they failed), a window of [`FALLBACK_WINDOW`] ids, in id order.
    async fn scan(&self, key: &PageKey, at: Timestamp) -> ListScan {
        let in_state = self.counts(FleetInstant::At(at)).await.ok();
        let fleet = self.counts(FleetInstant::At(Timestamp::last())).await.ok();
        let (Some(in_state), Some(fleet)) = (in_state, fleet) else {
            return ListScan {
                after: key.after,
                window: FALLBACK_WINDOW,
                open_by_start: false,
            };
        };
        let in_state = in_state.read.value.states.get(&key.state);
        let fleet = fleet.read.value.total;
        let page = u64::from(key.limit) + 1;
        let window = (2 * page).saturating_mul(fleet) / in_state.max(1);
        ListScan {
            after: key.after,
            window: u32::try_from(window.max(MIN_WINDOW)).unwrap_or(u32::MAX),
            open_by_start: in_state < OPEN_BY_START_MAX,
        }
    }

    /// The counts at each of `instants`, in order: those in memory from there, the rest in one
    /// statement (shed at once when `LOOKUP_CONCURRENCY_LIMIT` statements are in flight) and
    /// kept, so a series and the counts at its instants share what they read. `Hit` when every
    /// point came from memory; fresh for as long as the oldest point is.
    pub async fn series(
        &self,
        instants: &[Timestamp],
    ) -> Result<(Vec<Arc<FleetRead>>, CacheStatus, Duration), Arc<LookupError>> {
        let mut reads = Vec::with_capacity(instants.len());
        let mut missing = Vec::new();
        for (i, at) in instants.iter().enumerate() {
            let held = self
                .cache
                .get(&FleetInstant::At(*at))
                .await
                .filter(|held| !self.outdated(FleetInstant::At(*at), held));
            if held.is_none() {
                missing.push(i);
            }
            reads.push(held);
        }
        let cache = if missing.is_empty() {
            CacheStatus::Hit
        } else {
            let _permit = self
                .limit
                .clone()
                .try_acquire_owned()
                .map_err(|_| Arc::new(LookupError::Overloaded(self.max_in_flight)))?;
            let asked: Vec<Timestamp> = missing.iter().map(|&i| instants[i]).collect();
            // Before the statement's snapshot: a change announced while it runs drops its counts,
            // and their TTL runs from here.
            let read_at = Instant::now();
            let (counts, from_sums) = self
                .db
                .fleet_counts(&asked)
                .await
                .map_err(|e| Arc::new(LookupError::Db(e)))?;
            self.counted(from_sums);
            for (&i, counts) in missing.iter().zip(counts) {
                let read = FleetRead::new(counts, read_at, self.started);
                self.cache
                    .insert(FleetInstant::At(instants[i]), read.clone())
                    .await;
                reads[i] = Some(read);
            }
            CacheStatus::Miss
        };
        // Every slot is filled: from memory, or by the statement (one set of counts per instant).
        let reads: Vec<Arc<FleetRead>> = reads.into_iter().flatten().collect();
        if reads.len() != instants.len() {
            return Err(Arc::new(LookupError::Db(crate::db::DbError::Query(
                sqlx::Error::Protocol("fewer counts than instants asked".to_owned()),
            ))));
        }
        let fresh_for = reads
            .iter()
            .map(|read| self.ttl.saturating_sub(read.read_at.elapsed()))
            .min()
            .unwrap_or(self.ttl);
        Ok((reads, cache, fresh_for))
    }

    /// Counts a statement that counted, by where its counts came from, and warns when the table
    /// had to be read.
    fn counted(&self, from_sums: bool) {
        let from = if from_sums { "sums" } else { "table" };
        metrics::counter!(FLEET_COUNTS, "from" => from).increment(1);
        if !from_sums {
            self.warn_inexact();
        }
    }

    /// Counted from the table: exact, but a scan. Said at most once a TTL, with what to do.
    fn warn_inexact(&self) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= self.ttl) {
            *warned = Some(Instant::now());
            tracing::warn!(
                "the fleet's sums are not exact (something other than ingest wrote to \"stateLogs\"): counting from the table itself, exact but slow; run `vehicle-state rebuild-fleet`"
            );
        }
    }

    /// Memory first; on a miss, one read however many ask at once, shed at once (not queued)
    /// when `LOOKUP_CONCURRENCY_LIMIT` statements are in flight. A failed read is not kept.
    pub async fn counts(&self, at: FleetInstant) -> Result<FleetServed, Arc<LookupError>> {
        let read = || -> Read<'_, _> {
            Box::pin(async move {
                let _permit = self
                    .limit
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| LookupError::Overloaded(self.max_in_flight))?;
                let instant = match at {
                    FleetInstant::At(at) => at,
                    FleetInstant::Now => Timestamp::now(),
                };
                let (counts, from_sums) = self.db.fleet_counts(&[instant]).await?;
                // One instant asked, one set of counts back (`db::fleet_counts` gives one each).
                let counts = counts.into_iter().next().ok_or_else(|| {
                    LookupError::Db(crate::db::DbError::Query(sqlx::Error::Protocol(
                        "no counts for the instant asked".to_owned(),
                    )))
                })?;
                self.counted(from_sums);
                Ok(counts)
            })
        };
        self.held_or_read(&self.cache, at, at, read).await
    }

    /// What was read, as served now: fresh for what is left of its TTL.
    fn served<T>(&self, read: Arc<Held<T>>, cache: CacheStatus) -> Served<T> {
        let fresh_for = self.ttl.saturating_sub(read.read_at.elapsed());
        Served {
            read,
            cache,
            fresh_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_outdated_by_a_change_at_or_before_their_instant_announced_since_their_read() {
        let mut changes = Changes::default();
        changes.announced(10, 500, 61);
        changes.announced(10, 300, 61);
        changes.announced(12, 900, 61);

        assert!(changes.since(10, 300), "the second of the read counts");
        assert!(changes.since(10, 1_000));
        assert!(
            !changes.since(10, 299),
            "every change came after the instant"
        );
        assert!(
            !changes.since(11, 899),
            "only the change at 900 came after the read"
        );
        assert!(changes.since(11, 900));
        assert!(!changes.since(13, i64::MAX), "nothing announced since");

        changes.announced(80, 5_000, 61);
        assert!(
            !changes.since(11, 900),
            "what is older than the TTL is let go"
        );
        assert!(changes.since(11, 5_000));
        assert_eq!(changes.seconds.len(), 1);
    }
}
