//! What can go wrong with a Redis call, and how each failure is named in logs and metrics.

use std::time::Duration;

use super::Corrupt;
use super::topology::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed less than {0:?} ago (REDIS_RETRY_INTERVAL_MS); not asked")]
    CoolingDown(Duration),
    /// Rendered whole, without a source: deadpool's own words ("Error occurred while creating
    /// a new object") would stand between the reader and the cause.
    #[error("{}", pool_failure(.0))]
    Pool(PoolError),
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl From<PoolError> for CacheError {
    fn from(error: PoolError) -> Self {
        CacheError::Pool(error)
    }
}

/// Why the pool had no connection to give, in a phrase.
fn pool_failure(error: &PoolError) -> String {
    use deadpool::managed::{PoolError as P, TimeoutType};
    match error {
        P::Backend(cause) => format!("cannot connect to Redis: {cause}"),
        P::Timeout(TimeoutType::Create) => {
            "cannot connect to Redis: no connection made within REDIS_TIMEOUT_MS".to_owned()
        }
        P::Timeout(TimeoutType::Wait | TimeoutType::Recycle) => {
            "no Redis connection free within REDIS_TIMEOUT_MS".to_owned()
        }
        P::Closed => "the Redis pool is closed".to_owned(),
        P::NoRuntimeSpecified => "the Redis pool has no runtime".to_owned(),
        P::PostCreateHook(cause) => format!("a new Redis connection failed its set-up: {cause}"),
    }
}

impl CacheError {
    /// Whether Redis could not be reached, or what answered is not the master any more (as
    /// opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        match self {
            CacheError::Timeout(_) | CacheError::Pool(_) | CacheError::CoolingDown(_) => true,
            CacheError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || self.is_read_only()
            }
            CacheError::Corrupt(_) => false,
        }
    }

    /// Whether Redis was reached and refused the login (a wrong password or user in
    /// `REDIS_URL`, or none given to a Redis that wants one: `NOAUTH`): a setting to fix, not
    /// an outage.
    pub fn is_refused_login(&self) -> bool {
        let refused = |e: &redis::RedisError| {
            e.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        };
        match self {
            CacheError::Redis(e) => refused(e),
            CacheError::Pool(deadpool::managed::PoolError::Backend(e)) => refused(e),
            _ => false,
        }
    }

    /// `READONLY`: the connection reaches a replica, as a master demoted by a Sentinel failover
    /// becomes one.
    fn is_read_only(&self) -> bool {
        matches!(self, CacheError::Redis(e)
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
    }

    /// Every value [`CacheError::kind`] returns.
    pub const KINDS: [&'static str; 6] = [
        "timeout",
        "unreachable",
        "read_only",
        "reply",
        "corrupt",
        "skipped",
    ];

    /// The `kind` label of `vehicle_state_redis_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::Timeout(_) => "timeout",
            CacheError::CoolingDown(_) => "skipped",
            CacheError::Corrupt(_) => "corrupt",
            error if error.is_read_only() => "read_only",
            error if error.is_unreachable() => "unreachable",
            _ => "reply",
        }
    }
}
