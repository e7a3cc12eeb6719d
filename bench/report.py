"""Turns bench/run's raw results into the table, results.json and the plot."""
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

raw, out_json, out_svg, duration, connections = sys.argv[1:6]
WORKLOADS = ["livez", "hot", "cold", "db", "mixed", "batch", "db_batch", "preflight"]
NAMES = {"livez": "ceiling (/livez)", "hot": "hot (1,000 keys)", "cold": "cold (random)",
         "db": "db ceiling (pgbench)", "mixed": "mixed (Zipf)",
         "batch": "batch (100 cold pairs)", "db_batch": "db, 100 pairs/statement",
         "preflight": "CORS preflight (OPTIONS)"}

rows = [json.loads(line) for line in open(raw) if line.strip()]
sizes = list(dict.fromkeys(r["size"] for r in rows))
by = {(r["size"], r["workload"]): r["result"] for r in rows}
for result in by.values():
    result.setdefault("rps", result["requests"] / result["seconds"] if result.get("seconds") else 0)
    # Lookups per second: requests times the pairs each carries (100 for the batch workloads).
    result["lookups_per_s"] = result["rps"] * result.get("lookups_per_request", 1)
    # SQL statements per 100 lookups (target, issue 11: at most 20 for cold lookups).
    lookups = result.get("requests", 0) * result.get("lookups_per_request", 1)
    if "db_statements" in result and lookups:
        result["statements_per_100"] = round(100 * result["db_statements"] / lookups, 1)

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
    }

for result in by.values():
    # Requests per second of the service's own CPU time (user + system): what one core serves.
    if result.get("service_cpu_s") and result.get("seconds"):
        result["service_cores"] = round(result["service_cpu_s"] / result["seconds"], 2)
        result["rps_per_core"] = round(result["rps"] / result["service_cores"])

print(f"\n{'size':>9} {'workload':<24} {'req/s':>9} {'lookups/s':>10} {'stmt/100':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'non-200/404':>11} {'RSS MB':>7} {'cores':>6} {'req/s/core':>10}")
for size in sizes:
    for w in WORKLOADS:
        r = by.get((size, w))
        if not r:
            continue
        rss = r.get("rss_mb", "")
        cores, per_core = r.get("service_cores", ""), r.get("rps_per_core", "")
        print(f"{size:>9} {NAMES[w]:<24} {r['rps']:>9.0f} {r['lookups_per_s']:>10.0f} {r.get('statements_per_100', ''):>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['errors']:>7} {r['unexpected_status']:>11} {rss:>7} {cores:>6} {per_core:>10}")
    print(f"{size:>9} ratios: hot/ceiling {ratios[size]['hot_over_ceiling']}, "
          f"cold/db ceiling {ratios[size]['cold_over_db']}, "
          f"batch/cold lookups {ratios[size]['batch_lookups_over_cold']}, "
          f"batch/db lookups {ratios[size]['batch_lookups_over_db']}")

document = {
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
    "duration": duration, "connections": int(connections),
    "results": [{"size": s, "workload": w, **by[(s, w)]} for s in sizes for w in WORKLOADS if (s, w) in by],
    "ratios": ratios,
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
columns = " , ".join(f"'{data.name}' index {{i}} using {c + 2}:xtic(1) title columnheader({c + 2})"
                     for c in range(len(sizes)))
script = f"""
set terminal svg size 1000,700 dynamic font 'sans,11' background '#ffffff'
set output '{out_svg}'
set multiplot layout 2,1 title 'vehicle-state on {os.cpu_count()} cores, {connections} connections, {duration} per workload'
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
unset multiplot
"""
subprocess.run(["gnuplot"], input=script, text=True, check=True)
os.unlink(data.name)
print(f"wrote {out_svg}")
