//! HTTP only: extract, call, map. Every route is registered here, once, on a utoipa-actix-web
//! config, so the OpenAPI document is built from the same registrations that serve requests.

mod batch;
mod conditional;
pub mod explore;
mod health;
mod history;
mod metrics;
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
    examples
}

/// The 503s a lookup can answer, with the default `Retry-After`s.
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
    ]
}
