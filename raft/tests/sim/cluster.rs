//! A cluster of Raft cores on one thread, driven by one seeded scheduler: a simulated
//! network that drops, delays, reorders, duplicates and partitions (also one way only);
//! memory disks that sync late (a slow disk) and lose their unsynced tail in a crash; a
//! state machine whose durable checkpoint lags its applied state; clients that propose and
//! read on any member. Checkers run as it goes:
//! - at most one leader per term;
//! - every member applies the same entry at each index (and each index once, in order);
//! - no value applied twice by one member;
//! - a ReadIndex answer covers every write acknowledged before the read was asked, and
//!   the state read covers it too;
//! - the clients' puts, deletes, compare-and-swaps and linearizable reads on a few keys
//!   form a linearizable history (see `history`), and every compare-and-swap's answer is
//!   what the log decided;
//! - at the end, once the faults stop: one leader, every member caught up with the same
//!   history, and every acknowledged write in it at the index it was acknowledged at.
//!
//! Time is in simulated milliseconds; a tick is `TICK_MS`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use etch_raft::{
    Applied, Apply, ApplyBatch, ConfState, Core, CoreConfig, Entry, EntryType, IdGen, MemDisk,
    Message, MessageType, Snapshot,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::history::{self, History, Kind, Kv, Op};

pub const TICK_MS: u64 = 10;
const ELECTION_TICKS: usize = 10;
/// Entries a leader keeps below its applied index for any follower, and at most for a
/// follower still replicating.
const RETAINED_ENTRIES: u64 = 64;
const RETAINED_ENTRIES_MAX: u64 = 512;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub members: usize,
    /// Simulated time with faults.
    pub fault_ms: u64,
    /// Simulated time after the faults stop, for the cluster to converge.
    pub settle_ms: u64,
    /// Mean gap between client requests, in ms.
    pub request_gap_ms: u64,
    pub faults: Faults,
}

/// Which faults happen during the fault phase.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Per-message drop chance, in permille.
    pub drop_permille: u32,
    /// Per-message duplicate chance, in permille (never a proposal: see `deliver`).
    pub dup_permille: u32,
    /// Per-message chance of a long delay (reordering), in permille.
    pub delay_permille: u32,
    pub partitions: bool,
    pub crashes: bool,
    pub slow_disks: bool,
}

impl Faults {
    pub const ALL: Faults = Faults {
        drop_permille: 30,
        dup_permille: 10,
        delay_permille: 50,
        partitions: true,
        crashes: true,
        slow_disks: true,
    };
    pub const NONE: Faults = Faults {
        drop_permille: 0,
        dup_permille: 0,
        delay_permille: 0,
        partitions: false,
        crashes: false,
        slow_disks: false,
    };
}

/// A member's state machine: the values applied, in order. Its checkpoint is what
/// survives a crash; the log replays the rest.
#[derive(Debug, Default, Clone)]
struct Sm {
    applied: Applied,
    /// (index, value) of every normal entry applied.
    values: Vec<(u64, u64)>,
    seen: HashSet<u64>,
    /// The key-value state the values make.
    kv: Kv,
    checkpoint: Applied,
    checkpoint_len: usize,
}

struct Member {
    id: u64,
    core: Option<Core<MemDisk>>,
    disk: MemDisk,
    sm: Sm,
    boots: u64,
    ids: IdGen,
    tick_phase: u64,
    /// When the sync in flight completes.
    sync_at: Option<u64>,
    slow_disk: bool,
    /// While down: when it restarts.
    up_at: Option<u64>,
    /// Proposals waiting for their apply: request id → (value, call in the history).
    proposals: BTreeMap<u64, (u64, usize)>,
    /// Reads: request id → (the highest index acknowledged when it was asked, key, call).
    reads: BTreeMap<u64, (u64, u8, usize)>,
    /// Reads answered, waiting for the apply to reach their index: (index, floor, key,
    /// call).
    reads_ready: Vec<(u64, u64, u8, usize)>,
}

struct Packet {
    at: u64,
    seq: u64,
    from: u64,
    to: u64,
    msg: Message,
}

