//! The Raft log: `raft::Storage` over an in-memory tail of entries, made durable through a
//! [`LogDisk`] (the engine's WAL in production, [`crate::MemDisk`] in simulation).
//!
//! The log starts just after the state machine's durable position: entries at or below
//! the applied index it holds are never replayed, and that (index, term) plays the part of
//! raft-rs's snapshot metadata.
//!
//! Writes are asynchronous: [`Log::append`] makes entries and hard state visible to raft-rs
//! at once and hands them to the disk, which reports later (by sequence number) what is
//! durable. The core tells raft-rs only what the disk has reported.

use std::collections::VecDeque;
use std::task::Waker;

use etch_engine::wal::RecordKind;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::{Applied, Error, Result};

/// Entries kept in memory below the applied index, so a lagging peer can still be sent
/// entries instead of a snapshot.
pub const RETAINED_ENTRIES: u64 = 1024;

/// Where the log's records go. Records are framed as the WAL frames them: a kind, an
/// index and a payload. Every write is queued and made durable in order; `durable`
/// reports how far.
pub trait LogDisk: Send + 'static {
    /// Queues a record; returns its sequence number (they increase by one per record).
    fn write(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<u64>;
    /// The highest sequence number known durable (every lower one is durable too). With a
    /// waker, the disk wakes it once more becomes durable.
    fn durable(&mut self, waker: Option<&Waker>) -> Result<u64>;
    /// Writes a record and waits until it is durable.
    fn write_sync(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<()>;
    /// Drops whatever holds only entries below `index` (optional: a disk may keep more).
    fn purge_below(&mut self, index: u64) -> Result<()>;
    /// A name for logs ("io_uring", "syscall", "memory").
    fn backend(&self) -> &'static str;
}

/// The payload of a `Snapshot` record: the position everything below which is held by the
/// state machine, and the membership at that point.
pub(crate) fn encode_snapshot_record(index: u64, term: u64, cs: &ConfState) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&index.to_le_bytes());
    v.extend_from_slice(&term.to_le_bytes());
    v.extend_from_slice(&cs.write_to_bytes().map_err(Error::codec)?);
    Ok(v)
}

fn decode_snapshot_record(p: &[u8]) -> Result<(u64, u64, ConfState)> {
    if p.len() < 16 {
        return Err(Error::Corrupt("short snapshot record".into()));
    }
    let index = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
    let term = u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
    let cs = ConfState::parse_from_bytes(&p[16..]).map_err(Error::codec)?;
    Ok((index, term, cs))
}

/// Rebuilds the log from the records a disk replays, above the state machine's position.
#[derive(Debug)]
pub struct Replay {
    first: u64,
    hard_state: HardState,
    entries: VecDeque<Entry>,
    snap: Option<(u64, u64, ConfState)>,
}

impl Replay {
    pub fn new(applied: &Applied) -> Replay {
        Replay {
            first: applied.index + 1,
            hard_state: HardState::default(),
            entries: VecDeque::new(),
            snap: None,
        }
    }

    /// The first entry index the log needs: older ones may be skipped by the disk.
    pub fn first_index(&self) -> u64 {
        self.first
    }

