//! The Raft core: raft-rs's `RawNode` and etch's bookkeeping around it, as a state machine
//! driven from outside. It reads no clock (time is [`Core::tick`]), spawns no thread and
//! waits on nothing: inputs go in through its methods, and [`Core::ready`] hands back the
//! effects — messages to send, committed entries to apply, answers to requests. Writes to
//! the log's disk are asynchronous: the core tells raft-rs a Ready is persisted only once
//! the disk says so, and holds back the messages that must follow it until then, so the
//! loop driving it keeps answering peers while a sync is in flight.
//!
//! The production driver ([`crate::Node`]) runs it on a thread; the simulation runs many
//! cores on one thread from one seed. raft-rs draws its election jitter from a thread RNG;
//! the core overrides every draw with its own seeded one, so a run is reproducible.

use std::collections::{BTreeMap, VecDeque};
use std::task::Waker;

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use crate::log::{Log, LogDisk};
use crate::{Applied, Error, IdGen, NodeStatus, Result, logger};

/// A request's id, chosen by the driver (unique across members: see [`IdGen`]). A
/// proposal's id travels in its entry's context, so the member that proposed it finds it
/// at apply; a read's id comes back in [`Effects::replies`].
pub type RequestId = u64;

/// Settings of one core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This member's id (non-zero).
    pub id: u64,
    /// Election timeout in ticks (a heartbeat is one tick); the randomized timeout is
    /// drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    /// The state machine's durable position.
    pub applied: Applied,
    /// Proposals held while there is no leader, beyond which new ones fail.
    pub pending_max: usize,
    /// Ticks a proposal is held waiting for a leader before it fails with `NoLeader`.
    pub held_ticks_max: u64,
    /// Seeds the election jitter.
    pub seed: u64,
    /// Makes read contexts unique across members and restarts.
    pub ids: IdGen,
}

/// Committed entries to apply, in order, with the membership after them.
#[derive(Debug)]
pub struct ApplyBatch {
    pub entries: Vec<Entry>,
    pub conf_state: ConfState,
}

impl ApplyBatch {
    /// The request id in an entry's context, if it has one.
    pub fn request_id(e: &Entry) -> Option<RequestId> {
        <[u8; 8]>::try_from(&e.context[..])
            .ok()
            .map(u64::from_le_bytes)
    }
}

/// What the state machine must take next.
#[derive(Debug)]
pub enum Apply {
    /// Committed entries, in order.
    Entries(ApplyBatch),
    /// The leader's snapshot, accepted by raft: replace the state with the data received
    /// with it (at the snapshot's index), durably, then call [`Core::snapshot_installed`].
    Snapshot(Snapshot),
}

/// What the driver must do after feeding the core.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages for peers, in the order raft-rs produced them (per peer, order matters).
    pub messages: Vec<Message>,
    /// Snapshots to send (`MsgSnapshot`, metadata only): the driver attaches the state
    /// machine's data and its position, sends them out of band, and reports the outcome
    /// with [`Core::report_snapshot`].
    pub snapshots: Vec<Message>,
    /// What the state machine applies, in order.
    pub apply: Vec<Apply>,
    /// Answers: a read's index (apply up to it, then read), or a request that failed.
    pub replies: Vec<(RequestId, Result<u64>)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.snapshots.is_empty()
            && self.apply.is_empty()
            && self.replies.is_empty()
    }
}

/// Readers sharing one ReadIndex request.
#[derive(Debug)]
struct ReadRound {
    reqs: Vec<RequestId>,
    /// The term it was asked in: a new term (or leader) loses it.
    term: u64,
    /// Ticks since it was (re)issued.
    ticks: usize,
}

/// A Ready written to the disk and not yet known durable.
#[derive(Debug)]
struct Unpersisted {
    /// The disk's sequence number that covers it.
    seq: u64,
    number: u64,
    /// Messages that may leave only once it is durable (votes, append responses).
    messages: Vec<Message>,
    /// A snapshot at this index that the state machine has yet to install.
    install: Option<u64>,
    /// The snapshot's index, applied once the Ready is persisted.
    snapshot: Option<u64>,
}

/// Readies handled per call of [`Core::ready`]; more wait for the next call.
const READY_ROUNDS_MAX: usize = 16;

