//! CORS (the Fetch standard's cross-origin rules), by actix-cors, configured from
//! `CORS_ALLOWED_ORIGINS` and `CORS_MAX_AGE_SECS`.
//!
//! Preflights are answered here, before routing: they never reach a handler, a lookup or the
//! request log and metrics. Pages of the listed origins may use GET, HEAD and POST, send
//! [`ALLOWED_HEADERS`] and read [`EXPOSED_HEADERS`]; no cookies (`Access-Control-Allow-Credentials` is never sent: API keys and tokens travel in
//! `Authorization` or `X-API-Key`, which pages may send). With a
//! list, every answer depends on `Origin` and says `Vary: Origin`, answers to requests without
//! one included, so a shared cache never hands one origin's headers to another; with `*` every
//! answer, to a request with an `Origin` or without, says `Access-Control-Allow-Origin: *`, so it
//! is the same for every origin and nothing varies.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_cors::{Cors, CorsError, CorsMiddleware};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{Error, ResponseError};
use futures_util::future::LocalBoxFuture;

use crate::config::{CorsOrigins, CorsSettings};
use crate::error::ApiError;

/// Methods a cross-origin page may use.
pub const ALLOWED_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];

/// Request headers a cross-origin page may send beyond the CORS-safelisted ones: the batch's
/// `Content-Type: application/json`, a conditional GET's `If-None-Match`, and the ids that tie
/// a request to its logs and traces.
pub const ALLOWED_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::IF_NONE_MATCH,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Response headers a cross-origin page may read beyond the safelisted ones (`Cache-Control`
/// and `Content-Type` are).
pub const EXPOSED_HEADERS: [HeaderName; 8] = [
    HeaderName::from_static("x-cache"),
    header::ETAG,
    header::AGE,
    header::RETRY_AFTER,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("ratelimit"),
    HeaderName::from_static("ratelimit-policy"),
    header::WWW_AUTHENTICATE,
];

/// The CORS layer for these settings; `None` when `CORS_ALLOWED_ORIGINS` is unset or empty (no
/// CORS headers at all). Built per worker: actix-cors shares its state with `Rc`.
pub fn layer(settings: &CorsSettings) -> Option<Layer> {
    let origins = settings
        .allowed_origins
        .as_ref()
        .filter(|o| **o != CorsOrigins::List(Vec::new()))?;
    let cors = Cors::default()
        .allowed_methods(ALLOWED_METHODS)
        .allowed_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(usize::try_from(settings.max_age_secs).ok());
    let cors = match origins {
        // The same answer for every origin: nothing varies by it.
        CorsOrigins::Any => cors
            .allow_any_origin()
            .send_wildcard()
            .disable_vary_header(),
        CorsOrigins::List(list) => list
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin)),
    };
    Some(Layer {
        cors,
        any_origin: *origins == CorsOrigins::Any,
    })
}

/// actix-cors, and around it what this service adds: a preflight it refuses gets this
/// service's problem body (saying which origin, method or header was refused) instead of
/// actix-cors's plain text, and one log line (a preflight never reaches the request log); an
/// answer to an origin not listed carries no CORS header at all, `Vary` aside; and with `*` an
/// answer to a request without `Origin` says `Access-Control-Allow-Origin: *` too, so a cache
/// that keeps it may hand it to any page. One layer with a future of its own, so the response
/// is moved once and no future is boxed here per request.
#[derive(Default)]
pub struct Layer {
    cors: Cors,
    any_origin: bool,
}

impl<S, B> Transform<S, ServiceRequest> for Layer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<EitherBody<B>>>;
    type Error = Error;
    type Transform = FinishService<CorsMiddleware<S>>;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let cors = self.cors.new_transform(service);
        let any_origin = self.any_origin;
        Box::pin(async move {
            Ok(FinishService {
                service: cors.await?,
                any_origin,
            })
        })
    }
}

pub struct FinishService<S> {
    service: S,
    any_origin: bool,
}

impl<S, B> Service<ServiceRequest> for FinishService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = Finishing<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        Finishing {
            response: self.service.call(req),
            any_origin: self.any_origin,
        }
    }
}

pin_project_lite::pin_project! {
    /// The CORS layer's response, finished once it is there.
    pub struct Finishing<F> {
        #[pin]
        response: F,
        any_origin: bool,
    }
}

impl<F, B> Future for Finishing<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.response.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(res) => Poll::Ready(res.map(|res| finish(*this.any_origin, res))),
        }
    }
}

fn finish<B: MessageBody>(
    any_origin: bool,
    mut res: ServiceResponse<B>,
) -> ServiceResponse<EitherBody<B>> {
    if let Some(refused) = res
        .response()
        .error()
        .and_then(|e| e.as_error::<CorsError>())
    {
        let error = ApiError::CorsRefused(refusal(refused, res.request()));
        tracing::info!(error = %error, path = res.request().path(), "CORS preflight refused");
        let problem = error.error_response();
        return res.into_response(problem).map_into_right_body();
    }
    let headers = res.headers_mut();
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        if any_origin {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
        }
    }
    res.map_into_left_body()
}

/// What a refused preflight's problem says.
fn refusal(refused: &CorsError, req: &actix_web::HttpRequest) -> String {
    let header = |name: HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| crate::telemetry::clip(v).into_owned())
            .unwrap_or_default()
    };
    match refused {
        CorsError::OriginNotAllowed => format!(
            "pages of the origin `{}` may not call this API: it is not in CORS_ALLOWED_ORIGINS",
            header(header::ORIGIN)
        ),
        CorsError::MissingOrigin => "a preflight must say its page's origin in `Origin`".to_owned(),
        CorsError::MethodNotAllowed | CorsError::BadRequestMethod => format!(
            "a page of another origin may use {}; this preflight asks for `{}`",
            listed(ALLOWED_METHODS.iter().map(Method::as_str), "or"),
            header(header::ACCESS_CONTROL_REQUEST_METHOD)
        ),
        CorsError::HeadersNotAllowed | CorsError::BadRequestHeaders => format!(
            "a page of another origin may send {}; this preflight asks for `{}`",
            listed(ALLOWED_HEADERS.iter().map(HeaderName::as_str), "and"),
            header(header::ACCESS_CONTROL_REQUEST_HEADERS)
        ),
        other => format!("the cross-origin request was refused: {other}"),
    }
}

/// `a, b and c` (or `or`): what the settings allow, in a refusal's words, from the lists
/// actix-cors is given, so the two never differ.
fn listed<'a>(names: impl Iterator<Item = &'a str>, last: &str) -> String {
    let names: Vec<&str> = names.collect();
    match names.split_last() {
        None => String::new(),
        Some((only, [])) => (*only).to_owned(),
        Some((final_name, others)) => format!("{} {last} {final_name}", others.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::listed;

    #[test]
    fn a_list_reads_as_a_sentence() {
        assert_eq!(
            listed(["GET", "HEAD", "POST"].into_iter(), "or"),
            "GET, HEAD or POST"
        );
        assert_eq!(listed(["a", "b"].into_iter(), "and"), "a and b");
        assert_eq!(listed(["a"].into_iter(), "and"), "a");
        assert_eq!(listed([].into_iter(), "and"), "");
    }
}