    /// Takes one record, in the order written.
    pub fn record(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<()> {
        match kind {
            RecordKind::Entry => {
                if index < self.first {
                    return Ok(());
                }
                let e = Entry::parse_from_bytes(payload).map_err(Error::codec)?;
                if e.index != index {
                    return Err(Error::Corrupt(format!(
                        "log record for entry {index} holds entry {}",
                        e.index
                    )));
                }
                // A lower index than the tail overwrites (a Raft log conflict).
                while self.entries.back().is_some_and(|b| b.index >= e.index) {
                    self.entries.pop_back();
                }
                if let Some(b) = self.entries.back()
                    && b.index + 1 != e.index
                {
                    return Err(Error::Corrupt(format!(
                        "entry {} follows entry {}",
                        e.index, b.index
                    )));
                }
                if self.entries.is_empty() && e.index != self.first {
                    return Err(Error::Corrupt(format!(
                        "the log resumes at entry {} but entry {} comes next",
                        e.index, self.first
                    )));
                }
                self.entries.push_back(e);
            }
            RecordKind::State => {
                self.hard_state = HardState::parse_from_bytes(payload).map_err(Error::codec)?;
            }
            RecordKind::Snapshot => {
                let (idx, term, cs) = decode_snapshot_record(payload)?;
                // Entries the snapshot covers are held by the state machine (a compaction)
                // or replaced by its data (an install, which a truncate record follows).
                while self.entries.front().is_some_and(|e| e.index <= idx) {
                    self.entries.pop_front();
                }
                // Whatever follows (now, or after a truncate empties the tail) resumes
                // just above the snapshot.
                self.first = self.first.max(idx + 1);
                self.snap = Some((idx, term, cs));
            }
            RecordKind::Truncate => {
                while self.entries.back().is_some_and(|b| b.index >= index) {
                    self.entries.pop_back();
                }
            }
        }
        Ok(())
    }

    /// The recovered log over `disk`. `initial_conf` is the membership of a brand-new node.
    pub fn finish<D: LogDisk>(
        self,
        disk: D,
        applied: &Applied,
        initial_conf: ConfState,
    ) -> Result<Log<D>> {
        let mut hard_state = self.hard_state;
        let mut entries = self.entries;
        let mut disk = disk;
        // A snapshot record ahead of the state machine is an install from the leader that
        // did not reach the state machine's durable data before a crash. Nothing after it
        // was acknowledged (the install is confirmed before its Ready counts as
        // persisted), so the log restarts at the state machine's position, and the leader
        // sends the snapshot again. A fresh record says so for the next replay.
        if let Some((idx, _, _)) = &self.snap
            && *idx > applied.index
        {
            tracing::warn!(
                snapshot = idx,
                applied = applied.index,
                "raft log: a snapshot install did not complete before the stop; asking again"
            );
            entries.clear();
            let record = encode_snapshot_record(applied.index, applied.term, &applied.conf_state)?;
            disk.write(RecordKind::Snapshot, applied.index, &record)?;
            disk.write_sync(RecordKind::Truncate, applied.index + 1, &[])?;
            hard_state.commit = hard_state.commit.min(applied.index);
        }
        let conf_state = if applied.index == 0 && applied.conf_state == ConfState::default() {
            initial_conf
        } else {
            applied.conf_state.clone()
        };
        // Entries up to `applied` were committed; a commit index that reached the disk
        // later than the apply must not move backwards.
        if hard_state.commit < applied.index {
            hard_state.commit = applied.index;
        }
        let last = entries.back().map_or(applied.index, |e| e.index);
        if hard_state.commit > last {
            return Err(Error::Corrupt(format!(
                "commit index {} is beyond the last log entry {last}",
                hard_state.commit
            )));
        }
        tracing::info!(
            applied = applied.index,
            entries = entries.len(),
            term = hard_state.term,
            commit = hard_state.commit,
            backend = disk.backend(),
            "raft log recovered"
        );
        Ok(Log {
            disk,
            hard_state,
            conf_state,
            snap_index: applied.index,
            snap_term: applied.term,
            entries,
            disk_compacted: applied.index,
            last_seq: 0,
            retained: RETAINED_ENTRIES,
            retained_max: RETAINED_ENTRIES,
        })
    }
}

/// The Raft log: durable through `D`, with its live tail in memory.
pub struct Log<D> {
    disk: D,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into the state machine (or dropped from
    /// memory): raft-rs's snapshot metadata.
    snap_index: u64,
    snap_term: u64,
    /// Entries `snap_index + 1 ..`.
    entries: VecDeque<Entry>,
    /// The disk holds no entries at or below this index that matter (a snapshot record).
    disk_compacted: u64,
    /// Sequence number of the last record written.
    last_seq: u64,
    /// Entries kept in memory below the applied index.
    retained: u64,
    /// Entries kept at most below the applied index for a lagging follower.
    retained_max: u64,
}

impl<D> std::fmt::Debug for Log<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("snap_index", &self.snap_index)
            .field("entries", &self.entries.len())
            .field("hard_state", &self.hard_state)
            .finish()
    }
}

