#!/usr/bin/env python3
"""Hostile clients and quotas against real replicas: what `bench/attacks` runs and prints.

Each attack is what a client sent when the service was tried as an attacker would (issue 32's
table), for a few seconds, while a well-behaved client asks one lookup after another; printed:
the replica's peak resident memory and that client's p99. Then the quotas: one client over its
budget beside another, two replicas sharing one budget, and hot requests a second with quotas,
API keys and access tokens on against off. ATTACKS_PARTS (attacks,quotas,hot) picks the parts.
Loopback only; every loop is bounded in time.
"""

import asyncio
import json
import os
import random
import subprocess
import sys
import time

BIN = os.environ["BIN"]
DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
SECONDS = float(os.environ.get("ATTACK_SECONDS", "8"))
LOOKUP = b"GET /vehicles/2/timestamp/2022-09-12T10:00:00Z HTTP/1.1\r\nhost: x\r\n\r\n"


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(self, **env):
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": DATABASE_URL,
            "REDIS_URL": REDIS_URL,
            "CACHE_KEY_PREFIX": env.pop("prefix", f"bench-attacks-{self.port}"),
            "MIGRATE_ON_START": "false",
            "BIND_ADDR": f"127.0.0.1:{self.port}",
            "HTTP_WORKERS": "2",
            "RUST_LOG": "error",
            "LOG_FORMAT": "json",
            **{k: str(v) for k, v in env.items()},
        }

    def __enter__(self):
        self.proc = subprocess.Popen([BIN, "serve"], env=self.env, stdout=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                return self
            except Exception:
                time.sleep(0.1)
        raise SystemExit("the replica did not start")

    def __exit__(self, *_):
        self.proc.kill()
        self.proc.wait()

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


async def read_response(reader):
    """One HTTP/1.1 response with Content-Length; returns (status, headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def normal_client(port, stop, latencies, request=LOOKUP, statuses=None, pause=0.02):
    """Asks one request after another on a keep-alive connection, reconnecting if closed."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while not stop.is_set():
                started = time.perf_counter()
                writer.write(request)
                status, _, _ = await asyncio.wait_for(read_response(reader), 10)
                latencies.append(time.perf_counter() - started)
                if statuses is not None:
                    statuses.append(status)
                if pause:
                    await asyncio.sleep(pause)
            writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            await asyncio.sleep(0.01)


def p99(latencies):
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1000


async def watch(replica, stop, peak):
    while not stop.is_set():
        peak[0] = max(peak[0], replica.rss_mb())
        await asyncio.sleep(0.05)


def batch_body(seed):
    lookups = [
        {"id": 1 + (seed + i) % 3, "timestamp": str(1662976800 + (seed * 100 + i) % 86400)}
        for i in range(100)
    ]
    return json.dumps({"lookups": lookups}).encode()


async def brotli_batches(port, stop):
    async def one(n):
        seed = n * 100000
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                while not stop.is_set():
                    seed += 1
                    body = batch_body(seed)
                    writer.write(
                        b"POST /vehicles/states HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                        b"accept-encoding: br\r\ncontent-length: %d\r\n\r\n" % len(body) + body
                    )
                    await read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one(n) for n in range(200)))


async def pipelining(port, stop):
    requests = LOOKUP * 64

    async def one():
        while not stop.is_set():
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                while not stop.is_set():
                    writer.write(requests)
                    try:
                        await asyncio.wait_for(writer.drain(), 0.2)
                    except asyncio.TimeoutError:
                        pass
                    if writer.transport.get_write_buffer_size() > 1 << 20:
                        await asyncio.sleep(0.05)
            except OSError:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(100)))


async def endless_bodies(port, stop, closed_after):
    head = (
        b"POST /vehicles/states HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 60000\r\n\r\n{"
    )

    async def one():
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                started = time.perf_counter()
                while not stop.is_set():
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 0.1)
                        if not data:
                            closed_after.append(time.perf_counter() - started)
                            break
                    except asyncio.TimeoutError:
                        writer.write(b" ")
                writer.close()
            except OSError:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(50)))


