//! Every setting the service reads, each a command-line option and an environment variable.
//! Defaults reach PostgreSQL and Redis on localhost, so `vehicle-state serve` works on a
//! developer machine with no configuration. The README's table lists each of them.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sqlx::postgres::PgConnectOptions;

mod compression;
mod cors;
mod otel;

pub use compression::CompressionSettings;
pub use cors::{CorsOrigins, CorsSettings};
pub use otel::{Endpoint, OtlpHeaders, Protocol, ResourceAttributes, SamplerKind, TraceSettings};

/// Where and how to reach PostgreSQL.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DatabaseSettings {
    /// PostgreSQL connection URL. The database is created if it does not exist.
    #[arg(
        long = "database-url",
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@localhost:5432/vehicle_state",
        value_parser = parse_database_url,
        hide_default_value = false,
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// Most connections one replica holds to PostgreSQL.
    #[arg(long, global = true, env = "DB_POOL_MAX_SIZE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_max_size: u32,

    /// How long a request waits for a PostgreSQL connection (including connecting) before it
    /// is answered 503.
    #[arg(long, global = true, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub db_acquire_timeout_ms: u64,

    /// Server-side bound on one statement (PostgreSQL's statement_timeout); a lookup past it is
    /// answered 503.
    #[arg(long, global = true, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub db_statement_timeout_ms: u64,

    /// How long a request waits for PostgreSQL's reply to a statement it sent before it gives
    /// the connection up (dropped, not returned to the pool) and is answered 503: a network
    /// that swallows packets (a black hole) sends no reset, and PostgreSQL's own statement
    /// timeout is a reply that never comes then. Keep it above DB_STATEMENT_TIMEOUT_MS.
    #[arg(long, global = true, env = "DB_RESPONSE_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub db_response_timeout_ms: u64,

    /// Seconds a PostgreSQL connection is used before it is closed and replaced, so that a
    /// failover behind a DNS name (Aurora's cluster endpoints, Patroni) is followed without a
    /// restart.
    #[arg(long, global = true, env = "DB_MAX_LIFETIME_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub db_max_lifetime_secs: u64,
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.db_max_lifetime_secs)
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.db_response_timeout_ms)
    }
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

/// Where and how to reach Redis. Redis only speeds answers up: every call is bounded by
/// `REDIS_TIMEOUT_MS`, and a failed call falls back to PostgreSQL.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// Redis connection URL: `redis://` or `rediss://` (TLS). With REDIS_MODE=cluster, a
    /// comma-separated list of seed nodes; with REDIS_MODE=sentinel, of the sentinels.
    #[arg(long = "redis-url", env = "REDIS_URL", default_value = "redis://localhost:6379", value_parser = parse_redis_urls, hide_env_values = true)]
    pub redis_url: RedisUrls,

    /// Which Redis topology REDIS_URL names.
    #[arg(long, env = "REDIS_MODE", value_enum, default_value_t = RedisMode::Standalone)]
    pub redis_mode: RedisMode,

    /// With REDIS_MODE=sentinel: the name of the master set the sentinels watch.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,

    /// With REDIS_MODE=sentinel: the sentinels' own password, when they require one (the
    /// password in REDIS_URL is the master's).
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true, value_parser = Secret::parse)]
    pub redis_sentinel_password: Option<Secret>,

    /// PEM file of the CA that signed the Redis servers' certificates (rediss:// only); unset,
    /// the system's trusted roots are used.
    #[arg(long, env = "REDIS_CA_CERT", value_parser = PemFile::read)]
    pub redis_ca_cert: Option<PemFile>,

    /// PEM file of the client certificate, for Redis servers that require one (mutual TLS);
    /// goes with REDIS_CLIENT_KEY.
    #[arg(long, env = "REDIS_CLIENT_CERT", value_parser = PemFile::read)]
    pub redis_client_cert: Option<PemFile>,

    /// PEM file of the client certificate's private key; goes with REDIS_CLIENT_CERT.
    #[arg(long, env = "REDIS_CLIENT_KEY", value_parser = PemFile::read)]
    pub redis_client_key: Option<PemFile>,

    /// Most connections one replica holds to Redis: one per thread that asks it (each HTTP
    /// worker), each multiplexed; threads beyond it share the newest.
    #[arg(long, env = "REDIS_POOL_MAX_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub redis_pool_max_size: u64,

    /// Bound on each Redis call, connecting included; past it the request goes to PostgreSQL.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,

    /// After a Redis call fails, how long Redis is left alone (lookups go straight to PostgreSQL)
    /// before one call tries it again; so a hanging Redis costs at most one timeout per interval.
    #[arg(long, env = "REDIS_RETRY_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub redis_retry_interval_ms: u64,
}

