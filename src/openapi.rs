//! The OpenAPI document: built once from the route registrations, served at
//! `/api-docs/openapi.json`, shown by Swagger UI, and committed as `openapi.yaml`.

use actix_web::App;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vehicle-state",
        description = "Which state was vehicle N in (quoted, selling, sold) at instant T? Answers may be up to `CACHE_TTL_SECS` (60 by default) stale. Errors are `application/problem+json` (RFC 9457) with a stable `type`.",
        license(name = "MIT")
    ),
    components(schemas(Problem)),
    tags(
        (name = "vehicles", description = "Point-in-time vehicle state"),
        (name = "health", description = "Liveness and readiness for load balancers and orchestrators"),
    )
)]
struct ApiDoc;

/// The document, from the same registrations the server uses.
pub fn spec() -> utoipa::openapi::OpenApi {
    let (_, mut spec) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(crate::routes::configure)
        .split_for_parts();
    // The version is the crate's, so a release and its document agree.
    spec.info.version = env!("CARGO_PKG_VERSION").to_owned();
    spec
}

/// The document as YAML: the text of `openapi.yaml`.
pub fn yaml() -> anyhow::Result<String> {
    Ok(spec().to_yaml()?)
}
