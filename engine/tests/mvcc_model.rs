//! Model-based tests of the MVCC store against a deliberately naive reference: a list of
//! every change ever made, replayed from the start for every query. Random puts, deletes,
//! txns (nested, with compares over ranges), leases, compactions, ranges at random
//! revisions with every option, change-feed reads, aborts, reopens and power cuts.
//! Rerun one seed with `ETCH_SEED=<seed>`.

use std::collections::BTreeMap;

use etch_engine::btree::{self, Db, SimFile};
use etch_engine::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, Error, Event, EventType, KeyValue,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, Store,
    TxnRequest,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
struct Change {
    main: i64,
    key: Vec<u8>,
    /// None: delete.
    put: Option<(Vec<u8>, i64)>,
}

#[derive(Debug, Clone, Default)]
struct Reference {
    changes: Vec<Change>,
    current: i64,
    compact: i64,
    leases: BTreeMap<i64, i64>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Reference {
    fn new() -> Reference {
        Reference {
            current: 1,
            ..Default::default()
        }
    }

    /// Every live key at `rev`, replaying `changes` (plus `extra`, uncommitted ones).
    fn state(&self, rev: i64, extra: &[Change]) -> BTreeMap<Vec<u8>, KeyValue> {
        let mut s: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        for c in self.changes.iter().chain(extra).filter(|c| c.main <= rev) {
            match &c.put {
                Some((value, lease)) => {
                    let prev = s.get(&c.key);
                    let kv = KeyValue {
                        key: c.key.clone(),
                        create_revision: prev.map_or(c.main, |p| p.create_revision),
                        mod_revision: c.main,
                        version: prev.map_or(1, |p| p.version + 1),
                        value: value.clone(),
                        lease: *lease,
                    };
                    s.insert(c.key.clone(), kv);
                }
                None => {
                    s.remove(&c.key);
                }
            }
        }
        s
    }

    fn range(
        &self,
        req: &RangeRequest,
        extra: &[Change],
        current: i64,
    ) -> Result<RangeResponse, String> {
        if req.revision > current {
            return Err("future".into());
        }
        let rev = if req.revision <= 0 {
            current
        } else {
            req.revision
        };
        if rev < self.compact {
            return Err("compacted".into());
        }
        let all: Vec<KeyValue> = self
            .state(rev, extra)
            .into_values()
            .filter(|kv| in_range(&kv.key, &req.key, &req.range_end))
            .collect();
        let count = all.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                kvs: vec![],
                more: false,
                count,
                revision: current,
            });
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // etcd's quirk: with no requested order and no filters it reads only limit + 1 keys
        // (in key order) before sorting them by a non-key target.
        let read = if req.sort_order == SortOrder::None && !filtered && req.limit > 0 {
            req.limit as usize + 1
        } else {
            usize::MAX
        };
        let mut kvs: Vec<KeyValue> = all
            .into_iter()
            .take(read)
            .filter(|kv| req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            .filter(|kv| req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            .filter(|kv| {
                req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision
            })
            .filter(|kv| {
                req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision
            })
            .collect();
        let key_of = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match req.sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, vec![]),
                SortTarget::Create => (kv.create_revision, vec![]),
                SortTarget::Mod => (kv.mod_revision, vec![]),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        match req.sort_order {
            SortOrder::Descend => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
            _ => kvs.sort_by_key(key_of),
        }
        let more = req.limit > 0 && kvs.len() > req.limit as usize;
        if req.limit > 0 {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            kvs,
            more,
            count,
            revision: current,
        })
    }

    fn events(&self, start: i64, key: &[u8], end: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, c) in self.changes.iter().enumerate() {
            if c.main < start || !in_range(&c.key, key, end) {
                continue;
            }
            // At the compact revision only the versions compaction keeps are visible.
            let superseded = self.changes[i + 1..]
                .iter()
                .any(|later| later.key == c.key && later.main <= self.compact);
            if c.main <= self.compact && (c.put.is_none() || superseded) {
                continue;
            }
            // etcd reads the previous version at revision - 1: gone below the compact revision.
            let prev_kv = if c.main - 1 < self.compact {
                None
            } else {
                self.state_before(i).get(&c.key).cloned()
            };
            let after = self.state_upto(i);
            match &c.put {
                Some(_) => out.push(Event {
                    kind: EventType::Put,
                    kv: after[&c.key].clone(),
                    prev_kv,
                }),
                None => out.push(Event {
                    kind: EventType::Delete,
                    kv: KeyValue {
                        key: c.key.clone(),
                        mod_revision: c.main,
                        ..KeyValue::default()
                    },
                    prev_kv,
                }),
            }
        }
        out
    }

    fn state_upto(&self, i: usize) -> BTreeMap<Vec<u8>, KeyValue> {
        let r = Reference {
            changes: self.changes[..=i].to_vec(),
            ..Reference::new()
        };
        r.state(i64::MAX, &[])
    }

    fn state_before(&self, i: usize) -> BTreeMap<Vec<u8>, KeyValue> {
        let r = Reference {
            changes: self.changes[..i].to_vec(),
            ..Reference::new()
        };
        r.state(i64::MAX, &[])
    }
}

