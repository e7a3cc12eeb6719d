//! Redis: answers shared by every replica, kept for `CACHE_TTL_SECS`.
//!
//! Redis only speeds answers up. Every call is bounded by `REDIS_TIMEOUT_MS` (pool wait and
//! connecting included) and its failure is returned to the caller, which logs it and asks
//! PostgreSQL instead. Broken connections are replaced by the pool, so the cache comes back by
//! itself when Redis does.
//!
//! One multiplexed connection carries any number of concurrent commands, so each thread that
//! calls Redis (each HTTP worker) holds one of its own, made on its own runtime, and uses it until
//! a call fails: its replies then wake only the thread that asked (a connection shared by all
//! workers has its driver on one runtime, and every round trip woke another thread and back).
//! Taking a connection from deadpool-redis for every call would add the pool's PING round trip
//! to every lookup, so the pool makes them (within `REDIS_TIMEOUT_MS`) and hands them over. At
//! most `REDIS_POOL_MAX_SIZE` are held; a thread beyond that shares the newest one. A call that
//! cannot reach Redis retires every connection made before it, on every thread: each thread's
//! next call makes a new one.
//!
//! After a failure, Redis is left alone for `REDIS_RETRY_INTERVAL_MS`: calls fail at once
//! instead of each waiting out the timeout on a Redis that hangs, then one call tries it again
//! for everyone. So a dead or hanging Redis costs a lookup nothing, and at most one lookup per
//! interval pays the timeout.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use actix_web::web::Bytes;
use anyhow::Context;
use deadpool::Runtime;

use super::topology::{self, Connection, Manager, Nodes, Pool};
use super::{Answer, CacheError, CacheKey, Corrupt, time_left, unix_ms};
use crate::config::{CacheSettings, RedisMode, RedisSettings};
use crate::telemetry::otel;

/// What Redis holds for a key.
#[derive(Debug)]
pub enum Cached {
    /// Servable, for this much longer.
    Fresh(Answer, Duration),
    /// Past the TTL but within `STALE_IF_ERROR_SECS`: only for when PostgreSQL cannot answer.
    Stale(Answer),
    Absent,
}

pub struct RedisCache {
    pool: Pool,
    mode: RedisMode,
    /// Alive as long as the cache, and its identity in a thread's held connections (a `Weak` of
    /// it keeps its address from being reused); those of caches that are gone are dropped.
    alive: Arc<()>,
    /// Connections held by threads now, at most `REDIS_POOL_MAX_SIZE`.
    held: Arc<AtomicUsize>,
    max_held: usize,
    /// The newest connection made, and its generation: for threads beyond `max_held`.
    newest: Mutex<Option<(u64, Connection)>>,
    generations: AtomicU64,
    /// Connections of this generation and older are retired: a call on one could not reach Redis.
    retired: AtomicU64,
    prefix: String,
    ttl: Duration,
    /// TTL plus the stale-if-error window: how long answers are kept.
    keep: Duration,
    timeout: Duration,
    breaker: Breaker,
    errors: AtomicU64,
    /// 0 while Redis is reached; otherwise 1 + the breaker's clock (ms) when a call (or the
    /// start-up check) first could not reach it. The next call that does logs the end of the
    /// outage, once. An atomic, so a call that succeeds pays one load for it.
    unreachable_since: AtomicU64,
}

/// Whether Redis may be asked: closed (0), or open until a moment (ms since `epoch`).
struct Breaker {
    epoch: Instant,
    open_until_ms: AtomicU64,
    interval: Duration,
}

