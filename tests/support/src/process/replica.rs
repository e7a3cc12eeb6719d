//! The service's own binary as a separate process: `serve` behind a fixed port, or `ingest`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use super::{binary, client, free_port, signal, wait_for_exit, wait_until_ok};

/// One replica: the service's own binary serving on a fixed loopback port, so it comes back on
/// the same address after a restart, as behind a load balancer.
pub struct Replica {
    pub port: u16,
    /// `serve`, or `ingest`.
    command: &'static str,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Replica {
    /// Settings as in `docker-compose.yml`, on a database and Redis of the test's choosing.
    pub fn new(dir: &Path, database_url: &str, redis_url: &str, prefix: &str) -> Self {
        let port = free_port();
        let env = [
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis_url),
            ("CACHE_KEY_PREFIX", prefix),
            ("MIGRATE_ON_START", "false"),
            ("SHUTDOWN_DRAIN_SECS", "0"),
            ("HTTP_WORKERS", "1"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("BIND_ADDR".to_owned(), format!("127.0.0.1:{port}"))])
        .collect();
        Self {
            port,
            command: "serve",
            env,
            child: None,
            log: dir.join(format!("replica-{port}.log")),
        }
    }

    /// An ingest process (`vehicle-state ingest`) on the database, NATS server and stream of the
    /// test's choosing, its health endpoints on a port of its own.
    pub fn ingest(dir: &Path, database_url: &str, nats_url: &str, stream: &str) -> Self {
        let port = free_port();
        let env = [
            ("DATABASE_URL", database_url),
            ("NATS_URL", nats_url),
            ("INGEST_STREAM", stream),
            ("MIGRATE_ON_START", "false"),
            ("INGEST_RETRY_DELAY_MS", "200"),
            ("INGEST_ACK_WAIT_SECS", "5"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("INGEST_BIND_ADDR".to_owned(), format!("127.0.0.1:{port}"))])
        .collect();
        Self {
            port,
            command: "ingest",
            env,
            child: None,
            log: dir.join(format!("ingest-{port}.log")),
        }
    }

    /// Sets (or replaces) a setting for the next start.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts the process and waits until it serves `/livez`.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the replica's log file");
        let child = Command::new(binary())
            .arg(self.command)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("the binary starts");
        self.child = Some(child);
        let up = wait_until_ok(&format!("{}/livez", self.url()), Duration::from_secs(20)).await;
        assert!(
            up,
            "replica on {} did not start: {}",
            self.port,
            self.log_tail()
        );
    }

    /// Waits until `/readyz` says 200.
    pub async fn wait_ready(&self, within: Duration) {
        let ready = wait_until_ok(&format!("{}/readyz", self.url()), within).await;
        assert!(
            ready,
            "replica on {} never ready: {}",
            self.port,
            self.log_tail()
        );
    }

    /// SIGKILL: gone at once, mid-request.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(&child, "KILL");
        // Off the runtime's threads' schedule: the load runs on them.
        tokio::task::block_in_place(|| wait_for_exit(&mut child, Duration::from_secs(5)));
    }

    /// The lines of its log that contain `text`.
    pub fn log_lines_with(&self, text: &str) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Sends SIGTERM and leaves the process to stop by itself.
    pub fn send_sigterm(&self) {
        signal(self.child.as_ref().expect("running"), "TERM");
    }

    /// Waits for the process to exit (after [`Replica::send_sigterm`]); None if it did not
    /// within `within` (it is then killed).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || {
            let status = wait_for_exit(&mut child, within);
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            status
        })
        .await
        .expect("wait task")
    }

    /// Resident memory of the process, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid()).unwrap_or_else(|| panic!("no VmRSS for {}", self.pid()))
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of process `pid`, in KiB (Linux); None once it has exited.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The value of the series `name` (with its labels, as exposed) on a process's `/metrics`; None
/// when absent or unreadable.
pub async fn metric(process: &Replica, name: &str) -> Option<f64> {
    let text = client()
        .get(format!("{}/metrics", process.url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
