//! The two [`LogDisk`]s: the engine's WAL, and an in-memory disk for simulation that
//! loses its unsynced tail in a power cut.

use std::collections::VecDeque;
use std::future::Future as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use etch_engine::wal::{self, AppendHandle, RecordKind, Wal};
use raft::prelude::ConfState;

use crate::log::{Log, LogDisk, Replay};
use crate::{Applied, Result, crate_lock};

/// The log on the engine's WAL: one group-committed record stream, fdatasynced in batches
/// by the WAL's writer thread.
pub struct WalDisk {
    wal: Wal,
    /// Appends not yet known durable, oldest first.
    pending: VecDeque<(u64, AppendHandle)>,
    next_seq: u64,
    durable_seq: u64,
}

impl std::fmt::Debug for WalDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalDisk")
            .field("pending", &self.pending.len())
            .field("durable_seq", &self.durable_seq)
            .finish()
    }
}

impl WalDisk {
    /// Opens the WAL in `dir` and rebuilds the log above `applied` (the state machine's
    /// durable position). `initial_conf` is the membership of a brand-new node.
    pub fn open(
        dir: &Path,
        opts: wal::Options,
        applied: &Applied,
        initial_conf: ConfState,
    ) -> Result<Log<WalDisk>> {
        let mut replay = Replay::new(applied);
        let mut bad = None;
        let wal = Wal::open(dir, opts, replay.first_index(), |rec| {
            if bad.is_none()
                && let Err(e) = replay.record(rec.kind, rec.index, rec.payload)
            {
                bad = Some(e);
            }
            Ok(())
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        let disk = WalDisk {
            wal,
            pending: VecDeque::new(),
            next_seq: 1,
            durable_seq: 0,
        };
        replay.finish(disk, applied, initial_conf)
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }
}

impl LogDisk for WalDisk {
    fn write(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<u64> {
        let h = self.wal.append(kind, index, payload)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, h));
        Ok(seq)
    }

    fn durable(&mut self, waker: Option<&Waker>) -> Result<u64> {
        // The WAL completes appends in order: only the oldest needs asking.
        let mut cx = Context::from_waker(waker.unwrap_or(Waker::noop()));
        while let Some((seq, h)) = self.pending.front_mut() {
            match Pin::new(h).poll(&mut cx) {
                Poll::Ready(r) => {
                    r?;
                    self.durable_seq = *seq;
                    self.pending.pop_front();
                }
                Poll::Pending => break,
            }
        }
        Ok(self.durable_seq)
    }

    fn write_sync(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<()> {
        self.write(kind, index, payload)?;
        while let Some((seq, h)) = self.pending.pop_front() {
            h.wait()?;
            self.durable_seq = seq;
        }
        Ok(())
    }

    fn purge_below(&mut self, index: u64) -> Result<()> {
        let removed = self.wal.purge_below(index)?;
        tracing::debug!(index, removed, "WAL segments purged");
        Ok(())
    }

    fn backend(&self) -> &'static str {
        self.wal.backend()
    }
}

#[derive(Debug, Clone)]
struct MemRecord {
    kind: RecordKind,
    index: u64,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemDiskState {
    synced: Vec<MemRecord>,
    unsynced: Vec<MemRecord>,
    next_seq: u64,
    /// Sequence number of the last synced record.
    synced_seq: u64,
    syncs: u64,
}

/// An in-memory log disk. Records written stay unsynced until [`MemDisk::sync`]; a
/// [`MemDisk::power_cut`] keeps only the synced records and a prefix of the rest (a torn
/// tail is truncated on replay, so what survives a cut is always a prefix). Clones share
/// one disk: the simulation keeps one to sync, cut and reopen.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<MemDiskState>>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) {
        let mut s = crate_lock(&self.state);
        let n = s.unsynced.len() as u64;
        let moved = std::mem::take(&mut s.unsynced);
        s.synced.extend(moved);
        s.synced_seq += n;
        s.syncs += 1;
    }

    /// Whether records wait for a sync.
    pub fn has_unsynced(&self) -> bool {
        !crate_lock(&self.state).unsynced.is_empty()
    }

    /// Completed syncs.
    pub fn syncs(&self) -> u64 {
        crate_lock(&self.state).syncs
    }

    /// A power cut: of the unsynced records, the first `keep` survive (clamped).
    pub fn power_cut(&self, keep: usize) {
        let mut s = crate_lock(&self.state);
        let keep = keep.min(s.unsynced.len());
        let kept: Vec<MemRecord> = s.unsynced.drain(..keep).collect();
        s.unsynced.clear();
        s.synced_seq += kept.len() as u64;
        s.synced.extend(kept);
        s.next_seq = s.synced_seq;
    }

    /// Unsynced records (the most a power cut can lose).
    pub fn unsynced_len(&self) -> usize {
        crate_lock(&self.state).unsynced.len()
    }

    /// Rebuilds the log from the durable records, as a restart would.
    pub fn open(&self, applied: &Applied, initial_conf: ConfState) -> Result<Log<MemDisk>> {
        let mut replay = Replay::new(applied);
        {
            let s = crate_lock(&self.state);
            assert!(
                s.unsynced.is_empty(),
                "reopening a memory disk that still has unsynced records: cut or sync first"
            );
            for r in &s.synced {
                replay.record(r.kind, r.index, &r.payload)?;
            }
        }
        replay.finish(self.clone(), applied, initial_conf)
    }
}

impl LogDisk for MemDisk {
    fn write(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<u64> {
        let mut s = crate_lock(&self.state);
        s.unsynced.push(MemRecord {
            kind,
            index,
            payload: payload.to_vec(),
        });
        s.next_seq += 1;
        Ok(s.next_seq)
    }

    fn durable(&mut self, _waker: Option<&Waker>) -> Result<u64> {
        Ok(crate_lock(&self.state).synced_seq)
    }

    fn write_sync(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<()> {
        self.write(kind, index, payload)?;
        self.sync();
        Ok(())
    }

    fn purge_below(&mut self, index: u64) -> Result<()> {
        // Entries below `index` are held by the state machine; the latest state and
        // snapshot records are kept (they are what a replay needs).
        let mut s = crate_lock(&self.state);
        let last_state = s.synced.iter().rposition(|r| r.kind == RecordKind::State);
        let last_snap = s
            .synced
            .iter()
            .rposition(|r| r.kind == RecordKind::Snapshot);
        let mut i = 0;
        s.synced.retain(|r| {
            let keep = match r.kind {
                RecordKind::Entry | RecordKind::Truncate => r.index >= index,
                RecordKind::State => Some(i) == last_state,
                RecordKind::Snapshot => Some(i) == last_snap,
            };
            i += 1;
            keep
        });
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
