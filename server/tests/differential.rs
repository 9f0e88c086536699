//! Differential suite: the etcdctl scenarios in tests/etcdctl/*.txt run against real etcd
//! 3.5.1 and against etch, each on a fresh server; outputs must match after normalising
//! only ids and terms.
//!
//! Scenario format: `$ ARGS…` is one etcdctl invocation (arguments split on spaces, with
//! 'single quotes' grouping); a command ending in `<<EOF` takes the following lines up to
//! `EOF` as its standard input. `#` starts a comment line. Blank lines separate nothing.
//! A command that does not end by itself (watch, elect) starts with `lines=N`: it runs
//! until it has printed N lines (or 15 s), a little longer to show any extra line, and is
//! then killed; what it printed is compared. In arguments, `$TMP` is a scratch dir of the
//! server's run, `$PEER` its peer URL and `$LEASE` the lease it granted last.
//!
//! What is normalised, because it must differ between two servers (and nothing else):
//! cluster, member and lease ids (decimal JSON fields, and hex ids of 12+ digits in text
//! and keys), raft terms and indexes, the reported version (etch reports 3.6.0 on
//! purpose), db sizes, durations ("took"), remaining lease TTLs (wall-clock), and each
//! server's client URL, peer URL and scratch dir.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Etch, RealEtcd, etcd_bin_dir};

struct Step {
    line: usize,
    args: Vec<String>,
    stdin: Option<String>,
    /// Run until this many lines are printed, then kill.
    lines: Option<usize>,
}

/// What differs between the two servers' runs, replaced by placeholders.
struct Ctx {
    endpoint: String,
    peer: String,
    tmp: String,
    /// The hex id of the lease granted last (`$LEASE` in arguments).
    lease: String,
}

impl Ctx {
    fn arg(&self, a: &str) -> String {
        a.replace("$TMP", &self.tmp)
            .replace("$PEER", &self.peer)
            .replace("$LEASE", &self.lease)
    }

