//! The one error type at the HTTP edge, rendered as `application/problem+json` (RFC 9457).
//!
//! Policy: 4xx bodies say what was wrong and how to fix it; 5xx bodies say only what kind of
//! failure it was, and the cause chain goes to the log. Each kind has a stable `type` URI
//! (relative, resolved against the service) that clients can match on.

mod problem;

pub use problem::{PROBLEM_JSON, Problem, ProblemType};

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

use crate::auth::{Refusal, TokenRefusal};
use crate::db::DbError;
use crate::domain::{Timestamp, TimestampError, VehicleId, VehicleIdError};
use crate::service::LookupError;
use crate::telemetry::chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidVehicleId(VehicleIdError),
    #[error("{0}")]
    InvalidTimestamp(TimestampError),
    /// A query parameter (`from`, `to`) that is not an instant.
    #[error("`{0}`: {1}")]
    InvalidTimestampParameter(String, TimestampError),
    #[error("no vehicle has id {0}")]
    VehicleNotFound(VehicleId),
    #[error("vehicle {0} has no recorded state at or before {1}; its first state change is later")]
    NoStateYet(VehicleId, Timestamp),
    #[error("no route matches this path; see /swagger-ui/ for the API")]
    RouteNotFound,
    #[error("this path only answers {0}")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    InvalidBody(String),
    #[error("a batch holds 1 to {max} lookups (BATCH_MAX_LOOKUPS); this one holds {count}")]
    InvalidBatchSize { count: usize, max: usize },
    #[error(
        "the body is larger than {max} bytes (BATCH_MAX_BODY_BYTES); send fewer lookups per request"
    )]
    BodyTooLarge { max: usize },
    #[error("the body must be JSON: send Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    InvalidQuery(String),
    #[error("the body did not arrive within {0:?} (HTTP_CLIENT_REQUEST_TIMEOUT_MS)")]
    BodyTimeout(std::time::Duration),
    /// No credential, or one this replica does not accept.
    #[error("{}", unauthorized_detail(*.0))]
    Unauthorized(Refusal),
    /// Tokens cannot be checked yet: the identity provider's keys have not been fetched.
    #[error(
        "the identity provider's keys could not be fetched, so access tokens cannot be checked; retry after {retry_after_secs} seconds"
    )]
    KeysUnavailable { retry_after_secs: u32 },
    /// The client's quota (`RATE_LIMIT_RPS`) is spent for now.
    #[error(
        "this client has used its quota ({rps} requests a second, bursts of {burst}; a batch counts one per lookup); retry after {retry_after_secs} seconds"
    )]
    RateLimited {
        rps: f64,
        burst: u32,
        retry_after_secs: u32,
    },
    /// A body sent chunked (`Transfer-Encoding`): only a body of known length is read.
    #[error(
        "send the body with Content-Length: a chunked body (Transfer-Encoding) is not accepted"
    )]
    LengthRequired,
    #[error("the database cannot be reached; retry after {retry_after_secs} seconds")]
    DatabaseUnavailable {
        retry_after_secs: u32,
        #[source]
        source: Arc<LookupError>,
    },
    #[error(
        "this replica is serving as many lookups as it may; retry after {retry_after_secs} seconds"
    )]
    Overloaded {
        retry_after_secs: u32,
        #[source]
        source: Arc<LookupError>,
    },
    /// A CORS preflight asked for what is not allowed (`CORS_ALLOWED_ORIGINS`, the methods or
    /// headers a page of another origin may use).
    #[error("{0}")]
    CorsRefused(String),
    /// A stream of changes asked of a replica that does not follow the change feed.
    #[error(
        "this replica does not follow the change feed (NATS_URL is not set), so it cannot stream changes"
    )]
    FeedUnavailable,
    /// The replica follows the feed, but cannot reach it now (NATS down, the stream missing).
    #[error(
        "this replica cannot reach the change feed now, so it cannot stream changes; retry after {retry_after_secs} seconds"
    )]
    FeedNotFollowed { retry_after_secs: u32 },
    /// `CHANGES_MAX_STREAMS` streams are open on this replica.
    #[error(
        "this replica streams changes to as many clients as it may ({max}, CHANGES_MAX_STREAMS); retry after {retry_after_secs} seconds (another replica may take you)"
    )]
    TooManyStreams { max: usize, retry_after_secs: u32 },
    #[error("the server failed to answer")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn kind(&self) -> ProblemType {
        match self {
            ApiError::InvalidVehicleId(_) => ProblemType::InvalidVehicleId,
            ApiError::InvalidTimestamp(_) | ApiError::InvalidTimestampParameter(..) => {
                ProblemType::InvalidTimestamp
            }
            ApiError::VehicleNotFound(_) => ProblemType::VehicleNotFound,
            ApiError::NoStateYet(..) => ProblemType::NoStateAtTimestamp,
            ApiError::RouteNotFound => ProblemType::RouteNotFound,
            ApiError::MethodNotAllowed(_) => ProblemType::MethodNotAllowed,
            ApiError::InvalidBody(_) => ProblemType::InvalidBody,
            ApiError::InvalidBatchSize { .. } => ProblemType::InvalidBatchSize,
            ApiError::BodyTooLarge { .. } => ProblemType::BodyTooLarge,
            ApiError::UnsupportedMediaType => ProblemType::UnsupportedMediaType,
            ApiError::InvalidQuery(_) => ProblemType::InvalidQuery,
            ApiError::BodyTimeout(_) => ProblemType::RequestTimeout,
            ApiError::LengthRequired => ProblemType::LengthRequired,
            ApiError::RateLimited { .. } => ProblemType::RateLimited,
            ApiError::Unauthorized(_) => ProblemType::Unauthorized,
            ApiError::KeysUnavailable { .. } => ProblemType::KeysUnavailable,
            ApiError::DatabaseUnavailable { .. } => ProblemType::DatabaseUnavailable,
            ApiError::Overloaded { .. } => ProblemType::Overloaded,
            ApiError::CorsRefused(_) => ProblemType::CorsRefused,
            ApiError::FeedUnavailable | ApiError::FeedNotFollowed { .. } => {
                ProblemType::FeedUnavailable
            }
            ApiError::TooManyStreams { .. } => ProblemType::TooManyStreams,
            ApiError::Internal(_) => ProblemType::InternalError,
        }
    }

    pub fn problem(&self) -> Problem {
        let kind = self.kind();
        Problem {
            kind,
            title: kind.title(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
        }
    }

    /// The error is shared (in an `Arc`) by every request that waited on the same lookup.
    pub fn from_lookup(source: Arc<LookupError>, retry_after: &RetryAfter) -> Self {
        match *source {
            LookupError::Overloaded(_) => ApiError::Overloaded {
                retry_after_secs: retry_after.overloaded,
                source,
            },
            LookupError::Db(DbError::Unavailable(_) | DbError::Down) => {
                ApiError::DatabaseUnavailable {
                    retry_after_secs: retry_after.database,
                    source,
                }
            }
            LookupError::Db(DbError::Query(_)) => ApiError::Internal(anyhow::Error::new(source)),
        }
    }

    /// Whether a request that failed with this error logs it (at `error`). Not a 4xx, which is
    /// the client's; not a shed request, expected under overload and already in its request log
    /// line (with the 503): logging each again would add load exactly when there is too much;
    /// and not one answered at once while PostgreSQL is known down, whose outage was logged once
    /// when it was found (see `db::Database`) and is counted as `down`; nor one refused while
    /// the identity provider's keys cannot be fetched, which each failed fetch logs.
    pub fn is_logged(&self) -> bool {
        match self {
            ApiError::Overloaded { .. }
            | ApiError::KeysUnavailable { .. }
            | ApiError::TooManyStreams { .. }
            | ApiError::FeedUnavailable
            | ApiError::FeedNotFollowed { .. } => false,
            ApiError::DatabaseUnavailable { source, .. } => {
                !matches!(**source, LookupError::Db(DbError::Down))
            }
            other => other.status_code().is_server_error(),
        }
    }

    /// The response with its problem body; callers may add headers before finishing it.
    pub fn response_builder(&self) -> (HttpResponseBuilder, Vec<u8>) {
        let status = self.status_code();
        if self.is_logged() {
            tracing::error!(error = %chain(self), "request failed");
        }
        let mut builder = HttpResponse::build(status);
        builder.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let ApiError::DatabaseUnavailable {
            retry_after_secs, ..
        }
        | ApiError::Overloaded {
            retry_after_secs, ..
        }
        | ApiError::RateLimited {
            retry_after_secs, ..
        }
        | ApiError::KeysUnavailable { retry_after_secs }
        | ApiError::TooManyStreams {
            retry_after_secs, ..
        }
        | ApiError::FeedNotFollowed { retry_after_secs } = self
        {
            builder.insert_header((header::RETRY_AFTER, *retry_after_secs));
            builder.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        }
        if let ApiError::Unauthorized(refusal) = self {
            builder.insert_header((header::WWW_AUTHENTICATE, www_authenticate(*refusal)));
            builder.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            builder.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        // A Problem of plain strings and integers always serialises.
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        (builder, body)
    }
}

fn unauthorized_detail(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::Missing => {
            "this service needs a credential: send an API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`, or an access token as `Authorization: Bearer TOKEN`"
        }
        Refusal::Unknown => {
            "the credential is not one this service knows: send a valid API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`, or a valid access token"
        }
        Refusal::Token(why) => why.describe(),
    }
}

