//! OpenID Connect access tokens (`AUTH_JWKS_URL`): JWTs checked against the identity provider's
//! published keys, with the issuer and audience this service was given.
//!
//! The key set is fetched at start and every `AUTH_JWKS_REFRESH_SECS`; a token naming a key
//! (`kid`) the set lacks makes one fetch at most every `AUTH_JWKS_MIN_REFETCH_SECS`, shared by
//! every request waiting for it, so a provider's new key is learnt at its first token while
//! tokens naming made-up keys cost the provider nothing more. A fetch that fails keeps the keys
//! fetched before. The algorithm is pinned: the token's `alg` must be one of
//! `AUTH_JWT_ALGORITHMS`, and the key's own (its `alg`, or its curve), never `none` or a shared
//! secret.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::TokenSettings;

/// The largest key set read; a provider's holds a few keys of a few hundred bytes each.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The longest a passed token is known without a second check (its `exp` comes first when
/// sooner).
const PASSED_TTL: Duration = Duration::from_secs(300);

/// The longest `sub` kept as a caller's name (it is logged and keys a quota).
const MAX_SUBJECT_CHARS: usize = 200;

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not a JWT, or claims of the wrong type.
    Malformed,
    /// `alg` not allowed here, or not the key's.
    Algorithm,
    /// A `kid` the provider's key set does not hold (after fetching it again).
    UnknownKey,
    /// The signature does not match.
    Signature,
    /// Past its `exp` (beyond the clock skew).
    Expired,
    /// Before its `nbf` (beyond the clock skew).
    NotYetValid,
    /// Another `iss`.
    Issuer,
    /// No `aud` this service accepts.
    Audience,
    /// Without `exp`, `iss`, `aud` or `sub`.
    MissingClaim,
    /// No key set has been fetched yet: the provider could not be reached.
    KeysUnavailable,
}

impl TokenRefusal {
    /// What the client is told (a problem's detail, and `error_description`).
    pub fn describe(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "the bearer token is not a well-formed JWT",
            TokenRefusal::Algorithm => "the token's signature algorithm is not accepted here",
            TokenRefusal::UnknownKey => {
                "the token was signed with a key the provider does not publish"
            }
            TokenRefusal::Signature => "the token's signature is not valid",
            TokenRefusal::Expired => "the token has expired",
            TokenRefusal::NotYetValid => "the token is not valid yet",
            TokenRefusal::Issuer => "the token was issued by another issuer",
            TokenRefusal::Audience => "the token is not meant for this service (aud)",
            TokenRefusal::MissingClaim => "the token lacks a required claim (exp, iss, aud, sub)",
            TokenRefusal::KeysUnavailable => {
                "the identity provider's keys could not be fetched yet"
            }
        }
    }
}

/// One usable key of the set.
struct Key {
    id: Option<String>,
    /// The algorithms it may verify: the one it names, or those its type and curve allow.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys in force, with the SHA-256 of the document they were read from; `None` until a
/// fetch has succeeded.
type KeySet = Option<(Arc<Vec<Key>>, [u8; 32])>;

/// What a token's claims must hold beyond what the validation checks itself.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    /// Required and checked by the validation; kept to know until when the token passes.
    exp: Option<u64>,
}

/// Checks tokens, and keeps the provider's keys.
pub struct TokenVerifier {
    url: url::Url,
    client: reqwest::Client,
    /// One validation per allowed algorithm (`AUTH_JWT_ALGORITHMS`): jsonwebtoken wants every
    /// algorithm of a validation to be of the key's family.
    validations: Vec<(Algorithm, Validation)>,
    refresh: Duration,
    min_refetch: Duration,
    keys: RwLock<KeySet>,
    /// Grows each time the key set's document changes. A token is remembered with the number
    /// it was checked under, and is checked again under another.
    generation: AtomicU64,
    /// When the last fetch started, whatever its outcome.
    last_fetch: Mutex<Option<Instant>>,
    /// Held while a fetch runs, so requests waiting for a key share one.
    fetching: tokio::sync::Mutex<()>,
    /// Tokens that passed, by their SHA-256: a client sends the same token for its whole life,
    /// and a signature check (tens of µs) costs more than the lookup it guards. Emptied when
    /// the key set changes (and an entry of an earlier set is never used), so a key the provider
    /// withdraws stops passing at once.
    passed: Option<moka::sync::Cache<[u8; 32], Passed>>,
    clock_skew: u64,
}