fn err_name(e: &Error) -> String {
    match e {
        Error::Compacted => "compacted".into(),
        Error::FutureRev => "future".into(),
        Error::KeyNotFound => "key not found".into(),
        Error::LeaseNotFound => "lease not found".into(),
        Error::LeaseExists => "lease exists".into(),
        other => panic!("unexpected error {other}"),
    }
}

struct Gen<'a> {
    rng: &'a mut SmallRng,
}

impl Gen<'_> {
    fn key(&mut self) -> Vec<u8> {
        let n: u8 = self.rng.random_range(0..12);
        match self.rng.random_range(0..10) {
            0 => vec![b'k', 0, n],
            _ => format!("k{n:02}").into_bytes(),
        }
    }

    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.random_range(0..4) {
            0 => vec![],
            1 => vec![0],
            _ => {
                let mut e = self.key();
                if e.as_slice() < key {
                    e = key.to_vec();
                    e.push(b'z');
                }
                e
            }
        }
    }

    fn value(&mut self) -> Vec<u8> {
        let n = self.rng.random_range(0..5);
        (0..n).map(|_| self.rng.random_range(b'a'..=b'e')).collect()
    }

    fn lease(&mut self, leases: &BTreeMap<i64, i64>) -> i64 {
        if leases.is_empty() || self.rng.random_ratio(2, 3) {
            if self.rng.random_ratio(1, 20) { 999 } else { 0 }
        } else {
            *leases
                .keys()
                .nth(self.rng.random_range(0..leases.len()))
                .expect("nth")
        }
    }

    fn put(&mut self, leases: &BTreeMap<i64, i64>) -> PutRequest {
        let ignore_value = self.rng.random_ratio(1, 10);
        let ignore_lease = self.rng.random_ratio(1, 10);
        PutRequest {
            key: self.key(),
            value: if ignore_value { vec![] } else { self.value() },
            lease: if ignore_lease { 0 } else { self.lease(leases) },
            prev_kv: self.rng.random_ratio(1, 2),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.rng.random_ratio(1, 2),
        }
    }

    fn range(&mut self, current: i64, compact: i64) -> RangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        let rev = match self.rng.random_range(0..6) {
            0 => current + 1,
            1 => (compact - 1).max(1),
            2..=3 => self.rng.random_range(compact.max(1)..=current),
            _ => 0,
        };
        let pick = |r: &mut SmallRng, hi: i64| {
            if r.random_ratio(1, 6) {
                r.random_range(1..=hi.max(1))
            } else {
                0
            }
        };
        RangeRequest {
            key,
            range_end,
            limit: if self.rng.random_ratio(1, 3) {
                self.rng.random_range(1..4)
            } else {
                0
            },
            revision: rev,
            sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                [self.rng.random_range(0..3)],
            sort_target: [
                SortTarget::Key,
                SortTarget::Key,
                SortTarget::Mod,
                SortTarget::Create,
                SortTarget::Version,
            ][self.rng.random_range(0..5)],
            serializable: false,
            keys_only: self.rng.random_ratio(1, 5),
            count_only: self.rng.random_ratio(1, 8),
            min_mod_revision: pick(self.rng, current),
            max_mod_revision: pick(self.rng, current),
            min_create_revision: pick(self.rng, current),
            max_create_revision: pick(self.rng, current),
        }
    }

    fn compare(&mut self, current: i64) -> Compare {
        let key = self.key();
        let range_end = if self.rng.random_ratio(1, 4) {
            self.range_end(&key)
        } else {
            vec![]
        };
        let target = match self.rng.random_range(0..5) {
            0 => CompareTarget::Version(self.rng.random_range(0..3)),
            1 => CompareTarget::Create(self.rng.random_range(0..=current)),
            2 => CompareTarget::Mod(self.rng.random_range(0..=current)),
            3 => CompareTarget::Value(self.value()),
            _ => CompareTarget::Lease(0),
        };
        let result = [
            CompareResult::Equal,
            CompareResult::NotEqual,
            CompareResult::Greater,
            CompareResult::Less,
        ][self.rng.random_range(0..4)];
        Compare {
            result,
            target,
            key,
            range_end,
        }
    }

    fn ops(
        &mut self,
        depth: u32,
        leases: &BTreeMap<i64, i64>,
        current: i64,
        compact: i64,
    ) -> Vec<RequestOp> {
        (0..self.rng.random_range(0..4))
            .map(|_| match self.rng.random_range(0..10) {
                0..=3 => RequestOp::Put(self.put(leases)),
                4..=5 => RequestOp::DeleteRange(self.delete()),
                6..=7 => RequestOp::Range(self.range(current, compact)),
                _ if depth < 2 => RequestOp::Txn(self.txn(depth + 1, leases, current, compact)),
                _ => RequestOp::Put(self.put(leases)),
            })
            .collect()
    }

    fn txn(
        &mut self,
        depth: u32,
        leases: &BTreeMap<i64, i64>,
        current: i64,
        compact: i64,
    ) -> TxnRequest {
        TxnRequest {
            compare: (0..self.rng.random_range(0..3))
                .map(|_| self.compare(current))
                .collect(),
            success: self.ops(depth, leases, current, compact),
            failure: self.ops(depth, leases, current, compact),
        }
    }
}