    /// Remembers the id from etcdctl's "lease ID granted with TTL(…)".
    fn note_lease(&mut self, stdout: &str) {
        for l in stdout.lines() {
            if let Some(rest) = l.strip_prefix("lease ")
                && let Some((id, _)) = rest.split_once(" granted with TTL(")
            {
                self.lease = id.to_string();
            }
        }
    }
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
        let mut args = split_args(cmd);
        let lines = match args.first().and_then(|a| a.strip_prefix("lines=")) {
            Some(n) => {
                let n = n
                    .parse()
                    .unwrap_or_else(|_| panic!("line {}: bad lines=N", i + 1));
                args.remove(0);
                Some(n)
            }
            None => None,
        };
        steps.push(Step {
            line: i + 1,
            args,
            stdin,
            lines,
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
        if digits > 0 {
            out.push('N');
        }
        rest = &rest[digits..];
    }
}

/// Replaces the value of `"field":"STRING"` (JSON).
fn mask_string(s: &str, field: &str) -> String {
    let pat = format!("\"{field}\":\"");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(&pat) {
        out.push_str(&rest[..i + pat.len()]);
        rest = &rest[i + pat.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.push('S');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces every run of 12 or more hex digits standing alone (an id printed in hex)
/// by `<ID>`.
fn mask_hex_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if token.len() >= 12 && token.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<ID>");
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// Sorts the keys a lease lists (`attached keys([b a])`, `"keys":["Yg==","YQ=="]`): etcd
/// lists them in the order of a Go map, which is random.
fn sort_lease_keys(s: &str) -> String {
    let mut out = s.to_string();
    for (open, close, sep) in [("attached keys([", "])", " "), ("\"keys\":[", "]", ",")] {
        let mut from = 0;
        while let Some(i) = out[from..].find(open) {
            let start = from + i + open.len();
            let Some(len) = out[start..].find(close) else {
                break;
            };
            let mut items: Vec<&str> = out[start..start + len].split(sep).collect();
            items.sort_unstable();
            let sorted = items.join(sep);
            out.replace_range(start..start + len, &sorted);
            from = start + sorted.len();
        }
    }
    out
}

/// Replaces what follows `prefix` up to the first of `ends` by `N`.
fn mask_after(s: &str, prefix: &str, ends: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i + prefix.len()]);
        rest = &rest[i + prefix.len()..];
        let end = rest.find(ends).unwrap_or(rest.len());
        out.push('N');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn normalise(stdout: &str, stderr: &str, verdict: &str, ctx: &Ctx) -> String {
    let mut s = stdout
        .replace(&ctx.endpoint, "ENDPOINT")
        .replace(&ctx.peer, "PEER")
        .replace(&ctx.tmp, "$TMP");
    for f in [
        "cluster_id",
        "member_id",
        "raft_term",
        "ClusterID",
        "MemberID",
        "RaftTerm",
        // lease and member ids
        "id",
        "ID",
        "leader",
        // endpoint status
        "dbSize",
        "dbSizeInUse",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "lease",
        // lease timetolive: the remaining TTL depends on the clock
        "ttl",
    ] {
        s = mask_number(&s, f);
    }
    for f in ["version", "took"] {
        s = mask_string(&s, f);
    }
    s = mask_after(&s, "took = ", &['\n']);
    s = mask_after(&s, "remaining(", &[')']);
    // endpoint status as a table row: ENDPOINT, id, version, db size, is leader, is
    // learner, raft term, raft index, raft applied index, errors.
    s = s
        .lines()
        .map(|l| match l.strip_prefix("ENDPOINT, ") {
            Some(rest) => {
                let mut cols: Vec<&str> = rest.split(", ").collect();
                for i in [1, 2, 5, 6, 7] {
                    if let Some(c) = cols.get_mut(i) {
                        *c = "N";
                    }
                }
                format!("ENDPOINT, {}\n", cols.join(", "))
            }
            None => format!("{l}\n"),
        })
        .collect();
    s = sort_lease_keys(&s);
    s = mask_hex_ids(&s);
    // etcdctl's own client logs carry timestamps and pointers; its verdict line does not.
    let errs: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    let errs = mask_hex_ids(
        &errs
            .join("\n")
            .replace(&ctx.endpoint, "ENDPOINT")
            .replace(&ctx.tmp, "$TMP"),
    );
    format!("{verdict}\n{s}{errs}")
}

fn etcdctl(bin: &Path, ctx: &mut Ctx, step: &Step) -> String {
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", ctx.endpoint))
        .arg("--command-timeout=10s")
        .args(step.args.iter().map(|a| ctx.arg(a)))
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
    let Some(want_lines) = step.lines else {
        let out = child.wait_with_output().expect("etcdctl output");
        ctx.note_lease(&String::from_utf8_lossy(&out.stdout));
        return normalise(
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
            &format!("exit {:?}", out.status.code()),
            ctx,
        );
    };
    // Read until enough lines, then give extra lines a moment to show, then kill.
    use std::io::{BufRead, Read};
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let out_thread = std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while got.len() < want_lines {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let _ = out_thread.join();
    got.extend(rx.try_iter());
    let stderr = err_thread.join().unwrap_or_default();
    let mut stdout = got.join("\n");
    stdout.push('\n');
    normalise(&stdout, &stderr, &format!("{} lines", got.len()), ctx)
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
    // etch with a peer URL of the same form as the reference etcd's.
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let cluster = format!("default={peer}");
    let etch = Etch::start(
        &dir.path().join("data"),
        &[
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
        ],
    );
    let (etcd_tmp, etch_tmp) = (dir.path().join("etcd-tmp"), dir.path().join("etch-tmp"));
    for d in [&etcd_tmp, &etch_tmp] {
        std::fs::create_dir(d).expect("scratch dir");
    }
    let mut etcd_ctx = Ctx {
        endpoint: etcd.endpoint(),
        peer: format!("http://127.0.0.1:{}", etcd.peer_port),
        tmp: etcd_tmp.display().to_string(),
        lease: String::new(),
    };
    let mut etch_ctx = Ctx {
        endpoint: etch.endpoint(),
        peer,
        tmp: etch_tmp.display().to_string(),
        lease: String::new(),
    };
    let mut mismatches = Vec::new();
    for step in &steps {
        let want = etcdctl(&bin, &mut etcd_ctx, step);
        let got = etcdctl(&bin, &mut etch_ctx, step);
        // ETCH_DIFF_SHOW=1 prints every answer, to write new scenarios from.
        if std::env::var_os("ETCH_DIFF_SHOW").is_some() {
            eprintln!("{name}:{} $ {}\n{want}", step.line, step.args.join(" "));
        }
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
fn watch_scenarios() {
    run_scenario("watch.txt");
}

#[test]
fn lease_scenarios() {
    run_scenario("lease.txt");
}

#[test]
fn cluster_scenarios() {
    run_scenario("cluster.txt");
}

#[test]
fn maintenance_scenarios() {
    run_scenario("maintenance.txt");
}

#[test]
fn auth_scenarios() {
    run_scenario("auth.txt");
}

#[test]
fn auth_rbac_scenarios() {
    run_scenario("auth_rbac.txt");
}

#[test]
fn concurrency_scenarios() {
    run_scenario("concurrency.txt");
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
    let steps = parse("# c\n$ txn <<EOF\na\n\nb\nEOF\n$ get x\n$ lines=3 watch a\n");
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].stdin.as_deref(), Some("a\n\nb\n"));
    assert_eq!(
        (steps[2].lines, steps[2].args.clone()),
        (Some(3), vec!["watch".to_string(), "a".to_string()])
    );
    let ctx = Ctx {
        endpoint: "http://127.0.0.1:1".into(),
        peer: "http://127.0.0.1:2".into(),
        tmp: "/t".into(),
        lease: String::new(),
    };
    assert_eq!(
        normalise(
            "lease 694d7a3b2c1d0e0f granted with TTL(10s), remaining(9s)\nhttp://127.0.0.1:1 is healthy: took = 2.1ms\n[{\"took\":\"1ms\",\"id\":12}]\n",
            "",
            "exit Some(0)",
            &ctx
        ),
        "exit Some(0)\nlease <ID> granted with TTL(10s), remaining(N)\nENDPOINT is healthy: took = N\n[{\"took\":\"S\",\"id\":N}]\n"
    );
    assert_eq!(
        normalise(
            "http://127.0.0.1:1, 8e9e05c52164694d, 3.5.1, 25 kB, true, false, 2, 12, 12, \n",
            "",
            "",
            &ctx
        ),
        "\nENDPOINT, <ID>, N, N, true, false, N, N, N, \n"
    );
    assert_eq!(mask_hex_ids("k/abc k/0123456789ab"), "k/abc k/<ID>");
    assert_eq!(
        sort_lease_keys("attached keys([b a c]) {\"keys\":[\"Yg==\",\"YQ==\"]}"),
        "attached keys([a b c]) {\"keys\":[\"YQ==\",\"Yg==\"]}"
    );
}
