//! The B+tree benchmark: etch vs redb vs LMDB (heed) on the same workloads.
//!
//! ```sh
//! cargo bench -p etch-benches --bench btree                        # 1,000,000 keys
//! ETCH_BENCH_KEYS=100000 cargo bench -p etch-benches --bench btree # quick run
//! ```
//!
//! Environment: `ETCH_BENCH_KEYS` (default 1,000,000) sets N; `ETCH_BENCH_SECS` (default
//! 5) sets how long the readers-plus-writer run lasts. Without cargo bench's `--bench`
//! flag (e.g. `cargo test --benches`) everything runs once on 2,000 keys, as a smoke test.
//!
//! One-shot workloads (loads, deletes, file sizes, readers plus writer) are timed with
//! `Instant`; point gets and scans run as criterion groups. Every result is printed at the
//! end as a Markdown table with the ratio etch/other (see benches/README.md).
//!
//! Keys are 16–64 bytes, values 256 B–4 KiB (the exact mix is in `workload`). Every
//! write transaction is durable when it commits (see each engine's module).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use etch_benches::workload::{KeyGen, Values, mix};
use etch_benches::{Batch, BenchDb, EtchDb, FileSize, LmdbDb, Reader, RedbDb, Result};
use tempfile::TempDir;

/// Keys per transaction for the sequential bulk load.
const LOAD_BATCH: u64 = 10_000;
/// Keys per transaction for random inserts, deletes and the concurrent writer.
const SMALL_BATCH: u64 = 1_000;
/// Entries per range scan.
const SCAN_LEN: usize = 1_000;
/// Reader threads next to the one writer.
const READERS: usize = 4;
/// Point gets a reader does in one read transaction before taking a fresh one.
const GETS_PER_TXN: usize = 1_000;
/// Criterion samples per benchmark; the estimates below average the last this many.
const SAMPLES: usize = 20;
/// Distinct lookup keys (cycled through by the get benchmarks).
const LOOKUPS: u64 = 100_000;

#[derive(Debug, Clone, Copy)]
struct Config {
    keys: u64,
    concurrent: Duration,
    full: bool,
}

impl Config {
    fn from_env() -> Config {
        let full = std::env::args().any(|a| a == "--bench");
        let env_num = |name: &str, default: f64| -> f64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.replace('_', "")
                        .parse()
                        .unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
                })
                .unwrap_or(default)
        };
        let (keys, secs) = if full {
            (
                env_num("ETCH_BENCH_KEYS", 1_000_000.0) as u64,
                env_num("ETCH_BENCH_SECS", 5.0),
            )
        } else {
            (2_000, 0.2)
        };
        assert!(keys >= 2, "ETCH_BENCH_KEYS must be at least 2");
        Config {
            keys,
            concurrent: Duration::from_secs_f64(secs),
            full,
        }
    }
}

/// What one engine measured.
#[derive(Debug, Default, Clone, Copy)]
struct Results {
    load: Duration,
    size_loaded: FileSize,
    random: Duration,
    size_random: FileSize,
    delete_half: Duration,
    reinsert_half: Duration,
    size_churned: FileSize,
    get_ns: Option<f64>,
    scan_us: Option<f64>,
    reader_gets_per_s: f64,
    writer_commits_per_s: f64,
}

/// A store and the temporary directory it lives in (dropped in that order).
struct Loaded<D> {
    db: D,
    _dir: TempDir,
    res: Results,
}

fn temp_dir(name: &str) -> Result<TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("etch-bench-{name}-"))
        .tempdir_in("/tmp")?)
}

/// Writes keys `range` of `keygen` (value version 0), `batch` per transaction.
fn insert<D: BenchDb>(
    db: &D,
    keygen: KeyGen,
    range: std::ops::Range<u64>,
    batch: u64,
    vals: &Values,
) -> Result<Duration> {
    let t = Instant::now();
    let mut key = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch).min(range.end);
        db.write(|w| {
            for i in start..end {
                keygen.key(i, &mut key);
                w.put(&key, vals.value(i, 0))?;
            }
            Ok(())
        })?;
        start = end;
    }
    Ok(t.elapsed())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Bulk load (kept for the read benchmarks), then the random-insert and file-size
