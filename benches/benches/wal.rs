//! WAL benchmark: the physical floor (4 KiB pwrite + fdatasync in a loop) against the WAL
//! with 1, 16, 256 and 1024 concurrent appenders of 256-byte records, on io_uring and on
//! the syscall fallback, in the same run on the same disk. Prints a markdown table.
//!
//! `cargo bench -p etch-benches --bench wal`. `ETCH_BENCH_SECS` sets seconds per cell
//! (default 3); `ETCH_BENCH_DIR` the directory (default: the system temp dir).

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etch_engine::wal::{Backend, Options, RecordKind, Wal};

struct Cell {
    name: String,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    syncs_per_sec: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn floor(dir: &std::path::Path, secs: f64) -> Cell {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("floor"))
        .expect("floor file");
    let block = vec![0xabu8; 4096];
    // Real blocks first, so the loop measures data syncs as the WAL's preallocation does.
    for i in 0..1024u64 {
        f.write_all_at(&block, i * 4096).expect("write");
    }
    f.sync_all().expect("sync");
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        f.write_all_at(&block, (i % 1024) * 4096).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    let el = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Cell {
        name: "floor: 4 KiB write + fdatasync".into(),
        ops_per_sec: lat.len() as f64 / el,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        syncs_per_sec: lat.len() as f64 / el,
    }
}

fn wal_cell(dir: &std::path::Path, backend: Backend, clients: usize, secs: f64) -> Cell {
    let wdir = dir.join(format!("wal-{backend:?}-{clients}"));
    let _ = std::fs::remove_dir_all(&wdir);
    let opts = Options {
        backend,
        ..Options::default()
    };
    let wal = Arc::new(Wal::open(&wdir, opts, 0, |_| Ok(())).expect("open wal"));
    let next = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = [7u8; 256];
    let before = wal.stats();
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (wal, next, stop) = (wal.clone(), next.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    // Index order must match log order: take the index and queue under one
                    // lock (as a Raft proposer would), wait outside it.
                    let h = {
                        let mut n = next.lock().expect("lock");
                        *n += 1;
                        wal.append(RecordKind::Entry, *n, &payload).expect("append")
                    };
                    h.wait().expect("durable");
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    let el = start.elapsed().as_secs_f64();
    let after = wal.stats();
    lat.sort_unstable();
    let name = format!("WAL {} ×{clients}", wal.backend());
    drop(wal);
    let _ = std::fs::remove_dir_all(&wdir);
    Cell {
        name,
        ops_per_sec: lat.len() as f64 / el,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        syncs_per_sec: (after.syncs - before.syncs) as f64 / el,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run one tiny
    // cell then, so the target stays buildable and runnable in tests.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("ETCH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 3.0 });
    let base = std::env::var("ETCH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut cells = vec![floor(dir.path(), secs)];
    let clients: &[usize] = if quick { &[1, 16] } else { &[1, 16, 256, 1024] };
    for &c in clients {
        for b in [Backend::IoUring, Backend::Syscall] {
            cells.push(wal_cell(dir.path(), b, c, secs));
        }
    }
    let floor_p50 = cells[0].p50_us;
    println!(
        "| workload | appends/s | p50 µs | p99 µs | fsyncs/s | appends per fsync | p50 / floor p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for c in &cells {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} |",
            c.name,
            c.ops_per_sec,
            c.p50_us,
            c.p99_us,
            c.syncs_per_sec,
            c.ops_per_sec / c.syncs_per_sec.max(1e-9),
            c.p50_us / floor_p50
        );
    }
}
