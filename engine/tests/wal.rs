//! WAL tests. Every behavioural test runs on both devices (io_uring forced, syscalls
//! forced): replay, group commit, segment rollover and purge, truncation, torn tails and
//! corruption, injected write/sync failures, and a real writer process killed with SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etch_engine::wal::{
    self, Backend, DeviceFault, Error, FaultHandle, FaultyDevice, Options, RecordKind, Wal,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const BACKENDS: [Backend; 2] = [Backend::IoUring, Backend::Syscall];

fn opts(backend: Backend) -> Options {
    Options {
        segment_bytes: 256 << 10,
        inflight_bytes_max: 64 << 10,
        backend,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    kind: RecordKind,
    index: u64,
    payload: Vec<u8>,
}

fn open(dir: &Path, o: Options) -> (Wal, Vec<Rec>) {
    let mut recs = Vec::new();
    let wal = Wal::open(dir, o, 0, |r| {
        recs.push(Rec {
            kind: r.kind,
            index: r.index,
            payload: r.payload.to_vec(),
        });
        Ok(())
    })
    .expect("open wal");
    (wal, recs)
}

fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend((0..len).map(|i| (index as usize * 31 + i) as u8));
    p
}

fn entries(recs: &[Rec]) -> Vec<u64> {
    recs.iter()
        .filter(|r| r.kind == RecordKind::Entry)
        .map(|r| r.index)
        .collect()
}

#[test]
fn append_and_replay_in_order_on_both_backends() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, recs) = open(dir.path(), opts(b));
        assert!(recs.is_empty());
        assert_eq!(
            w.backend(),
            if b == Backend::IoUring {
                "io_uring"
            } else {
                "syscall"
            }
        );
        let mut want = Vec::new();
        for i in 1..=300u64 {
            let p = payload(i, (i as usize * 37) % 3000);
            w.append_sync(RecordKind::Entry, i, &p).expect("append");
            want.push(Rec {
                kind: RecordKind::Entry,
                index: i,
                payload: p,
            });
            if i % 50 == 0 {
                let s = format!("state {i}").into_bytes();
                w.append_sync(RecordKind::State, i, &s).expect("state");
                want.push(Rec {
                    kind: RecordKind::State,
                    index: i,
                    payload: s,
                });
            }
        }
        w.close().expect("close");
        let (w, recs) = open(dir.path(), opts(b));
        // Segments rolled over; each new one starts with the latest state again.
        assert!(
            w.segment_paths().len() > 1,
            "{b:?}: expected several segments"
        );
        let without_repeats: Vec<Rec> = {
            let mut seen = std::collections::HashSet::new();
            recs.iter()
                .filter(|r| {
                    r.kind == RecordKind::Entry || seen.insert((r.index, r.payload.clone()))
                })
                .cloned()
                .collect()
        };
        assert_eq!(without_repeats, want, "{b:?}");
        // Appends continue after the replayed tail.
        w.append_sync(RecordKind::Entry, 301, b"next")
            .expect("append after reopen");
        assert!(matches!(
            w.append(RecordKind::Entry, 305, b"gap"),
            Err(Error::Gap {
                index: 305,
                last: 301
            })
        ));
        w.close().expect("close");
        let (_w, recs) = open(dir.path(), opts(b));
        assert_eq!(entries(&recs).last(), Some(&301));
    }
}

#[test]
fn concurrent_appenders_share_fsyncs_and_keep_order() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, _) = open(
            dir.path(),
            Options {
                segment_bytes: 4 << 20,
                ..opts(b)
            },
        );
        let w = Arc::new(w);
        let next = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let w = w.clone();
                let next = next.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for _ in 0..100 {
                        // Index order must match log order, so take the index and queue the
                        // record under one lock; wait for durability outside it.
                        let h = {
                            let mut n = next.lock().expect("lock");
                            *n += 1;
                            mine.push(*n);
                            w.append(RecordKind::Entry, *n, &payload(*n, 200))
                                .expect("append")
                        };
                        h.wait().expect("durable");
                    }
                    mine
                })
            })
            .collect();
        let mut acked: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        acked.sort_unstable();
        drop(w);
        let (_w, recs) = open(dir.path(), opts(b));
        assert_eq!(entries(&recs), acked, "{b:?}");
        for r in &recs {
            assert_eq!(r.payload, payload(r.index, 200));
        }
    }
}

