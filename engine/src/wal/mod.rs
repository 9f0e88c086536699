//! The write-ahead log: a directory of preallocated segment files holding framed records,
//! appended by one writer thread with group commit.
//!
//! - [`Wal::append`] frames a record into the shared batch and returns an
//!   [`AppendHandle`]: wait on it (blocking, or `.await` it — it is a plain
//!   `std::future::Future`) to learn the record is durable.
//! - The writer thread takes everything queued as one batch, writes it with one write and
//!   one fdatasync (io_uring: a linked WRITEV → FSYNC pair), then completes every append in
//!   the batch. While one batch syncs, the next gathers.
//! - A failed write or sync is fatal: the WAL fails every pending and later append with
//!   the error and never retries.
//! - Records are opaque to the WAL: a kind, an index and a payload. The latest `State` and
//!   `Snapshot` record are repeated at the start of every segment, so purging old segments
//!   never loses them.
//!
//! Layout and recovery rules: `docs/wal-format.md`.

mod device;
mod format;
mod uring;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use device::{
    Backend, DeviceFault, FaultHandle, FaultyDevice, LogDevice, SyscallDevice, open_device,
};
pub use writer::{AppendHandle, SYNC_BUCKET_BOUNDS_US, SYNC_BUCKETS, Wal, WalStats};

/// What a record holds. The Raft layer gives the kinds their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A log entry at `index`.
    Entry = 1,
    /// Consensus state (e.g. term, vote, commit); the latest one is kept in every segment.
    State = 2,
    /// A snapshot marker at `index`; the latest one is kept in every segment.
    Snapshot = 3,
    /// Entries at `index` and above, written earlier, are void.
    Truncate = 4,
}

impl RecordKind {
    pub(crate) fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Entry),
            2 => Some(RecordKind::State),
            3 => Some(RecordKind::Snapshot),
            4 => Some(RecordKind::Truncate),
            _ => None,
        }
    }
}

/// A record met during replay.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub kind: RecordKind,
    pub index: u64,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("WAL I/O error: {0}")]
    Io(Arc<std::io::Error>),
    #[error("corrupt WAL segment {} at offset {offset}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("WAL failed earlier and accepts no more appends: {0}")]
    Failed(Arc<str>),
    #[error("WAL record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("entry {index} would leave a gap after entry {last}")]
    Gap { index: u64, last: u64 },
    #[error("WAL is closed")]
    Closed,
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Options {
    /// Size of each segment file. Default 64 MiB.
    pub segment_bytes: u64,
    /// Queued plus in-flight bytes above which `append` waits (backpressure); also the
    /// largest record and the torn-write window replay allows. Default 8 MiB.
    pub inflight_bytes_max: usize,
    /// Device choice; `ETCH_WAL_BACKEND` overrides `Auto`.
    pub backend: Backend,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            inflight_bytes_max: 8 << 20,
            backend: Backend::Auto,
        }
    }
}

/// Largest payload of a `State` or `Snapshot` record. They are repeated at the start of
/// each segment, so they must stay small next to a batch.
pub const STICKY_PAYLOAD_MAX: usize = 64 << 10;

/// The most bytes the writer can have unsynced at once: a full batch plus the sticky
/// records written before it at a segment switch. Replay treats an invalid record as a
/// torn tail only if nothing valid starts this far past it.
pub(crate) fn torn_window(opts: &Options) -> usize {
    opts.inflight_bytes_max + 2 * format::record_len(STICKY_PAYLOAD_MAX)
}

/// A segment file: `{seq:016x}-{first_index:016x}.wal`.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
}

pub(crate) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

pub(crate) fn prealloc_name(seq: u64) -> String {
    format!("{seq:016x}.tmp")
}

/// Lists segments in order; removes leftover preallocation files.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut segs = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(e.path())?;
            continue;
        }
        if let Some((seq, first_index)) = parse_segment_name(name) {
            segs.push(Segment {
                seq,
                first_index,
                path: e.path(),
            });
        }
    }
    segs.sort_by_key(|s| s.seq);
    for w in segs.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(Error::Corrupt {
                segment: w[1].path.clone(),
                offset: 0,
                reason: format!("segment {} is missing", w[0].seq + 1),
            });
        }
    }
    Ok(segs)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn open_rw(path: &Path) -> Result<File> {
    Ok(OpenOptions::new().read(true).write(true).open(path)?)
}

