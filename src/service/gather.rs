//! Concurrent misses gathered into batches, without a timer (the shape of DataLoader's batching
//! and Vitess's query consolidation, without their tick). Each miss puts its key on a channel;
//! one task takes whatever is queued, up to `LOOKUP_BATCH_MAX`, and fetches it with one Redis
//! pipeline, one SQL statement and one write-back. At most `LOOKUP_BATCHES_IN_FLIGHT` batches run
//! at once; while they do, new misses queue, and the next batch takes them all. So at low load a
//! batch is one key and goes out at once, and under load batches grow by themselves.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::LookupError;
use super::fetch::{Fetched, fetch_many_unless};
use crate::cache::{CacheKey, RedisCache};
use crate::db::DbError;
use crate::domain::{Instant, VehicleId};

/// A miss waiting for its batch.
struct Miss {
    key: CacheKey,
    id: VehicleId,
    at: Instant,
    queued_at: std::time::Instant,
    reply: oneshot::Sender<Fetched>,
}

/// When a batch last found PostgreSQL unavailable, and how.
type LastOutage = Arc<std::sync::Mutex<Option<(std::time::Instant, Arc<LookupError>)>>>;

/// Where misses are sent to be gathered.
pub struct Gatherer {
    misses: mpsc::Sender<Miss>,
}

impl Gatherer {
    /// Starts the gathering task. `queue` bounds the misses waiting (each holds a permit of
    /// `LOOKUP_CONCURRENCY_LIMIT`, so that limit is the natural bound).
    pub fn start(
        db: PgPool,
        redis: Arc<RedisCache>,
        max_batch: usize,
        in_flight: usize,
        queue: usize,
    ) -> Self {
        let (misses, queued) = mpsc::channel(queue.max(1));
        tokio::spawn(gather(
            queued,
            db,
            redis,
            max_batch.max(1),
            in_flight.max(1),
        ));
        Self { misses }
    }

    /// The entry for one key, fetched in whichever batch takes it.
    pub async fn fetch(&self, key: CacheKey, id: VehicleId, at: Instant) -> Fetched {
        let (reply, answer) = oneshot::channel();
        let miss = Miss {
            key,
            id,
            at,
            queued_at: std::time::Instant::now(),
            reply,
        };
        if self.misses.send(miss).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The gathering task ended (only when the runtime shuts down): the lookup cannot be answered.
fn stopped() -> Arc<LookupError> {
    LookupError::crashed()
}

async fn gather(
    mut queued: mpsc::Receiver<Miss>,
    db: PgPool,
    redis: Arc<RedisCache>,
    max_batch: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let outage: LastOutage = Arc::default();
    loop {
        // Wait for a free slot first: misses arriving meanwhile queue up for the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if queued.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let (db, redis, outage) = (db.clone(), redis.clone(), outage.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // Misses that waited in the queue while a batch found PostgreSQL unavailable have
            // waited their share: they are answered from Redis or fail now, as a lone miss would
            // have; the others ask PostgreSQL again.
            let last = outage.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
                let fetched = fetch_many_unless(&db, &redis, &pairs, down).await;
                if let Some(Err(error)) = fetched.iter().find(|f| {
                    matches!(f, Err(e) if matches!(**e, LookupError::Db(DbError::Unavailable(_))))
                }) {
                    *outage.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((std::time::Instant::now(), error.clone()));
                }
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
        });
    }
}
