//! `Store::replace_from`: a follower takes its leader's state in one transaction, keeping
//! its local trees; readers pinned before keep the old state.

use etch_engine::btree;
use etch_engine::mvcc::{PutRequest, RangeRequest, Store};

fn put(s: &Store, k: &str, v: &str) {
    let mut w = s.write().expect("write");
    w.put(&PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        ..Default::default()
    })
    .expect("put");
    w.commit().expect("commit");
}

fn all(s: &Store) -> Vec<(Vec<u8>, Vec<u8>, i64, i64)> {
    s.read()
        .expect("read")
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision, kv.version))
        .collect()
}

#[test]
fn replace_takes_the_sources_state_and_keeps_local_trees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leader = Store::open(&dir.path().join("a.db"), btree::Options::default()).expect("a");
    let follower = Store::open(&dir.path().join("b.db"), btree::Options::default()).expect("b");
    for i in 0..3000 {
        put(&leader, &format!("/k/{:05}", i % 700), &format!("v{i}"));
    }
    {
        let mut w = leader.write().expect("write");
        w.compact(1500).expect("compact");
        w.meta_put(b"local", b"who", b"leader").expect("meta");
        w.set_marker(b"leader-marker").expect("marker");
        w.commit().expect("commit");
    }
    for i in 0..50 {
        put(&follower, &format!("/old/{i}"), "x");
    }
    {
        let mut w = follower.write().expect("write");
        w.meta_put(b"local", b"who", b"follower").expect("meta");
        w.commit().expect("commit");
    }
    let before = follower.read().expect("pinned reader");
    let old = all(&follower);

    let src = leader.read().expect("source");
    follower
        .replace_from(src.btree(), &[b"local"])
        .expect("replace");

    assert_eq!(
        all(&follower),
        all(&leader),
        "the follower holds the leader's keys"
    );
    assert_eq!(follower.current_revision(), leader.current_revision());
    assert_eq!(follower.compact_revision(), 1500);
    assert_eq!(follower.marker().expect("marker"), b"leader-marker");
    let snap = follower.read().expect("read");
    assert_eq!(
        snap.meta_get(b"local", b"who").expect("meta").as_deref(),
        Some(&b"follower"[..]),
        "local trees are kept"
    );
    // History below the compaction is gone, above it is kept, as on the leader.
    let at = |s: &Store, rev: i64| {
        s.read().expect("read").range(&RangeRequest {
            key: b"/k/00001".to_vec(),
            revision: rev,
            ..Default::default()
        })
    };
    assert!(
        at(&follower, 1000).is_err(),
        "compacted revisions are refused"
    );
    assert_eq!(
        at(&follower, 2000).expect("range").kvs,
        at(&leader, 2000).expect("range").kvs
    );
    // A reader pinned before the install still sees the old state.
    let old_again: Vec<_> = before
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision, kv.version))
        .collect();
    assert_eq!(old_again, old);
    drop(before);
    drop(snap);
    follower.checkpoint().expect("checkpoint");
    follower
        .db()
        .check()
        .expect("the replaced file checks clean");
    // Writes continue at the leader's revisions.
    put(&follower, "/k/new", "n");
    assert_eq!(follower.current_revision(), leader.current_revision() + 1);
}
