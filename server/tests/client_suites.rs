//! The etcd client libraries' own test suites, run against etcd 3.5.1 and against etch:
//! every test must fare the same on both (pass, fail or skip). The etcd-client crate's
//! (Rust, the version this workspace uses) and python-etcd3 0.12.0's (prereqs.sh
//! installs it). Both hard-code 127.0.0.1:2379, so these run one after the other.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

/// The script's verdict lines for one suite against one server.
fn run(suite: &str, server: &[&str]) -> BTreeSet<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/client_suites.sh");
    let out = Command::new(script)
        .arg(suite)
        .args(server)
        .output()
        .expect("running client_suites.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{suite} suite on {server:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

fn compare(suite: &str, extra: &[&str], passes_min: usize) {
    let etcd = common::etcd_bin_dir().join("etcd");
    let etcd = etcd.to_str().expect("utf-8 path");
    let mut etcd_cmd = vec![etcd];
    etcd_cmd.extend_from_slice(extra);
    let mut etch_cmd = vec![env!("CARGO_BIN_EXE_etch")];
    etch_cmd.extend_from_slice(extra);
    let want = run(suite, &etcd_cmd);
    let got = run(suite, &etch_cmd);
    let passed = want.iter().filter(|l| l.starts_with("PASS ")).count();
    assert!(
        passed >= passes_min,
        "only {passed} of the {suite} suite's tests pass on etcd 3.5.1: {want:#?}"
    );
    let only_etcd: Vec<_> = want.difference(&got).collect();
    let only_etch: Vec<_> = got.difference(&want).collect();
    assert!(
        only_etcd.is_empty() && only_etch.is_empty(),
        "{suite}: on etcd 3.5.1 only: {only_etcd:#?}\non etch only: {only_etch:#?}"
    );
}

#[test]
fn client_libraries_own_suites_fare_as_on_etcd() {
    // The etcd-client crate's tests expect a token TTL of 2 s.
    compare("rust", &["--auth-token-ttl=2"], 25);
    compare("python", &[], 60);
}
