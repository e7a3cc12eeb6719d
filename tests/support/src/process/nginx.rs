//! nginx in front of the replicas, as `docker-compose.yml` runs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for_exit, wait_until_ok};

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
    let committed = include_str!("../../../../deploy/nginx.conf");
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
        "deploy/nginx.conf changed shape: update nginx_conf in tests/support/src/process/nginx.rs"
    );
    out
}
