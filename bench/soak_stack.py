"""bench/soak's processes: a private PostgreSQL, Redis and nats-server, the replicas, ingest and
nginx, each started in a session of its own (so Ctrl-C reaches only the driver and wrk, and the
stop is in order) and in WORK (its working directory, by which bench/soak's trap finds whatever
is left of this run); and what is read from them while they run (RSS, descriptors, the consumer's
lag, counters).
Standard library only."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ENV = os.environ
WORK = pathlib.Path(ENV["SOAK_WORK"])
BIN = ENV["SOAK_BIN"]
NATS_BIN = ENV["SOAK_NATS_BIN"]
PG_BINDIR = pathlib.Path(ENV["SOAK_PG_BINDIR"])
NGINX_BIN = ENV["SOAK_NGINX_BIN"]
NGINX_CONF = pathlib.Path(ENV["SOAK_NGINX_CONF"])
SOAK_DB = "vs_soak"
AS_ROOT = os.geteuid() == 0
SINGLES = ["replica1", "replica2", "replica3", "ingest", "redis", "nats"]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_until(what, check, within, every=0.1):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(every)
    raise RuntimeError(f"{what} within {within:.0f} s")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def http_ok(url):
    try:
        return http_get(url)[0] == 200
    except (OSError, ValueError):
        return False


class Stack:
    """The processes of one run, by name, and their ports."""

    def __init__(self, run_seconds):
        self.run_seconds = run_seconds
        self.procs = {}
        self.ports = dict(zip(
            ["pg", "redis", "nats", "nats_monitor", "replica1", "replica2", "replica3", "ingest", "nginx"],
            free_ports(9)))
        self.pg_data = WORK / "pg" / "data"

    def spawn(self, name, argv, env):
        out = open(WORK / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=WORK, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def stop(self, name, sig=signal.SIGTERM, within=20.0):
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(within)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass

    # PostgreSQL: initdb and pg_ctl, as `postgres` when this runs as root (it refuses root).
    def pg_program(self, program, *args, timeout=120):
        argv = [str(PG_BINDIR / program), *args]
        if AS_ROOT:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        with open(WORK / "pg_ctl.log", "ab") as out:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=WORK, timeout=timeout, start_new_session=True)
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: see {WORK}/pg_ctl.log\n"
                               + (WORK / "pg_ctl.log").read_text()[-2000:])

    def pg_init(self):
        (WORK / "pg").mkdir()
        if AS_ROOT:
            subprocess.run(["chown", "-R", "postgres:postgres", str(WORK / "pg")], check=True)
        self.pg_program("initdb", "-D", str(self.pg_data), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8")

    def pg_start(self):
        options = (f"-p {self.ports['pg']} -c listen_addresses=127.0.0.1 -k {self.pg_data} "
                   "-c fsync=off -c max_connections=100")
        self.pg_program("pg_ctl", "-D", str(self.pg_data), "-l", str(WORK / "pg" / "server.log"),
                        "-o", options, "-w", "-t", "60", "start")

    def pg_stop(self, mode="fast"):
        if (self.pg_data / "postmaster.pid").exists():
            self.pg_program("pg_ctl", "-D", str(self.pg_data), "-m", mode, "-w", "-t", "60", "stop")

    def pg_url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.ports['pg']}/{db}"

    def psql(self, db, sql, timeout=600):
        result = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.ports["pg"]), "-U", "postgres", "-d", db, "-f", "-"],
            input=sql, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"psql on {db}: {result.stderr.strip()}")
        return result.stdout.strip()

    def redis_start(self):
        (WORK / "redis").mkdir(exist_ok=True)
        self.spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.ports["redis"]),
                             "--save", "", "--appendonly", "no", "--dir", str(WORK / "redis")], dict(ENV))
        wait_until("Redis answers PING", self.redis_up, 10)

    def redis_up(self):
        return self.redis_command(b"PING") == b"+PONG"

    def redis_command(self, command):
        """One inline command's one-line reply (`+PONG`, `:42`)."""
        with socket.create_connection(("127.0.0.1", self.ports["redis"]), timeout=1) as s:
            s.sendall(command + b"\r\n")
            return s.recv(64).split(b"\r\n", 1)[0]

    def redis_keys(self):
        try:
            return int(self.redis_command(b"DBSIZE")[1:])
        except (OSError, ValueError):
            return None

    def nats_start(self):
        self.spawn("nats", [NATS_BIN, "-js", "-a", "127.0.0.1", "-p", str(self.ports["nats"]),
                            "-m", str(self.ports["nats_monitor"]), "-sd", str(WORK / "nats")], dict(ENV))
        wait_until("nats-server is ready", lambda: http_ok(self.nats_monitor("/healthz?js-enabled-only=true")), 20)

    def nats_monitor(self, path):
        return f"http://127.0.0.1:{self.ports['nats_monitor']}{path}"

    def binary_env(self, **settings):
        env = {"PATH": ENV.get("PATH", "/usr/bin:/bin"), "LOG_FORMAT": "json", "RUST_LOG": "warn"}
        env.update({k: str(v) for k, v in settings.items()})
        return env

    def run_binary(self, args, timeout=600, log_name=None, **settings):
        result = subprocess.run([BIN, *args], env=self.binary_env(**settings), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        if log_name:
            with open(WORK / f"{log_name}.log", "a") as f:
                f.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"vehicle-state {' '.join(args)}: {result.stdout[-1000:]}{result.stderr[-1000:]}")
        return result.stdout

    def replica_start(self, name):
        port = self.ports[name]
        self.spawn(name, [BIN, "serve"], self.binary_env(
            DATABASE_URL=self.pg_url(SOAK_DB), REDIS_URL=f"redis://127.0.0.1:{self.ports['redis']}",
            CACHE_KEY_PREFIX="vs-soak", MIGRATE_ON_START="false", SHUTDOWN_DRAIN_SECS=0, HTTP_WORKERS=1,
            BIND_ADDR=f"127.0.0.1:{port}"))
        wait_until(f"{name} is ready", lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 30)

    def ingest_env(self):
        # JetStream drops a publish whose Nats-Msg-Id it saw within the window: the publisher sends
        # the growing prefix of the same events again and again (see publisher), and only the new
        # ones are stored. The window outlasts the run.
        return dict(NATS_URL=f"nats://127.0.0.1:{self.ports['nats']}",
                    INGEST_DUPLICATE_WINDOW_SECS=min(604800, int(self.run_seconds) + 3600))

    def ingest_start(self):
        port = self.ports["ingest"]
        self.spawn("ingest", [BIN, "ingest"], self.binary_env(
            DATABASE_URL=self.pg_url(SOAK_DB), MIGRATE_ON_START="false",
            INGEST_BIND_ADDR=f"127.0.0.1:{port}", **self.ingest_env()))
        wait_until("ingest is ready", lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 30)

    def nginx_start(self):
        directory = WORK / "nginx"
        directory.mkdir()
        (directory / "nginx.conf").write_text(nginx_conf(directory, self.ports["nginx"],
                                                         [self.ports[f"replica{i}"] for i in (1, 2, 3)]))
        self.spawn("nginx", [NGINX_BIN, "-p", f"{directory}/", "-c", "nginx.conf", "-e", "error.log",
                             "-g", "daemon off;"], dict(ENV))
        wait_until("nginx answers", lambda: http_ok(f"http://127.0.0.1:{self.ports['nginx']}/nginx-health"), 10)

    def stop_all(self):
        for name in ["nginx", "replica1", "replica2", "replica3", "ingest", "nats", "redis"]:
            try:
                self.stop(name)
            except Exception as e:  # keep stopping the others
                log(f"stopping {name}: {e}")
        try:
            self.pg_stop()
        except Exception as e:
            log(f"stopping PostgreSQL: {e}")
            try:
                self.pg_stop("immediate")
            except Exception:
                pass


