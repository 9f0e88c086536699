//! Shared by the node tests: waiting on replies without an async runtime, and two state
//! machines that check they never see an entry twice (one in memory, one over the MVCC
//! store).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use etch_engine::btree;
use etch_engine::mvcc::{PutRequest, RangeRequest, Store};
use etch_raft::{Applied, Committed, Config, NoPeers, Node, StateMachine};
use tokio::sync::{oneshot, watch};

/// How long any single wait may take before the test fails (generous: CI machines are
/// loaded).
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Waiting without a runtime

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread until it completes or `deadline` passes.
pub fn block_until<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}

/// Polls `fut` to completion; fails the test after [`WAIT`].
pub fn block_on<F: Future>(fut: F, what: &str) -> F::Output {
    block_until(fut, Instant::now() + WAIT).unwrap_or_else(|| panic!("timed out: {what}"))
}

/// The outcome of a proposal or read. A closed channel (the node dropped the reply) fails
/// the test: every request must get an answer.
pub fn answer<T>(rx: oneshot::Receiver<etch_raft::Result<T>>, what: &str) -> etch_raft::Result<T> {
    block_on(rx, what).unwrap_or_else(|_| panic!("{what}: the reply was dropped unanswered"))
}

/// Waits until the applied index reaches `index`; returns the value seen.
pub fn wait_applied(rx: &mut watch::Receiver<u64>, index: u64) -> u64 {
    let v = block_on(rx.wait_for(|v| *v >= index), "applied index")
        .expect("the applier stopped before reaching the index");
    *v
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn config(wal_dir: &Path) -> Config {
    let mut cfg = Config::new(1, wal_dir);
    // Short ticks keep start-up quick; a one-member group elects itself without timeouts.
    cfg.tick = Duration::from_millis(10);
    cfg.wal.segment_bytes = 1 << 20;
    cfg
}

/// Records every applied-index value published until the node's applier ends (or `stop`
/// is set, checked at least every 50 ms).
pub fn watch_applied(
    mut rx: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<u64>> {
    thread::spawn(move || {
        let mut seen = vec![*rx.borrow_and_update()];
        // Bounded: about 10 minutes of 50 ms waits.
        for _ in 0..12_000 {
            if stop.load(Ordering::Acquire) {
                break;
            }
            match block_until(rx.changed(), Instant::now() + Duration::from_millis(50)) {
                None => continue,
                Some(Ok(())) => seen.push(*rx.borrow_and_update()),
                Some(Err(_)) => break,
            }
        }
        seen
    })
}

pub fn assert_increasing(vals: &[u64], what: &str) {
    for w in vals.windows(2) {
        assert!(w[0] <= w[1], "{what}: {} then {}", w[0], w[1]);
    }
}

// ---------------------------------------------------------------------------------------
// An in-memory state machine whose state outlives the node (as durable data would)

/// What applying one entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub index: u64,
    /// Normal entries applied so far, this one included.
    pub count: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct MemState {
    pub applied: Applied,
    pub entries: BTreeMap<u64, Vec<u8>>,
    pub count: u64,
    /// Broken invariants seen by the state machine; a test asserts this stays empty.
    pub violations: Vec<String>,
    /// Indexes of the entries handed to `apply`, in order, over every node generation.
    pub handed: Vec<u64>,
}

#[derive(Debug)]
pub struct MemSm {
    pub st: Arc<Mutex<MemState>>,
    /// An entry with this payload fails the apply.
    pub fail_on: Option<Vec<u8>>,
}

impl MemSm {
    pub fn new(st: &Arc<Mutex<MemState>>) -> MemSm {
        MemSm {
            st: st.clone(),
            fail_on: None,
        }
    }
}

impl StateMachine for MemSm {
    type Output = Out;

    fn apply(&mut self, entries: &[Committed<'_>], applied: &Applied) -> Result<Vec<Out>, String> {
        let mut st = lock(&self.st);
        let st = &mut *st;
        let mut problem = None;
        if applied.index <= st.applied.index {
            problem = Some(format!(
                "applied index {} after {}",
                applied.index, st.applied.index
            ));
        }
        let mut prev = st.applied.index;
        for e in entries {
            st.handed.push(e.index);
            if problem.is_none() && (e.index <= prev || e.index > applied.index) {
                problem = Some(format!(
                    "entry {} handed to apply after {prev} (batch up to {}; applied {})",
                    e.index, applied.index, st.applied.index
                ));
            }
            prev = e.index;
        }
        if let Some(p) = problem {
            st.violations.push(p.clone());
            return Err(p);
        }
        // All or nothing: effects are kept only if every entry applies.
        let mut outs = Vec::with_capacity(entries.len());
        let mut count = st.count;
        for e in entries {
            if self.fail_on.as_deref() == Some(e.data) {
                return Err(format!("entry {} is poison", e.index));
            }
            count += 1;
            outs.push(Out {
                index: e.index,
                count,
                data: e.data.to_vec(),
            });
        }
        for o in &outs {
            st.entries.insert(o.index, o.data.clone());
        }
        st.count = count;
        st.applied = applied.clone();
        Ok(outs)
    }
}

pub fn start_mem(wal_dir: &Path, st: &Arc<Mutex<MemState>>) -> Node<Out> {
    let applied = lock(st).applied.clone();
    Node::start(config(wal_dir), applied, MemSm::new(st), NoPeers).expect("start node")
}

pub fn assert_no_violations(st: &Arc<Mutex<MemState>>) {
    let st = lock(st);
    assert!(
        st.violations.is_empty(),
        "state machine saw: {:?}",
        st.violations
    );
}

// ---------------------------------------------------------------------------------------
// A state machine over the MVCC store: each batch is one transaction carrying the applied
// position as the data file's marker

#[derive(Debug, Default)]
pub struct StoreLog {
    /// Indexes handed to `apply`.
    pub handed: Vec<u64>,
    pub violations: Vec<String>,
    /// The applied position of the last checkpoint.
    pub checkpointed: Applied,
}

#[derive(Debug)]
pub struct StoreSm {
    pub store: Store,
    /// The applied position the store held when this instance started, then the last one
    /// it committed.
    pub applied: u64,
    pub log: Arc<Mutex<StoreLog>>,
    /// Checkpoint after every batch while set.
    pub checkpoint: Arc<AtomicBool>,
}

impl StoreSm {
    pub fn new(store: Store, log: &Arc<Mutex<StoreLog>>) -> (StoreSm, Applied) {
        let applied = Applied::decode(&store.marker().expect("marker")).expect("decode applied");
        let sm = StoreSm {
            store,
            applied: applied.index,
            log: log.clone(),
            checkpoint: Arc::new(AtomicBool::new(true)),
        };
        (sm, applied)
    }
}

impl StateMachine for StoreSm {
    /// The entry's index.
    type Output = u64;

    fn apply(&mut self, entries: &[Committed<'_>], applied: &Applied) -> Result<Vec<u64>, String> {
        let mut log = lock(&self.log);
        let mut prev = self.applied;
        for e in entries {
            log.handed.push(e.index);
            if e.index <= prev {
                let why = format!(
                    "entry {} handed to apply after {prev} (the store holds up to {})",
                    e.index, self.applied
                );
                log.violations.push(why.clone());
                return Err(why);
            }
            prev = e.index;
        }
        let mut txn = self.store.write().map_err(|e| e.to_string())?;
        for e in entries {
            txn.put(&PutRequest {
                key: e.data.to_vec(),
                value: e.index.to_be_bytes().to_vec(),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
        }
        txn.set_marker(&applied.encode())
            .map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        if self.checkpoint.load(Ordering::Acquire) {
            self.store.checkpoint().map_err(|e| e.to_string())?;
            log.checkpointed = applied.clone();
        }
        self.applied = applied.index;
        Ok(entries.iter().map(|e| e.index).collect())
    }
}

pub fn store_opts() -> btree::Options {
    btree::Options {
        map_reserve_bytes: 1 << 30,
        ..Default::default()
    }
}

/// The index stored under `key`, if any.
pub fn stored_index(store: &Store, key: &[u8]) -> Option<u64> {
    let r = store
        .read()
        .expect("read")
        .range(&RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .expect("range");
    r.kvs
        .first()
        .map(|kv| u64::from_be_bytes(kv.value[..].try_into().expect("8-byte value")))
}

/// Proposes every payload at once, then waits for all of them; returns their outputs in
/// proposal order.
pub fn propose_all<O: Send + 'static>(node: &Node<O>, payloads: &[Vec<u8>]) -> Vec<O> {
    let rxs: Vec<_> = payloads.iter().map(|p| node.propose(p.clone())).collect();
    rxs.into_iter()
        .enumerate()
        .map(|(i, rx)| answer(rx, "proposal").unwrap_or_else(|e| panic!("proposal {i}: {e}")))
        .collect()
}

pub fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read WAL dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}