impl RedisSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn retry_interval(&self) -> Duration {
        Duration::from_millis(self.redis_retry_interval_ms)
    }
}

/// Which Redis topology `REDIS_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisMode {
    /// One server (or a managed endpoint that hides its replicas).
    Standalone,
    /// A Redis Cluster: keys spread over several masters by slot.
    Cluster,
    /// A master and its replicas watched by Redis Sentinel, which names the master.
    Sentinel,
}

impl RedisMode {
    /// Every value [`RedisMode::label`] returns.
    pub const ALL: [RedisMode; 3] = [
        RedisMode::Standalone,
        RedisMode::Cluster,
        RedisMode::Sentinel,
    ];

    /// Its name, as in `REDIS_MODE` and the metrics.
    pub fn label(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// The servers of `REDIS_URL`, parsed; printed without their passwords.
#[derive(Clone)]
pub struct RedisUrls {
    pub nodes: Vec<redis::ConnectionInfo>,
}

impl std::fmt::Debug for RedisUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        write!(f, "{}", addresses.join(","))
    }
}

impl FromStr for RedisUrls {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        parse_redis_urls(raw)
    }
}

fn parse_redis_urls(raw: &str) -> Result<RedisUrls, String> {
    let nodes = raw
        .split(',')
        .map(|url| {
            let url = url.trim();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "{:?} is not a Redis URL: expected redis://host:port/db or rediss:// for TLS, comma-separated for several",
                    redacted(url)
                ));
            }
            redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
                format!(
                    "{:?} is not a Redis URL (redis://host:port/db): {e}",
                    redacted(url)
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RedisUrls { nodes })
}

/// A URL with its user information left out, to name it in an error (everything before the
/// last `@` when the scheme is missing too).
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        (_, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

/// `NATS_URL`: one server or several. The client connects to one of them and, when it loses it,
/// to another (or to a server the cluster announced since), so listing every server of a cluster
/// lets a process start while any one of them is down. Printed as `host:port` each, without
/// credentials.
#[derive(Clone)]
pub struct NatsUrls(Vec<async_nats::ServerAddr>);

impl NatsUrls {
    pub fn addrs(&self) -> &[async_nats::ServerAddr] {
        &self.0
    }

    /// Each server as `host:port`, for a message: never the user, password or token.
    pub fn servers(&self) -> String {
        let servers: Vec<String> = self
            .0
            .iter()
            .map(|addr| format!("{}:{}", addr.host(), addr.port()))
            .collect();
        servers.join(",")
    }
}

impl std::fmt::Debug for NatsUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.servers())
    }
}

