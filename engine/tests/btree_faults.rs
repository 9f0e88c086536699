//! Faults and concurrency: corrupted pages, failed writes and syncs, disk full, a locked
//! file, readers racing the writer, and a real writer process killed with SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etch_engine::btree::{Db, Error, Fault, Options, ReadTxn, SimFile};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn small() -> Options {
    Options {
        page_size: 512,
        map_reserve_bytes: 1 << 30,
        checkpoint_bytes: u64::MAX,
    }
}

fn fill(db: &Db, tree: &[u8], n: u32, value_len: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    let mut w = db.begin_write().expect("begin");
    let t = w.open_tree(tree).expect("tree");
    for i in 0..n {
        let k = format!("key-{i:06}").into_bytes();
        let v: Vec<u8> = (0..value_len + (i as usize % 7) * 150)
            .map(|j| (i as usize + j) as u8)
            .collect();
        w.put(t, &k, &v).expect("put");
        model.insert(k, v);
    }
    w.commit().expect("commit");
    db.checkpoint().expect("checkpoint");
    model
}

/// Every entry of a tree as a reader sees it.
fn contents(r: &ReadTxn, tree: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    r.tree(tree)
        .expect("tree")
        .expect("exists")
        .iter()
        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .expect("iter")
}

/// Flip one byte in every page in turn: reads either return the right data or report the
/// corrupt page; check() always reports it.
#[test]
fn flipped_byte_in_any_page_is_reported_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let model;
    let pages;
    {
        let db = Db::open(&path, small()).expect("open");
        model = fill(&db, b"t", 300, 20);
        // A few large values so overflow runs are covered too.
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"t").expect("tree");
        w.put(t, b"zz-big", &[9u8; 3000]).expect("put");
        w.commit().expect("commit");
        pages = db.stats().high_water_pages;
        db.close().expect("close");
    }
    let mut model = model;
    model.insert(b"zz-big".to_vec(), vec![9u8; 3000]);
    let original = std::fs::read(&path).expect("read");
    let mut detected = 0;
    for page in 2..pages {
        let mut bytes = original.clone();
        let off = page as usize * 512 + 40; // past the header: slots/cells or overflow payload
        bytes[off] ^= 0x5a;
        let p2 = dir.path().join(format!("corrupt-{page}"));
        std::fs::write(&p2, &bytes).expect("write");
        let db = Db::open(&p2, small()).expect("meta pages are intact");
        match db.check() {
            Err(Error::Corrupt { page: p, .. }) => {
                // An overflow run (6 pages here) is named by its first page.
                assert!(
                    p <= page && page < p + 6,
                    "check names page {p} for a flip in page {page}"
                );
                detected += 1;
            }
            Err(e) => panic!("page {page}: unexpected error {e}"),
            // A free page is not read by anything.
            Ok(r) => assert!(r.free_pages > 0, "page {page}: flip not detected"),
        }
        let r = db.begin_read().expect("read");
        let t = match r.tree(b"t") {
            Ok(t) => t.expect("tree exists"),
            Err(Error::Corrupt { page: p, .. }) => {
                assert!(p <= page && page < p + 6);
                continue;
            }
            Err(e) => panic!("unexpected {e}"),
        };
        for (k, v) in &model {
            match t.get(k) {
                Ok(Some(got)) => assert_eq!(got, &v[..], "page {page}: wrong data served"),
                Ok(None) => panic!("page {page}: key vanished without an error"),
                Err(Error::Corrupt { page: p, .. }) => assert!(p <= page && page < p + 6),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        for e in t.iter() {
            match e {
                Ok((k, v)) => assert_eq!(
                    model.get(k).map(Vec::as_slice),
                    Some(v),
                    "page {page}: iter served wrong data"
                ),
                Err(Error::Corrupt { page: p, .. }) => {
                    assert!(p <= page && page < p + 6);
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    assert!(
        detected as u64 > pages / 2,
        "most pages are live and their flips detected"
    );
}

#[test]
fn torn_or_corrupt_meta_falls_back_or_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    {
        let db = Db::open(&path, small()).expect("open");
        fill(&db, b"t", 50, 10); // checkpoint 1 -> slot 1
        fill(&db, b"u", 50, 10); // checkpoint 2 -> slot 0
        db.close().expect("close");
    }
    let original = std::fs::read(&path).expect("read");
    // Newest meta (slot 0) corrupt: open at the previous checkpoint, which lacks tree "u".
    let mut b = original.clone();
    b[30] ^= 1;
    std::fs::write(&path, &b).expect("write");
    {
        let db = Db::open(&path, small()).expect("falls back to the other meta");
        let r = db.begin_read().expect("read");
        assert!(r.tree(b"t").expect("tree").is_some());
        assert!(r.tree(b"u").expect("tree").is_none());
        db.check().expect("previous checkpoint is intact");
    }
    // Both corrupt: a clear error.
    let mut b = original.clone();
    b[30] ^= 1;
    b[512 + 30] ^= 1;
    std::fs::write(&path, &b).expect("write");
    match Db::open(&path, small()) {
        Err(Error::CorruptFile(msg)) => assert!(msg.contains("meta"), "{msg}"),
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

#[test]
fn second_open_of_a_locked_file_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let _db = Db::open(&path, small()).expect("open");
    match Db::open(&path, small()) {
        Err(Error::Locked { path: p }) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
}

fn sim_db(dir: &Path) -> (SimFile, Db) {
    let sim = SimFile::create(&dir.join("sim")).expect("sim");
    let db = Db::open_with(Box::new(sim.clone()), small()).expect("open");
    (sim, db)
}

fn reboot(dir: &Path, sim: &SimFile, name: &str) -> Db {
    sim.power_cut();
    let img = sim.crash_image(|_, _| None);
    let sim2 = SimFile::from_image(&dir.join(name), &img).expect("image");
    let db = Db::open_with(Box::new(sim2), small()).expect("reopen");
    db.check().expect("check");
    db
}

#[test]
fn failed_write_poisons_and_loses_nothing_checkpointed() {
    for n in 1..12 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sim, db) = sim_db(dir.path());
        let model = fill(&db, b"t", 200, 30);
        sim.arm(Fault::FailWrite(n));
        let mut failed = None;
        for round in 0..20u32 {
            let r = (|| {
                let mut w = db.begin_write()?;
                let t = w.open_tree(b"t")?;
                for i in 0..30 {
                    w.put(t, format!("new-{round}-{i}").as_bytes(), &[1u8; 40])?;
                }
                w.commit()?;
                db.checkpoint()
            })();
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        match failed {
            Some(Error::Io(_)) => {}
            other => panic!("write {n}: expected an I/O error, got {other:?}"),
        }
        // Poisoned: every later call fails, no retry.
        assert!(matches!(db.begin_write(), Err(Error::Poisoned(_))));
        assert!(matches!(db.checkpoint(), Err(Error::Poisoned(_))));
        assert!(matches!(db.begin_read(), Err(Error::Poisoned(_))));
        drop(db);
        let db = reboot(dir.path(), &sim, "after");
        let r = db.begin_read().expect("read");
        let t = r.tree(b"t").expect("tree").expect("exists");
        for (k, v) in &model {
            assert_eq!(t.get(k).expect("get"), Some(&v[..]));
        }
    }
}

#[test]
fn failed_sync_poisons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, db) = sim_db(dir.path());
    let model = fill(&db, b"t", 100, 30);
    sim.arm(Fault::FailSync(1));
    let mut w = db.begin_write().expect("begin");
    let t = w.open_tree(b"t").expect("tree");
    w.put(t, b"x", b"y").expect("put");
    w.commit().expect("commit");
    assert!(matches!(db.checkpoint(), Err(Error::Io(_))));
    assert!(matches!(db.checkpoint(), Err(Error::Poisoned(_))));
    assert!(matches!(db.begin_write(), Err(Error::Poisoned(_))));
    drop(db);
    let db = reboot(dir.path(), &sim, "after");
    let r = db.begin_read().expect("read");
    let t = r.tree(b"t").expect("tree").expect("exists");
    assert_eq!(t.len(), model.len() as u64);
}

#[test]
fn disk_full_aborts_the_commit_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, db) = sim_db(dir.path());
    fill(&db, b"t", 100, 30);
    sim.arm(Fault::DiskFullAtWrite(1));
    let mut w = db.begin_write().expect("begin");
    let t = w.open_tree(b"t").expect("tree");
    w.put(t, b"lost", b"1").expect("put");
    assert!(matches!(w.commit(), Err(Error::DiskFull(_))));
    assert!(
        db.begin_read()
            .expect("read")
            .tree(b"t")
            .expect("t")
            .expect("t")
            .get(b"lost")
            .expect("get")
            .is_none()
    );
    let mut w = db.begin_write().expect("not poisoned");
    let t = w.open_tree(b"t").expect("tree");
    w.put(t, b"kept", b"2").expect("put");
    w.commit().expect("commit");
    db.checkpoint().expect("checkpoint");
    db.check().expect("check");
    drop(db);
    let db = reboot(dir.path(), &sim, "after");
    let r = db.begin_read().expect("read");
    assert_eq!(
        r.tree(b"t")
            .expect("t")
            .expect("t")
            .get(b"kept")
            .expect("get"),
        Some(&b"2"[..])
    );
}

/// Readers see one stable version while the writer commits and checkpoints: every value in
/// a snapshot equals the commit number stored as its marker.
#[test]
fn readers_see_stable_snapshots_during_commits_and_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(&dir.path().join("data"), small()).expect("open"));
    const KEYS: u32 = 300;
    let write_round = |db: &Db, n: u64| {
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"t").expect("tree");
        for i in 0..KEYS {
            // Varying lengths so pages split and merge between versions.
            let v = vec![n as u8; 8 + ((n as usize + i as usize) % 40)];
            w.put(t, format!("k{i:05}").as_bytes(), &v).expect("put");
        }
        w.set_marker(&n.to_le_bytes()).expect("marker");
        w.commit().expect("commit");
    };
    write_round(&db, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let db = db.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut checked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let txn = db.begin_read().expect("read");
                    let n = u64::from_le_bytes(txn.marker().try_into().expect("marker"));
                    let t = txn.tree(b"t").expect("tree").expect("exists");
                    for pass in 0..3 {
                        let mut count = 0;
                        for e in t.iter() {
                            let (k, v) = e.expect("iter");
                            let i: usize = std::str::from_utf8(&k[1..])
                                .expect("utf8")
                                .parse()
                                .expect("num");
                            assert_eq!(
                                v.len(),
                                8 + ((n as usize + i) % 40),
                                "reader {r} pass {pass}"
                            );
                            assert!(
                                v.iter().all(|b| *b == n as u8),
                                "reader {r} saw a torn version"
                            );
                            count += 1;
                        }
                        assert_eq!(count, KEYS);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    for n in 2..200u64 {
        write_round(&db, n);
        if n % 7 == 0 {
            db.checkpoint().expect("checkpoint");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().expect("reader") > 0);
    }
    db.check().expect("check");
}

// --- SIGKILL during checkpoints -------------------------------------------------------

const CHILD_ENV: &str = "ETCH_BTREE_CHILD_DIR";
const ROUND_KEYS: u64 = 40;

fn round_value(round: u64, i: u64) -> Vec<u8> {
    vec![(round * 7 + i) as u8; 20 + ((round + i) % 300) as usize]
}

/// Child side: continues from the durable marker, one round per commit + checkpoint, and
/// prints each round once it is durable. Runs only when the parent sets the env var.
#[test]
#[ignore = "child process of sigkill_during_checkpoints"]
fn sigkill_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = Db::open(
        &Path::new(&dir).join("data"),
        Options {
            page_size: 1024,
            ..small()
        },
    )
    .expect("child open");
    let mut round = match db.begin_read().expect("read").marker() {
        [] => 0,
        m => u64::from_le_bytes(m.try_into().expect("marker")),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        round += 1;
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"t").expect("tree");
        for i in 0..ROUND_KEYS {
            w.put(
                t,
                format!("r{round:06}-{i:03}").as_bytes(),
                &round_value(round, i),
            )
            .expect("put");
        }
        // Keep the file bounded: drop round - 5.
        if round > 5 {
            for i in 0..ROUND_KEYS {
                w.delete(t, format!("r{:06}-{i:03}", round - 5).as_bytes())
                    .expect("delete");
            }
        }
        w.set_marker(&round.to_le_bytes()).expect("marker");
        w.commit().expect("commit");
        db.checkpoint().expect("checkpoint");
        println!("durable {round}");
    }
}

