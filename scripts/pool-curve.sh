#!/usr/bin/env bash
# Runs the throughput bench and prints the pool-size curve as a Markdown
# table (requests/s per workload and pool size), with the machine and load.
#
#   scripts/pool-curve.sh            # full run, a few minutes on 2 cores
#   scripts/pool-curve.sh --quick    # CI smoke run, well under a minute
#
# Extra arguments go to criterion (e.g. a filter: keepalive_1k). Needs python3
# to read criterion's estimates from target/criterion.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --bench throughput -- "$@" >&2
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo

python3 - <<'PY'
import json, pathlib
root = pathlib.Path("target/criterion")
rows, pools = {}, set()
for est in root.glob("*/*/new/estimates.json"):
    group, pool = est.parts[-4], est.parts[-3]
    if not pool.isdigit():
        continue
    data = json.loads(est.read_text())
    # One iteration is one request; slope (linear sampling) is the better
    # estimate when criterion has it.
    ns = (data.get("slope") or data["mean"])["point_estimate"]
    rows.setdefault(group, {})[int(pool)] = 1e9 / ns
    pools.add(int(pool))
pools = sorted(pools)
print("| workload | " + " | ".join(f"{p} workers" for p in pools) + " |")
print("| --- |" + " ---: |" * len(pools))
for group in sorted(rows, key=lambda g: (g.startswith("newconn"), "64k" in g, int(g.rsplit("_c", 1)[1]))):
    cells = [f"{rows[group][p] / 1000:.1f}k" if p in rows[group] else "" for p in pools]
    print(f"| {group} | " + " | ".join(cells) + " |")
PY
