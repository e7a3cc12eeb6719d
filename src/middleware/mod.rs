//! How an answer travels, configured once and wrapped around the `App` in `startup`: which
//! browser pages may read it (CORS) and how its body is encoded (compression). Routes say what
//! they answer; nothing here knows what that is.

pub mod compression;
pub mod cors;

use actix_web::http::header::{self, HeaderMap, HeaderValue};

/// Adds `name` to the response's `Vary`, kept as one field so that layers further out which
/// read and rewrite `Vary` (actix-cors does) see every name.
pub(crate) fn add_vary(headers: &mut HeaderMap, name: &'static str) {
    let merged = match headers.get(header::VARY) {
        None => HeaderValue::from_static(name),
        Some(existing) => {
            let mut value = Vec::with_capacity(existing.len() + 2 + name.len());
            value.extend_from_slice(existing.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(name.as_bytes());
            // A valid value followed by ", " and a token is a valid value.
            HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static(name))
        }
    };
    headers.insert(header::VARY, merged);
}
