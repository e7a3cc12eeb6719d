//! Concurrent misses gathered into batches, without a timer (the shape of DataLoader's batching
//! and Vitess's query consolidation, without their tick). Each miss puts its key on a channel;
//! one task takes whatever is queued, up to `LOOKUP_BATCH_MAX`, and fetches it with one Redis
//! pipeline, one SQL statement and one write-back. At most `LOOKUP_BATCHES_IN_FLIGHT` batches run
//! at once; while they do, new misses queue, and the next batch takes them all. So at low load a
//! batch is one key and goes out at once, and under load batches grow by themselves.
//!
//! A miss that arrives while nothing is in flight and nobody is queued does not go through the
//! task at all: it is fetched in its own task, holding a slot, exactly as without gathering (no
//! channel hop, no wake-up of another task), and misses arriving meanwhile queue for the
//! gathering task. Under load something is always in flight, so every miss is gathered.
//!
//! Each thread that serves lookups (each HTTP worker) gathers its own misses: its own queue and
//! gathering task, started on its own runtime the first time it misses, so a miss, its batch and
//! its answer never leave the thread that took the request (no wake-up of another thread, which
//! on a busy machine costs more than the batch's own work). The slots and the outage record are
//! the process's: `LOOKUP_BATCHES_IN_FLIGHT` bounds the batches of all workers together.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::LookupError;
use super::fetch::{Fetched, fetch_many_unless};
use crate::cache::local::Source;
use crate::cache::{CacheKey, RedisCache};
use crate::db::{Database, DbError};
use crate::domain::{Timestamp, VehicleId};
use crate::telemetry::otel;

/// A miss waiting for its batch.
struct Miss {
    key: CacheKey,
    id: VehicleId,
    at: Timestamp,
    queued_at: Instant,
    reply: oneshot::Sender<Fetched>,
    /// The request's span, for the batch's parent or link (`Span::none()` untraced).
    span: tracing::Span,
}

/// When a batch last found PostgreSQL unavailable, and how.
type LastOutage = Arc<std::sync::Mutex<Option<(Instant, Arc<LookupError>)>>>;

/// Where misses are sent to be gathered: shared by every thread, each of which has a queue of
/// its own (its lane).
pub struct Gatherer {
    shared: Arc<Shared>,
}

/// What the gathering tasks and misses fetched on their own share.
struct Shared {
    db: Database,
    redis: Arc<RedisCache>,
    /// `LOOKUP_BATCHES_IN_FLIGHT` slots, one per batch (or lone miss) being fetched, whichever
    /// thread's it is.
    slots: Arc<Semaphore>,
    /// All the slots: what is free when nothing is in flight.
    all_slots: usize,
    max_batch: usize,
    /// Bound of each lane's queue.
    queue: usize,
    outage: LastOutage,
}

thread_local! {
    /// This thread's lanes: one per gatherer it has served a miss of (one, but for tests that
    /// run several services in a process), each the sending end of its gathering task's queue.
    static LANES: RefCell<Vec<(Weak<Shared>, mpsc::Sender<Miss>)>> = const { RefCell::new(Vec::new()) };
}

/// What a miss does, decided in its thread's lane.
enum Route {
    /// Nothing in flight, nobody queued: fetched at once by the miss's own task, in this slot.
    Alone(tokio::sync::OwnedSemaphorePermit, Miss),
    /// Queued: the answer comes from the batch that takes it.
    Queued(oneshot::Receiver<Fetched>),
    /// The lane's queue is full (it cannot be: each queued miss holds a permit of
    /// `LOOKUP_CONCURRENCY_LIMIT`, which bounds it), so the miss waits for room.
    Full(mpsc::Sender<Miss>, Miss, oneshot::Receiver<Fetched>),
}

