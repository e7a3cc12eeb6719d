//! Every setting the service reads, each a command-line option and an environment variable.
//! Defaults reach PostgreSQL and Redis on localhost, so `vehicle-state serve` works on a
//! developer machine with no configuration. docs/configuration.md lists each of them, and
//! tests/docs checks that page against clap.
//!
//! One file per subsystem; each type is re-exported here, so `config::DatabaseSettings` and the
//! like name it wherever it is declared.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use parse::millis;

mod auth;
mod compression;
mod cors;
mod database;
mod http;
mod ingest;
mod logging;
mod nats;
mod otel;
mod parse;
mod publish;
mod quota;
mod redis;
mod secrets;
mod seed;

pub use auth::{AuthSettings, TokenSettings};
pub use compression::CompressionSettings;
pub use cors::{CorsOrigins, CorsSettings};
pub use database::{DatabaseSettings, DatabaseUrl};
pub use http::{HttpSettings, OptionalAddr};
pub use ingest::IngestSettings;
pub use logging::LogFormat;
pub use nats::{
    ChangesSettings, FollowSettings, NatsSettings, NatsUrls, StreamSettings, StreamStorage,
};
pub use otel::{Endpoint, OtlpHeaders, Protocol, ResourceAttributes, SamplerKind, TraceSettings};
pub use publish::PublishSettings;
pub use quota::{QuotaSettings, Rate, TrustedProxies};
pub use redis::{CacheSettings, RedisMode, RedisSettings, RedisUrls};
pub use secrets::{PemFile, Secret};
pub use seed::{Dataset, SeedData, SyntheticSettings};

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub cors: CorsSettings,
    #[command(flatten)]
    pub compression: CompressionSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub quota: QuotaSettings,
    #[command(flatten)]
    pub traces: TraceSettings,
    #[command(flatten)]
    pub follow: FollowSettings,

    /// While PostgreSQL is known down (a connection to it failed, and a connection made apart
    /// from the pool failed too), how often one connection tries it again; meanwhile requests
    /// that need it are answered 503 at once. The first that connects ends the outage.
    #[arg(long = "db-probe-interval-ms", help_heading = "PostgreSQL", id = "DB_PROBE_INTERVAL_MS", env = "DB_PROBE_INTERVAL_MS", default_value = "50", value_parser = millis(1..=60_000))]
    pub db_probe_interval: Duration,

    /// Create the database if absent and apply pending migrations before serving. Safe with
    /// many replicas starting at once (migrations take an advisory lock).
    #[arg(help_heading = "Start-up", long, env = "MIGRATE_ON_START", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Also load a sample data set before serving (implies the migrations).
    #[arg(help_heading = "Start-up", long, env = "SEED")]
    pub seed: Option<Dataset>,
}

impl ServeSettings {
    /// The settings `serve` takes from these arguments alone, the environment ignored; the first
    /// argument is the program's name, as in `std::env::args`. With no other argument these are
    /// the documented defaults: tests build their settings from them, so a setting added later
    /// gets its default there too instead of a second copy of it, and a variable left set in the
    /// shell cannot change what a test runs with.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        /// `serve`'s options as a command of their own, to parse them without the rest of the
        /// command line.
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            settings: ServeSettings,
        }
        let matches = Serve::command()
            .mut_args(|arg| arg.env(None::<&'static str>))
            .try_get_matches_from(args)?;
        Ok(Serve::from_arg_matches(&matches)?.settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_what_clap_reads_from_no_arguments_and_no_environment() {
        let settings = ServeSettings::from_args(["vehicle-state"]).expect("the defaults parse");
        assert_eq!(
            settings.database.url.text,
            "postgres://postgres:postgres@localhost:5432/vehicle_state"
        );
        assert_eq!(settings.database.pool_max_size, 10);
        assert_eq!(settings.redis.mode, RedisMode::Standalone);
        assert_eq!(format!("{:?}", settings.redis.url), "localhost:6379");
        assert_eq!(settings.cache.ttl_secs, 60);
        assert_eq!(settings.cache.key_prefix, "vehicle-state");
        assert_eq!(
            settings.http.bind_addr,
            "0.0.0.0:8080".parse().expect("an address")
        );
        assert_eq!(settings.http.metrics_addr(), None);
        assert_eq!(settings.db_probe_interval, Duration::from_millis(50));
        assert!(settings.migrate_on_start);
        assert_eq!(settings.seed, None);
    }

    #[test]
    fn arguments_override_the_defaults_and_a_bad_one_is_refused() {
        let settings = ServeSettings::from_args([
            "vehicle-state",
            "--cache-ttl-secs",
            "5",
            "--seed",
            "sample",
            "--migrate-on-start",
            "false",
        ])
        .expect("valid arguments");
        assert_eq!(settings.cache.ttl_secs, 5);
        assert_eq!(settings.seed, Some(Dataset::Sample));
        assert!(!settings.migrate_on_start);
        assert!(ServeSettings::from_args(["vehicle-state", "--cache-ttl-secs", "0"]).is_err());
    }
}
