//! Which PostgreSQL and Redis the tests use, resolved once per test binary.
//!
//! Where the servers come from, in order: `TEST_DATABASE_URL` / `TEST_REDIS_URL`, else
//! `DATABASE_URL` / `REDIS_URL` (a server where the role may create databases, and a Redis; only
//! the server is used, each test makes its own database); otherwise PostgreSQL on 127.0.0.1:5432 and Redis
//! on 127.0.0.1:6379 when they answer; otherwise containers started with testcontainers (Docker
//! needed), removed when the test binary exits. With none of these the run fails and says how to
//! provide them: a test never passes by skipping.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use testcontainers_modules::testcontainers::runners::SyncRunner;

/// The PostgreSQL and Redis the tests use, resolved once per test binary.
pub(crate) struct Servers {
    /// URL of a database on the server, with a role that may create databases.
    pub(crate) postgres: url::Url,
    pub(crate) redis: String,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();
/// Containers this binary started, removed at exit (statics are never dropped).
static CONTAINERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub(crate) fn servers() -> &'static Servers {
    // Resolved on a plain thread: testcontainers' blocking runner starts a runtime of its own,
    // which cannot happen inside a test's runtime.
    SERVERS.get_or_init(|| match std::thread::spawn(resolve_servers).join() {
        Ok(servers) => servers,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn resolve_servers() -> Servers {
    let from_env = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let postgres = from_env(["TEST_DATABASE_URL", "DATABASE_URL"]).unwrap_or_else(|| {
        if answers("127.0.0.1:5432") {
            "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned()
        } else {
            start_postgres_container()
        }
    });
    let redis = from_env(["TEST_REDIS_URL", "REDIS_URL"]).unwrap_or_else(|| {
        if answers("127.0.0.1:6379") {
            "redis://127.0.0.1:6379".to_owned()
        } else {
            start_redis_container()
        }
    });
    let postgres = url::Url::parse(&postgres)
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is not a URL ({e}): {postgres}"));
    Servers { postgres, redis }
}

fn answers(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a literal socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

const HOW_TO_PROVIDE: &str = "set TEST_DATABASE_URL and TEST_REDIS_URL (or DATABASE_URL and REDIS_URL), or run PostgreSQL on \
127.0.0.1:5432 (role postgres) and Redis on 127.0.0.1:6379, or make Docker available so \
testcontainers can start them";

fn start_postgres_container() -> String {
    use testcontainers_modules::postgres::Postgres;
    let container = Postgres::default().start().unwrap_or_else(|e| {
        panic!("no PostgreSQL for the tests: {e}. To provide one, {HOW_TO_PROVIDE}.")
    });
    let port = container
        .get_host_port_ipv4(5432)
        .expect("the container's PostgreSQL port");
    keep_until_exit(container.id());
    std::mem::forget(container);
    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
}

fn start_redis_container() -> String {
    use testcontainers_modules::redis::{REDIS_PORT, Redis};
    let container = Redis::default().start().unwrap_or_else(|e| {
        panic!("no Redis for the tests: {e}. To provide one, {HOW_TO_PROVIDE}.")
    });
    let port = container
        .get_host_port_ipv4(REDIS_PORT)
        .expect("the container's Redis port");
    keep_until_exit(container.id());
    std::mem::forget(container);
    format!("redis://127.0.0.1:{port}")
}

fn keep_until_exit(id: &str) {
    CONTAINERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id.to_owned());
}

#[dtor::dtor(unsafe)]
fn remove_containers() {
    // Runs at process exit; a panic here would abort, so none may escape.
    let _ignored = std::panic::catch_unwind(|| {
        let ids = CONTAINERS.lock().map(|ids| ids.clone()).unwrap_or_default();
        if !ids.is_empty() {
            let _status = std::process::Command::new("docker")
                .args(["rm", "--force", "--volumes"])
                .args(&ids)
                .status();
        }
    });
}

/// The address of the tests' PostgreSQL server.
pub fn postgres_addr() -> SocketAddr {
    let url = &servers().postgres;
    resolve(
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432),
    )
}

/// The address of the tests' Redis server.
pub fn redis_addr() -> SocketAddr {
    let url = url::Url::parse(&servers().redis).expect("a Redis URL");
    resolve(
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(6379),
    )
}

fn resolve(host: &str, port: u16) -> SocketAddr {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"))
}

/// `url` with its host and port replaced by 127.0.0.1:`port` (to route it through a proxy).
pub fn via_port(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_host(Some("127.0.0.1")).expect("a host");
    url.set_port(Some(port)).expect("a port");
    url.to_string()
}

pub fn redis_url() -> String {
    servers().redis.clone()
}