def nginx_conf(directory, port, upstreams):
    """deploy/nginx.conf with what only works in Docker replaced, as
    tests/support/src/process/nginx.rs does: the replicas' loopback ports for Docker's DNS name (no
    `resolve`), a listen port of ours, files under our directory. Retries and timeouts are the
    committed file's."""
    out = [f"pid {directory}/nginx.pid;", f"error_log {directory}/error.log warn;"]
    replaced = set()
    for line in NGINX_CONF.read_text().splitlines():
        trimmed = line.strip()
        if trimmed.startswith("resolver "):
            replaced.add("resolver")
            continue
        if trimmed.startswith("server app:8080 "):
            params = trimmed[len("server app:8080 "):].rstrip(";").replace("resolve", "")
            out += [f"        server 127.0.0.1:{u} {params};" for u in upstreams]
            replaced.add("server")
            continue
        if trimmed == "listen 8080;":
            out.append(f"        listen 127.0.0.1:{port};")
            replaced.add("listen")
            continue
        out.append(line)
        if trimmed == "http {":
            out += [f"    client_body_temp_path {directory}/body;", f"    proxy_temp_path {directory}/proxy;"]
    if replaced != {"resolver", "server", "listen"}:
        raise RuntimeError("deploy/nginx.conf changed shape: update nginx_conf in bench/soak.py "
                           "(as in tests/support/src/process/nginx.rs)")
    return "\n".join(out) + "\n"


