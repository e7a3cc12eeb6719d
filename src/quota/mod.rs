//! Per-client quotas (`RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`): one budget per client for the whole
//! fleet, kept in Redis as a generic cell rate (GCRA, [`crate::cache::RedisCache::take_tokens`]).
//!
//! - **Who the client is** ([`ClientId::of`]): the peer's address, or, when the peer is one of
//!   `TRUSTED_PROXIES`, the last address in `X-Forwarded-For` that is not itself trusted.
//! - **Leases.** Asking Redis on every request would cost a round trip on the hot path, which
//!   otherwise never leaves the replica's memory. A call takes the request's tokens and, when
//!   the bucket has them, the tokens the rate refills in [`LEASE_WINDOW`] (at least one, at most
//!   the burst); the replica spends those on the client's next requests for up to
//!   [`LEASE_TTL`], then forgets them. Tokens are taken from the fleet's bucket before they are
//!   spent, so replicas together never let through more than the budget and the burst; a lease
//!   forgotten unspent only makes a client wait a little sooner. Requests that miss together
//!   add what they took to one lease (at most a burst), so none of it is lost. At 20 requests a
//!   second a lease is one token: every request asks Redis while the client is within its
//!   budget. Once Redis refuses a client, the replica refuses it alone until the moment Redis
//!   named (no token can come back sooner), so a client hammering past its budget costs Redis
//!   one call per `Retry-After`, not one per request.
//! - **When Redis fails** (an error, a timeout, or the breaker leaving it alone), each replica
//!   decides alone, with the same rate and burst in its own memory: a client then gets at most
//!   the budget per replica. Letting everything through would hand an outage of a cache to an
//!   abuser; refusing everything would turn it into an outage of the API.

mod client;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;

use crate::cache::RedisCache;
use crate::config::{Rate, TrustedProxies};

pub use client::ClientId;

/// How much of the rate a lease holds: what it refills in this long.
pub const LEASE_WINDOW: Duration = Duration::from_millis(20);
/// How long a replica keeps a lease's tokens before forgetting them.
pub const LEASE_TTL: Duration = Duration::from_secs(1);
/// Most clients whose leases, and whose buckets while Redis fails, one replica remembers; the
/// least recently seen are forgotten first (a forgotten bucket is a full one).
const MAX_CLIENTS: u64 = 100_000;

/// The quota of every client, as one replica sees it.
pub struct Quota {
    rate: Rate,
    /// One token every `interval`.
    interval: Duration,
    /// Tokens taken per Redis call when the bucket has them.
    lease: u32,
    redis: Arc<RedisCache>,
    trusted: TrustedProxies,
    leases: moka::sync::Cache<ClientId, Arc<Mutex<Lease>>>,
    /// The buckets while Redis fails: theoretical arrival times on this replica's clock.
    local: moka::sync::Cache<ClientId, Arc<Mutex<Instant>>>,
    /// `RateLimit-Policy`, rendered once.
    policy: HeaderValue,
    counters: Counters,
}

/// What a request was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Tokens left for the client (about: leases held by other replicas are not counted).
    pub remaining: u64,
    /// Until the client's bucket is full again.
    pub reset: Duration,
    /// When refused, until the request's tokens are there.
    pub retry_after: Duration,
}

/// What this replica holds of one client's budget: tokens taken from Redis and not yet spent.
#[derive(Debug)]
pub struct Lease {
    tokens: u32,
    /// What the fleet's bucket held after the lease was taken.
    left: u64,
    full_in: Duration,
    granted: Instant,
    /// Redis's last refusal: of this cost, until then, with what it said.
    refused: Option<(u32, Instant, Verdict)>,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            tokens: 0,
            left: 0,
            full_in: Duration::ZERO,
            // No tokens: empty whatever its age (`Instant - LEASE_TTL` could underflow).
            granted: Instant::now(),
            refused: None,
        }
    }
}

/// A lock never held across a panic that leaves a lease half-changed: a poisoned one is used.
fn lock(lease: &Mutex<Lease>) -> std::sync::MutexGuard<'_, Lease> {
    lease
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The decision counters, looked up once rather than per request.
struct Counters {
    allowed_by_redis: metrics::Counter,
    limited_by_redis: metrics::Counter,
    allowed_by_lease: metrics::Counter,
    limited_by_lease: metrics::Counter,
    allowed_locally: metrics::Counter,
    limited_locally: metrics::Counter,
}

