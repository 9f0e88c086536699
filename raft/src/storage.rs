//! The Raft log on the engine's WAL: `raft::Storage` over an in-memory tail of entries,
//! with every entry and hard state made durable in the WAL before raft-rs is told so.
//!
//! The log starts just after the engine's checkpoint: entries at or below the applied
//! index the checkpoint holds are never replayed, and the checkpoint's (index, term) plays
//! the part of raft-rs's snapshot metadata.

use std::collections::VecDeque;
use std::path::Path;

use etch_engine::wal::{self, AppendHandle, RecordKind, Wal};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::{Applied, Error, Result};

/// Entries kept in memory below the applied index after a compaction, so a lagging peer
/// can still be sent entries instead of a snapshot.
const RETAINED_ENTRIES: u64 = 1024;

/// The Raft log: WAL-backed, with its live tail in memory.
pub struct LogStore {
    wal: Wal,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into the state machine's checkpoint (or
    /// dropped by compaction): raft-rs's snapshot metadata.
    snap_index: u64,
    snap_term: u64,
    /// Entries `snap_index + 1 ..`.
    entries: VecDeque<Entry>,
    /// The WAL holds no entries at or below this index that matter (a snapshot record).
    wal_compacted: u64,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("snap_index", &self.snap_index)
            .field("entries", &self.entries.len())
            .field("hard_state", &self.hard_state)
            .finish()
    }
}

/// The payload of a WAL `Snapshot` record: the log position everything below which is
/// held elsewhere (the engine's checkpoint), and the membership at that point.
fn encode_snapshot_record(index: u64, term: u64, cs: &ConfState) -> Result<Vec<u8>> {
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

impl LogStore {
    /// Opens the WAL in `dir` and rebuilds the log above `applied` (the state machine's
    /// durable position). `initial_conf` is the membership of a brand-new node.
    pub fn open(
        dir: &Path,
        opts: wal::Options,
        applied: &Applied,
        initial_conf: ConfState,
    ) -> Result<LogStore> {
        let mut hard_state = HardState::default();
        let mut entries: VecDeque<Entry> = VecDeque::new();
        let mut wal_snap: Option<(u64, u64, ConfState)> = None;
        let first = applied.index + 1;
        let mut bad: Option<Error> = None;
        let wal = Wal::open(dir, opts, first, |rec| {
            if bad.is_some() {
                return Ok(());
            }
            let r: Result<()> = (|| {
                match rec.kind {
                    RecordKind::Entry => {
                        let e = Entry::parse_from_bytes(rec.payload).map_err(Error::codec)?;
                        if e.index != rec.index {
                            return Err(Error::Corrupt(format!(
                                "WAL record for entry {} holds entry {}",
                                rec.index, e.index
                            )));
                        }
                        // A lower index than the tail overwrites (a Raft log conflict).
                        while entries.back().is_some_and(|b| b.index >= e.index) {
                            entries.pop_back();
                        }
                        if let Some(b) = entries.back()
                            && b.index + 1 != e.index
                        {
                            return Err(Error::Corrupt(format!(
                                "entry {} follows entry {}",
                                e.index, b.index
                            )));
                        }
                        if entries.is_empty() && e.index != first {
                            return Err(Error::Corrupt(format!(
                                "the log resumes at entry {} but the checkpoint holds up to {}",
                                e.index, applied.index
                            )));
                        }
                        entries.push_back(e);
                    }
                    RecordKind::State => {
                        hard_state =
                            HardState::parse_from_bytes(rec.payload).map_err(Error::codec)?;
                    }
                    RecordKind::Snapshot => wal_snap = Some(decode_snapshot_record(rec.payload)?),
                    RecordKind::Truncate => {
                        while entries.back().is_some_and(|b| b.index >= rec.index) {
                            entries.pop_back();
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                bad = Some(e);
            }
            Ok(())
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        // The WAL's snapshot record is never ahead of the state machine: it is written
        // only after a checkpoint covering it.
        if let Some((idx, _, _)) = &wal_snap
            && *idx > applied.index
        {
            return Err(Error::Corrupt(format!(
                "the WAL was compacted to entry {idx} but the data file holds only up to {}",
                applied.index
            )));
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
            backend = wal.backend(),
            "raft log recovered"
        );
        Ok(LogStore {
            wal,
            hard_state,
            conf_state,
            snap_index: applied.index,
            snap_term: applied.term,
            entries,
            wal_compacted: applied.index,
        })
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
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

    fn last(&self) -> u64 {
        self.entries.back().map_or(self.snap_index, |e| e.index)
    }

    /// Queues `ents` for the WAL and into the log (dropping any conflicting tail). The
    /// returned handle completes when they are durable.
    pub fn append(&mut self, ents: &[Entry]) -> Result<Option<AppendHandle>> {
        let mut handle = None;
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
                self.last() + 1,
                e.index,
                "raft appended entry {} after {}",
                e.index,
                self.last()
            );
            let bytes = e.write_to_bytes().map_err(Error::codec)?;
            handle = Some(self.wal.append(RecordKind::Entry, e.index, &bytes)?);
            self.entries.push_back(e.clone());
        }
        Ok(handle)
    }

    /// Queues the hard state for the WAL.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<AppendHandle> {
        self.hard_state = hs.clone();
        let bytes = hs.write_to_bytes().map_err(Error::codec)?;
        Ok(self.wal.append(RecordKind::State, 0, &bytes)?)
    }

    /// Records a new commit index in memory only. It reaches the WAL with the next hard
    /// state raft-rs reports; writing it on its own would cost a second fdatasync per
    /// batch. Losing it is harmless: a restarted node raises it to the applied index, and
    /// a leader re-commits the rest of its log in its new term.
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    /// The state machine has made everything up to `index` (at `term`) durable: records
    /// that in the WAL and deletes the segments that hold only older entries.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<()> {
        if index <= self.wal_compacted || index > self.last() {
            return Ok(());
        }
        let record = encode_snapshot_record(index, term, &self.conf_state)?;
        self.wal.append_sync(RecordKind::Snapshot, index, &record)?;
        let removed = self.wal.purge_below(index + 1)?;
        self.wal_compacted = index;
        tracing::debug!(index, removed, "raft log compacted");
        Ok(())
    }

    /// Drops from memory the entries more than `RETAINED_ENTRIES` below `applied` (handed
    /// to the state machine). The WAL still holds them until `compact`.
    pub fn trim_memory(&mut self, applied: u64) -> Result<()> {
        let keep_from = applied.saturating_sub(RETAINED_ENTRIES);
        if keep_from <= self.snap_index || keep_from > self.last() {
            return Ok(());
        }
        let term = self.term_of(keep_from)?;
        while self.entries.front().is_some_and(|e| e.index <= keep_from) {
            self.entries.pop_front();
        }
        self.snap_index = keep_from;
        self.snap_term = term;
        Ok(())
    }

    fn term_of(&self, idx: u64) -> Result<u64> {
        raft::Storage::term(self, idx).map_err(Error::from)
    }

    fn entry_at(&self, idx: u64) -> &Entry {
        &self.entries[(idx - self.snap_index - 1) as usize]
    }
}

impl raft::Storage for LogStore {
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
        if high > self.last() + 1 {
            panic!(
                "raft asked for entries [{low}, {high}) beyond the last index {}",
                self.last()
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
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry_at(idx).term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Shipping the engine's data to a lagging peer comes with clustering; until then a
        // peer that needs a snapshot waits.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
