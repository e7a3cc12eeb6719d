"""Turns bench/run's raw results into the table, results.json and the plot."""
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

raw, out_json, out_svg, duration, connections, work, out_explain = sys.argv[1:8]
WORKLOADS = ["livez", "hot", "cold", "db", "mixed", "batch", "db_batch", "poll", "now", "sweep", "preflight"]
NAMES = {"livez": "ceiling (/livez)", "hot": "hot (1,000 keys)", "cold": "cold (random)",
         "db": "db ceiling (pgbench)", "mixed": "mixed (Zipf)",
         "batch": "batch (100 cold pairs)", "db_batch": "db, 100 pairs/statement",
         "poll": "poll 2,000, client clock", "now": "poll 2,000, now",
         "sweep": "sweep 200 lives",
         "preflight": "CORS preflight (OPTIONS)"}

rows = [json.loads(line) for line in open(raw) if line.strip()]
sizes = list(dict.fromkeys(r["size"] for r in rows))
# Row counts and on-disk sizes of each data set: not a workload.
tables = {r["size"]: r["result"] for r in rows if r["workload"] == "tables"}
# The sweep's vehicles and the state segments their lives hold.
segments = {r["size"]: r["result"] for r in rows if r["workload"] == "sweep_segments"}
rows = [r for r in rows if r["workload"] not in ("tables", "sweep_segments")]
by = {(r["size"], r["workload"]): r["result"] for r in rows}
for result in by.values():
    result.setdefault("rps", result["requests"] / result["seconds"] if result.get("seconds") else 0)
    # Lookups per second: requests times the pairs each carries (100 for the batch workloads).
    result["lookups_per_s"] = result["rps"] * result.get("lookups_per_request", 1)
    # SQL statements per 100 lookups (target, issue 11: at most 20 for cold lookups).
    lookups = result.get("requests", 0) * result.get("lookups_per_request", 1)
    if "db_statements" in result and lookups:
        result["statements_per_100"] = round(100 * result["db_statements"] / lookups, 1)
    # The share of lookups answered from PostgreSQL (issue 33: at most 5 % polling the client's
    # clock).
    if "db_lookups" in result and lookups:
        result["db_share"] = round(result["db_lookups"] / lookups, 4)

ratios = {}
for size in sizes:
    get = lambda w: by.get((size, w), {}).get("rps", 0)
    look = lambda w: by.get((size, w), {}).get("lookups_per_s", 0)
    ratios[size] = {
        "hot_over_ceiling": round(get("hot") / get("livez"), 3) if get("livez") else None,
        "cold_over_db": round(get("cold") / get("db"), 3) if get("db") else None,
        # Target (issue 10): batch lookups/s at least 5x the cold single lookup's.
        "batch_lookups_over_cold": round(look("batch") / look("cold"), 2) if look("cold") else None,
        "batch_lookups_over_db": round(look("batch") / look("db"), 2) if look("db") else None,
        # Targets (issue 33): polling the client's clock and sweeping lives at least 0.8x hot.
        "poll_over_hot": round(get("poll") / get("hot"), 3) if get("hot") and get("poll") else None,
        "now_over_hot": round(get("now") / get("hot"), 3) if get("hot") and get("now") else None,
        "sweep_over_hot": round(get("sweep") / get("hot"), 3) if get("hot") and get("sweep") else None,
    }
    sweep = by.get((size, "sweep"))
    if sweep and segments.get(size, {}).get("segments"):
        # Target (issue 33): at most 2 PostgreSQL reads per state segment swept.
        ratios[size]["sweep_db_reads_per_segment"] = round(sweep.get("db_lookups", 0) / segments[size]["segments"], 1)
        ratios[size]["sweep_segments"] = segments[size]["segments"]

for result in by.values():
    # Requests per second of the service's own CPU time (user + system): what one core serves.
    if result.get("service_cpu_s") and result.get("seconds"):
        result["service_cores"] = round(result["service_cpu_s"] / result["seconds"], 2)
        result["rps_per_core"] = round(result["rps"] / result["service_cores"])