impl Counters {
    fn new() -> Self {
        let counter = |outcome: &'static str, by: &'static str| metrics::counter!(crate::metrics::QUOTA_DECISIONS, "outcome" => outcome, "by" => by);
        Self {
            allowed_by_redis: counter("allowed", "redis"),
            limited_by_redis: counter("limited", "redis"),
            allowed_by_lease: counter("allowed", "lease"),
            limited_by_lease: counter("limited", "lease"),
            allowed_locally: counter("allowed", "local"),
            limited_locally: counter("limited", "local"),
        }
    }
}

impl Quota {
    pub fn new(rate: Rate, redis: Arc<RedisCache>, trusted: TrustedProxies) -> Self {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second);
        let lease = (rate.per_second * LEASE_WINDOW.as_secs_f64()).ceil() as u32;
        let window_secs = (f64::from(rate.burst) / rate.per_second).ceil().max(1.0) as u64;
        let policy = format!("\"default\";q={};w={window_secs}", rate.burst);
        Self {
            rate,
            interval,
            lease: lease.clamp(1, rate.burst),
            redis,
            trusted,
            leases: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_live(LEASE_TTL)
                .build(),
            local: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(
                    interval
                        .saturating_mul(rate.burst)
                        .max(Duration::from_secs(1)),
                )
                .build(),
            // Digits, letters and punctuation of a structured field: always a valid value.
            policy: HeaderValue::from_str(&policy)
                .unwrap_or(HeaderValue::from_static("\"default\"")),
            counters: Counters::new(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// `RateLimit-Policy` (IETF draft-ietf-httpapi-ratelimit-headers): the bucket's size over the
    /// seconds the rate takes to fill it.
    pub fn policy(&self) -> &HeaderValue {
        &self.policy
    }

    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// Takes `cost` tokens from `client`'s budget, or says when they will be there.
    pub async fn take(&self, client: &ClientId, cost: u32) -> Verdict {
        match self.take_held(client, cost) {
            Ok(verdict) => verdict,
            Err(lease) => self.take_from_redis(client, cost, &lease).await,
        }
    }

    /// What this replica can decide alone, at once (almost every request): `cost` spent from
    /// the client's lease, or a refusal Redis gave and that still holds. Otherwise the lease,
    /// for [`Quota::take_from_redis`].
    pub fn take_held(&self, client: &ClientId, cost: u32) -> Result<Verdict, Arc<Mutex<Lease>>> {
        let lease = self
            .leases
            .get_with_by_ref(client, || Arc::new(Mutex::new(Lease::default())));
        match self.spend_lease(&lease, cost) {
            Some(verdict) => Ok(verdict),
            None => Err(lease),
        }
    }

    /// Asks Redis for `cost` tokens and a new lease (or, while Redis fails, decides locally).
    pub async fn take_from_redis(
        &self,
        client: &ClientId,
        cost: u32,
        lease: &Mutex<Lease>,
    ) -> Verdict {
        let granted = self
            .redis
            .take_tokens(
                &client.to_string(),
                self.interval,
                self.rate.burst,
                cost,
                self.lease.max(cost),
            )
            .await;
        match granted {
            Ok(granted) if granted.taken == 0 => {
                self.counters.limited_by_redis.increment(1);
                let verdict = Verdict {
                    allowed: false,
                    remaining: granted.left,
                    reset: granted.full_in,
                    retry_after: granted.retry_in,
                };
                // Nothing can be there for `cost` before `retry_in`: until then this replica
                // refuses such requests itself, without asking Redis again.
                let mut held = lock(lease);
                // A moment past what `Instant` can hold (only a corrupt key could name one) is
                // not remembered: Redis is asked again.
                held.refused = Instant::now()
                    .checked_add(granted.retry_in)
                    .map(|until| (cost, until, verdict));
                verdict
            }
            Ok(granted) => {
                self.counters.allowed_by_redis.increment(1);
                let spare = granted.taken.saturating_sub(cost);
                let mut held = lock(lease);
                held.refused = None;
                if spare > 0 {
                    // Added to what the lease holds rather than in its place, so that requests
                    // that went to Redis together lose none of what they took; at most a burst.
                    let fresh = held.granted.elapsed() < LEASE_TTL;
                    let kept = if fresh { held.tokens } else { 0 };
                    held.tokens = kept.saturating_add(spare).min(self.rate.burst);
                    held.left = granted.left;
                    held.full_in = granted.full_in;
                    held.granted = Instant::now();
                }
                Verdict {
                    allowed: true,
                    remaining: granted.left + u64::from(held.tokens),
                    reset: granted.full_in,
                    retry_after: Duration::ZERO,
                }
            }
            Err(error) => {
                if let Some(errors) = self.redis.record_error("quota", &error) {
                    tracing::warn!(
                        error = %crate::telemetry::chain(&error),
                        errors,
                        "Redis cannot keep the quotas; this replica decides alone meanwhile, with the same rate"
                    );
                }
                self.locally(client, cost)
            }
        }
    }

    /// Spends `cost` of what this replica holds for the client, or refuses as Redis last did;
    /// `None` when Redis must be asked.
    fn spend_lease(&self, lease: &Mutex<Lease>, cost: u32) -> Option<Verdict> {
        let mut lease = lock(lease);
        if let Some((refused_cost, until, verdict)) = lease.refused {
            let now = Instant::now();
            if now < until && cost >= refused_cost {
                self.counters.limited_by_lease.increment(1);
                return Some(Verdict {
                    retry_after: until - now,
                    ..verdict
                });
            }
        }
        let age = lease.granted.elapsed();
        if lease.tokens < cost || age >= LEASE_TTL {
            return None;
        }
        lease.tokens -= cost;
        self.counters.allowed_by_lease.increment(1);
        Some(Verdict {
            allowed: true,
            remaining: lease.left + u64::from(lease.tokens),
            reset: lease.full_in.saturating_sub(age),
            retry_after: Duration::ZERO,
        })
    }

    /// The same GCRA as Redis's, in this replica's memory.
    fn locally(&self, client: &ClientId, cost: u32) -> Verdict {
        let now = Instant::now();
        let bucket = self
            .local
            .get_with(client.clone(), || Arc::new(Mutex::new(now)));
        let mut tat = match bucket.lock() {
            Ok(tat) => tat,
            Err(poisoned) => poisoned.into_inner(),
        };
        let verdict = gcra(&mut tat, now, self.interval, self.rate.burst, cost);
        if verdict.allowed {
            self.counters.allowed_locally.increment(1);
        } else {
            self.counters.limited_locally.increment(1);
        }
        verdict
    }
}

/// One GCRA decision on `tat` (the bucket's theoretical arrival time) at `now`.
fn gcra(tat: &mut Instant, now: Instant, interval: Duration, burst: u32, cost: u32) -> Verdict {
    let start = (*tat).max(now);
    let tolerance = interval.saturating_mul(burst);
    let owed = start - now;
    let available = (tolerance.saturating_sub(owed).as_nanos() / interval.as_nanos().max(1)) as u64;
    if available < u64::from(cost) {
        return Verdict {
            allowed: false,
            remaining: available,
            reset: owed,
            retry_after: (owed + interval.saturating_mul(cost)).saturating_sub(tolerance),
        };
    }
    *tat = start + interval.saturating_mul(cost);
    Verdict {
        allowed: true,
        remaining: available - u64::from(cost),
        reset: *tat - now,
        retry_after: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_one_token_per_interval() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut tat = start;

        let burst: Vec<bool> = (0..6)
            .map(|_| gcra(&mut tat, start, interval, 5, 1).allowed)
            .collect();
        let refused = gcra(&mut tat, start, interval, 5, 1);
        let later = gcra(&mut tat, start + interval, interval, 5, 1);

        assert_eq!(burst, [true, true, true, true, true, false]);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, interval);
        assert_eq!(refused.remaining, 0);
        assert!(later.allowed, "{later:?}");
    }

    #[test]
    fn a_cost_larger_than_what_is_left_is_refused_and_takes_nothing() {
        let start = Instant::now();
        let interval = Duration::from_millis(10);
        let mut tat = start;

        let first = gcra(&mut tat, start, interval, 10, 8);
        let too_much = gcra(&mut tat, start, interval, 10, 5);
        let fits = gcra(&mut tat, start, interval, 10, 2);

        assert!(first.allowed && first.remaining == 2, "{first:?}");
        assert!(!too_much.allowed, "{too_much:?}");
        assert_eq!(too_much.retry_after, interval * 3);
        assert!(fits.allowed && fits.remaining == 0, "{fits:?}");
        assert_eq!(fits.reset, interval * 10);
    }
}
