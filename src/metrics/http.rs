//! The HTTP series, and their registration per route and status.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use super::{read, write};

/// Requests by route template (never the raw path) and status.
pub const HTTP_REQUESTS: &str = "vehicle_state_http_requests_total";
/// Time from a request's head to its response, by route template.
pub const HTTP_DURATION: &str = "vehicle_state_http_request_duration_seconds";

/// Bucket bounds of [`HTTP_DURATION`] (and of the ingest commit time), in seconds: from a memory
/// hit to the timeouts.
pub(super) const DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The HTTP series of one route and status, registered on first use and kept.
pub(super) struct RequestSeries {
    pub(super) duration: metrics::Histogram,
    pub(super) requests: metrics::Counter,
}

impl RequestSeries {
    pub(super) fn with(route: &'static str, status: u16, record: impl FnOnce(&RequestSeries)) {
        static SERIES: LazyLock<RwLock<HashMap<(&'static str, u16), RequestSeries>>> =
            LazyLock::new(Default::default);
        if let Some(series) = read(&SERIES).get(&(route, status)) {
            return record(series);
        }
        let series = RequestSeries {
            duration: metrics::histogram!(HTTP_DURATION, "route" => route),
            requests: metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()),
        };
        record(&series);
        write(&SERIES).insert((route, status), series);
    }
}

/// Quota decisions, by outcome (`allowed`, `limited`) and by what decided (`redis`, `lease`,
/// `local` while Redis fails); only while quotas are on.
pub const QUOTA_DECISIONS: &str = "vehicle_state_quota_decisions_total";
/// Fetches of the identity provider's key set (`AUTH_JWKS_URL`), by outcome (ok, failed).
pub const AUTH_JWKS_FETCHES: &str = "vehicle_state_auth_jwks_fetches_total";
/// Signing keys held from the identity provider's key set.
pub const AUTH_JWKS_KEYS: &str = "vehicle_state_auth_jwks_keys";
