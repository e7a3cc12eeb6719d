//! NATS and the JetStream stream that `ingest` and `publish` share.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse::{millis, parse_stream_name, parse_subject, secs};
use super::secrets::{PemFile, redacted};

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

/// Where and how to reach NATS (for `ingest` and `publish`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsSettings {
    /// NATS server URL, or a comma-separated list of them (the servers of a cluster: the client
    /// connects to any one and fails over to the others): `nats://host:4222`, `tls://host:4222`
    /// (TLS required). User and password, or a token, may be given in the URL. Unset, `ingest`
    /// and `publish` use nats://127.0.0.1:4222, and `serve` follows no change feed.
    #[arg(long = "nats-url", id = "NATS_URL", env = "NATS_URL", value_parser = parse_nats_urls, hide_env_values = true)]
    pub url: Option<NatsUrls>,

    /// A NATS credentials file (JWT and NKey seed, as `nsc` writes them).
    #[arg(
        long = "nats-creds-file",
        id = "NATS_CREDS_FILE",
        env = "NATS_CREDS_FILE"
    )]
    pub creds_file: Option<std::path::PathBuf>,

    /// CA certificate (PEM) to verify the NATS server with, for a private CA; implies TLS.
    #[arg(long = "nats-ca-cert", id = "NATS_CA_CERT", env = "NATS_CA_CERT", value_parser = PemFile::read)]
    pub ca_cert: Option<PemFile>,

    /// Client certificate (PEM) for NATS servers that verify clients; needs NATS_CLIENT_KEY.
    #[arg(long = "nats-client-cert", id = "NATS_CLIENT_CERT", env = "NATS_CLIENT_CERT", value_parser = PemFile::read, requires = "NATS_CLIENT_KEY")]
    pub client_cert: Option<PemFile>,

    /// The client certificate's private key (PEM).
    #[arg(long = "nats-client-key", id = "NATS_CLIENT_KEY", env = "NATS_CLIENT_KEY", value_parser = PemFile::read, requires = "NATS_CLIENT_CERT")]
    pub client_key: Option<PemFile>,

    /// How long one attempt to connect to NATS may take.
    #[arg(long = "nats-connect-timeout-ms", id = "NATS_CONNECT_TIMEOUT_MS", env = "NATS_CONNECT_TIMEOUT_MS", default_value = "5000", value_parser = millis(1..=600_000))]
    pub connect_timeout: Duration,
}

impl NatsSettings {
    /// `NATS_URL`, or the local server when unset.
    pub fn urls(&self) -> NatsUrls {
        self.url
            .clone()
            .unwrap_or_else(|| NatsUrls("nats://127.0.0.1:4222".parse().ok().into_iter().collect()))
    }
}

/// The stream and subjects events travel on, shared by `ingest` and `publish`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "JetStream stream")]
pub struct StreamSettings {
    /// The JetStream stream that holds the events.
    #[arg(long = "ingest-stream", id = "INGEST_STREAM", env = "INGEST_STREAM", default_value = "VEHICLE_EVENTS", value_parser = parse_stream_name)]
    pub name: String,

    /// Events are published on `<prefix>.registered` and `<prefix>.state_changed`; the stream
    /// takes `<prefix>.>`.
    #[arg(long = "ingest-subject-prefix", id = "INGEST_SUBJECT_PREFIX", env = "INGEST_SUBJECT_PREFIX", default_value = "vehicles", value_parser = parse_subject)]
    pub subject_prefix: String,

    /// Create the stream at start when it is absent (with INGEST_STREAM_REPLICAS and
    /// INGEST_STREAM_STORAGE). false: it must exist, as when streams are managed elsewhere.
    #[arg(long = "ingest-create-stream", id = "INGEST_CREATE_STREAM", env = "INGEST_CREATE_STREAM", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub create: bool,

    /// Replicas of a stream created here (1, or 3 or 5 in a NATS cluster).
    #[arg(long = "ingest-stream-replicas", id = "INGEST_STREAM_REPLICAS", env = "INGEST_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Storage of a stream created here.
    #[arg(long = "ingest-stream-storage", id = "INGEST_STREAM_STORAGE", env = "INGEST_STREAM_STORAGE", value_enum, default_value_t = StreamStorage::File)]
    pub storage: StreamStorage,

    /// Seconds JetStream remembers a `Nats-Msg-Id`, dropping a second publish of it (on a
    /// stream created here).
    #[arg(long = "ingest-duplicate-window-secs", id = "INGEST_DUPLICATE_WINDOW_SECS", env = "INGEST_DUPLICATE_WINDOW_SECS", default_value = "120", value_parser = secs(1..=604_800))]
    pub duplicate_window: Duration,

    /// How long the events' stream keeps an event (applied or not), on a stream created or
    /// managed here (INGEST_CREATE_STREAM): the window to replay or inspect it in.
    #[arg(long = "ingest-stream-max-age-secs", id = "INGEST_STREAM_MAX_AGE_SECS", env = "INGEST_STREAM_MAX_AGE_SECS", default_value = "604800", value_parser = secs(60..=315_360_000))]
    pub max_age: Duration,

