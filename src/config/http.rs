//! The HTTP server: where it listens, how much it takes on at once, and how it shuts down.

use std::net::SocketAddr;
use std::time::Duration;

use super::parse::{millis, secs};
use clap::Args;

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
    #[arg(long = "http-workers", id = "HTTP_WORKERS", env = "HTTP_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Seconds between SIGTERM and closing the listener, during which /readyz answers 503 so a
    /// load balancer or orchestrator that polls it (Kubernetes, HAProxy, cloud balancers) stops
    /// sending traffic here first.
    #[arg(long = "shutdown-drain-secs", id = "SHUTDOWN_DRAIN_SECS", env = "SHUTDOWN_DRAIN_SECS", default_value = "0", value_parser = secs(0..=3600))]
    pub shutdown_drain: Duration,

    /// Seconds in-flight requests get to finish after the listener closes.
    #[arg(long = "shutdown-timeout-secs", id = "SHUTDOWN_TIMEOUT_SECS", env = "SHUTDOWN_TIMEOUT_SECS", default_value = "30", value_parser = secs(0..=3600))]
    pub shutdown_timeout: Duration,

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

    /// Most points of one `GET /fleet/states/series` (each a count at one instant, read in one
    /// statement with the others not cached); more is a 400 `invalid-query` that says so.
    #[arg(long, env = "FLEET_SERIES_MAX_POINTS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub fleet_series_max_points: u32,

    /// Largest body of a `POST /vehicles/states`, in bytes; a larger one is a 413 before it is
    /// read.
    #[arg(long, env = "BATCH_MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(64..=16 * 1024 * 1024))]
    pub batch_max_body_bytes: u32,

    /// Seconds sent in `Retry-After` when a lookup is shed by `LOOKUP_CONCURRENCY_LIMIT`.
    #[arg(long, env = "OVERLOAD_RETRY_AFTER_SECS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub overload_retry_after_secs: u32,

    /// How long a client has to send a request's head (line and headers) from when it connects
    /// or its previous request ends; a slower client gets 408 and is disconnected (slowloris).
    #[arg(long = "http-client-request-timeout-ms", id = "HTTP_CLIENT_REQUEST_TIMEOUT_MS", env = "HTTP_CLIENT_REQUEST_TIMEOUT_MS", default_value = "5000", value_parser = millis(1..=600_000))]
    pub client_request_timeout: Duration,

    /// Seconds an idle keep-alive connection is kept open (0 closes after each response). Keep it
    /// above the idle timeout of the load balancer's upstream connections.
    #[arg(long = "http-keep-alive-secs", id = "HTTP_KEEP_ALIVE_SECS", env = "HTTP_KEEP_ALIVE_SECS", default_value = "5", value_parser = secs(0..=3600))]
    pub keep_alive: Duration,

    /// Most requests answered on one connection; the answer to the last says `Connection: close`
    /// (as nginx's `keepalive_requests`), and nothing more is read from the connection.
    #[arg(long = "http-max-requests-per-connection", id = "HTTP_MAX_REQUESTS_PER_CONNECTION", env = "HTTP_MAX_REQUESTS_PER_CONNECTION", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_requests_per_connection: u32,

    /// Most bytes of answers' bodies sent on one connection; the answer that reaches it says
    /// `Connection: close`. The most one connection can hold for a client that does not read is
    /// this plus one answer.
    #[arg(long = "http-max-response-bytes-per-connection", id = "HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION", env = "HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1_073_741_824))]
    pub max_response_bytes_per_connection: u64,

    /// How long a connection is kept, once its answer says `Connection: close` with the
    /// request's body unread, for the client to read the answer before the connection is shut
    /// (a body that does not arrive within HTTP_CLIENT_REQUEST_TIMEOUT_MS is answered 408, then
    /// closed this long after).
    #[arg(long = "http-client-disconnect-timeout-ms", id = "HTTP_CLIENT_DISCONNECT_TIMEOUT_MS", env = "HTTP_CLIENT_DISCONNECT_TIMEOUT_MS", default_value = "500", value_parser = millis(1..=60_000))]
    pub client_disconnect_timeout: Duration,

    /// How long a write to a client may make no progress (the client reads nothing, its
    /// socket is full) before the connection is dropped, as nginx's `send_timeout`.
    #[arg(long = "http-send-timeout-ms", id = "HTTP_SEND_TIMEOUT_MS", env = "HTTP_SEND_TIMEOUT_MS", default_value = "10000", value_parser = millis(1..=600_000))]
    pub send_timeout: Duration,

    /// Most open connections per worker thread; past it, new connections wait in the listen
    /// backlog until one closes.
    #[arg(long = "http-max-connections", id = "HTTP_MAX_CONNECTIONS", env = "HTTP_MAX_CONNECTIONS", default_value_t = 25_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
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
}
