#!/usr/bin/env python3
"""bench/soak's driver: bench/soak builds, installs what is missing and calls this with its
settings in the environment (see the top of bench/soak). Standard library only.

It starts a private PostgreSQL, Redis and nats-server, three `serve` replicas behind nginx (from
deploy/nginx.conf) and `ingest`; loads the read set; runs one wrk (bench/soak.lua) per minute
while a publisher sends events and the faults thread restarts Redis and then PostgreSQL; samples
every process; prints a line per minute, then the four checks; writes everything as JSON. Every
process it started is stopped on the way out, whatever the way out (an exception, Ctrl-C,
SIGTERM); bench/soak's trap is the net under that.
"""

import json
import math
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time

from soak_stack import (SOAK_DB, WORK, Stack, consumer_lag, ingest_events, log, process_figures,
                        replica_counters)

ENV = os.environ
LUA = ENV["SOAK_LUA"]
OUT = pathlib.Path(ENV["SOAK_OUT"])
MINUTES = int(ENV["SOAK_MINUTES"])
CONNECTIONS = int(ENV["SOAK_CONNECTIONS"])
VEHICLES = int(ENV["SOAK_VEHICLES"])
FIRST_ID = int(ENV["SOAK_FIRST_ID"])
INGEST_VEHICLES = int(ENV["SOAK_INGEST_VEHICLES"])
PUBLISH_EVERY = float(ENV["SOAK_PUBLISH_EVERY_SECS"])
REDIS_AT = float(ENV["SOAK_REDIS_RESTART_AT"])
PG_AT = float(ENV["SOAK_PG_RESTART_AT"])
REDIS_DOWN = float(ENV["SOAK_REDIS_DOWN_SECS"])
PG_DOWN = float(ENV["SOAK_PG_DOWN_SECS"])
GRACE = float(ENV["SOAK_PG_GRACE_SECS"])
# Empty: chosen after the run (see warmup_minutes).
WARMUP = int(ENV["SOAK_WARMUP_MINUTES"]) if ENV.get("SOAK_WARMUP_MINUTES") else None
FLAT = float(ENV["SOAK_FLAT_PERCENT"])
DRAIN = float(ENV["SOAK_DRAIN_SECS"])
TIMEOUT = ENV["SOAK_TIMEOUT"]
BATCH_SIZE = int(ENV["SOAK_BATCH_SIZE"])

TOTAL = MINUTES * 60.0
# Events stop being published this long before the end, so ingest can be seen at lag 0.
PUBLISH_STOPS_BEFORE_END = 30.0
READ_SEED, EVENTS_SEED = 1, 2
REFERENCE_DB = "vs_soak_reference"
OURS = ["replica1", "replica2", "replica3", "ingest"]  # checked for flat RSS and descriptors
OTHERS = ["nginx", "postgres", "redis", "nats"]        # reported
# What docs/api.md says a client may get while PostgreSQL is down: a 503 database-unavailable
# for an answer not cached (a batch's item likewise).
ALLOWED = ("503 database-unavailable", "item 503 database-unavailable")


# ---- the data ------------------------------------------------------------------------------

def tables_digest(stack, db, low, high):
    """Rows and an md5 of both tables' rows with ids in [low, high], sorted as tests/ingest
    compares them: vehicles (id, make, model, state), stateLogs (vehicle, state, Unix µs)."""
    out = stack.psql(db, f"""
SELECT count(*) || ' ' || coalesce(md5(string_agg(id || ',' || make || ',' || model || ',' || state, E'\\n' ORDER BY id)), '-')
FROM vehicles WHERE id BETWEEN {low} AND {high};
SELECT count(*) || ' ' || coalesce(md5(string_agg("vehicleId" || ',' || state || ',' || (EXTRACT(EPOCH FROM "timestamp") * 1000000)::int8,
    E'\\n' ORDER BY "vehicleId", "timestamp", state)), '-')
FROM "stateLogs" WHERE "vehicleId" BETWEEN {low} AND {high};""")
    (vn, vh), (ln, lh) = (line.split() for line in out.splitlines())
    return {"vehicles": int(vn), "vehicles_md5": vh, "state_logs": int(ln), "state_logs_md5": lh}


