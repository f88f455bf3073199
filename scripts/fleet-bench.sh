#!/usr/bin/env bash
# One measured run of a fleet on this machine, through HAProxy with
# deploy/haproxy.cfg, loaded by wrk, against an nginx origin on loopback:
#
#   1. requests/s through HAProxy with 1 instance, then with 3;
#   2. the hit ratio of the fleet (1 - origin requests / requests) before
#      and after one of 3 instances is killed (kill -9);
#   3. failed requests while all 3 are restarted in turn with SIGTERM under
#      load (must be 0).
#
#   scripts/fleet-bench.sh                # 10 s per measurement, about 2 minutes
#   SECONDS_PER_RUN=5 URLS=500 scripts/fleet-bench.sh
#
# Needs haproxy, nginx, wrk, curl and python3; builds the release binary first
# (or FETCHPROXY=path). Everything it starts is stopped by PID. The origin,
# HAProxy, the instances and wrk share this machine's CPUs: the figures are
# what this machine gives, and the script says how busy it was.
set -euo pipefail
cd "$(dirname "$0")/.."
run_seconds=${SECONDS_PER_RUN:-10}
urls=${URLS:-1000}
connections=${CONNECTIONS:-64}
for tool in haproxy nginx wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "fleet-bench: $tool is needed" >&2; exit 2; }
done
if [ -z "${FETCHPROXY:-}" ]; then
  cargo build --release --quiet
  FETCHPROXY=target/release/fetchproxy
fi

work=$(mktemp -d)
cleanup() {
  # Our own children still running, by PID.
  local pid
  for pid in $(jobs -p); do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A free loopback port below the kernel's range for outgoing connections,
# so that no client socket takes it while an instance restarts on it.
free_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    port = random.randrange(20000, 32000)
    try:
        socket.socket().bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        pass'
}

# The idle share of the CPUs over two seconds (load average counts blocked
# threads too, so it says less about what else is running).
idle_share() {
  local a b busy=0 idle i
  read -r -a a < <(head -1 /proc/stat)
  sleep 2
  read -r -a b < <(head -1 /proc/stat)
  idle=$(( b[4] - a[4] + b[5] - a[5] ))
  for i in 1 2 3 6 7 8; do busy=$(( busy + b[i] - a[i] )); done
  echo "$(( 100 * idle / (idle + busy) ))% idle"
}

# The origin: nginx answering every path with the same 1 KiB, cacheable for
# ten minutes; its access log counts the requests that reached it.
origin_port=$(free_port)
mkdir -p "$work/nginx/www"
head -c 1024 /dev/zero | tr '\0' x > "$work/nginx/www/object"
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $work/nginx/access.log;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$origin_port;
    root $work/nginx/www;
    location / { try_files /object =404; expires 10m; default_type text/plain; }
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off; master_process off;' &
origin_requests() { [ -f "$work/nginx/access.log" ] && wc -l < "$work/nginx/access.log" || echo 0; }

# The instances: the release binary with deploy/instance.example.toml.
declare -A instance_pid instance_port
start_instance() {
  local name=$1
  "$FETCHPROXY" serve --config deploy/instance.example.toml \
    --listen "127.0.0.1:${instance_port[$name]}" --via-name "fetchproxy-$name" \
    --allow-dest 127.0.0.0/8 --access-log "$work/$name.access.log" \
    2>>"$work/$name.log" &
  instance_pid[$name]=$!
}
# HAProxy's checks answered by instance $1 so far (its access log).
checks() {
  local n
  n=$(grep -c ' GET /healthz 200 ' "$work/$1.access.log" 2>/dev/null) || true
  echo "${n:-0}"
}

