#!/usr/bin/env bash
# Services benchmark, on 127.0.0.1 only:
#  1. hello-http (examples/hello-http) served by a Skyclaw host against
#     `wasmtime serve -Scli` 48.0.8 on the same component (the anchor), with
#     the same wrk load (-t2, BENCH_CONNECTIONS connections, --latency),
#     alternating skyclaw, wasmtime, skyclaw, wasmtime: requests/s and
#     p50/p99 per round, and the skyclaw/wasmtime throughput ratio;
#  2. how long `skyclaw deploy` takes: examples/ts-api the first time (npm ci
#     and tsc included), unchanged (a no-op), changed (a new version rolled out
#     to healthy), and hello-http (a wasi-http service to healthy);
#  3. the host daemon's memory (VmRSS) idle, with 100 idle wasi-http services,
#     and with 20 native ones (their node processes counted apart).
#
# Run from anywhere in the repository, as root (native instances need job
# users; wrk is apt-get installed when missing):
#
#     bash bench/services.sh
#
# wasmtime 48.0.8 is taken from WASMTIME (a path), else from PATH when it is
# that version, else installed with `cargo install wasmtime-cli --version
# 48.0.8 --locked` into target/bench-tools (slow the first time). Knobs:
# BENCH_SECONDS (default 10) per round, BENCH_CONNECTIONS (default 32).
# Everything it started is stopped on exit.
set -euo pipefail

seconds=${BENCH_SECONDS:-10}
connections=${BENCH_CONNECTIONS:-32}
threads=2
rounds=2
wasmtime_version=48.0.8
token=bench-token-0123456789abcdef

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && git rev-parse --show-toplevel)
say() { echo "services.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- what is needed -------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root: native instances run as job users of their own"
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null || die "cannot install wrk"
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed for examples/ts-api"

wasmtime=${WASMTIME:-}
if [ -z "$wasmtime" ] && command -v wasmtime >/dev/null \
    && wasmtime --version | grep -q " $wasmtime_version"; then
    wasmtime=$(command -v wasmtime)
fi
if [ -z "$wasmtime" ]; then
    tools="$repo/target/bench-tools"
    if [ ! -x "$tools/bin/wasmtime" ]; then
        say "installing wasmtime-cli $wasmtime_version into $tools (once)"
        cargo install wasmtime-cli --version "$wasmtime_version" --locked --root "$tools" >&2
    fi
    wasmtime="$tools/bin/wasmtime"
fi
"$wasmtime" --version | grep -q " $wasmtime_version" || die "$wasmtime is not wasmtime $wasmtime_version"

say "building skyclaw and hello-http"
(cd "$repo" && cargo build --release --quiet -p skyclaw)
skyclaw="$repo/target/release/skyclaw"
(cd "$repo/examples/hello-http" && cargo build --release --quiet --target wasm32-wasip2)
wasm="$repo/examples/hello-http/target/wasm32-wasip2/release/hello_http.wasm"
[ -f "$wasm" ] || die "no $wasm"

# --- the network ----------------------------------------------------------------
tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 300); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$1 never answered"
}

coord_port=$(free_port)
url="http://127.0.0.1:$coord_port"
"$skyclaw" coordinator --listen "127.0.0.1:$coord_port" --data-dir "$tmp/coord" \
    --token "$token" 2>"$tmp/coord.log" &
pids+=($!)
wait_http "$url/health"
"$skyclaw" host --coordinator "$url" --token "$token" --data-dir "$tmp/host" \
    --allow-commands node --service-ports 20000-20299 2>"$tmp/host.log" &
host_pid=$!
pids+=($host_pid)
export SKYCLAW_COORDINATOR_URLS=$url SKYCLAW_TOKEN=$token
for _ in $(seq 1 100); do
    "$skyclaw" hosts ls 2>/dev/null | grep -q up && break
    sleep 0.1
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Sum of VmRSS of every process whose parent chain reaches $1, $1 excluded.
children_rss_kib() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
parents, rss = {}, {}
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        with open(f'/proc/{pid}/status') as f:
            fields = dict(l.split(':', 1) for l in f if ':' in l)
        parents[int(pid)] = int(fields['PPid'])
        rss[int(pid)] = int(fields.get('VmRSS', '0 kB').split()[0])
    except (OSError, KeyError, ValueError):
        pass
def under(pid):
    while pid > 1:
        pid = parents.get(pid, 0)
        if pid == root:
            return True
    return False
print(sum(v for p, v in rss.items() if under(p)))
PY
}
idle_rss=$(rss_kib "$host_pid")

# --- 2. deploy timings ----------------------------------------------------------
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
cp -r "$repo/examples/ts-api" "$tmp/ts-api"
rm -rf "$tmp/ts-api/node_modules" "$tmp/ts-api/dist"
start=$(date +%s%N); "$skyclaw" deploy "$tmp/ts-api" >/dev/null; first_ms=$(ms "$start")
start=$(date +%s%N); "$skyclaw" deploy "$tmp/ts-api" >/dev/null; unchanged_ms=$(ms "$start")
sed -i 's/GREETING = "hello"/GREETING = "hi"/' "$tmp/ts-api/skyclaw.toml"
start=$(date +%s%N); "$skyclaw" deploy "$tmp/ts-api" >/dev/null; changed_ms=$(ms "$start")
start=$(date +%s%N); "$skyclaw" deploy "$repo/examples/hello-http" >/dev/null; wasi_ms=$(ms "$start")
# The part of a ts-api deploy that is its own build (npm ci, tsc).
start=$(date +%s%N); (cd "$tmp/ts-api" && sh -c 'npm ci && npm run build' >/dev/null 2>&1); build_ms=$(ms "$start")