impl Gatherer {
    /// A gatherer; each thread's gathering task starts on that thread's first miss. `queue`
    /// bounds the misses waiting in each (each holds a permit of `LOOKUP_CONCURRENCY_LIMIT`, so
    /// that limit is the natural bound).
    pub fn start(
        db: Database,
        redis: Arc<RedisCache>,
        max_batch: usize,
        in_flight: usize,
        queue: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            db,
            redis,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            all_slots: in_flight.max(1),
            max_batch: max_batch.max(1),
            queue: queue.max(1),
            outage: LastOutage::default(),
        });
        Self { shared }
    }

    /// The entry for one key: fetched at once in this task when nothing is in flight or queued,
    /// else in whichever batch of this thread takes it.
    pub async fn fetch(&self, key: CacheKey, id: VehicleId, at: Timestamp) -> Fetched {
        let (reply, answer) = oneshot::channel();
        let miss = Miss {
            key,
            id,
            at,
            queued_at: Instant::now(),
            reply,
            span: otel::current(),
        };
        match self.route(miss, answer) {
            Route::Alone(slot, miss) => {
                let _slot = slot;
                let mut fetched = self
                    .shared
                    .fetch(&[(miss.key, miss.id, miss.at)], None)
                    .await;
                fetched.pop().unwrap_or_else(|| Err(stopped()))
            }
            Route::Queued(answer) => answer.await.unwrap_or_else(|_| Err(stopped())),
            Route::Full(lane, miss, answer) => {
                if lane.send(miss).await.is_err() {
                    return Err(stopped());
                }
                answer.await.unwrap_or_else(|_| Err(stopped()))
            }
        }
    }

    /// This thread's lane (started if it has none, or if its task has ended with the runtime
    /// it ran on) takes the miss, or lets it go alone.
    fn route(&self, miss: Miss, answer: oneshot::Receiver<Fetched>) -> Route {
        LANES.with_borrow_mut(|lanes| {
            let at = lanes
                .iter()
                .position(|(shared, _)| std::ptr::eq(shared.as_ptr(), Arc::as_ptr(&self.shared)));
            let lane = match at {
                Some(at) if !lanes[at].1.is_closed() => &lanes[at].1,
                found => {
                    if let Some(at) = found {
                        lanes.swap_remove(at);
                    }
                    // Lanes of services that are gone (their tasks end with their queues).
                    lanes.retain(|(shared, _)| shared.strong_count() > 0);
                    let (misses, queued) = mpsc::channel(self.shared.queue);
                    tokio::spawn(gather(queued, Arc::downgrade(&self.shared)));
                    lanes.push((Arc::downgrade(&self.shared), misses));
                    &lanes[lanes.len() - 1].1
                }
            };
            let idle = lane.capacity() == lane.max_capacity()
                && self.shared.slots.available_permits() == self.shared.all_slots;
            if idle && let Ok(slot) = self.shared.slots.clone().try_acquire_owned() {
                return Route::Alone(slot, miss);
            }
            match lane.try_send(miss) {
                Ok(()) => Route::Queued(answer),
                // Closed cannot be either (just checked open); waiting to send, it fails as
                // stopped.
                Err(
                    mpsc::error::TrySendError::Full(miss) | mpsc::error::TrySendError::Closed(miss),
                ) => Route::Full(lane.clone(), miss, answer),
            }
        })
    }
}

impl Shared {
    /// One batch: Redis, then PostgreSQL for what Redis lacks, written back; `down` short-cuts
    /// PostgreSQL for misses that already waited out an outage. What PostgreSQL did is
    /// recorded: an outage seen, or an answer that ends the one recorded before it was asked.
    /// A short-cut batch asked nothing, so it records nothing: were it to renew the record,
    /// under steady misses each batch would find the next one's misses queued before it, and
    /// fail them after PostgreSQL was back.
    async fn fetch(
        &self,
        pairs: &[(CacheKey, VehicleId, Timestamp)],
        down: Option<Arc<LookupError>>,
    ) -> Vec<Fetched> {
        let short_cut = down.is_some();
        let asked = Instant::now();
        let fetched = fetch_many_unless(&self.db, &self.redis, pairs, down).await;
        if short_cut {
            return fetched;
        }
        let seen = fetched.iter().find_map(|f| match f {
            Err(e) if is_outage(e) => Some(e),
            _ => None,
        });
        let answered = || {
            fetched.iter().any(|f| {
                matches!(f, Ok(e) if matches!(e.source, Source::Postgres | Source::PostgresWithoutRedis))
            })
        };
        if let Some(error) = seen {
            *self.outage.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), error.clone()));
        } else if answered() {
            let mut last = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref().is_some_and(|(when, _)| *when < asked) {
                *last = None;
            }
        }
        fetched
    }
}

