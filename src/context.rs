//! The context every request handler shares: built by `startup`, read by `routes`.

use std::sync::atomic::AtomicBool;

use actix_web::http::header::HeaderValue;

use crate::error::RetryAfter;
use crate::service::StateService;

/// What every request handler shares.
pub struct AppContext {
    pub service: StateService,
    pub retry_after: RetryAfter,
    /// The `Cache-Control` value of each answer, by how many seconds it may still be reused.
    pub cache_control: CacheControlValues,
    /// Set on SIGTERM, before the listener closes, so `/readyz` turns the load balancer away.
    pub shutting_down: AtomicBool,
    /// `BATCH_MAX_LOOKUPS` and `BATCH_MAX_BODY_BYTES`.
    pub batch: BatchLimits,
    /// `COMPRESSION_MIN_BYTES`, `None` with `COMPRESSION=false`: which representation a
    /// conditional request's `If-None-Match` is compared with.
    pub compress_at: Option<u64>,
    /// The clients' quotas, `None` without `RATE_LIMIT_RPS`: charged once per request by
    /// `middleware::quota`, and by a batch for its other lookups.
    pub quota: Option<std::sync::Arc<crate::quota::Quota>>,
    /// Streams of changes: the hub the change feed's follower fills, and their bounds.
    pub changes: ChangeStreams,
    /// `FLEET_SERIES_MAX_POINTS`.
    pub fleet_series_max_points: u32,
}

/// What streams of changes need beyond the hub: `CHANGES_MAX_IDS`, `CHANGES_KEEPALIVE_SECS`,
/// `CHANGES_REPLAY_MAX`, and the change feed's subject prefix (to read it back).
pub struct ChangeStreams {
    pub hub: std::sync::Arc<crate::service::changes::ChangeHub>,
    pub max_ids: usize,
    pub keepalive: std::time::Duration,
    pub replay_max: usize,
    pub subject_prefix: String,
    /// Replays of the change stream at once (reconnecting streams that missed announcements).
    pub replays: tokio::sync::Semaphore,
}

/// The bounds of one `POST /vehicles/states`.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_lookups: usize,
    pub max_body_bytes: usize,
    /// `HTTP_CLIENT_REQUEST_TIMEOUT_MS`, for the body as for the head: a body that trickles in
    /// slower is a 408.
    pub read_timeout: std::time::Duration,
}

/// `Cache-Control: public, max-age=N` (with `stale-if-error=S` when `STALE_IF_ERROR_SECS` is not
/// 0) for every N an answer can have left, rendered once at start rather than per response.
/// `private` instead of `public` when requests need credentials: a shared cache must not hand
/// an answer given to one caller to anyone who asks (RFC 9111 §3.5).
pub struct CacheControlValues {
    /// Index N: the value for `max-age=N`, for N from 0 to the TTL (at most [`Self::MAX_TABLE`]).
    table: Vec<HeaderValue>,
    stale_if_error_secs: u32,
    private: bool,
}

impl CacheControlValues {
    /// TTLs above this many seconds render the rare longer `max-age` per response instead.
    pub const MAX_TABLE: u32 = 3600;

    pub fn new(ttl_secs: u32, stale_if_error_secs: u32, private: bool) -> Self {
        let table = (0..=ttl_secs.min(Self::MAX_TABLE))
            .map(|max_age| Self::render(max_age, stale_if_error_secs, private))
            .collect();
        Self {
            table,
            stale_if_error_secs,
            private,
        }
    }

    /// The value for an answer that may be reused for `max_age` more seconds.
    pub fn get(&self, max_age: u64) -> HeaderValue {
        usize::try_from(max_age)
            .ok()
            .and_then(|i| self.table.get(i))
            .cloned()
            .unwrap_or_else(|| {
                let max_age = u32::try_from(max_age).unwrap_or(u32::MAX);
                Self::render(max_age, self.stale_if_error_secs, self.private)
            })
    }

    fn render(max_age: u32, stale_if_error_secs: u32, private: bool) -> HeaderValue {
        let scope = if private { "private" } else { "public" };
        let text = if stale_if_error_secs > 0 {
            format!("{scope}, max-age={max_age}, stale-if-error={stale_if_error_secs}")
        } else {
            format!("{scope}, max-age={max_age}")
        };
        // Digits, letters, commas, spaces and `=` only: always a valid header value.
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("no-cache"))
    }
}

#[cfg(test)]
mod tests {
    use super::CacheControlValues;

    #[test]
    fn cache_control_is_rendered_for_every_max_age_and_beyond_the_table() {
        let plain = CacheControlValues::new(60, 0, false);
        assert_eq!(plain.get(0), "public, max-age=0");
        assert_eq!(plain.get(60), "public, max-age=60");
        assert_eq!(plain.get(61), "public, max-age=61");
        assert_eq!(
            CacheControlValues::new(60, 0, true).get(59),
            "private, max-age=59"
        );
        let with_stale = CacheControlValues::new(7200, 30, false);
        assert_eq!(with_stale.get(59), "public, max-age=59, stale-if-error=30");
        assert_eq!(
            with_stale.get(7200),
            "public, max-age=7200, stale-if-error=30"
        );
        assert_eq!(
            with_stale.get(u64::MAX),
            format!("public, max-age={}, stale-if-error=30", u32::MAX)
        );
    }
}