/// workloads on a second store that is removed afterwards.
fn one_shot<D: BenchDb>(cfg: &Config, vals: &Values) -> Result<Loaded<D>> {
    let n = cfg.keys;
    let name = D::NAME;
    let mut res = Results::default();

    let dir = temp_dir(name)?;
    let db = D::open(dir.path())?;
    res.load = insert(&db, KeyGen::Sequential, 0..n, LOAD_BATCH, vals)?;
    res.size_loaded = db.file_size()?;
    eprintln!(
        "{name}: bulk load of {n} sequential keys: {:.2} s, file {:.1} MiB",
        res.load.as_secs_f64(),
        mib(res.size_loaded.len)
    );

    {
        let rdir = temp_dir(name)?;
        let rdb = D::open(rdir.path())?;
        res.random = insert(&rdb, KeyGen::Random, 0..n, SMALL_BATCH, vals)?;
        res.size_random = rdb.file_size()?;
        eprintln!(
            "{name}: {n} random inserts: {:.2} s, file {:.1} MiB",
            res.random.as_secs_f64(),
            mib(res.size_random.len)
        );
        // Delete every other key (half, spread over the whole key space)...
        let t = Instant::now();
        let mut key = Vec::new();
        let mut start = 0;
        while start < n {
            let end = (start + 2 * SMALL_BATCH).min(n);
            rdb.write(|w| {
                for i in (start..end).step_by(2) {
                    KeyGen::Random.key(i, &mut key);
                    assert!(w.delete(&key)?, "{name}: key {i} missing");
                }
                Ok(())
            })?;
            start = end;
        }
        res.delete_half = t.elapsed();
        // ...and insert as many new ones.
        res.reinsert_half = insert(&rdb, KeyGen::Random, n..n + n / 2, SMALL_BATCH, vals)?;
        res.size_churned = rdb.file_size()?;
        eprintln!(
            "{name}: delete {} + insert {}: {:.2} s + {:.2} s, file {:.1} MiB",
            n.div_ceil(2),
            n / 2,
            res.delete_half.as_secs_f64(),
            res.reinsert_half.as_secs_f64(),
            mib(res.size_churned.len)
        );
    }
    Ok(Loaded { db, _dir: dir, res })
}

/// Sequential keys looked up by the read benchmarks, in random order.
fn lookup_keys(n: u64, count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|j| KeyGen::Sequential.key_vec(mix(j ^ 0x100c) % n))
        .collect()
}

/// Per-iteration mean over criterion's last `SAMPLES` calls (its samples; the earlier
/// calls are warm-up).
fn estimate(calls: &[(u64, Duration)]) -> Option<f64> {
    let tail = &calls[calls.len().saturating_sub(SAMPLES)..];
    let iters: u64 = tail.iter().map(|c| c.0).sum();
    let nanos: f64 = tail.iter().map(|c| c.1.as_nanos() as f64).sum();
    (iters > 0).then(|| nanos / iters as f64)
}

fn bench_gets<D: BenchDb>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    db: &D,
    keys: &[Vec<u8>],
) -> Option<f64> {
    let mut calls = Vec::new();
    let mut next = 0usize;
    g.bench_function(D::NAME, |b| {
        db.read(|r| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let k = &keys[next % keys.len()];
                    next += 1;
                    let v = r.get(k).expect("get");
                    assert!(black_box(v).is_some(), "loaded key missing");
                }
                let d = t.elapsed();
                calls.push((iters, d));
                d
            })
        })
        .expect("read txn")
    });
    estimate(&calls)
}

fn bench_scans<D: BenchDb>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    db: &D,
    keys: &[Vec<u8>],
    expect: usize,
) -> Option<f64> {
    let mut calls = Vec::new();
    let mut next = 0usize;
    g.bench_function(D::NAME, |b| {
        db.read(|r| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let k = &keys[next % keys.len()];
                    next += 1;
                    let s = r.scan(k, SCAN_LEN).expect("scan");
                    assert_eq!(black_box(s).entries, expect, "short scan");
                }
                let d = t.elapsed();
                calls.push((iters, d));
                d
            })
        })
        .expect("read txn")
    });
    estimate(&calls).map(|ns| ns / 1e3)
}