/// The reference's view of one request's application.
struct Apply<'a> {
    r: &'a Reference,
    pending: Vec<Change>,
    main: i64,
}

impl Apply<'_> {
    fn read_rev(&self) -> i64 {
        if self.pending.is_empty() {
            self.r.current
        } else {
            self.main
        }
    }

    fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.r.state(i64::MAX, &self.pending).get(key).cloned()
    }

    fn check_put(&self, p: &PutRequest, base: &BTreeMap<Vec<u8>, KeyValue>) -> Result<(), String> {
        if (p.ignore_value || p.ignore_lease) && !base.contains_key(&p.key) {
            return Err("key not found".into());
        }
        if p.lease != 0 && !p.ignore_lease && !self.r.leases.contains_key(&p.lease) {
            return Err("lease not found".into());
        }
        Ok(())
    }

    fn put(&mut self, p: &PutRequest) -> ResponseOp {
        let prev = self.get(&p.key);
        let value = if p.ignore_value {
            prev.as_ref().map(|kv| kv.value.clone()).unwrap_or_default()
        } else {
            p.value.clone()
        };
        let lease = if p.ignore_lease {
            prev.as_ref().map_or(0, |kv| kv.lease)
        } else {
            p.lease
        };
        self.pending.push(Change {
            main: self.main,
            key: p.key.clone(),
            put: Some((value, lease)),
        });
        ResponseOp::Put(etch_engine::mvcc::PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
            revision: self.main,
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> ResponseOp {
        let live: Vec<KeyValue> = self
            .r
            .state(i64::MAX, &self.pending)
            .into_values()
            .filter(|kv| in_range(&kv.key, &d.key, &d.range_end))
            .collect();
        for kv in &live {
            self.pending.push(Change {
                main: self.main,
                key: kv.key.clone(),
                put: None,
            });
        }
        let revision = self.read_rev();
        ResponseOp::DeleteRange(etch_engine::mvcc::DeleteRangeResponse {
            deleted: live.len() as i64,
            prev_kvs: if d.prev_kv { live } else { vec![] },
            revision,
        })
    }

    fn compare(base: &BTreeMap<Vec<u8>, KeyValue>, c: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = base
            .values()
            .filter(|kv| in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        let test = |kv: &KeyValue| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Value(v) => kv.value.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if kvs.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_)) && test(&KeyValue::default());
        }
        kvs.into_iter().all(test)
    }

    /// Validates the branch each txn takes against the pre-txn state.
    fn check(&self, t: &TxnRequest, base: &BTreeMap<Vec<u8>, KeyValue>) -> Result<(), String> {
        let ok = t.compare.iter().all(|c| Self::compare(base, c));
        for op in if ok { &t.success } else { &t.failure } {
            match op {
                RequestOp::Put(p) => self.check_put(p, base)?,
                RequestOp::Range(r) => {
                    if r.revision > self.r.current {
                        return Err("future".into());
                    }
                    if r.revision > 0 && r.revision < self.r.compact {
                        return Err("compacted".into());
                    }
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(n) => self.check(n, base)?,
            }
        }
        Ok(())
    }

    fn txn(
        &mut self,
        t: &TxnRequest,
        base: &BTreeMap<Vec<u8>, KeyValue>,
    ) -> (bool, Vec<ResponseOp>) {
        let ok = t.compare.iter().all(|c| Self::compare(base, c));
        let mut out = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            out.push(match op {
                RequestOp::Put(p) => self.put(p),
                RequestOp::DeleteRange(d) => self.delete(d),
                RequestOp::Range(r) => ResponseOp::Range(
                    self.r
                        .range(r, &self.pending, self.read_rev())
                        .expect("validated range"),
                ),
                RequestOp::Txn(n) => {
                    let (succeeded, responses) = self.txn(n, base);
                    ResponseOp::Txn(etch_engine::mvcc::TxnResponse {
                        succeeded,
                        responses,
                        revision: self.read_rev(),
                    })
                }
            });
        }
        (ok, out)
    }
}

