use std::sync::atomic::Ordering;

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpResponse, route, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::context::AppContext;

/// Whether a dependency answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    Up,
    Down,
}

/// Whether this replica takes traffic, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    Ready,
    /// PostgreSQL does not answer.
    NotReady,
    /// SIGTERM received: draining before the stop.
    ShuttingDown,
}

/// Readiness of this replica to take traffic.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct Readiness {
    pub status: ReadinessStatus,
    /// PostgreSQL is required: without it, uncached lookups fail.
    pub postgres: Dependency,
    /// Redis is reported but not required: without it, answers come from PostgreSQL.
    pub redis: Dependency,
}

/// Liveness: the process is serving HTTP.
///
/// Checks nothing else, so an outage of PostgreSQL or Redis never gets replicas restarted.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, description = "The process serves requests.", body = String, content_type = "text/plain", example = "ok")))]
#[route("/livez", method = "GET", method = "HEAD")]
pub async fn livez() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// Readiness: PostgreSQL answers and the replica is not shutting down.
///
/// Redis is reported but not required.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready to serve.", body = Readiness),
    (status = 503, description = "PostgreSQL is unreachable, or the replica is shutting down.", body = Readiness),
))]
#[route("/readyz", method = "GET", method = "HEAD")]
pub async fn readyz(state: web::Data<AppContext>) -> HttpResponse {
    let (postgres, redis) = tokio::join!(state.service.db.ping(), state.service.redis.ping());
    let up = |ok: bool| if ok { Dependency::Up } else { Dependency::Down };
    if let Err(error) = &postgres
        && !matches!(error, crate::db::DbError::Down)
    {
        // While it is known down, said once when that was found.
        tracing::warn!(error = %crate::telemetry::chain(error), "readiness: PostgreSQL is down");
    }
    if let Err(error) = &redis
        && let Some(errors) = state.service.redis.record_error("ping", error)
    {
        tracing::warn!(error = %crate::telemetry::chain(error), errors, "readiness: Redis is down");
    }
    let shutting_down = state.shutting_down.load(Ordering::Acquire);
    let status = match (shutting_down, postgres.is_ok()) {
        (true, _) => ReadinessStatus::ShuttingDown,
        (false, false) => ReadinessStatus::NotReady,
        (false, true) => ReadinessStatus::Ready,
    };
    let mut response = if status == ReadinessStatus::Ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(Readiness {
            status,
            postgres: up(postgres.is_ok()),
            redis: up(redis.is_ok()),
        })
}
