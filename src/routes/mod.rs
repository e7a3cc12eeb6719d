//! HTTP only: extract, call, map. Every route is registered here, once, on a utoipa-actix-web
//! config, so the OpenAPI document is built from the same registrations that serve requests.

mod health;
mod vehicles;

use actix_web::HttpResponse;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::ApiError;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(vehicles::vehicle_state_at)
        .service(health::livez)
        .service(health::readyz);
}

/// Unknown routes get a problem body too, not actix's empty 404.
pub async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::RouteNotFound)
}
