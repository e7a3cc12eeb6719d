//! Redis servers of the test's own, on spare ports: a lone server (over TCP or TLS only), a
//! Redis Cluster of three masters with a replica each, and a master with a replica watched by a
//! sentinel. Each process is killed when dropped; its files are removed.

mod cluster;
mod sentinel;

pub use cluster::RedisCluster;
pub use sentinel::{MASTER_SET, Sentinel};

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{ClientTlsConfig, TlsCertificates};

use super::{Place, TempDir, free_port};
use crate::pki::Pki;

/// How the tests reach a server: its CA and a client certificate, when it speaks TLS.
fn test_client(url: &str, pki: Option<&Pki>) -> redis::Client {
    match pki {
        None => redis::Client::open(url).expect("a URL"),
        Some(pki) => redis::Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: Some(ClientTlsConfig {
                    client_cert: fs::read(&pki.client_cert).expect("client certificate"),
                    client_key: fs::read(&pki.client_key).expect("client key"),
                }),
                root_cert: Some(fs::read(&pki.ca).expect("CA")),
            },
        )
        .expect("a TLS client"),
    }
}

/// The arguments that make a server (or sentinel) speak TLS alone on `port`, its replication
/// and cluster bus included; clients must show a certificate the CA signed when `mutual`.
fn tls_args(pki: &Pki, port: u16, mutual: bool) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &path(&pki.server_cert),
        "--tls-key-file",
        &path(&pki.server_key),
        "--tls-ca-cert-file",
        &path(&pki.ca),
        "--tls-auth-clients",
        if mutual { "yes" } else { "optional" },
        "--tls-replication",
        "yes",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A Redis server of the test's own on a spare port, which the test may stop and start again.
pub struct RedisServer {
    pub port: u16,
    place: Place,
    child: Option<Child>,
    args: Vec<String>,
    tls: Option<Pki>,
    _dir: TempDir,
}

impl RedisServer {
    /// Over plain TCP, keeping nothing on disk.
    pub async fn start() -> Self {
        Self::start_with(None, &[]).await
    }

    /// With `pki`, over TLS only (mutual: clients need a certificate); `extra` arguments after
    /// the usual ones.
    pub async fn start_with(pki: Option<&Pki>, extra: &[String]) -> Self {
        Self::start_at(Place::loopback(), pki, extra).await
    }

    /// [`RedisServer::start_with`], listening at `place`.
    pub async fn start_at(place: Place, pki: Option<&Pki>, extra: &[String]) -> Self {
        let port = free_port();
        let dir = TempDir::new("redis");
        let mut args: Vec<String> = match pki {
            Some(pki) => tls_args(pki, port, true),
            None => vec!["--port".into(), port.to_string()],
        };
        args.extend(
            [
                "--bind",
                place.ip.as_str(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .into_iter()
            // No password: clients come over the test host's link, not loopback.
            .chain(["--protected-mode", "no"])
            // A replica's first sync at once, not after Redis's default 5 s.
            .chain(["--repl-diskless-sync-delay", "0"])
            .chain(["--daemonize", "no", "--dir"])
            .map(str::to_owned),
        );
        args.push(dir.0.display().to_string());
        args.extend_from_slice(extra);
        let mut redis = Self {
            port,
            place,
            child: None,
            args,
            tls: pki.cloned(),
            _dir: dir,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}:{}", self.place.ip, self.port)
    }

    pub fn client(&self) -> redis::Client {
        test_client(&self.url(), self.tls.as_ref())
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self
            .place
            .command("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian package redis-server)");
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on {}", self.port);
    }

    /// Stops it the way an operator or a crash would: SIGKILL, connections reset.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, as a crash would, without waiting (the process is reaped when dropped).
    pub fn kill(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -KILL {pid}");
    }

    /// Runs one command on it.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        self.try_query(cmd)
            .await
            .unwrap_or_else(|e| panic!("{cmd:?} on {}: {e}", self.port))
    }

    /// Runs one command on it, if it answers.
    pub async fn try_query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = self.client().get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }

    /// How many keys it holds.
    pub async fn dbsize(&self) -> u64 {
        self.query(&redis::cmd("DBSIZE")).await
    }

    /// Its role: `master` or `slave`.
    /// Its role, or None when the question is not answered: a sentinel promoting a replica
    /// disconnects its clients, so a poll during a failover may meet a reset connection.
    pub async fn try_role(&self) -> Option<String> {
        let role: Vec<redis::Value> = self.try_query(&redis::cmd("ROLE")).await.ok()?;
        match role.first() {
            Some(redis::Value::BulkString(kind)) => {
                Some(String::from_utf8_lossy(kind).into_owned())
            }
            _ => None,
        }
    }

    pub async fn role(&self) -> String {
        let role: Vec<redis::Value> = self.query(&redis::cmd("ROLE")).await;
        match role.first() {
            Some(redis::Value::BulkString(kind)) => String::from_utf8_lossy(kind).into_owned(),
            other => panic!("ROLE answered {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