#[test]
fn sigkill_during_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let mut rng = SmallRng::seed_from_u64(7);
    let mut last_durable = 0u64;
    for iteration in 0..8 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let kill_after = rng.random_range(5..40);
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if let Some(r) = line.strip_prefix("durable ") {
                last_durable = r.parse().expect("round");
                seen += 1;
                if seen == kill_after {
                    break;
                }
            }
        }
        // Let it run into the next commit/checkpoint, then SIGKILL.
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        assert!(seen > 0, "iteration {iteration}: child reported nothing");

        let db = Db::open(
            &dir.path().join("data"),
            Options {
                page_size: 1024,
                ..small()
            },
        )
        .expect("reopen");
        db.check().expect("check after SIGKILL");
        let r = db.begin_read().expect("read");
        let m = u64::from_le_bytes(r.marker().try_into().expect("marker"));
        assert!(
            m >= last_durable,
            "acknowledged round {last_durable} lost (file at {m})"
        );
        let t = r.tree(b"t").expect("tree").expect("exists");
        let mut expect = BTreeMap::new();
        for round in m.saturating_sub(4).max(1)..=m {
            for i in 0..ROUND_KEYS {
                expect.insert(
                    format!("r{round:06}-{i:03}").into_bytes(),
                    round_value(round, i),
                );
            }
        }
        let got: BTreeMap<Vec<u8>, Vec<u8>> = t
            .iter()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("iter");
        assert!(
            got == expect,
            "iteration {iteration}: contents differ from rounds {}..={m}",
            m.saturating_sub(4)
        );
        last_durable = m;
    }
}