impl Breaker {
    fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            interval,
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` on this clock (0 for a moment before it started).
    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn reopen_at(&self) -> u64 {
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        // Never 0, which means closed.
        self.now_ms().saturating_add(interval).max(1)
    }

    fn is_closed(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) == 0
    }

    /// Whether this call may ask Redis. Once the interval has passed, exactly one caller is let
    /// through to try it (the others keep failing at once until that one is done).
    fn admit(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until {
            return false;
        }
        self.open_until_ms
            .compare_exchange(until, self.reopen_at(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn record(&self, ok: bool) {
        let state = if ok { 0 } else { self.reopen_at() };
        self.open_until_ms.store(state, Ordering::Release);
    }
}

impl RedisCache {
    /// Builds the pool; connects on first use, so a Redis that is down does not stop the start.
    pub fn new(redis: &RedisSettings, cache: &CacheSettings) -> anyhow::Result<Self> {
        let timeout = redis.timeout();
        let manager = Manager::new(redis)?;
        let mode = manager.mode();
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(redis.redis_pool_max_size).unwrap_or(usize::MAX))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot build the Redis pool")?;
        Ok(Self {
            pool,
            mode,
            alive: Arc::new(()),
            held: Arc::new(AtomicUsize::new(0)),
            max_held: usize::try_from(redis.redis_pool_max_size).unwrap_or(usize::MAX),
            newest: Mutex::new(None),
            generations: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            prefix: cache.cache_key_prefix.clone(),
            ttl: Duration::from_secs(cache.cache_ttl_secs.into()),
            keep: Duration::from_secs(
                u64::from(cache.cache_ttl_secs) + u64::from(cache.stale_if_error_secs),
            ),
            timeout,
            // Never shorter than a call may take, so a probe still running is the only one.
            breaker: Breaker::new(redis.retry_interval().max(timeout)),
            errors: AtomicU64::new(0),
            unreachable_since: AtomicU64::new(0),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn key(&self, id: crate::domain::VehicleId, at: crate::domain::Instant) -> CacheKey {
        CacheKey::new(&self.prefix, id, at)
    }

    pub fn history_key(&self, query: &crate::domain::history::HistoryQuery) -> CacheKey {
        CacheKey::history(&self.prefix, query)
    }

    /// The cached answer and how much longer it may be served, read in one pipeline (GET and
    /// PTTL); `Stale` past this replica's TTL but within its stale-if-error window.
    pub async fn get(&self, key: &CacheKey) -> Result<Cached, CacheError> {
        match self.get_many(&[key]).await?.pop() {
            Some(cached) => Ok(cached?),
            // One reply per key: none is a miss.
            None => Ok(Cached::Absent),
        }
    }

    /// [`RedisCache::get`] for many keys in one round trip: one pipeline of GET and PTTL per
    /// key (in a cluster, one such pipeline per key, all sent at once, since keys live on
    /// different nodes). A value that is not an answer spoils only its own key.
    pub async fn get_many(
        &self,
        keys: &[&CacheKey],
    ) -> Result<Vec<Result<Cached, Corrupt>>, CacheError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis read",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "GET",
            db.operation.batch.size = keys.len(),
        );
        otel::traced(span, self.read_many(keys)).await
    }

    async fn read_many(
        &self,
        keys: &[&CacheKey],
    ) -> Result<Vec<Result<Cached, Corrupt>>, CacheError> {
        let replies: Vec<(Option<Vec<u8>>, i64)> = self
            .bounded(|mut conn| async move {
                if self.mode == RedisMode::Cluster {
                    let each = keys.iter().map(|key| {
                        let mut conn = conn.clone();
                        async move {
                            redis::pipe()
                                .get(key.as_str())
                                .pttl(key.as_str())
                                .query_async::<(Option<Vec<u8>>, i64)>(&mut conn)
                                .await
                        }
                    });
                    return Ok(futures_util::future::try_join_all(each).await?);
                }
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.get(key.as_str()).pttl(key.as_str());
                }
                let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                let mut replies = Vec::with_capacity(keys.len());
                let mut values = flat.into_iter();
                while let (Some(value), Some(pttl)) = (values.next(), values.next()) {
                    replies.push((
                        redis::from_redis_value(value).map_err(redis::RedisError::from)?,
                        redis::from_redis_value(pttl).map_err(redis::RedisError::from)?,
                    ));
                }
                Ok(replies)
            })
            .await?;
        Ok(replies
            .into_iter()
            .map(|(value, pttl)| self.interpret(value, pttl))
            .collect())
    }

    /// What a GET and a PTTL reply mean now.
    fn interpret(&self, value: Option<Vec<u8>>, pttl: i64) -> Result<Cached, Corrupt> {
        let Some(value) = value else {
            return Ok(Cached::Absent);
        };
        let answer = Answer::decode(Bytes::from(value))?;
        let now = SystemTime::now();
        let Some(left) = time_left(answer.read_at_ms, self.ttl, now) else {
            // Stale only if past the TTL, not if its read time is implausibly far ahead.
            let age_ms = unix_ms(now).saturating_sub(answer.read_at_ms);
            let expired = age_ms >= i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
            let kept = time_left(answer.read_at_ms, self.keep, now).is_some();
            return Ok(if expired && kept {
                Cached::Stale(answer)
            } else {
                Cached::Absent
            });
        };
        // PTTL is negative when the key vanished between the two commands (-2) or has no expiry
        // (-1, which this service never writes): serve it, but let nobody keep it.
        let remaining = Duration::from_millis(u64::try_from(pttl).unwrap_or(0)).min(left);
        Ok(Cached::Fresh(answer, remaining))
    }

    /// How long an answer read at `read_at_ms` is kept in Redis: what is left of its TTL and
    /// stale-if-error window, counted from the read; `None` once nothing is.
    fn keep_ms(&self, answer: &Answer) -> Option<u64> {
        let left = time_left(answer.read_at_ms, self.keep, SystemTime::now())?;
        Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// Stores an answer for what is left of its TTL and stale-if-error window (counted from when
    /// it was read).
    pub async fn put(&self, key: &CacheKey, answer: &Answer) -> Result<(), CacheError> {
        self.put_many(&[(key, answer)]).await
    }

    /// [`RedisCache::put`] for many answers in one round trip (one pipeline of SETs; in a
    /// cluster, one SET per key, all sent at once).
    pub async fn put_many(&self, entries: &[(&CacheKey, &Answer)]) -> Result<(), CacheError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis write-back",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "SET",
            db.operation.batch.size = entries.len(),
        );
        otel::traced(span, self.write_many(entries)).await
    }

    async fn write_many(&self, entries: &[(&CacheKey, &Answer)]) -> Result<(), CacheError> {
        let sets: Vec<(&CacheKey, Vec<u8>, u64)> = entries
            .iter()
            .filter_map(|(key, answer)| Some((*key, answer.encode(), self.keep_ms(answer)?)))
            .collect();
        if sets.is_empty() {
            return Ok(());
        }
        let sets = &sets;
        self.bounded(|mut conn| async move {
            if self.mode == RedisMode::Cluster && sets.len() > 1 {
                let each = sets.iter().map(|(key, value, ttl_ms)| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("SET")
                            .arg(key.as_str())
                            .arg(value)
                            .arg("PX")
                            .arg(ttl_ms)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                });
                futures_util::future::try_join_all(each).await?;
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (key, value, ttl_ms) in sets {
                pipe.cmd("SET")
                    .arg(key.as_str())
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    /// Which topology this replica was configured for.
    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// How many masters and replicas the topology has now, asked within `REDIS_TIMEOUT_MS`.
    /// For a scrape, not a lookup: it neither trips nor probes the breaker (while Redis is left
    /// alone it is not asked at all), and a failure here lets no connection go; lookups find
    /// out for themselves.
    pub async fn nodes(&self) -> Result<Nodes, CacheError> {
        if !self.breaker.is_closed() {
            return Err(CacheError::CoolingDown(self.breaker.interval));
        }
        self.unguarded(|mut conn| async move { Ok(topology::nodes(self.mode, &mut conn).await?) })
            .await
    }

    /// At start, for the log: whether Redis answers a PING within `REDIS_TIMEOUT_MS`. Like
    /// [`Self::nodes`], it leaves the breaker and the counters alone (lookups find out for
    /// themselves); the connection it makes stays with the thread that made it.
    pub async fn check(&self) -> Result<(), CacheError> {
        let result = self.unguarded(ping).await;
        if result.as_ref().is_err_and(CacheError::is_unreachable) {
            self.note_unreachable();
        }
        result
    }

    /// `call` on the held connection within `REDIS_TIMEOUT_MS`, for what is not a lookup: unlike
    /// [`Self::bounded`], it neither consults nor records into the breaker, and a failure lets
    /// no connection go.
    async fn unguarded<T, F, Fut>(&self, call: F) -> Result<T, CacheError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, CacheError>>,
    {
        let ask = async {
            let (_, conn) = self.connection().await?;
            call(conn).await
        };
        tokio::time::timeout(self.timeout, ask)
            .await
            .unwrap_or(Err(CacheError::Timeout(self.timeout)))
    }

    /// A call (or the start-up check) could not reach Redis: the first such call of an outage
    /// marks its start. The failures themselves are logged by the callers, who know what they
    /// were doing.
    fn note_unreachable(&self) {
        let now = self.breaker.now_ms().saturating_add(1);
        let _already_down =
            self.unreachable_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// A call begun at `started` reached Redis: if that ends an outage, it is logged, once. A call
    /// begun before the outage was found proves nothing about its end, so it ends none.
    fn note_reached(&self, started: Instant) {
        let since = self.unreachable_since.load(Ordering::Relaxed);
        if since == 0 || self.breaker.ms_at(started).saturating_add(1) < since {
            return;
        }
        if self
            .unreachable_since
            .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(
                unreachable_for_ms = self.breaker.now_ms().saturating_sub(since - 1),
                "Redis answers again: answers are cached again"
            );
        }
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        self.bounded(ping).await
    }

    /// Counts a failed call (in the metrics too). Returns how many there have been when the
    /// caller should log this one, where it knows what it was doing; `None` for a call skipped
    /// while Redis is left alone, whose failure was logged when it happened.
    pub fn record_error(&self, operation: &'static str, error: &CacheError) -> Option<u64> {
        metrics::counter!(crate::metrics::REDIS_ERRORS, "operation" => operation, "kind" => error.kind())
            .increment(1);
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        (!matches!(error, CacheError::CoolingDown(_))).then_some(errors)
    }

    /// Connections in use: those the threads hold (each handed over by the pool, which no longer
    /// counts it) and any the pool is making or has made for a thread; idle ones in the pool.
    pub fn pool_gauge(&self) -> crate::metrics::PoolGauge {
        let status = self.pool.status();
        crate::metrics::PoolGauge {
            in_use: status.size.saturating_sub(status.available)
                + self.held.load(Ordering::Relaxed),
            idle: status.available,
        }
    }

    /// This thread's connection and its generation; a new one, from the pool, if it has none or
    /// its connection was retired; the newest one made, shared, once `REDIS_POOL_MAX_SIZE` are
    /// held.
    async fn connection(&self) -> Result<(u64, Connection), CacheError> {
        let retired = self.retired.load(Ordering::Relaxed);
        let mine = HELD.with_borrow_mut(|held| {
            let at = held.iter().position(|h| self.owns(h))?;
            if held[at].generation > retired {
                return Some((held[at].generation, held[at].conn.clone()));
            }
            // Retired: let go now, so it no longer counts as held.
            held.swap_remove(at);
            None
        });
        if let Some(mine) = mine {
            return Ok(mine);
        }
        // A place among the `REDIS_POOL_MAX_SIZE` held connections, reserved before connecting
        // (and given back if connecting fails); without one, the newest connection is shared.
        let place = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_held).then_some(n + 1)
            })
            .is_ok()
            .then(|| Counted(self.held.clone()));
        if place.is_none() {
            let newest = self
                .newest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(newest) = newest.filter(|(generation, _)| *generation > retired) {
                return Ok(newest);
            }
        }
        // Boxed: the pool's future holds a whole connect (Sentinel and Cluster ones are
        // kilobytes), and unboxed it would make every call's future that large, copied at each
        // await of each layer above, while the held connection above is what calls use.
        let pooled = Box::pin(self.pool.get()).await?;
        // Handed over: the pool forgets it, so the next thread to ask gets one of its own, made
        // on its own runtime.
        let conn: Connection = deadpool::managed::Object::take(pooled);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, conn.clone()));
        if let Some(counted) = place {
            HELD.with_borrow_mut(|held| {
                // This cache's older connection here (another call of this thread may have made
                // one meanwhile), and those of caches that are gone.
                held.retain(|h| !self.owns(h) && h.alive.strong_count() > 0);
                held.push(Held {
                    alive: Arc::downgrade(&self.alive),
                    generation,
                    conn: conn.clone(),
                    _counted: counted,
                });
            });
        }
        Ok((generation, conn))
    }

    /// Whether a thread's held connection is this cache's.
    fn owns(&self, held: &Held) -> bool {
        std::ptr::eq(held.alive.as_ptr(), Arc::as_ptr(&self.alive))
    }

    /// Lets go of connection `generation`: this thread's, and the shared newest if it is that one.
    fn forget(&self, generation: u64) {
        HELD.with_borrow_mut(|held| held.retain(|h| !(self.owns(h) && h.generation == generation)));
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if newest.as_ref().is_some_and(|(g, _)| *g == generation) {
            *newest = None;
        }
    }

    /// Runs `call` on this thread's connection within `REDIS_TIMEOUT_MS`. A connection made
    /// before the call that breaks is replaced and the call tried once more; a call that still
    /// cannot reach Redis retires that connection and every one made before the call (newer ones,
    /// made by calls since, stay), so each thread's next call makes a new one.
    async fn bounded<T, F, Fut>(&self, call: F) -> Result<T, CacheError>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, CacheError>>,
    {
        if !self.breaker.admit() {
            return Err(CacheError::CoolingDown(self.breaker.interval));
        }
        let used = AtomicU64::new(0);
        let started = Instant::now();
        let made_before = self.generations.load(Ordering::Relaxed);
        let attempt = async {
            let (generation, conn) = self.connection().await?;
            used.store(generation, Ordering::Relaxed);
            let result = call(conn).await;
            let broken = generation <= made_before
                && result
                    .as_ref()
                    .err()
                    .is_some_and(CacheError::is_unreachable);
            if !broken {
                return result;
            }
            // A connection made before this call broke: Redis restarted, or the server (its
            // `timeout`) or something on the way closed it while this thread's connection sat
            // idle. Once, on a new connection, before Redis counts as unreachable for everyone.
            self.forget(generation);
            let (generation, conn) = self.connection().await?;
            used.store(generation, Ordering::Relaxed);
            call(conn).await
        };
        // A multiplexed connection is safe to abandon mid-command: its reply is discarded.
        let result = tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(CacheError::Timeout(self.timeout)));
        // Only a failure to reach Redis (or the master) opens the breaker and lets the connection
        // go; a reply that is an error (OOM on a full Redis, say) shows Redis and the connection
        // working.
        let unreachable = result
            .as_ref()
            .err()
            .is_some_and(CacheError::is_unreachable);
        self.breaker.record(!unreachable);
        // Not for a call that Redis answered with an error (it was reached), nor a skipped one.
        if unreachable {
            self.note_unreachable();
        } else if result.is_ok() {
            self.note_reached(started);
        }
        // A cluster connection reaches every node and reconnects to a slow or lost one by
        // itself; rebuilding it after a timeout would only add a round of connecting and
        // fetching the slot map.
        let keep = self.mode == RedisMode::Cluster && matches!(result, Err(CacheError::Timeout(_)));
        if unreachable && !keep {
            // The connection that failed, and every one made before this call began (on any
            // thread) is as likely to be broken, or to reach a demoted master: each thread's
            // next call makes a new one (in sentinel mode, asking the sentinels again). Newer
            // ones, made by calls since, stay.
            let failed = used.load(Ordering::Relaxed);
            if failed > 0 {
                self.retired
                    .fetch_max(failed.max(made_before), Ordering::Relaxed);
                self.pool.retain(|_, made| made.created > started);
            }
        }
        result
    }
}

thread_local! {
    /// This thread's connections: one per cache it has called Redis through (one, but for tests
    /// that run several replicas in a process).
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

/// A connection a thread holds.
struct Held {
    /// Its cache's `alive`.
    alive: Weak<()>,
    generation: u64,
    conn: Connection,
    _counted: Counted,
}

/// One held connection's place in its cache's count (taken when reserved), for as long as it is
/// held.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One PING on `conn`: for `/readyz` and the start-up check.
async fn ping(mut conn: Connection) -> Result<(), CacheError> {
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failure_calls_are_refused_until_the_interval_passes_then_one_tries() {
        let breaker = Breaker::new(Duration::from_millis(50));
        assert!(breaker.admit() && breaker.admit(), "closed: everyone asks");

        breaker.record(false);
        let refused = !breaker.admit();
        std::thread::sleep(Duration::from_millis(60));
        let (first, second) = (breaker.admit(), breaker.admit());
        breaker.record(true);

        assert!(refused);
        assert!(first && !second, "one probe after the interval");
        assert!(breaker.admit(), "closed again after a success");
    }
}
