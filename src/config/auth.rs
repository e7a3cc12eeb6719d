//! Who may read: API keys and OpenID Connect bearer tokens. Off by default.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::{millis, secs};

/// Credentials a request must carry (health routes, the documentation pages and CORS preflights
/// need none). With neither API keys nor a JWKS URL, every request is served, as without this
/// group.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthSettings {
    /// A file of API keys: one a line, a name, a space and the SHA-256 of the key in hex
    /// (`dashboard 9f86d0…`), `#` comments. Clients send a key as `Authorization: Bearer KEY`
    /// or `X-API-Key: KEY`; the key's name is the caller's name in the request log and quotas.
    /// Read again on SIGHUP and when it changes; a file that cannot be read keeps the keys
    /// read before. Unset: no API keys.
    #[arg(
        long = "auth-api-keys-file",
        id = "AUTH_API_KEYS_FILE",
        env = "AUTH_API_KEYS_FILE"
    )]
    pub api_keys_file: Option<PathBuf>,

    /// How often AUTH_API_KEYS_FILE is checked for a change (its modification time and size).
    #[arg(long = "auth-api-keys-check-interval-ms", id = "AUTH_API_KEYS_CHECK_INTERVAL_MS", env = "AUTH_API_KEYS_CHECK_INTERVAL_MS", default_value = "2000", value_parser = millis(100..=3_600_000))]
    pub api_keys_check_interval: Duration,

    #[command(flatten)]
    pub tokens: TokenSettings,
}

/// OpenID Connect access tokens (JWTs) signed by an identity provider's keys.
#[derive(Debug, Clone, Args)]
pub struct TokenSettings {
    /// The identity provider's JSON Web Key Set (its `jwks_uri`, such as
    /// `https://idp.example.com/.well-known/jwks.json`). Clients send a token as
    /// `Authorization: Bearer TOKEN`; its `sub` is the caller's name in the request log and
    /// quotas. Needs AUTH_ISSUER and AUTH_AUDIENCE. Unset: no tokens.
    #[arg(
        long = "auth-jwks-url",
        id = "AUTH_JWKS_URL",
        env = "AUTH_JWKS_URL",
        value_parser = parse_jwks_url,
        requires_all = ["AUTH_ISSUER", "AUTH_AUDIENCE"]
    )]
    pub jwks_url: Option<url::Url>,

    /// The `iss` a token must carry, exactly (the provider's issuer URL).
    #[arg(
        long = "auth-issuer",
        id = "AUTH_ISSUER",
        env = "AUTH_ISSUER",
        requires = "AUTH_JWKS_URL"
    )]
    pub issuer: Option<String>,

    /// The audiences this service accepts, comma-separated: a token's `aud` must name one.
    #[arg(
        long = "auth-audience",
        id = "AUTH_AUDIENCE",
        env = "AUTH_AUDIENCE",
        value_delimiter = ',',
        requires = "AUTH_JWKS_URL"
    )]
    pub audience: Vec<String>,

    /// The signature algorithms a token may use, comma-separated, from RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256 and ES384 (never `none` or a shared secret). A key that names
    /// its own `alg` in the key set is used with that algorithm only.
    #[arg(long = "auth-jwt-algorithms", id = "AUTH_JWT_ALGORITHMS", env = "AUTH_JWT_ALGORITHMS", default_value = "RS256,ES256", value_delimiter = ',', value_parser = parse_algorithm)]
    pub algorithms: Vec<jsonwebtoken::Algorithm>,

    /// How often the key set is fetched again, to learn keys the provider has added (rotation).
    #[arg(long = "auth-jwks-refresh-secs", id = "AUTH_JWKS_REFRESH_SECS", env = "AUTH_JWKS_REFRESH_SECS", default_value = "600", value_parser = secs(10..=86_400))]
    pub jwks_refresh: Duration,

    /// The least time between two fetches of the key set made for a token whose `kid` is not in
    /// it (or after a fetch failed), so tokens naming made-up keys cannot make the replica hammer
    /// the provider. Longer than AUTH_JWKS_TIMEOUT_MS.
    #[arg(long = "auth-jwks-min-refetch-secs", id = "AUTH_JWKS_MIN_REFETCH_SECS", env = "AUTH_JWKS_MIN_REFETCH_SECS", default_value = "10", value_parser = secs(1..=3600))]
    pub jwks_min_refetch: Duration,

    /// How long one fetch of the key set may take (connecting included).
    #[arg(long = "auth-jwks-timeout-ms", id = "AUTH_JWKS_TIMEOUT_MS", env = "AUTH_JWKS_TIMEOUT_MS", default_value = "2000", value_parser = millis(100..=60_000))]
    pub jwks_timeout: Duration,

    /// How far the provider's clock and this replica's may disagree: a token is accepted this
    /// long after its `exp` and before its `nbf`.
    #[arg(long = "auth-clock-skew-secs", id = "AUTH_CLOCK_SKEW_SECS", env = "AUTH_CLOCK_SKEW_SECS", default_value = "60", value_parser = secs(0..=600))]
    pub clock_skew: Duration,

    /// How many tokens that passed are remembered (by their SHA-256, about 150 bytes each) so
    /// a client's next request with the same token skips the signature check; 0: every
    /// request is checked. Remembered for 5 minutes at most, never past `exp`, and forgotten
    /// when the key set changes.
    #[arg(long = "auth-token-cache-size", id = "AUTH_TOKEN_CACHE_SIZE", env = "AUTH_TOKEN_CACHE_SIZE", default_value = "10000", value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub token_cache_size: u64,
}

impl AuthSettings {
    /// Whether requests need credentials.
    pub fn on(&self) -> bool {
        self.api_keys_file.is_some() || self.tokens.jwks_url.is_some()
    }
}

fn parse_jwks_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err("an https:// (or, on a private network, http://) URL".to_owned());
    }
    Ok(url)
}

/// Only asymmetric algorithms: a key set publishes public keys, and a token signed with a
/// shared secret (HS256) or none at all must never pass.
fn parse_algorithm(raw: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    match raw.trim() {
        "RS256" => Ok(RS256),
        "RS384" => Ok(RS384),
        "RS512" => Ok(RS512),
        "PS256" => Ok(PS256),
        "PS384" => Ok(PS384),
        "PS512" => Ok(PS512),
        "ES256" => Ok(ES256),
        "ES384" => Ok(ES384),
        other => Err(format!(
            "`{other}` is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        assert_eq!(parse_algorithm("ES256"), Ok(jsonwebtoken::Algorithm::ES256));
        for refused in ["none", "HS256", "EdDSA", "rs256", ""] {
            assert!(parse_algorithm(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_key_set_is_fetched_over_http_or_https() {
        assert!(parse_jwks_url("https://idp.example.com/jwks").is_ok());
        assert!(parse_jwks_url("http://127.0.0.1:8080/jwks").is_ok());
        for refused in ["file:///etc/jwks.json", "idp.example.com/jwks", "ftp://x/"] {
            assert!(parse_jwks_url(refused).is_err(), "{refused}");
        }
    }
}