/// `READERS` threads doing point gets (a fresh read transaction every `GETS_PER_TXN`)
/// while one writer commits batches of `SMALL_BATCH` overwrites of random existing keys,
/// for `cfg.concurrent`. Returns (reader gets/s summed over readers, writer commits/s).
fn concurrent<D: BenchDb>(
    cfg: &Config,
    db: &D,
    keys: &[Vec<u8>],
    vals: &Values,
) -> Result<(f64, f64)> {
    let stop = AtomicBool::new(false);
    let n = cfg.keys;
    let start = Instant::now();
    std::thread::scope(|s| -> Result<(f64, f64)> {
        let readers: Vec<_> = (0..READERS)
            .map(|t| {
                let stop = &stop;
                s.spawn(move || -> Result<f64> {
                    let mut next = t * keys.len() / READERS;
                    let mut gets = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        db.read(|r| -> Result<()> {
                            for _ in 0..GETS_PER_TXN {
                                let k = &keys[next % keys.len()];
                                next += 1;
                                assert!(black_box(r.get(k)?).is_some(), "key missing");
                            }
                            Ok(())
                        })??;
                        gets += GETS_PER_TXN as u64;
                    }
                    Ok(gets as f64 / start.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut commits = 0u64;
        let mut key = Vec::new();
        let writer = (|| -> Result<()> {
            while start.elapsed() < cfg.concurrent {
                commits += 1;
                db.write(|w| {
                    for j in 0..SMALL_BATCH {
                        let i = mix(commits * SMALL_BATCH + j) % n;
                        KeyGen::Sequential.key(i, &mut key);
                        w.put(&key, vals.value(i, commits))?;
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })();
        let writer_secs = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut gets_per_s = 0.0;
        for r in readers {
            gets_per_s += r.join().expect("reader panicked")?;
        }
        writer?;
        Ok((gets_per_s, commits as f64 / writer_secs))
    })
}

fn run_concurrent<D: BenchDb>(
    cfg: &Config,
    l: &mut Loaded<D>,
    keys: &[Vec<u8>],
    vals: &Values,
) -> Result<()> {
    let (gets, commits) = concurrent(cfg, &l.db, keys, vals)?;
    eprintln!(
        "{}: {READERS} readers + 1 writer: {gets:.0} gets/s, {commits:.1} commits/s",
        D::NAME
    );
    l.res.reader_gets_per_s = gets;
    l.res.writer_commits_per_s = commits;
    Ok(())
}

fn ratio(etch: f64, other: f64) -> String {
    if etch > 0.0 && other > 0.0 {
        format!("{:.2}", etch / other)
    } else {
        "–".into()
    }
}

fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn print_table(cfg: &Config, res: &[(&str, Results)]) {
    let n = cfg.keys;
    let secs = |f: fn(&Results) -> Duration| -> Vec<f64> {
        res.iter().map(|r| f(&r.1).as_secs_f64()).collect()
    };
    let rows: Vec<(String, &str, Vec<f64>)> = vec![
        (
            format!("bulk load {n} sequential keys, {LOAD_BATCH}/txn (s)"),
            "lower",
            secs(|r| r.load),
        ),
        (
            format!("insert {n} random keys, {SMALL_BATCH}/txn (s)"),
            "lower",
            secs(|r| r.random),
        ),
        (
            format!(
                "then delete {} of them, {SMALL_BATCH}/txn (s)",
                n.div_ceil(2)
            ),
            "lower",
            secs(|r| r.delete_half),
        ),
        (
            format!(
                "then insert {} new random keys, {SMALL_BATCH}/txn (s)",
                n / 2
            ),
            "lower",
            secs(|r| r.reinsert_half),
        ),
        (
            "random point get (ns)".into(),
            "lower",
            res.iter().map(|r| r.1.get_ns.unwrap_or(0.0)).collect(),
        ),
        (
            format!("range scan of {SCAN_LEN} keys (µs)"),
            "lower",
            res.iter().map(|r| r.1.scan_us.unwrap_or(0.0)).collect(),
        ),
        (
            format!("{READERS} readers + 1 writer: reader gets/s (sum)"),
            "higher",
            res.iter().map(|r| r.1.reader_gets_per_s).collect(),
        ),
        (
            format!("{READERS} readers + 1 writer: writer commits/s ({SMALL_BATCH} puts each)"),
            "higher",
            res.iter().map(|r| r.1.writer_commits_per_s).collect(),
        ),
        (
            "file after the sequential load (MiB)".into(),
            "lower",
            res.iter().map(|r| mib(r.1.size_loaded.len)).collect(),
        ),
        (
            format!("file after {n} random inserts (MiB)"),
            "lower",
            res.iter().map(|r| mib(r.1.size_random.len)).collect(),
        ),
        (
            "file after deleting half, inserting again (MiB)".into(),
            "lower",
            res.iter().map(|r| mib(r.1.size_churned.len)).collect(),
        ),
        (
            "  same, blocks allocated (MiB)".into(),
            "lower",
            res.iter()
                .map(|r| mib(r.1.size_churned.allocated))
                .collect(),
        ),
    ];
    let names: Vec<&str> = res.iter().map(|r| r.0).collect();
    println!();
    println!("## Results ({n} keys)");
    println!();
    print!("| workload | better |");
    for name in &names {
        print!(" {name} |");
    }
    for name in &names[1..] {
        print!(" etch/{name} |");
    }
    println!();
    println!("|{}", "---|".repeat(2 + 2 * names.len() - 1));
    for (what, better, vals) in rows {
        print!("| {what} | {better} |");
        for v in &vals {
            print!(" {} |", fmt_num(*v));
        }
        for v in &vals[1..] {
            print!(" {} |", ratio(vals[0], *v));
        }
        println!();
    }
    let live = |range: std::ops::Range<u64>, keygen: KeyGen| -> u64 {
        let vals = Values::new();
        range
            .map(|i| (keygen.key_vec(i).len() + vals.value(i, 0).len()) as u64)
            .sum()
    };
    let loaded = live(0..n, KeyGen::Sequential);
    let churned: u64 = (0..n)
        .skip(1)
        .step_by(2)
        .chain(n..n + n / 2)
        .map(|i| live(i..i + 1, KeyGen::Random))
        .sum();
    println!();
    println!(
        "Key+value bytes stored: {:.1} MiB after the load, {:.1} MiB after the churn.",
        mib(loaded),
        mib(churned)
    );
}

fn main() -> Result<()> {
    let cfg = Config::from_env();
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    if !cfg.full {
        eprintln!("(no --bench flag: smoke run on {} keys)", cfg.keys);
    }
    let vals = Values::new();

    let mut etch = one_shot::<EtchDb>(&cfg, &vals)?;
    let mut redb = one_shot::<RedbDb>(&cfg, &vals)?;
    let mut lmdb = one_shot::<LmdbDb>(&cfg, &vals)?;

    let n = cfg.keys;
    let lookups = lookup_keys(n, LOOKUPS.min(n));
    {
        let mut g = c.benchmark_group("point_get");
        etch.res.get_ns = bench_gets(&mut g, &etch.db, &lookups);
        redb.res.get_ns = bench_gets(&mut g, &redb.db, &lookups);
        lmdb.res.get_ns = bench_gets(&mut g, &lmdb.db, &lookups);
        g.finish();
    }
    {
        let span = n.saturating_sub(SCAN_LEN as u64).max(1);
        let starts: Vec<Vec<u8>> = (0..10_000u64.min(n))
            .map(|j| KeyGen::Sequential.key_vec(mix(j ^ 0x5ca) % span))
            .collect();
        let expect = SCAN_LEN.min(n as usize);
        let mut g = c.benchmark_group(format!("scan_{SCAN_LEN}"));
        etch.res.scan_us = bench_scans(&mut g, &etch.db, &starts, expect);
        redb.res.scan_us = bench_scans(&mut g, &redb.db, &starts, expect);
        lmdb.res.scan_us = bench_scans(&mut g, &lmdb.db, &starts, expect);
        g.finish();
    }

    run_concurrent(&cfg, &mut etch, &lookups, &vals)?;
    run_concurrent(&cfg, &mut redb, &lookups, &vals)?;
    run_concurrent(&cfg, &mut lmdb, &lookups, &vals)?;

    c.final_summary();
    print_table(
        &cfg,
        &[("etch", etch.res), ("redb", redb.res), ("lmdb", lmdb.res)],
    );
    Ok(())
}