/// Replay state: the tail of the last segment and the sticky records to carry forward.
pub(crate) struct Replayed {
    pub segments: Vec<Segment>,
    pub tail: u64,
    pub last_entry_index: Option<u64>,
    pub sticky: Vec<Vec<u8>>,
}

/// Reads every segment in order, calling `f` for records (entries only from `from_index`
/// on), and repairs a torn tail of the last segment.
pub(crate) fn replay(
    dir: &Path,
    opts: &Options,
    from_index: u64,
    f: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<Replayed> {
    let segments = list_segments(dir)?;
    let mut tail = 0;
    let mut last_entry: Option<u64> = None;
    let mut state: Option<Vec<u8>> = None;
    let mut snapshot: Option<Vec<u8>> = None;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let bytes = fs::read(&seg.path)?;
        // The writer of this segment may have run with other options than ours: allow the
        // larger of the two windows.
        let window = (format::decode_segment_header(&bytes, seg.seq, &seg.path)? as usize)
            .max(torn_window(opts));
        let record_max = window.max(opts.inflight_bytes_max);
        let scan = format::scan(&bytes, &seg.path, last, window, record_max)?;
        for r in &scan.records {
            if r.kind == RecordKind::Entry {
                // Entries may restart lower (a truncation) but never skip ahead.
                if let Some(prev) = last_entry
                    && r.index > prev + 1
                {
                    return Err(Error::Corrupt {
                        segment: seg.path.clone(),
                        offset: r.offset as u64,
                        reason: format!("entry {} follows entry {prev}: a gap", r.index),
                    });
                }
                last_entry = Some(r.index);
            }
            let mut enc = Vec::new();
            match r.kind {
                RecordKind::State | RecordKind::Snapshot => {
                    format::encode_record(&mut enc, r.kind, r.index, r.payload);
                    if r.kind == RecordKind::State {
                        state = Some(enc);
                    } else {
                        snapshot = Some(enc);
                    }
                }
                RecordKind::Truncate => last_entry = Some(r.index.saturating_sub(1)),
                RecordKind::Entry => {}
            }
            if r.kind != RecordKind::Entry || r.index >= from_index {
                f(Record {
                    kind: r.kind,
                    index: r.index,
                    payload: r.payload,
                })?;
            }
        }
        if last {
            if scan.dirty_end > scan.tail {
                tracing::warn!(
                    segment = %seg.path.display(),
                    offset = scan.tail,
                    bytes = scan.dirty_end - scan.tail,
                    "WAL: discarding a torn write at the tail"
                );
                let file = open_rw(&seg.path)?;
                device::pwritev_all(
                    &file,
                    scan.tail as u64,
                    &[&vec![0u8; scan.dirty_end - scan.tail]],
                )?;
                file.sync_data()?;
            }
            tail = scan.tail as u64;
        }
    }
    let sticky = [snapshot, state].into_iter().flatten().collect();
    Ok(Replayed {
        segments,
        tail,
        last_entry_index: last_entry,
        sticky,
    })
}

/// Replays the WAL in `dir` without opening it for appends (repairing a torn tail as
/// open would). For tools and fuzzing.
pub fn read_dir(
    dir: &Path,
    opts: &Options,
    from_index: u64,
    mut f: impl FnMut(Record<'_>) -> Result<()>,
) -> Result<()> {
    replay(dir, opts, from_index, &mut f).map(|_| ())
}

/// A valid segment header for segment `seq` recording torn-write window `window`: lets
/// tools and fuzzers build segment files.
pub fn segment_header_for_tools(seq: u64, window: u64) -> Vec<u8> {
    format::encode_segment_header(seq, window).to_vec()
}

/// Shared between the writer thread and callers purging old segments.
pub(crate) type SegmentList = Arc<Mutex<Vec<Segment>>>;
