//! Model-based tests: random operation sequences on the B+tree checked against
//! `std::collections::BTreeMap`, with commits, aborts, checkpoints, clean reopens and
//! simulated power cuts (unsynced writes kept, dropped or torn), and readers held across
//! many commits and checkpoints, which must keep seeing their version while the writer
//! reuses pages. `check()` runs after every reopen. A failing seed is printed; rerun one
//! with `ETCH_SEED=<seed>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use etch_engine::btree::{Db, Fault, Options, ReadTxn, SimFile, TreeId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Model = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

const TREES: [&[u8]; 3] = [b"revs", b"keys", b"meta"];

fn opts(page_size: usize) -> Options {
    Options {
        page_size,
        map_reserve_bytes: 1 << 30,
        checkpoint_bytes: u64::MAX,
    }
}

fn gen_key(rng: &mut SmallRng, big: bool) -> Vec<u8> {
    let id: u32 = rng.random_range(0..400);
    let len = if big && rng.random_ratio(1, 40) {
        rng.random_range(200..3000)
    } else {
        rng.random_range(0..24)
    };
    let mut k = format!("{id:05}").into_bytes();
    k.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(id as u8)));
    k
}

fn gen_value(rng: &mut SmallRng) -> Vec<u8> {
    let len = match rng.random_range(0..100) {
        0..=69 => rng.random_range(0..40),
        70..=94 => rng.random_range(40..400),
        _ => rng.random_range(400..9000),
    };
    let b: u8 = rng.random();
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

/// Compares every tree of the latest version with the model.
fn assert_matches(db: &Db, model: &Model, ctx: &str) {
    let r = db.begin_read().expect("begin_read");
    assert_version(&r, model, ctx);
}

/// Compares every tree of a reader's version with the model.
fn assert_version(r: &ReadTxn, model: &Model, ctx: &str) {
    for name in TREES {
        let want = model.get(name).cloned().unwrap_or_default();
        let got: BTreeMap<Vec<u8>, Vec<u8>> = match r.tree(name).expect("tree") {
            None => BTreeMap::new(),
            Some(t) => {
                assert_eq!(t.len() as usize, want.len(), "{ctx}: len of {name:?}");
                t.iter()
                    .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<_, _>>()
                    .expect("iter")
            }
        };
        assert!(
            got == want,
            "{ctx}: tree {:?} differs from the model",
            String::from_utf8_lossy(name)
        );
    }
}

fn check_ranges(db: &Db, model: &Model, rng: &mut SmallRng) {
    let r = db.begin_read().expect("begin_read");
    for name in TREES {
        let Some(t) = r.tree(name).expect("tree") else {
            continue;
        };
        let want = &model[name];
        for _ in 0..4 {
            let a = gen_key(rng, false);
            let b = gen_key(rng, false);
            let (start, end) = if a <= b { (a, b) } else { (b, a) };
            let end = if rng.random_ratio(1, 5) {
                None
            } else {
                Some(end)
            };
            let fwd: Vec<(Vec<u8>, Vec<u8>)> = t
                .range(&start, end.as_deref())
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()
                .expect("range");
            let model_fwd: Vec<(Vec<u8>, Vec<u8>)> = want
                .iter()
                .filter(|(k, _)| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(fwd, model_fwd, "forward range");
            let mut rev: Vec<(Vec<u8>, Vec<u8>)> = t
                .range_rev(&start, end.as_deref())
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()
                .expect("range_rev");
            rev.reverse();
            assert_eq!(rev, model_fwd, "reverse range");
        }
        // Cursor walking back and forth.
        let mut c = t.cursor();
        let probe = gen_key(rng, false);
        c.seek(&probe).expect("seek");
        let mut expect = want.range(probe.clone()..);
        match expect.next() {
            None => assert!(!c.valid()),
            Some((k, _)) => {
                assert_eq!(c.key().expect("key").expect("valid"), &k[..]);
                if c.prev().expect("prev") {
                    let before = want
                        .range(..probe.clone())
                        .next_back()
                        .expect("model has a previous key");
                    assert_eq!(c.key().expect("key").expect("valid"), &before.0[..]);
                    assert!(c.next().expect("next"));
                    assert_eq!(c.key().expect("key").expect("valid"), &k[..]);
                } else {
                    assert!(want.range(..probe.clone()).next_back().is_none());
                }
            }
        }
    }
}

struct Harness {
    dir: tempfile::TempDir,
    path: PathBuf,
    sim: SimFile,
    db: Option<Db>,
    page_size: usize,
    generation: u32,
}

impl Harness {
    fn new(page_size: usize) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data-0");
        let sim = SimFile::create(&path).expect("sim");
        let db = Db::open_with(Box::new(sim.clone()), opts(page_size)).expect("open");
        Harness {
            dir,
            path,
            sim,
            db: Some(db),
            page_size,
            generation: 0,
        }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().expect("open")
    }

    fn reopen_from(&mut self, image: Vec<u8>) {
        self.generation += 1;
        self.path = self.dir.path().join(format!("data-{}", self.generation));
        self.sim = SimFile::from_image(&self.path, &image).expect("image");
        let db = Db::open_with(Box::new(self.sim.clone()), opts(self.page_size)).expect("reopen");
        db.check().expect("check after reopen");
        self.db = Some(db);
    }

    /// Power cut: unsynced writes are each kept, dropped or torn.
    fn crash(&mut self, rng: &mut SmallRng) {
        self.sim.power_cut();
        let image = self
            .sim
            .crash_image(|_, sectors| match rng.random_range(0..3) {
                0 => None,
                1 => Some(sectors),
                _ => Some(rng.random_range(0..=sectors)),
            });
        self.db = None;
        self.reopen_from(image);
    }

    /// Clean close and reopen.
    fn reopen(&mut self) {
        let db = self.db.take().expect("open");
        db.close().expect("close");
        let image = std::fs::read(&self.path).expect("read file");
        self.reopen_from(image);
    }

    #[allow(dead_code)]
    fn path(&self) -> &Path {
        &self.path
    }
}

fn run_seed(seed: u64, page_size: usize, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut h = Harness::new(page_size);
    let mut committed: Model = BTreeMap::new();
    let mut durable: Model = BTreeMap::new();
    let mut commits: u64 = 0;
    let mut durable_marker: u64 = 0;
    // Readers pinned to the version they began on, with what it held.
    let mut pinned: Vec<(ReadTxn, Model)> = Vec::new();
    for step in 0..steps {
        let ctx = format!("seed {seed} page {page_size} step {step}");
        let op = rng.random_range(0..100);
        if (80..=89).contains(&op) {
            for (r, m) in pinned.drain(..) {
                assert_version(&r, &m, &format!("{ctx}: pinned reader before a reopen"));
            }
        }
        match op {
            // A write transaction with a batch of puts and deletes.
            0..=69 => {
                let db = h.db.as_ref().expect("open");
                let mut w = db.begin_write().expect("begin_write");
                let mut pending = committed.clone();
                let ids: Vec<TreeId> = TREES
                    .iter()
                    .map(|n| w.open_tree(n).expect("open_tree"))
                    .collect();
                for _ in 0..rng.random_range(1..40) {
                    let ti = rng.random_range(0..TREES.len());
                    let m = pending.entry(TREES[ti].to_vec()).or_default();
                    if rng.random_ratio(2, 3) {
                        let k = gen_key(&mut rng, true);
                        let v = gen_value(&mut rng);
                        let replaced = w.put(ids[ti], &k, &v).expect("put");
                        assert_eq!(replaced, m.insert(k, v).is_some(), "{ctx}: put result");
                    } else {
                        // Delete an existing key most of the time.
                        let k = if !m.is_empty() && rng.random_ratio(4, 5) {
                            let n = rng.random_range(0..m.len());
                            m.keys().nth(n).expect("nth").clone()
                        } else {
                            gen_key(&mut rng, true)
                        };
                        let removed = w.delete(ids[ti], &k).expect("delete");
                        assert_eq!(removed, m.remove(&k).is_some(), "{ctx}: delete result");
                    }
                }
                // Reads inside the transaction see its own writes.
                let probe = gen_key(&mut rng, false);
                let ti = rng.random_range(0..TREES.len());
                let got = w.get(ids[ti], &probe).expect("get").map(<[u8]>::to_vec);
                let want = pending.get(TREES[ti]).and_then(|m| m.get(&probe)).cloned();
                assert_eq!(got, want, "{ctx}: read-your-writes");
                if rng.random_ratio(1, 8) {
                    drop(w); // abort
                } else {
                    commits += 1;
                    w.set_marker(&commits.to_le_bytes()).expect("marker");
                    w.commit().expect("commit");
                    committed = pending;
                }
            }
            70..=79 => {
                h.db().checkpoint().expect("checkpoint");
                durable = committed.clone();
                durable_marker = commits;
            }
            80..=84 => {
                h.reopen();
                durable = committed.clone();
                durable_marker = commits;
                assert_matches(h.db(), &committed, &ctx);
            }
            85..=89 => {
                h.crash(&mut rng);
                committed = durable.clone();
                commits = durable_marker;
                let marker = h.db().begin_read().expect("read").marker().to_vec();
                let want_marker = if durable_marker == 0 {
                    Vec::new()
                } else {
                    durable_marker.to_le_bytes().to_vec()
                };
                assert_eq!(marker, want_marker, "{ctx}: marker after crash");
                assert_matches(h.db(), &committed, &ctx);
            }
            90..=94 => {
                if !pinned.is_empty() && (pinned.len() >= 4 || rng.random_ratio(1, 2)) {
                    let i = rng.random_range(0..pinned.len());
                    let (r, m) = pinned.swap_remove(i);
                    assert_version(&r, &m, &format!("{ctx}: pinned reader"));
                } else {
                    let r = h.db().begin_read().expect("begin_read");
                    pinned.push((r, committed.clone()));
                }
            }
            _ => {
                for (r, m) in &pinned {
                    assert_version(r, m, &format!("{ctx}: pinned reader"));
                }
                assert_matches(h.db(), &committed, &ctx);
                check_ranges(h.db(), &committed, &mut rng);
                h.db()
                    .check()
                    .unwrap_or_else(|e| panic!("{ctx}: check: {e}"));
            }
        }
    }
    for (r, m) in pinned.drain(..) {
        assert_version(&r, &m, "final pinned reader");
    }
    h.reopen();
    assert_matches(h.db(), &committed, "final");
}

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("ETCH_SEED") {
        Ok(s) => vec![s.parse().expect("ETCH_SEED is a number")],
        Err(_) => default.collect(),
    }
}

