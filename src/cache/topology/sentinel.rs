//! Sentinel discovery: a client per sentinel, all asked at once for the master (see the parent
//! module's comment for why not one after the other, as redis-rs does).

use anyhow::{Context, bail};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionInfo, RedisError, TlsCertificates, TlsMode};

use super::{Manager, is_tls};
use crate::config::RedisSettings;

/// A client per sentinel `nodes` lists, each to be asked on its own (see [`Manager::master`]).
pub(super) fn clients(
    settings: &RedisSettings,
    nodes: &[ConnectionInfo],
    certificates: Option<TlsCertificates>,
) -> anyhow::Result<Vec<tokio::sync::Mutex<SentinelClient>>> {
    if nodes.is_empty() {
        bail!("REDIS_URL lists no sentinel");
    }
    let tls = is_tls(&nodes[0]);
    if nodes.iter().any(|n| is_tls(n) != tls) {
        bail!("REDIS_URL: the sentinels' URLs mix redis:// and rediss://");
    }
    // Each client knows one sentinel; the master's settings come from the first URL, as they
    // would from a standalone REDIS_URL.
    nodes
        .iter()
        .map(|sentinel| {
            sentinel_client(settings, &nodes[0], sentinel, certificates.clone())
                .map(tokio::sync::Mutex::new)
        })
        .collect()
}

/// A client of the sentinel at `sentinel`'s address; `first`'s user name, password and
/// database are the master's, as they would be in a standalone `REDIS_URL`;
/// `REDIS_SENTINEL_PASSWORD`, if set, is the sentinels' own. TLS (and its certificates) applies
/// to both when the URLs use `rediss://`.
fn sentinel_client(
    settings: &RedisSettings,
    first: &ConnectionInfo,
    sentinel: &ConnectionInfo,
    certificates: Option<TlsCertificates>,
) -> anyhow::Result<SentinelClient> {
    let tls = is_tls(first);
    let master = first.redis_settings();
    let mut builder = SentinelClientBuilder::new(
        [sentinel.addr().clone()],
        &settings.sentinel_master,
        SentinelServerType::Master,
    )
    .context("REDIS_URL: cannot configure the sentinel client")?
    .set_client_to_redis_db(master.db());
    if let Some(username) = master.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = master.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = &settings.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password.expose());
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = certificates {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    builder
        .build()
        .context("REDIS_URL: cannot configure the sentinel client")
}

impl Manager {
    /// Asks every sentinel at once for the master, each within `REDIS_TIMEOUT_MS`; the first
    /// that names a master whose `ROLE` confirms it wins, and the others are dropped (redis-rs
    /// keeps only connections it has checked, so that is safe). Fails with the last failure
    /// when none does.
    pub(super) async fn master(
        &self,
        sentinels: &[tokio::sync::Mutex<SentinelClient>],
    ) -> Result<redis::Client, RedisError> {
        let asks = sentinels.iter().map(|sentinel| {
            Box::pin(async move {
                let ask = async { sentinel.lock().await.async_get_client().await };
                tokio::time::timeout(self.timeout, ask)
                    .await
                    .unwrap_or_else(|_| {
                        Err(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "a sentinel did not name the master within {} ms (REDIS_TIMEOUT_MS)",
                                self.timeout.as_millis()
                            ),
                        )))
                    })
            })
        });
        futures_util::future::select_ok(asks)
            .await
            .map(|(client, _)| client)
    }
}
