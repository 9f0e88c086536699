//! A one-member node end to end: proposals and their outputs, ReadIndex, restarts (clean
//! and after a simulated crash) with the state machine's durable position, log compaction,
//! and a failing state machine.
//!
//! Every wait is bounded (`support::WAIT`); every loop is bounded in count.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use etch_engine::btree::{Db, SimFile};
use etch_engine::mvcc::Store;
use etch_engine::wal;
use etch_raft::{Applied, Error, NoPeers, Node};

use support::*;

#[test]
fn single_member_elects_itself_and_applies_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = Arc::new(Mutex::new(MemState::default()));
    let node = start_mem(dir.path(), &st);

    // One at a time: each output is that entry's.
    let mut last = 0;
    for i in 0..20u64 {
        let data = format!("one-{i}").into_bytes();
        let out = answer(node.propose(data.clone()), "proposal").expect("proposal");
        assert_eq!(out.data, data, "proposal {i} got another entry's output");
        assert_eq!(out.count, i + 1);
        assert!(out.index > last, "index {} after {last}", out.index);
        last = out.index;
    }
    let status = node.status();
    assert!(status.is_leader, "{status:?}");
    assert_eq!(status.leader, 1);
    assert!(status.term >= 1);
    // The status is published after the turn that handed the entries to the applier,
    // which may have answered first.
    let deadline = Instant::now() + WAIT;
    while node.status().commit < last {
        assert!(Instant::now() < deadline, "commit stays below {last}");
        thread::sleep(Duration::from_millis(1));
    }

    // Pipelined: many proposals in flight share apply batches; each still gets its own
    // output, in proposal order.
    let payloads: Vec<Vec<u8>> = (0..300).map(|i| format!("many-{i}").into_bytes()).collect();
    let outs = propose_all(&node, &payloads);
    for (i, (out, data)) in outs.iter().zip(&payloads).enumerate() {
        assert_eq!(&out.data, data, "proposal {i} got another entry's output");
        assert_eq!(out.count, 21 + i as u64);
        assert!(out.index > last, "index {} after {last}", out.index);
        last = out.index;
    }
    assert!(*node.applied().borrow() >= last);
    node.stop();

    let st_now = lock(&st);
    assert!(st_now.violations.is_empty(), "{:?}", st_now.violations);
    assert_eq!(st_now.count, 320);
    for out in &outs {
        assert_eq!(st_now.entries.get(&out.index), Some(&out.data));
    }
}

/// The node behind the proposers, replaced on restart.
struct Current {
    /// (generation, node)
    slot: Mutex<(u64, Arc<Node<Out>>)>,
    cv: Condvar,
}

impl Current {
    fn get(&self) -> (u64, Arc<Node<Out>>) {
        let g = lock(&self.slot);
        (g.0, g.1.clone())
    }

    /// Waits (bounded) for a generation after `generation`.
    fn wait_past(&self, generation: u64) {
        let deadline = Instant::now() + WAIT;
        let mut g = lock(&self.slot);
        while g.0 <= generation {
            let now = Instant::now();
            assert!(now < deadline, "no restart after a stopped node");
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[test]
fn restart_mid_stream_loses_no_acknowledged_entry_and_applies_none_twice() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 200;
    const BURST: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let st = Arc::new(Mutex::new(MemState::default()));
    let first = Arc::new(start_mem(dir.path(), &st));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher0 = watch_applied(first.applied(), stop_watch.clone());
    let current = Arc::new(Current {
        slot: Mutex::new((0, first.clone())),
        cv: Condvar::new(),
    });

    let proposers: Vec<_> = (0..THREADS)
        .map(|t| {
            let current = current.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut stopped = 0;
                // Bursts keep several proposals of each thread in flight at the stop.
                for burst in 0..PER_THREAD / BURST {
                    if burst == PER_THREAD / BURST / 2 {
                        // Half way, wait for the restart: the stop (at a third) always
                        // comes before the stream ends, however threads are scheduled.
                        current.wait_past(0);
                    }
                    let (generation, node) = current.get();
                    let sent: Vec<_> = (0..BURST)
                        .map(|j| {
                            let data = format!("t{t}-{}", burst * BURST + j).into_bytes();
                            (node.propose(data.clone()), data)
                        })
                        .collect();
                    let mut was_stopped = false;
                    for (rx, data) in sent {
                        match answer(rx, "proposal") {
                            Ok(out) => {
                                assert_eq!(out.data, data, "got another entry's output");
                                acked.push(out);
                            }
                            // Not known to be applied, nor known not to be.
                            Err(Error::Stopped) => {
                                stopped += 1;
                                was_stopped = true;
                            }
                            Err(e) => panic!("proposal {}: {e}", String::from_utf8_lossy(&data)),
                        }
                    }
                    if was_stopped {
                        current.wait_past(generation);
                    }
                }
                (acked, stopped)
            })
        })
        .collect();