fn open_store(sim: &SimFile) -> Store {
    let opts = btree::Options {
        page_size: 1024,
        map_reserve_bytes: 1 << 30,
        checkpoint_bytes: u64::MAX,
    };
    Store::from_db(Db::open_with(Box::new(sim.clone()), opts).expect("open")).expect("store")
}

fn run_seed(seed: u64, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = SimFile::create(&dir.path().join("s0")).expect("sim");
    let mut store = open_store(&sim);
    let mut r = Reference::new();
    let mut durable = r.clone();
    let mut generation = 0;
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        let choice = rng.random_range(0..100);
        if std::env::var("ETCH_DEBUG").is_ok() {
            eprintln!("{ctx}: choice {choice}");
        }
        match choice {
            0..=59 => {
                let mut tx = store.write().expect("write");
                let mut next = r.clone();
                for _ in 0..rng.random_range(1..4) {
                    let mut g = Gen { rng: &mut rng };
                    let before = next.clone();
                    let mut a = Apply {
                        r: &before,
                        pending: vec![],
                        main: next.current + 1,
                    };
                    let dbg = std::env::var("ETCH_DEBUG").is_ok();
                    match g.rng.random_range(0..10) {
                        0..=3 => {
                            let p = g.put(&next.leases);
                            if dbg {
                                eprintln!("{ctx}: put {p:?}");
                            }
                            let base = next.state(i64::MAX, &[]);
                            let want = a.check_put(&p, &base).map(|_| a.put(&p));
                            let got = tx.put(&p).map(ResponseOp::Put).map_err(|e| err_name(&e));
                            assert_eq!(got, want, "{ctx}: put {p:?}");
                        }
                        4..=5 => {
                            let d = g.delete();
                            if dbg {
                                eprintln!("{ctx}: delete {d:?}");
                            }
                            let want = a.delete(&d);
                            assert_eq!(
                                tx.delete_range(&d).expect("delete"),
                                match want {
                                    ResponseOp::DeleteRange(x) => x,
                                    _ => unreachable!(),
                                },
                                "{ctx}: delete {d:?}"
                            );
                        }
                        6..=8 => {
                            let t = g.txn(0, &next.leases, next.current, next.compact);
                            if dbg {
                                eprintln!("{ctx}: txn {t:?}");
                            }
                            let base = next.state(i64::MAX, &[]);
                            let want = a.check(&t, &base).map(|_| {
                                let (succeeded, responses) = a.txn(&t, &base);
                                etch_engine::mvcc::TxnResponse {
                                    succeeded,
                                    responses,
                                    revision: a.read_rev(),
                                }
                            });
                            let got = tx.txn(&t).map_err(|e| err_name(&e));
                            assert_eq!(got, want, "{ctx}: txn {t:?}");
                        }
                        _ => {
                            if g.rng.random_ratio(1, 2) || next.leases.is_empty() {
                                let id = g.rng.random_range(1..6);
                                let want = if next.leases.contains_key(&id) {
                                    Err("lease exists".to_string())
                                } else {
                                    Ok(())
                                };
                                if dbg {
                                    eprintln!("{ctx}: grant {id}");
                                }
                                assert_eq!(
                                    tx.lease_grant(id, 60).map_err(|e| err_name(&e)),
                                    want,
                                    "{ctx}: grant"
                                );
                                if want.is_ok() {
                                    next.leases.insert(id, 60);
                                }
                            } else {
                                let id = *next.leases.keys().next().expect("lease");
                                let attached: Vec<Vec<u8>> = next
                                    .state(i64::MAX, &[])
                                    .into_values()
                                    .filter(|kv| kv.lease == id)
                                    .map(|kv| kv.key)
                                    .collect();
                                for k in &attached {
                                    a.pending.push(etch_engine_change(a.main, k));
                                }
                                if dbg {
                                    eprintln!("{ctx}: revoke {id} attached {attached:?}");
                                }
                                let got = tx.lease_revoke(id).expect("revoke");
                                assert_eq!(got.deleted, attached.len() as i64, "{ctx}: revoke");
                                next.leases.remove(&id);
                            }
                        }
                    }
                    if !a.pending.is_empty() {
                        next.current = a.main;
                        next.changes.extend(a.pending);
                    }
                    assert_eq!(tx.revision(), next.current, "{ctx}: revision after request");
                }
                if rng.random_ratio(1, 8) {
                    drop(tx);
                } else {
                    let rev = tx.commit().expect("commit");
                    assert_eq!(rev, next.current, "{ctx}: commit revision");
                    r = next;
                    let all = RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        ..Default::default()
                    };
                    assert_eq!(
                        store.read().expect("read").range(&all).expect("range"),
                        r.range(&all, &[], r.current).expect("range"),
                        "{ctx}: full state after commit"
                    );
                }
            }
            60..=64 => {
                let target = rng.random_range(0..=r.current + 1);
                let mut tx = store.write().expect("write");
                let got = tx.compact(target).map_err(|e| err_name(&e));
                let want = if target <= r.compact {
                    Err("compacted".to_string())
                } else if target > r.current {
                    Err("future".to_string())
                } else {
                    Ok(())
                };
                assert_eq!(got, want, "{ctx}: compact {target}");
                tx.commit().expect("commit");
                if want.is_ok() {
                    r.compact = target;
                    if rng.random_ratio(1, 2) {
                        store
                            .compact_finish(rng.random_range(1..20))
                            .expect("compact");
                    } else {
                        store
                            .compact_step(3, std::time::Duration::ZERO)
                            .expect("compact step");
                    }
                }
            }
            65..=69 => {
                store.checkpoint().expect("checkpoint");
                durable = r.clone();
            }
            70..=72 => {
                // Power cut: back to the last checkpoint.
                sim.power_cut();
                let img = sim.crash_image(|_, n| if n % 2 == 0 { None } else { Some(n / 2) });
                drop(store);
                generation += 1;
                sim = SimFile::from_image(&dir.path().join(format!("s{generation}")), &img)
                    .expect("image");
                store = open_store(&sim);
                store.db().check().expect("check after power cut");
                r = durable.clone();
                assert_eq!(
                    store.current_revision(),
                    r.current,
                    "{ctx}: revision after reboot"
                );
                assert_eq!(
                    store.compact_revision(),
                    r.compact,
                    "{ctx}: compact revision after reboot"
                );
            }
            _ => {
                let snap = store.read().expect("read");
                assert_eq!(snap.revision(), r.current, "{ctx}");
                for _ in 0..6 {
                    let mut g = Gen { rng: &mut rng };
                    let q = g.range(r.current, r.compact);
                    let want = r.range(&q, &[], r.current);
                    let got = snap.range(&q).map_err(|e| err_name(&e));
                    assert_eq!(got, want, "{ctx}: range {q:?}");
                }
                let start = rng.random_range(r.compact.max(1)..=r.current + 1);
                let mut g = Gen { rng: &mut rng };
                let key = g.key();
                let end = g.range_end(&key);
                let want = r.events(start, &key, &end);
                let got = snap.events(start, &key, &end, usize::MAX).expect("events");
                assert_eq!(got, want, "{ctx}: events from {start}");
                if r.compact > 1 {
                    assert!(matches!(
                        snap.events(r.compact - 1, &key, &end, 10),
                        Err(Error::Compacted)
                    ));
                }
                let leases: Vec<i64> = snap
                    .leases()
                    .expect("leases")
                    .iter()
                    .map(|l| l.id)
                    .collect();
                assert_eq!(
                    leases,
                    r.leases.keys().copied().collect::<Vec<_>>(),
                    "{ctx}: leases"
                );
            }
        }
    }
}

