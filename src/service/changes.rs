//! Streams of changes to watchers: the change feed's announcements, fanned out from this
//! replica's follower to the streams that watch each vehicle.
//!
//! The follower hands each announcement over in the feed's order ([`ChangeHub::dispatch`]);
//! each stream has a bounded queue of its own, so one stream never waits for another: a
//! stream whose queue is full (its client reads slower than the vehicles it watches change) is
//! marked slow and let go, and says so to its client. Nothing is buffered beyond
//! `CHANGES_STREAM_BUFFER` announcements per stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::web::Bytes;
use tokio::sync::{mpsc, watch};

use crate::domain::VehicleId;

/// One announcement, as the feed stored it: its stream sequence (a watcher's event id), its
/// vehicle, and its JSON.
#[derive(Debug)]
pub struct FeedEvent {
    pub sequence: u64,
    pub vehicle: i32,
    pub payload: Bytes,
}

/// The bounds of the streams one replica serves.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// `CHANGES_MAX_STREAMS`.
    pub max_streams: usize,
    /// `CHANGES_STREAM_BUFFER`.
    pub buffer: usize,
}

struct Watcher {
    stream: u64,
    queue: mpsc::Sender<Arc<FeedEvent>>,
    slow: Arc<AtomicBool>,
}

pub struct ChangeHub {
    watchers: Mutex<HashMap<i32, Vec<Watcher>>>,
    /// The sequence of the last announcement dispatched (0: none yet). Set under the lock, after
    /// the announcement's vehicle was dropped from memory and handed to its watchers.
    position: AtomicU64,
    open: AtomicUsize,
    next: AtomicU64,
    limits: StreamLimits,
    closing: watch::Sender<bool>,
    /// The change stream, once the follower found it: where a reconnecting stream's missed
    /// announcements are read from.
    stream: OnceLock<async_nats::jetstream::stream::Stream>,
    /// Whether this replica follows the feed at all (`NATS_URL` set).
    on: bool,
}

/// Too many streams are open (`CHANGES_MAX_STREAMS`).
#[derive(Debug)]
pub struct Full(pub usize);

impl ChangeHub {
    pub fn new(limits: StreamLimits, on: bool) -> Self {
        Self {
            watchers: Mutex::new(HashMap::new()),
            position: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            limits,
            closing: watch::channel(false).0,
            stream: OnceLock::new(),
            on,
        }
    }

    /// Whether streams can be served here.
    pub fn on(&self) -> bool {
        self.on
    }

    /// The last announcement dispatched: a stream starting now is current up to it.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The change stream, once found.
    pub fn stream(&self) -> Option<&async_nats::jetstream::stream::Stream> {
        self.stream.get()
    }

    /// The follower found the change stream, which then held announcements up to `last`: a
    /// replica that has just started is current up to there (it holds nothing older), so a
    /// stream resuming after an earlier id is replayed the difference.
    pub fn set_stream(&self, stream: async_nats::jetstream::stream::Stream, last: u64) {
        {
            let _watchers = self
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.position.load(Ordering::Acquire) == 0 {
                self.position.store(last, Ordering::Release);
            }
        }
        let _ = self.stream.set(stream);
    }

    /// Whether the follower has found the change stream.
    pub fn is_attached(&self) -> bool {
        self.stream.get().is_some()
    }