print(f"\n{'size':>9} {'workload':<24} {'req/s':>9} {'lookups/s':>10} {'stmt/100':>8} {'to db':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'non-200/404':>11} {'RSS MB':>7} {'cores':>6} {'req/s/core':>10}")
for size in sizes:
    for w in WORKLOADS:
        r = by.get((size, w))
        if not r:
            continue
        rss = r.get("rss_mb", "")
        cores, per_core = r.get("service_cores", ""), r.get("rps_per_core", "")
        share = f"{100 * r['db_share']:.1f}%" if "db_share" in r else ""
        print(f"{size:>9} {NAMES[w]:<24} {r['rps']:>9.0f} {r['lookups_per_s']:>10.0f} {r.get('statements_per_100', ''):>8} {share:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['errors']:>7} {r['unexpected_status']:>11} {rss:>7} {cores:>6} {per_core:>10}")
    print(f"{size:>9} ratios: hot/ceiling {ratios[size]['hot_over_ceiling']}, "
          f"cold/db ceiling {ratios[size]['cold_over_db']}, "
          f"batch/cold lookups {ratios[size]['batch_lookups_over_cold']}, "
          f"batch/db lookups {ratios[size]['batch_lookups_over_db']}, "
          f"poll/hot {ratios[size]['poll_over_hot']}, now/hot {ratios[size]['now_over_hot']}, "
          f"sweep/hot {ratios[size]['sweep_over_hot']}, "
          f"sweep db reads/segment {ratios[size].get('sweep_db_reads_per_segment')} "
          f"({ratios[size].get('sweep_segments')} segments)")

# Where each lookup's CPU went, in µs of core time per lookup: the service (user, system),
# PostgreSQL, Redis, and the rest of the machine (wrk, and the kernel on its behalf).
print(f"\n{'size':>9} {'workload':<24} {'µs CPU per lookup:':>18} {'service user':>12} {'system':>7} "
      f"{'postgres':>8} {'redis':>6} {'rest':>6} {'total':>6}")
for size in sizes:
    for w in ["livez", "hot", "cold", "mixed", "batch", "poll", "now", "sweep"]:
        r = by.get((size, w))
        if not r or "cpu_s" not in r or not r.get("requests"):
            continue
        c = r["cpu_s"]
        n = r["requests"] * r.get("lookups_per_request", 1)
        us = lambda v: 1e6 * v / n
        rest = c["machine"] - c["service_user"] - c["service_system"] - c["postgres"] - c["redis"]
        r["cpu_us_per_lookup"] = {k: round(us(v), 1) for k, v in
                                  {**c, "rest": rest}.items()}
        print(f"{size:>9} {NAMES[w]:<24} {'':>18} {us(c['service_user']):>12.1f} {us(c['service_system']):>7.1f} "
              f"{us(c['postgres']):>8.1f} {us(c['redis']):>6.1f} {us(rest):>6.1f} {us(c['machine']):>6.1f}")

# How the cold path's cost moves as the data grows (issue 21: p99 at most 10 ms at every size,
# req/s at the largest at least 0.8 of the smallest), beside the tables' sizes.
grown = [s for s in sizes if s != "sample" and (s, "cold") in by]
curve = {}
if grown:
    print(f"\n{'vehicles':>9} {'stateLogs rows':>14} {'tables MB':>10} {'indexes MB':>10} "
          f"{'cold req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'vs first':>8} {'batch lookups/s':>15}")
    first = by[(grown[0], "cold")]["rps"]
    for size in grown:
        cold, t = by[(size, "cold")], tables.get(size, {})
        curve[size] = {"rps": round(cold["rps"]), "p50_ms": cold["p50_ms"], "p99_ms": cold["p99_ms"],
                       "rps_over_first": round(cold["rps"] / first, 3),
                       "batch_lookups_per_s": round(by.get((size, "batch"), {}).get("lookups_per_s", 0)),
                       **t}
        table_mb = t.get("vehicles_table_mb", 0) + t.get("state_logs_table_mb", 0)
        index_mb = t.get("vehicles_indexes_mb", 0) + t.get("state_logs_indexes_mb", 0)
        print(f"{size:>9} {t.get('state_logs', ''):>14} {table_mb:>10.1f} {index_mb:>10.1f} "
              f"{cold['rps']:>10.0f} {cold['p50_ms']:>7.2f} {cold['p99_ms']:>7.2f} "
              f"{curve[size]['rps_over_first']:>8} {curve[size]['batch_lookups_per_s']:>15}")

