//! HTTP only: extract, call, map. Every route is registered here, once, on a utoipa-actix-web
//! config, so the OpenAPI document is built from the same registrations that serve requests.

mod batch;
mod changes;
mod conditional;
pub mod explore;
pub mod fleet;
mod health;
mod history;
mod metrics;
mod query;
mod vehicles;

use actix_web::{HttpRequest, HttpResponse, ResponseError};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::{ApiError, RetryAfter};

/// The routes' parsers of request text (a batch body, a timeline's query string), public for
/// the fuzz targets in `fuzz/`, which call the very code the handlers run.
pub mod parse {
    pub use super::batch::parse_body as batch_body;
    pub use super::history::parse_query as history_query;
}

/// Every route, /metrics included: what the OpenAPI document describes and what the public
/// port serves unless METRICS_BIND_ADDR takes /metrics elsewhere.
pub fn configure(cfg: &mut ServiceConfig) {
    configure_api(cfg);
    configure_metrics(cfg);
}

/// Every route but /metrics.
pub fn configure_api(cfg: &mut ServiceConfig) {
    cfg.service(vehicles::vehicle_state_at)
        .service(batch::vehicle_states)
        .service(history::vehicle_history)
        .service(changes::vehicle_changes)
        .service(changes::changes)
        .service(fleet::fleet_states)
        .service(fleet::fleet_series)
        .service(fleet::fleet_vehicles)
        .service(health::livez)
        .service(health::readyz);
}

/// /metrics alone.
pub fn configure_metrics(cfg: &mut ServiceConfig) {
    cfg.service(metrics::metrics);
}

/// Requests no route takes get a problem body too, not actix's empty 404: 405 when the path is
/// known (with the methods it takes in `Allow`), 404 otherwise.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    if let Some(pattern) = req.match_pattern() {
        let allow = if pattern == batch::PATH {
            "POST"
        } else {
            "GET, HEAD"
        };
        ApiError::MethodNotAllowed(allow).error_response()
    } else {
        ApiError::RouteNotFound.error_response()
    }
}

/// The problems each documented route answers, by path and status: real errors, made where
/// possible by the routes' own parsers from bad input, so the OpenAPI document shows each status
/// with its own problems and their words as the service says them.
pub fn problem_examples() -> Vec<(&'static str, u16, Vec<ApiError>)> {
    let mut examples = vehicles::problem_examples();
    examples.extend(history::problem_examples());
    examples.extend(batch::problem_examples());
    examples.extend(changes::problem_examples());
    examples.extend(fleet::problem_examples());
    examples
}

/// The 503s a lookup can answer, with the default `Retry-After`s.
/// The answers of the middleware in front of every API route (API keys and tokens, quotas), documented
/// once and listed in each route's `responses(...)`; the middleware render them from `ApiError`.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    #[response(status = 401, description = "With API keys (`AUTH_API_KEYS_FILE`) or access tokens (`AUTH_JWKS_URL`) on: no credential, an API key the service does not know, or a token that fails a check (signature, issuer, audience, expiry; `detail` says which) (`/problems/unauthorized`), with `WWW-Authenticate: Bearer`.", content_type = "application/problem+json", headers(
        ("WWW-Authenticate" = String, description = "`Bearer realm=\"vehicle-state\"`, with `error=\"invalid_token\"` when a credential was sent (and, for a token, `error_description`)."),
    ))]
    Unauthorized(crate::error::Problem),
    #[response(status = 429, description = "With quotas on (`RATE_LIMIT_RPS`): the client has used its budget for now (`/problems/rate-limited`); retry after `Retry-After` seconds. Every answer then carries `RateLimit-Policy` and `RateLimit`.", content_type = "application/problem+json", headers(
        ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        ("RateLimit-Policy" = String, description = "The client's budget: `\"default\";q=BURST;w=SECONDS`."),
        ("RateLimit" = String, description = "What is left of it: `\"default\";r=REMAINING;t=SECONDS` until it is full again."),
    ))]
    RateLimited(crate::error::Problem),
}

/// The 429 of a client over its quota, for the OpenAPI document's examples.
fn rate_limited() -> ApiError {
    ApiError::RateLimited {
        rps: 20.0,
        burst: 40,
        retry_after_secs: 1,
    }
}

fn unavailable() -> Vec<ApiError> {
    use std::sync::Arc;

    use crate::db::DbError;
    use crate::service::LookupError;
    let retry_after = RetryAfter {
        database: 5,
        overloaded: 1,
    };
    vec![
        ApiError::from_lookup(Arc::new(LookupError::Db(DbError::Down)), &retry_after),
        ApiError::from_lookup(Arc::new(LookupError::Overloaded(256)), &retry_after),
        ApiError::KeysUnavailable {
            retry_after_secs: 10,
        },
    ]
}
