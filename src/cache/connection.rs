//! The connections Redis calls go out on, and the bound on each call.
//!
//! Every call is bounded by `REDIS_TIMEOUT_MS` (pool wait and connecting included) and its
//! failure is returned to the caller. Broken connections are replaced by the pool, so the cache
//! comes back by itself when Redis does.
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

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool::Runtime;

use super::CacheError;
use super::breaker::Breaker;
use super::topology::{Connection, Manager, Pool};
use crate::config::{RedisMode, RedisSettings};

pub(super) struct Connections {
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
    timeout: Duration,
    breaker: Breaker,
}

impl Connections {
    /// Builds the pool; connects on first use, so a Redis that is down does not stop the start.
    pub(super) fn new(redis: &RedisSettings) -> anyhow::Result<Self> {
        let timeout = redis.timeout;
        let manager = Manager::new(redis)?;
        let mode = manager.mode();
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(redis.pool_max_size).unwrap_or(usize::MAX))
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
            max_held: usize::try_from(redis.pool_max_size).unwrap_or(usize::MAX),
            newest: Mutex::new(None),
            generations: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            timeout,
            // Never shorter than a call may take, so a probe still running is the only one.
            breaker: Breaker::new(redis.retry_interval.max(timeout)),
        })
    }

    pub(super) fn mode(&self) -> RedisMode {
        self.mode
    }

    /// The error a call gets at once while Redis is left alone after a failure.
    pub(super) fn left_alone(&self) -> Result<(), CacheError> {
        if self.breaker.is_closed() {
            return Ok(());
        }
        Err(CacheError::CoolingDown(self.breaker.interval))
    }

    /// Marks the start of an outage found by a call that is not a lookup (the start-up check).
    pub(super) fn note_unreachable(&self) {
        self.breaker.note_unreachable();
    }

    /// Connections in use: those the threads hold (each handed over by the pool, which no longer
    /// counts it) and any the pool is making or has made for a thread; idle ones in the pool.
    pub(super) fn pool_gauge(&self) -> crate::metrics::PoolGauge {
        let status = self.pool.status();
        crate::metrics::PoolGauge {
            in_use: status.size.saturating_sub(status.available)
                + self.held.load(Ordering::Relaxed),
            idle: status.available,
        }
    }

    /// `call` on the held connection within `REDIS_TIMEOUT_MS`, for what is not a lookup: unlike
    /// [`Self::bounded`], it neither consults nor records into the breaker, and a failure lets
    /// no connection go.
    pub(super) async fn unguarded<T, F, Fut>(&self, call: F) -> Result<T, CacheError>
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

    /// Runs `call` on this thread's connection within `REDIS_TIMEOUT_MS`. A connection made
    /// before the call that breaks is replaced and the call tried once more; a call that still
    /// cannot reach Redis retires that connection and every one made before the call (newer ones,
    /// made by calls since, stay), so each thread's next call makes a new one.
    pub(super) async fn bounded<T, F, Fut>(&self, call: F) -> Result<T, CacheError>
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
            self.breaker.note_unreachable();
        } else if result.is_ok() {
            self.breaker.note_reached(started);
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