fn etch_engine_change(main: i64, key: &[u8]) -> Change {
    Change {
        main,
        key: key.to_vec(),
        put: None,
    }
}

#[test]
fn mvcc_matches_the_naive_reference() {
    let seeds: Vec<u64> = match std::env::var("ETCH_SEED") {
        Ok(s) => vec![s.parse().expect("number")],
        Err(_) => (0..12).collect(),
    };
    for seed in seeds {
        run_seed(seed, 250);
    }
}

/// Two stores with the same history hash equal whether or not compaction has physically
/// run, and differ once histories differ.
#[test]
fn hash_kv_is_independent_of_physical_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Store::open(&dir.path().join("a"), btree::Options::default()).expect("a");
    let b = Store::open(&dir.path().join("b"), btree::Options::default()).expect("b");
    for s in [&a, &b] {
        for i in 0..200 {
            let mut tx = s.write().expect("write");
            let key = format!("key{}", i % 17).into_bytes();
            if i % 5 == 4 {
                tx.delete_range(&DeleteRangeRequest {
                    key,
                    ..Default::default()
                })
                .expect("delete");
            } else {
                tx.put(&PutRequest {
                    key,
                    value: vec![i as u8; 10],
                    ..Default::default()
                })
                .expect("put");
            }
            tx.commit().expect("commit");
        }
        let mut tx = s.write().expect("write");
        tx.compact(120).expect("compact");
        tx.commit().expect("commit");
    }
    let before = a.read().expect("read").hash_kv(0).expect("hash");
    assert_eq!(before, b.read().expect("read").hash_kv(0).expect("hash"));
    let removed = a.compact_finish(16).expect("compact");
    assert!(removed > 50, "compaction removed {removed} versions");
    let ha = a.read().expect("read").hash_kv(0).expect("hash");
    assert_eq!(ha, before, "physical compaction does not change the hash");
    assert_eq!(
        a.read().expect("read").hash_kv(150).expect("hash"),
        b.read().expect("read").hash_kv(150).expect("hash")
    );
    let mut tx = b.write().expect("write");
    tx.put(&PutRequest {
        key: b"other".to_vec(),
        ..Default::default()
    })
    .expect("put");
    tx.commit().expect("commit");
    assert_ne!(
        b.read().expect("read").hash_kv(0).expect("hash").hash,
        ha.hash
    );
}

