//! The lookup with its caches: the one place that decides HIT or MISS.

mod batch;
pub mod changes;
mod fetch;
pub mod fleet;
mod flight;
mod gather;

mod served;

pub use served::{CacheStatus, LookupError, Served};

use flight::{Flights, Joined};
use gather::Gatherer;
use served::{arrived, counted};

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix_web::web::Bytes;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::cache::local::Source;
use crate::cache::{
    CacheKey, Cached, LocalCache, LocalEntry, OPEN_END, OPEN_START, RedisCache, RenderedAnswer,
    unix_ms,
};
use crate::db::{Database, DbError};
use crate::domain::history::{HistoryPage, HistoryQuery};
use crate::domain::{Outcome, Timestamp, VehicleId};
use crate::metrics::LookupResult;
use crate::telemetry::otel;

/// The lookup path and everything it reads from.
pub struct StateService {
    pub db: Database,
    pub redis: Arc<RedisCache>,
    pub local: LocalCache,
    /// One permit per lookup in flight past memory (`LOOKUP_CONCURRENCY_LIMIT`).
    limit: Arc<Semaphore>,
    max_in_flight: u32,
    /// Where single misses are gathered into batches; none with `LOOKUP_BATCH_MAX=1`.
    gatherer: Option<Arc<Gatherer>>,
    /// The fetches past memory in flight: one per key, however many requests ask.
    flights: Arc<Flights<fetch::Fetched>>,
    /// The fleet's counts per state at an instant, and the memory they are kept in.
    pub fleet: fleet::Fleet,
}

/// How concurrent misses are gathered: `LOOKUP_BATCH_MAX` and `LOOKUP_BATCHES_IN_FLIGHT`.
#[derive(Debug, Clone, Copy)]
pub struct Gathering {
    pub max_batch: usize,
    pub in_flight: usize,
}

impl StateService {
    /// Starts the gathering task (call within the runtime).
    pub fn new(
        db: Database,
        redis: Arc<RedisCache>,
        local: LocalCache,
        max_in_flight: u32,
        gathering: Gathering,
    ) -> Self {
        let permits = usize::try_from(max_in_flight)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        let gatherer = (gathering.max_batch > 1).then(|| {
            Arc::new(Gatherer::start(
                db.clone(),
                redis.clone(),
                gathering.max_batch,
                gathering.in_flight,
                permits,
            ))
        });
        let limit = Arc::new(Semaphore::new(permits));
        Self {
            fleet: fleet::Fleet::new(db.clone(), redis.ttl(), limit.clone(), max_in_flight),
            db,
            redis,
            local,
            limit,
            max_in_flight,
            gatherer,
            flights: Flights::new(),
        }
    }

    /// Memory first; then, once per key however many requests ask at the same moment, Redis,
    /// and on a miss, a Redis failure or an unreadable value, PostgreSQL, whose answer is written
    /// back to Redis before it is returned. A Redis failure is logged and counted, never passed
    /// to the client. Only the request that starts a fetch takes a permit of the concurrency
    /// limit; without one it fails at once (and so do the requests waiting on it).
    pub async fn vehicle_state(
        &self,
        id: VehicleId,
        at: Timestamp,
    ) -> Result<Served, Arc<LookupError>> {
        let key = self.redis.key(id);
        self.cached(key, at.unix_micros(), false, move |service, miss_key| {
            let (db, redis, gatherer) = (
                service.db.clone(),
                service.redis.clone(),
                service.gatherer.clone(),
            );
            async move {
                match gatherer {
                    Some(gatherer) => gatherer.fetch(miss_key, id, at).await,
                    // LOOKUP_BATCH_MAX=1: every miss on its own, at once.
                    None => {
                        let mut one = fetch::fetch_many(&db, &redis, &[(miss_key, id, at)]).await;
                        one.pop().unwrap_or_else(|| Err(LookupError::crashed()))
                    }
                }
            }
        })
        .await
    }

    /// A page of a vehicle's timeline, cached exactly like a lookup (its own key, the same TTL
    /// bound, single flight, shedding and stale-if-error).
    pub async fn history(&self, query: HistoryQuery) -> Result<Served, Arc<LookupError>> {
        let key = self.redis.history_key(&query);
        let id = query.id;
        let load = move |db: Database| async move {
            let (page, version) = db.history(&query).await?;
            Ok(match page {
                HistoryPage::Found(page) => (
                    Outcome::Found,
                    // A struct of strings, integers and instants always serialises.
                    serde_json::to_vec(&page).unwrap_or_default(),
                    version,
                ),
                HistoryPage::UnknownVehicle => (Outcome::UnknownVehicle, Vec::new(), version),
            })
        };
        // A page's answer covers every instant: any will do. Pages are not dropped from memory
        // when their vehicle changes (they are not found by vehicle): each is checked against
        // the vehicle's floor instead.
        self.cached(key, 0, true, move |service, key| {
            let fetch = fetch(service.db.clone(), service.redis.clone(), key, id, load);
            async move { fetch.await.map_err(Arc::new) }
        })
        .await
    }