#[test]
fn model_small_pages() {
    for seed in seeds(0..24) {
        run_seed(seed, 512, 300);
    }
}

#[test]
fn model_default_pages() {
    for seed in seeds(100..106) {
        run_seed(seed, 4096, 300);
    }
}

/// Power cut at the Nth write of a workload, for many N: after the reboot the file opens at
/// the last completed checkpoint with exactly its contents.
#[test]
fn power_cut_at_every_nth_write() {
    for n in 1..160u64 {
        let mut rng = SmallRng::seed_from_u64(n);
        let mut h = Harness::new(512);
        h.sim.arm(Fault::PowerCutAtWrite(n));
        let mut committed: Model = BTreeMap::new();
        let mut durable: Model = BTreeMap::new();
        'work: for round in 0..40u64 {
            let db = h.db();
            let Ok(mut w) = db.begin_write() else { break };
            let t = w.open_tree(TREES[0]).expect("open_tree");
            let mut pending = committed.clone();
            for _ in 0..8 {
                let k = gen_key(&mut rng, true);
                let v = gen_value(&mut rng);
                if w.put(t, &k, &v).is_err() {
                    break 'work;
                }
                pending.entry(TREES[0].to_vec()).or_default().insert(k, v);
            }
            w.set_marker(&round.to_le_bytes()).expect("marker");
            if w.commit().is_err() {
                break;
            }
            committed = pending;
            if round % 3 == 2 {
                if db.checkpoint().is_err() {
                    break;
                }
                durable = committed.clone();
            }
        }
        assert!(h.sim.is_dead() || n > 100, "write {n} was never reached");
        h.crash(&mut rng);
        assert_matches(h.db(), &durable, &format!("power cut at write {n}"));
    }
}