/// Comma-separated NATS URLs (`nats://`, `tls://`; `host:port` alone means `nats://`). The
/// client takes a list as one URL otherwise, and refuses it for its "port" `4222,nats:`.
fn parse_nats_urls(raw: &str) -> Result<NatsUrls, String> {
    let addrs = raw
        .split(',')
        .map(|url| {
            let url = url.trim();
            let not_nats = |why: &dyn std::fmt::Display| {
                format!(
                    "{:?} is not a NATS URL (nats://host:4222, tls:// for TLS, comma-separated for several): {why}",
                    redacted(url)
                )
            };
            // The client takes `nats://` (or nothing) as a server with no host.
            match url.parse::<async_nats::ServerAddr>() {
                Ok(addr) if addr.host().is_empty() => Err(not_nats(&"no host")),
                Ok(addr) => Ok(addr),
                Err(e) => Err(not_nats(&e)),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NatsUrls(addrs))
}

/// A password: printed as `***`, whatever prints the settings.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A PEM file (a certificate or a key), read once at start; the path names it in messages.
#[derive(Clone)]
pub struct PemFile {
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl PemFile {
    fn read(raw: &str) -> Result<Self, String> {
        let path = std::path::PathBuf::from(raw);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {raw}: {e}"))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!("{raw} is not a PEM file (no -----BEGIN line)"));
        }
        Ok(Self { path, bytes })
    }
}

/// What is cached and for how long.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cache")]
pub struct CacheSettings {
    /// Seconds an answer is kept in Redis; the bound on how stale an answer can be.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub cache_ttl_secs: u32,

    /// Memory budget of this replica's in-process cache, in bytes of keys and answers (0 turns it
    /// off; concurrent misses for one key are still coalesced).
    #[arg(long, env = "LOCAL_CACHE_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub local_cache_max_bytes: u64,

    /// Seconds past the TTL an answer stays in Redis so that, while PostgreSQL cannot answer, it
    /// can still be served, marked `X-Cache: STALE` (RFC 5861 `stale-if-error`). 0, the default,
    /// turns this off: no answer is ever older than `CACHE_TTL_SECS`.
    #[arg(long, env = "STALE_IF_ERROR_SECS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub stale_if_error_secs: u32,

    /// Prefix of every Redis key, so several deployments (or test runs) can share one Redis.
    #[arg(long, env = "CACHE_KEY_PREFIX", default_value = "vehicle-state", value_parser = parse_key_prefix)]
    pub cache_key_prefix: String,
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'".to_owned())
    }
}

/// An address that may be left empty (`METRICS_BIND_ADDR=` in a compose file means unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(raw: &str) -> Result<OptionalAddr, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(OptionalAddr(None));
    }
    raw.parse()
        .map(|addr| OptionalAddr(Some(addr)))
        .map_err(|_| "an address and port such as 0.0.0.0:9464, or empty".to_owned())
}

impl HttpSettings {
    /// Where /metrics is served on its own, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_bind_addr.and_then(|addr| addr.0)
    }
}

/// The HTTP server.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpSettings {
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:8080")]
    pub bind_addr: SocketAddr,

    /// Address and port that serves /metrics apart from BIND_ADDR, so the API can be exposed
    /// without its metrics (port 0 picks a free one). Set, /metrics on BIND_ADDR answers 404;
    /// unset or empty, /metrics is served on BIND_ADDR.
    #[arg(long, env = "METRICS_BIND_ADDR", value_parser = parse_optional_addr)]
    pub metrics_bind_addr: Option<OptionalAddr>,

    /// HTTP worker threads; unset means one per CPU core.
    #[arg(long, env = "HTTP_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub http_workers: Option<u16>,

    /// Seconds between SIGTERM and closing the listener, during which /readyz answers 503 so a
    /// load balancer or orchestrator that polls it (Kubernetes, HAProxy, cloud balancers) stops
    /// sending traffic here first.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_drain_secs: u64,

    /// Seconds in-flight requests get to finish after the listener closes.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_timeout_secs: u64,

    /// Seconds sent in `Retry-After` when PostgreSQL cannot answer.
    #[arg(long, env = "RETRY_AFTER_SECS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub retry_after_secs: u32,

    /// Most lookups one replica runs at once past its memory cache (asking Redis, then
    /// PostgreSQL); concurrent requests for one answer count once. A lookup beyond it is answered
    /// 503 with `Retry-After` at once instead of queueing, so latency stays bounded under overload.
    #[arg(long, env = "LOOKUP_CONCURRENCY_LIMIT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub lookup_concurrency_limit: u32,

    /// Most misses gathered into one batch (one Redis round trip, one SQL statement, one
    /// write-back). Misses are gathered only while earlier batches are in flight, never by
    /// waiting: a lone miss goes out at once. 1 turns gathering off.
    #[arg(long, env = "LOOKUP_BATCH_MAX", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub lookup_batch_max: u32,

    /// Most batches of gathered misses in flight at once; misses arriving while all are in
    /// flight queue for the next batch. Keep it at or below DB_POOL_MAX_SIZE.
    #[arg(long, env = "LOOKUP_BATCHES_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub lookup_batches_in_flight: u32,

    /// Most lookups in one `POST /vehicles/states`; more is a 400 `invalid-batch-size`.
    #[arg(long, env = "BATCH_MAX_LOOKUPS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_max_lookups: u32,

    /// Largest body of a `POST /vehicles/states`, in bytes; a larger one is a 413 before it is
    /// read.
    #[arg(long, env = "BATCH_MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(64..=16 * 1024 * 1024))]
    pub batch_max_body_bytes: u32,

    /// Seconds sent in `Retry-After` when a lookup is shed by `LOOKUP_CONCURRENCY_LIMIT`.
    #[arg(long, env = "OVERLOAD_RETRY_AFTER_SECS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub overload_retry_after_secs: u32,

    /// How long a client has to send a request's head (line and headers) from when it connects
    /// or its previous request ends; a slower client gets 408 and is disconnected (slowloris).
    #[arg(long, env = "HTTP_CLIENT_REQUEST_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub http_client_request_timeout_ms: u64,

    /// Seconds an idle keep-alive connection is kept open (0 closes after each response). Keep it
    /// above the idle timeout of the load balancer's upstream connections.
    #[arg(long, env = "HTTP_KEEP_ALIVE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub http_keep_alive_secs: u64,

    /// Most open connections per worker thread; past it, new connections wait in the listen
    /// backlog until one closes.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 25_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
}

