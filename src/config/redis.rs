//! Redis and what is cached in it: the topology and its servers, the bounds on each call, and
//! how long answers are kept.

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse::{millis, parse_key_prefix};
use super::secrets::{PemFile, Secret, redacted};

/// Where and how to reach Redis. Redis only speeds answers up: every call is bounded by
/// `REDIS_TIMEOUT_MS`, and a failed call falls back to PostgreSQL.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// Redis connection URL: `redis://` or `rediss://` (TLS). With REDIS_MODE=cluster, a
    /// comma-separated list of seed nodes; with REDIS_MODE=sentinel, of the sentinels.
    #[arg(long = "redis-url", id = "REDIS_URL", env = "REDIS_URL", default_value = "redis://localhost:6379", value_parser = parse_redis_urls, hide_env_values = true)]
    pub url: RedisUrls,

    /// Which Redis topology REDIS_URL names.
    #[arg(long = "redis-mode", id = "REDIS_MODE", env = "REDIS_MODE", value_enum, default_value_t = RedisMode::Standalone)]
    pub mode: RedisMode,

    /// With REDIS_MODE=sentinel: the name of the master set the sentinels watch.
    #[arg(
        long = "redis-sentinel-master",
        id = "REDIS_SENTINEL_MASTER",
        env = "REDIS_SENTINEL_MASTER",
        default_value = "mymaster"
    )]
    pub sentinel_master: String,

    /// With REDIS_MODE=sentinel: the sentinels' own password, when they require one (the
    /// password in REDIS_URL is the master's).
    #[arg(long = "redis-sentinel-password", id = "REDIS_SENTINEL_PASSWORD", env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true, value_parser = Secret::parse)]
    pub sentinel_password: Option<Secret>,

    /// PEM file of the CA that signed the Redis servers' certificates (rediss:// only); unset,
    /// the system's trusted roots are used.
    #[arg(long = "redis-ca-cert", id = "REDIS_CA_CERT", env = "REDIS_CA_CERT", value_parser = PemFile::read)]
    pub ca_cert: Option<PemFile>,

    /// PEM file of the client certificate, for Redis servers that require one (mutual TLS);
    /// goes with REDIS_CLIENT_KEY.
    #[arg(long = "redis-client-cert", id = "REDIS_CLIENT_CERT", env = "REDIS_CLIENT_CERT", value_parser = PemFile::read)]
    pub client_cert: Option<PemFile>,

    /// PEM file of the client certificate's private key; goes with REDIS_CLIENT_CERT.
    #[arg(long = "redis-client-key", id = "REDIS_CLIENT_KEY", env = "REDIS_CLIENT_KEY", value_parser = PemFile::read)]
    pub client_key: Option<PemFile>,

    /// Most connections one replica holds to Redis: one per thread that asks it (each HTTP
    /// worker), each multiplexed; threads beyond it share the newest.
    #[arg(long = "redis-pool-max-size", id = "REDIS_POOL_MAX_SIZE", env = "REDIS_POOL_MAX_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub pool_max_size: u64,

    /// Bound on each Redis call, connecting included; past it the request goes to PostgreSQL.
    #[arg(long = "redis-timeout-ms", id = "REDIS_TIMEOUT_MS", env = "REDIS_TIMEOUT_MS", default_value = "100", value_parser = millis(1..=60_000))]
    pub timeout: Duration,

    /// After a Redis call fails, how long Redis is left alone (lookups go straight to PostgreSQL)
    /// before one call tries it again; so a hanging Redis costs at most one timeout per interval.
    #[arg(long = "redis-retry-interval-ms", id = "REDIS_RETRY_INTERVAL_MS", env = "REDIS_RETRY_INTERVAL_MS", default_value = "1000", value_parser = millis(1..=600_000))]
    pub retry_interval: Duration,
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

/// What is cached and for how long.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cache")]
pub struct CacheSettings {
    /// Seconds an answer is kept in Redis; the bound on how stale an answer can be.
    #[arg(long = "cache-ttl-secs", id = "CACHE_TTL_SECS", env = "CACHE_TTL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub ttl_secs: u32,

    /// Memory budget of this replica's in-process cache, in bytes of keys and answers (0 turns it
    /// off; concurrent misses for one key are still coalesced).
    #[arg(long = "local-cache-max-bytes", id = "LOCAL_CACHE_MAX_BYTES", env = "LOCAL_CACHE_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub local_max_bytes: u64,

    /// Seconds past the TTL an answer stays in Redis so that, while PostgreSQL cannot answer, it
    /// can still be served, marked `X-Cache: STALE` (RFC 5861 `stale-if-error`). 0, the default,
    /// turns this off: no answer is ever older than `CACHE_TTL_SECS`.
    #[arg(long, env = "STALE_IF_ERROR_SECS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub stale_if_error_secs: u32,

    /// Prefix of every Redis key, so several deployments (or test runs) can share one Redis.
    #[arg(long = "cache-key-prefix", id = "CACHE_KEY_PREFIX", env = "CACHE_KEY_PREFIX", default_value = "vehicle-state", value_parser = parse_key_prefix)]
    pub key_prefix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_redis_urls_are_refused_without_naming_their_password() {
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
        let urls = parse_redis_urls("rediss://:pw@a:7000, rediss://b:7001").expect("a list");
        assert_eq!(urls.nodes.len(), 2);
        assert!(!format!("{urls:?}").contains("pw"));
    }
}
