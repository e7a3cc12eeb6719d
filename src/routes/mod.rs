//! HTTP only: extract, call, map. Every route is registered here, once, on a utoipa-actix-web
//! config, so the OpenAPI document is built from the same registrations that serve requests.

mod batch;
mod conditional;
mod health;
mod history;
mod metrics;
mod vehicles;

use actix_web::{HttpRequest, HttpResponse, ResponseError};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::ApiError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(vehicles::vehicle_state_at)
        .service(batch::vehicle_states)
        .service(history::vehicle_history)
        .service(health::livez)
        .service(health::readyz)
        .service(metrics::metrics);
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
