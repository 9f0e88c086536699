//! The production driver: one thread runs the [`Core`] on wall-clock ticks, the WAL and a
//! [`Transport`]; another applies committed entries to the state machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etch_engine::wal::WalStats;
use raft::prelude::{ConfState, Entry, EntryType, Message, Snapshot};
use tokio::sync::{oneshot, watch};

use crate::core::{Apply, ApplyBatch, Core, CoreConfig, Effects, RequestId};
use crate::disk::WalDisk;
use crate::{
    Applied, Committed, Config, Error, IdGen, Result, StateMachine, Transport, crate_lock,
};

/// Messages taken from the inbox per loop turn, so ticks and Readys keep flowing.
const INBOX_BATCH_MAX: usize = 8192;
/// Apply batches the applier folds into one state-machine transaction. The queue to it is
/// unbounded: the node loop never waits for the applier (a member applying slowly must
/// still answer heartbeats). Proposers are refused once applying lags committing too far
/// (the server's check), which bounds it.
const APPLY_BATCHES_MAX: usize = 64;
/// Ticks between sweeps of the waiters whose requesters gave up.
const SWEEP_TICKS: u64 = 10;

type Reply<T> = oneshot::Sender<Result<T>>;

/// The way into the node loop. The loop closes it (takes the sender) when it ends, then
/// answers whatever was already queued: a request is either refused at the gate or
/// answered by the loop, never dropped unanswered.
type Inbox<O> = Arc<Mutex<Option<Sender<Msg<O>>>>>;

enum Msg<O> {
    Propose {
        data: Vec<u8>,
        tx: Reply<O>,
    },
    ReadIndex {
        tx: Reply<u64>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotDone(u64, bool),
    TransferLeader(u64),
    /// Hand leadership to the first caught-up voter, if any.
    TransferToCaughtUp,
    Compact(u64, u64),
    /// The WAL made something durable.
    Wake,
    /// The applier installed the snapshot at this index.
    Installed(u64),
    Stop,
}

/// What the node loop publishes about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    /// 0: none known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub is_leader: bool,
    /// This node is the only voter and leads with an entry of its term committed: the
    /// commit index is a ReadIndex answer without asking anyone (there is no one to ask).
    pub sole_voter_ready: bool,
}

struct Shared {
    status: Mutex<NodeStatus>,
    fatal: Mutex<Option<String>>,
    /// The WAL's counters as of the last Ready.
    wal_stats: Mutex<WalStats>,
    leader_changes: std::sync::atomic::AtomicU64,
}

/// A running Raft member. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Node<O> {
    inbox: Inbox<O>,
    shared: Arc<Shared>,
    applied: watch::Receiver<u64>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<O> std::fmt::Debug for Node<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("status", &*crate_lock(&self.shared.status))
            .field("applied", &*self.applied.borrow())
            .finish()
    }
}

/// Wakes the node loop when the WAL completes a sync; wakes between two loop turns
/// coalesce into one message.
struct InboxWaker<O> {
    tx: Mutex<Sender<Msg<O>>>,
    pending: AtomicBool,
}

impl<O: Send + 'static> Wake for InboxWaker<O> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = crate_lock(&self.tx).send(Msg::Wake);
        }
    }
}

/// Milliseconds since the epoch: request ids start there, so a restarted member never
/// mistakes an entry proposed before the restart for one of its new requests.
fn boot_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