/// Where and how to reach NATS (for `ingest` and `publish`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsSettings {
    /// NATS server URL, or a comma-separated list of them (the servers of a cluster: the client
    /// connects to any one and fails over to the others): `nats://host:4222`, `tls://host:4222`
    /// (TLS required). User and password, or a token, may be given in the URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222", value_parser = parse_nats_urls, hide_env_values = true)]
    pub nats_url: NatsUrls,

    /// A NATS credentials file (JWT and NKey seed, as `nsc` writes them).
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to verify the NATS server with, for a private CA; implies TLS.
    #[arg(long, env = "NATS_CA_CERT", value_parser = PemFile::read)]
    pub nats_ca_cert: Option<PemFile>,

    /// Client certificate (PEM) for NATS servers that verify clients; needs NATS_CLIENT_KEY.
    #[arg(long, env = "NATS_CLIENT_CERT", value_parser = PemFile::read, requires = "nats_client_key")]
    pub nats_client_cert: Option<PemFile>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_CLIENT_KEY", value_parser = PemFile::read, requires = "nats_client_cert")]
    pub nats_client_key: Option<PemFile>,

    /// How long one attempt to connect to NATS may take.
    #[arg(long, env = "NATS_CONNECT_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub nats_connect_timeout_ms: u64,
}

/// The stream and subjects events travel on, shared by `ingest` and `publish`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "JetStream stream")]
pub struct StreamSettings {
    /// The JetStream stream that holds the events.
    #[arg(long, env = "INGEST_STREAM", default_value = "VEHICLE_EVENTS", value_parser = parse_stream_name)]
    pub ingest_stream: String,

    /// Events are published on `<prefix>.registered` and `<prefix>.state_changed`; the stream
    /// takes `<prefix>.>`.
    #[arg(long, env = "INGEST_SUBJECT_PREFIX", default_value = "vehicles", value_parser = parse_subject)]
    pub ingest_subject_prefix: String,

    /// Create the stream at start when it is absent (with INGEST_STREAM_REPLICAS and
    /// INGEST_STREAM_STORAGE). false: it must exist, as when streams are managed elsewhere.
    #[arg(long, env = "INGEST_CREATE_STREAM", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ingest_create_stream: bool,

    /// Replicas of a stream created here (1, or 3 or 5 in a NATS cluster).
    #[arg(long, env = "INGEST_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub ingest_stream_replicas: u8,

    /// Storage of a stream created here.
    #[arg(long, env = "INGEST_STREAM_STORAGE", value_enum, default_value_t = StreamStorage::File)]
    pub ingest_stream_storage: StreamStorage,

    /// Seconds JetStream remembers a `Nats-Msg-Id`, dropping a second publish of it (on a
    /// stream created here).
    #[arg(long, env = "INGEST_DUPLICATE_WINDOW_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub ingest_duplicate_window_secs: u64,
}

/// Where a stream created here keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamStorage {
    /// On disk: survives a NATS restart.
    File,
    /// In memory: lost when NATS restarts.
    Memory,
}