# HAProxy with deploy/haproxy.cfg: the addresses of this run, a maxconn
# within this machine's open-files limit, no chroot, user or daemon mode.
start_haproxy() {
  local names=("$@") front
  front=$(free_port)
  python3 - "$work" "$front" "${names[@]}" <<'PY'
import sys
work, front, names = sys.argv[1], sys.argv[2], sys.argv[3:]
ports = dict(line.split() for line in open(f"{work}/ports"))
cfg = open("deploy/haproxy.cfg").read()
for old, new in [
    ("    log /dev/log local0\n", ""), ("    log /dev/log local1 notice\n", ""),
    ("    chroot /var/lib/haproxy\n", ""), ("    user haproxy\n", ""),
    ("    group haproxy\n", ""), ("    daemon\n", ""),
    ("/run/haproxy/admin.sock mode 660", f"{work}/admin.sock mode 600"),
    ("    maxconn 20000\n", "    maxconn 4000\n"),
    ("    bind :3128\n", f"    bind 127.0.0.1:{front}\n"),
]:
    assert cfg.count(old) == 1, old
    cfg = cfg.replace(old, new)
for n, name in enumerate("abc"):
    line = f"    server {name} 127.0.0.1:{3129 + n} id {n + 1}\n"
    assert cfg.count(line) == 1, line
    new = f"    server {name} 127.0.0.1:{ports[name]} id {n + 1}\n" if name in names else ""
    cfg = cfg.replace(line, new)
open(f"{work}/haproxy.cfg", "w").write(cfg)
PY
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  haproxy_pid=$!
  haproxy_addr="127.0.0.1:$front"
  for name in "${names[@]}"; do wait_for_state "$name" 2; done
}

