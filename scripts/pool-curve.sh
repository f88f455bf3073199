#!/usr/bin/env bash
# Runs the throughput bench and prints the pool-size curve as a Markdown
# table (requests/s per workload and pool size), with the machine and load.
#
#   scripts/pool-curve.sh                # one full run, 4-5 minutes on 2 cores
#   RUNS=3 scripts/pool-curve.sh         # best of three full runs
#   scripts/pool-curve.sh --quick        # CI smoke run, under a minute
#
# Extra arguments go to criterion (e.g. a filter: keepalive_1k). A shared
# machine only ever slows a point down, so with RUNS > 1 each cell is the
# best run, followed by the worst in parentheses. Needs python3 to read
# criterion's estimates from target/criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-1}
results=$(mktemp)
trap 'rm -f "$results"' EXIT

# Load average counts blocked threads too; the idle share of the CPUs over
# five seconds says better whether something else is running.
idle_share() {
  local a b
  read -r -a a < <(head -1 /proc/stat)
  sleep 5
  read -r -a b < <(head -1 /proc/stat)
  local busy=0 idle=$(( b[4] - a[4] + b[5] - a[5] )) i
  for i in 1 2 3 6 7 8; do busy=$(( busy + b[i] - a[i] )); done
  echo "$(( 100 * idle / (idle + busy) ))% idle"
}

echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "commit:  $(git describe --always --dirty 2>/dev/null || echo 'not a git checkout')"
# Built once, so every run measures the same server.
bench=$(cargo bench --bench throughput --no-run 2>&1 | tee /dev/stderr |
  sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -x "$bench" ] || { echo "cannot build the throughput bench" >&2; exit 1; }
for run in $(seq "$runs"); do
  echo "run $run: load before $(cut -d' ' -f1-3 /proc/loadavg), CPUs $(idle_share) over 5 s"
  started=$(date +%s)
  "$bench" --bench "$@" >&2
  # Keep this run's requests/s per point: one request is one iteration, and
  # slope (linear sampling) is the better estimate when criterion has it.
  python3 - "$results" "$started" <<'PY'
import json, pathlib, sys
for est in pathlib.Path("target/criterion").glob("*/*/new/estimates.json"):
    group, pool = est.parts[-4], est.parts[-3]
    # Points measured by this run only, not those left by an earlier one.
    if pool.isdigit() and est.stat().st_mtime >= int(sys.argv[2]):
        data = json.loads(est.read_text())
        ns = (data.get("slope") or data["mean"])["point_estimate"]
        with open(sys.argv[1], "a") as out:
            out.write(f"{group} {pool} {1e9 / ns}\n")
PY
done
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo

python3 - "$results" <<'PY'
import sys
rows, pools = {}, set()
for line in open(sys.argv[1]):
    group, pool, rate = line.split()
    rows.setdefault(group, {}).setdefault(int(pool), []).append(float(rate))
    pools.add(int(pool))
pools = sorted(pools)

def order(group):
    kind = 2 if group.startswith("slow") else 1 if group.startswith("newconn") else 0
    return (kind, "64k" in group, int(group.rsplit("_c", 1)[1]))

def cell(rates):
    text = f"{max(rates) / 1000:.1f}k"
    return text + (f" ({min(rates) / 1000:.1f}k)" if len(rates) > 1 else "")

print("| workload | " + " | ".join(f"{p} workers" for p in pools) + " |")
print("| --- |" + " ---: |" * len(pools))
for group in sorted(rows, key=order):
    cells = [cell(rows[group][p]) if p in rows[group] else "" for p in pools]
    print(f"| {group} | " + " | ".join(cells) + " |")
PY