    /// Most bytes the events' stream keeps, the oldest dropped first (on a stream created or
    /// managed here). An event still unapplied when dropped is lost: size it for the longest
    /// outage of ingest to ride out.
    #[arg(long = "ingest-stream-max-bytes", id = "INGEST_STREAM_MAX_BYTES", env = "INGEST_STREAM_MAX_BYTES", default_value_t = 8 << 30, value_parser = clap::value_parser!(i64).range(1 << 20..))]
    pub max_bytes: i64,
}

/// The change feed: the stream `ingest` announces each committed change on, and replicas follow.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Change feed")]
pub struct ChangesSettings {
    /// The JetStream stream of announced changes, created by `ingest` when absent (as
    /// INGEST_CREATE_STREAM allows, with INGEST_STREAM_REPLICAS and INGEST_STREAM_STORAGE).
    #[arg(long = "changes-stream", id = "CHANGES_STREAM", env = "CHANGES_STREAM", default_value = "VEHICLE_CHANGES", value_parser = parse_stream_name)]
    pub stream: String,

    /// Vehicle N's changes are announced on `<prefix>.N`; the stream takes `<prefix>.>`. Keep it
    /// outside INGEST_SUBJECT_PREFIX's subjects.
    #[arg(long = "changes-subject-prefix", id = "CHANGES_SUBJECT_PREFIX", env = "CHANGES_SUBJECT_PREFIX", default_value = "vehicle-state.changes", value_parser = parse_subject)]
    pub subject_prefix: String,

    /// How long the change stream keeps an announcement (on a stream created or managed by
    /// `ingest`).
    #[arg(long = "changes-max-age-secs", id = "CHANGES_MAX_AGE_SECS", env = "CHANGES_MAX_AGE_SECS", default_value = "86400", value_parser = secs(60..=31_536_000))]
    pub max_age: Duration,

    /// Most bytes the change stream keeps, the oldest announcements dropped first.
    #[arg(long = "changes-max-bytes", id = "CHANGES_MAX_BYTES", env = "CHANGES_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(i64).range(1 << 20..))]
    pub max_bytes: i64,
}

/// What a replica (`serve`) does with the change feed.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Change feed")]
pub struct FollowSettings {
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub changes: ChangesSettings,

    /// With NATS_URL set, drop what this replica and Redis hold for a changed vehicle as soon
    /// as the change feed announces it. false: answers are served until CACHE_TTL_SECS have
    /// passed since their read, as without a feed (streams of changes still work).
    #[arg(long = "cache-invalidation", id = "CACHE_INVALIDATION", env = "CACHE_INVALIDATION", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub invalidation: bool,

    /// The durable consumer of the change stream that every replica shares to drop changed
    /// vehicles' entries from Redis: each announcement is carried out in Redis by one replica.
    #[arg(long = "cache-invalidation-consumer", id = "CACHE_INVALIDATION_CONSUMER", env = "CACHE_INVALIDATION_CONSUMER", default_value = "vehicle-state-cache", value_parser = parse_stream_name)]
    pub consumer: String,

    /// Most streams of changes (`/vehicles/{id}/changes`, `/changes`) open on this replica at
    /// once; beyond it a 503 problem with Retry-After.
    #[arg(long = "changes-max-streams", id = "CHANGES_MAX_STREAMS", env = "CHANGES_MAX_STREAMS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streams: u32,

    /// Most vehicles one stream of changes watches (`/changes?ids=`).
    #[arg(long = "changes-max-ids", id = "CHANGES_MAX_IDS", env = "CHANGES_MAX_IDS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_ids: u32,

    /// Announcements a stream may be behind its client before it is ended (the client reads
    /// slower than its vehicles change); it is never buffered beyond this.
    #[arg(long = "changes-stream-buffer", id = "CHANGES_STREAM_BUFFER", env = "CHANGES_STREAM_BUFFER", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub stream_buffer: u32,

    /// How often an idle stream sends a comment, well inside proxies' read timeouts (nginx's
    /// proxy_read_timeout is 60 s).
    #[arg(long = "changes-keepalive-secs", id = "CHANGES_KEEPALIVE_SECS", env = "CHANGES_KEEPALIVE_SECS", default_value = "15", value_parser = secs(1..=300))]
    pub keepalive: Duration,

    /// Most announcements a reconnecting stream is sent to catch up (Last-Event-ID); further
    /// behind, it gets a fresh snapshot instead.
    #[arg(long = "changes-replay-max", id = "CHANGES_REPLAY_MAX", env = "CHANGES_REPLAY_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub replay_max: u32,
}

impl FollowSettings {
    /// Whether this replica follows the feed: NATS_URL set.
    pub fn on(&self) -> bool {
        self.nats.url.is_some()
    }
}

/// Where a stream created here keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamStorage {
    /// On disk: survives a NATS restart.
    File,
    /// In memory: lost when NATS restarts.
    Memory,
}

#[cfg(test)]
mod tests {
    use super::*;

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