# The plan of the statement the service sends, at the largest size measured.
plans = [s for s in sizes if os.path.exists(f"{work}/explain-{s}.txt")]
if plans:
    largest = plans[-1]
    plan = open(f"{work}/explain-{largest}.txt").read()
    with open(out_explain, "w") as f:
        f.write(f"-- LOOKUP_MANY_SQL with 100 random pairs, {largest} vehicles "
                f"({tables.get(largest, {}).get('state_logs', '?')} stateLogs rows)\n")
        f.write(plan)
    print(f"wrote {out_explain}")

document = {
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
    "duration": duration, "connections": int(connections),
    "results": [{"size": s, "workload": w, **by[(s, w)]} for s in sizes for w in WORKLOADS if (s, w) in by],
    "ratios": ratios,
    "cold_curve": curve,
}
json.dump(document, open(out_json, "w"), indent=2)
print(f"\nwrote {out_json}")

# The plot: requests/s and p99 by workload, one bar per data-set size (the workloads measured).
measured = [w for w in WORKLOADS if any((s, w) in by for s in sizes)]
with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as data:
    data.write("workload " + " ".join(f'"{s}"' for s in sizes) + "\n")
    for w in measured:
        data.write(f'"{NAMES[w]}" ' + " ".join(str(by.get((s, w), {}).get("lookups_per_s", 0)) for s in sizes) + "\n")
    data.write("\n\n")
    data.write("workload " + " ".join(f'"{s}"' for s in sizes) + "\n")
    for w in measured:
        data.write(f'"{NAMES[w]}" ' + " ".join(str(by.get((s, w), {}).get("p99_ms", 0)) for s in sizes) + "\n")
# The curve: cold req/s (left axis) and p50/p99 (right axis) against the number of vehicles.
curve_plot = ""
if curve:
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as c:
        for size, point in curve.items():
            c.write(f"{size} {point['rps']} {point['p50_ms']} {point['p99_ms']}\n")
    curve_plot = f"""
unset logscale y
set style data linespoints
set xtics auto
set logscale x 10
set xlabel 'vehicles'
set format x '%.0s%c'
set ylabel 'cold req/s'
set yrange [0:*]
set y2label 'cold latency (ms)'
set y2range [0:*]
set y2tics
set key top right title 'cold, by size'
plot '{c.name}' using 1:2 axes x1y1 title 'req/s' lw 2, \\
     '' using 1:3 axes x1y2 title 'p50 ms' lw 2, \\
     '' using 1:4 axes x1y2 title 'p99 ms' lw 2
"""
columns = " , ".join(f"'{data.name}' index {{i}} using {c + 2}:xtic(1) title columnheader({c + 2})"
                     for c in range(len(sizes)))
script = f"""
set terminal svg size 1000,1000 dynamic font 'sans,11' background '#ffffff'
set output '{out_svg}'
set multiplot layout 3,1 title 'vehicle-state on {os.cpu_count()} cores, {connections} connections, {duration} per workload'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top right title 'vehicles'
set grid ytics
set ylabel 'lookups/s'
plot {columns.format(i=0)}
set ylabel 'p99 latency (ms)'
set logscale y
plot {columns.format(i=1)}
{curve_plot}
unset multiplot
"""
subprocess.run(["gnuplot"], input=script, text=True, check=True)
os.unlink(data.name)
if curve:
    os.unlink(c.name)
print(f"wrote {out_svg}")