def load_data(stack):
    # The read set: `seed synthetic`, then moved to ids FIRST_ID and up, since `publish synthetic`
    # always sends ids 1 to N and the events must be for other vehicles than the read set.
    stack.run_binary(["seed", "synthetic", "--vehicles", str(VEHICLES), "--random-seed", str(READ_SEED)],
                     DATABASE_URL=stack.pg_url(SOAK_DB))
    shift = FIRST_ID - 1
    stack.psql(SOAK_DB, f"""
UPDATE vehicles SET id = id + {shift};
UPDATE "stateLogs" SET "vehicleId" = "vehicleId" + {shift};
VACUUM FULL vehicles;
VACUUM FULL "stateLogs";
VACUUM ANALYZE;""")
    read_set = tables_digest(stack, SOAK_DB, FIRST_ID, 2147483647)
    # What the events say: the tables `seed synthetic` loads with the publisher's seed.
    stack.run_binary(["seed", "synthetic", "--vehicles", str(INGEST_VEHICLES), "--random-seed", str(EVENTS_SEED)],
                     DATABASE_URL=stack.pg_url(REFERENCE_DB))
    reference = tables_digest(stack, REFERENCE_DB, 1, 2147483647)
    return read_set, reference


class Sampler(threading.Thread):
    """Every second the consumer's lag and ingest's counters; every 5 s every process's figures
    and the replicas' counters."""

    def __init__(self, stack, stop):
        super().__init__(daemon=True)
        self.stack, self.stop = stack, stop
        self.lag, self.events, self.processes, self.counters, self.redis_keys = [], [], [], [], []

    def run(self):
        tick = 0
        while not self.stop.wait(1.0):
            now = time.time()
            self.lag.append((now, consumer_lag(self.stack)))
            self.events.append((now, ingest_events(self.stack)))
            if tick % 5 == 0:
                self.processes.append((now, process_figures(self.stack)))
                self.counters.append((now, replica_counters(self.stack)))
                self.redis_keys.append((now, self.stack.redis_keys()))
            tick += 1


# ---- what happens along the run ------------------------------------------------------------

class Publisher(threading.Thread):
    """Sends events during the run. `publish synthetic` has no id offset and no pace, so every
    PUBLISH_EVERY seconds it publishes vehicles 1 to k, k growing with the time so that all
    INGEST_VEHICLES are sent PUBLISH_STOPS_BEFORE_END seconds before the end; JetStream drops what
    an earlier round sent (same Nats-Msg-Id within the duplicate window), so ingest receives each
    event once: about INGEST_VEHICLES × 3.9 events over the run (a registration and 2.7 changes
    each, 5 % of them again under other ids)."""

    def __init__(self, stack, t0, stop):
        super().__init__(daemon=True)
        self.stack, self.t0, self.stop = stack, t0, stop
        self.rounds, self.published = [], 0
        self.until = max(PUBLISH_EVERY, TOTAL - PUBLISH_STOPS_BEFORE_END)

    def run(self):
        n = 0
        while self.published < INGEST_VEHICLES and not self.stop.is_set():
            elapsed = time.time() - self.t0
            k = min(INGEST_VEHICLES, max(1, math.ceil(INGEST_VEHICLES * elapsed / self.until)))
            if k > self.published:
                started = time.time()
                round_ = {"at_s": round(started - self.t0, 1), "vehicles": k, "ok": False}
                try:
                    out = self.stack.run_binary(
                        ["publish", "synthetic", "--vehicles", str(k), "--random-seed", str(EVENTS_SEED),
                         "--shuffle", "--duplicates", "0.05"],
                        timeout=120, log_name="publish", RUST_LOG="info", **self.stack.ingest_env())
                    self.published, round_["ok"] = k, True
                    # Its last line: {"message": "published", "events": ..., "per_second": ...}
                    for line in out.splitlines():
                        if '"published"' in line:
                            said = json.loads(line)
                            round_["events_sent"], round_["per_second"] = int(said["events"]), said["per_second"]
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
                    log(f"publish of vehicles 1 to {k} failed (the next round sends them again): {e}")
                round_["took_s"] = round(time.time() - started, 2)
                self.rounds.append(round_)
            n += 1
            self.stop.wait(max(0.0, self.t0 + n * PUBLISH_EVERY - time.time()))