impl<D: LogDisk> Log<D> {
    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// The index below the first entry held in memory (raft-rs's snapshot index).
    pub fn snap_index(&self) -> u64 {
        self.snap_index
    }

    pub fn last_index(&self) -> u64 {
        self.entries.back().map_or(self.snap_index, |e| e.index)
    }

    /// Makes `ents` (dropping any conflicting tail) and `hs` part of the log and queues
    /// them for the disk. Returns the sequence number that covers them, if anything was
    /// written.
    pub fn append(&mut self, ents: &[Entry], hs: Option<&HardState>) -> Result<Option<u64>> {
        let mut seq = None;
        for e in ents {
            assert!(
                e.index > self.snap_index,
                "raft appended entry {} at or below the snapshot {}",
                e.index,
                self.snap_index
            );
            while self.entries.back().is_some_and(|b| b.index >= e.index) {
                self.entries.pop_back();
            }
            assert_eq!(
                self.last_index() + 1,
                e.index,
                "raft appended entry {} after {}",
                e.index,
                self.last_index()
            );
            let bytes = e.write_to_bytes().map_err(Error::codec)?;
            seq = Some(self.disk.write(RecordKind::Entry, e.index, &bytes)?);
            self.entries.push_back(e.clone());
        }
        if let Some(hs) = hs {
            // A hard state that moves only the commit index, with no entries beside it,
            // stays in memory (it reaches the disk with the next record): a sync for it
            // alone would double the syncs per write. Losing it is harmless (see
            // `set_commit`). A new term or vote is always written.
            let commit_only =
                seq.is_none() && hs.term == self.hard_state.term && hs.vote == self.hard_state.vote;
            self.hard_state = hs.clone();
            if !commit_only {
                let bytes = hs.write_to_bytes().map_err(Error::codec)?;
                seq = Some(self.disk.write(RecordKind::State, 0, &bytes)?);
            }
        }
        if let Some(s) = seq {
            self.last_seq = s;
        }
        Ok(seq)
    }

    /// Sequence number of the last record written.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether everything written so far is durable.
    pub fn all_durable(&mut self) -> Result<bool> {
        Ok(self.disk.durable(None)? >= self.last_seq)
    }

    /// Records a new commit index in memory only. It reaches the disk with the next hard
    /// state raft-rs reports; writing it on its own would cost a second sync per batch.
    /// Losing it is harmless: a restarted node raises it to the applied index, and a
    /// leader re-commits the rest of its log in its new term.
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    /// The state machine has made everything up to `index` (at `term`) durable: records
    /// that on the disk and lets it drop what holds only older entries.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<()> {
        if index <= self.disk_compacted || index > self.last_index() {
            return Ok(());
        }
        let record = encode_snapshot_record(index, term, &self.conf_state)?;
        self.disk.write_sync(RecordKind::Snapshot, index, &record)?;
        self.disk.purge_below(index + 1)?;
        self.disk_compacted = index;
        tracing::debug!(index, "raft log compacted");
        Ok(())
    }

    /// Replaces the log with a snapshot's position: the state machine is being given the
    /// data up to `snap`'s index, so every entry goes, and the disk records the new start
    /// (a snapshot record, then a truncate so the next entry may follow it). Returns the
    /// sequence number that covers it.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<u64> {
        let m = snap.get_metadata();
        self.entries.clear();
        self.snap_index = m.index;
        self.snap_term = m.term;
        self.conf_state = m.get_conf_state().clone();
        if self.hard_state.commit < m.index {
            self.hard_state.commit = m.index;
        }
        let record = encode_snapshot_record(m.index, m.term, &self.conf_state)?;
        self.disk.write(RecordKind::Snapshot, m.index, &record)?;
        let seq = self.disk.write(RecordKind::Truncate, m.index + 1, &[])?;
        self.disk_compacted = m.index;
        self.last_seq = seq;
        Ok(seq)
    }

    /// How many entries below the applied index memory keeps for any follower (default
    /// [`RETAINED_ENTRIES`]), and at most for a follower that is still replicating
    /// (default the same).
    pub fn set_retained(&mut self, n: u64, max: u64) {
        self.retained = n;
        self.retained_max = max.max(n);
    }

    /// Drops from memory the entries handed to the state machine (up to `applied`) that
    /// no follower needs: it keeps the retained count below `applied`, and down to
    /// `lagging` (the lowest index a live follower has) within the retained maximum. The
    /// disk still holds them until `compact`.
    pub fn trim_memory(&mut self, applied: u64, lagging: Option<u64>) -> Result<()> {
        let mut keep_from = applied.saturating_sub(self.retained);
        if let Some(m) = lagging {
            keep_from = keep_from.min(m.max(applied.saturating_sub(self.retained_max)));
        }
        if keep_from <= self.snap_index || keep_from > self.last_index() {
            return Ok(());
        }
        let term = raft::Storage::term(self, keep_from).map_err(Error::from)?;
        while self.entries.front().is_some_and(|e| e.index <= keep_from) {
            self.entries.pop_front();
        }
        self.snap_index = keep_from;
        self.snap_term = term;
        Ok(())
    }

    fn entry_at(&self, idx: u64) -> &Entry {
        &self.entries[(idx - self.snap_index - 1) as usize]
    }
}