async def run_attack(name, attack, env, extra=None):
    with Replica(**env) as replica:
        before = replica.rss_mb()
        stop = asyncio.Event()
        peak, latencies = [0.0], []
        tasks = [
            asyncio.create_task(watch(replica, stop, peak)),
            asyncio.create_task(attack(replica.port, stop)),
            asyncio.create_task(normal_client(replica.port, stop, latencies)),
        ]
        await asyncio.sleep(SECONDS)
        stop.set()
        await asyncio.wait(tasks, timeout=15)
        print(
            f"{name:<58} RSS {before:6.1f} MB before, peak {peak[0]:7.1f} MB;"
            f" normal lookup p99 {p99(latencies):7.1f} ms ({len(latencies)} answered){extra() if extra else ''}"
        )
        return peak[0], p99(latencies)


async def quotas():
    rps, burst = 20, 40
    quota = {"RATE_LIMIT_RPS": rps, "RATE_LIMIT_BURST": burst, "TRUSTED_PROXIES": "127.0.0.1"}
    as_client = lambda ip: LOOKUP.replace(b"\r\n\r\n", f"\r\nx-forwarded-for: {ip}\r\n\r\n".encode())

    # One client far over its budget beside another well within it: the other's p99 against a
    # run without the first.
    prefix = f"bench-attacks-quota-{random.randrange(1 << 30)}"
    with Replica(prefix=prefix + "-a", **quota) as replica:
        for label, with_abuser in (("alone", False), ("beside a client over its budget", True)):
            stop = asyncio.Event()
            latencies, statuses, abuse = [], [], []
            tasks = [
                asyncio.create_task(
                    normal_client(replica.port, stop, latencies, as_client(f"198.51.100.{2 + with_abuser}"), None, 0.1)
                )
            ]
            if with_abuser:
                tasks += [
                    asyncio.create_task(normal_client(replica.port, stop, [], as_client("198.51.100.1"), abuse, 0))
                    for _ in range(32)
                ]
            await asyncio.sleep(SECONDS)
            stop.set()
            await asyncio.wait(tasks, timeout=15)
            if with_abuser:
                limited = sum(1 for s in abuse if s == 429)
                print(
                    f"quota {rps}/s burst {burst}: a client over its budget got {limited} 429s of {len(abuse)};"
                    f" another client's p99 {p99(latencies):.2f} ms (alone {alone:.2f} ms, {p99(latencies) / alone:.2f}x)"
                )
            else:
                alone = p99(latencies)

    # Two replicas, one client asking both as fast as it can: what they let through together.
    with Replica(prefix=prefix + "-b", **quota) as first, Replica(prefix=prefix + "-b", **quota) as second:
        stop = asyncio.Event()
        statuses = []
        tasks = [
            asyncio.create_task(normal_client(r.port, stop, [], as_client("198.51.100.9"), statuses, 0))
            for r in (first, second)
            for _ in range(16)
        ]
        started = time.perf_counter()
        await asyncio.sleep(SECONDS)
        stop.set()
        await asyncio.wait(tasks, timeout=15)
        elapsed = time.perf_counter() - started
        allowed = sum(1 for s in statuses if s == 200)
        budget = rps * elapsed + burst
        print(
            f"two replicas, one client for {elapsed:.1f} s: {allowed} allowed of {len(statuses)}"
            f" (budget {rps}/s x {elapsed:.1f} s + burst {burst} = {budget:.0f})"
        )