class Faults(threading.Thread):
    """Stops Redis and PostgreSQL once each, at their times, and starts them again."""

    def __init__(self, stack, t0, stop):
        super().__init__(daemon=True)
        self.stack, self.t0, self.stop = stack, t0, stop
        self.windows, self.failure = [], None

    def run(self):
        try:
            for at, what in sorted([(REDIS_AT, "redis"), (PG_AT, "postgres")]):
                if self.stop.wait(max(0.0, self.t0 + at - time.time())):
                    return
                window = {"what": what, "stop": time.time()}
                self.windows.append(window)
                if what == "redis":
                    self.stack.stop("redis", within=10)
                else:
                    self.stack.pg_stop("fast")
                window["stopped"] = time.time()
                # The run is being stopped: leave it down, stop_all is on its way.
                if self.stop.wait(REDIS_DOWN if what == "redis" else PG_DOWN):
                    return
                if what == "redis":
                    self.stack.redis_start()
                else:
                    self.stack.pg_start()
                window["up"] = time.time()
        except Exception as e:  # reported by the checks
            self.failure = f"{type(e).__name__}: {e}"
            log(f"the restart failed: {self.failure}")


def run_minute(stack):
    env = dict(ENV, FIRST_ID=str(FIRST_ID), VEHICLES=str(VEHICLES), INGEST_VEHICLES=str(INGEST_VEHICLES),
               BATCH_SIZE=str(BATCH_SIZE))
    threads = min(2, CONNECTIONS)
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", "-d60s", f"--timeout={TIMEOUT}", "-s", LUA,
         f"http://127.0.0.1:{stack.ports['nginx']}"],
        env=env, cwd=WORK, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")
    return json.loads(lines[-1])


# ---- the report ----------------------------------------------------------------------------

PROCESS_COLUMNS = OURS + OTHERS


def classify(kind):
    if kind == "503 database-unavailable":
        return "db503"
    if kind == "503 overloaded":
        return "over503"
    if kind.split()[0] in ("502", "504"):
        return "gw"
    if kind.startswith("item "):
        return "items"
    return "other"


def header():
    cells = "".join(f"{name:>12}" for name in PROCESS_COLUMNS)
    return ("\nper minute: requests answered through nginx; errors by kind (503 database-unavailable,\n"
            "503 overloaded, 502/504 from nginx, connection errors, batch items not answered, any other);\n"
            "p99 of all requests; RSS MB/open fds of each process (median of the minute's samples, every\n"
            "5 s; nginx and postgres: all their processes, PSS summed); ingest lag (events not yet applied:\n"
            "pending + ack pending, at the minute's end / its max) and events applied\n\n"
            f"{'min':>3} {'requests':>9} {'db503':>6} {'ovl503':>6} {'gw':>4} {'conn':>4} {'items':>5} {'other':>5} "
            f"{'p99 ms':>7}{cells} {'lag end/max':>12} {'applied':>8}  note")


def minute_line(m, minute):
    k = minute["kinds"]
    cells = ""
    for name in PROCESS_COLUMNS:
        f = minute["processes"].get(name)
        cells += f"{'-':>12}" if f is None else f"{f['rss_mb']:>7.1f}/{f['fds']:<4}"
    lag = minute["lag_end"], minute["lag_max"]
    lag_text = "?" if lag[0] is None else f"{lag[0]}/{lag[1]}"
    return (f"{m:>3} {minute['requests']:>9,} {k['db503']:>6} {k['over503']:>6} {k['gw']:>4} {k['conn']:>4} "
            f"{k['items']:>5} {k['other']:>5} {minute['p99_ms']:>7.1f}{cells} {lag_text:>12} "
            f"{minute['applied'] if minute['applied'] is not None else '?':>8}  {minute['note']}")


