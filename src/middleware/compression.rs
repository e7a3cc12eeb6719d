//! Response compression (RFC 9110 §8.4): gzip, zstd or Brotli, whichever the client's
//! `Accept-Encoding` prefers (ties go to gzip, then zstd, then Brotli), done by actix-http's own
//! encoders. Only bodies of at least `COMPRESSION_MIN_BYTES` are compressed: below that the
//! response passes through untouched, without even reading `Accept-Encoding`, so a single lookup
//! (about 140 bytes) costs what it cost before.
//!
//! A compressed body is another representation of the answer, so it gets another entity tag
//! (RFC 9110 §8.8.3): the coding is appended inside the quotes (`"3f…"` becomes `"3f…-gzip"`).
//! `If-None-Match` is compared with the tag of the representation this request would get
//! ([`selected`] and [`tag_for`], used by the handler), and the 304 carries that tag: the
//! handler says how long the 200's body would have been ([`Uncompressed`]). Every response whose
//! encoding depends on `Accept-Encoding` says so in `Vary`.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::encoding::Encoder;
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, Encoding, HeaderMap, HeaderValue, Preference, Quality,
    QualityItem,
};
use actix_web::{Error, HttpMessage, HttpRequest};

/// The codings offered, in the order that breaks a tie of `q` (browsers list several, all at
/// q=1). gzip first: on this service's JSON it costs the least CPU and memory. Measured with
/// `bench/run`'s batch workload (100 answers, about 21 KB, per response, 64 connections):
/// identity 4,150 requests in 8 s at 54 MB RSS; gzip 3,685 at 52 MB; zstd 3,416 at 72 MB;
/// Brotli 2,866 at 222 MB (actix-http's Brotli encoder takes a window of 4 MiB per response).
/// A client that prefers zstd or Brotli says so with `q` and gets it.
const TIE_ORDER: [ContentEncoding; 3] = [
    ContentEncoding::Gzip,
    ContentEncoding::Zstd,
    ContentEncoding::Brotli,
];

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
    if coding != ContentEncoding::Identity {
        let headers = res.headers_mut();
        if let Some(tagged) = headers.get(header::ETAG).and_then(|t| tag_for(t, coding)) {
            headers.insert(header::ETAG, tagged);
        }
    }
    if coding == ContentEncoding::Identity || res.status() == StatusCode::NOT_MODIFIED {
        // Sent as it is (or, for a 304, no body at all), but chosen by Accept-Encoding.
        super::add_vary(res.headers_mut(), "Accept-Encoding");
        return res.map_into_left_body();
    }
    res.map_body(move |head, body| {
        // Sets `Content-Encoding` and appends its own `Vary` field, which layers further out
        // would not read (they read the first): merged into one.
        let encoded = Encoder::response(coding, head, body);
        super::merge_vary(head.headers_mut());
        // Boxed: the encoder's state is large, and every layer further out moves the response.
        EitherBody::right(BoxBody::new(encoded))
    })
}