impl<O: Send + 'static> Node<O> {
    /// Recovers the log from `cfg.wal_dir` above `applied` (the state machine's durable
    /// position) and starts the node and applier threads.
    pub fn start<S, T>(cfg: Config, applied: Applied, sm: S, transport: T) -> Result<Node<O>>
    where
        S: StateMachine<Output = O>,
        T: Transport,
    {
        assert!(cfg.id != 0, "raft member id 0 is reserved");
        let initial = ConfState::from((cfg.initial_voters.clone(), vec![]));
        let mut log = WalDisk::open(&cfg.wal_dir, cfg.wal.clone(), &applied, initial)?;
        log.set_retained(cfg.catchup_entries, cfg.retained_max);
        let boot = boot_millis();
        let mut core = Core::new(
            CoreConfig {
                id: cfg.id,
                election_ticks: cfg.election_ticks,
                applied: applied.clone(),
                pending_max: cfg.pending_max,
                // etcd's request timeout (5 s at its default tick).
                held_ticks_max: 5 * cfg.election_ticks as u64,
                seed: boot,
                // Read contexts and proposal ids never meet, but both must be unique
                // across members: the same prefix serves both.
                ids: IdGen::new(cfg.id, boot.wrapping_add(1 << 20)),
            },
            log,
        )?;
        let shared = Arc::new(Shared {
            status: Mutex::new(core.status()),
            fatal: Mutex::new(None),
            wal_stats: Mutex::new(WalStats::default()),
            leader_changes: Default::default(),
        });
        let (inbox_tx, inbox_rx) = mpsc::channel();
        let waker = Arc::new(InboxWaker {
            tx: Mutex::new(inbox_tx.clone()),
            pending: AtomicBool::new(false),
        });
        core.set_waker(Waker::from(waker.clone()));
        let installed_tx = Mutex::new(inbox_tx.clone());
        let inbox: Inbox<O> = Arc::new(Mutex::new(Some(inbox_tx)));
        let (apply_tx, apply_rx) = mpsc::channel();
        let (applied_tx, applied_rx) = watch::channel(applied.index);
        let applier = {
            let shared = shared.clone();
            let installed = move |index| {
                let _ = crate_lock(&installed_tx).send(Msg::Installed(index));
            };
            std::thread::Builder::new()
                .name("etch-apply".into())
                .spawn(move || run_applier(sm, apply_rx, applied_tx, shared, installed))
                .expect("spawning the applier thread")
        };
        let looper = {
            let shared = shared.clone();
            let mut l = Loop {
                core,
                inbox: inbox_rx,
                gate: inbox.clone(),
                waker,
                apply: apply_tx,
                transport,
                shared,
                proposals: HashMap::new(),
                reads: HashMap::new(),
                ids: IdGen::new(cfg.id, boot),
                tick: cfg.tick,
                ticks: 0,
                last_leader: 0,
            };
            std::thread::Builder::new()
                .name("etch-raft".into())
                .spawn(move || l.run())
                .expect("spawning the raft thread")
        };
        Ok(Node {
            inbox,
            shared,
            applied: applied_rx,
            threads: Mutex::new(vec![looper, applier]),
        })
    }

    /// Hands `m` to the loop; gives it back if the loop has ended (or failed).
    fn send(&self, m: Msg<O>) -> Result<(), (Msg<O>, Error)> {
        if let Some(why) = self.fatal() {
            return Err((m, Error::Fatal(why)));
        }
        let gate = crate_lock(&self.inbox);
        let sent = match gate.as_ref() {
            Some(tx) => tx.send(m).map_err(|mpsc::SendError(m)| m),
            None => Err(m),
        };
        drop(gate);
        sent.map_err(|m| (m, self.stopped_error()))
    }

    /// Why requests fail once the loop has ended.
    fn stopped_error(&self) -> Error {
        match self.fatal() {
            Some(why) => Error::Fatal(why),
            None => Error::Stopped,
        }
    }

    /// Proposes `data`; the receiver yields what applying it produced once it is committed
    /// and applied.
    /// `data` must not be empty: an empty entry is what a new leader appends, and applies
    /// to nothing.
    pub fn propose(&self, data: Vec<u8>) -> oneshot::Receiver<Result<O>> {
        let (tx, rx) = oneshot::channel();
        if data.is_empty() {
            let _ = tx.send(Err(Error::Raft("empty proposal".into())));
            return rx;
        }
        if let Err((Msg::Propose { tx, .. }, e)) = self.send(Msg::Propose { data, tx }) {
            let _ = tx.send(Err(e));
        }
        rx
    }

    /// Asks for a read index: once the applied index reaches it, a read of local state is
    /// linearizable.
    pub fn read_index(&self) -> oneshot::Receiver<Result<u64>> {
        let (tx, rx) = oneshot::channel();
        // A sole voter answers at once: with its last published commit index, which once
        // the leader has committed an entry of its term covers everything of earlier terms
        // (what a restart replays), or the applied index if that is higher. Every entry
        // acknowledged before this call is applied, and the applied index is published
        // before its proposers are answered, so the answer covers them all. Anything else
        // goes round the node loop.
        let st = self.status();
        if st.sole_voter_ready && self.fatal().is_none() {
            let applied = *self.applied.borrow();
            let _ = tx.send(Ok(st.commit.max(applied)));
            return rx;
        }
        if let Err((Msg::ReadIndex { tx }, e)) = self.send(Msg::ReadIndex { tx }) {
            let _ = tx.send(Err(e));
        }
        rx
    }

    /// Watches the applied index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Hands a message from a peer to the node.
    pub fn step(&self, m: Message) {
        let _ = self.send(Msg::Step(Box::new(m)));
    }

    /// The transport could not deliver a message to `peer`.
    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.send(Msg::Unreachable(peer));
    }

    /// How sending a snapshot to `peer` ended.
    pub fn report_snapshot(&self, peer: u64, ok: bool) {
        let _ = self.send(Msg::SnapshotDone(peer, ok));
    }

    /// Asks the leader (this node) to hand leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.send(Msg::TransferLeader(to));
    }

    /// If this node leads, hands leadership to a voter whose log is caught up (a graceful
    /// stop).
    pub fn transfer_leadership(&self) {
        let _ = self.send(Msg::TransferToCaughtUp);
    }

    /// The state machine has made everything up to `durable` durable: the WAL below it
    /// may go.
    pub fn compact(&self, durable: &Applied) {
        let _ = self.send(Msg::Compact(durable.index, durable.term));
    }

    pub fn status(&self) -> NodeStatus {
        *crate_lock(&self.shared.status)
    }

    /// Leader changes this member has seen.
    pub fn leader_changes(&self) -> u64 {
        self.shared.leader_changes.load(Ordering::Relaxed)
    }

    /// The WAL's counters (syncs, bytes, sync durations) as of the last Ready.
    pub fn wal_stats(&self) -> WalStats {
        *crate_lock(&self.shared.wal_stats)
    }

    /// The fatal error that stopped the node, if any.
    pub fn fatal(&self) -> Option<String> {
        crate_lock(&self.shared.fatal).clone()
    }

    /// Stops: proposals not yet committed fail with `Stopped`; committed entries finish
    /// applying; the WAL is closed. Returns once both threads have ended.
    pub fn stop(&self) {
        if let Some(tx) = crate_lock(&self.inbox).as_ref() {
            let _ = tx.send(Msg::Stop);
        }
        let threads = std::mem::take(&mut *crate_lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<O> Drop for Node<O> {
    fn drop(&mut self) {
        if let Some(tx) = crate_lock(&self.inbox).as_ref() {
            let _ = tx.send(Msg::Stop);
        }
        for t in std::mem::take(&mut *crate_lock(&self.threads)) {
            let _ = t.join();
        }
    }
}

/// Committed entries on their way to the applier, with the proposers waiting on them.
struct ApplyBatchOut<O> {
    entries: Vec<Entry>,
    /// (position in `entries`, proposer)
    waiters: Vec<(usize, Reply<O>)>,
    conf_state: ConfState,
}

/// What the applier takes, in order.
enum ApplyJob<O> {
    Entries(ApplyBatchOut<O>),
    /// A snapshot to install; the loop hears back through `Msg::Installed`.
    Snapshot(Snapshot),
}

struct Loop<O, T> {
    core: Core<WalDisk>,
    inbox: Receiver<Msg<O>>,
    /// Closed at shutdown, before the inbox is drained.
    gate: Inbox<O>,
    waker: Arc<InboxWaker<O>>,
    apply: Sender<ApplyJob<O>>,
    transport: T,
    shared: Arc<Shared>,
    proposals: HashMap<RequestId, Reply<O>>,
    reads: HashMap<RequestId, Reply<u64>>,
    ids: IdGen,
    tick: Duration,
    ticks: u64,
    last_leader: u64,
}

impl<O: Send + 'static, T: Transport> Loop<O, T> {
    fn run(&mut self) {
        let mut next_tick = Instant::now() + self.tick;
        let mut stopping = false;
        while !stopping {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match self.inbox.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(m) = first {
                stopping |= self.handle(m);
                for _ in 1..INBOX_BATCH_MAX {
                    match self.inbox.try_recv() {
                        Ok(m) => stopping |= self.handle(m),
                        Err(_) => break,
                    }
                }
            }
            if Instant::now() >= next_tick {
                self.core.tick();
                next_tick = Instant::now() + self.tick;
                self.ticks += 1;
                if self.ticks.is_multiple_of(SWEEP_TICKS) {
                    // Requesters that gave up (a timeout, a closed stream) leave their
                    // waiters behind; their entries may still apply, unanswered.
                    self.proposals.retain(|_, tx| !tx.is_closed());
                    self.reads.retain(|_, tx| !tx.is_closed());
                }
            }
            let r = self.core.ready().and_then(|fx| self.effects(fx));
            if let Err(e) = r {
                self.fail(format!("raft loop: {e}"));
                break;
            }
            self.publish_status();
            if crate_lock(&self.shared.fatal).is_some() {
                break;
            }
        }
        self.shutdown();
    }

    /// Returns true on Stop.
    fn handle(&mut self, m: Msg<O>) -> bool {
        match m {
            Msg::Propose { data, tx } => {
                let req = self.ids.next_id();
                self.proposals.insert(req, tx);
                self.core.propose(req, data);
            }
            Msg::ReadIndex { tx } => {
                let req = self.ids.next_id();
                self.reads.insert(req, tx);
                self.core.read_index(req);
            }
            Msg::Step(m) => self.core.step(*m),
            Msg::Unreachable(id) => self.core.report_unreachable(id),
            Msg::SnapshotDone(id, ok) => self.core.report_snapshot(id, ok),
            Msg::TransferLeader(to) => self.core.transfer_leader(to),
            Msg::TransferToCaughtUp => {
                if let Some(&to) = self.core.caught_up_voters().first() {
                    self.core.transfer_leader(to);
                }
            }
            Msg::Compact(index, term) => {
                if let Err(e) = self.core.compact(index, term) {
                    self.fail(format!("compacting the raft log: {e}"));
                }
            }
            Msg::Wake => self.waker.pending.store(false, Ordering::Release),
            Msg::Installed(index) => self.core.snapshot_installed(index),
            Msg::Stop => return true,
        }
        false
    }

    fn effects(&mut self, fx: Effects) -> Result<()> {
        if !fx.messages.is_empty() {
            self.transport.send(fx.messages);
        }
        for m in fx.snapshots {
            let to = m.to;
            if !self.transport.send_snapshot(m) {
                // raft asks again later.
                self.core.report_snapshot(to, false);
            }
        }
        for a in fx.apply {
            match a {
                Apply::Entries(batch) => self.hand_off(batch)?,
                Apply::Snapshot(s) => self
                    .apply
                    .send(ApplyJob::Snapshot(s))
                    .map_err(|_| Error::Fatal("the applier has stopped".into()))?,
            }
        }
        for (req, r) in fx.replies {
            if let Some(tx) = self.reads.remove(&req) {
                let _ = tx.send(r);
            } else if let Some(tx) = self.proposals.remove(&req) {
                let _ = tx.send(r.and_then(|_| {
                    Err(Error::Raft(
                        "a proposal was answered with a read index".into(),
                    ))
                }));
            }
        }
        Ok(())
    }

    fn hand_off(&mut self, batch: ApplyBatch) -> Result<()> {
        let mut waiters = Vec::new();
        for (i, e) in batch.entries.iter().enumerate() {
            if e.entry_type == EntryType::EntryNormal
                && let Some(req) = ApplyBatch::request_id(e)
                && let Some(tx) = self.proposals.remove(&req)
            {
                waiters.push((i, tx));
            }
        }
        let job = ApplyBatchOut {
            entries: batch.entries,
            waiters,
            conf_state: batch.conf_state,
        };
        self.apply
            .send(ApplyJob::Entries(job))
            .map_err(|_| Error::Fatal("the applier has stopped".into()))
    }

    fn publish_status(&mut self) {
        let st = self.core.status();
        *crate_lock(&self.shared.status) = st;
        *crate_lock(&self.shared.wal_stats) = self.core.log().disk().wal().stats();
        self.shared
            .leader_changes
            .store(self.core.leader_changes(), Ordering::Relaxed);
        if st.leader != self.last_leader {
            self.last_leader = st.leader;
            // Proposers that gave up leave their entries behind; forget them.
            self.proposals.retain(|_, tx| !tx.is_closed());
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!("{why}");
        let mut f = crate_lock(&self.shared.fatal);
        if f.is_none() {
            *f = Some(why);
        }
    }

    fn shutdown(&mut self) {
        let err = match crate_lock(&self.shared.fatal).clone() {
            Some(why) => Error::Fatal(why),
            None => Error::Stopped,
        };
        let _ = self.core.take_waiting();
        for (_, tx) in self.proposals.drain() {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in self.reads.drain() {
            let _ = tx.send(Err(err.clone()));
        }
        // Close the gate, then answer what got in before it closed.
        drop(crate_lock(&self.gate).take());
        while let Ok(m) = self.inbox.try_recv() {
            match m {
                Msg::Propose { tx, .. } => {
                    let _ = tx.send(Err(err.clone()));
                }
                Msg::ReadIndex { tx } => {
                    let _ = tx.send(Err(err.clone()));
                }
                _ => {}
            }
        }
        // Dropping the apply sender lets the applier finish what it has and end; the WAL
        // closes with the log when the core drops.
    }
}

fn run_applier<S: StateMachine>(
    mut sm: S,
    rx: Receiver<ApplyJob<S::Output>>,
    applied_tx: watch::Sender<u64>,
    shared: Arc<Shared>,
    installed: impl Fn(u64),
) {
    let mut next: Option<ApplyJob<S::Output>> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let failed = match job {
            ApplyJob::Snapshot(snap) => {
                let index = snap.get_metadata().index;
                match sm.install(&snap) {
                    Ok(applied) => {
                        applied_tx.send_replace(applied.index);
                        installed(index);
                        None
                    }
                    Err(why) => Some(format!("installing the snapshot at {index}: {why}")),
                }
            }
            ApplyJob::Entries(first) => {
                // Everything already queued applies as one state-machine transaction.
                let mut batches = vec![first];
                while batches.len() < APPLY_BATCHES_MAX {
                    match rx.try_recv() {
                        Ok(ApplyJob::Entries(b)) => batches.push(b),
                        Ok(j) => {
                            next = Some(j);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                apply_batches(&mut sm, batches, &applied_tx, &shared).err()
            }
        };
        if let Some(why) = failed {
            tracing::error!("{why}");
            crate_lock(&shared.fatal).get_or_insert_with(|| why.clone());
            // Nothing more may apply: later entries depend on this one. Proposers of
            // entries already on their way here fail too; the node loop sees the fatal
            // error and ends, which ends this drain.
            for j in next.into_iter().chain(rx.iter()) {
                if let ApplyJob::Entries(mut b) = j {
                    for (_, tx) in b.waiters.drain(..) {
                        let _ = tx.send(Err(Error::Fatal(why.clone())));
                    }
                }
            }
            return;
        }
    }
}

/// Applies batches as one state-machine transaction and answers their proposers. On an
/// error, the node's fatal error is set, then the proposers of these batches are failed
/// (so one who hears of it finds `Node::fatal` set) and the error is returned.
fn apply_batches<S: StateMachine>(
    sm: &mut S,
    mut batches: Vec<ApplyBatchOut<S::Output>>,
    applied_tx: &watch::Sender<u64>,
    shared: &Shared,
) -> std::result::Result<(), String> {
    let last = batches
        .last()
        .and_then(|b| b.entries.last())
        .expect("apply batches are never empty");
    let applied = Applied {
        index: last.index,
        term: last.term,
        conf_state: batches.last().expect("non-empty").conf_state.clone(),
    };
    let mut committed = Vec::new();
    let mut waiters = Vec::new();
    for b in &mut batches {
        // Entry position in the batch → position among the entries applied.
        let mut pos_of = vec![None; b.entries.len()];
        for (i, e) in b.entries.iter().enumerate() {
            if e.entry_type == EntryType::EntryNormal && !e.data.is_empty() {
                pos_of[i] = Some(committed.len());
                committed.push(Committed {
                    index: e.index,
                    term: e.term,
                    data: &e.data,
                });
            }
        }
        for (i, tx) in b.waiters.drain(..) {
            match pos_of[i] {
                Some(p) => waiters.push((p, tx)),
                // An empty proposal has nothing to apply.
                None => drop(tx),
            }
        }
    }
    match sm.apply(&committed, &applied) {
        Ok(outputs) => {
            assert_eq!(
                outputs.len(),
                committed.len(),
                "the state machine returned {} outputs for {} entries",
                outputs.len(),
                committed.len()
            );
            let mut outputs: Vec<Option<S::Output>> = outputs.into_iter().map(Some).collect();
            drop(committed);
            applied_tx.send_replace(applied.index);
            for (p, tx) in waiters {
                let out = outputs[p].take().expect("each output goes to one proposer");
                let _ = tx.send(Ok(out));
            }
            Ok(())
        }
        Err(why) => {
            let why = format!("applying entries up to {}: {why}", applied.index);
            crate_lock(&shared.fatal).get_or_insert_with(|| why.clone());
            for (_, tx) in waiters {
                let _ = tx.send(Err(Error::Fatal(why.clone())));
            }
            Err(why)
        }
    }
}