#[test]
fn async_handles_complete() {
    // A minimal executor: block on the future with a thread-parking waker.
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, _) = open(dir.path(), opts(Backend::Auto));
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(w.append(RecordKind::Entry, 1, b"x").expect("append"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let std::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            r.expect("durable");
            break;
        }
        assert!(Instant::now() < deadline, "append never completed");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn truncate_and_purge() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, _) = open(dir.path(), opts(b));
        for i in 1..=10 {
            w.append_sync(RecordKind::Entry, i, b"old").expect("append");
        }
        w.truncate_suffix(6).expect("truncate");
        for i in 6..=8 {
            w.append_sync(RecordKind::Entry, i, b"new").expect("append");
        }
        w.append_sync(RecordKind::State, 8, b"hard state")
            .expect("state");
        w.append_sync(RecordKind::Snapshot, 4, b"snap")
            .expect("snapshot");
        // Fill several segments.
        for i in 9..=2000 {
            w.append_sync(RecordKind::Entry, i, &[7u8; 500])
                .expect("append");
        }
        let before = w.segment_paths().len();
        assert!(before >= 4, "{b:?}: {before} segments");
        let removed = w.purge_below(1500).expect("purge");
        assert!(removed >= 2, "{b:?}: removed {removed}");
        assert_eq!(w.segment_paths().len(), before - removed);
        w.close().expect("close");
        let (_w, recs) = open(dir.path(), opts(b));
        let first_entry = entries(&recs)[0];
        assert!(
            first_entry <= 1500 && first_entry > 9,
            "{b:?}: first entry {first_entry}"
        );
        assert_eq!(entries(&recs).last(), Some(&2000));
        // The sticky records survive the purge of the segments that held them.
        assert!(
            recs.iter()
                .any(|r| r.kind == RecordKind::State && r.payload == b"hard state")
        );
        assert!(
            recs.iter()
                .any(|r| r.kind == RecordKind::Snapshot && r.payload == b"snap")
        );
    }
    // Without purge, replay shows the truncation as written.
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, _) = open(dir.path(), opts(Backend::Syscall));
    for i in 1..=5 {
        w.append_sync(RecordKind::Entry, i, b"a").expect("append");
    }
    w.truncate_suffix(3).expect("truncate");
    w.append_sync(RecordKind::Entry, 3, b"b").expect("append");
    w.close().expect("close");
    let (_w, recs) = open(dir.path(), opts(Backend::Syscall));
    let seen: Vec<(RecordKind, u64)> = recs.iter().map(|r| (r.kind, r.index)).collect();
    use RecordKind::*;
    assert_eq!(
        seen,
        vec![
            (Entry, 1),
            (Entry, 2),
            (Entry, 3),
            (Entry, 4),
            (Entry, 5),
            (Truncate, 3),
            (Entry, 3)
        ]
    );
}

/// Writes 100 entries into one segment and returns its path.
fn one_segment(dir: &Path) -> std::path::PathBuf {
    let (w, _) = open(
        dir,
        Options {
            segment_bytes: 1 << 20,
            ..opts(Backend::Syscall)
        },
    );
    for i in 1..=100 {
        w.append_sync(RecordKind::Entry, i, &payload(i, 100))
            .expect("append");
    }
    let p = w.segment_paths()[0].clone();
    w.close().expect("close");
    p
}