def summarize_minute(m, wrk, start, end, sampler, faults, t0):
    kinds = {"db503": 0, "over503": 0, "gw": 0, "conn": sum(wrk["socket_errors"].values()), "items": 0, "other": 0}
    for kind, n in wrk["errors"].items():
        kinds[classify(kind)] += n
    processes = {}
    samples = [figs for at, figs in sampler.processes if start <= at < end]
    for name in PROCESS_COLUMNS:
        values = [s[name] for s in samples if s.get(name)]
        processes[name] = None if not values else {
            "rss_mb": statistics.median(v["rss_mb"] for v in values),
            "fds": int(statistics.median(v["fds"] for v in values)),
            "processes": max(v["processes"] for v in values)}
    lags = [sum(lag) for at, lag in sampler.lag if start <= at < end and lag is not None]
    applied = [ev.get("applied", 0) for at, ev in sampler.events if ev is not None and at < end]
    before = [ev.get("applied", 0) for at, ev in sampler.events if ev is not None and at < start]
    counters_now = [c for at, c in sampler.counters if at < end]
    counters_before = [c for at, c in sampler.counters if at < start]
    counters = {}
    for name, now in (counters_now[-1] if counters_now else {}).items():
        was = counters_before[-1][name] if counters_before else {}
        counters[name] = {k: v - was.get(k, 0) for k, v in now.items() if v - was.get(k, 0)}
    keys = [n for at, n in sampler.redis_keys if start <= at < end and n is not None]
    notes = []
    for w in faults.windows:
        if start <= w["stop"] < end:
            back = f", back at {w['up'] - t0:.0f} s" if "up" in w else ""
            notes.append(f"{w['what']} stopped at {w['stop'] - t0:.0f} s{back}")
    return {
        "minute": m, "start_s": round(start - t0, 1), "end_s": round(end - t0, 1), "start_at": start, "end_at": end,
        "requests": wrk["requests"], "p50_ms": wrk["p50_ms"], "p99_ms": wrk["p99_ms"], "max_ms": wrk["max_ms"],
        "answers": wrk["answers"], "errors": wrk["errors"], "socket_errors": wrk["socket_errors"],
        "error_seconds": wrk["error_seconds"], "kinds": kinds, "processes": processes,
        "lag_end": lags[-1] if lags else None, "lag_max": max(lags) if lags else None,
        "applied": (applied[-1] - (before[-1] if before else 0)) if applied else None,
        "replicas": counters, "redis_keys": keys[-1] if keys else None, "note": "; ".join(notes),
    }


def counters_table(minutes):
    """Where the replicas' answers came from each minute, and what failed under them (their
    own counters, summed): shows the restarts from the inside."""
    results = ["memory_hit", "redis_hit", "miss", "redis_error", "coalesced", "stale", "shed", "error"]
    lines = ["the replicas' own counters per minute, summed: lookups by where the answer came from\n"
             "(vehicle_state_lookups_total; a batch counts each item), Redis calls that failed and that were\n"
             "skipped (Redis had failed less than REDIS_RETRY_INTERVAL_MS before), PostgreSQL errors; and\n"
             "the keys in Redis at the minute's end\n",
             f"{'min':>3} " + "".join(f"{r:>12}" for r in results)
             + f" {'redis failed':>13} {'skipped':>9} {'pg errors':>10} {'redis keys':>11}"]
    for m in minutes:
        c = m["replicas"]
        lookups, redis = c.get("lookups", {}), dict(c.get("redis_errors", {}))
        skipped = redis.pop("skipped", 0)
        lines.append(f"{m['minute']:>3} " + "".join(f"{lookups.get(r, 0):>12,}" for r in results)
                     + f" {sum(redis.values()):>13,} {skipped:>9,} {sum(c.get('db_errors', {}).values()):>10,}"
                     + f" {'?' if m['redis_keys'] is None else format(m['redis_keys'], ','):>11}")
    return "\n".join(lines) + "\n"


