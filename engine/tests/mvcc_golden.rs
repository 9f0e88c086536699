//! Data-driven tests: scripts in `tests/golden/*.txt` of MVCC operations, each followed by
//! the output it must print (lines starting with `> `). `ETCH_GOLDEN_UPDATE=1` rewrites the
//! expected output (review the diff before committing it).
//!
//! Commands (keys and values are plain words; `\0` stands for a zero byte):
//!   put KEY VALUE [lease=ID] [prev_kv] [ignore_value] [ignore_lease]
//!   del KEY [END] [prev_kv]
//!   get KEY [END] [rev=N] [limit=N] [order=asc|desc] [target=key|version|create|mod|value]
//!       [keys_only] [count_only] [min_mod=N] [max_mod=N] [min_create=N] [max_create=N]
//!   txn … end      with lines `cmp TARGET KEY OP ARG [end=END]`, `success`, `failure`
//!                  and put/del/get lines between them
//!   compact N [physical]
//!   events FROM KEY [END]
//!   grant ID TTL | revoke ID
//!   reopen

use std::path::Path;

use etch_engine::btree;
use etch_engine::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, Error, EventType, KeyValue,
    PutRequest, RangeRequest, RequestOp, ResponseOp, SortOrder, SortTarget, Store, TxnRequest,
};

fn bytes(s: &str) -> Vec<u8> {
    s.replace("\\0", "\0").into_bytes()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\0', "\\0")
}

fn show_kv(kv: &KeyValue) -> String {
    let lease = if kv.lease != 0 {
        format!(" lease={}", kv.lease)
    } else {
        String::new()
    };
    format!(
        "{}={} create={} mod={} ver={}{lease}",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    )
}

fn flag(words: &[&str], name: &str) -> bool {
    words.contains(&name)
}

fn opt(words: &[&str], name: &str) -> Option<i64> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn positional<'a>(words: &[&'a str]) -> Vec<&'a str> {
    words
        .iter()
        .copied()
        .filter(|w| {
            !w.contains('=')
                && !w.starts_with("prev_kv")
                && !w.starts_with("ignore_")
                && !w.ends_with("_only")
                && *w != "physical"
        })
        .collect()
}

fn parse_put(w: &[&str]) -> PutRequest {
    let p = positional(w);
    PutRequest {
        key: bytes(p[0]),
        value: p.get(1).map(|v| bytes(v)).unwrap_or_default(),
        lease: opt(w, "lease").unwrap_or(0),
        prev_kv: flag(w, "prev_kv"),
        ignore_value: flag(w, "ignore_value"),
        ignore_lease: flag(w, "ignore_lease"),
    }
}

fn parse_del(w: &[&str]) -> DeleteRangeRequest {
    let p = positional(w);
    DeleteRangeRequest {
        key: bytes(p[0]),
        range_end: p.get(1).map(|v| bytes(v)).unwrap_or_default(),
        prev_kv: flag(w, "prev_kv"),
    }
}

fn parse_get(w: &[&str]) -> RangeRequest {
    let p = positional(w);
    let order = w.iter().find_map(|x| x.strip_prefix("order="));
    let target = w.iter().find_map(|x| x.strip_prefix("target="));
    RangeRequest {
        key: bytes(p[0]),
        range_end: p.get(1).map(|v| bytes(v)).unwrap_or_default(),
        limit: opt(w, "limit").unwrap_or(0),
        revision: opt(w, "rev").unwrap_or(0),
        sort_order: match order {
            Some("asc") => SortOrder::Ascend,
            Some("desc") => SortOrder::Descend,
            _ => SortOrder::None,
        },
        sort_target: match target {
            Some("version") => SortTarget::Version,
            Some("create") => SortTarget::Create,
            Some("mod") => SortTarget::Mod,
            Some("value") => SortTarget::Value,
            _ => SortTarget::Key,
        },
        serializable: false,
        keys_only: flag(w, "keys_only"),
        count_only: flag(w, "count_only"),
        min_mod_revision: opt(w, "min_mod").unwrap_or(0),
        max_mod_revision: opt(w, "max_mod").unwrap_or(0),
        min_create_revision: opt(w, "min_create").unwrap_or(0),
        max_create_revision: opt(w, "max_create").unwrap_or(0),
    }
}