#[test]
fn torn_tail_is_truncated_and_mid_log_corruption_is_an_error() {
    let o = Options {
        segment_bytes: 1 << 20,
        ..opts(Backend::Syscall)
    };
    let rec = (24 + 108usize).next_multiple_of(8); // header + payload(i, 100), padded
    let tail = 64 + 100 * rec;

    // Cut mid-record: the last record is gone, the rest replays, appends continue.
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path());
    let mut b = std::fs::read(&seg).expect("read");
    for x in &mut b[tail - rec / 2..tail] {
        *x = 0;
    }
    std::fs::write(&seg, &b).expect("write");
    let (w, recs) = open(dir.path(), o.clone());
    assert_eq!(entries(&recs), (1..=99).collect::<Vec<_>>());
    w.append_sync(RecordKind::Entry, 100, b"again")
        .expect("append");
    w.close().expect("close");
    let (_w, recs) = open(dir.path(), o.clone());
    assert_eq!(recs.last().expect("last").payload, b"again");

    // A torn batch: a record's header zeroed but later records of the same batch present.
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = one_segment(dir.path());
    let mut b = std::fs::read(&seg).expect("read");
    let at = tail - 3 * rec;
    b[at..at + 24].fill(0);
    std::fs::write(&seg, &b).expect("write");
    let (w, recs) = open(dir.path(), o.clone());
    assert_eq!(entries(&recs), (1..=97).collect::<Vec<_>>());
    w.append_sync(RecordKind::Entry, 98, b"short")
        .expect("append");
    w.close().expect("close");
    // The stale records after the torn one were zeroed: they do not come back.
    let (_w, recs) = open(dir.path(), o.clone());
    assert_eq!(entries(&recs), (1..=98).collect::<Vec<_>>());

    // A flipped byte more than the torn-write window (here about 200 KiB: a batch plus two
    // sticky records) before the tail: corruption, named with segment and offset.
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, _) = open(
        dir.path(),
        Options {
            segment_bytes: 1 << 20,
            inflight_bytes_max: 4096,
            backend: Backend::Syscall,
        },
    );
    for i in 1..=2000 {
        w.append_sync(RecordKind::Entry, i, &payload(i, 100))
            .expect("append");
    }
    let seg = w.segment_paths()[0].clone();
    w.close().expect("close");
    let mut b = std::fs::read(&seg).expect("read");
    let at = 64 + 10 * rec + 30;
    b[at] ^= 0x40;
    std::fs::write(&seg, &b).expect("write");
    match Wal::open(dir.path(), o.clone(), 0, |_| Ok(())) {
        Err(Error::Corrupt {
            segment,
            offset,
            reason,
        }) => {
            assert_eq!(segment, seg);
            assert_eq!(offset as usize, 64 + 10 * rec);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn corrupt_segment_header_and_missing_segment_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, _) = open(dir.path(), opts(Backend::Syscall));
    for i in 1..=2400 {
        w.append_sync(RecordKind::Entry, i, &[1u8; 300])
            .expect("append");
    }
    let segs = w.segment_paths();
    w.close().expect("close");
    assert!(segs.len() >= 3);
    let mut b = std::fs::read(&segs[1]).expect("read");
    b[3] ^= 1;
    std::fs::write(&segs[1], &b).expect("write");
    assert!(matches!(
        Wal::open(dir.path(), opts(Backend::Syscall), 0, |_| Ok(())),
        Err(Error::Corrupt { offset: 0, .. })
    ));
    b[3] ^= 1;
    std::fs::write(&segs[1], &b).expect("write");
    std::fs::remove_file(&segs[1]).expect("rm");
    match Wal::open(dir.path(), opts(Backend::Syscall), 0, |_| Ok(())) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("expected a missing-segment error, got {other:?}"),
    }
}