    // Stop a third of the way through, with proposals in flight.
    let mut rx = first.applied();
    wait_applied(&mut rx, (THREADS * PER_THREAD / 3) as u64);
    // Proposers keep using the stopping node: they hear `Stopped` and wait for the next.
    first.stop();
    let before = *first.applied().borrow();
    let watched0 = watcher0.join().expect("watcher");
    assert_increasing(&watched0, "applied index before the restart");
    assert_eq!(watched0.last(), Some(&before));
    let durable = lock(&st).applied.clone();
    assert_eq!(
        durable.index, before,
        "the applied index published is the state machine's"
    );
    assert!(
        before < (THREADS * PER_THREAD) as u64,
        "stopped too late to test anything"
    );

    let second = Arc::new(start_mem(dir.path(), &st));
    let watcher1 = watch_applied(second.applied(), stop_watch.clone());
    assert_eq!(
        *second.applied().borrow(),
        before,
        "applied index moved back"
    );
    {
        let mut g = lock(&current.slot);
        *g = (1, second.clone());
        current.cv.notify_all();
    }

    let mut acked = Vec::new();
    let mut stopped = 0;
    for p in proposers {
        let (a, s) = p.join().expect("proposer");
        acked.extend(a);
        stopped += s;
    }
    assert_eq!(acked.len() + stopped, THREADS * PER_THREAD);
    let last_acked = acked.iter().map(|o| o.index).max().expect("some acked");
    let mut rx = second.applied();
    wait_applied(&mut rx, last_acked);
    stop_watch.store(true, Ordering::Release);
    second.stop();
    let watched1 = watcher1.join().expect("watcher");
    assert_increasing(&watched1, "applied index after the restart");
    assert!(
        watched1[0] >= before,
        "applied went from {before} to {}",
        watched1[0]
    );

    assert_no_violations(&st);
    let st = lock(&st);
    let mut indexes = HashSet::new();
    for out in &acked {
        assert_eq!(
            st.entries.get(&out.index),
            Some(&out.data),
            "acknowledged entry {} is missing",
            out.index
        );
        assert!(
            indexes.insert(out.index),
            "two proposals acknowledged at index {}",
            out.index
        );
    }
    let mut handed = st.handed.clone();
    let n = handed.len();
    handed.dedup();
    assert_eq!(handed.len(), n, "an entry was handed to apply twice");
    assert_increasing(&st.handed, "entries handed to apply");
    // Entries committed before the stop whose proposers heard `Stopped` may apply after
    // the restart; every payload still applies at most once.
    let mut payloads: Vec<&Vec<u8>> = st.entries.values().collect();
    payloads.sort();
    let n = payloads.len();
    payloads.dedup();
    assert_eq!(payloads.len(), n, "a payload applied twice");
}

#[test]
fn restart_does_not_replay_what_the_checkpoint_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let data = dir.path().join("data");
    let log = Arc::new(Mutex::new(StoreLog::default()));

    let (sm, applied) = StoreSm::new(Store::open(&data, store_opts()).expect("store"), &log);
    assert_eq!(applied, Applied::default());
    let node = Node::start(config(&wal_dir), applied, sm, NoPeers).expect("start");
    let payloads: Vec<Vec<u8>> = (0..150).map(|i| format!("k{i:04}").into_bytes()).collect();
    let mut acked: Vec<u64> = Vec::new();
    for chunk in payloads[..100].chunks(25) {
        acked.extend(propose_all(&node, chunk));
    }
    node.stop();
    let stopped_at = *node.applied().borrow();
    drop(node);

    let store = Store::open(&data, store_opts()).expect("reopen store");
    let (sm, applied) = StoreSm::new(store, &log);
    assert_eq!(
        applied.index, stopped_at,
        "the marker holds the last applied index"
    );
    assert!(applied.index >= *acked.last().expect("acked"));
    assert_eq!(applied, lock(&log).checkpointed);
    assert_eq!(applied.conf_state.voters, vec![1]);
    let handed_before = lock(&log).handed.len();

    let node = Node::start(config(&wal_dir), applied.clone(), sm, NoPeers).expect("restart");
    assert_eq!(*node.applied().borrow(), applied.index);
    for chunk in payloads[100..].chunks(25) {
        acked.extend(propose_all(&node, chunk));
    }
    node.stop();
    drop(node);

    let log = lock(&log);
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    let after: &[u64] = &log.handed[handed_before..];
    assert!(
        after.iter().all(|&i| i > applied.index),
        "entries at or below the checkpoint's {} were applied again: {after:?}",
        applied.index
    );
    assert_eq!(
        after.len(),
        50,
        "only the new proposals apply after the restart"
    );
    let store = Store::open(&data, store_opts()).expect("reopen store");
    for (p, &idx) in payloads.iter().zip(&acked) {
        assert_eq!(stored_index(&store, p), Some(idx));
    }
}