/// Everything `ingest` needs.
#[derive(Debug, Clone, Args)]
pub struct IngestSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub traces: TraceSettings,

    /// The durable pull consumer every ingest process shares.
    #[arg(help_heading = "Ingest", long, env = "INGEST_CONSUMER", default_value = "vehicle-state-ingest", value_parser = parse_stream_name)]
    pub ingest_consumer: String,

    /// Subject that events which can never be applied are published on, with the reason; keep it
    /// outside the stream's subjects.
    #[arg(help_heading = "Ingest", long, env = "INGEST_DEAD_LETTER_SUBJECT", default_value = "vehicle-state.dead-letter", value_parser = parse_subject)]
    pub ingest_dead_letter_subject: String,

    /// The JetStream stream that keeps dead letters, created on INGEST_DEAD_LETTER_SUBJECT when
    /// absent (as INGEST_CREATE_STREAM allows). A dead letter is acked only once a stream has
    /// stored it; while none takes its subject, the event stays in INGEST_STREAM.
    #[arg(help_heading = "Ingest", long, env = "INGEST_DEAD_LETTER_STREAM", default_value = "VEHICLE_EVENTS_DEAD_LETTERS", value_parser = parse_stream_name)]
    pub ingest_dead_letter_stream: String,

    /// Most events applied in one transaction.
    #[arg(help_heading = "Ingest", long, env = "INGEST_BATCH_MAX", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub ingest_batch_max: u32,

    /// Seconds JetStream waits for an ack before delivering a message again (to this or another
    /// ingest process); a consumer created here gets it.
    #[arg(help_heading = "Ingest", long, env = "INGEST_ACK_WAIT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ingest_ack_wait_secs: u64,

    /// Most messages delivered and not yet acked, across every ingest process (a consumer created
    /// here gets it).
    #[arg(help_heading = "Ingest", long, env = "INGEST_MAX_ACK_PENDING", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub ingest_max_ack_pending: i64,

    /// How long a batch PostgreSQL could not take is left before it is delivered again (the NAK's
    /// delay); fetching pauses as long.
    #[arg(help_heading = "Ingest", long, env = "INGEST_RETRY_DELAY_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub ingest_retry_delay_ms: u64,

    /// Address of the ingest process's own /livez, /readyz and /metrics.
    #[arg(
        help_heading = "Ingest",
        long,
        env = "INGEST_BIND_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub ingest_bind_addr: SocketAddr,

    /// Create the database if absent and apply pending migrations before ingesting.
    #[arg(help_heading = "Ingest", long, env = "MIGRATE_ON_START", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

/// What `publish synthetic` sends.
#[derive(Debug, Clone, Args)]
pub struct PublishSettings {
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub traces: TraceSettings,

    /// How many vehicles (ids 1 to N): one registration each, and each of its state changes.
    #[arg(help_heading = "Publish", long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub vehicles: u32,

    /// Seed of the generator: the same seed gives the histories of `seed synthetic --seed S`.
    #[arg(help_heading = "Publish", long = "seed", default_value_t = 1)]
    pub rng_seed: u64,

    /// Publish the events in a random order (the same for the same seed), registrations included.
    #[arg(help_heading = "Publish", long)]
    pub shuffle: bool,

    /// Also publish this fraction of the events a second time, each under a new eventId (so
    /// JetStream's duplicate window does not drop it and the consumer must).
    #[arg(help_heading = "Publish", long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub duplicates: f64,

    /// Most publishes awaiting JetStream's acknowledgement at once.
    #[arg(help_heading = "Publish", long, env = "PUBLISH_IN_FLIGHT", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub publish_in_flight: u32,

    /// How long an event JetStream has not acknowledged is sent again (under the same
    /// Nats-Msg-Id, so one that did land is not stored twice) before publish gives up: a
    /// clustered stream has no leader for the 4 to 10 s of an election.
    #[arg(help_heading = "Publish", long, env = "PUBLISH_RETRY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub publish_retry_secs: u64,
}

fn parse_fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("a fraction from 0 to 1, such as 0.05".to_owned()),
    }
}

/// A stream or consumer name: 1 to 64 of A-Z, a-z, 0-9, '-' and '_' (no dots, wildcards or
/// spaces, which JetStream refuses).
fn parse_stream_name(raw: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'".to_owned())
    }
}

/// A subject to publish on (or a prefix): dot-separated tokens of visible ASCII, no wildcards.
fn parse_subject(raw: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&raw.len())
        && raw.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("use dot-separated tokens of visible ASCII without '*' or '>', such as vehicles or vehicle-state.dead-letter".to_owned())
    }
}

/// The data set `serve --seed` can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    /// Three vehicles and six state changes (`seed/sample.sql`).
    Sample,
}

