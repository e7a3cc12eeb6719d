//! `HEAD` for the documentation routes. Swagger UI and its document are served by
//! utoipa-swagger-ui, which registers them for `GET` only, so a `HEAD` there would be a 405
//! although every other route answers `HEAD` as it answers `GET`. Such a request is routed as
//! the `GET` it stands for; actix-http still sends no body, since it knows the request was a
//! `HEAD` from the request line it parsed, whatever the method is rewritten to afterwards.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;

/// The paths whose routes come from a crate that registers `GET` alone.
fn is_documentation(path: &str) -> bool {
    path == "/api-docs/openapi.json" || path.starts_with("/swagger-ui/")
}

/// Wrapped innermost, so the request log and the metrics still see the `HEAD`.
pub async fn documentation_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if req.method() == Method::HEAD && is_documentation(req.path()) {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::is_documentation;

    #[test]
    fn only_the_documentation_routes_are_rewritten() {
        for (path, rewritten) in [
            ("/api-docs/openapi.json", true),
            ("/swagger-ui/", true),
            ("/swagger-ui/index.css", true),
            ("/swagger-ui", false),
            ("/api-docs/openapi.yaml", false),
            ("/vehicles/states", false),
            ("/explore/", false),
        ] {
            assert_eq!(is_documentation(path), rewritten, "{path}");
        }
    }
}