def check_errors(minutes, faults, t0):
    pg = [w for w in faults.windows if w["what"] == "postgres" and "up" in w]
    low = math.floor(pg[0]["stop"]) if pg else None
    high = math.ceil(pg[0]["up"] + GRACE) if pg else None
    inside, outside, conn = {}, {}, 0
    for minute in minutes:
        conn += sum(minute["socket_errors"].values())
        for key, n in minute["error_seconds"].items():
            kind, second = key.rsplit("@", 1)
            ok = kind in ALLOWED and low is not None and low <= int(second) <= high
            into = inside if ok else outside
            into[kind] = into.get(kind, 0) + n
    passed = not outside and conn == 0 and faults.failure is None
    if pg:
        where = (f"PostgreSQL down from {pg[0]['stop'] - t0:.1f} s to {pg[0]['up'] - t0:.1f} s, "
                 f"grace {GRACE:.0f} s: window {low - t0:.0f} s to {high - t0:.0f} s")
    else:
        where = "PostgreSQL was not restarted" + (f" ({faults.failure})" if faults.failure else "")
    text = f"{where}; in the window: {fmt_kinds(inside) or 'nothing'}; anywhere else: {fmt_kinds(outside) or 'nothing'}"
    if conn:
        text += f"; {conn} connection errors (wrk: connect, read, write, timeout)"
    return passed, text, {"window_s": [low - t0, high - t0] if pg else None, "inside": inside,
                          "outside": outside, "connection_errors": conn}