/// What `seed` loads.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SeedData {
    /// Three vehicles and six state changes (`seed/sample.sql`); loading it twice changes nothing.
    Sample,
    /// Generated histories for many vehicles, bulk-loaded with COPY; the same seed gives the same
    /// data. Refuses a database that already holds vehicles unless --replace.
    Synthetic(SyntheticSettings),
}

impl From<Dataset> for SeedData {
    fn from(dataset: Dataset) -> Self {
        match dataset {
            Dataset::Sample => SeedData::Sample,
        }
    }
}

/// The size and randomness of a synthetic data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct SyntheticSettings {
    /// How many vehicles (ids 1 to N); each gets 1 to 6 state changes, about 2.7 on average.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub vehicles: u32,
    /// Seed of the random generator: the same seed gives the same data.
    #[arg(long = "seed", default_value_t = 1)]
    pub rng_seed: u64,
    /// Empty `vehicles` and `"stateLogs"` first, instead of refusing a database that has rows.
    #[arg(long)]
    pub replace: bool,
}

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_metrics_bind_addr_is_unset_and_an_address_is_taken() {
        assert_eq!(parse_optional_addr(" "), Ok(OptionalAddr(None)));
        assert_eq!(
            parse_optional_addr("127.0.0.1:9464"),
            Ok(OptionalAddr(Some(
                "127.0.0.1:9464".parse().expect("an address")
            )))
        );
        assert!(parse_optional_addr("9464").is_err());
    }

    #[test]
    fn a_database_url_prints_without_its_password() {
        let url = parse_database_url("postgres://app:s3cret@db.internal:6543/vs").expect("valid");
        assert_eq!(url.to_string(), "postgres://app@db.internal:6543/vs");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn malformed_urls_and_prefixes_are_refused() {
        assert!(parse_database_url("mysql://x").is_err());
        assert!(parse_database_url("postgres://host:notaport/db").is_err());
        assert!(parse_redis_urls("http://localhost").is_err());
        assert!(parse_redis_urls("redis://localhost:6379/0").is_ok());
        assert!(parse_redis_urls("redis://a:1,http://b:2").is_err());
        for not_redis in [
            "http://user:s3cret@host:1",
            ":s3cret@host:6379",
            "s3cret@host",
        ] {
            let err = parse_redis_urls(not_redis).expect_err("not Redis");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let secret = Secret::parse("s3cret").expect("any text");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "s3cret");
        let urls = parse_redis_urls("rediss://:pw@a:7000, rediss://b:7001").expect("a list");
        assert_eq!(urls.nodes.len(), 2);
        assert!(!format!("{urls:?}").contains("pw"));
        for bad in ["", "has space", "a:b", &"x".repeat(65)] {
            assert!(parse_key_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_key_prefix("vehicle-state_2.x"),
            Ok("vehicle-state_2.x".to_owned())
        );
    }

    #[test]
    fn nats_url_takes_one_server_or_a_comma_separated_list_and_prints_no_credentials() {
        for (raw, servers) in [
            ("nats://127.0.0.1:4222", "127.0.0.1:4222"),
            ("localhost:4222", "localhost:4222"),
            ("nats://n1", "n1:4222"),
            (
                "tls://user:s3cret@nats.internal:4222/",
                "nats.internal:4222",
            ),
            ("nats://tok3n@a:4222, nats://b:4222", "a:4222,b:4222"),
            ("nats://p@ss@host:4222", "host:4222"),
            (
                "nats://127.0.0.1:4001,nats://127.0.0.1:4002,nats://127.0.0.1:4003",
                "127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003",
            ),
        ] {
            let urls = parse_nats_urls(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(urls.servers(), servers, "{raw}");
            assert_eq!(format!("{urls:?}"), servers, "{raw}");
            assert_eq!(urls.addrs().len(), servers.split(',').count(), "{raw}");
        }
        let urls = parse_nats_urls("nats://u:s3cret@a:1,tls://b:2").expect("a list");
        assert_eq!(urls.addrs()[0].password(), Some("s3cret"));
        assert!(urls.addrs()[1].tls_required());
        for bad in [
            "",
            "nats://a:1,",
            "http://user:s3cret@a:4222",
            "nats://a:1,nats://user:s3cret@b:notaport",
        ] {
            let err = parse_nats_urls(bad).expect_err(bad);
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
    }
}
