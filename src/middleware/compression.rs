//! Response compression (RFC 9110 §8.4): gzip, zstd or Brotli, whichever the client's
//! `Accept-Encoding` prefers (ties go to gzip, then zstd, then Brotli), each body encoded whole by
//! `encode`. Only bodies of at least `COMPRESSION_MIN_BYTES` are compressed: below that the
//! response passes through untouched, without even reading `Accept-Encoding`, so a single lookup
//! (about 140 bytes) costs what it cost before.
//!
//! A compressed body is another representation of the answer, so it gets another entity tag
//! (RFC 9110 §8.8.3): the coding is appended inside the quotes (`"3f…"` becomes `"3f…-gzip"`).
//! `If-None-Match` is compared with the tag of the representation this request would get
//! ([`selected`] and [`tag_for`], used by the handler), and the 304 carries that tag: the
//! handler says how long the 200's body would have been ([`Uncompressed`]). Every response whose
//! encoding depends on `Accept-Encoding` says so in `Vary`.
//!
//! Bodies are encoded whole, on the worker thread, with windows sized to them (`encode.rs` says
//! why and at which levels): memory for encoding is bounded by the number of workers and the
//! largest body, not by the number of clients.

mod encode;
mod negotiation;

pub use negotiation::{selected, tag_for};

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::Error;
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentEncoding, HeaderMap};

use negotiation::negotiate;

/// Put in a 304's extensions by the handler: the length of the body of the 200 it stands for,
/// so the 304 can carry the entity tag that 200 would have carried.
#[derive(Debug, Clone, Copy)]
pub struct Uncompressed(pub usize);

/// The middleware. `min_bytes` is `COMPRESSION_MIN_BYTES`, `None` with `COMPRESSION=false`
/// (every response then passes through as it is). A `Transform` of its own rather than
/// `from_fn`, which would box a future per request on the hot path.
#[derive(Debug, Clone, Copy)]
pub struct Compress {
    pub min_bytes: Option<u64>,
}

impl<S, B> Transform<S, ServiceRequest> for Compress
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = Error;
    type Transform = CompressService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CompressService {
            service,
            min_bytes: self.min_bytes,
        }))
    }
}

pub struct CompressService<S> {
    service: S,
    min_bytes: Option<u64>,
}

impl<S, B> Service<ServiceRequest> for CompressService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = Error;
    type Future = Compressing<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        Compressing {
            response: self.service.call(req),
            min_bytes: self.min_bytes,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's response, encoded once it is there.
    pub struct Compressing<F> {
        #[pin]
        response: F,
        min_bytes: Option<u64>,
    }
}

impl<F, B> Future for Compressing<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<EitherBody<B, BoxBody>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.response.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(res) => res?,
        };
        Poll::Ready(Ok(match *this.min_bytes {
            Some(min_bytes) => encode(min_bytes, res),
            None => res.map_into_left_body(),
        }))
    }
}

/// The response, compressed as the request prefers if its body is at least `min_bytes`.
fn encode<B: MessageBody + 'static>(
    min_bytes: u64,
    mut res: ServiceResponse<B>,
) -> ServiceResponse<EitherBody<B, BoxBody>> {
    let Some(len) = representation_len(&res) else {
        return res.map_into_left_body();
    };
    // Too small, or not a body to compress: as it is, whatever the client accepts, without
    // reading `Accept-Encoding` (a single lookup's answer always takes this way).
    if len < min_bytes || !compressible(res.headers()) {
        return res.map_into_left_body();
    }
    let coding = negotiate(res.request());
    if coding == ContentEncoding::Identity || res.status() == StatusCode::NOT_MODIFIED {
        // Sent as it is (or, for a 304, no body at all), but chosen by Accept-Encoding; a 304
        // carries the tag of the representation its 200 would have been.
        let headers = res.headers_mut();
        if coding != ContentEncoding::Identity
            && let Some(tagged) = headers.get(header::ETAG).and_then(|t| tag_for(t, coding))
        {
            headers.insert(header::ETAG, tagged);
        }
        super::add_vary(headers, "Accept-Encoding");
        return res.map_into_left_body();
    }
    res.map_body(move |head, body| {
        let headers = head.headers_mut();
        super::add_vary(headers, "Accept-Encoding");
        // Every answer of this service is in memory already; a body that is not (none is
        // known) goes as it is rather than through a streaming encoder.
        let bytes = match body.try_into_bytes() {
            Ok(bytes) => bytes,
            Err(body) => return EitherBody::left(body),
        };
        match encode::encode(coding, &bytes) {
            Some(encoded) => {
                if let Some(tagged) = headers.get(header::ETAG).and_then(|t| tag_for(t, coding)) {
                    headers.insert(header::ETAG, tagged);
                }
                headers.insert(header::CONTENT_ENCODING, coding.to_header_value());
                EitherBody::right(BoxBody::new(encoded))
            }
            None => EitherBody::right(BoxBody::new(bytes)),
        }
    })
}

/// The length of the body the response carries or, for a 304, stands for; `None` for a body
/// of unknown length (none of this service's answers) or a response without one.
fn representation_len(res: &ServiceResponse<impl MessageBody>) -> Option<u64> {
    match res.status() {
        StatusCode::NOT_MODIFIED => res
            .response()
            .extensions()
            .get::<Uncompressed>()
            .map(|u| u64::try_from(u.0).unwrap_or(u64::MAX)),
        StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::SWITCHING_PROTOCOLS => {
            None
        }
        _ => match res.response().body().size() {
            BodySize::Sized(len) if len > 0 => Some(len),
            _ => None,
        },
    }
}

/// Not already encoded, and not a format that is compressed in itself (images but SVG, audio,
/// video, fonts).
fn compressible(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let content_type = content_type.as_bytes();
    let starts = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if starts(b"image/svg") {
        return true;
    }
    !(starts(b"image/") || starts(b"audio/") || starts(b"video/") || starts(b"font/"))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    #[test]
    fn formats_compressed_in_themselves_are_left_alone() {
        for (content_type, expected) in [
            (Some("application/json"), true),
            (Some("application/problem+json"), true),
            (Some("text/html; charset=utf-8"), true),
            (Some("image/svg+xml"), true),
            (Some("image/png"), false),
            (Some("Image/PNG"), false),
            (Some("video/mp4"), false),
            (Some("font/woff2"), false),
            (None, true),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(value) = content_type {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            }
            assert_eq!(compressible(&headers), expected, "{content_type:?}");
        }
        let mut encoded = HeaderMap::new();
        encoded.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!compressible(&encoded));
    }
}
