//! Conditional GETs (RFC 9110 §13.1.2): a client that holds an answer sends its `ETag` back in
//! `If-None-Match` and gets `304 Not Modified`, no body, when the answer is still the same.

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderValue};

use crate::middleware::compression::same_answer;

/// Whether the request's `If-None-Match` names `etag` (or is `*`). The comparison is the weak
/// one the RFC prescribes for `If-None-Match`: a `W/` prefix is ignored. The tag of the answer
/// compressed (`"…-gzip"`) names it too: it is the same answer in another encoding.
pub fn not_modified(req: &HttpRequest, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .any(|value| names(value, etag))
}

fn names(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || same_answer(tag.strip_prefix("W/").unwrap_or(tag), etag))
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn if_none_match_names_the_tag_in_any_of_its_forms() {
        let etag = r#""00ff00ff00ff00ff""#;
        for (header, expected) in [
            (r#""00ff00ff00ff00ff""#, true),
            (r#"W/"00ff00ff00ff00ff""#, true),
            (r#""00ff00ff00ff00ff-gzip""#, true),
            (r#"W/"00ff00ff00ff00ff-br""#, true),
            (r#""00ff00ff00ff00ff-zstd", "x""#, true),
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
}
