//! Drives the MVCC store with puts, deletes, txns, compactions and reads decoded from the
//! fuzzer's bytes, checking it against a map of the latest values and a per-revision
//! history of snapshots: reads at any uncompacted revision must match.
#![no_main]

use std::collections::BTreeMap;

use etch_engine::btree::Options;
use etch_engine::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, Store,
    TxnRequest,
};
use libfuzzer_sys::fuzz_target;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(b: u8) -> Vec<u8> {
    vec![b'k', b % 16]
}

fn all(store: &Store, rev: i64) -> Option<State> {
    let req = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
    let r = store.read().expect("read").range(&req).ok()?;
    Some(r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { page_size: 512, map_reserve_bytes: 1 << 28, ..Options::default() };
    let store = Store::open(&dir.path().join("data"), opts).expect("open");
    let mut model: State = BTreeMap::new();
    let mut history: BTreeMap<i64, State> = BTreeMap::new();
    history.insert(1, model.clone());
    let mut compact = 0;
    for chunk in data.chunks(3).take(300) {
        let [op, a, b] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let mut tx = store.write().expect("write");
        match op % 6 {
            0 | 1 => {
                tx.put(&PutRequest { key: key(a), value: vec![b; (b % 5) as usize], ..Default::default() }).expect("put");
                model.insert(key(a), vec![b; (b % 5) as usize]);
            }
            2 => {
                let (lo, hi) = (key(a.min(b)), key(a.max(b)));
                tx.delete_range(&DeleteRangeRequest { key: lo.clone(), range_end: hi.clone(), ..Default::default() })
                    .expect("delete");
                model.retain(|k, _| !(*k >= lo && *k < hi));
            }
            3 => {
                // Create-if-absent, as kube-apiserver does.
                let t = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal,
                        target: CompareTarget::Mod(0),
                        key: key(a),
                        range_end: vec![],
                    }],
                    success: vec![RequestOp::Put(PutRequest { key: key(a), value: vec![b], ..Default::default() })],
                    failure: vec![],
                };
                let r = tx.txn(&t).expect("txn");
                assert_eq!(r.succeeded, !model.contains_key(&key(a)));
                model.entry(key(a)).or_insert_with(|| vec![b]);
            }
            4 => {
                let cur = tx.revision();
                let target = compact + 1 + i64::from(a) % (cur - compact).max(1);
                if target <= cur && tx.compact(target).is_ok() {
                    compact = target;
                }
            }
            _ => {}
        }
        let rev = tx.commit().expect("commit");
        history.insert(rev, model.clone());
        if op % 6 == 4 && b % 2 == 0 {
            store.compact_step(usize::from(b % 7) + 1, std::time::Duration::ZERO).expect("compact step");
        }
        // Reads at the current and at a past revision match the history.
        assert_eq!(all(&store, 0).as_ref(), Some(&model));
        let past = compact.max(1) + i64::from(b) % (rev - compact.max(1) + 1);
        let want = history.range(..=past).next_back().map(|(_, s)| s.clone());
        assert_eq!(all(&store, past), want, "read at revision {past}");
    }
    store.compact_finish(8).expect("compact");
    store.db().check().expect("check");
});