def children_of(parents):
    """Every process whose parent is in `parents` (one level: postmaster's backends, nginx's workers)."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        if ppid in parents:
            found.append(int(stat.parent.name))
    return found


def memory_kb(pid, field):
    path = f"/proc/{pid}/smaps_rollup" if field == "Pss:" else f"/proc/{pid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_figures(stack):
    """RSS (MB) and open descriptors of each process; for nginx (master and workers) and
    PostgreSQL (postmaster and its backends) summed, with PSS in place of RSS so memory shared
    between them counts once. None for a process that is not running."""
    figures = {}
    singles = {name: stack.procs.get(name) for name in SINGLES}
    for name, proc in singles.items():
        try:
            if proc is None or proc.poll() is not None:
                raise OSError
            figures[name] = {"rss_mb": memory_kb(proc.pid, "VmRSS:") / 1024, "fds": fds(proc.pid), "processes": 1}
        except OSError:
            figures[name] = None
    groups = {}
    nginx = stack.procs.get("nginx")
    if nginx is not None and nginx.poll() is None:
        groups["nginx"] = nginx.pid
    try:
        groups["postgres"] = int((stack.pg_data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for name in ["nginx", "postgres"]:
        figures[name] = None
        if name not in groups:
            continue
        pids = [groups[name], *children_of({groups[name]})]
        pss = n = count = 0
        for pid in pids:
            try:
                pss += memory_kb(pid, "Pss:")
                n += fds(pid)
                count += 1
            except OSError:
                pass
        if count:
            figures[name] = {"rss_mb": pss / 1024, "fds": n, "processes": count}
    return figures


def consumer_lag(stack):
    """(pending, ack_pending) of the ingest consumer, from nats-server's monitoring port: events
    not yet delivered, and delivered but not yet acked. None when it cannot say."""
    try:
        _, body = http_get(stack.nats_monitor("/jsz?accounts=true&streams=true&consumers=true"))
    except (OSError, ValueError):
        return None
    for account in json.loads(body).get("account_details", []):
        for stream in account.get("stream_detail", []):
            for consumer in stream.get("consumer_detail", []) or []:
                return consumer.get("num_pending", 0), consumer.get("num_ack_pending", 0)
    return None


def ingest_events(stack):
    """vehicle_state_ingest_events_total by result, from ingest's /metrics."""
    try:
        _, text = http_get(f"http://127.0.0.1:{stack.ports['ingest']}/metrics")
    except (OSError, ValueError):
        return None
    totals = {}
    for line in text.splitlines():
        if line.startswith("vehicle_state_ingest_events_total{"):
            labels, value = line.rsplit(" ", 1)
            result = labels.split('result="', 1)[1].split('"', 1)[0]
            totals[result] = totals.get(result, 0) + int(float(value))
    return totals




def replica_counters(stack):
    """Counters summed over the replicas' /metrics: lookups by result, Redis errors by kind,
    PostgreSQL errors by kind (series missing from a replica that does not answer)."""
    series = {"vehicle_state_lookups_total{": "lookups", "vehicle_state_redis_errors_total{": "redis_errors",
              "vehicle_state_db_errors_total{": "db_errors"}
    totals = {name: {} for name in series.values()}
    for i in (1, 2, 3):
        try:
            _, text = http_get(f"http://127.0.0.1:{stack.ports[f'replica{i}']}/metrics")
        except (OSError, ValueError):
            continue
        for line in text.splitlines():
            for prefix, name in series.items():
                if line.startswith(prefix):
                    labels, value = line.rsplit(" ", 1)
                    label = "result" if name == "lookups" else "kind"
                    key = labels.split(f'{label}="', 1)[1].split('"', 1)[0]
                    totals[name][key] = totals[name].get(key, 0) + int(float(value))
    return totals