/// RFC 6750's challenge: `error="invalid_token"` once a credential was sent, and for a token
/// what was wrong with it.
fn www_authenticate(refusal: Refusal) -> HeaderValue {
    const REALM: &str = r#"Bearer realm="vehicle-state""#;
    match refusal {
        Refusal::Missing => HeaderValue::from_static(REALM),
        Refusal::Unknown | Refusal::Token(TokenRefusal::KeysUnavailable) => {
            HeaderValue::from_static(r#"Bearer realm="vehicle-state", error="invalid_token""#)
        }
        Refusal::Token(why) => HeaderValue::from_str(&format!(
            r#"{REALM}, error="invalid_token", error_description="{}""#,
            why.describe()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(REALM)),
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidVehicleId(_)
            | ApiError::InvalidTimestamp(_)
            | ApiError::InvalidTimestampParameter(..)
            | ApiError::InvalidBody(_)
            | ApiError::InvalidBatchSize { .. }
            | ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::VehicleNotFound(_) | ApiError::NoStateYet(..) | ApiError::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::CorsRefused(_) => StatusCode::FORBIDDEN,
            ApiError::DatabaseUnavailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::KeysUnavailable { .. }
            | ApiError::FeedUnavailable
            | ApiError::FeedNotFollowed { .. }
            | ApiError::TooManyStreams { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (mut builder, body) = self.response_builder();
        builder.body(body)
    }
}

/// Seconds sent in `Retry-After`, by cause (`RETRY_AFTER_SECS`, `OVERLOAD_RETRY_AFTER_SECS`).
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter {
    pub database: u32,
    pub overloaded: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_hide_their_cause_from_the_body() {
        let error = ApiError::Internal(anyhow::anyhow!("relation \"stateLogs\" does not exist"));
        let problem = error.problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("stateLogs"), "{}", problem.detail);
        assert!(chain(&error).to_string().contains("stateLogs"));
    }

    const RETRY: RetryAfter = RetryAfter {
        database: 5,
        overloaded: 1,
    };

    #[test]
    fn every_kind_has_its_own_type_uri() {
        let id = VehicleId::parse("3").expect("valid");
        let at = Timestamp::parse("0").expect("valid");
        let errors = [
            ApiError::InvalidVehicleId(VehicleIdError::Empty),
            ApiError::InvalidTimestamp(TimestampError::Unrecognised),
            ApiError::VehicleNotFound(id),
            ApiError::NoStateYet(id, at),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed("GET, HEAD"),
            ApiError::InvalidBody("x".to_owned()),
            ApiError::InvalidBatchSize { count: 0, max: 1 },
            ApiError::BodyTooLarge { max: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::InvalidQuery("x".to_owned()),
            ApiError::BodyTimeout(std::time::Duration::from_secs(1)),
            ApiError::LengthRequired,
            ApiError::Unauthorized(Refusal::Unknown),
            ApiError::KeysUnavailable {
                retry_after_secs: 1,
            },
            ApiError::RateLimited {
                rps: 1.0,
                burst: 1,
                retry_after_secs: 1,
            },
            ApiError::CorsRefused("x".to_owned()),
            ApiError::from_lookup(
                Arc::new(LookupError::Db(DbError::Unavailable(
                    sqlx::Error::PoolTimedOut,
                ))),
                &RETRY,
            ),
            ApiError::from_lookup(Arc::new(LookupError::Overloaded(1)), &RETRY),
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        let mut kinds: Vec<_> = errors.iter().map(|e| e.problem().kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), errors.len());
    }

    #[test]
    fn defects_and_failing_dependencies_are_logged_but_shed_and_known_down_503s_are_not() {
        let db = |error: DbError| ApiError::from_lookup(Arc::new(LookupError::Db(error)), &RETRY);
        for (error, logged) in [
            (db(DbError::Unavailable(sqlx::Error::PoolTimedOut)), true),
            (db(DbError::Query(sqlx::Error::RowNotFound)), true),
            (ApiError::Internal(anyhow::anyhow!("x")), true),
            // Logged once for the whole outage, when it was found.
            (db(DbError::Down), false),
            (
                ApiError::from_lookup(Arc::new(LookupError::Overloaded(1)), &RETRY),
                false,
            ),
            (ApiError::RouteNotFound, false),
            (ApiError::InvalidQuery("x".to_owned()), false),
        ] {
            assert_eq!(error.is_logged(), logged, "{error:?}");
        }
    }
}
