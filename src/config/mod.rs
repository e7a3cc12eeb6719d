//! Every setting the service reads, each a command-line option and an environment variable.
//! Defaults reach PostgreSQL and Redis on localhost, so `vehicle-state serve` works on a
//! developer machine with no configuration. The README's table lists each of them.
//!
//! One file per subsystem; each type is re-exported here, so `config::DatabaseSettings` and the
//! like name it wherever it is declared.

use clap::Args;

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
mod redis;
mod secrets;
mod seed;

pub use compression::CompressionSettings;
pub use cors::{CorsOrigins, CorsSettings};
pub use database::{DatabaseSettings, DatabaseUrl};
pub use http::{HttpSettings, OptionalAddr};
pub use ingest::IngestSettings;
pub use logging::LogFormat;
pub use nats::{NatsSettings, NatsUrls, StreamSettings, StreamStorage};
pub use otel::{Endpoint, OtlpHeaders, Protocol, ResourceAttributes, SamplerKind, TraceSettings};
pub use publish::PublishSettings;
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
    pub traces: TraceSettings,

    /// While PostgreSQL is known down (a connection to it failed, and a connection made apart
    /// from the pool failed too), how often one connection tries it again; meanwhile requests
    /// that need it are answered 503 at once. The first that connects ends the outage.
    #[arg(long, help_heading = "PostgreSQL", env = "DB_PROBE_INTERVAL_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub db_probe_interval_ms: u64,

    /// Create the database if absent and apply pending migrations before serving. Safe with
    /// many replicas starting at once (migrations take an advisory lock).
    #[arg(help_heading = "Start-up", long, env = "MIGRATE_ON_START", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Also load a sample data set before serving (implies the migrations).
    #[arg(help_heading = "Start-up", long, env = "SEED")]
    pub seed: Option<Dataset>,
}
