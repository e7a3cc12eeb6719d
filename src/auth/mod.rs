//! Who may read (`AUTH_API_KEYS_FILE`): what a request must carry, and whose it is.
//!
//! A credential is sent as `Authorization: Bearer …` or `X-API-Key: …`. The caller's name (the
//! key's, never the key) goes into the request log and the traces, and is the client a quota
//! counts against.

mod keys;

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};

pub use keys::ApiKeys;

/// The credentials this replica accepts.
pub struct Authenticator {
    keys: Arc<ApiKeys>,
}

/// Who a request is: put in its extensions once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential at all.
    Missing,
    /// A credential this replica does not know.
    Unknown,
}

impl Authenticator {
    pub fn new(keys: Arc<ApiKeys>) -> Self {
        Self { keys }
    }

    /// The caller whose credential `headers` carry.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let presented = credential(headers).ok_or(Refusal::Missing)?;
        self.keys
            .name_of(presented)
            .map(|name| Caller { name })
            .ok_or(Refusal::Unknown)
    }
}

/// The credential of a request: `Authorization: Bearer X` (the scheme in any case), else
/// `X-API-Key: X`.
fn credential(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.as_bytes();
        let (scheme, rest) = value.split_at(value.len().min(7));
        if scheme.eq_ignore_ascii_case(b"bearer ") {
            let token = rest.trim_ascii();
            return (!token.is_empty()).then_some(token);
        }
        return None;
    }
    headers
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    #[test]
    fn a_credential_is_a_bearer_token_or_an_api_key_header() {
        for (name, value, expected) in [
            ("authorization", "Bearer abc", Some(&b"abc"[..])),
            ("authorization", "bearer  abc ", Some(&b"abc"[..])),
            ("authorization", "Basic YTpi", None),
            ("authorization", "Bearer ", None),
            ("authorization", "Bear", None),
            ("x-api-key", "abc", Some(&b"abc"[..])),
            ("x-api-key", " ", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            assert_eq!(credential(&headers), expected, "{name}: {value}");
        }
        assert_eq!(credential(&HeaderMap::new()), None);
    }
}
