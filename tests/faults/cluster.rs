//! Real processes for the fault tests: replicas of the service's binary, nginx, and private
//! Redis and PostgreSQL servers. Each is stopped (killed if it must be) when dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::Scratch;

/// Tests in this binary take turns: each loads the machine, and timings from two at once would
/// say nothing.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub async fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Runs a test's scenario with a deadline: past it the test fails, and dropping the scenario
/// stops every process it started.
pub async fn bounded(scenario: impl Future<Output = ()>) {
    const DEADLINE: Duration = Duration::from_secs(120);
    if tokio::time::timeout(DEADLINE, scenario).await.is_err() {
        panic!("the scenario did not finish within {DEADLINE:?}");
    }
}

/// An HTTP client whose every request gives up after 10 s.
pub fn client() -> reqwest::Client {
    crate::helpers::client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// A port nothing listens on now (the OS's pick; free until someone else takes it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A directory of the test's own, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vs-faults-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn wait_for_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {}", child.id());
}

/// Polls `url` until it answers 200, for at most `within`.
pub async fn wait_until_ok(url: &str, within: Duration) -> bool {
    let client = client();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let answered = client
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        if answered.is_ok_and(|r| r.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

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
    /// test's choosing, its health endpoints on a port of its own. (For the `ingest` suite.)
    #[allow(dead_code)]
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
        let child = Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
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
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for {}", self.pid()))
    }

    /// Everything it has logged so far. (For the `traces` suite.)
    #[allow(dead_code)]
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

/// The value of the series `name` (with its labels, as exposed) on a process's `/metrics`; None
/// when absent or unreadable. (For the `ingest` and `traces` suites.)
#[allow(dead_code)]
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

/// A database of the test's own on the shared server, migrated and seeded with the sample data
/// by the binary itself, and a Redis key prefix of its own; both removed when dropped.
pub fn sample_database() -> Scratch {
    let scratch = Scratch::new();
    run_binary(
        &["seed", "sample"],
        &[("DATABASE_URL", &scratch.database_url)],
    );
    scratch
}

/// Runs `statements` on the database at `url`, to arrange a fault.
pub async fn execute(url: &str, statements: &[&'static str]) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    for statement in statements {
        sqlx::Executor::execute(&mut conn, *statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Runs the service's binary, expecting it to fail; returns its exit code and what it wrote to
/// standard error (standard output, its logs, is left out).
pub fn run_binary_failing(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json")
        .output()
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the service's binary once (e.g. `seed sample`) and asserts it succeeded.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) {
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "vehicle-state {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// nginx from the machine's package, configured from `deploy/nginx.conf` (what
/// `docker-compose.yml` runs) with the replicas' loopback ports in place of Docker's DNS name.
pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    pub async fn start(dir: &Path, upstreams: &[u16]) -> Self {
        let binary = [
            "/usr/sbin/nginx",
            "/usr/local/sbin/nginx",
            "/usr/local/nginx/sbin/nginx",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("nginx is not installed: install Debian's nginx-light (.ci/run does)")
        });
        let port = free_port();
        let dir = dir.join(format!("nginx-{port}"));
        fs::create_dir_all(&dir).expect("nginx's directory");
        let conf = nginx_conf(&dir, port, upstreams);
        fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        let prefix = format!("{}/", dir.display());
        let child = Command::new(binary)
            .args(["-p", &prefix, "-c", "nginx.conf", "-e", "error.log"])
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let nginx = Self { port, child, dir };
        let up = wait_until_ok(
            &format!("{}/nginx-health", nginx.url()),
            Duration::from_secs(10),
        )
        .await;
        assert!(up, "nginx did not start: {}", nginx.error_log());
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, which stops its workers; SIGKILL would leave them running,
        // orphaned, still holding the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if wait_for_exit(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `deploy/nginx.conf` with what only works in Docker replaced: the replicas' ports instead of a
/// name resolved by Docker's DNS (and no `resolve`, which Debian's nginx 1.22 lacks), a listen
/// port of the test's, and files under the test's directory. Everything else, retries and
/// timeouts included, is the committed file's, so a change there is tested here.
fn nginx_conf(dir: &Path, port: u16, upstreams: &[u16]) -> String {
    let committed = include_str!("../../deploy/nginx.conf");
    let mut out = String::new();
    out.push_str(&format!(
        "pid {0}/nginx.pid;\nerror_log {0}/error.log warn;\n",
        dir.display()
    ));
    let mut replaced = (false, false, false);
    for line in committed.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("resolver ") {
            replaced.0 = true;
            continue;
        }
        if let Some(params) = trimmed.strip_prefix("server app:8080 ") {
            let params = params.trim_end_matches(';').replace("resolve", "");
            for upstream in upstreams {
                out.push_str(&format!("        server 127.0.0.1:{upstream} {params};\n"));
            }
            replaced.1 = true;
            continue;
        }
        if trimmed == "listen 8080;" {
            out.push_str(&format!("        listen 127.0.0.1:{port};\n"));
            replaced.2 = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if trimmed == "http {" {
            for (directive, sub) in [
                ("client_body_temp_path", "body"),
                ("proxy_temp_path", "proxy"),
            ] {
                out.push_str(&format!("    {directive} {}/{sub};\n", dir.display()));
            }
        }
    }
    assert_eq!(
        replaced,
        (true, true, true),
        "deploy/nginx.conf changed shape: update nginx_conf in tests/faults/cluster.rs"
    );
    out
}

/// Where a server of the test's own runs: on loopback, or on a test host of its own (a network
/// namespace, `tests/network/`), whose programs start through a wrapper (`ip netns exec NAME`).
#[derive(Debug, Clone)]
pub struct Place {
    /// The address it listens on, and clients use.
    pub ip: String,
    wrapper: Vec<String>,
}

impl Place {
    pub fn loopback() -> Self {
        Self {
            ip: "127.0.0.1".to_owned(),
            wrapper: Vec::new(),
        }
    }

    /// At `ip`, its programs started as `wrapper program args...`.
    #[allow(dead_code)]
    pub fn wrapped(ip: String, wrapper: Vec<String>) -> Self {
        Self { ip, wrapper }
    }

    /// `program`, to run there.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.wrapper.split_first() {
            None => Command::new(program),
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
        }
    }
}

/// A PostgreSQL cluster of the test's own (initdb, pg_ctl), on a spare port, trust auth, which
/// the test may stop and start again. As root, its programs run as the `postgres` user.
pub struct PgServer {
    pub port: u16,
    place: Place,
    bin: PathBuf,
    data: PathBuf,
    /// PostgreSQL refuses to run as root: its programs then run as `postgres`.
    as_root: bool,
    _dir: TempDir,
}

impl PgServer {
    pub fn start() -> Self {
        Self::start_at(Place::loopback())
    }

    /// [`PgServer::start`], listening at `place`.
    pub fn start_at(place: Place) -> Self {
        let server = Self::init_at(place);
        server.resume();
        server
    }

    /// A new cluster (initdb), not started: configure it, then [`PgServer::resume`].
    pub fn init() -> Self {
        Self::init_at(Place::loopback())
    }

    fn init_at(place: Place) -> Self {
        let elsewhere = place.ip != "127.0.0.1";
        let server = Self::empty("pg", place);
        server.run(
            "initdb",
            &[
                "-D",
                &server.data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        if elsewhere {
            // initdb trusts loopback only; the test host's clients come over its link.
            let path = server.data.join("pg_hba.conf");
            let mut hba = fs::read_to_string(&path).expect("pg_hba.conf");
            hba.push_str("host all all 0.0.0.0/0 trust\n");
            fs::write(&path, hba).expect("write pg_hba.conf");
        }
        server
    }

    /// A streaming standby of `primary` (a base backup with `-R`, which writes the
    /// `primary_conninfo` and `standby.signal`), on a port of its own, started.
    pub fn standby_of(primary: &PgServer) -> Self {
        let server = Self::empty("pg-standby", Place::loopback());
        server.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &server.data.display().to_string(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        server.resume();
        server
    }

    /// A directory for a cluster that does not exist yet, and a port.
    fn empty(what: &str, place: Place) -> Self {
        let bin = pg_bindir();
        let dir = TempDir::new(what);
        let data = dir.0.join("data");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        Self {
            port: free_port(),
            place,
            bin,
            as_root,
            data,
            _dir: dir,
        }
    }

    /// Appends settings to `postgresql.conf`; they count from the next start.
    pub fn configure(&self, lines: &str) {
        let path = self.data.join("postgresql.conf");
        let mut conf = fs::read_to_string(&path).expect("postgresql.conf");
        conf.push_str(lines);
        fs::write(&path, conf).expect("write postgresql.conf");
    }

    /// Replaces `pg_hba.conf` (local socket connections, which pg_ctl uses, stay trusted).
    pub fn hba(&self, rules: &str) {
        fs::write(
            self.data.join("pg_hba.conf"),
            format!("local all all trust\n{rules}"),
        )
        .expect("write pg_hba.conf");
    }

    /// Copies a file (a certificate or key) into the data directory, readable by the server
    /// alone; returns its new path.
    pub fn install(&self, file: &Path) -> PathBuf {
        let target = self.data.join(file.file_name().expect("a file name"));
        fs::copy(file, &target).expect("copy into the data directory");
        if self.as_root {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&target)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        target
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@{}:{}/{database}",
            self.place.ip, self.port
        )
    }

    /// Starts (again) and waits until it accepts connections. Blocks: call it off the runtime's
    /// schedule ([`tokio::task::block_in_place`]) while load runs.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses={} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.place.ip,
            self.data.display()
        );
        let log = self.data.join("server.log").display().to_string();
        let data = self.data.display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    /// Stops it as an operator would (fast shutdown: sessions are told and closed).
    pub fn stop(&self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    /// One of PostgreSQL's programs, as the user it must run as.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_root {
            let mut command = self.place.command("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            self.place.command(&program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// Where initdb and pg_ctl are: on PATH, or Debian's /usr/lib/postgresql/<version>/bin.
fn pg_bindir() -> PathBuf {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL's server programs (initdb, pg_ctl) are installed")
}