/// Whether a lookup failed because PostgreSQL cannot be reached (an outage the misses queued
/// behind it need not wait out again), not because its own statement ran past the statement
/// timeout: one slow lookup says nothing about the next.
fn is_outage(error: &LookupError) -> bool {
    matches!(error, LookupError::Db(db) if db.may_mean_unreachable() || matches!(db, DbError::Down))
}

/// The gathering task ended (only when the runtime shuts down): the lookup cannot be answered.
fn stopped() -> Arc<LookupError> {
    LookupError::crashed()
}

/// One thread's gathering task: takes what its lane has queued, waits for a slot (misses
/// arriving meanwhile join the batch, up to `LOOKUP_BATCH_MAX`), and fetches it in a task of its
/// own, on this thread's runtime. It holds its gatherer weakly: once the service is gone, the
/// thread's next lane drops this one's queue (and so ends it), and what it had queued is
/// answered as stopped.
async fn gather(mut queued: mpsc::Receiver<Miss>, gatherer: Weak<Shared>) {
    let Some(max_batch) = gatherer.upgrade().map(|shared| shared.max_batch) else {
        return;
    };
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        if queued.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let Some(shared) = gatherer.upgrade() else {
            return;
        };
        let Ok(slot) = shared.slots.clone().acquire_owned().await else {
            return;
        };
        while batch.len() < max_batch
            && let Ok(miss) = queued.try_recv()
        {
            batch.push(miss);
        }
        let span = batch_span(&batch);
        tokio::spawn(
            async move {
                let _slot = slot;
                // Misses that waited in the queue while a batch found PostgreSQL unavailable have
                // waited their share: they are answered from Redis or fail now, as a lone miss would
                // have; the others ask PostgreSQL again.
                let last = shared
                    .outage
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let (waited, fresh): (Vec<Miss>, Vec<Miss>) = batch
                    .into_iter()
                    .partition(|m| last.as_ref().is_some_and(|(when, _)| m.queued_at < *when));
                let mut answered = Vec::with_capacity(waited.len() + fresh.len());
                for (misses, down) in [(waited, last.map(|(_, e)| e)), (fresh, None)] {
                    if misses.is_empty() {
                        continue;
                    }
                    let pairs: Vec<(CacheKey, VehicleId, Timestamp)> =
                        misses.iter().map(|m| (m.key.clone(), m.id, m.at)).collect();
                    let fetched = shared.fetch(&pairs, down).await;
                    answered.extend(misses.into_iter().zip(fetched));
                }
                for (miss, result) in answered {
                    if miss.reply.send(result).is_err() {
                        // Its waiter is gone (the runtime is shutting down); nobody to answer.
                        tracing::debug!(
                            key = miss.key.as_str(),
                            "a gathered miss had no waiter left"
                        );
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// The span of a gathered batch: a child of the request that came first, linked both ways
/// with every other request it answers, so each request's trace shows the batch its time went
/// to. `Span::none()` when tracing is off.
fn batch_span(batch: &[Miss]) -> tracing::Span {
    let Some(first) = batch.first().filter(|_| otel::on()) else {
        return tracing::Span::none();
    };
    let span = tracing::trace_span!(
        target: otel::SPANS,
        parent: &first.span,
        "lookup batch",
        vehicle_state.pairs = batch.len(),
    );
    for miss in &batch[1..] {
        otel::link_both(&span, &miss.span);
    }
    span
}

#[cfg(test)]
mod tests;
