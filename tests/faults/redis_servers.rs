//! Redis servers of the test's own, on spare ports: a lone server (over TCP or TLS only), a
//! Redis Cluster of three masters with a replica each, and a master with a replica watched by a
//! sentinel. Each process is killed when dropped; its files are removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{ClientTlsConfig, TlsCertificates};

use crate::cluster::{Place, TempDir, free_port};
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

/// A Redis Cluster of `masters` masters with one replica each, made by `redis-cli --cluster
/// create`, with a short node timeout so a failover takes about a second.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    tls: Option<Pki>,
}

impl RedisCluster {
    pub async fn start(masters: usize, replicas_each: usize, pki: Option<&Pki>) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas_each) {
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                "--tls-cluster",
                if pki.is_some() { "yes" } else { "no" },
            ]
            .map(str::to_owned);
            nodes.push(RedisServer::start_with(pki, &extra).await);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args([
            "--cluster-replicas",
            &replicas_each.to_string(),
            "--cluster-yes",
        ]);
        if let Some(pki) = pki {
            create
                .args(["--tls", "--cacert"])
                .arg(&pki.ca)
                .arg("--cert")
                .arg(&pki.client_cert)
                .arg("--key")
                .arg(&pki.client_key);
        }
        let output = tokio::task::spawn_blocking(move || create.output())
            .await
            .expect("redis-cli")
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self {
            nodes,
            tls: pki.cloned(),
        };
        cluster
            .wait_until_healthy(masters, masters * replicas_each)
            .await;
        cluster
    }

    /// `REDIS_URL` for the service: every node, as seeds.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
            .collect();
        urls.join(",")
    }

    /// Waits until every node that answers says the cluster is ok and sees the masters and
    /// replicas (not counting failed ones).
    pub async fn wait_until_healthy(&self, masters: usize, replicas: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        'poll: while Instant::now() < deadline {
            for node in &self.nodes {
                let Ok(info) = node
                    .try_query::<String>(redis::cmd("CLUSTER").arg("INFO"))
                    .await
                else {
                    continue;
                };
                let nodes: String = node.query(redis::cmd("CLUSTER").arg("NODES")).await;
                let count = |role: &str| {
                    nodes
                        .lines()
                        .filter(|l| {
                            let flags = l.split_whitespace().nth(2).unwrap_or("");
                            flags.contains(role) && !flags.contains("fail")
                        })
                        .count()
                };
                if !info.contains("cluster_state:ok")
                    || count("master") != masters
                    || count("slave") != replicas
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
            return;
        }
        panic!("the cluster did not become healthy");
    }

    /// The nodes that are masters now.
    pub async fn masters(&self) -> Vec<&RedisServer> {
        let mut masters = Vec::new();
        for node in &self.nodes {
            if node.role().await == "master" {
                masters.push(node);
            }
        }
        masters
    }
}

/// A master, a replica of it, and sentinels watching them (quorum 1, the master declared down
/// after a second).
pub struct Sentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    /// The sentinels' ports, in the order `url` lists them.
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    place: Place,
    tls: Option<Pki>,
    _dir: TempDir,
}

pub const MASTER_SET: &str = "vs-test-master";

impl Sentinel {
    /// One sentinel, everything on loopback.
    pub async fn start(pki: Option<&Pki>) -> Self {
        Self::start_at(Place::loopback(), 1, pki).await
    }

    /// `count` sentinels, everything at `place`.
    pub async fn start_at(place: Place, count: usize, pki: Option<&Pki>) -> Self {
        let master = RedisServer::start_at(place.clone(), pki, &[]).await;
        let replicaof = ["--replicaof", &place.ip, &master.port.to_string()].map(str::to_owned);
        let replica = RedisServer::start_at(place.clone(), pki, &replicaof).await;
        let dir = TempDir::new("sentinel");
        let mut sentinel_ports = Vec::new();
        let mut sentinels = Vec::new();
        for n in 0..count {
            let port = free_port();
            // A sentinel rewrites its file, so it lives in the test's directory.
            let conf: PathBuf = dir.0.join(format!("sentinel-{n}.conf"));
            fs::write(
                &conf,
                format!(
                    "bind {ip}\nprotected-mode no\ndir {dir}\n\
                     sentinel monitor {MASTER_SET} {ip} {master} 1\n\
                     sentinel down-after-milliseconds {MASTER_SET} 1000\n\
                     sentinel failover-timeout {MASTER_SET} 5000\n",
                    ip = place.ip,
                    dir = dir.0.display(),
                    master = master.port,
                ),
            )
            .expect("write sentinel.conf");
            let mut args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            match pki {
                Some(pki) => args.extend(tls_args(pki, port, true)),
                None => args.extend(["--port".to_owned(), port.to_string()]),
            }
            let sentinel = place
                .command("redis-server")
                .args(&args)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            sentinel_ports.push(port);
            sentinels.push(sentinel);
        }
        let set = Self {
            master,
            replica,
            sentinel_ports,
            sentinels,
            place,
            tls: pki.cloned(),
            _dir: dir,
        };
        set.wait_until_watched().await;
        set
    }

    /// `REDIS_URL` for the service: the sentinels, in order.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.sentinel_ports
            .iter()
            .map(|port| format!("{scheme}://{}:{port}", self.place.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the replica has synced and the sentinel knows the master and has found
    /// the replica.
    async fn wait_until_watched(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = self
                .replica
                .query(redis::cmd("INFO").arg("replication"))
                .await;
            if info.contains("master_link_status:up") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not sync: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for url in self.url().split(',') {
            let client = test_client(url, self.tls.as_ref());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                    && let Ok(replicas) = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER_SET)
                        .query_async::<Vec<redis::Value>>(&mut conn)
                        .await
                    && !replicas.is_empty()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the sentinel at {url} did not find the master and its replica"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            let _ = sentinel.kill();
            let _ = sentinel.wait();
        }
    }
}
