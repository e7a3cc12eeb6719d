//! When Redis may be asked, and when an outage began and ended.
//!
//! After a failure, Redis is left alone for `REDIS_RETRY_INTERVAL_MS`: calls fail at once
//! instead of each waiting out the timeout on a Redis that hangs, then one call tries it again
//! for everyone. So a dead or hanging Redis costs a lookup nothing, and at most one lookup per
//! interval pays the timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether Redis may be asked: closed (0), or open until a moment (ms since `epoch`).
pub(super) struct Breaker {
    epoch: Instant,
    open_until_ms: AtomicU64,
    pub(super) interval: Duration,
    /// 0 while Redis is reached; otherwise 1 + this clock (ms) when a call (or the start-up
    /// check) first could not reach it. The next call that does logs the end of the outage,
    /// once. An atomic, so a call that succeeds pays one load for it.
    unreachable_since: AtomicU64,
}

impl Breaker {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            interval,
            unreachable_since: AtomicU64::new(0),
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

    pub(super) fn is_closed(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) == 0
    }

    /// Whether this call may ask Redis. Once the interval has passed, exactly one caller is let
    /// through to try it (the others keep failing at once until that one is done).
    pub(super) fn admit(&self) -> bool {
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

    pub(super) fn record(&self, ok: bool) {
        let state = if ok { 0 } else { self.reopen_at() };
        self.open_until_ms.store(state, Ordering::Release);
    }

    /// A call (or the start-up check) could not reach Redis: the first such call of an outage
    /// marks its start. The failures themselves are logged by the callers, who know what they
    /// were doing.
    pub(super) fn note_unreachable(&self) {
        let now = self.now_ms().saturating_add(1);
        let _already_down =
            self.unreachable_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// A call begun at `started` reached Redis: if that ends an outage, it is logged, once. A call
    /// begun before the outage was found proves nothing about its end, so it ends none.
    pub(super) fn note_reached(&self, started: Instant) {
        let since = self.unreachable_since.load(Ordering::Relaxed);
        if since == 0 || self.ms_at(started).saturating_add(1) < since {
            return;
        }
        if self
            .unreachable_since
            .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(
                unreachable_for_ms = self.now_ms().saturating_sub(since - 1),
                "Redis answers again: answers are cached again"
            );
        }
    }
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