/// The coding a response of `len` bytes to `req` is sent with: what the middleware will do, for
/// the handler to compare `If-None-Match` with the right tag. `min_bytes` is
/// `COMPRESSION_MIN_BYTES`, `None` with compression off.
pub fn selected(req: &HttpRequest, len: usize, min_bytes: Option<u64>) -> ContentEncoding {
    match min_bytes {
        Some(min) if u64::try_from(len).unwrap_or(u64::MAX) >= min => negotiate(req),
        _ => ContentEncoding::Identity,
    }
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

/// The coding the request prefers among those offered (RFC 9110 §12.5.3): the highest `q`,
/// a coding's own entry before `*`, ties broken by [`TIE_ORDER`]. Identity without
/// `Accept-Encoding`, when the client accepts none of them, or when it ranks identity itself
/// higher; never a 406.
fn negotiate(req: &HttpRequest) -> ContentEncoding {
    match req.get_header::<AcceptEncoding>() {
        Some(accepted) => prefer(&accepted.0),
        None => ContentEncoding::Identity,
    }
}

fn prefer(accepted: &[QualityItem<Preference<Encoding>>]) -> ContentEncoding {
    let quality = |coding: ContentEncoding| {
        let mut any = None;
        for item in accepted {
            match &item.item {
                Preference::Specific(Encoding::Known(c)) if *c == coding => {
                    return Some(item.quality);
                }
                Preference::Any => any = Some(item.quality),
                _ => {}
            }
        }
        any
    };
    let mut best = (ContentEncoding::Identity, Quality::ZERO);
    for coding in TIE_ORDER {
        let q = quality(coding).unwrap_or(Quality::ZERO);
        if q > best.1 {
            best = (coding, q);
        }
    }
    // Identity wins only when the client names it (or `*`) above every coding it accepts.
    match quality(ContentEncoding::Identity) {
        Some(identity) if identity > best.1 => ContentEncoding::Identity,
        _ => best.0,
    }
}

/// The entity tag of `etag`'s answer compressed with `coding`: the coding inside the quotes,
/// so a strong tag stays strong and a weak one weak. `None` for a value that is not a tag.
pub fn tag_for(etag: &HeaderValue, coding: ContentEncoding) -> Option<HeaderValue> {
    let text = etag.as_bytes();
    let closing = text
        .len()
        .checked_sub(1)
        .filter(|&i| i > 0 && text[i] == b'"')?;
    let coding = coding.as_str().as_bytes();
    let mut tagged = Vec::with_capacity(text.len() + 1 + coding.len());
    tagged.extend_from_slice(&text[..closing]);
    tagged.push(b'-');
    tagged.extend_from_slice(coding);
    tagged.push(b'"');
    HeaderValue::from_bytes(&tagged).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_answer_has_its_own_tag() {
        let etag = HeaderValue::from_static(r#""00ff00ff00ff00ff""#);
        for (coding, expected) in [
            (ContentEncoding::Gzip, r#""00ff00ff00ff00ff-gzip""#),
            (ContentEncoding::Brotli, r#""00ff00ff00ff00ff-br""#),
            (ContentEncoding::Zstd, r#""00ff00ff00ff00ff-zstd""#),
        ] {
            let tagged = tag_for(&etag, coding).expect("a tag");
            assert_eq!(tagged, expected);
        }
        let weak = HeaderValue::from_static(r#"W/"abc""#);
        assert_eq!(
            tag_for(&weak, ContentEncoding::Gzip).expect("a tag"),
            r#"W/"abc-gzip""#
        );
        assert_eq!(
            tag_for(&HeaderValue::from_static("abc"), ContentEncoding::Gzip),
            None
        );
        assert_eq!(
            tag_for(&HeaderValue::from_static("\""), ContentEncoding::Gzip),
            None
        );
    }

    #[test]
    fn the_client_s_preference_is_honoured_and_a_tie_goes_to_gzip() {
        for (header, expected) in [
            ("gzip, deflate, br, zstd", ContentEncoding::Gzip),
            ("br, zstd", ContentEncoding::Zstd),
            ("br", ContentEncoding::Brotli),
            ("zstd;q=1.0, gzip;q=0.9", ContentEncoding::Zstd),
            ("br;q=0.9, gzip;q=0.5", ContentEncoding::Brotli),
            ("gzip;q=0, br;q=0.1", ContentEncoding::Brotli),
            ("*", ContentEncoding::Gzip),
            ("*;q=0.5, br", ContentEncoding::Brotli),
            ("*, gzip;q=0", ContentEncoding::Zstd),
            ("identity", ContentEncoding::Identity),
            ("identity, gzip;q=0.5", ContentEncoding::Identity),
            ("gzip, identity;q=0.5", ContentEncoding::Gzip),
            ("deflate", ContentEncoding::Identity),
            ("gzip;q=0, br;q=0, zstd;q=0", ContentEncoding::Identity),
            ("", ContentEncoding::Identity),
        ] {
            let req = actix_web::test::TestRequest::default()
                .insert_header(("accept-encoding", header))
                .to_http_request();
            assert_eq!(negotiate(&req), expected, "{header:?}");
        }
        let without = actix_web::test::TestRequest::default().to_http_request();
        assert_eq!(negotiate(&without), ContentEncoding::Identity);
    }

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