    /// What the change feed announced: vehicle `id` is at `version` now. Its floor rises first,
    /// then its segments leave memory: a fetch that read it before the change and lands in
    /// between finds the floor when it checks after inserting (see `cached`). Whether
    /// the announcement was news to this replica.
    pub async fn changed(&self, id: VehicleId, version: u64) -> bool {
        let news = self.redis.floors().raise(id, version);
        if news {
            self.local.invalidate(&self.redis.key(id)).await;
        }
        news
    }

    /// The answer under `key` that covers the instant `at_us`: memory, then the future `miss`
    /// makes (Redis, then PostgreSQL, written back to Redis), once per key however many ask at
    /// the same moment. A request that waited on another's fetch and finds its instant outside
    /// what that fetch brought (another segment of the same vehicle) looks in memory again and
    /// then joins, or leads, the key's next fetch: the misses of one vehicle take turns, so a
    /// segment is read once however many instants inside it are asked at once.
    ///
    /// What a fetch brings is kept in memory on second sight ([`Source::kept_in_memory`]): keys
    /// asked once (most misses) cost no insert into memory and evict nothing from it; a key
    /// asked again costs one Redis read more.
    ///
    /// `miss` is called only on a miss, and its future is boxed then: a memory hit neither
    /// clones what a fetch needs nor carries the fetch's (large) state in its own future, which
    /// actix moves several times per request.
    ///
    /// With `check_floor`, a memory hit is checked against its vehicle's floor (timeline pages,
    /// which the change feed cannot find by vehicle); a lookup's segments are dropped from
    /// memory when their vehicle changes, so a hit needs no check. Either way, an entry is kept
    /// in memory only if no newer version is known once it is in.
    async fn cached<M, F>(
        &self,
        key: CacheKey,
        at_us: i64,
        check_floor: bool,
        miss: M,
    ) -> Result<Served, Arc<LookupError>>
    where
        M: FnOnce(&Self, CacheKey) -> F,
        F: Future<Output = fetch::Fetched> + Send + 'static,
    {
        if let Some(entry) = self.local.get(&key, at_us).await
            && (!check_floor || self.redis.floors().admit(&key, &entry.answer))
        {
            LookupResult::MemoryHit.count();
            return Ok(Served::new(entry, CacheStatus::Hit));
        }
        let fetch = Box::pin(miss(self, key.clone()));
        // A miss runs as a task of its own: if the client that started the fetch goes away, the
        // fetch goes on, and the requests waiting on it (or arriving after) still share it
        // instead of starting the query again.
        let (local, flights) = (self.local.clone(), self.flights.clone());
        let floors = self.redis.floors().clone();
        let (limit, max_in_flight) = (self.limit.clone(), self.max_in_flight);
        let (entry, fetched_here) = tokio::spawn(
            async move {
                let mut turns = 0;
                let landing = loop {
                    match flights.join(&key) {
                        Joined::Lead(landing) => break Some(landing),
                        Joined::Follow(landing) => {
                            match flight::followed(landing)
                                .await
                                .unwrap_or_else(|| Err(LookupError::crashed()))
                            {
                                Ok(entry) if entry.answer.covers(at_us) => {
                                    return Ok((entry, false));
                                }
                                Ok(_) => {}
                                // An outage or a shed is every instant's; a defect in the rows
                                // of another instant is not this one's: it takes its turn.
                                Err(error) if error.is_shared() => return Err(error),
                                Err(_) => {}
                            }
                        }
                    }
                    // Another segment of this vehicle came: it may have been kept in memory,
                    // beside others fetched meanwhile.
                    if let Some(entry) = local.get(&key, at_us).await
                        && (!check_floor || floors.admit(&key, &entry.answer))
                    {
                        return Ok((entry, false));
                    }
                    turns += 1;
                    if turns == MAX_TURNS {
                        // So many instants of one vehicle at once: fetch this one alone.
                        break None;
                    }
                };
                // A fetch that landed between this request's miss and its flight kept its
                // answer in memory.
                if let Some(entry) = local.get(&key, at_us).await
                    && (!check_floor || floors.admit(&key, &entry.answer))
                {
                    if let Some(landing) = landing {
                        landing.land(Ok(entry.clone()));
                    }
                    return Ok((entry, false));
                }
                let fetched = match limit.try_acquire_owned() {
                    Ok(_permit) => fetch.await,
                    Err(_) => Err(Arc::new(LookupError::Overloaded(max_in_flight))),
                };
                if let Ok(entry) = &fetched
                    && entry.source.kept_in_memory()
                {
                    local.keep(key, entry.clone(), &floors).await;
                }
                if let Some(landing) = landing {
                    landing.land(fetched.clone());
                }
                fetched.map(|entry| (entry, true))
            }
            // The fetch's spans belong to the request that started it.
            .instrument(otel::current()),
        )
        .await
        .unwrap_or_else(|_| Err(LookupError::crashed()))
        .inspect_err(|error| error.counted_as().count())?;
        let (cache, result) = counted(fetched_here, entry.source);
        if result == LookupResult::Coalesced {
            otel::note("waited for another request's fetch (single flight)");
        }
        result.count();
        Ok(Served::new(entry, cache))
    }
}

