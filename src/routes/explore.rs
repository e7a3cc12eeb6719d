//! `GET /explore/`: a page to look at one vehicle's timeline, served from the binary (no CDN).
//! It is a client of the public API like any other front end: plain `fetch` calls to the
//! history and the lookup, nothing private. Not in the OpenAPI document, like Swagger UI.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

/// The page, its script and its style, compiled in. The script and the style are files of
/// their own, not inline, so that the page's `Content-Security-Policy` allows only this origin's
/// scripts and styles (`middleware::pages`).
const PAGE: &str = include_str!("explore/index.html");
const SCRIPT: &str = include_str!("explore/explore.js");
const STYLE: &str = include_str!("explore/explore.css");

pub const PATH: &str = "/explore/";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(PATH)
            .route(web::get().to(page))
            .route(web::head().to(page)),
    )
    .service(
        web::resource("/explore/explore.js")
            .route(web::get().to(script))
            .route(web::head().to(script)),
    )
    .service(
        web::resource("/explore/explore.css")
            .route(web::get().to(style))
            .route(web::head().to(style)),
    )
    .service(web::redirect("/explore", PATH));
}

async fn page() -> HttpResponse {
    file("text/html; charset=utf-8", PAGE)
}

async fn script() -> HttpResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    file("text/css; charset=utf-8", STYLE)
}

fn file(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        // The files change only with the binary: a short reuse keeps a new release visible.
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        ))
        .body(body)
}