class TokenProvider:
    """An identity provider for the token runs: an RSA key made by openssl, its key set served
    over HTTP on loopback, and RS256 tokens signed with it (openssl's PKCS#1 v1.5 signature is
    the JWS one)."""

    def __init__(self):
        import base64
        import http.server
        import tempfile
        import threading

        self.dir = tempfile.mkdtemp(prefix="bench-idp-")
        self.key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.key], check=True, capture_output=True)
        modulus = subprocess.run(["openssl", "rsa", "-in", self.key, "-noout", "-modulus"], check=True, capture_output=True, text=True).stdout
        n = bytes.fromhex(modulus.strip().split("=", 1)[1])
        self.b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        jwks = json.dumps({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": self.b64(n), "e": self.b64(b"\x01\x00\x01")}]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(jwks)))
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.env = {
            "AUTH_JWKS_URL": f"http://127.0.0.1:{self.server.server_address[1]}/jwks",
            "AUTH_ISSUER": "https://idp.bench.invalid/",
            "AUTH_AUDIENCE": "vehicle-state",
        }

    def token(self, sub="bench"):
        header = self.b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
        now = int(time.time())
        claims = self.b64(json.dumps({"iss": self.env["AUTH_ISSUER"], "aud": "vehicle-state", "sub": sub, "iat": now, "exp": now + 3600}).encode())
        signing_input = f"{header}.{claims}".encode()
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=signing_input, check=True, capture_output=True).stdout
        return f"{header}.{claims}.{self.b64(signature)}"

    def close(self):
        import shutil

        self.server.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk_hot(port, seconds=8, headers=()):
    """Hot lookups (one pair, memory hits) with wrk, 64 connections: requests a second."""
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", *extra, f"http://127.0.0.1:{port}/vehicles/2/timestamp/2022-09-12T10:00:00Z"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise SystemExit(out)


async def main():
    parts = os.environ.get("ATTACKS_PARTS", "attacks,quotas,hot").split(",")
    print(f"one replica, 2 workers, {SECONDS:.0f} s an attack ({BIN})")
    if "attacks" in parts:
        await run_attack("200 connections posting 100-lookup batches, br", brotli_batches, {})
        await run_attack("100 connections pipelining GETs, never reading", pipelining, {})
        closed = []
        await run_attack(
            "50 bodies that never end, HTTP_MAX_CONNECTIONS=25 a worker",
            lambda port, stop: endless_bodies(port, stop, closed),
            {"HTTP_MAX_CONNECTIONS": 25},
            lambda: f"; connections closed {min(closed, default=0):.2f} to {max(closed, default=0):.2f} s after the head (body timeout 5 s)",
        )
    if "quotas" in parts:
        await quotas()
    if "hot" not in parts:
        return
    import hashlib
    import tempfile

    key = os.urandom(16).hex()
    keys = tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False)
    keys.write(f"bench {hashlib.sha256(key.encode()).hexdigest()}\n")
    keys.close()
    idp = TokenProvider()
    bearer = f"Authorization: Bearer {idp.token()}"
    quota = {"RATE_LIMIT_RPS": 1000000, "RATE_LIMIT_BURST": 1000000}
    # A token is a 600-byte header where a key is 40 bytes: the token runs are compared with
    # "both off" sent the same header (ignored), so the ratio is the replica's work, not the
    # bytes wrk writes and the kernel copies on these same two cores.
    runs = (
        ("both off", {}, (), None),
        ("quotas on (a budget no one reaches)", quota, (), "both off"),
        ("API keys and quotas on", {**quota, "AUTH_API_KEYS_FILE": keys.name}, (f"X-API-Key: {key}",), "both off"),
        ("both off, a token's Authorization header sent (ignored)", {}, (bearer,), None),
        ("RS256 access tokens and quotas on", {**quota, **idp.env}, (bearer,), "both off, a token's Authorization header sent (ignored)"),
        ("RS256 access tokens, each checked (AUTH_TOKEN_CACHE_SIZE=0), quotas on", {**quota, **idp.env, "AUTH_TOKEN_CACHE_SIZE": 0}, (bearer,), "both off, a token's Authorization header sent (ignored)"),
    )
    # wrk shares the two cores with the replica, so one 8-second run varies by +-15 %: the runs
    # are interleaved ATTACKS_HOT_ROUNDS times (3) and each label's median printed.
    # The replica's own CPU time per request varies less: printed beside, with its ratio.
    rounds = int(os.environ.get("ATTACKS_HOT_ROUNDS", "3"))
    samples = {label: [] for label, *_ in runs}
    cpu = {label: [] for label, *_ in runs}
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    for _ in range(rounds):
        for label, env, headers, _against in runs:
            with Replica(**env) as replica:
                wrk_hot(replica.port, 2, headers)
                before = cpu_seconds(replica.proc.pid)
                rate = wrk_hot(replica.port, 8, headers)
                samples[label].append(rate)
                cpu[label].append((cpu_seconds(replica.proc.pid) - before) / (rate * 8) * 1e6)
    median = lambda values: sorted(values)[len(values) // 2]
    rates = {label: median(values) for label, values in samples.items()}
    costs = {label: median(values) for label, values in cpu.items()}
    for label, _env, _headers, against in runs:
        rate, cost = rates[label], costs[label]
        spread = f"{min(samples[label]):,.0f} to {max(samples[label]):,.0f}"
        line = f"hot lookups, 64 connections, {label}: {rate:,.0f} req/s (median of {rounds}: {spread}), {cost:.1f} µs CPU a request"
        if against is not None:
            line += f"; {rate / rates[against]:.2f}x the req/s and {cost / costs[against]:.2f}x the CPU of {against}"
        print(line)
    idp.close()
    os.unlink(keys.name)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