impl<D: LogDisk> raft::Storage for Log<D> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            panic!(
                "raft asked for entries [{low}, {high}) beyond the last index {}",
                self.last_index()
            );
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for i in low..high {
            let e = self.entry_at(i);
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry_at(idx).term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(Log::last_index(self))
    }

    /// Only the metadata: the data travels out of band. The driver sends the state
    /// machine's own position (never below this one) with the data it streams.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut s = Snapshot::default();
        let m = s.mut_metadata();
        m.index = self.snap_index;
        m.term = self.snap_term;
        m.set_conf_state(self.conf_state.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Vec<u8> {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    fn snapshot(index: u64, term: u64) -> Vec<u8> {
        encode_snapshot_record(index, term, &ConfState::default()).unwrap()
    }

    #[test]
    fn an_install_over_a_longer_tail_resumes_above_the_snapshot() {
        // Entries 6..=8 were logged, then a snapshot at 20 was installed (snapshot record,
        // then a truncate of everything above it), then entries 21, 22 followed.
        let applied = Applied {
            index: 5,
            term: 1,
            conf_state: ConfState::default(),
        };
        let mut r = Replay::new(&applied);
        for i in 6..=8 {
            r.record(RecordKind::Entry, i, &entry(i, 1)).unwrap();
        }
        r.record(RecordKind::Snapshot, 20, &snapshot(20, 2))
            .unwrap();
        r.record(RecordKind::Truncate, 21, &[]).unwrap();
        r.record(RecordKind::Entry, 21, &entry(21, 2)).unwrap();
        r.record(RecordKind::Entry, 22, &entry(22, 2)).unwrap();
        let got: Vec<u64> = r.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![21, 22]);
    }

    #[test]
    fn a_compaction_keeps_the_tail_above_it() {
        let applied = Applied {
            index: 0,
            term: 0,
            conf_state: ConfState::default(),
        };
        let mut r = Replay::new(&applied);
        for i in 1..=4 {
            r.record(RecordKind::Entry, i, &entry(i, 1)).unwrap();
        }
        r.record(RecordKind::Snapshot, 2, &snapshot(2, 1)).unwrap();
        r.record(RecordKind::Entry, 5, &entry(5, 1)).unwrap();
        let got: Vec<u64> = r.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![3, 4, 5]);
        // A gap after the snapshot is corruption, not a silent skip.
        let mut r = Replay::new(&applied);
        r.record(RecordKind::Snapshot, 9, &snapshot(9, 1)).unwrap();
        let err = r.record(RecordKind::Entry, 11, &entry(11, 1)).unwrap_err();
        assert!(err.to_string().contains("comes next"), "{err}");
    }
}