/// Under steady churn the file stops growing: freed pages are reused once no reader and
/// no durable checkpoint can see them; a long-lived reader holds its pages until it ends.
#[test]
fn space_is_reused_under_churn_and_held_for_old_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("data"), small()).expect("open");
    let mut rng = SmallRng::seed_from_u64(3);
    let churn = |db: &Db, rng: &mut SmallRng, rounds: usize| {
        for _ in 0..rounds {
            let mut w = db.begin_write().expect("begin");
            let t = w.open_tree(b"t").expect("tree");
            for _ in 0..50 {
                let k = format!("k{:04}", rng.random_range(0..2000));
                if rng.random_ratio(1, 2) {
                    w.put(t, k.as_bytes(), &vec![1u8; rng.random_range(10..100)])
                        .expect("put");
                } else {
                    w.delete(t, k.as_bytes()).expect("delete");
                }
            }
            w.commit().expect("commit");
            db.checkpoint().expect("checkpoint");
        }
    };
    churn(&db, &mut rng, 300);
    let settled = db.stats().high_water_pages;
    churn(&db, &mut rng, 600);
    let after = db.stats().high_water_pages;
    assert!(
        after <= settled + settled / 10,
        "file keeps growing under churn: {settled} -> {after} pages"
    );

    // An old reader pins its version: its data stays readable through heavy churn.
    let reader = db.begin_read().expect("read");
    let snapshot = contents(&reader, b"t");
    churn(&db, &mut rng, 300);
    let pinned = db.stats().high_water_pages;
    let again = contents(&reader, b"t");
    assert!(
        snapshot == again,
        "old reader's version changed under churn"
    );
    drop(reader);
    churn(&db, &mut rng, 600);
    let released = db.stats().high_water_pages;
    assert!(
        released <= pinned + pinned / 10,
        "pages held for the reader are reused after it ends"
    );
    db.check().expect("check");
}