/// A token that passed: whose it is, and until when it may pass without a second check.
#[derive(Clone)]
struct Passed {
    caller: Arc<str>,
    /// Its `exp` plus the clock skew, in seconds since the epoch.
    until: u64,
    /// The key set it was checked under.
    generation: u64,
}

impl TokenVerifier {
    /// A verifier with no keys yet: [`TokenVerifier::watch`] fetches them.
    pub fn new(settings: &TokenSettings) -> anyhow::Result<Option<Self>> {
        let (Some(url), Some(issuer)) = (&settings.jwks_url, &settings.issuer) else {
            return Ok(None);
        };
        anyhow::ensure!(
            !settings.audience.is_empty() && settings.audience.iter().all(|a| !a.trim().is_empty()),
            "AUTH_AUDIENCE names no audience, or an empty one"
        );
        // A fetch for an unknown key must be over before the next may start, or requests could
        // queue behind fetches one after another.
        anyhow::ensure!(
            settings.jwks_min_refetch > settings.jwks_timeout,
            "AUTH_JWKS_MIN_REFETCH_SECS ({:?}) must be longer than AUTH_JWKS_TIMEOUT_MS ({:?})",
            settings.jwks_min_refetch,
            settings.jwks_timeout
        );
        super::crypto::install();
        let validations = settings
            .algorithms
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.leeway = settings.clock_skew.as_secs();
                validation.validate_nbf = true;
                validation.set_issuer(&[issuer]);
                validation.set_audience(&settings.audience);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (algorithm, validation)
            })
            .collect();
        let client = reqwest::Client::builder()
            .timeout(settings.jwks_timeout)
            .connect_timeout(settings.jwks_timeout)
            // No redirects: one from https to http would let the path swap the keys.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Self {
            url: url.clone(),
            client,
            validations,
            refresh: settings.jwks_refresh,
            min_refetch: settings.jwks_min_refetch,
            keys: RwLock::new(None),
            generation: AtomicU64::new(0),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            passed: (settings.token_cache_size > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(settings.token_cache_size)
                    .time_to_live(PASSED_TTL)
                    .build()
            }),
            clock_skew: settings.clock_skew.as_secs(),
        }))
    }

    /// The caller a token names, if it passes every check with the keys held now; a token that
    /// passed before is known by its digest until it expires.
    pub fn verify(&self, token: &str) -> Result<Arc<str>, TokenRefusal> {
        let Some(passed) = &self.passed else {
            return self.check(token).map(|(caller, _)| caller);
        };
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        // Read before the check: a set fetched meanwhile makes what is remembered here stale.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(known) = passed.get(&digest)
            && known.generation == generation
        {
            return if jsonwebtoken::get_current_timestamp() <= known.until {
                Ok(known.caller)
            } else {
                passed.invalidate(&digest);
                Err(TokenRefusal::Expired)
            };
        }
        let (caller, exp) = self.check(token)?;
        passed.insert(
            digest,
            Passed {
                caller: caller.clone(),
                until: exp.saturating_add(self.clock_skew),
                generation,
            },
        );
        Ok(caller)
    }

    /// The keys in force, if a fetch has succeeded.
    fn held_keys(&self) -> Option<Arc<Vec<Key>>> {
        let held = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.as_ref().map(|(keys, _)| keys.clone())
    }

    /// Every check of `token`: its caller and `exp`.
    fn check(&self, token: &str) -> Result<(Arc<str>, u64), TokenRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| unreadable_header(token))?;
        let validation = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .map(|(_, validation)| validation)
            .ok_or(TokenRefusal::Algorithm)?;
        let keys = self.held_keys().ok_or(TokenRefusal::KeysUnavailable)?;
        let key = match &header.kid {
            Some(kid) => keys.iter().find(|k| k.id.as_deref() == Some(kid.as_str())),
            // Without a `kid`, only a set of one key says which key is meant.
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or(TokenRefusal::UnknownKey)?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenRefusal::Algorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map_err(|e| refusal(e.kind()))?;
        // An empty `sub` names no one; a longer one than is kept would be cut into another's.
        let sub = data
            .claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(TokenRefusal::MissingClaim)?;
        if sub.chars().nth(MAX_SUBJECT_CHARS).is_some() {
            return Err(TokenRefusal::Malformed);
        }
        let caller = Arc::from(sub);
        let exp = data.claims.exp.ok_or(TokenRefusal::MissingClaim)?;
        Ok((caller, exp))
    }

    /// Whether a token refused for want of its key may wait for a fetch: none started within
    /// `AUTH_JWKS_MIN_REFETCH_SECS`.
    pub fn may_refetch(&self) -> bool {
        let last = *self
            .last_fetch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.is_none_or(|at| at.elapsed() >= self.min_refetch)
    }

    /// Fetches the key set again unless another request has just done so (then the keys it
    /// fetched are what a second look sees). The fetch is a task of its own: a client that
    /// hangs up does not cancel it halfway, which would leave the next one rate-limited.
    pub async fn refetch(self: Arc<Self>) {
        let fetch = tokio::spawn(async move {
            let _one_at_a_time = self.fetching.lock().await;
            if self.may_refetch() {
                let _ = self.fetch().await;
            }
        });
        // A task that panicked changed nothing: the keys held are looked at again either way.
        let _ = fetch.await;
    }

    /// The `Retry-After` of a token refused while no key set has been fetched: when the next
    /// fetch may be made.
    pub fn retry_after_secs(&self) -> u32 {
        u32::try_from(self.min_refetch.as_secs()).unwrap_or(u32::MAX)
    }

    /// Fetches the key set at once, then every `AUTH_JWKS_REFRESH_SECS` (every
    /// `AUTH_JWKS_MIN_REFETCH_SECS` while fetches fail).
    pub fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let ok = {
                    let _one_at_a_time = self.fetching.lock().await;
                    self.fetch().await
                };
                tokio::time::sleep(if ok { self.refresh } else { self.min_refetch }).await;
            }
        })
    }

    /// One fetch; on success the keys it read replace those held. Failures are logged and
    /// counted, and keep the keys held.
    async fn fetch(&self) -> bool {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        let read = self.download().await.and_then(|body| {
            use sha2::Digest as _;
            let digest: [u8; 32] = sha2::Sha256::digest(&body).into();
            parse_key_set(&body).map(|keys| (keys, digest))
        });
        match read {
            Ok((keys, digest)) => {
                let ids: Vec<&str> = keys.iter().filter_map(|k| k.id.as_deref()).collect();
                let count = keys.len();
                let mut held = self
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // Any change to the document (a key's material under the same kid included)
                // is a new set: tokens remembered under the old one are checked again.
                if held
                    .as_ref()
                    .is_none_or(|(_, held_digest)| *held_digest != digest)
                {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    if let Some(passed) = &self.passed {
                        passed.invalidate_all();
                    }
                    tracing::info!(url = %self.url, keys = count, kids = ?ids, "identity provider's keys fetched");
                }
                *held = Some((Arc::new(keys), digest));
                metrics::counter!(crate::metrics::AUTH_JWKS_FETCHES, "outcome" => "ok")
                    .increment(1);
                metrics::gauge!(crate::metrics::AUTH_JWKS_KEYS).set(count as f64);
                true
            }
            Err(error) => {
                let holding = self.held_keys().map_or(0, |keys| keys.len());
                tracing::warn!(url = %self.url, error = format!("{error:#}"), keys_held = holding, "the identity provider's keys could not be fetched; the keys held are kept");
                metrics::counter!(crate::metrics::AUTH_JWKS_FETCHES, "outcome" => "failed")
                    .increment(1);
                false
            }
        }
    }

    async fn download(&self) -> anyhow::Result<Vec<u8>> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_JWKS_BYTES,
                "the key set is larger than {MAX_JWKS_BYTES} bytes"
            );
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The signing keys of a JWKS document. Keys this service cannot use (encryption keys, other
/// key types, a shared secret) are passed over; a document with none it can use is an error.
fn parse_key_set(body: &[u8]) -> anyhow::Result<Vec<Key>> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| anyhow::anyhow!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::with_capacity(document.keys.len());
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let by_type: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => continue,
            },
            _ => continue,
        };
        let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
            Some(named) => match Algorithm::try_from(named) {
                Ok(named) if by_type.contains(&named) => vec![named],
                _ => continue,
            },
            None => by_type.to_vec(),
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            id: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    anyhow::ensure!(
        !keys.is_empty(),
        "the key set holds no signing key this service can use (RSA, or EC on P-256 or P-384)"
    );
    // Two keys under one id would make which one checks a token depend on their order: neither
    // is used.
    let mut seen = HashSet::new();
    let twice: HashSet<String> = keys
        .iter()
        .filter_map(|k| k.id.clone())
        .filter(|id| !seen.insert(id.clone()))
        .collect();
    if !twice.is_empty() {
        tracing::warn!(kids = ?twice, "the key set names these kids twice: their keys are not used");
        keys.retain(|k| k.id.as_ref().is_none_or(|id| !twice.contains(id)));
    }
    anyhow::ensure!(
        !keys.is_empty(),
        "the key set holds no signing key this service can use"
    );
    Ok(keys)
}