fn parse_cmp(w: &[&str]) -> Compare {
    let arg = w[4];
    let target = match w[1] {
        "value" => CompareTarget::Value(bytes(arg)),
        "version" => CompareTarget::Version(arg.parse().expect("number")),
        "create" => CompareTarget::Create(arg.parse().expect("number")),
        "mod" => CompareTarget::Mod(arg.parse().expect("number")),
        "lease" => CompareTarget::Lease(arg.parse().expect("number")),
        t => panic!("unknown compare target {t}"),
    };
    let result = match w[3] {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        o => panic!("unknown compare op {o}"),
    };
    let range_end = w
        .iter()
        .find_map(|x| x.strip_prefix("end="))
        .map(bytes)
        .unwrap_or_default();
    Compare {
        result,
        target,
        key: bytes(w[2]),
        range_end,
    }
}

fn err(e: Error) -> String {
    format!("error: {e}")
}

fn print_response(out: &mut Vec<String>, indent: &str, r: &ResponseOp) {
    match r {
        ResponseOp::Put(p) => {
            out.push(format!("{indent}put rev={}", p.revision));
            if let Some(kv) = &p.prev_kv {
                out.push(format!("{indent}  prev {}", show_kv(kv)));
            }
        }
        ResponseOp::DeleteRange(d) => {
            out.push(format!("{indent}deleted={} rev={}", d.deleted, d.revision));
            for kv in &d.prev_kvs {
                out.push(format!("{indent}  prev {}", show_kv(kv)));
            }
        }
        ResponseOp::Range(g) => {
            out.push(format!(
                "{indent}count={} more={} rev={}",
                g.count, g.more, g.revision
            ));
            for kv in &g.kvs {
                out.push(format!("{indent}  {}", show_kv(kv)));
            }
        }
        ResponseOp::Txn(t) => {
            out.push(format!(
                "{indent}txn succeeded={} rev={}",
                t.succeeded, t.revision
            ));
            for r in &t.responses {
                print_response(out, &format!("{indent}  "), r);
            }
        }
    }
}

/// Parses the txn block starting after a `txn` line; returns it and the lines consumed.
fn parse_txn(lines: &[&str]) -> (TxnRequest, usize) {
    let mut t = TxnRequest::default();
    let mut branch = 0; // 0 compares, 1 success, 2 failure
    let mut i = 0;
    while i < lines.len() {
        let w: Vec<&str> = lines[i].split_whitespace().collect();
        i += 1;
        let op = match w.first().copied() {
            Some("end") => return (t, i),
            Some("success") => {
                branch = 1;
                continue;
            }
            Some("failure") => {
                branch = 2;
                continue;
            }
            Some("cmp") => {
                t.compare.push(parse_cmp(&w));
                continue;
            }
            Some("put") => RequestOp::Put(parse_put(&w[1..])),
            Some("del") => RequestOp::DeleteRange(parse_del(&w[1..])),
            Some("get") => RequestOp::Range(parse_get(&w[1..])),
            Some("txn") => {
                let (nested, n) = parse_txn(&lines[i..]);
                i += n;
                RequestOp::Txn(nested)
            }
            other => panic!("unexpected line in txn: {other:?}"),
        };
        match branch {
            1 => t.success.push(op),
            2 => t.failure.push(op),
            _ => panic!("operation before success/failure"),
        }
    }
    panic!("txn without end");
}

