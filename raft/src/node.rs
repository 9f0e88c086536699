//! The node loop (one thread owning the `RawNode`) and the applier (one thread owning the
//! state machine).

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etch_engine::wal::WalStats;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::{oneshot, watch};

use crate::storage::LogStore;
use crate::{Applied, Committed, Config, Error, Result, StateMachine, Transport, logger};

/// Messages taken from the inbox per loop turn, so ticks and Readys keep flowing.
const INBOX_BATCH_MAX: usize = 8192;
/// Apply batches queued before the node loop waits for the applier.
const APPLY_QUEUE_MAX: usize = 64;

type Reply<T> = oneshot::Sender<Result<T>>;

/// The way into the node loop. The loop closes it (takes the sender) when it ends, then
/// answers whatever was already queued: a request is either refused at the gate or
/// answered by the loop, never dropped unanswered.
type Inbox<O> = Arc<Mutex<Option<Sender<Msg<O>>>>>;

enum Msg<O> {
    Propose { data: Vec<u8>, tx: Reply<O> },
    ReadIndex { tx: Reply<u64> },
    Step(Box<Message>),
    Compact(u64, u64),
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
}

struct Shared {
    status: Mutex<NodeStatus>,
    fatal: Mutex<Option<String>>,
    /// The WAL's counters as of the last Ready.
    wal_stats: Mutex<WalStats>,
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
        let store = LogStore::open(&cfg.wal_dir, cfg.wal.clone(), &applied, initial)?;
        let rcfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied: applied.index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_uncommitted_size: 256 << 20,
            ..Default::default()
        };
        rcfg.validate()?;
        let voters = store.conf_state().voters.clone();
        let mut raw = RawNode::new(&rcfg, store, &logger::logger())?;
        if voters == [cfg.id] {
            // A one-member group needs no election timeout to elect itself.
            raw.campaign()?;
        }
        let shared = Arc::new(Shared {
            status: Mutex::new(NodeStatus {
                id: cfg.id,
                ..Default::default()
            }),
            fatal: Mutex::new(None),
            wal_stats: Mutex::new(WalStats::default()),
        });
        let (inbox_tx, inbox_rx) = mpsc::channel();
        let inbox: Inbox<O> = Arc::new(Mutex::new(Some(inbox_tx)));
        let (apply_tx, apply_rx) = mpsc::sync_channel(APPLY_QUEUE_MAX);
        let (applied_tx, applied_rx) = watch::channel(applied.index);
        let applier = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("etch-apply".into())
                .spawn(move || run_applier(sm, apply_rx, applied_tx, shared))
                .expect("spawning the applier thread")
        };
        let looper = {
            let shared = shared.clone();
            let mut l = Loop {
                raw,
                inbox: inbox_rx,
                gate: inbox.clone(),
                apply: apply_tx,
                transport,
                shared,
                waiters: HashMap::new(),
                next_proposal: boot_nanos(),
                held: Vec::new(),
                reads_waiting: Vec::new(),
                reads_inflight: HashMap::new(),
                next_read: 0,
                tick: cfg.tick,
                read_retry_ticks: cfg.election_ticks,
                pending_max: cfg.pending_max,
                applied_term: applied.term,
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

    /// The state machine has made everything up to `durable` durable: the WAL below it
    /// may go.
    pub fn compact(&self, durable: &Applied) {
        let _ = self.send(Msg::Compact(durable.index, durable.term));
    }

    pub fn status(&self) -> NodeStatus {
        *crate_lock(&self.shared.status)
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

fn crate_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Proposal ids start at the boot time in nanoseconds, so a restarted node never mistakes
/// an entry proposed before the restart for one of its new proposals.
fn boot_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Committed entries on their way to the applier, with the proposers waiting on them.
struct ApplyBatch<O> {
    entries: Vec<Entry>,
    /// (position in `entries`, proposer)
    waiters: Vec<(usize, Reply<O>)>,
    conf_state: ConfState,
}

/// Readers sharing one ReadIndex request.
struct ReadRound {
    txs: Vec<Reply<u64>>,
    /// The term it was asked in: a new term (or leader) loses it.
    term: u64,
    /// Ticks since it was (re)issued.
    ticks: usize,
}

struct Loop<O, T> {
    raw: RawNode<LogStore>,
    inbox: Receiver<Msg<O>>,
    /// Closed at shutdown, before the inbox is drained.
    gate: Inbox<O>,
    apply: SyncSender<ApplyBatch<O>>,
    transport: T,
    shared: Arc<Shared>,
    waiters: HashMap<u64, Reply<O>>,
    next_proposal: u64,
    /// Proposals held while no leader is known.
    held: Vec<(Vec<u8>, Reply<O>)>,
    reads_waiting: Vec<Reply<u64>>,
    reads_inflight: HashMap<u64, ReadRound>,
    next_read: u64,
    tick: Duration,
    /// A ReadIndex request unanswered this long is asked again: raft-rs drops one that
    /// reaches a leader before it has committed in its term, or that is lost on the way.
    read_retry_ticks: usize,
    pending_max: usize,
    applied_term: u64,
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
                self.raw.tick();
                self.retry_reads();
                next_tick = Instant::now() + self.tick;
            }
            self.start_reads();
            let mut r = self.on_ready();
            // A new leader's first commit in its term lets the reads held for it start.
            if r.is_ok() && self.start_reads() {
                r = self.on_ready();
            }
            if let Err(e) = r {
                self.fail(format!("raft loop: {e}"));
                break;
            }
            if self.shared.fatal.lock().is_ok_and(|f| f.is_some()) {
                break;
            }
        }
        self.shutdown();
    }

    /// Returns true on Stop.
    fn handle(&mut self, m: Msg<O>) -> bool {
        match m {
            Msg::Propose { data, tx } => self.propose(data, tx),
            Msg::ReadIndex { tx } => self.reads_waiting.push(tx),
            Msg::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!("raft: step: {e}");
                }
            }
            Msg::Compact(index, term) => {
                if let Err(e) = self.raw.mut_store().compact(index, term) {
                    self.fail(format!("compacting the raft log: {e}"));
                }
            }
            Msg::Stop => return true,
        }
        false
    }

    fn propose(&mut self, data: Vec<u8>, tx: Reply<O>) {
        if self.raw.raft.leader_id == 0 {
            if self.held.len() >= self.pending_max {
                let _ = tx.send(Err(Error::TooManyPending));
            } else {
                self.held.push((data, tx));
            }
            return;
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        match self.raw.propose(id.to_le_bytes().to_vec(), data) {
            Ok(()) => {
                self.waiters.insert(id, tx);
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = tx.send(Err(Error::NoLeader));
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
            }
        }
    }

    /// Whether a ReadIndex request asked now can be answered: a leader is known, and if it
    /// is this node, it has committed an entry in its term (raft-rs drops the request
    /// otherwise).
    fn can_read(&self) -> bool {
        let r = &self.raw.raft;
        r.leader_id != 0 && (r.state != StateRole::Leader || r.commit_to_current_term())
    }

    /// Starts one ReadIndex round for every reader waiting; returns whether it did.
    fn start_reads(&mut self) -> bool {
        if self.reads_waiting.is_empty() || !self.can_read() {
            return false;
        }
        let id = self.next_read;
        self.next_read += 1;
        let round = ReadRound {
            txs: std::mem::take(&mut self.reads_waiting),
            term: self.raw.raft.term,
            ticks: 0,
        };
        self.reads_inflight.insert(id, round);
        self.raw.read_index(id.to_le_bytes().to_vec());
        true
    }

    /// Asks again for rounds unanswered for `read_retry_ticks`. A repeated request is
    /// harmless: the first answer completes the round, later ones find nothing.
    fn retry_reads(&mut self) {
        if self.reads_inflight.is_empty() || !self.can_read() {
            return;
        }
        let mut again = Vec::new();
        for (id, round) in &mut self.reads_inflight {
            round.ticks += 1;
            if round.ticks >= self.read_retry_ticks {
                round.ticks = 0;
                again.push(*id);
            }
        }
        for id in again {
            self.raw.read_index(id.to_le_bytes().to_vec());
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            return Err(Error::Raft(
                "installing a snapshot from a peer is not supported yet".into(),
            ));
        }
        for rs in rd.take_read_states() {
            self.finish_read(&rs.request_ctx, Ok(rs.index));
        }
        self.hand_off(rd.take_committed_entries())?;
        let store = self.raw.mut_store();
        let mut last = store.append(rd.entries())?;
        if let Some(hs) = rd.hs() {
            last = Some(store.set_hard_state(hs)?);
        }
        // One wait covers the whole batch: the WAL completes appends in order.
        if let Some(h) = last {
            h.wait()?;
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        let mut light = self.raw.advance(rd);
        if let Some(c) = light.commit_index() {
            self.raw.mut_store().set_commit(c);
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        self.hand_off(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.publish_status();
        Ok(())
    }

    fn hand_off(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut waiters = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match e.entry_type {
                EntryType::EntryNormal => {
                    if let Ok(ctx) = <[u8; 8]>::try_from(&e.context[..])
                        && let Some(tx) = self.waiters.remove(&u64::from_le_bytes(ctx))
                    {
                        waiters.push((i, tx));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(Error::codec)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs);
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(Error::codec)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs);
                }
            }
        }
        self.applied_term = entries.last().map_or(self.applied_term, |e| e.term);
        // Handed-off entries live on in the WAL; memory keeps only a short tail of them.
        if let Some(last) = entries.last() {
            self.raw.mut_store().trim_memory(last.index)?;
        }
        let batch = ApplyBatch {
            entries,
            waiters,
            conf_state: self.raw.store().conf_state().clone(),
        };
        self.apply
            .send(batch)
            .map_err(|_| Error::Fatal("the applier has stopped".into()))
    }

    fn finish_read(&mut self, ctx: &[u8], r: Result<u64>) {
        let Ok(ctx) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some(round) = self.reads_inflight.remove(&u64::from_le_bytes(ctx)) {
            for tx in round.txs {
                let _ = tx.send(r.clone());
            }
        }
    }

    fn publish_status(&mut self) {
        let r = &self.raw.raft;
        let st = NodeStatus {
            id: r.id,
            leader: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            is_leader: r.state == StateRole::Leader,
        };
        *crate_lock(&self.shared.status) = st;
        *crate_lock(&self.shared.wal_stats) = self.raw.store().wal().stats();
        // Reads asked in an earlier term, or with no leader now, never complete (raft-rs
        // forgets them, or ignores the old term's answer); their readers retry.
        let lost: Vec<u64> = self
            .reads_inflight
            .iter()
            .filter(|(_, r)| r.term != st.term || st.leader == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let round = self.reads_inflight.remove(&id).expect("listed above");
            for tx in round.txs {
                let _ = tx.send(Err(Error::NoLeader));
            }
        }
        if st.leader != self.last_leader {
            self.last_leader = st.leader;
            tracing::info!(leader = st.leader, term = st.term, "raft: leader changed");
            // Proposers that gave up leave their entries behind; forget them.
            self.waiters.retain(|_, tx| !tx.is_closed());
            if st.leader != 0 {
                for (data, tx) in std::mem::take(&mut self.held) {
                    self.propose(data, tx);
                }
            }
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
        for (_, tx) in self.waiters.drain() {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in self.held.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        for tx in self.reads_waiting.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, round) in self.reads_inflight.drain() {
            for tx in round.txs {
                let _ = tx.send(Err(err.clone()));
            }
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
                Msg::Step(_) | Msg::Compact(..) | Msg::Stop => {}
            }
        }
        // Dropping the apply sender lets the applier finish what it has and end; the WAL
        // closes with the store when `raw` drops.
    }
}

fn run_applier<S: StateMachine>(
    mut sm: S,
    rx: Receiver<ApplyBatch<S::Output>>,
    applied_tx: watch::Sender<u64>,
    shared: Arc<Shared>,
) {
    while let Ok(first) = rx.recv() {
        // Everything already queued applies as one state-machine transaction.
        let mut batches = vec![first];
        while let Ok(b) = rx.try_recv() {
            batches.push(b);
            if batches.len() >= APPLY_QUEUE_MAX {
                break;
            }
        }
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
            }
            Err(why) => {
                let why = format!("applying entries up to {}: {why}", applied.index);
                tracing::error!("{why}");
                *crate_lock(&shared.fatal) = Some(why.clone());
                for (_, tx) in waiters {
                    let _ = tx.send(Err(Error::Fatal(why.clone())));
                }
                // Nothing more may apply: later entries depend on this one. Proposers of
                // entries already on their way here fail too; the node loop sees the fatal
                // error and ends, which ends this drain.
                for mut b in rx.iter() {
                    for (_, tx) in b.waiters.drain(..) {
                        let _ = tx.send(Err(Error::Fatal(why.clone())));
                    }
                }
                return;
            }
        }
    }
}