/// One member's Raft state machine. See the module docs.
pub struct Core<D: LogDisk> {
    raw: RawNode<Log<D>>,
    rng: SmallRng,
    election_ticks: usize,
    ids: IdGen,
    /// Proposals held while no leader is known, with the tick they arrived at.
    held: VecDeque<(RequestId, Vec<u8>, u64)>,
    held_ticks_max: u64,
    /// Ticks since start.
    ticks: u64,
    pending_max: usize,
    reads_waiting: Vec<RequestId>,
    reads_inflight: BTreeMap<u64, ReadRound>,
    /// A ReadIndex request unanswered this long is asked again: raft-rs drops one that
    /// reaches a leader before it has committed in its term, or that is lost on the way.
    read_retry_ticks: usize,
    unpersisted: VecDeque<Unpersisted>,
    /// Replies produced between two calls of `ready`.
    replies: Vec<(RequestId, Result<u64>)>,
    waker: Option<Waker>,
    last_leader: u64,
    /// Leader changes seen (for etcd's leader_changes_seen metric).
    leader_changes: u64,
}

impl<D: LogDisk> std::fmt::Debug for Core<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("status", &self.status())
            .field("unpersisted", &self.unpersisted.len())
            .finish()
    }
}

impl<D: LogDisk> Core<D> {
    pub fn new(cfg: CoreConfig, log: Log<D>) -> Result<Core<D>> {
        assert!(cfg.id != 0, "raft member id 0 is reserved");
        let rcfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied: cfg.applied.index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_uncommitted_size: 256 << 20,
            ..Default::default()
        };
        rcfg.validate()?;
        let voters = log.conf_state().voters.clone();
        let raw = RawNode::new(&rcfg, log, &logger::logger())?;
        let mut core = Core {
            raw,
            rng: SmallRng::seed_from_u64(cfg.seed ^ cfg.id),
            election_ticks: cfg.election_ticks,
            ids: cfg.ids,
            held: VecDeque::new(),
            held_ticks_max: cfg.held_ticks_max,
            ticks: 0,
            pending_max: cfg.pending_max,
            reads_waiting: Vec::new(),
            reads_inflight: BTreeMap::new(),
            read_retry_ticks: cfg.election_ticks,
            unpersisted: VecDeque::new(),
            replies: Vec::new(),
            waker: None,
            last_leader: 0,
            leader_changes: 0,
        };
        core.pin_jitter();
        if voters == [cfg.id] {
            // A one-member group needs no election timeout to elect itself.
            core.raw.campaign()?;
        }
        Ok(core)
    }

    /// The driver's waker: the disk wakes it when a write becomes durable.
    pub fn set_waker(&mut self, waker: Waker) {
        self.waker = Some(waker);
    }

    /// One tick of logical time (one heartbeat interval).
    pub fn tick(&mut self) {
        // While a snapshot is being installed, raft-rs has dropped it from its unstable
        // log but not yet counted it applied: a campaign then would read the entries
        // below the snapshot, which are gone. A member installing one is a follower, and
        // its election clock waits for the install (bounded) to end.
        if !self.installing() {
            self.raw.tick();
        }
        self.ticks += 1;
        self.pin_jitter();
        self.retry_reads();
        // A proposal never waits for a leader forever: its requester hears `NoLeader`.
        while self
            .held
            .front()
            .is_some_and(|h| self.ticks - h.2 >= self.held_ticks_max)
        {
            let (req, _, _) = self.held.pop_front().expect("checked above");
            self.replies.push((req, Err(Error::NoLeader)));
        }
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.msg_type == MessageType::MsgTimeoutNow && self.installing() {
            // A leader hand-over would campaign (see `tick`); the old leader keeps the
            // lead when its transfer times out.
            return;
        }
        if let Err(e) = self.raw.step(m) {
            tracing::debug!("raft: step: {e}");
        }
        self.pin_jitter();
    }

    /// Proposes `data` (non-empty); its outcome is the apply of the entry whose context
    /// holds `req`, or a failure in [`Effects::replies`].
    pub fn propose(&mut self, req: RequestId, data: Vec<u8>) {
        if data.is_empty() {
            // An empty entry is what a new leader appends: it applies to nothing.
            self.replies
                .push((req, Err(Error::Raft("empty proposal".into()))));
            return;
        }
        if self.raw.raft.leader_id == 0 {
            if self.held.len() >= self.pending_max {
                self.replies.push((req, Err(Error::TooManyPending)));
            } else {
                self.held.push_back((req, data, self.ticks));
            }
            return;
        }
        match self.raw.propose(req.to_le_bytes().to_vec(), data) {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => self.replies.push((req, Err(Error::NoLeader))),
            Err(e) => self.replies.push((req, Err(e.into()))),
        }
    }

    /// Asks for a read index; the answer comes in [`Effects::replies`].
    pub fn read_index(&mut self, req: RequestId) {
        self.reads_waiting.push(req);
    }

    /// The transport could not deliver to `id`.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// How sending a snapshot to `id` ended.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let st = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, st);
    }

    /// Hands leadership to `to` (a caught-up voter), as a graceful stop does.
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// The state machine has made everything up to `index` durable: the log below it may
    /// go.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<()> {
        self.raw.mut_store().compact(index, term)
    }

    pub fn log(&self) -> &Log<D> {
        self.raw.store()
    }

    pub fn log_mut(&mut self) -> &mut Log<D> {
        self.raw.mut_store()
    }

    /// Leader changes seen since start.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes
    }

    /// The voters that are caught up with this leader's log, other than itself.
    pub fn caught_up_voters(&self) -> Vec<u64> {
        let r = &self.raw.raft;
        let last = r.raft_log.last_index();
        let mut v: Vec<u64> = r
            .prs()
            .iter()
            .filter(|(id, p)| **id != r.id && p.matched == last)
            .map(|(id, _)| *id)
            .filter(|id| r.prs().conf().voters().contains(*id))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn status(&self) -> NodeStatus {
        let r = &self.raw.raft;
        NodeStatus {
            id: r.id,
            leader: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            is_leader: r.state == StateRole::Leader,
            sole_voter_ready: r.state == StateRole::Leader
                && r.commit_to_current_term()
                && r.prs().conf().voters().ids().len() == 1,
        }
    }

    /// Whether writes are waiting for the disk.
    pub fn has_unpersisted(&self) -> bool {
        !self.unpersisted.is_empty()
    }

    /// Collects what the inputs since the last call produced. Call it after every batch of
    /// inputs and whenever the disk reports progress.
    pub fn ready(&mut self) -> Result<Effects> {
        let mut fx = Effects::default();
        for _ in 0..READY_ROUNDS_MAX {
            self.absorb_durable(&mut fx)?;
            self.start_reads();
            if !self.raw.has_ready() {
                break;
            }
            let mut rd = self.raw.ready();
            self.route(rd.take_messages(), &mut fx);
            let mut install = None;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let index = snap.get_metadata().index;
                self.raw.mut_store().apply_snapshot(&snap)?;
                fx.apply.push(Apply::Snapshot(snap));
                install = Some(index);
            }
            for rs in rd.take_read_states() {
                self.finish_read(&rs.request_ctx, Ok(rs.index));
            }
            let handed = self.hand_off(rd.take_committed_entries(), &mut fx)?;
            let mut seq = self.raw.mut_store().append(rd.entries(), rd.hs())?;
            if install.is_some() && seq.is_none() {
                seq = Some(self.raw.store().last_seq());
            }
            let messages = rd.take_persisted_messages();
            let number = rd.number();
            self.raw.advance_append_async(rd);
            if let Some(applied) = handed {
                self.raw.advance_apply_to(applied);
            }
            // A Ready that wrote nothing is persisted once every earlier one is.
            let seq = seq.or_else(|| self.unpersisted.back().map(|u| u.seq));
            match seq {
                Some(seq) => self.unpersisted.push_back(Unpersisted {
                    seq,
                    number,
                    messages,
                    install,
                    snapshot: install,
                }),
                None => {
                    self.raw.on_persist_ready(number);
                    self.route(messages, &mut fx);
                }
            }
        }
        self.after_ready();
        fx.replies.append(&mut self.replies);
        Ok(fx)
    }

    /// Tells raft-rs about every Ready the disk has made durable, and releases the
    /// messages that waited for it.
    fn absorb_durable(&mut self, fx: &mut Effects) -> Result<()> {
        if self.unpersisted.is_empty() {
            return Ok(());
        }
        let durable = self
            .raw
            .mut_store()
            .disk_mut()
            .durable(self.waker.as_ref())?;
        let mut last = None;
        let mut snapshot = None;
        // A Ready that carries a snapshot counts as persisted only once the state machine
        // holds its data too: the member acknowledges nothing it could lose.
        while self
            .unpersisted
            .front()
            .is_some_and(|u| u.seq <= durable && u.install.is_none())
        {
            let u = self.unpersisted.pop_front().expect("checked above");
            self.route(u.messages, fx);
            last = Some(u.number);
            snapshot = u.snapshot.or(snapshot);
        }
        if let Some(n) = last {
            self.raw.on_persist_ready(n);
        }
        if let Some(index) = snapshot {
            self.raw.advance_apply_to(index);
        }
        Ok(())
    }

    /// Snapshots go to the driver, which attaches the data; the rest go as they are.
    fn route(&mut self, msgs: Vec<Message>, fx: &mut Effects) {
        for m in msgs {
            if m.msg_type == MessageType::MsgSnapshot {
                fx.snapshots.push(m);
            } else {
                fx.messages.push(m);
            }
        }
    }

    /// The state machine holds the data of the snapshot at `index`, durably.
    pub fn snapshot_installed(&mut self, index: u64) {
        for u in &mut self.unpersisted {
            if u.install == Some(index) {
                u.install = None;
            }
        }
    }

    /// Applies conf changes to raft-rs as they are handed off and queues the batch.
    /// Returns the last index handed off.
    fn hand_off(&mut self, entries: Vec<Entry>, fx: &mut Effects) -> Result<Option<u64>> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(None);
        };
        for e in &entries {
            match e.entry_type {
                EntryType::EntryNormal => {}
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
        // Handed-off entries live on on the disk; memory keeps a tail of them for
        // followers that are behind but still replicating (a dead one gets a snapshot
        // when it comes back).
        let lagging = self.lagging_follower();
        self.raw.mut_store().trim_memory(last, lagging)?;
        fx.apply.push(Apply::Entries(ApplyBatch {
            entries,
            conf_state: self.raw.store().conf_state().clone(),
        }));
        Ok(Some(last))
    }

    /// Whether a snapshot handed to the state machine is not yet counted applied.
    fn installing(&self) -> bool {
        self.raw.raft.raft_log.applied < self.raw.store().snap_index()
    }

    /// On a leader, the lowest index a recently active follower holds.
    fn lagging_follower(&self) -> Option<u64> {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader {
            return None;
        }
        r.prs()
            .iter()
            .filter(|(id, p)| **id != r.id && p.recent_active)
            .map(|(_, p)| p.matched)
            .min()
    }

    /// Replaces raft-rs's election jitter with a draw from the core's seeded RNG whenever
    /// the election clock has just been reset (raft-rs draws at every reset). Redrawing
    /// more often than raft-rs does is harmless; the draw stays in raft-rs's range.
    fn pin_jitter(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let e = self.election_ticks;
            let t = self.rng.random_range(e..2 * e);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    /// Whether a ReadIndex request asked now can be answered: a leader is known, and if it
    /// is this node, it has committed an entry in its term (raft-rs drops the request
    /// otherwise).
    fn can_read(&self) -> bool {
        let r = &self.raw.raft;
        r.leader_id != 0 && (r.state != StateRole::Leader || r.commit_to_current_term())
    }

    /// Starts one ReadIndex round for every reader waiting.
    fn start_reads(&mut self) {
        if self.reads_waiting.is_empty() || !self.can_read() {
            return;
        }
        let ctx = self.ids.next_id();
        let round = ReadRound {
            reqs: std::mem::take(&mut self.reads_waiting),
            term: self.raw.raft.term,
            ticks: 0,
        };
        self.reads_inflight.insert(ctx, round);
        self.raw.read_index(ctx.to_le_bytes().to_vec());
    }

    /// Asks again for rounds unanswered for `read_retry_ticks`. A repeated request is
    /// harmless: the first answer completes the round, later ones find nothing.
    fn retry_reads(&mut self) {
        if self.reads_inflight.is_empty() || !self.can_read() {
            return;
        }
        let mut again = Vec::new();
        for (ctx, round) in &mut self.reads_inflight {
            round.ticks += 1;
            if round.ticks >= self.read_retry_ticks {
                round.ticks = 0;
                again.push(*ctx);
            }
        }
        for ctx in again {
            self.raw.read_index(ctx.to_le_bytes().to_vec());
        }
    }

    fn finish_read(&mut self, ctx: &[u8], r: Result<u64>) {
        let Ok(ctx) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some(round) = self.reads_inflight.remove(&u64::from_le_bytes(ctx)) {
            for req in round.reqs {
                self.replies.push((req, r.clone()));
            }
        }
    }

    /// Leader and term bookkeeping after a Ready.
    fn after_ready(&mut self) {
        let st = self.status();
        // Reads asked in an earlier term, or with no leader now, never complete (raft-rs
        // forgets them, or ignores the old term's answer); their readers retry.
        let lost: Vec<u64> = self
            .reads_inflight
            .iter()
            .filter(|(_, r)| r.term != st.term || st.leader == 0)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in lost {
            let round = self.reads_inflight.remove(&ctx).expect("listed above");
            let why = if st.leader == 0 {
                Error::NoLeader
            } else {
                Error::LeaderChanged
            };
            for req in round.reqs {
                self.replies.push((req, Err(why.clone())));
            }
        }
        if st.leader != self.last_leader {
            self.last_leader = st.leader;
            if st.leader != 0 {
                self.leader_changes += 1;
            }
            tracing::info!(
                member = st.id,
                leader = st.leader,
                term = st.term,
                "raft: leader changed"
            );
            if st.leader != 0 {
                for (req, data, _) in std::mem::take(&mut self.held) {
                    self.propose(req, data);
                }
            }
        }
    }

    /// Takes every request the core still holds unanswered (at stop, to fail them).
    pub fn take_waiting(&mut self) -> Vec<RequestId> {
        let mut reqs: Vec<RequestId> = self.held.drain(..).map(|(r, _, _)| r).collect();
        reqs.append(&mut self.reads_waiting);
        for (_, round) in std::mem::take(&mut self.reads_inflight) {
            reqs.extend(round.reqs);
        }
        reqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDisk;

    fn lone_member_of_three() -> Core<MemDisk> {
        let applied = Applied {
            index: 0,
            term: 0,
            conf_state: ConfState::default(),
        };
        let log = MemDisk::new()
            .open(&applied, ConfState::from((vec![1, 2, 3], vec![])))
            .unwrap();
        Core::new(
            CoreConfig {
                id: 1,
                election_ticks: 10,
                applied,
                pending_max: 2,
                held_ticks_max: 30,
                seed: 7,
                ids: IdGen::new(1, 1),
            },
            log,
        )
        .unwrap()
    }

    #[test]
    fn a_proposal_with_no_leader_fails_after_the_hold_limit() {
        // Members 2 and 3 never answer: no leader is ever known.
        let mut c = lone_member_of_three();
        c.propose(11, b"a".to_vec());
        c.propose(12, b"b".to_vec());
        // Beyond `pending_max` a proposal fails at once.
        c.propose(13, b"c".to_vec());
        let fx = c.ready().unwrap();
        assert_eq!(fx.replies.len(), 1, "{:?}", fx.replies);
        assert_eq!(fx.replies[0].0, 13);
        assert!(matches!(fx.replies[0].1, Err(Error::TooManyPending)));
        for _ in 0..29 {
            c.tick();
            assert!(c.ready().unwrap().replies.is_empty());
        }
        c.tick();
        let fx = c.ready().unwrap();
        let mut failed: Vec<RequestId> = fx
            .replies
            .iter()
            .map(|(r, e)| {
                assert!(matches!(e, Err(Error::NoLeader)), "{e:?}");
                *r
            })
            .collect();
        failed.sort_unstable();
        assert_eq!(failed, vec![11, 12]);
        assert!(c.take_waiting().is_empty());
    }
}
