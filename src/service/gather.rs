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

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::LookupError;
use super::fetch::{Fetched, fetch_many_unless};
use crate::cache::local::Source;
use crate::cache::{CacheKey, RedisCache};
use crate::db::{Database, DbError};
use crate::domain::{Instant, VehicleId};
use crate::telemetry::otel;

/// A miss waiting for its batch.
struct Miss {
    key: CacheKey,
    id: VehicleId,
    at: Instant,
    queued_at: std::time::Instant,
    reply: oneshot::Sender<Fetched>,
    /// The request's span, for the batch's parent or link (`Span::none()` untraced).
    span: tracing::Span,
}

/// When a batch last found PostgreSQL unavailable, and how.
type LastOutage = Arc<std::sync::Mutex<Option<(std::time::Instant, Arc<LookupError>)>>>;

/// Where misses are sent to be gathered.
pub struct Gatherer {
    misses: mpsc::Sender<Miss>,
    shared: Arc<Shared>,
}

/// What the gathering task and misses fetched on their own share.
struct Shared {
    db: Database,
    redis: Arc<RedisCache>,
    /// `LOOKUP_BATCHES_IN_FLIGHT` slots, one per batch (or lone miss) being fetched; the
    /// gathering task holds one while it waits for misses.
    slots: Arc<Semaphore>,
    /// Free slots when nothing is in flight: all but the gathering task's.
    idle_slots: usize,
    outage: LastOutage,
}

impl Gatherer {
    /// Starts the gathering task. `queue` bounds the misses waiting (each holds a permit of
    /// `LOOKUP_CONCURRENCY_LIMIT`, so that limit is the natural bound).
    pub fn start(
        db: Database,
        redis: Arc<RedisCache>,
        max_batch: usize,
        in_flight: usize,
        queue: usize,
    ) -> Self {
        let (misses, queued) = mpsc::channel(queue.max(1));
        let shared = Arc::new(Shared {
            db,
            redis,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            idle_slots: in_flight.max(1) - 1,
            outage: LastOutage::default(),
        });
        tokio::spawn(gather(queued, shared.clone(), max_batch.max(1)));
        Self { misses, shared }
    }

    /// The entry for one key: fetched at once in this task when nothing is in flight or queued,
    /// else in whichever batch takes it.
    pub async fn fetch(&self, key: CacheKey, id: VehicleId, at: Instant) -> Fetched {
        let queued_at = std::time::Instant::now();
        let idle = self.shared.idle_slots > 0
            && self.shared.slots.available_permits() == self.shared.idle_slots
            && self.misses.capacity() == self.misses.max_capacity();
        if idle && let Ok(slot) = self.shared.slots.clone().try_acquire_owned() {
            let _slot = slot;
            let mut fetched = self.shared.fetch(&[(key, id, at)], None).await;
            return fetched.pop().unwrap_or_else(|| Err(stopped()));
        }
        let (reply, answer) = oneshot::channel();
        let miss = Miss {
            key,
            id,
            at,
            queued_at,
            reply,
            span: otel::current(),
        };
        if self.misses.send(miss).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
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
        pairs: &[(CacheKey, VehicleId, Instant)],
        down: Option<Arc<LookupError>>,
    ) -> Vec<Fetched> {
        let short_cut = down.is_some();
        let asked = std::time::Instant::now();
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
                Some((std::time::Instant::now(), error.clone()));
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

async fn gather(mut queued: mpsc::Receiver<Miss>, shared: Arc<Shared>, max_batch: usize) {
    loop {
        // Wait for a free slot first: misses arriving meanwhile queue up for the next batch.
        let Ok(slot) = shared.slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if queued.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let shared = shared.clone();
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
                    let pairs: Vec<(CacheKey, VehicleId, Instant)> =
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