#[test]
fn failed_write_or_sync_is_fatal_and_loses_nothing_acknowledged() {
    for b in BACKENDS {
        for fault in [
            DeviceFault::FailWrite(5),
            DeviceFault::FailSync(5),
            DeviceFault::FailWrite(1),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let handle = FaultHandle::default();
            let (inner, fallback) = wal::open_device(b).expect("device");
            assert!(fallback.is_none());
            assert_eq!(
                inner.name(),
                if b == Backend::IoUring {
                    "io_uring"
                } else {
                    "syscall"
                }
            );
            let dev = FaultyDevice::new(inner, handle.clone());
            let w = Wal::open_with_device(dir.path(), opts(b), Box::new(dev), 0, |_| Ok(()))
                .expect("open");
            handle.arm(fault);
            let mut acked = Vec::new();
            let mut failed = false;
            for i in 1..=20u64 {
                match w
                    .append(RecordKind::Entry, i, &payload(i, 50))
                    .and_then(|h| h.wait())
                {
                    Ok(()) => acked.push(i),
                    Err(Error::Failed(_)) => {
                        failed = true;
                        break;
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert!(failed, "{fault:?}: the failure surfaced");
            assert!(
                matches!(w.append(RecordKind::Entry, 99, b"x"), Err(Error::Failed(_))),
                "no appends after failure"
            );
            assert!(w.close().is_err());
            let (_w, recs) = open(dir.path(), opts(Backend::Syscall));
            let got = entries(&recs);
            assert!(
                got.starts_with(&acked),
                "{fault:?}: acknowledged {acked:?}, replayed {got:?}"
            );
        }
    }
}

#[test]
fn backpressure_bounds_queued_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Options {
        segment_bytes: 8 << 20,
        inflight_bytes_max: 16 << 10,
        backend: Backend::Syscall,
    };
    let (w, _) = open(dir.path(), o);
    // Records larger than the in-flight bound are refused, not queued.
    assert!(matches!(
        w.append(RecordKind::Entry, 1, &vec![0u8; 20 << 10]),
        Err(Error::TooLarge { .. })
    ));
    // Many handles outstanding at once: appends wait for room instead of growing memory.
    let handles: Vec<_> = (1..=400u64)
        .map(|i| {
            w.append(RecordKind::Entry, i, &[3u8; 1000])
                .expect("append")
        })
        .collect();
    for h in handles {
        h.wait().expect("durable");
    }
}

// --- SIGKILL ----------------------------------------------------------------------------

const CHILD_ENV: &str = "ETCH_WAL_CHILD_DIR";
const BACKEND_ENV: &str = "ETCH_WAL_CHILD_BACKEND";

fn child_payload(index: u64) -> Vec<u8> {
    payload(index, (index as usize * 7919) % 5000)
}

#[test]
#[ignore = "child process of wal_survives_sigkill"]
fn wal_sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let backend = if std::env::var(BACKEND_ENV).as_deref() == Ok("syscall") {
        Backend::Syscall
    } else {
        Backend::IoUring
    };
    let mut last = 0;
    let w = Wal::open(
        Path::new(&dir),
        Options {
            segment_bytes: 512 << 10,
            inflight_bytes_max: 256 << 10,
            backend,
        },
        0,
        |r| {
            if r.kind == RecordKind::Entry {
                last = r.index;
            }
            Ok(())
        },
    )
    .expect("child open");
    let w = Arc::new(w);
    let next = Arc::new(Mutex::new(last));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (w, next, out) = (w.clone(), next.clone(), out.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let (i, h) = {
                        let mut n = next.lock().expect("lock");
                        *n += 1;
                        (
                            *n,
                            w.append(RecordKind::Entry, *n, &child_payload(*n))
                                .expect("append"),
                        )
                    };
                    h.wait().expect("durable");
                    use std::io::Write;
                    let mut o = out.lock().expect("stdout");
                    writeln!(o, "acked {i}").expect("write");
                    o.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn wal_survives_sigkill() {
    let exe = std::env::current_exe().expect("exe");
    for backend in ["io_uring", "syscall"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = SmallRng::seed_from_u64(11);
        let mut acked: BTreeMap<u64, ()> = BTreeMap::new();
        for iteration in 0..6 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "wal_sigkill_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .env(BACKEND_ENV, backend)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            let stdout = child.stdout.take().expect("stdout");
            let stop_after = rng.random_range(50..400);
            let mut seen = 0;
            let mut lines = BufReader::new(stdout).lines();
            while seen < stop_after {
                let Some(line) = lines.next() else { break };
                if let Some(i) = line.expect("line").strip_prefix("acked ") {
                    acked.insert(i.parse().expect("index"), ());
                    seen += 1;
                }
            }
            child.kill().expect("SIGKILL");
            // Acks printed before the kill landed still count.
            for line in lines.map_while(Result::ok) {
                if let Some(i) = line.strip_prefix("acked ") {
                    acked.insert(i.parse().expect("index"), ());
                }
            }
            child.wait().expect("wait");
            assert!(
                seen > 0,
                "{backend} iteration {iteration}: child acknowledged nothing"
            );

            let mut got = Vec::new();
            wal::read_dir(dir.path(), &Options::default(), 0, |r| {
                assert_eq!(r.kind, RecordKind::Entry);
                assert_eq!(
                    r.payload,
                    child_payload(r.index),
                    "record {} intact",
                    r.index
                );
                got.push(r.index);
                Ok(())
            })
            .expect("replay after SIGKILL");
            let expect: Vec<u64> = (1..=got.len() as u64).collect();
            assert_eq!(got, expect, "{backend}: records in order, no gaps");
            let max = got.last().copied().unwrap_or(0);
            if let Some((&lost, _)) = acked.range(max + 1..).next() {
                panic!(
                    "{backend} iteration {iteration}: acknowledged entry {lost} lost (log ends at {max})"
                );
            }
        }
    }
}

/// On a filesystem without O_DIRECT (tmpfs), the io_uring device writes the same aligned
/// blocks through the page cache; everything acknowledged replays.
#[test]
fn io_uring_without_o_direct_falls_back_to_the_page_cache() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm here; the O_DIRECT-less path is not exercised");
        return;
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir on tmpfs");
    let (w, _) = open(dir.path(), opts(Backend::IoUring));
    assert_eq!(w.backend(), "io_uring");
    for i in 1..=600u64 {
        w.append_sync(RecordKind::Entry, i, &payload(i, (i as usize * 13) % 900))
            .expect("append");
    }
    assert!(w.segment_paths().len() > 1, "rolled over at least once");
    w.close().expect("close");
    let (w, recs) = open(dir.path(), opts(Backend::IoUring));
    assert_eq!(entries(&recs), (1..=600).collect::<Vec<_>>());
    for r in &recs {
        assert_eq!(r.payload, payload(r.index, (r.index as usize * 13) % 900));
    }
    w.append_sync(RecordKind::Entry, 601, b"after reopen")
        .expect("append");
    w.close().expect("close");
    let (_w, recs) = open(dir.path(), opts(Backend::Syscall));
    assert_eq!(entries(&recs).last(), Some(&601));
}

/// State and snapshot records are repeated in every segment, so they are kept small.
#[test]
fn sticky_records_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, _) = open(
        dir.path(),
        Options {
            inflight_bytes_max: 1 << 20,
            ..opts(Backend::Syscall)
        },
    );
    let big = vec![0u8; wal::STICKY_PAYLOAD_MAX + 1];
    assert!(matches!(
        w.append(RecordKind::State, 1, &big),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        w.append(RecordKind::Snapshot, 1, &big),
        Err(Error::TooLarge { .. })
    ));
    w.append_sync(RecordKind::Entry, 1, &big)
        .expect("entries may be larger");
    w.append_sync(RecordKind::State, 1, &big[..wal::STICKY_PAYLOAD_MAX])
        .expect("at the limit");
}