/// How many fetches of one vehicle a miss waits for, each bringing another segment than its
/// own, before it fetches on its own.
const MAX_TURNS: u32 = 8;

/// One key past memory: Redis, then `load` from PostgreSQL, written back (the timeline's path;
/// lookups go through [`fetch::fetch_many`], gathered).
async fn fetch<L, F>(
    db: Database,
    redis: Arc<RedisCache>,
    key: CacheKey,
    id: VehicleId,
    load: L,
) -> Result<Arc<LocalEntry>, LookupError>
where
    L: FnOnce(Database) -> F,
    F: Future<Output = Result<(Outcome, Vec<u8>, u64), DbError>>,
{
    // Taken before asking, so memory never keeps the answer longer than Redis does.
    let asked = Instant::now();
    let mut stale = None;
    let mut redis_failed = false;
    match redis.get(&key).await {
        // Read before a change this replica knows of: as if absent.
        Ok(Cached::Fresh(answer, _) | Cached::Stale(answer))
            if !redis.floors().admit(&key, &answer) => {}
        Ok(Cached::Fresh(answer, remaining)) => {
            let expires_at = asked + remaining;
            return Ok(Arc::new(LocalEntry::new(answer, expires_at, Source::Redis)));
        }
        Ok(Cached::Stale(answer)) => stale = Some(answer),
        Ok(Cached::Absent) => {}
        Err(error) => {
            redis_failed = true;
            if let Some(errors) = redis.record_error("get", &error) {
                tracing::warn!(error = %crate::telemetry::chain(&error), key = key.as_str(), errors, "cache read failed; asking PostgreSQL");
            }
        }
    }
    // Taken before the query, so the recorded age errs on the old side.
    let read_at = SystemTime::now();
    let started = Instant::now();
    let lookup = load(db).await.inspect_err(|error| {
        metrics::counter!(crate::metrics::DB_ERRORS, "kind" => error.kind()).increment(1);
    });
    let lookup = match lookup {
        Ok(lookup) => lookup,
        Err(error) if error.is_unavailable() => {
            let Some(answer) = stale else {
                return Err(error.into());
            };
            if matches!(error, DbError::Down) {
                // The outage was logged once, when it was found.
                tracing::debug!(
                    key = key.as_str(),
                    "PostgreSQL is known down; serving a stale answer (STALE_IF_ERROR_SECS)"
                );
            } else {
                tracing::warn!(error = %crate::telemetry::chain(&error), key = key.as_str(), "PostgreSQL cannot answer; serving a stale answer (STALE_IF_ERROR_SECS)");
            }
            // Expired on arrival: memory hands it to the requests waiting now, and keeps it for
            // nobody else, so the next request asks PostgreSQL again.
            return Ok(Arc::new(LocalEntry::new(
                answer,
                Instant::now(),
                Source::Stale,
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let (outcome, body, version) = lookup;
    let answer = RenderedAnswer {
        outcome,
        body: Bytes::from(body),
        read_at_ms: unix_ms(read_at),
        start_us: OPEN_START,
        end_us: OPEN_END,
        version,
    };
    if let Err(error) = redis.put(&key, id, &answer).await {
        // In no cache but memory, which then keeps it at once.
        redis_failed = true;
        if let Some(errors) = redis.record_error("set", &error) {
            tracing::warn!(error = %crate::telemetry::chain(&error), key = key.as_str(), errors, "cache write failed");
        }
    }
    let expires_at = started + redis.ttl();
    let source = if redis_failed {
        Source::PostgresWithoutRedis
    } else {
        Source::Postgres
    };
    Ok(Arc::new(LocalEntry::new(answer, expires_at, source)))
}
