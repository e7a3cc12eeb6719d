//! The nodes of a NATS cluster of the test's own, and what JetStream says about who leads.

use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::{NatsServer, Node};
use crate::process::{free_port, wait_until_ok};

/// The nodes of one cluster, on loopback, each routed to every other.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// `size` nodes named `n1`, `n2`, ..., started; JetStream is usable once
    /// [`NatsCluster::wait_for_meta_leader`] says so.
    pub fn start(size: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster = format!("vs-{}", uuid::Uuid::new_v4().simple());
        let mut nodes: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, &cluster_port)| {
                NatsServer::new(Some(Node {
                    name: format!("n{}", i + 1),
                    cluster: cluster.clone(),
                    cluster_port,
                    routes: cluster_ports
                        .iter()
                        .copied()
                        .filter(|&p| p != cluster_port)
                        .collect(),
                    monitor_port: free_port(),
                }))
            })
            .collect();
        for node in &mut nodes {
            node.resume();
        }
        Self { nodes }
    }

    /// Every node's URL, comma-separated, as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    pub fn node(&mut self, name: &str) -> &mut NatsServer {
        self.nodes
            .iter_mut()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Waits until every running node names the same JetStream meta leader (before that,
    /// streams can be neither created nor found); returns its name.
    pub async fn wait_for_meta_leader(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                leaders.push(node.meta_leader().await);
            }
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| l.as_ref() == Some(first))
            {
                return first.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no meta leader within {within:?}: {leaders:?}\n{}",
                self.nodes[0].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `name`'s `/healthz` says 200: it has caught up with every stream and
    /// consumer it holds.
    pub async fn wait_healthy(&mut self, name: &str, within: Duration) {
        let node = self.node(name);
        let url = node.health_url().expect("a cluster node");
        let healthy = wait_until_ok(&url, within).await;
        assert!(
            healthy,
            "{name} not healthy within {within:?}\n{}",
            node.log_tail()
        );
    }
}

/// The servers that lead `stream` and its `consumer` now, as JetStream says
/// (`$JS.API.STREAM.INFO`, `$JS.API.CONSUMER.INFO`, their `cluster.leader`); None while one has
/// no leader or the answer does not come.
pub async fn leaders(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> (Option<String>, Option<String>) {
    let Ok(found) = js.get_stream(stream).await else {
        return (None, None);
    };
    let stream_leader = found
        .cached_info()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone());
    let consumer_leader = found
        .consumer_info(consumer)
        .await
        .ok()
        .and_then(|info| info.cluster)
        .and_then(|c| c.leader);
    (stream_leader, consumer_leader)
}

/// Asks `consumer`'s replicas to hand their leadership to the server named `to`
/// (`$JS.API.CONSUMER.LEADER.STEPDOWN` with a preferred server, nats-server 2.11 and later).
/// JetStream's answer when it refuses.
pub async fn move_consumer_leader(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    to: &str,
) -> Result<(), String> {
    let subject = format!("CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}");
    let request = serde_json::json!({ "placement": { "preferred": to } });
    let answer: serde_json::Value = js
        .request(subject, &request)
        .await
        .map_err(|e| e.to_string())?;
    match answer.get("success") {
        Some(serde_json::Value::Bool(true)) => Ok(()),
        _ => Err(answer.to_string()),
    }
}
