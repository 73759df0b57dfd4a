#!/usr/bin/env bash
# Cluster benchmark: durable job submissions/s and p50/p99 commit latency of a
# 3-node Skyclaw coordinator cluster, side by side with a 3-member etcd 3.4
# cluster (the anchor: wrk POST /v3/kv/put), in one run on 127.0.0.1 only.
#
# Run from anywhere in the repository, as root (it apt-get installs wrk and
# etcd-server when missing):
#
#     bash bench/cluster.sh
#
# It builds `skyclaw` in release, starts the etcd anchor
# (../shared/anchors/etcd-cluster.sh beside the repository) and three
# coordinators in temp dirs on free ports (each joining once the one before is a
# voter), waits until every peer list shows three voters and the same leader,
# then runs the same wrk load (-t2, 64 connections,
# --latency) against each leader, alternating etcd, skyclaw, etcd, skyclaw:
# these machines are noisy, so only the ratios taken together mean anything.
# Writes go to the leader directly. It prints requests/s and p50/p99 latency per
# round, the skyclaw/etcd throughput ratio, and the non-2xx count (a non-2xx
# submission was not durable; the run then exits non-zero). Everything it
# started is stopped on exit. Knobs: BENCH_SECONDS (default 10) per round,
# BENCH_CONNECTIONS (default 64), BENCH_FORM_SECONDS (default 60) to wait for
# each cluster.
set -euo pipefail

seconds=${BENCH_SECONDS:-10}
connections=${BENCH_CONNECTIONS:-64}
threads=2
rounds=2
form_deadline=${BENCH_FORM_SECONDS:-60}
voters=3

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && git rev-parse --show-toplevel)
anchors="$repo/../shared/anchors"
submit_lua="$repo/bench/wrk-submit.lua"

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- what is needed -------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x "$anchors/etcd-cluster.sh" ] || die "no etcd anchor at $anchors/etcd-cluster.sh"
[ -f "$anchors/put.lua" ] || die "no put.lua at $anchors/put.lua"
[ -f "$submit_lua" ] || die "no $submit_lua"

say "building skyclaw (release)"
(cd "$repo" && cargo build --release -p skyclaw)
bin="${CARGO_TARGET_DIR:-$repo/target}/release/skyclaw"
[ -x "$bin" ] || die "no binary at $bin"

# --- stopping what we started -----------------------------------------------------
work=$(mktemp -d -t skyclaw-cluster-bench.XXXXXX)
sky_pids=()
etcd_anchor_pid=""
etcd_member_pids=()
wrk_pid=""

alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

# TERM the given pids, give them a few seconds, then KILL what is left.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + 5))
  while alive "$@" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -KILL "$@" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  # The anchor stops its etcd members on TERM; they are stopped by pid as well
  # in case it is caught mid-start.
  local pids=("${sky_pids[@]}")
  if [ -n "$wrk_pid" ]; then pids+=("$wrk_pid"); fi
  if [ -n "$etcd_anchor_pid" ]; then
    pids+=("$etcd_anchor_pid" "${etcd_member_pids[@]}")
    mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$etcd_anchor_pid" -x etcd)
  fi
  stop_pids "${pids[@]}"
  wait 2>/dev/null
  if [ $rc -eq 0 ]; then
    rm -rf "$work"
  else
    say "logs kept in $work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers ---------------------------------------------------------------------
# A base port such that BASE..BASE+N-1 are all free on 127.0.0.1 (below the
# ephemeral range, so outgoing connections do not take them meanwhile).
free_port_base() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(1000):
    base = random.randrange(20000, 32000 - n)
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no free port range found")
PY
}