# --- 1. hello-http against wasmtime serve -------------------------------------
endpoint=$("$skyclaw" services get hello-http --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(next(i["endpoint"] for i in s["instances"] if i["state"] == "healthy"))')
wasmtime_port=$(free_port)
"$wasmtime" serve -Scli --addr "127.0.0.1:$wasmtime_port" "$wasm" 2>"$tmp/wasmtime.log" &
pids+=($!)
wait_http "http://127.0.0.1:$wasmtime_port/"
curl -sf "$endpoint/" >/dev/null || die "hello-http does not answer at $endpoint"

# wrk's figures of one round: "requests/s p50_ms p99_ms non2xx".
run_wrk() {
    local out
    out=$(wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency "$1")
    python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(label):
    m = re.search(rf'^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$', out, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value * {'us': 0.001, 'ms': 1, 's': 1000}[unit]
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
bad = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', out)
errors = re.search(r'Socket errors:.*', out)
print(f"{rps:.0f} {ms(50):.3f} {ms(99):.3f} {bad.group(1) if bad else 0} {'socket errors' if errors else ''}")
PY
}
say "wrk: ${seconds}s rounds, $connections connections, $threads threads"
sky_total=0; wt_total=0
for round in $(seq 1 $rounds); do
    read -r rps p50 p99 bad rest <<<"$(run_wrk "$endpoint/")"
    printf 'round %d  skyclaw   %8s req/s  p50 %7s ms  p99 %7s ms  non-2xx %s %s\n' "$round" "$rps" "$p50" "$p99" "$bad" "$rest"
    sky_total=$((sky_total + rps))
    read -r rps p50 p99 bad rest <<<"$(run_wrk "http://127.0.0.1:$wasmtime_port/")"
    printf 'round %d  wasmtime  %8s req/s  p50 %7s ms  p99 %7s ms  non-2xx %s %s\n' "$round" "$rps" "$p50" "$p99" "$bad" "$rest"
    wt_total=$((wt_total + rps))
done
python3 -c "print(f'skyclaw/wasmtime throughput: {$sky_total/$wt_total:.2f}x')"

# --- 3. memory --------------------------------------------------------------------
service_spec() {
    "$skyclaw" services get "$1" --json | python3 -c '
import json, sys
spec = json.load(sys.stdin)["current"]["spec"]
spec["replicas"] = 1
print(json.dumps(spec))'
}
put() {
    curl -sf -X PUT -H "x-skyclaw-token: $token" -H 'content-type: application/json' \
        --data "$2" "$url/v1/services/$1" >/dev/null
}
healthy_count() {
    curl -sf -H "x-skyclaw-token: $token" "$url/v1/services" | python3 -c '
import json, sys
prefix = sys.argv[1]
print(sum(1 for s in json.load(sys.stdin)["services"] if s["name"].startswith(prefix)
          for i in s["instances"] if i["state"] == "healthy"))' "$1"
}
wait_healthy() {
    for _ in $(seq 1 600); do
        [ "$(healthy_count "$1")" -ge "$2" ] && return 0
        sleep 0.2
    done
    die "$2 instances of $1* never became healthy"
}
wait_no_instances() {
    for _ in $(seq 1 600); do
        [ "$(children_rss_kib "$host_pid")" = 0 ] && return 0
        sleep 0.2
    done
}
wasi_spec=$(service_spec hello-http)
native_spec=$(service_spec ts-api)
"$skyclaw" services rm ts-api >/dev/null
"$skyclaw" services rm hello-http >/dev/null
wait_no_instances
for i in $(seq 1 100); do put "hello-$i" "$wasi_spec"; done
wait_healthy hello- 100
sleep 2
wasi_rss=$(rss_kib "$host_pid")
for i in $(seq 1 100); do "$skyclaw" services rm "hello-$i" >/dev/null; done
for i in $(seq 1 20); do put "api-$i" "$native_spec"; done
wait_healthy api- 20
sleep 2
native_rss=$(rss_kib "$host_pid")
native_children=$(children_rss_kib "$host_pid")

echo
echo "deploy ts-api, first (npm ci + tsc + upload + 2 healthy): ${first_ms} ms"
echo "deploy ts-api, unchanged (no-op):                        ${unchanged_ms} ms"
echo "deploy ts-api, changed (new version, 2 healthy):         ${changed_ms} ms"
echo "deploy hello-http (wasi-http, healthy):                  ${wasi_ms} ms"
echo "  (ts-api's own build, npm ci && npm run build, alone:     ${build_ms} ms)"
echo
echo "host RSS idle:                          $((idle_rss / 1024)) MiB"
echo "host RSS, 100 idle wasi-http services:  $((wasi_rss / 1024)) MiB"
echo "host RSS, 20 native services:           $((native_rss / 1024)) MiB (their node processes: $((native_children / 1024)) MiB)"
