//! Who may read (`AUTH_API_KEYS_FILE`, `AUTH_JWKS_URL`): what a request must carry, and whose
//! it is.
//!
//! A credential is sent as `Authorization: Bearer …` or `X-API-Key: …`. The caller's name (the
//! key's, or the token's `sub`; never the credential) goes into the request log and the traces,
//! and is the client a quota counts against.

mod crypto;
mod keys;
mod tokens;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};

pub use keys::ApiKeys;
pub use tokens::{TokenRefusal, TokenVerifier};

/// The credentials this replica accepts: API keys, tokens, or both.
pub struct Authenticator {
    keys: Option<Arc<ApiKeys>>,
    tokens: Option<Arc<TokenVerifier>>,
}

/// What [`Authenticator::authenticate`] knows at once, or the wait for the provider's keys that
/// a token naming a new one needs first (the rare path, so boxed).
pub enum Verdict {
    Now(Result<Caller, Refusal>),
    AfterFetch(PendingCheck),
}

/// A token's check waiting for a fetch of the provider's keys.
pub type PendingCheck = Pin<Box<dyn Future<Output = Result<Caller, Refusal>>>>;

/// Who a request is: put in its extensions once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    /// Named by an access token's `sub` rather than an API key's name: the two are counted
    /// apart, so a token's subject cannot share an API key's quota by taking its name.
    pub by_token: bool,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential at all.
    Missing,
    /// An API key this replica does not know (or, with tokens off, any credential).
    Unknown,
    /// A bearer token that fails a check.
    Token(TokenRefusal),
}

impl Authenticator {
    pub fn new(keys: Option<Arc<ApiKeys>>, tokens: Option<Arc<TokenVerifier>>) -> Self {
        Self { keys, tokens }
    }

    /// `Retry-After` for a token refused while the provider's keys cannot be had.
    pub fn keys_retry_after_secs(&self) -> u32 {
        self.tokens
            .as_ref()
            .map_or(1, |tokens| tokens.retry_after_secs())
    }

    /// The caller whose credential `headers` carry. An API key is looked up first; a
    /// credential that is not one, and has a JWT's shape, is checked as a token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Verdict {
        let Some(presented) = credential(headers) else {
            return Verdict::Now(Err(Refusal::Missing));
        };
        if let Some(name) = self.keys.as_ref().and_then(|keys| keys.name_of(presented)) {
            return Verdict::Now(Ok(Caller {
                name,
                by_token: false,
            }));
        }
        let (tokens, token) = match (&self.tokens, std::str::from_utf8(presented)) {
            (Some(tokens), Ok(token)) if is_jwt_shaped(token) => (tokens, token),
            _ => return Verdict::Now(Err(Refusal::Unknown)),
        };
        match tokens.verify(token) {
            // A key the set lacks, when a fetch may be made for it; or no set yet, when a fetch
            // may be under way (the one at start): wait for it rather than refuse at once.
            Err(TokenRefusal::KeysUnavailable) => Verdict::AfterFetch(after_fetch(tokens, token)),
            Err(TokenRefusal::UnknownKey) if tokens.may_refetch() => {
                Verdict::AfterFetch(after_fetch(tokens, token))
            }
            checked => Verdict::Now(token_caller(checked)),
        }
    }
}

/// The caller a token's check names, or why it is refused.
fn token_caller(checked: Result<Arc<str>, TokenRefusal>) -> Result<Caller, Refusal> {
    checked
        .map(|name| Caller {
            name,
            by_token: true,
        })
        .map_err(Refusal::Token)
}

/// `token` checked again once the provider's keys have been fetched (or another request's
/// fetch has ended).
fn after_fetch(tokens: &Arc<TokenVerifier>, token: &str) -> PendingCheck {
    let tokens = tokens.clone();
    let token = token.to_owned();
    Box::pin(async move {
        tokens.clone().refetch().await;
        token_caller(tokens.verify(&token))
    })
}

/// Three base64url parts: a JWS in compact form.
fn is_jwt_shaped(credential: &str) -> bool {
    credential.split('.').count() == 3
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