    /// Waits up to `within` for the follower to find the change stream; whether it has.
    pub async fn attached(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.stream.get().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// How many streams are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Hands an announcement to the streams watching its vehicle, in the feed's order. A stream
    /// whose queue is full is let go (marked slow; its end tells its client why).
    pub fn dispatch(&self, event: FeedEvent) {
        let sequence = event.sequence;
        let event = Arc::new(event);
        let mut watchers = self
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = watchers.get_mut(&event.vehicle) {
            list.retain(|watcher| match watcher.queue.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    watcher.slow.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            if list.is_empty() {
                watchers.remove(&event.vehicle);
            }
        }
        self.position.store(sequence, Ordering::Release);
    }

    /// A new stream of `ids`' announcements, from the position it returns on; `Full` at
    /// `CHANGES_MAX_STREAMS`.
    pub fn watch(self: &Arc<Self>, ids: &[VehicleId]) -> Result<Watch, Full> {
        let max = self.limits.max_streams;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .is_err()
        {
            return Err(Full(max));
        }
        metrics::gauge!(crate::metrics::SSE_STREAMS).increment(1.0);
        let stream = self.next.fetch_add(1, Ordering::Relaxed);
        let (queue, events) = mpsc::channel(self.limits.buffer.max(1));
        let slow = Arc::new(AtomicBool::new(false));
        {
            let mut watchers = self
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in ids {
                watchers.entry(id.get()).or_default().push(Watcher {
                    stream,
                    queue: queue.clone(),
                    slow: slow.clone(),
                });
            }
        }
        // Read after registering: every announcement past it reaches the queue (dispatch sets
        // the position under the lock, after handing the announcement over).
        let from = self.position();
        Ok(Watch {
            events,
            slow,
            from,
            closing: self.closing.subscribe(),
            hub: self.clone(),
            stream,
            ids: ids.iter().map(|id| id.get()).collect(),
        })
    }

    /// Ends every stream (the replica is stopping): each tells its client to come back.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

/// One stream's registration: its queue, and what it was registered from. Dropped, it leaves.
pub struct Watch {
    pub events: mpsc::Receiver<Arc<FeedEvent>>,
    pub slow: Arc<AtomicBool>,
    /// The hub's position when the stream registered.
    pub from: u64,
    pub closing: watch::Receiver<bool>,
    pub hub: Arc<ChangeHub>,
    stream: u64,
    ids: Vec<i32>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watchers = self
            .hub
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &self.ids {
            if let Some(list) = watchers.get_mut(id) {
                list.retain(|watcher| watcher.stream != self.stream);
                if list.is_empty() {
                    watchers.remove(id);
                }
            }
        }
        drop(watchers);
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(crate::metrics::SSE_STREAMS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_streams: usize, buffer: usize) -> Arc<ChangeHub> {
        Arc::new(ChangeHub::new(
            StreamLimits {
                max_streams,
                buffer,
            },
            true,
        ))
    }

    fn event(sequence: u64, vehicle: i32) -> FeedEvent {
        FeedEvent {
            sequence,
            vehicle,
            payload: Bytes::from_static(b"{}"),
        }
    }

    fn ids(ids: &[i32]) -> Vec<VehicleId> {
        ids.iter()
            .map(|&id| VehicleId::from_i64(id.into()).expect("an id"))
            .collect()
    }

    #[tokio::test]
    async fn each_stream_gets_its_vehicles_announcements_in_order_from_where_it_started() {
        let hub = hub(10, 8);
        hub.dispatch(event(1, 3));
        let mut both = hub.watch(&ids(&[3, 4])).expect("room");
        let mut four = hub.watch(&ids(&[4])).expect("room");
        hub.dispatch(event(2, 4));
        hub.dispatch(event(3, 5));
        hub.dispatch(event(4, 3));

        assert_eq!((both.from, four.from), (1, 1));
        let mut got = Vec::new();
        while let Ok(e) = both.events.try_recv() {
            got.push(e.sequence);
        }
        assert_eq!(got, [2, 4]);
        assert_eq!(four.events.try_recv().map(|e| e.sequence).ok(), Some(2));
        assert!(four.events.try_recv().is_err());
        assert_eq!(hub.position(), 4);
    }

    #[tokio::test]
    async fn a_stream_too_slow_is_let_go_and_the_others_go_on() {
        let hub = hub(10, 2);
        let slow = hub.watch(&ids(&[3])).expect("room");
        let mut quick = hub.watch(&ids(&[3])).expect("room");
        for sequence in 1..=5 {
            hub.dispatch(event(sequence, 3));
            assert_eq!(
                quick.events.try_recv().map(|e| e.sequence).ok(),
                Some(sequence)
            );
        }

        assert!(slow.slow.load(Ordering::Acquire));
        assert!(!quick.slow.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn streams_are_bounded_and_a_closed_one_makes_room() {
        let hub = hub(2, 2);
        let one = hub.watch(&ids(&[1])).expect("room");
        let _two = hub.watch(&ids(&[2])).expect("room");

        assert!(hub.watch(&ids(&[3])).is_err());
        drop(one);
        assert_eq!(hub.open(), 1);
        assert!(hub.watch(&ids(&[3])).is_ok());
        assert!(
            hub.watchers.lock().expect("lock").get(&1).is_none(),
            "a stream that left is no longer a watcher"
        );
    }
}
