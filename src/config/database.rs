//! PostgreSQL: where it is, and the bounds on waiting for it.

use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use sqlx::postgres::PgConnectOptions;

use super::parse::{millis, secs};
use super::secrets::PemFile;

/// Where and how to reach PostgreSQL.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL. The database is created if it does not exist.
    #[arg(
        long = "database-url",
        global = true,
        id = "DATABASE_URL", env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@localhost:5432/vehicle_state",
        value_parser = parse_database_url,
        hide_default_value = false,
        hide_env_values = true
    )]
    pub url: DatabaseUrl,

    /// Most connections one replica holds to PostgreSQL.
    #[arg(long = "db-pool-max-size", global = true, id = "DB_POOL_MAX_SIZE", env = "DB_POOL_MAX_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_max_size: u32,

    /// How long a request waits for a PostgreSQL connection (including connecting) before it
    /// is answered 503.
    #[arg(long = "db-acquire-timeout-ms", global = true, id = "DB_ACQUIRE_TIMEOUT_MS", env = "DB_ACQUIRE_TIMEOUT_MS", default_value = "2000", value_parser = millis(1..=600_000))]
    pub acquire_timeout: Duration,

    /// Server-side bound on one statement (PostgreSQL's statement_timeout); a lookup past it is
    /// answered 503.
    #[arg(long = "db-statement-timeout-ms", global = true, id = "DB_STATEMENT_TIMEOUT_MS", env = "DB_STATEMENT_TIMEOUT_MS", default_value = "2000", value_parser = millis(1..=600_000))]
    pub statement_timeout: Duration,

    /// How long a request waits for PostgreSQL's reply to a statement it sent before it gives
    /// the connection up (dropped, not returned to the pool) and is answered 503: a network
    /// that swallows packets (a black hole) sends no reset, and PostgreSQL's own statement
    /// timeout is a reply that never comes then. Keep it above DB_STATEMENT_TIMEOUT_MS.
    #[arg(long = "db-response-timeout-ms", global = true, id = "DB_RESPONSE_TIMEOUT_MS", env = "DB_RESPONSE_TIMEOUT_MS", default_value = "3000", value_parser = millis(1..=600_000))]
    pub response_timeout: Duration,

    /// Seconds a PostgreSQL connection is used before it is closed and replaced, so that a
    /// failover behind a DNS name (Aurora's cluster endpoints, Patroni) is followed without a
    /// restart.
    #[arg(long = "db-max-lifetime-secs", global = true, id = "DB_MAX_LIFETIME_SECS", env = "DB_MAX_LIFETIME_SECS", default_value = "300", value_parser = secs(1..=86_400))]
    pub max_lifetime: Duration,
}

/// A parsed PostgreSQL URL that keeps its text (for database creation) but never shows the
/// password when printed.
#[derive(Clone)]
pub struct DatabaseUrl {
    pub text: String,
    pub options: PgConnectOptions,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or(o.get_username())
        )
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        parse_database_url(raw)
    }
}

fn parse_database_url(raw: &str) -> Result<DatabaseUrl, String> {
    const EXPECTED: &str = "expected postgres://user:password@host:port/database";
    if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
        return Err(format!("not a PostgreSQL URL; {EXPECTED}"));
    }
    let options = PgConnectOptions::from_str(raw)
        .map_err(|e| format!("not a PostgreSQL URL ({e}); {EXPECTED}"))?;
    // libpq's TLS files are read when connecting; one that is missing, unreadable or not PEM
    // is a mistake to name now.
    let url =
        url::Url::parse(raw).map_err(|e| format!("not a PostgreSQL URL ({e}); {EXPECTED}"))?;
    for (name, value) in url.query_pairs() {
        if matches!(
            name.as_ref(),
            "sslrootcert"
                | "ssl-root-cert"
                | "ssl-ca"
                | "sslcert"
                | "ssl-cert"
                | "sslkey"
                | "ssl-key"
        ) {
            PemFile::read(&value).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(DatabaseUrl {
        text: raw.to_owned(),
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_prints_without_its_password() {
        let url = parse_database_url("postgres://app:s3cret@db.internal:6543/vs").expect("valid");
        assert_eq!(url.to_string(), "postgres://app@db.internal:6543/vs");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn malformed_database_urls_are_refused() {
        assert!(parse_database_url("mysql://x").is_err());
        assert!(parse_database_url("postgres://host:notaport/db").is_err());
    }
}
