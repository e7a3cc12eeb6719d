//! Which coding a response gets (RFC 9110 §12.5.3), and the entity tag of the representation it
//! then is (RFC 9110 §8.8.3).

use actix_web::http::header::{
    AcceptEncoding, ContentEncoding, Encoding, HeaderValue, Preference, Quality, QualityItem,
};
use actix_web::{HttpMessage, HttpRequest};

/// The codings offered, in the order that breaks a tie of `q` (browsers list several, all at
/// q=1). gzip first: on this service's JSON it costs the least CPU and memory. Measured with
/// `bench/run`'s batch workload (100 answers, about 21 KB, per response, 64 connections):
/// identity 4,150 requests in 8 s at 54 MB RSS; gzip 3,685 at 52 MB; zstd 3,416 at 72 MB;
/// Brotli 2,866 at 222 MB (with actix-http's streaming encoder and its 4 MiB window; `encode`
/// now sizes the window to the body). A client that prefers zstd or Brotli says so with `q` and
/// gets it.
const TIE_ORDER: [ContentEncoding; 3] = [
    ContentEncoding::Gzip,
    ContentEncoding::Zstd,
    ContentEncoding::Brotli,
];

/// The coding a response of `len` bytes to `req` is sent with: what the middleware will do, for
/// the handler to compare `If-None-Match` with the right tag. `min_bytes` is
/// `COMPRESSION_MIN_BYTES`, `None` with compression off.
pub fn selected(req: &HttpRequest, len: usize, min_bytes: Option<u64>) -> ContentEncoding {
    match min_bytes {
        Some(min) if u64::try_from(len).unwrap_or(u64::MAX) >= min => negotiate(req),
        _ => ContentEncoding::Identity,
    }
}

/// The coding the request prefers among those offered (RFC 9110 §12.5.3): the highest `q`,
/// a coding's own entry before `*`, ties broken by [`TIE_ORDER`]. Identity without
/// `Accept-Encoding`, when the client accepts none of them, or when it ranks identity itself
/// higher; never a 406.
pub(super) fn negotiate(req: &HttpRequest) -> ContentEncoding {
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
}
