//! A Redis master and replica watched by sentinels of the test's own.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{RedisServer, test_client, tls_args};
use crate::pki::Pki;
use crate::process::{Place, TempDir, free_port};

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