loopback_url() { [[ $1 =~ ^http://127\.0\.0\.1:[0-9]+$ ]]; }

http() { curl -sS --noproxy '*' -m 5 "$@"; }

# leader_from URL N: prints the leader's URL if this node's peer list shows a
# leader and exactly N voters (the leader included); prints nothing otherwise.
leader_from() {
  http -f -H "x-skyclaw-token: $token" "$1/v1/network/peers" 2>/dev/null | python3 -c '
import json, sys
want = int(sys.argv[1])
try:
    d = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
peers = d.get("peers") or []
voting = [p for p in peers if p.get("role") in ("leader", "voter")]
lead = [p for p in peers if p.get("role") == "leader" and p.get("id") == d.get("leader_id")]
if d.get("leader_id") is not None and len(voting) == want and len(lead) == 1:
    print(lead[0]["url"])
' "$2" || true
}

# wrk's time with its unit (us, ms, s, m) -> milliseconds.
to_ms() {
  awk -v t="$1" 'BEGIN {
    n = t + 0; u = t; sub(/^[0-9.]+/, "", u)
    f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
    if (f < 0) { print "?"; exit }
    printf "%.2f", n * f
  }'
}

# --- etcd anchor -------------------------------------------------------------------
etcd_base=$(free_port_base 6)
say "starting the 3-member etcd anchor on 127.0.0.1:$etcd_base-$((etcd_base + 5))"
: >"$work/etcd-anchor.out"
# TMPDIR: the anchor's own temp dir (data, logs) lands in ours.
TMPDIR="$work" bash "$anchors/etcd-cluster.sh" "$etcd_base" >"$work/etcd-anchor.out" 2>&1 &
etcd_anchor_pid=$!
etcd_url=""
deadline=$((SECONDS + form_deadline))
while [ -z "$etcd_url" ]; do
  etcd_url=$(sed -n 's/^etcd leader: \(http:[^ ]*\).*/\1/p' "$work/etcd-anchor.out" | head -n 1)
  [ -n "$etcd_url" ] && break
  alive "$etcd_anchor_pid" || { cat "$work/etcd-anchor.out" >&2; die "the etcd anchor exited"; }
  [ $SECONDS -lt $deadline ] || { cat "$work/etcd-anchor.out" >&2; die "etcd elected no leader in ${form_deadline}s"; }
  sleep 0.1
done
loopback_url "$etcd_url" || die "etcd leader URL $etcd_url is not on 127.0.0.1"
mapfile -t etcd_member_pids < <(pgrep -P "$etcd_anchor_pid" -x etcd || true)
code=$(http -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  -d '{"key":"Zm9v","value":"YmFy"}' "$etcd_url/v3/kv/put")
[ "$code" = 200 ] || die "etcd put answered $code"
say "etcd leader: $etcd_url"

# --- skyclaw cluster ---------------------------------------------------------------
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
sky_base=$(free_port_base 3)
say "starting 3 skyclaw coordinators on 127.0.0.1:$sky_base-$((sky_base + 2))"
sky_urls=()
sky_url=""

# wait_for_voters N: until every node started so far lists N voters and names
# the same leader; sets sky_url to the leader's URL.
wait_for_voters() {
  local want=$1 deadline=$((SECONDS + form_deadline)) seen u i
  while :; do
    seen=()
    for u in "${sky_urls[@]}"; do seen+=("$(leader_from "$u" "$want")"); done
    if [ -n "${seen[0]}" ] && [ "$(printf '%s\n' "${seen[@]}" | sort -u | wc -l)" -eq 1 ]; then
      sky_url=${seen[0]}
      return 0
    fi
    for i in "${!sky_pids[@]}"; do
      alive "${sky_pids[$i]}" || { tail -n 30 "$work/skyclaw-$((i + 1)).log" >&2; die "skyclaw node $((i + 1)) exited"; }
    done
    if [ $SECONDS -ge $deadline ]; then
      for u in "${sky_urls[@]}"; do
        say "$u/v1/network/peers: $(http -H "x-skyclaw-token: $token" "$u/v1/network/peers" 2>&1 || true)"
      done
      die "the skyclaw cluster showed no leader with $want voters in ${form_deadline}s"
    fi
    sleep 0.1
  done
}

# One at a time: each joins through node 1 once the one before it is a voter,
# so no join meets a membership change still in flight.
for n in $(seq 1 "$voters"); do
  port=$((sky_base + n - 1))
  url="http://127.0.0.1:$port"
  sky_urls+=("$url")
  args=(coordinator --node-id "$n" --listen "127.0.0.1:$port" --advertise "$url"
    --data-dir "$work/skyclaw-$n" --token "$token")
  if [ "$n" -gt 1 ]; then args+=(--bootstrap "${sky_urls[0]}"); fi
  "$bin" "${args[@]}" >"$work/skyclaw-$n.log" 2>&1 &
  sky_pids+=($!)
  wait_for_voters "$n"
done
loopback_url "$sky_url" || die "skyclaw leader URL $sky_url is not on 127.0.0.1"
code=$(http -o "$work/first-submit.json" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  -H "x-skyclaw-token: $token" -d '{"kind":"shell","command":"true"}' "$sky_url/v1/jobs")
[ "$code" = 201 ] || die "a submission to the leader answered $code: $(cat "$work/first-submit.json")"
say "skyclaw leader: $sky_url"

# --- load --------------------------------------------------------------------------
declare -A rps p50 p99 non2xx sockerr requests

# run_wrk NAME ROUND SCRIPT URL
run_wrk() {
  local name=$1 round=$2 script=$3 url=$4 out="$work/wrk-$1-$2.txt"
  say "round $round: $name ($url, ${seconds}s)"
  # In the background and waited for, so that Ctrl-C (which wrk catches to
  # print partial figures) still reaches our trap at once.
  SKYCLAW_TOKEN="$token" wrk -t"$threads" -c"$connections" -d"${seconds}s" --timeout 10s \
    --latency -s "$script" "$url" >"$out" 2>&1 &
  wrk_pid=$!
  if ! wait "$wrk_pid"; then
    cat "$out" >&2
    die "wrk failed against $name"
  fi
  wrk_pid=""
  rps[$name,$round]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50[$name,$round]=$(to_ms "$(awk '$1 == "50%" { print $2; exit }' "$out")")
  p99[$name,$round]=$(to_ms "$(awk '$1 == "99%" { print $2; exit }' "$out")")
  non2xx[$name,$round]=$(awk '/Non-2xx or 3xx responses:/ { print $NF; f = 1 } END { if (!f) print 0 }' "$out")
  sockerr[$name,$round]=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10; f = 1 } END { if (!f) print 0 }' "$out")
  requests[$name,$round]=$(awk '$2 == "requests" && $3 == "in" { print $1; exit }' "$out")
  [ -n "${rps[$name,$round]}" ] || { cat "$out" >&2; die "no Requests/sec in wrk's output"; }
}

for round in $(seq 1 "$rounds"); do
  run_wrk etcd "$round" "$anchors/put.lua" "$etcd_url/v3/kv/put"
  run_wrk skyclaw "$round" "$submit_lua" "$sky_url/v1/jobs"
done

# Jobs the leader holds, against the submissions that got a 2xx (the preflight
# one included): every acknowledged submission must be there.
acked=1
sky_non2xx=0
sky_sockerr=0
for round in $(seq 1 "$rounds"); do
  acked=$((acked + ${requests[skyclaw,$round]:-0} - ${non2xx[skyclaw,$round]}))
  sky_non2xx=$((sky_non2xx + ${non2xx[skyclaw,$round]}))
  sky_sockerr=$((sky_sockerr + ${sockerr[skyclaw,$round]}))
done
held=$(http "$sky_url/metrics" 2>/dev/null | awk '/^skyclaw_jobs[{ ]/ { s += $NF; f = 1 } END { if (f) print s }' || true)

# --- summary -----------------------------------------------------------------------
{
  echo
  echo "Cluster benchmark: 3-member etcd $(etcd --version 2>/dev/null | awk '/^etcd Version/ { print $3 }') vs 3-node skyclaw, wrk -t$threads -c$connections -d${seconds}s, 127.0.0.1, $(nproc) cores"
  printf '%-8s %5s %12s %9s %9s %8s %14s\n' system round requests/s "p50 ms" "p99 ms" non-2xx "socket errors"
  for round in $(seq 1 "$rounds"); do
    for name in etcd skyclaw; do
      printf '%-8s %5s %12s %9s %9s %8s %14s\n' "$name" "$round" "${rps[$name,$round]}" \
        "${p50[$name,$round]}" "${p99[$name,$round]}" "${non2xx[$name,$round]}" "${sockerr[$name,$round]}"
    done
  done
  ratios=""
  sum_e=0
  sum_s=0
  for round in $(seq 1 "$rounds"); do
    ratios+=$(awk -v s="${rps[skyclaw,$round]}" -v e="${rps[etcd,$round]}" -v r="$round" 'BEGIN { printf "round %s %.2f, ", r, s / e }')
    sum_e=$(awk -v a="$sum_e" -v b="${rps[etcd,$round]}" 'BEGIN { print a + b }')
    sum_s=$(awk -v a="$sum_s" -v b="${rps[skyclaw,$round]}" 'BEGIN { print a + b }')
  done
  overall=$(awk -v s="$sum_s" -v e="$sum_e" 'BEGIN { printf "%.2f", s / e }')
  echo "skyclaw/etcd throughput: ${ratios}all rounds $overall"
  echo "skyclaw non-2xx responses: $sky_non2xx; socket errors: $sky_sockerr"
  echo "skyclaw jobs held by the leader: ${held:-unknown} (submissions answered 2xx: $acked)"
} | tee "$work/summary.txt"

if [ "$sky_non2xx" -ne 0 ]; then
  say "INVALID: $sky_non2xx skyclaw submissions were refused, so its figure is not of durable submissions alone"
  exit 2
fi
if [ -n "${held:-}" ] && [ "$held" -lt "$acked" ]; then
  say "INVALID: the leader holds $held jobs but $acked submissions were acknowledged"
  exit 2
fi
