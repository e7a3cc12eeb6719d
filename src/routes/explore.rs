//! `GET /explore/`: a page to look at one vehicle's timeline, served from the binary (no CDN).
//! It is a client of the public API like any other front end: plain `fetch` calls to the
//! history and the lookup, nothing private. Not in the OpenAPI document, like Swagger UI.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

/// The page, compiled in.
const PAGE: &str = include_str!("explore/index.html");

pub const PATH: &str = "/explore/";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(PATH)
            .route(web::get().to(page))
            .route(web::head().to(page)),
    )
    .service(web::redirect("/explore", PATH));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ))
        // The page changes only with the binary: a short reuse keeps a new release visible.
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        ))
        .body(PAGE)
}