/// Pages written since the last checkpoint and freed again are reused before the next
/// one: churn with no checkpoint at all neither grows the file nor the bytes the next
/// checkpoint must sync, and a power cut still opens the last checkpoint intact.
#[test]
fn pages_written_since_the_checkpoint_are_reused_before_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let sim = SimFile::create(&path).expect("sim");
    let db = Db::open_with(Box::new(sim.clone()), small()).expect("open");
    let durable = fill(&db, b"t", 300, 40);
    let overwrite = |db: &Db, round: u32| {
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"t").expect("tree");
        for i in (round % 7..300).step_by(7) {
            let k = format!("key-{i:06}");
            w.put(t, k.as_bytes(), format!("round {round}").as_bytes())
                .expect("put");
        }
        w.commit().expect("commit");
    };
    for round in 0..50 {
        overwrite(&db, round);
    }
    let (settled, settled_unsynced) = (db.stats().high_water_pages, db.stats().unsynced_bytes);
    for round in 50..2050 {
        overwrite(&db, round);
    }
    let st = db.stats();
    assert!(
        st.high_water_pages <= settled + settled / 10,
        "2,000 commits without a checkpoint grew the file: {settled} -> {} pages",
        st.high_water_pages
    );
    assert!(
        st.unsynced_bytes <= settled_unsynced + settled_unsynced / 2,
        "rewritten pages counted again: {settled_unsynced} -> {} unsynced bytes",
        st.unsynced_bytes
    );
    assert!(
        st.written_bytes > 20 * st.unsynced_bytes,
        "the commits wrote {} bytes in all",
        st.written_bytes
    );
    // Power cut: the pages rewritten in place since the checkpoint belong to no version
    // it took, so it opens as it was.
    sim.power_cut();
    let image = sim.crash_image(|_, sectors| Some(sectors / 2));
    drop(db);
    let again = SimFile::from_image(&dir.path().join("after"), &image).expect("image");
    let db = Db::open_with(Box::new(again), small()).expect("reopen");
    db.check().expect("check");
    let r = db.begin_read().expect("read");
    let got = contents(&r, b"t");
    assert!(got == durable, "the checkpointed version changed");
}

