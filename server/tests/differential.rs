//! Differential suite: the etcdctl scenarios in tests/etcdctl/*.txt run against real etcd
//! 3.5.1 and against etch, each on a fresh server; outputs must match after normalising
//! only ids and terms.
//!
//! Scenario format: `$ ARGS…` is one etcdctl invocation (arguments split on spaces, with
//! 'single quotes' grouping); a command ending in `<<EOF` takes the following lines up to
//! `EOF` as its standard input. `#` starts a comment line. Blank lines separate nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Etch, RealEtcd, etcd_bin_dir};

struct Step {
    line: usize,
    args: Vec<String>,
    stdin: Option<String>,
}

fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in s.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {s:?}");
    if any {
        out.push(cur);
    }
    out
}

fn parse(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, l)) = lines.next() {
        let l = l.trim_end();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let cmd = l
            .strip_prefix("$ ")
            .unwrap_or_else(|| panic!("line {}: expected `$ command`, got {l:?}", i + 1));
        let (cmd, stdin) = match cmd.strip_suffix("<<EOF") {
            Some(c) => {
                let mut body = String::new();
                loop {
                    let (_, b) = lines
                        .next()
                        .unwrap_or_else(|| panic!("line {}: unterminated <<EOF", i + 1));
                    if b == "EOF" {
                        break;
                    }
                    body.push_str(b);
                    body.push('\n');
                }
                (c.trim_end(), Some(body))
            }
            None => (cmd, None),
        };
        steps.push(Step {
            line: i + 1,
            args: split_args(cmd),
            stdin,
        });
    }
    steps
}

/// Replaces the value of `"field":NUMBER` (JSON) and `field : NUMBER` (fields output).
fn mask_number(s: &str, field: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let pats = [format!("\"{field}\":"), format!("\"{field}\" : ")];
    loop {
        let found = pats
            .iter()
            .filter_map(|p| rest.find(p.as_str()).map(|i| (i, p.len())))
            .min();
        let Some((i, plen)) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i + plen]);
        rest = &rest[i + plen..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        out.push('N');
        rest = &rest[digits..];
    }
}

fn normalise(stdout: &str, stderr: &str, code: Option<i32>) -> String {
    let mut s = stdout.to_string();
    for f in [
        "cluster_id",
        "member_id",
        "raft_term",
        "ClusterID",
        "MemberID",
        "RaftTerm",
    ] {
        s = mask_number(&s, f);
    }
    // etcdctl's own client logs carry timestamps and pointers; its verdict line does not.
    let errs: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    format!("exit {code:?}\n{s}{}", errs.join("\n"))
}

fn etcdctl(bin: &Path, endpoint: &str, step: &Step) -> String {
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(&step.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running etcdctl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(input) = &step.stdin {
            stdin.write_all(input.as_bytes()).expect("writing stdin");
        }
    }
    let out = child.wait_with_output().expect("etcdctl output");
    normalise(
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
        out.status.code(),
    )
}

fn run_scenario(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/etcdctl")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("reading the scenario");
    let steps = parse(&text);
    assert!(!steps.is_empty(), "{name} has no steps");
    let bin = etcd_bin_dir().join("etcdctl");
    let etcd = RealEtcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let etch = Etch::start(&dir.path().join("data"), &[]);
    let mut mismatches = Vec::new();
    for step in &steps {
        let want = etcdctl(&bin, &etcd.endpoint(), step);
        let got = etcdctl(&bin, &etch.endpoint(), step);
        if want != got {
            mismatches.push(format!(
                "{name}:{} $ {}\n--- etcd 3.5.1\n{want}\n--- etch\n{got}\n",
                step.line,
                step.args.join(" ")
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} steps differ:\n{}",
        mismatches.len(),
        steps.len(),
        mismatches.join("\n")
    );
}

#[test]
fn kv_scenarios() {
    run_scenario("kv.txt");
}

#[test]
fn txn_scenarios() {
    run_scenario("txn.txt");
}

#[test]
fn errors_scenarios() {
    run_scenario("errors.txt");
}

#[test]
fn parser_and_normaliser() {
    assert_eq!(split_args("put 'a b' c"), vec!["put", "a b", "c"]);
    assert_eq!(split_args("put k ''"), vec!["put", "k", ""]);
    assert_eq!(
        mask_number(
            r#"{"cluster_id":123,"revision":5,"raft_term":2}"#,
            "cluster_id"
        ),
        r#"{"cluster_id":N,"revision":5,"raft_term":2}"#
    );
    let steps = parse("# c\n$ txn <<EOF\na\n\nb\nEOF\n$ get x\n");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].stdin.as_deref(), Some("a\n\nb\n"));
}
