//! PostgreSQL servers of the test's own, which a test may stop, start again and replicate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Place, TempDir, free_port};

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

/// Where initdb and pg_ctl are: on PATH, or Debian's `/usr/lib/postgresql/<version>/bin`.
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