#[test]
fn compaction_removes_wal_segments_and_restart_still_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let data = dir.path().join("data");
    let log = Arc::new(Mutex::new(StoreLog::default()));
    let cfg = || {
        let mut c = config(&wal_dir);
        c.wal = wal::Options {
            segment_bytes: 64 << 10,
            ..Default::default()
        };
        c
    };

    let (sm, applied) = StoreSm::new(Store::open(&data, store_opts()).expect("store"), &log);
    let node = Node::start(cfg(), applied, sm, NoPeers).expect("start");
    let payload = |i: usize| {
        let mut p = format!("key-{i:05}-").into_bytes();
        p.resize(1024, b'x');
        p
    };
    let mut acked = BTreeMap::new();
    for chunk in (0..600).collect::<Vec<_>>().chunks(50) {
        let ps: Vec<Vec<u8>> = chunk.iter().map(|&i| payload(i)).collect();
        for (i, idx) in chunk.iter().zip(propose_all(&node, &ps)) {
            acked.insert(*i, idx);
        }
    }
    let before = wal_segments(&wal_dir);
    assert!(
        before.len() >= 5,
        "expected several segments, found {}",
        before.len()
    );

    // Everything applied is checkpointed (the state machine checkpoints every batch).
    let ckpt = lock(&log).checkpointed.clone();
    assert!(ckpt.index >= acked[&599]);
    node.compact(&ckpt);
    // Compaction runs on the node loop, one file at a time: wait until only the segment
    // being written (and perhaps its predecessor) is left.
    let deadline = Instant::now() + WAIT;
    loop {
        let segs = wal_segments(&wal_dir);
        if segs.len() <= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction to {} left {segs:?}",
            ckpt.index
        );
        thread::sleep(Duration::from_millis(5));
    }

    // The log still works after compaction, and across restarts: one right after it, one
    // with entries above the compaction point.
    for i in 600..620 {
        acked.insert(i, propose_all(&node, &[payload(i)])[0]);
    }
    node.stop();
    drop(node);
    for round in 0..2 {
        let (sm, applied) = StoreSm::new(Store::open(&data, store_opts()).expect("store"), &log);
        let handed_before = lock(&log).handed.len();
        let node = Node::start(cfg(), applied.clone(), sm, NoPeers).expect("restart");
        let base = 620 + round * 20;
        for i in base..base + 20 {
            acked.insert(i, propose_all(&node, &[payload(i)])[0]);
        }
        if round == 0 {
            let ckpt = lock(&log).checkpointed.clone();
            node.compact(&ckpt);
        }
        node.stop();
        drop(node);
        let log = lock(&log);
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        assert!(
            log.handed[handed_before..]
                .iter()
                .all(|&i| i > applied.index)
        );
    }

    let store = Store::open(&data, store_opts()).expect("store");
    for (i, idx) in &acked {
        assert_eq!(stored_index(&store, &payload(*i)), Some(*idx), "entry {i}");
    }
}

#[test]
fn read_index_covers_every_acknowledged_proposal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = Arc::new(Mutex::new(MemState::default()));
    let node = start_mem(dir.path(), &st);

    // Right after start: the leader has not committed in its term yet; the read must
    // still be answered.
    let first = answer(node.read_index(), "first read index").expect("read index");
    assert!(
        first >= 1,
        "read index {first} before the leader's first entry"
    );

    let mut applied = node.applied();
    let mut max_acked = 0;
    for round in 0..20 {
        let payloads: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("r{round}-{i}").into_bytes())
            .collect();
        // Reads issued while proposals are in flight, then one after all are acked.
        let early = node.read_index();
        let outs = propose_all(&node, &payloads);
        max_acked = max_acked.max(outs.iter().map(|o| o.index).max().expect("outs"));
        let reads: Vec<_> = (0..3).map(|_| node.read_index()).collect();
        answer(early, "read index").expect("read index");
        for rx in reads {
            let idx = answer(rx, "read index").expect("read index");
            assert!(
                idx >= max_acked,
                "read index {idx} below acknowledged index {max_acked}"
            );
            // Reading once applied has caught up sees every acknowledged entry.
            assert!(wait_applied(&mut applied, idx) >= max_acked);
        }
    }
    node.stop();
    drop(node);

    // After a restart the first read still covers everything acknowledged before it.
    let node = start_mem(dir.path(), &st);
    let idx = answer(node.read_index(), "read index after restart").expect("read index");
    assert!(idx >= max_acked, "read index {idx} below {max_acked}");
    node.stop();
    assert_no_violations(&st);
}

