//! What a browser is told about the pages this service serves (`/explore/` and Swagger UI):
//! a strict `Content-Security-Policy` (scripts, styles and calls from this origin only, never
//! framed), `X-Content-Type-Options: nosniff`, `X-Frame-Options` for browsers that predate
//! `frame-ancestors`, and no `Referer` sent on. Only HTML, script and style answers get them:
//! the API's JSON answers are never rendered, and a lookup costs one header comparison here.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::Error;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `/explore/`: its script and style are files of this origin, its calls go to this origin.
const EXPLORE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Swagger UI: its scripts and styles are files of this origin too, but it sets `style`
/// attributes as it renders (hence `'unsafe-inline'` for styles alone) and draws icons from
/// `data:` URLs; "Try it out" calls this origin.
const SWAGGER_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    font-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The middleware, wrapped around the `App` in `startup`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageHeaders;

impl<S, B> Transform<S, ServiceRequest> for PageHeaders
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = PageHeadersService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(PageHeadersService { service }))
    }
}

pub struct PageHeadersService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for PageHeadersService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = WithPageHeaders<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        WithPageHeaders {
            response: self.service.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct WithPageHeaders<F> {
        #[pin]
        response: F,
    }
}

impl<F, B> Future for WithPageHeaders<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut res = match self.project().response.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(res) => res?,
        };
        let Some(kind) = page_kind(res.headers()) else {
            return Poll::Ready(Ok(res));
        };
        let swagger = res.request().path().starts_with("/swagger-ui");
        let headers = res.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if kind == Kind::Html {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(if swagger {
                    SWAGGER_POLICY
                } else {
                    EXPLORE_POLICY
                }),
            );
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            headers.insert(
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            );
        }
        Poll::Ready(Ok(res))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Html,
    /// A script or a style sheet: `nosniff` alone.
    Asset,
}

/// Whether the answer is a page or a page's asset, by its `Content-Type`.
fn page_kind(headers: &HeaderMap) -> Option<Kind> {
    let content_type = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let starts = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if starts(b"text/html") {
        Some(Kind::Html)
    } else if starts(b"text/javascript") || starts(b"application/javascript") || starts(b"text/css")
    {
        Some(Kind::Asset)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_their_assets_are_told_apart_from_the_api_s_answers() {
        for (content_type, expected) in [
            ("text/html; charset=utf-8", Some(Kind::Html)),
            ("TEXT/HTML", Some(Kind::Html)),
            ("text/javascript; charset=utf-8", Some(Kind::Asset)),
            ("application/javascript", Some(Kind::Asset)),
            ("text/css", Some(Kind::Asset)),
            ("application/json", None),
            ("application/problem+json", None),
            ("text/plain", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            assert_eq!(page_kind(&headers), expected, "{content_type}");
        }
        assert_eq!(page_kind(&HeaderMap::new()), None);
    }
}