fn run_script(script: &str, dir: &Path) -> String {
    let path = dir.join("data");
    let mut store = Some(Store::open(&path, btree::Options::default()).expect("open"));
    let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with("> ")).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        out.push(line.to_string());
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.is_empty() || w[0].starts_with('#') {
            continue;
        }
        let s = store.as_ref().expect("open");
        let mut res = Vec::new();
        match w[0] {
            "put" => {
                let mut tx = s.write().expect("write");
                match tx.put(&parse_put(&w[1..])) {
                    Ok(r) => print_response(&mut res, "", &ResponseOp::Put(r)),
                    Err(e) => res.push(err(e)),
                }
                tx.commit().expect("commit");
            }
            "del" => {
                let mut tx = s.write().expect("write");
                match tx.delete_range(&parse_del(&w[1..])) {
                    Ok(r) => print_response(&mut res, "", &ResponseOp::DeleteRange(r)),
                    Err(e) => res.push(err(e)),
                }
                tx.commit().expect("commit");
            }
            "get" => match s.read().expect("read").range(&parse_get(&w[1..])) {
                Ok(r) => print_response(&mut res, "", &ResponseOp::Range(r)),
                Err(e) => res.push(err(e)),
            },
            "txn" => {
                let (t, n) = parse_txn(&lines[i..]);
                for l in &lines[i..i + n] {
                    out.push(l.to_string());
                }
                i += n;
                let mut tx = s.write().expect("write");
                match tx.txn(&t) {
                    Ok(r) => print_response(&mut res, "", &ResponseOp::Txn(r)),
                    Err(e) => res.push(err(e)),
                }
                tx.commit().expect("commit");
            }
            "compact" => {
                let mut tx = s.write().expect("write");
                let r = tx.compact(w[1].parse().expect("revision"));
                tx.commit().expect("commit");
                match r {
                    Ok(()) => {
                        if flag(&w, "physical") {
                            let removed = s.compact_finish(2).expect("compact");
                            res.push(format!("compacted, {removed} versions removed"));
                        } else {
                            res.push("compacted".to_string());
                        }
                    }
                    Err(e) => res.push(err(e)),
                }
            }
            "events" => {
                let p = positional(&w[1..]);
                let end = p.get(2).map(|v| bytes(v)).unwrap_or_default();
                match s.read().expect("read").events(
                    p[0].parse().expect("revision"),
                    &bytes(p[1]),
                    &end,
                    usize::MAX,
                ) {
                    Ok(evs) => {
                        for e in evs {
                            let kind = if e.kind == EventType::Put {
                                "PUT"
                            } else {
                                "DELETE"
                            };
                            let prev = e
                                .prev_kv
                                .map(|kv| format!(" prev[{}]", show_kv(&kv)))
                                .unwrap_or_default();
                            res.push(format!("{kind} {}{prev}", show_kv(&e.kv)));
                        }
                    }
                    Err(e) => res.push(err(e)),
                }
            }
            "grant" => {
                let mut tx = s.write().expect("write");
                let r = tx.lease_grant(w[1].parse().expect("id"), w[2].parse().expect("ttl"));
                tx.commit().expect("commit");
                res.push(match r {
                    Ok(()) => "granted".to_string(),
                    Err(e) => err(e),
                });
            }
            "revoke" => {
                let mut tx = s.write().expect("write");
                match tx.lease_revoke(w[1].parse().expect("id")) {
                    Ok(r) => print_response(&mut res, "", &ResponseOp::DeleteRange(r)),
                    Err(e) => res.push(err(e)),
                }
                tx.commit().expect("commit");
            }
            "reopen" => {
                store
                    .take()
                    .expect("open")
                    .db()
                    .checkpoint()
                    .expect("checkpoint");
                store = Some(Store::open(&path, btree::Options::default()).expect("reopen"));
                store.as_ref().expect("open").db().check().expect("check");
                res.push(format!(
                    "rev={}",
                    store.as_ref().expect("open").current_revision()
                ));
            }
            c => panic!("unknown command {c}"),
        }
        out.extend(res.into_iter().map(|l| format!("> {l}")));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let update = std::env::var("ETCH_GOLDEN_UPDATE").is_ok();
    for f in files {
        let script = std::fs::read_to_string(&f).expect("read");
        let tmp = tempfile::tempdir().expect("tempdir");
        let got = run_script(&script, tmp.path());
        if update {
            std::fs::write(&f, &got).expect("write");
        } else {
            assert!(
                got == script,
                "{} differs from its expected output:\n{got}",
                f.display()
            );
        }
    }
}