# HAProxy's operational state of a server (2: up, 0: down).
server_state() {
  python3 - "$work/admin.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError:
    print("none"); sys.exit()
s.sendall(b"show servers state fetchproxy\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
for line in data.decode().splitlines():
    f = line.split()
    if len(f) > 5 and f[3] == sys.argv[2]:
        print(f[5])
PY
}
wait_for_state() {
  local i
  for i in $(seq 300); do
    [ "$(server_state "$1")" = "$2" ] && return 0
    sleep 0.1
  done
  echo "fleet-bench: HAProxy never had $1 in state $2" >&2
  exit 1
}

# wrk through HAProxy: absolute-form GETs for $urls URLs, each thread going
# through them in order from its own starting point.
cat > "$work/urls.lua" <<EOF
local counter = 0
local thread_id = 0
function setup(thread) thread_id = thread_id + 1; thread:set("offset", thread_id * 7919) end
function request()
  counter = counter + 1
  local url = "http://127.0.0.1:$origin_port/fleet/" .. ((counter + offset) % $urls)
  return wrk.format("GET", url, { Host = "127.0.0.1:$origin_port" })
end
EOF
# Runs wrk for $1 seconds; sets requests, rate, failed.
load() {
  local out
  out=$(wrk -t2 -c"$connections" -d"$1"s --timeout 10s -s "$work/urls.lua" "http://$haproxy_addr/")
  requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
  rate=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
  local non2xx errors
  non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' <<<"$out")
  errors=$(sed -n 's/^ *Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1+\2+\3+\4/p' <<<"$out")
  failed=$(( ${non2xx:-0} + ${errors:-0} ))
}
# The hit ratio of a run from the origin's request count before and after it.
# (Requests still in flight when wrk stops reached the origin without being
# counted by wrk: with no cache the ratio is a hair below 0, shown as 0.)
hit_ratio() { python3 -c "print(f'{max(0.0, 100 * (1 - ($2 - $1) / $3)):.1f}%')"; }
stop_fleet() {
  kill -TERM "$haproxy_pid" 2>/dev/null || true
  for name in "$@"; do kill -TERM "${instance_pid[$name]}" 2>/dev/null || true; done
  wait "$haproxy_pid" 2>/dev/null || true
  for name in "$@"; do wait "${instance_pid[$name]}" 2>/dev/null || true; done
}

for name in a b c; do
  instance_port[$name]=$(free_port)
  echo "$name ${instance_port[$name]}" >> "$work/ports"
done

echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "commit:  $(git describe --always --dirty 2>/dev/null || echo 'not a git checkout'), binary $FETCHPROXY"
echo "haproxy: $(haproxy -v | head -1 | cut -d' ' -f3)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min), CPUs $(idle_share) before"
echo "wrk:     2 threads, $connections connections, $urls URLs of 1 KiB, ${run_seconds} s a run"
echo

# 1. Throughput: one instance, then three.
start_instance a
start_haproxy a
if curl -s -o /dev/null -D - --max-time 10 -x "http://$haproxy_addr" \
  "http://127.0.0.1:$origin_port/fleet/probe" | grep -qi '^cache-status:'; then
  echo "cache:   on (responses carry Cache-Status)"
else
  echo "cache:   none in this build (every request reaches the origin)"
fi
load 3 # warm-up: connections, caches
o1=$(origin_requests); load "$run_seconds"; o2=$(origin_requests)
echo "1 instance:  $rate req/s through HAProxy, $failed failed, hit ratio $(hit_ratio "$o1" "$o2" "$requests") ($(( o2 - o1 )) origin requests)"
stop_fleet a

for name in a b c; do start_instance "$name"; done
start_haproxy a b c
load 3
o1=$(origin_requests); load "$run_seconds"; o2=$(origin_requests)
echo "3 instances: $rate req/s through HAProxy, $failed failed, hit ratio $(hit_ratio "$o1" "$o2" "$requests") ($(( o2 - o1 )) origin requests)"

# 2. Losing one instance: its URLs move to the others, which must fetch
# them once before they hit again.
kill -KILL "${instance_pid[b]}"
wait "${instance_pid[b]}" 2>/dev/null || true
wait_for_state b 0
o1=$(origin_requests); load "$run_seconds"; o2=$(origin_requests)
echo "b killed:    $rate req/s through HAProxy, $failed failed, hit ratio $(hit_ratio "$o1" "$o2" "$requests") ($(( o2 - o1 )) origin requests in the first $run_seconds s)"
start_instance b
wait_for_state b 2

# 3. A rolling restart under load: SIGTERM, wait for the exit, start
# again, wait until the new process has answered HAProxy's checks (rise 2)
# and HAProxy has it up, next.
load_seconds=40
out="$work/roll.wrk"
wrk -t2 -c"$connections" -d"${load_seconds}"s --timeout 10s -s "$work/urls.lua" \
  "http://$haproxy_addr/" >"$out" &
wrk_pid=$!
o1=$(origin_requests)
sleep 3
for name in a b c; do
  started=$(date +%s.%N)
  kill -TERM "${instance_pid[$name]}"
  wait "${instance_pid[$name]}" && code=0 || code=$?
  drained=$(date +%s.%N)
  before=$(checks "$name")
  start_instance "$name"
  for i in $(seq 200); do [ "$(checks "$name")" -ge $(( before + 2 )) ] && break; sleep 0.1; done
  wait_for_state "$name" 2
  echo "  $name: SIGTERM, exit $code after $(python3 -c "print(f'{$drained - $started:.1f}')") s, up again after $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s"
done
kill -0 "$wrk_pid" 2>/dev/null || echo "fleet-bench: the restarts outlasted the load" >&2
wait "$wrk_pid"
requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$out")
non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$out")
errors=$(sed -n 's/^ *Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1+\2+\3+\4/p' "$out")
failed=$(( ${non2xx:-0} + ${errors:-0} ))
o2=$(origin_requests)
echo "rolling restart of 3 under load: $requests requests in ${load_seconds} s, $failed failed, $(( o2 - o1 )) origin requests"
grep -E "Socket errors|Non-2xx" "$out" || true
stop_fleet a b c
kill -TERM "$(cat "$work/nginx/nginx.pid")" 2>/dev/null || true
wait 2>/dev/null || true
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$failed" -eq 0 ]
