//! How an answer travels, configured once and wrapped around the `App` in `startup`: which
//! browser pages may read it (CORS), how its body is encoded (compression), and what a browser
//! is told about the pages (pages). Routes say what
//! they answer; nothing here knows what that is.

pub mod auth;
pub mod compression;
pub mod cors;
pub mod head;
pub mod pages;
pub mod quota;

use actix_web::http::header::{self, HeaderMap, HeaderValue};

/// Adds `name` to the response's `Vary`, kept as one field so that layers further out which
/// read and rewrite `Vary` (actix-cors does) see every name.
pub(crate) fn add_vary(headers: &mut HeaderMap, name: &'static str) {
    headers.append(header::VARY, HeaderValue::from_static(name));
    merge_vary(headers);
}

/// Every `Vary` field as one (actix-http's encoder appends a field of its own).
pub(crate) fn merge_vary(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::VARY);
    let (Some(first), Some(_)) = (fields.next(), fields.next()) else {
        return;
    };
    let mut merged = first.as_bytes().to_vec();
    for field in headers.get_all(header::VARY).skip(1) {
        merged.extend_from_slice(b", ");
        merged.extend_from_slice(field.as_bytes());
    }
    // Valid values joined by ", " are a valid value.
    if let Ok(merged) = HeaderValue::from_bytes(&merged) {
        headers.insert(header::VARY, merged);
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{self, HeaderMap, HeaderValue};

    use super::{add_vary, merge_vary};

    #[test]
    fn every_vary_field_becomes_one() {
        let mut headers = HeaderMap::new();
        merge_vary(&mut headers);
        assert!(headers.get(header::VARY).is_none());
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        merge_vary(&mut headers);
        assert_eq!(headers.get(header::VARY).expect("vary"), "Origin");
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        merge_vary(&mut headers);
        let fields: Vec<_> = headers.get_all(header::VARY).collect();
        assert_eq!(fields, ["Origin, accept-encoding"]);
    }

    #[test]
    fn a_name_is_added_to_the_one_vary_field() {
        let mut headers = HeaderMap::new();
        add_vary(&mut headers, "Accept-Encoding");
        assert_eq!(headers.get(header::VARY).expect("vary"), "Accept-Encoding");
        add_vary(&mut headers, "Origin");
        let fields: Vec<_> = headers.get_all(header::VARY).collect();
        assert_eq!(fields, ["Accept-Encoding, Origin"]);
    }
}
