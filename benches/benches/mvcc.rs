//! MVCC store benchmark, in process: puts batched as the apply loop will batch them, txn
//! compare-and-swap, point ranges at head and at an old revision, 1000-key ranges,
//! count-only over 100k keys, a change-feed read of 100k events, compaction of 1M
//! revisions (total time and the longest stall a concurrent writer sees), and open time
//! and RSS of a store with 1M keys (measured in a fresh child process). Checkpoints run on
//! a background thread every 100 ms, as the server will run them.
//!
//! `cargo bench -p etch-benches --bench mvcc`. `ETCH_BENCH_KEYS` scales the 1M runs
//! down for a quick look; `ETCH_BENCH_DIR` picks the directory.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etch_engine::btree;
use etch_engine::mvcc::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, Store, TxnRequest,
};

const CHILD_ENV: &str = "ETCH_BENCH_OPEN_CHILD";
/// Requests applied per B+tree commit, as the apply loop batches committed entries.
const APPLY_BATCH: usize = 100;

fn key(i: u64) -> Vec<u8> {
    format!("/registry/pods/default/pod-{i:08}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    (0..256).map(|j| (i as usize + j) as u8).collect()
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Checkpoints run on a background thread (as the server will run them), not inside the
/// commit that crosses the dirty-bytes limit.
fn open(path: &Path) -> Store {
    let opts = btree::Options {
        checkpoint_bytes: u64::MAX,
        ..btree::Options::default()
    };
    Store::open(path, opts).expect("open store")
}

/// Checkpoints every 100 ms until `stop` is set.
fn checkpointer(store: Arc<Store>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            store.checkpoint().expect("checkpoint");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

struct Row(String, String);

fn load(store: &Store, n: u64) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let mut tx = store.write().expect("write");
        for _ in 0..APPLY_BATCH.min((n - i) as usize) {
            tx.put(&PutRequest {
                key: key(i),
                value: value(i),
                ..Default::default()
            })
            .expect("put");
            i += 1;
        }
        tx.commit().expect("commit");
    }
    store.checkpoint().expect("checkpoint");
    start.elapsed()
}

fn per_sec(n: u64, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

fn per_op(n: u64, d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6 / n as f64;
    if us >= 1000.0 {
        format!("{:.1} ms/op", us / 1000.0)
    } else {
        format!("{us:.1} µs/op")
    }
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        // Child: open, touch the newest key, report time and RSS.
        let before = rss_kib();
        let t = Instant::now();
        let store = open(Path::new(&path));
        let r = store
            .read()
            .expect("read")
            .range(&RangeRequest {
                key: key(0),
                ..Default::default()
            })
            .expect("get");
        let el = t.elapsed();
        assert_eq!(r.count, 1);
        println!("{} {} {}", el.as_micros(), rss_kib(), before);
        return;
    }
    let n: u64 = std::env::var("ETCH_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var("ETCH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut rows = Vec::new();

    // Load n keys (n revisions), then update each once: 2n revisions of history.
    let path = dir.path().join("store");
    let store = Arc::new(open(&path));
    let stop_ckpt = Arc::new(AtomicBool::new(false));
    let ckpt = checkpointer(store.clone(), stop_ckpt.clone());
    let written0 = store.db().stats().written_bytes;
    let d = load(&store, n);
    let written = store.db().stats().written_bytes - written0;
    rows.push(Row(
        format!("put {n} keys (256 B values), {APPLY_BATCH} requests per commit"),
        per_sec(n, d),
    ));
    rows.push(Row(
        "bytes written to the data file per put (incl. checkpoint)".into(),
        format!("{}", written / n),
    ));
    let old_rev = store.current_revision();

    // Txn CAS, kube-apiserver style: update if mod_revision is unchanged.
    let cas_n = (n / 10).max(1000);
    let t = Instant::now();
    let mut i = 0;
    while i < cas_n {
        let mut tx = store.write().expect("write");
        for _ in 0..APPLY_BATCH {
            let k = key(i % n);
            let cur = tx
                .range(&RangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })
                .expect("get")
                .kvs[0]
                .mod_revision;
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Mod(cur),
                    key: k.clone(),
                    range_end: vec![],
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: k.clone(),
                    value: value(i + 1),
                    ..Default::default()
                })],
                failure: vec![RequestOp::Range(RangeRequest {
                    key: k,
                    ..Default::default()
                })],
            };
            assert!(tx.txn(&txn).expect("txn").succeeded);
            i += 1;
        }
        tx.commit().expect("commit");
    }
    rows.push(Row(
        format!("txn CAS update ({cas_n}), {APPLY_BATCH} per commit"),
        per_sec(cas_n, t.elapsed()),
    ));

    // Point reads.
    let snap = store.read().expect("read");
    let reads = 200_000u64;
    let mut x = 12345u64;
    for (name, revision) in [
        ("point range at head (random key)", 0),
        ("point range at an old revision", old_rev),
    ] {
        let t = Instant::now();
        for _ in 0..reads {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let r = snap
                .range(&RangeRequest {
                    key: key((x >> 20) % n),
                    revision,
                    ..Default::default()
                })
                .expect("get");
            assert_eq!(r.kvs.len(), 1);
        }
        rows.push(Row(name.into(), per_op(reads, t.elapsed())));
    }

    let scans = 500u64;
    let t = Instant::now();
    for s in 0..scans {
        let start = key((s * 7919) % n.saturating_sub(1000).max(1));
        let r = snap
            .range(&RangeRequest {
                key: start,
                range_end: vec![0],
                limit: 1000,
                ..Default::default()
            })
            .expect("range");
        assert!(r.kvs.len() == 1000 || n < 2000);
    }
    rows.push(Row(
        "range of 1000 keys (limit 1000)".into(),
        per_op(scans, t.elapsed()),
    ));

    let count_n = n.min(100_000);
    let t = Instant::now();
    let reps = 10;
    for _ in 0..reps {
        let r = snap
            .range(&RangeRequest {
                key: key(0),
                range_end: key(count_n),
                count_only: true,
                ..Default::default()
            })
            .expect("count");
        assert_eq!(r.count as u64, count_n);
    }
    rows.push(Row(
        format!("count-only over {count_n} keys"),
        per_op(reps, t.elapsed()),
    ));

    let t = Instant::now();
    let evs = snap
        .events(old_rev + 1, &[0], &[0], 100_000)
        .expect("events");
    rows.push(Row(
        format!("change feed: read {} events", evs.len()),
        format!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3),
    ));
    drop(snap);

    // Compaction of the first n + cas_n revisions while a writer keeps putting.
    let target = store.current_revision();
    let mut tx = store.write().expect("write");
    tx.compact(target).expect("compact");
    tx.commit().expect("commit");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut tx = store.write().expect("write");
                tx.put(&PutRequest {
                    key: format!("/other/{i}").into_bytes(),
                    value: vec![1; 100],
                    ..Default::default()
                })
                .expect("put");
                tx.commit().expect("commit");
                worst = worst.max(t.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            (worst, i)
        })
    };
    let t = Instant::now();
    let mut longest_step = Duration::ZERO;
    let mut removed = 0;
    loop {
        let s = Instant::now();
        let p = store
            .compact_step(10_000, Duration::from_millis(5))
            .expect("compact step");
        longest_step = longest_step.max(s.elapsed());
        removed += p.removed;
        if p.finished {
            break;
        }
    }
    let total = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (worst, writes) = writer.join().expect("writer");
    rows.push(Row(
        format!("compaction at revision {target}: removed {removed} versions"),
        format!(
            "{:.2} s total, longest step {:.1} ms",
            total.as_secs_f64(),
            longest_step.as_secs_f64() * 1e3
        ),
    ));
    rows.push(Row(
        format!("  concurrent writer during compaction ({writes} puts)"),
        format!("worst put latency {:.1} ms", worst.as_secs_f64() * 1e3),
    ));
    stop_ckpt.store(true, Ordering::Relaxed);
    ckpt.join().expect("checkpointer");
    store.checkpoint().expect("checkpoint");
    let file = std::fs::metadata(&path).expect("metadata").len();
    rows.push(Row(
        format!("data file with {n} keys after compaction"),
        format!("{:.1} MiB", file as f64 / 1048576.0),
    ));
    drop(store);

    // Open time and RSS in a fresh process (the page cache is warm: the file was just written).
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, &path)
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if f.len() == 3 {
        rows.push(Row(
            format!("open a store of {n} keys (fresh process)"),
            format!("{:.2} ms", f[0] as f64 / 1000.0),
        ));
        rows.push(Row(
            "  RSS after open (before → after)".into(),
            format!("{} KiB → {} KiB", f[2], f[1]),
        ));
    } else {
        rows.push(Row(
            "open (child failed)".into(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }

    println!("| workload | result |");
    println!("|---|---|");
    for Row(a, b) in rows {
        println!("| {a} | {b} |");
    }
}
