//! Real processes the fault, network, ingest and traces suites start: replicas of the service's
//! binary, nginx, and private Redis, PostgreSQL and NATS servers. Each is stopped (killed if it
//! must be) when dropped.

mod nginx;
mod place;
mod postgres;
mod replica;

pub mod nats;
pub mod redis;

pub use nginx::Nginx;
pub use place::Place;
pub use postgres::PgServer;
pub use replica::{Replica, metric, rss_kib_of};

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use crate::http::client_builder;
use crate::scratch::Scratch;

/// The repository's root directory (this crate is `tests/support` in it).
pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support is two levels below the repository's root")
}

/// The service's binary, as cargo built it for the test binary running now. Cargo names it to
/// integration tests at compile time only (`CARGO_BIN_EXE_vehicle-state`, which this library
/// does not see) and builds it before them, into the directory above the test binary's `deps/`.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_vehicle-state") {
            return PathBuf::from(path);
        }
        let test = std::env::current_exe().expect("the test binary's path");
        let mut dir = test.parent().expect("the test binary's directory");
        if dir.ends_with("deps") {
            dir = dir.parent().expect("the profile's directory");
        }
        let binary = dir.join(format!("vehicle-state{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.exists(),
            "no service binary at {}: run the tests with cargo test, which builds it",
            binary.display()
        );
        binary
    })
}

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
    client_builder()
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

pub(crate) fn wait_for_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
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

pub(crate) fn signal(child: &Child, name: &str) {
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
    let output = Command::new(binary())
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
    let output = Command::new(binary())
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