/// What a run saw, for the report and for comparing two runs of one seed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub acked_writes: usize,
    pub reads_checked: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub leaders: usize,
    pub snapshots: usize,
    pub installs: usize,
    /// Calls the linearizability check covered.
    pub calls_checked: usize,
    pub last_index: u64,
    /// A digest of every apply and leader change, in order.
    pub trace: u64,
}

pub struct Sim {
    opts: Options,
    rng: SmallRng,
    seed: u64,
    now: u64,
    members: Vec<Member>,
    voters: Vec<u64>,
    net: Vec<Packet>,
    packet_seq: u64,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
    heal_at: Option<u64>,
    /// index → (term, type, data) of the entry applied there, by anyone.
    chosen: BTreeMap<u64, (u64, i32, Vec<u8>)>,
    /// term → leader seen in it.
    leaders: BTreeMap<u64, u64>,
    /// value → index, of every acknowledged write.
    acked: BTreeMap<u64, u64>,
    max_acked_index: u64,
    next_value: u64,
    /// What each value's write does: key and operation.
    ops: BTreeMap<u64, (u8, Op)>,
    history: History,
    report: Report,
}

fn fnv(h: u64, x: u64) -> u64 {
    let mut h = h;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl Sim {
    pub fn new(seed: u64, opts: Options) -> Sim {
        let mut rng = SmallRng::seed_from_u64(seed);
        let voters: Vec<u64> = (1..=opts.members as u64).collect();
        let members = voters
            .iter()
            .map(|&id| Member {
                id,
                core: None,
                disk: MemDisk::new(),
                sm: Sm::default(),
                boots: 0,
                ids: IdGen::new(id, 0),
                tick_phase: rng.random_range(0..TICK_MS),
                sync_at: None,
                slow_disk: false,
                up_at: Some(0),
                proposals: BTreeMap::new(),
                reads: BTreeMap::new(),
                reads_ready: Vec::new(),
            })
            .collect();
        Sim {
            opts,
            rng,
            seed,
            now: 0,
            members,
            voters,
            net: Vec::new(),
            packet_seq: 0,
            cut: BTreeSet::new(),
            heal_at: None,
            chosen: BTreeMap::new(),
            leaders: BTreeMap::new(),
            acked: BTreeMap::new(),
            max_acked_index: 0,
            next_value: 1,
            ops: BTreeMap::new(),
            history: History::default(),
            report: Report {
                trace: 0xcbf2_9ce4_8422_2325,
                ..Report::default()
            },
        }
    }

    fn fail(&self, what: String) -> ! {
        let mut members = String::new();
        for m in &self.members {
            let log = m.core.as_ref().map(|c| {
                let first = raft::Storage::first_index(c.log()).unwrap_or(0);
                (c.status(), first, c.log().last_index())
            });
            members.push_str(&format!(
                "\n  member {}: applied {}, checkpoint {}, (status, log first, log last) {log:?}",
                m.id, m.sm.applied.index, m.sm.checkpoint.index
            ));
        }
        panic!(
            "simulation seed {} failed at {} ms: {what}{members}\n(rerun: ETCH_SIM_SEED={} cargo test -p etch-raft --test sim)",
            self.seed, self.now, self.seed
        );
    }

    /// Runs the fault phase, then the settle phase, then the final checks.
    pub fn run(mut self) -> Report {
        let fault_end = self.opts.fault_ms;
        let end = fault_end + self.opts.settle_ms;
        let mut final_value = None;
        while self.now < end {
            let faulty = self.now < fault_end;
            if self.now == fault_end {
                self.heal_everything();
            }
            self.restarts();
            self.ticks();
            self.deliver();
            self.disks();
            if faulty {
                self.faults();
                self.clients();
            } else if final_value.is_none() && self.now >= fault_end + self.opts.settle_ms / 2 {
                // One write after the faults, through the leader: the cluster is live.
                if let Some(l) = self.leader() {
                    final_value = Some(self.propose(l, 0, Op::Put));
                }
            }
            self.readies();
            self.now += 1;
        }
        self.final_checks(final_value);
        self.report
    }

    fn idx(&self, id: u64) -> usize {
        (id - 1) as usize
    }

    fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.core.as_ref().is_some_and(|c| c.status().is_leader))
    }

    fn restarts(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].up_at.is_some_and(|t| t <= self.now) {
                self.start_member(i);
            }
        }
    }

    fn start_member(&mut self, i: usize) {
        let voters = self.voters.clone();
        let seed = self.seed;
        let m = &mut self.members[i];
        m.up_at = None;
        m.boots += 1;
        // The state machine comes back at its checkpoint; the log replays the rest.
        m.sm.values.truncate(m.sm.checkpoint_len);
        m.sm.seen = m.sm.values.iter().map(|(_, v)| *v).collect();
        m.sm.kv = rebuild_kv(&self.ops, &m.sm.values);
        m.sm.applied = m.sm.checkpoint.clone();
        let mut log = m
            .disk
            .open(&m.sm.applied, ConfState::from((voters, vec![])))
            .unwrap_or_else(|e| panic!("seed {seed}: member {} cannot reopen its log: {e}", m.id));
        // Short enough that a member down for a while needs a snapshot, while one that
        // is only slow catches up from the leader's memory.
        log.set_retained(RETAINED_ENTRIES, RETAINED_ENTRIES_MAX);
        let core = Core::new(
            CoreConfig {
                id: m.id,
                election_ticks: ELECTION_TICKS,
                applied: m.sm.applied.clone(),
                pending_max: 4096,
                held_ticks_max: 5 * ELECTION_TICKS as u64,
                seed: seed.wrapping_mul(31).wrapping_add(m.boots),
                ids: IdGen::new(m.id, (m.boots << 24) | 1),
            },
            log,
        )
        .unwrap_or_else(|e| panic!("seed {seed}: member {} cannot start: {e}", m.id));
        m.ids = IdGen::new(m.id, m.boots << 24);
        m.core = Some(core);
        m.sync_at = None;
    }

    fn crash(&mut self, i: usize, down_ms: u64) {
        let keep = self
            .rng
            .random_range(0..=self.members[i].disk.unsynced_len());
        let up_at = self.now + down_ms;
        let m = &mut self.members[i];
        if m.core.is_none() {
            return;
        }
        m.core = None;
        // A power cut: synced records survive, and a prefix of the rest.
        m.disk.power_cut(keep);
        m.sync_at = None;
        m.up_at = Some(up_at);
        // Requests in flight there have an unknown outcome; the client forgets them.
        m.proposals.clear();
        m.reads.clear();
        m.reads_ready.clear();
        self.report.crashes += 1;
    }

    fn ticks(&mut self) {
        let now = self.now;
        for m in &mut self.members {
            if (now + m.tick_phase).is_multiple_of(TICK_MS)
                && let Some(c) = m.core.as_mut()
            {
                c.tick();
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|p| (p.at, p.seq));
        for p in due {
            if self.cut.contains(&(p.from, p.to)) {
                if p.msg.msg_type == MessageType::MsgSnapshot {
                    let from = self.idx(p.from);
                    if let Some(c) = self.members[from].core.as_mut() {
                        c.report_snapshot(p.to, false);
                    }
                }
                continue;
            }
            let to = self.idx(p.to);
            let is_snapshot = p.msg.msg_type == MessageType::MsgSnapshot;
            let delivered = match self.members[to].core.as_mut() {
                Some(c) => {
                    c.step(p.msg);
                    true
                }
                None => false,
            };
            if is_snapshot {
                // The out-of-band stream ends: the sender learns how.
                let from = self.idx(p.from);
                if let Some(c) = self.members[from].core.as_mut() {
                    c.report_snapshot(p.to, delivered);
                }
            }
        }
    }

    fn send(&mut self, from: u64, msgs: Vec<Message>) {
        let faulty = self.now < self.opts.fault_ms;
        let f = self.opts.faults;
        for msg in msgs {
            let to = msg.to;
            let to_i = self.idx(to);
            let down = self.members[to_i].core.is_none();
            let cut = self.cut.contains(&(from, to));
            if faulty && (down || cut) && self.rng.random_ratio(1, 4) {
                // The transport notices the peer is gone (a failed dial or stream).
                let fi = self.idx(from);
                if let Some(c) = self.members[fi].core.as_mut() {
                    c.report_unreachable(to);
                }
            }
            if faulty && self.rng.random_ratio(f.drop_permille, 1000) {
                continue;
            }
            let mut delay = self.rng.random_range(1..=3);
            if faulty && self.rng.random_ratio(f.delay_permille, 1000) {
                delay += self.rng.random_range(10..=80);
            }
            // A transport never sends a message twice on its own, and a proposal is not
            // idempotent (a resent one would be appended twice); raft itself tolerates
            // every other message arriving twice.
            let dup = faulty
                && msg.msg_type != MessageType::MsgPropose
                && self.rng.random_ratio(f.dup_permille, 1000);
            if dup {
                let extra = self.rng.random_range(1..=40);
                self.push_packet(from, to, delay + extra, msg.clone());
            }
            self.push_packet(from, to, delay, msg);
        }
    }

    fn push_packet(&mut self, from: u64, to: u64, delay: u64, msg: Message) {
        self.packet_seq += 1;
        self.net.push(Packet {
            at: self.now + delay,
            seq: self.packet_seq,
            from,
            to,
            msg,
        });
    }

    fn disks(&mut self) {
        let now = self.now;
        for i in 0..self.members.len() {
            let slow = self.members[i].slow_disk;
            let latency = if slow {
                self.rng.random_range(20..=120)
            } else {
                self.rng.random_range(0..=2)
            };
            let m = &mut self.members[i];
            if m.core.is_none() {
                continue;
            }
            match m.sync_at {
                Some(t) if t <= now => {
                    m.disk.sync();
                    m.sync_at = None;
                }
                Some(_) => {}
                None if m.disk.has_unsynced() => m.sync_at = Some(now + latency),
                None => {}
            }
        }
    }

    fn faults(&mut self) {
        let f = self.opts.faults;
        let n = self.members.len();
        if self.heal_at.is_some_and(|t| t <= self.now) {
            self.cut.clear();
            self.heal_at = None;
        }
        if f.partitions && self.heal_at.is_none() && self.rng.random_ratio(1, 1500) {
            self.report.partitions += 1;
            let a = self.rng.random_range(1..=n as u64);
            match self.rng.random_range(0..3) {
                // One member cut off from everyone.
                0 => {
                    for b in 1..=n as u64 {
                        if b != a {
                            self.cut.insert((a, b));
                            self.cut.insert((b, a));
                        }
                    }
                }
                // One member hears everyone but nobody hears it (or the reverse).
                1 => {
                    let out = self.rng.random_bool(0.5);
                    for b in 1..=n as u64 {
                        if b != a {
                            self.cut.insert(if out { (a, b) } else { (b, a) });
                        }
                    }
                }
                // A random split into two sides.
                _ => {
                    let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                    for x in 0..n {
                        for y in 0..n {
                            if side[x] != side[y] {
                                self.cut.insert((x as u64 + 1, y as u64 + 1));
                            }
                        }
                    }
                }
            }
            self.heal_at = Some(self.now + self.rng.random_range(300..=3000));
        }
        if f.crashes && self.rng.random_ratio(1, 2000) {
            let i = self.rng.random_range(0..n);
            let down = self.rng.random_range(50..=1500);
            self.crash(i, down);
        }
        if f.slow_disks && self.rng.random_ratio(1, 1000) {
            let i = self.rng.random_range(0..n);
            self.members[i].slow_disk = !self.members[i].slow_disk;
        }
        // Checkpoints: the state machine makes its applied state durable, and the log
        // below it may go.
        for i in 0..n {
            if self.rng.random_ratio(1, 400) {
                self.checkpoint(i);
            }
        }
    }

    fn checkpoint(&mut self, i: usize) {
        let m = &mut self.members[i];
        let Some(c) = m.core.as_mut() else { return };
        m.sm.checkpoint = m.sm.applied.clone();
        m.sm.checkpoint_len = m.sm.values.len();
        let a = &m.sm.checkpoint;
        if a.index > 0 {
            c.compact(a.index, a.term)
                .unwrap_or_else(|e| panic!("compacting member {}: {e}", m.id));
        }
    }

    fn heal_everything(&mut self) {
        self.cut.clear();
        self.heal_at = None;
        for i in 0..self.members.len() {
            self.members[i].slow_disk = false;
            if self.members[i].core.is_none() {
                self.members[i].up_at = Some(self.now);
            }
        }
    }

    fn clients(&mut self) {
        if !self
            .rng
            .random_ratio(1, self.opts.request_gap_ms.max(1) as u32)
        {
            return;
        }
        let i = self.rng.random_range(0..self.members.len());
        if self.members[i].core.is_none() {
            return;
        }
        let key = self.rng.random_range(0..history::KEYS);
        if self.rng.random_ratio(1, 3) {
            let floor = self.max_acked_index;
            let call = self.history.invoke(key, self.now, Kind::Read { saw: 0 });
            let m = &mut self.members[i];
            let req = m.ids.next_id();
            m.reads.insert(req, (floor, key, call));
            m.core.as_mut().expect("up").read_index(req);
        } else {
            let op = match self.rng.random_range(0..6) {
                0 => Op::Delete,
                // Compare with what a read saw last: it may still hold, or not.
                1 | 2 => Op::Cas {
                    expect: self.history.last_seen.get(&key).copied().unwrap_or(0),
                },
                _ => Op::Put,
            };
            self.propose(i, key, op);
        }
    }

    fn propose(&mut self, i: usize, key: u8, op: Op) -> u64 {
        let value = self.next_value;
        self.next_value += 1;
        self.ops.insert(value, (key, op));
        let call = self.history.invoke(
            key,
            self.now,
            Kind::Write {
                value,
                op,
                changed: None,
            },
        );
        let m = &mut self.members[i];
        let req = m.ids.next_id();
        m.proposals.insert(req, (value, call));
        m.core
            .as_mut()
            .expect("proposing on a member that is up")
            .propose(req, history::encode(value, key, op));
        value
    }

    fn readies(&mut self) {
        for i in 0..self.members.len() {
            let Some(c) = self.members[i].core.as_mut() else {
                continue;
            };
            let fx = match c.ready() {
                Ok(fx) => fx,
                Err(e) => self.fail(format!("member {}: ready: {e}", i + 1)),
            };
            let st = c.status();
            if st.is_leader {
                match self.leaders.get(&st.term) {
                    Some(&l) if l != st.id => self.fail(format!(
                        "two leaders in term {}: {l} and {}",
                        st.term, st.id
                    )),
                    Some(_) => {}
                    None => {
                        self.leaders.insert(st.term, st.id);
                        self.report.leaders += 1;
                        self.report.trace = fnv(fnv(self.report.trace, st.term), st.id);
                    }
                }
            }
            let from = self.members[i].id;
            self.send(from, fx.messages);
            for m in fx.snapshots {
                self.send_snapshot(i, m);
            }
            for a in fx.apply {
                match a {
                    Apply::Entries(b) => self.apply(i, b),
                    Apply::Snapshot(snap) => self.install(i, &snap),
                }
            }
            for (req, r) in fx.replies {
                let m = &mut self.members[i];
                if let Some((floor, key, call)) = m.reads.remove(&req) {
                    if let Ok(index) = r {
                        if index < floor {
                            self.fail(format!(
                                "member {}: read index {index} is below the acknowledged write at {floor}",
                                i + 1
                            ));
                        }
                        m.reads_ready.push((index, floor, key, call));
                    }
                } else {
                    // A proposal that failed (no leader, too many pending): not applied
                    // by this request, whatever happens to its entry.
                    m.proposals.remove(&req);
                }
            }
            self.finish_reads(i);
        }
    }

    fn finish_reads(&mut self, i: usize) {
        let m = &mut self.members[i];
        let applied = m.sm.applied.index;
        let mut done = 0;
        let mut bad = None;
        let now = self.now;
        let (kv, history) = (&m.sm.kv, &mut self.history);
        m.reads_ready.retain(|&(index, floor, key, call)| {
            if applied < index {
                return true;
            }
            if applied < floor {
                bad = Some((applied, floor));
            }
            history.read_returned(call, now, kv.get(&key).copied().unwrap_or(0));
            done += 1;
            false
        });
        self.report.reads_checked += done;
        if let Some((applied, floor)) = bad {
            self.fail(format!(
                "member {}: a read saw state at {applied}, below the acknowledged write at {floor}",
                i + 1
            ));
        }
    }

    /// The leader's side of a snapshot: its state machine's data at its applied index,
    /// which must cover what raft asked for.
    fn send_snapshot(&mut self, i: usize, mut m: Message) {
        let sm = &self.members[i].sm;
        let asked = m.get_snapshot().get_metadata().index;
        if sm.applied.index < asked {
            self.fail(format!(
                "member {}: raft asked for a snapshot at {asked} beyond the applied {}",
                i + 1,
                sm.applied.index
            ));
        }
        let mut data = Vec::with_capacity(sm.values.len() * 16);
        for (idx, v) in &sm.values {
            data.extend_from_slice(&idx.to_le_bytes());
            data.extend_from_slice(&v.to_le_bytes());
        }
        let snap = m.mut_snapshot();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = sm.applied.index;
        meta.term = sm.applied.term;
        meta.set_conf_state(sm.applied.conf_state.clone());
        self.report.snapshots += 1;
        let from = self.members[i].id;
        let to = m.to;
        if self.now < self.opts.fault_ms
            && self.rng.random_ratio(self.opts.faults.drop_permille, 1000)
        {
            let c = self.members[i].core.as_mut().expect("up");
            c.report_snapshot(to, false);
            return;
        }
        let delay = self.rng.random_range(5..=40);
        self.push_packet(from, to, delay, m);
    }

    /// A follower's side: the state machine takes the data, durably, then tells raft.
    fn install(&mut self, i: usize, snap: &Snapshot) {
        let meta = snap.get_metadata();
        let data = snap.get_data();
        let mut values = Vec::with_capacity(data.len() / 16);
        for c in data.chunks_exact(16) {
            let idx = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let v = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            match self.chosen.get(&idx) {
                Some((_, _, d)) if history::decode(d).is_some_and(|(dv, _, _)| dv == v) => {}
                other => self.fail(format!(
                    "member {}: the snapshot holds value {v} at {idx}, the history {other:?}",
                    i + 1
                )),
            }
            values.push((idx, v));
        }
        if meta.index < self.members[i].sm.applied.index {
            self.fail(format!(
                "member {}: a snapshot at {} would rewind the applied {}",
                i + 1,
                meta.index,
                self.members[i].sm.applied.index
            ));
        }
        let m = &mut self.members[i];
        m.sm.seen = values.iter().map(|(_, v)| *v).collect();
        m.sm.kv = rebuild_kv(&self.ops, &values);
        m.sm.values = values;
        m.sm.applied = Applied {
            index: meta.index,
            term: meta.term,
            conf_state: meta.get_conf_state().clone(),
        };
        m.sm.checkpoint = m.sm.applied.clone();
        m.sm.checkpoint_len = m.sm.values.len();
        // Requests waiting for entries the snapshot covers learn nothing more here.
        m.core
            .as_mut()
            .expect("installing on a member that is up")
            .snapshot_installed(meta.index);
        self.report.installs += 1;
    }

    fn apply(&mut self, i: usize, b: ApplyBatch) {
        for e in &b.entries {
            self.apply_entry(i, e);
        }
        let m = &mut self.members[i];
        if let Some(last) = b.entries.last() {
            m.sm.applied = Applied {
                index: last.index,
                term: last.term,
                conf_state: b.conf_state,
            };
        }
    }

    fn apply_entry(&mut self, i: usize, e: &Entry) {
        let id = i + 1;
        let expect = self.members[i].sm.applied.index + 1;
        if e.index != expect {
            self.fail(format!(
                "member {id} applied entry {} after {}",
                e.index,
                expect - 1
            ));
        }
        self.members[i].sm.applied.index = e.index;
        let this = (e.term, e.entry_type as i32, e.data.to_vec());
        match self.chosen.get(&e.index) {
            Some(c) if *c != this => self.fail(format!(
                "member {id} applied (term {}, {:?}) at {}, another member (term {}, type {})",
                e.term, e.entry_type, e.index, c.0, c.1
            )),
            Some(_) => {}
            None => {
                self.chosen.insert(e.index, this);
                self.report.trace = fnv(fnv(self.report.trace, e.index), e.term);
            }
        }
        if e.entry_type != EntryType::EntryNormal || e.data.is_empty() {
            return;
        }
        let Some((value, key, op)) = history::decode(&e.data) else {
            self.fail(format!("entry {} holds no write", e.index))
        };
        if self.ops.get(&value) != Some(&(key, op)) {
            self.fail(format!(
                "entry {} holds write {value} as {key} {op:?}, proposed as {:?}",
                e.index,
                self.ops.get(&value)
            ));
        }
        let m = &mut self.members[i];
        if !m.sm.seen.insert(value) {
            self.fail(format!("member {id} applied value {value} twice"));
        }
        m.sm.values.push((e.index, value));
        let changed = history::mutate(&mut m.sm.kv, value, key, op);
        if let Some(req) = ApplyBatch::request_id(e)
            && let Some((v, call)) = m.proposals.remove(&req)
        {
            if v != value {
                self.fail(format!(
                    "member {id}: request {req:x} proposed {v} but its entry holds {value}"
                ));
            }
            self.history.write_returned(call, self.now, changed);
            self.acked.insert(value, e.index);
            self.max_acked_index = self.max_acked_index.max(e.index);
            self.report.acked_writes += 1;
        }
    }

    fn final_checks(&mut self, final_value: Option<u64>) {
        let Some(fv) = final_value else {
            self.fail("no leader emerged after the faults stopped".into());
        };
        if !self.acked.contains_key(&fv) {
            self.fail(format!(
                "the write proposed after the faults stopped (value {fv}) was not acknowledged"
            ));
        }
        let last = self.members[0].sm.applied.index;
        for m in &self.members {
            if m.core.is_none() {
                self.fail(format!("member {} is still down", m.id));
            }
            if m.sm.applied.index != last {
                self.fail(format!(
                    "members disagree on the applied index after settling: member 1 at {last}, member {} at {}",
                    m.id, m.sm.applied.index
                ));
            }
            if m.sm.values != self.members[0].sm.values {
                self.fail(format!(
                    "member {} applied another history than member 1",
                    m.id
                ));
            }
        }
        let at: BTreeMap<u64, u64> = self.members[0]
            .sm
            .values
            .iter()
            .map(|&(i, v)| (v, i))
            .collect();
        for (v, i) in &self.acked {
            match at.get(v) {
                Some(j) if j == i => {}
                Some(j) => self.fail(format!("acknowledged value {v} was at {i}, now at {j}")),
                None => self.fail(format!("acknowledged value {v} (index {i}) was lost")),
            }
        }
        let log: Vec<u64> = self.members[0].sm.values.iter().map(|(_, v)| *v).collect();
        match self.history.check(&log) {
            Ok(r) => self.report.calls_checked = r.reads + r.writes,
            Err(e) => self.fail(e),
        }
        self.report.last_index = last;
    }
}

/// The key-value state `values` (in log order) make.
fn rebuild_kv(ops: &BTreeMap<u64, (u8, Op)>, values: &[(u64, u64)]) -> Kv {
    let mut kv = Kv::new();
    for (_, v) in values {
        let (key, op) = ops[v];
        history::mutate(&mut kv, *v, key, op);
    }
    kv
}
