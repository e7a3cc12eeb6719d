//! Which Redis this replica talks to, and how: one server, a Redis Cluster, or the master a set
//! of Sentinels names; over TCP or TLS. The one module that knows the topology: above it, a
//! [`Connection`] is where commands go, whatever the mode.
//!
//! redis-rs does the work of each mode: its cluster client follows `MOVED` and `ASK` and
//! refreshes the slot map when the cluster changes; its sentinel client asks a sentinel for the
//! current master (and checks that master's `ROLE`) each time it connects. One thing is ours:
//! the sentinels are asked all at once, each within `REDIS_TIMEOUT_MS`, and the first that names
//! a confirmed master wins. redis-rs asks them in the order listed and waits for each in turn
//! with its fixed connect timeout (1 s), so one sentinel that swallows packets would delay
//! every connection by that second, longer than the bound on a Redis call: nothing would ever
//! be cached again while it did. The pool's manager is ours rather than
//! deadpool-redis's because those cannot be given a private CA or a client certificate in
//! cluster and sentinel modes.
//!
//! Every command the service sends names one key (`GET` and `PTTL` of one key in a pipeline, or
//! one `SET`), so in cluster mode each goes whole to the node that owns the key's slot.

mod census;
mod sentinel;

pub use census::{Nodes, nodes};

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, ConnectionInfo, RedisError,
    TlsCertificates,
};

use crate::config::{RedisMode, RedisSettings};

/// A connection that carries any number of concurrent commands; clones share it.
#[derive(Clone)]
pub enum Connection {
    /// To a standalone server, or to the master the sentinels named.
    Single(MultiplexedConnection),
    /// To every node of a cluster, each command routed by its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

// One per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Client {
    Standalone(redis::Client),
    Cluster(ClusterClient),
    /// A client per sentinel, asked together (see the module's comment). Asking takes `&mut`:
    /// each sentinel answers one question at a time.
    Sentinel(Vec<tokio::sync::Mutex<SentinelClient>>),
}

/// Makes connections for the pool, and checks them (with a `PING`) before they are reused.
pub struct Manager {
    client: Client,
    mode: RedisMode,
    /// `REDIS_TIMEOUT_MS`, for asking one sentinel.
    timeout: std::time::Duration,
    /// `REDIS_TIMEOUT_MS` for connecting and for each reply, in place of redis-rs's defaults.
    config: AsyncConnectionConfig,
    pings: AtomicUsize,
}

pub type Pool = managed::Pool<Manager>;
pub type PoolError = managed::PoolError<RedisError>;

impl Manager {
    /// A manager for the topology `settings` describe. Connects to nothing yet.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        // redis-rs sets up TLS with the process-wide crypto provider; pick it once, so that
        // which provider features other crates enable can never make that set-up fail. An
        // error means one is installed already, which serves as well.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let nodes = &settings.url.nodes;
        let certificates = certificates(settings, nodes)?;
        let client = match settings.mode {
            RedisMode::Standalone => {
                let [node] = nodes.as_slice() else {
                    bail!(
                        "REDIS_URL lists {} servers: REDIS_MODE=standalone takes one (set REDIS_MODE=cluster or sentinel for a list)",
                        nodes.len()
                    );
                };
                let client = match certificates {
                    Some(certs) => redis::Client::build_with_tls(node.clone(), certs),
                    None => redis::Client::open(node.clone()),
                };
                Client::Standalone(client.context("REDIS_URL: cannot configure the Redis client")?)
            }
            RedisMode::Cluster => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout);
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                Client::Cluster(
                    builder
                        .build()
                        .context("REDIS_URL: cannot configure the Redis Cluster client")?,
                )
            }
            RedisMode::Sentinel => {
                Client::Sentinel(sentinel::clients(settings, nodes, certificates)?)
            }
        };
        Ok(Self {
            client,
            mode: settings.mode,
            timeout: settings.timeout,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(settings.timeout)),
            pings: AtomicUsize::new(0),
        })
    }

    pub fn mode(&self) -> RedisMode {
        self.mode
    }
}

/// The private CA and client certificate, if any were given; only for `rediss://` URLs.
fn certificates(
    settings: &RedisSettings,
    nodes: &[ConnectionInfo],
) -> anyhow::Result<Option<TlsCertificates>> {
    let client_tls = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: cert.bytes.clone(),
            client_key: key.bytes.clone(),
        }),
        (None, None) => None,
        _ => bail!("REDIS_CLIENT_CERT and REDIS_CLIENT_KEY go together: set both or neither"),
    };
    let root_cert = settings.ca_cert.as_ref().map(|ca| ca.bytes.clone());
    if client_tls.is_none() && root_cert.is_none() {
        return Ok(None);
    }
    if !nodes.iter().all(is_tls) {
        bail!(
            "REDIS_CA_CERT, REDIS_CLIENT_CERT and REDIS_CLIENT_KEY are for TLS: use rediss:// URLs in REDIS_URL"
        );
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn is_tls(node: &ConnectionInfo) -> bool {
    matches!(node.addr(), ConnectionAddr::TcpTls { .. })
}

impl managed::Manager for Manager {
    type Type = Connection;
    type Error = RedisError;

    async fn create(&self) -> Result<Connection, RedisError> {
        Ok(match &self.client {
            Client::Standalone(client) => Connection::Single(
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
            ),
            Client::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
            Client::Sentinel(sentinels) => Connection::Single(
                self.master(sentinels)
                    .await?
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
            ),
        })
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<RedisError> {
        let token = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let echoed: String = redis::cmd("PING").arg(&token).query_async(conn).await?;
        if echoed == token {
            Ok(())
        } else {
            Err(RecycleError::message("PING answered something else"))
        }
    }
}