#[test]
fn apply_error_is_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = Arc::new(Mutex::new(MemState::default()));
    let sm = MemSm {
        st: st.clone(),
        fail_on: Some(b"poison".to_vec()),
    };
    let node = Node::start(config(dir.path()), Applied::default(), sm, NoPeers).expect("start");
    let ok = answer(node.propose(b"fine".to_vec()), "proposal").expect("proposal");
    assert!(node.fatal().is_none());

    // The poisoned entry and everything proposed behind it fail with Fatal.
    let poison = node.propose(b"poison".to_vec());
    let behind: Vec<_> = (0..20)
        .map(|i| node.propose(format!("behind-{i}").into_bytes()))
        .collect();
    match answer(poison, "poisoned proposal") {
        Err(Error::Fatal(_)) => {}
        other => panic!("the poisoned proposal got {other:?}"),
    }
    for (i, rx) in behind.into_iter().enumerate() {
        match answer(rx, "proposal behind the poison") {
            Err(Error::Fatal(_)) => {}
            other => panic!("proposal {i} behind the poison got {other:?}"),
        }
    }
    let why = node.fatal().expect("the node reports the fatal error");
    assert!(why.contains("poison"), "{why}");

    // Later requests fail the same way.
    for _ in 0..3 {
        match answer(node.propose(b"later".to_vec()), "later proposal") {
            Err(Error::Fatal(_)) => {}
            other => panic!("a proposal after the failure got {other:?}"),
        }
    }
    match answer(node.read_index(), "read after the failure") {
        Err(Error::Fatal(_)) => {}
        other => panic!("a read after the failure got {other:?}"),
    }
    node.stop();

    // Nothing at or after the poisoned entry applied.
    let st = lock(&st);
    assert_eq!(st.count, 1);
    assert_eq!(st.entries.get(&ok.index), Some(&b"fine".to_vec()));
    assert_eq!(st.entries.len(), 1);
}

#[test]
fn crash_replays_the_wal_above_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let log = Arc::new(Mutex::new(StoreLog::default()));
    let sim = SimFile::create(&dir.path().join("data-0")).expect("sim file");
    let db = Db::open_with(Box::new(sim.clone()), store_opts()).expect("db");
    let (sm, applied) = StoreSm::new(Store::from_db(db).expect("store"), &log);
    let checkpointing = sm.checkpoint.clone();
    let node = Node::start(config(&wal_dir), applied, sm, NoPeers).expect("start");

    let payloads: Vec<Vec<u8>> = (0..200).map(|i| format!("c{i:04}").into_bytes()).collect();
    let mut acked = propose_all(&node, &payloads[..50]);
    // From here on only the WAL is durable: the store commits but never checkpoints.
    checkpointing.store(false, Ordering::Release);
    let ckpt = lock(&log).checkpointed.clone();
    assert!(ckpt.index >= acked[49]);
    for chunk in payloads[50..].chunks(30) {
        acked.extend(propose_all(&node, chunk));
    }

    // Power cut: the data file keeps only what its last checkpoint synced. The node is
    // dropped without `stop` (its WAL holds everything acknowledged).
    sim.power_cut();
    let image = sim.crash_image(|_, _| None);
    drop(node);

    let sim_after = SimFile::from_image(&dir.path().join("data-1"), &image).expect("image");
    let db = Db::open_with(Box::new(sim_after.clone()), store_opts()).expect("reopen db");
    db.check().expect("check after the crash");
    let (sm, applied) = StoreSm::new(Store::from_db(db).expect("store"), &log);
    assert_eq!(
        applied, ckpt,
        "the data file reopens at its last checkpoint"
    );
    assert!(applied.index < *acked.last().expect("acked"));
    let handed_before = lock(&log).handed.len();
    let node = Node::start(config(&wal_dir), applied.clone(), sm, NoPeers).expect("restart");
    let mut rx = node.applied();
    wait_applied(&mut rx, *acked.last().expect("acked"));
    // The node answers new proposals too.
    let extra = answer(node.propose(b"after".to_vec()), "proposal").expect("proposal");
    assert!(extra > *acked.last().expect("acked"));
    node.stop();
    drop(node);

    let log = lock(&log);
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    let replayed = &log.handed[handed_before..];
    assert!(replayed.iter().all(|&i| i > applied.index));
    // Every acknowledged entry above the checkpoint was replayed, once.
    let expect: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|&i| i > applied.index)
        .chain([extra])
        .collect();
    assert_eq!(replayed, &expect[..]);
    drop(log);

    // The store reopened after the crash now holds every acknowledged entry, durably.
    let image = sim_after.crash_image(|_, _| None);
    let sim = SimFile::from_image(&dir.path().join("data-2"), &image).expect("image");
    let store =
        Store::from_db(Db::open_with(Box::new(sim), store_opts()).expect("db")).expect("store");
    for (p, &idx) in payloads.iter().zip(&acked) {
        assert_eq!(
            stored_index(&store, p),
            Some(idx),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
}
