//! A Redis Cluster of the test's own.

use std::process::Command;
use std::time::{Duration, Instant};

use super::RedisServer;
use crate::pki::Pki;

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