def fmt_kinds(kinds):
    return ", ".join(f"{n:,} × {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))


def warmup_minutes(minutes, faults):
    """SOAK_WARMUP_MINUTES, or: a fifth of the run (at least 1), and at least until the minute
    Redis came back in. While Redis is away every answer read from PostgreSQL is kept in memory
    at once, which fills each replica's in-process cache to LOCAL_CACHE_MAX_BYTES; RSS then stays
    at that mark (the allocator keeps what it was given), so memory is warm only from then on.
    At most MINUTES - 2, to leave two minutes to compare."""
    if WARMUP is not None:
        return WARMUP, "set by SOAK_WARMUP_MINUTES"
    chosen, why = max(1, MINUTES // 5), "a fifth of the run"
    for w in faults.windows:
        if w["what"] == "redis" and "up" in w:
            back = next((m["minute"] for m in minutes if m["start_at"] <= w["up"] < m["end_at"]), 0)
            if back > chosen:
                chosen, why = back, (f"until Redis came back, in minute {back}: while Redis is away every "
                                     "answer read is kept in memory at once, which fills each replica's "
                                     "in-process cache to its bound, and RSS stays at that mark")
    if chosen > MINUTES - 2:
        chosen, why = MINUTES - 2, f"{why}; cut to {MINUTES - 2} to leave two minutes to compare"
    return chosen, why


def check_flat(minutes, stack, warmup):
    base, last = minutes[warmup], minutes[-1]
    parts, passed, detail = [], True, {}
    for name in PROCESS_COLUMNS:
        b, l = base["processes"].get(name), last["processes"].get(name)
        if b is None or l is None:
            parts.append(f"{name}: not running")
            passed = passed and name not in OURS
            continue
        rss = (l["rss_mb"] - b["rss_mb"]) / b["rss_mb"] * 100
        fd = (l["fds"] - b["fds"]) / b["fds"] * 100
        ours = name in OURS
        ok = abs(rss) <= FLAT and abs(fd) <= FLAT
        passed = passed and (ok or not ours)
        detail[name] = {"rss_mb": [b["rss_mb"], l["rss_mb"]], "fds": [b["fds"], l["fds"]],
                        "rss_change_percent": rss, "fds_change_percent": fd, "checked": ours}
        mark = ("" if ok else " OVER") if ours else " (reported)"
        parts.append(f"{name} RSS {b['rss_mb']:.1f} → {l['rss_mb']:.1f} MB ({rss:+.1f} %), "
                     f"fds {b['fds']} → {l['fds']} ({fd:+.1f} %){mark}")
    exited = [f"{name} exited ({stack.procs[name].returncode})" for name in OURS + ["nginx", "nats"]
              if stack.procs[name].poll() is not None]
    if exited:
        passed = False
        parts.append("; ".join(exited))
    return passed, "\n      ".join(parts), detail


def check_tables(stack, read_set, reference):
    now_read = tables_digest(stack, SOAK_DB, FIRST_ID, 2147483647)
    now_events = tables_digest(stack, SOAK_DB, 1, FIRST_ID - 1)
    passed = now_read == read_set and now_events == reference
    text = (f"vehicles 1 to {INGEST_VEHICLES:,}: {now_events['vehicles']:,} vehicles, "
            f"{now_events['state_logs']:,} stateLogs rows, "
            f"{'equal to' if now_events == reference else 'NOT equal to'} `seed synthetic --vehicles "
            f"{INGEST_VEHICLES} --random-seed {EVENTS_SEED}` ({reference['vehicles']:,}, {reference['state_logs']:,}); "
            f"the read set {'unchanged' if now_read == read_set else 'CHANGED'} "
            f"({now_read['vehicles']:,} vehicles, {now_read['state_logs']:,} rows)")
    return passed, text, {"read_set": [read_set, now_read], "events": [reference, now_events]}


def log_levels(name):
    path = WORK / f"{name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    warn, error = '"level":"WARN"', '"level":"ERROR"'
    return f"{text.count(warn)}/{text.count(error)}"


def wait_for_lag_zero(stack, publisher, t_end):
    """Seconds after the load's end until every event was published and the lag is 0; None if
    not within DRAIN."""
    deadline = t_end + DRAIN
    while True:
        lag = consumer_lag(stack)
        if publisher.published == INGEST_VEHICLES and lag is not None and sum(lag) == 0:
            return time.time() - t_end, lag
        if time.time() > deadline:
            return None, lag
        time.sleep(0.2)


def start(stack):
    log(f"starting PostgreSQL on 127.0.0.1:{stack.ports['pg']}, Redis on {stack.ports['redis']}, "
        f"nats-server on {stack.ports['nats']} (monitoring {stack.ports['nats_monitor']})")
    stack.pg_init()
    stack.pg_start()
    stack.redis_start()
    stack.nats_start()
    log(f"loading {VEHICLES:,} vehicles (ids {FIRST_ID:,} to {FIRST_ID + VEHICLES - 1:,}) and the reference "
        f"of the events ({INGEST_VEHICLES:,} vehicles, ids 1 to {INGEST_VEHICLES:,})")
    data = load_data(stack)
    for name in ["replica1", "replica2", "replica3"]:
        stack.replica_start(name)
    stack.ingest_start()
    stack.nginx_start()
    log(f"replicas on {', '.join(str(stack.ports[f'replica{i}']) for i in (1, 2, 3))}, ingest on "
        f"{stack.ports['ingest']}, nginx on {stack.ports['nginx']}; {MINUTES} minutes, {CONNECTIONS} "
        f"connections; Redis restarted at {REDIS_AT:.0f} s, PostgreSQL at {PG_AT:.0f} s")
    return data


def soak(stack, stop, read_set, reference):
    print(header(), flush=True)
    t0 = time.time()
    sampler, publisher, faults = Sampler(stack, stop), Publisher(stack, t0, stop), Faults(stack, t0, stop)
    for thread in (sampler, publisher, faults):
        thread.start()
    minutes = []
    for m in range(1, MINUTES + 1):
        start_at = time.time()
        wrk = run_minute(stack)
        minute = summarize_minute(m, wrk, start_at, time.time(), sampler, faults, t0)
        minutes.append(minute)
        print(minute_line(m, minute), flush=True)
    t_end = time.time()
    faults.join(timeout=120)
    drained_after, lag = wait_for_lag_zero(stack, publisher, t_end)
    stop.set()
    for thread in (sampler, publisher):
        thread.join(timeout=130)
    events = ingest_events(stack) or {}
    warmup, why = warmup_minutes(minutes, faults)

    print()
    print(counters_table(minutes))
    print(f"warm-up: minute{'s 1 to' if warmup > 1 else ''} {warmup}; flat: minute {warmup + 1} "
          f"against minute {MINUTES}, within {FLAT:.0f} %\n  (warm-up: {why})")
    for w in faults.windows:
        print(f"{w['what']}: stopped at {w['stop'] - t0:.1f} s (the stop took {w.get('stopped', w['stop']) - w['stop']:.1f} s), "
              f"back at {w['up'] - t0:.1f} s" if "up" in w else f"{w['what']}: stopped at {w['stop'] - t0:.1f} s, not back")
    print(f"events: published for vehicles 1 to {publisher.published:,} in {len(publisher.rounds)} rounds; "
          f"ingest counted {', '.join(f'{v:,} {k}' for k, v in sorted(events.items())) or 'nothing'}")
    print("log lines at warn / error: " + ", ".join(f"{name} {log_levels(name)}" for name in OURS + ["publish"]))

    checks, details = [], {}
    passed, text, details["errors"] = check_errors(minutes, faults, t0)
    checks.append(("errors: only 503 database-unavailable, only while PostgreSQL restarts", passed, text))
    passed, text, details["flat"] = check_flat(minutes, stack, warmup)
    checks.append((f"RSS and open fds of the replicas and ingest flat after warm-up (within {FLAT:.0f} %)", passed, text))
    text = (f"0 {drained_after:.1f} s after the load ended" if drained_after is not None
            else f"still {lag} (pending, ack pending) {DRAIN:.0f} s after the load ended")
    if publisher.published < INGEST_VEHICLES:
        text += f"; only vehicles 1 to {publisher.published} were published"
    checks.append(("ingest lag back to 0", drained_after is not None, text))
    passed, text, details["tables"] = check_tables(stack, read_set, reference)
    checks.append(("tables equal to what the events say", passed, text))
    for i, (what, passed, text) in enumerate(checks, 1):
        print(f"({i}) {'PASS' if passed else 'FAIL'} {what}\n      {text}")
    ok = all(passed for _, passed, _ in checks)

    for m in minutes:
        del m["start_at"], m["end_at"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "settings": {"minutes": MINUTES, "connections": CONNECTIONS, "vehicles": VEHICLES,
                     "first_id": FIRST_ID, "ingest_vehicles": INGEST_VEHICLES,
                     "redis_restart_at_s": REDIS_AT, "pg_restart_at_s": PG_AT,
                     "redis_down_s": REDIS_DOWN, "pg_down_s": PG_DOWN, "grace_s": GRACE,
                     "warmup_minutes": warmup, "flat_percent": FLAT, "batch_size": BATCH_SIZE,
                     "timeout": TIMEOUT},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
        "restarts": [{k: (round(v - t0, 2) if isinstance(v, float) else v) for k, v in w.items()}
                     for w in faults.windows],
        "publish_rounds": publisher.rounds, "ingest_events": events, "minutes": minutes,
        "samples": {"processes": [{"at_s": round(at - t0, 1), **figs} for at, figs in sampler.processes],
                    "lag": [{"at_s": round(at - t0, 1), "pending": l[0], "ack_pending": l[1]}
                            for at, l in sampler.lag if l is not None]},
        "checks": [{"what": w, "passed": p, "detail": t} for w, p, t in checks],
        "details": details, "lag_zero_after_s": drained_after, "passed": ok}, indent=1) + "\n")
    print(f"\n{'PASS' if ok else 'FAIL'}; figures in {OUT}")
    return ok


def main():
    if MINUTES < 2 or (WARMUP is not None and MINUTES < WARMUP + 2):
        sys.exit(f"bench/soak: SOAK_MINUTES={MINUTES} leaves no two minutes to compare after a warm-up of "
                 f"{WARMUP if WARMUP is not None else 0}")
    if INGEST_VEHICLES >= FIRST_ID:
        sys.exit("bench/soak: SOAK_INGEST_VEHICLES must be below SOAK_FIRST_ID (events are for ids 1 to N)")
    stack = Stack(TOTAL)
    stop = threading.Event()
    try:
        ok = soak(stack, stop, *start(stack))
        if not ok:
            for name in OURS + ["nginx"]:
                path = WORK / f"{name}.log"
                lines = path.read_text(errors="replace").splitlines()[-5:] if path.exists() else []
                if lines:
                    log(f"--- the last lines of {name}'s log:\n" + "\n".join(lines))
        return 0 if ok else 1
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        stop.set()
        stack.stop_all()


def terminate(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    # Ctrl-C stops everything in order, even when started from a shell that ignores SIGINT in
    # what it runs in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    sys.exit(main())