/// Concurrent writers each get distinct revisions, and every change is in the feed (the
/// counters once changed after the writer lock was released, so two commits could both
/// take the same revision).
#[test]
fn concurrent_writers_never_share_a_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    // checkpoint_bytes 0: every commit checkpoints, widening any window after publish.
    let opts = btree::Options {
        checkpoint_bytes: 0,
        ..btree::Options::default()
    };
    let store = std::sync::Arc::new(Store::open(&dir.path().join("s"), opts).expect("open"));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut revs = Vec::new();
                for i in 0..300 {
                    let mut tx = store.write().expect("write");
                    let key = format!("t{t}-{i}").into_bytes();
                    let r = tx
                        .put(&PutRequest {
                            key,
                            value: b"v".to_vec(),
                            ..Default::default()
                        })
                        .expect("put");
                    let committed = tx.commit().expect("commit");
                    assert_eq!(committed, r.revision);
                    revs.push(r.revision);
                }
                revs
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (2..=601).collect::<Vec<_>>(),
        "each commit took the next revision exactly once"
    );
    let snap = store.read().expect("read");
    assert_eq!(snap.revision(), 601);
    assert_eq!(
        snap.events(1, &[0], &[0], usize::MAX)
            .expect("events")
            .len(),
        600
    );
}

/// A feed read stops at `max` only between main revisions: a txn's events come whole.
#[test]
fn events_never_split_a_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("s"), btree::Options::default()).expect("open");
    let mut tx = store.write().expect("write");
    let puts = |k: &str| {
        RequestOp::Put(PutRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        })
    };
    tx.txn(&TxnRequest {
        compare: vec![],
        success: vec![puts("a"), puts("b"), puts("c")],
        failure: vec![],
    })
    .expect("txn");
    tx.put(&PutRequest {
        key: b"d".to_vec(),
        ..Default::default()
    })
    .expect("put");
    tx.commit().expect("commit");
    let snap = store.read().expect("read");
    let evs = snap.events(2, &[0], &[0], 1).expect("events");
    assert_eq!(
        evs.iter().map(|e| e.kv.key.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    let rest = snap.events(3, &[0], &[0], 1).expect("events");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].kv.key, b"d");
}
