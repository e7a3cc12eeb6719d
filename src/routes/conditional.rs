//! Conditional GETs (RFC 9110 §13.1.2): a client that holds an answer sends its `ETag` back in
//! `If-None-Match` and gets `304 Not Modified`, no body, when the answer is still the same.

use std::borrow::Cow;

use actix_web::HttpRequest;
use actix_web::http::header::{self, ContentEncoding, HeaderValue};

use crate::middleware::compression::tag_for;

/// Whether the request's `If-None-Match` names the representation it would get (or is `*`):
/// the answer tagged `etag`, compressed with `coding` (see `middleware::compression`), asked
/// for only when there is an `If-None-Match`. The comparison is the weak one the RFC prescribes
/// for `If-None-Match`: a `W/` prefix is ignored.
pub fn not_modified(
    req: &HttpRequest,
    etag: &HeaderValue,
    coding: impl FnOnce() -> ContentEncoding,
) -> bool {
    let mut sent = req.headers().get_all(header::IF_NONE_MATCH).peekable();
    if sent.peek().is_none() {
        return false;
    }
    let representation = match coding() {
        ContentEncoding::Identity => Cow::Borrowed(etag),
        coding => match tag_for(etag, coding) {
            Some(tag) => Cow::Owned(tag),
            None => return false,
        },
    };
    let Ok(representation) = representation.to_str() else {
        return false;
    };
    sent.filter_map(|value| value.to_str().ok())
        .any(|value| names(value, representation))
}

fn names(if_none_match: &str, etag: &str) -> bool {
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{ContentEncoding, HeaderValue};
    use actix_web::test::TestRequest;

    use super::{names, not_modified};

    #[test]
    fn if_none_match_names_the_tag_in_any_of_its_forms() {
        let etag = r#""00ff00ff00ff00ff""#;
        for (header, expected) in [
            (r#""00ff00ff00ff00ff""#, true),
            (r#"W/"00ff00ff00ff00ff""#, true),
            (r#""aaaa", "00ff00ff00ff00ff""#, true),
            (r#""aaaa","00ff00ff00ff00ff""#, true),
            ("*", true),
            (r#""aaaa""#, false),
            (r#"00ff00ff00ff00ff"#, false),
            ("", false),
            (r#""00ff00ff00ff00f""#, false),
        ] {
            assert_eq!(names(header, etag), expected, "{header}");
        }
    }

    #[test]
    fn if_none_match_is_compared_with_the_tag_of_the_representation_sent() {
        let etag = HeaderValue::from_static(r#""abc""#);
        for (sent, coding, expected) in [
            (r#""abc""#, ContentEncoding::Identity, true),
            (r#""abc-gzip""#, ContentEncoding::Gzip, true),
            (r#"W/"abc-br""#, ContentEncoding::Brotli, true),
            (r#""x", "abc-zstd""#, ContentEncoding::Zstd, true),
            // The client holds another encoding of the answer than it would get now.
            (r#""abc""#, ContentEncoding::Gzip, false),
            (r#""abc-gzip""#, ContentEncoding::Identity, false),
            (r#""abc-gzip""#, ContentEncoding::Brotli, false),
            ("*", ContentEncoding::Gzip, true),
        ] {
            let req = TestRequest::default()
                .insert_header(("if-none-match", sent))
                .to_http_request();
            assert_eq!(
                not_modified(&req, &etag, || coding),
                expected,
                "{sent} {coding:?}"
            );
        }
        let without = TestRequest::default().to_http_request();
        assert!(!not_modified(&without, &etag, || unreachable!(
            "asked only with If-None-Match"
        )));
    }
}