#[test]
fn large_values_and_keys_up_to_request_limit() {
    let mut h = Harness::new(4096);
    let big_value: Vec<u8> = (0..(3 << 19)).map(|i: u32| (i % 251) as u8).collect(); // 1.5 MiB
    let big_key: Vec<u8> = (0..(3 << 19)).map(|i: u32| (i % 241) as u8).collect();
    let db = h.db();
    let mut w = db.begin_write().expect("begin");
    let t = w.open_tree(b"big").expect("tree");
    w.put(t, b"small", &big_value).expect("put");
    w.put(t, &big_key, b"v").expect("put");
    w.put(t, &big_key[..70_000], &big_value[..100_000])
        .expect("put");
    w.commit().expect("commit");
    h.reopen();
    let r = h.db().begin_read().expect("read");
    let t = r.tree(b"big").expect("tree").expect("exists");
    assert_eq!(t.get(b"small").expect("get"), Some(&big_value[..]));
    assert_eq!(t.get(&big_key).expect("get"), Some(&b"v"[..]));
    assert_eq!(
        t.get(&big_key[..70_000]).expect("get"),
        Some(&big_value[..100_000])
    );
    let keys: Vec<usize> = t.iter().map(|e| e.expect("iter").0.len()).collect();
    assert_eq!(keys, vec![70_000, 3 << 19, 5]);
    drop(r);
    // Replacing and deleting big entries frees their runs for reuse.
    let db = h.db();
    for _ in 0..5 {
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"big").expect("tree");
        w.put(t, b"small", &big_value[1..]).expect("put");
        w.commit().expect("commit");
        db.checkpoint().expect("checkpoint");
    }
    let hw = db.stats().high_water_pages;
    for _ in 0..20 {
        let mut w = db.begin_write().expect("begin");
        let t = w.open_tree(b"big").expect("tree");
        w.put(t, b"small", &big_value).expect("put");
        w.commit().expect("commit");
        db.checkpoint().expect("checkpoint");
    }
    assert!(
        db.stats().high_water_pages <= hw + 400,
        "space of replaced large values is reused"
    );
    db.check().expect("check");
}
