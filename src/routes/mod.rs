//! HTTP only: extract, call, map. Every route is registered here, once, on a utoipa-actix-web
//! config, so the OpenAPI document is built from the same registrations that serve requests.

mod health;
mod metrics;
mod vehicles;

use actix_web::{HttpRequest, HttpResponse, ResponseError};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::ApiError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(vehicles::vehicle_state_at)
        .service(health::livez)
        .service(health::readyz)
        .service(metrics::metrics);
}

/// Requests no route takes get a problem body too, not actix's empty 404: 405 when the path is
/// known (every route is registered for GET and HEAD only), 404 otherwise.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    if req.match_pattern().is_some() {
        ApiError::MethodNotAllowed.error_response()
    } else {
        ApiError::RouteNotFound.error_response()
    }
}
