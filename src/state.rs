//! What every request handler shares: built by `startup`, read by `routes`.

use std::sync::atomic::AtomicBool;

use crate::error::RetryAfter;
use crate::service::StateService;

/// What every request handler shares.
pub struct AppState {
    pub service: StateService,
    pub retry_after: RetryAfter,
    /// `STALE_IF_ERROR_SECS`, advertised in `Cache-Control` when not 0.
    pub stale_if_error_secs: u32,
    /// Set on SIGTERM, before the listener closes, so `/readyz` turns the load balancer away.
    pub shutting_down: AtomicBool,
    /// `BATCH_MAX_LOOKUPS` and `BATCH_MAX_BODY_BYTES`.
    pub batch: BatchLimits,
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
