//! Who may read: API keys and OpenID Connect bearer tokens. Off by default.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::millis;

/// Credentials a request must carry (health routes, the documentation pages and CORS preflights
/// need none). With neither setting, every request is served, as without this group.
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
}

impl AuthSettings {
    /// Whether requests need credentials.
    pub fn on(&self) -> bool {
        self.api_keys_file.is_some()
    }
}