/// stats() and checkpoint() from different threads never deadlock (they once took the same
/// two locks in opposite orders).
#[test]
fn stats_and_checkpoint_run_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(&dir.path().join("data"), small()).expect("open"));
    let (tx, rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..3)
        .map(|role| {
            let (db, tx) = (db.clone(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    match role {
                        0 => {
                            let mut w = db.begin_write().expect("begin");
                            let t = w.open_tree(b"t").expect("tree");
                            w.put(t, &i.to_be_bytes(), b"v").expect("put");
                            w.commit().expect("commit");
                        }
                        1 => db.checkpoint().expect("checkpoint"),
                        _ => {
                            let _ = db.stats();
                            let _ = format!("{db:?}");
                        }
                    }
                }
                tx.send(()).expect("send");
            })
        })
        .collect();
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a thread is stuck: deadlock");
    }
    for w in workers {
        w.join().expect("join");
    }
}

/// Dropping a database makes its last commit durable even when that commit changed only
/// the marker (it wrote no pages).
#[test]
fn drop_checkpoints_a_marker_only_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    {
        let db = Db::open(&path, small()).expect("open");
        fill(&db, b"t", 10, 10);
        let mut w = db.begin_write().expect("begin");
        w.set_marker(b"applied=42").expect("marker");
        w.commit().expect("commit");
    }
    let db = Db::open(&path, small()).expect("reopen");
    assert_eq!(db.begin_read().expect("read").marker(), b"applied=42");
}