/// Why a header jsonwebtoken cannot read is refused: an `alg` it does not know (`none`, made-up
/// names) is an algorithm refusal, anything else a malformed token.
fn unreadable_header(token: &str) -> TokenRefusal {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Named {
        alg: String,
    }
    let named = token
        .split('.')
        .next()
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Named>(&json).ok());
    match named {
        Some(named) if !named.alg.is_empty() => TokenRefusal::Algorithm,
        Some(_) => TokenRefusal::Malformed,
        None => TokenRefusal::Malformed,
    }
}

fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> TokenRefusal {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::InvalidSignature => TokenRefusal::Signature,
        ErrorKind::ExpiredSignature => TokenRefusal::Expired,
        ErrorKind::ImmatureSignature => TokenRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRefusal::Issuer,
        ErrorKind::InvalidAudience => TokenRefusal::Audience,
        ErrorKind::MissingRequiredClaim(_) => TokenRefusal::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => TokenRefusal::Algorithm,
        _ => TokenRefusal::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_keys_secrets_and_unknown_types_are_passed_over() {
        let body = br#"{"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AAAA"},
            {"kty": "EC", "crv": "P-256", "kid": "sig", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "lying", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_key_set(body).unwrap();
        let ids: Vec<_> = keys.iter().map(|k| k.id.as_deref()).collect();
        assert_eq!(ids, [Some("sig")]);
        assert_eq!(keys[0].algorithms, [Algorithm::ES256]);
    }

    #[test]
    fn two_keys_under_one_kid_are_neither_used() {
        let body = br#"{"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "twice",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "twice",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "once",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_key_set(body).unwrap();
        let ids: Vec<_> = keys.iter().map(|k| k.id.as_deref()).collect();
        assert_eq!(ids, [Some("once")]);
    }

    #[test]
    fn a_set_without_a_usable_key_is_an_error() {
        assert!(parse_key_set(br#"{"keys": []}"#).is_err());
        assert!(parse_key_set(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(parse_key_set(b"<html>").is_err());
    }
}
