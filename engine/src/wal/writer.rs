//! The writer thread, group commit, completion handles and segment preallocation.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use crate::util::lock;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use super::device::{self, LogDevice, open_device};
use super::format::{self, SEGMENT_HEADER_LEN};
use super::uring::AlignedBuf;
use super::{
    Backend, Error, Options, Record, RecordKind, Result, Segment, SegmentList, open_rw,
    prealloc_name, replay, segment_name, sync_dir,
};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Sticky records: the latest snapshot marker and state, re-written at each segment start.
#[derive(Clone, Default)]
struct Sticky {
    snapshot: Option<Vec<u8>>,
    state: Option<Vec<u8>>,
}

impl Sticky {
    fn encoded(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for r in [&self.snapshot, &self.state].into_iter().flatten() {
            v.extend_from_slice(r);
        }
        v
    }
}

struct Queue {
    /// Framed records waiting for the writer.
    buf: Vec<u8>,
    /// Sequence number the next append gets (1-based).
    next_seq: u64,
    /// Bytes taken by the writer and not yet durable.
    inflight: usize,
    closed: bool,
    failed: Option<Arc<str>>,
    /// Sticky records as of everything queued / everything handed to the writer.
    sticky_queued: Sticky,
    sticky_taken: Sticky,
    last_entry_index: Option<u64>,
    /// Index of the first entry in `buf`, for naming a segment the batch opens.
    buf_first_entry: Option<u64>,
}

struct Done {
    /// Every append with a sequence number ≤ this is durable.
    durable_seq: u64,
    /// Appends from this sequence number on failed, with the reason.
    failed: Option<(u64, Arc<str>)>,
    wakers: Vec<(u64, Waker)>,
}

/// Counters of the writer's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written, each with one fdatasync.
    pub syncs: u64,
    /// Records made durable.
    pub records: u64,
    /// Bytes written (records and repeated sticky records).
    pub bytes: u64,
    /// Batches whose write and sync took at most `SYNC_BUCKET_BOUNDS_US[i]`
    /// (cumulative counts, as a Prometheus histogram has them).
    pub sync_buckets: [u64; SYNC_BUCKETS],
    /// Total time spent writing and syncing batches.
    pub sync_micros: u64,
}

/// Buckets of the write-and-sync duration histogram.
pub const SYNC_BUCKETS: usize = 14;
/// Upper bounds of the buckets in microseconds: 1 ms doubling up to 8.192 s.
pub const SYNC_BUCKET_BOUNDS_US: [u64; SYNC_BUCKETS] = {
    let mut b = [0u64; SYNC_BUCKETS];
    let mut i = 0;
    while i < SYNC_BUCKETS {
        b[i] = 1000 << i;
        i += 1;
    }
    b
};

struct Shared {
    stats: Mutex<WalStats>,
    q: Mutex<Queue>,
    work_cv: Condvar,
    room_cv: Condvar,
    done: Mutex<Done>,
    done_cv: Condvar,
    inflight_max: usize,
}

/// Completes when the append it was returned for is durable (or the WAL failed).
#[must_use = "an append is durable only once its handle completes"]
pub struct AppendHandle {
    shared: Arc<Shared>,
    seq: u64,
}

impl std::fmt::Debug for AppendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendHandle")
            .field("seq", &self.seq)
            .finish()
    }
}

impl AppendHandle {
    fn status(&self, d: &Done) -> Option<Result<()>> {
        if d.durable_seq >= self.seq {
            return Some(Ok(()));
        }
        match &d.failed {
            Some((first, why)) if self.seq >= *first => Some(Err(Error::Failed(why.clone()))),
            _ => None,
        }
    }

    /// Blocks until the record is durable.
    pub fn wait(self) -> Result<()> {
        let mut d = lock(&self.shared.done);
        loop {
            if let Some(r) = self.status(&d) {
                return r;
            }
            d = self
                .shared
                .done_cv
                .wait(d)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether the outcome is known.
    pub fn is_done(&self) -> bool {
        self.status(&lock(&self.shared.done)).is_some()
    }
}

impl Future for AppendHandle {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut d = lock(&self.shared.done);
        if let Some(r) = self.status(&d) {
            return Poll::Ready(r);
        }
        d.wakers.push((self.seq, cx.waker().clone()));
        Poll::Pending
    }
}

/// An open write-ahead log. See the module docs.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    prealloc: Option<JoinHandle<()>>,
    segments: SegmentList,
    dir: PathBuf,
    backend: &'static str,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Creates a segment file: header, then zeros to its full size (real blocks, so later
/// fdatasyncs only flush data), synced.
fn preallocate(dir: &Path, seq: u64, opts: &Options) -> Result<File> {
    let path = dir.join(prealloc_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let header = format::encode_segment_header(seq, super::torn_window(opts) as u64);
    device::pwritev_all(&file, 0, &[&header])?;
    let zeros = vec![0u8; 1 << 20];
    let mut off = SEGMENT_HEADER_LEN as u64;
    while off < opts.segment_bytes {
        let n = (opts.segment_bytes - off).min(zeros.len() as u64) as usize;
        device::pwritev_all(&file, off, &[&zeros[..n]])?;
        off += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Moves a preallocated file to its segment name and syncs the directory.
fn install(dir: &Path, seq: u64, first_index: u64) -> Result<Segment> {
    let path = dir.join(segment_name(seq, first_index));
    fs::rename(dir.join(prealloc_name(seq)), &path)?;
    sync_dir(dir)?;
    Ok(Segment {
        seq,
        first_index,
        path,
    })
}

struct Current {
    file: File,
    /// The same file opened O_DIRECT, for devices that write aligned blocks.
    direct: Option<File>,
    seq: u64,
    off: u64,
}

/// The partial last block of the current segment, for devices that write whole aligned
/// blocks: each batch is written from the start of that block, padded with zeros.
struct AlignedTail {
    buf: AlignedBuf,
    block_start: u64,
    len: usize,
    block: usize,
}

impl AlignedTail {
    /// Loads the bytes of the block holding `off`, up to `off`.
    fn load(file: &File, off: u64, block: usize) -> Result<AlignedTail> {
        let block_start = off / block as u64 * block as u64;
        let len = (off - block_start) as usize;
        let mut buf = AlignedBuf::new();
        buf.reserve(block);
        file.read_exact_at(&mut buf.as_mut_slice()[..len], block_start)?;
        Ok(AlignedTail {
            buf,
            block_start,
            len,
            block,
        })
    }
}

/// Opens `path` for O_DIRECT writes; None where the filesystem refuses (e.g. tmpfs).
fn open_direct(path: &Path) -> Option<File> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), "WAL: O_DIRECT unavailable ({e}); writing through the page cache");
            None
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, replaying every record to `f` (entries
    /// only from `from_index` on) before any append is accepted.
    pub fn open(
        dir: &Path,
        opts: Options,
        from_index: u64,
        f: impl FnMut(Record<'_>) -> Result<()>,
    ) -> Result<Wal> {
        let backend = match opts.backend {
            Backend::Auto => Backend::from_env().unwrap_or(Backend::Auto),
            b => b,
        };
        let (device, fallback) = open_device(backend)?;
        if let Some(why) = fallback {
            tracing::warn!("WAL: {why}");
        }
        tracing::info!(backend = device.name(), dir = %dir.display(), "WAL opening");
        Wal::open_with_device(dir, opts, device, from_index, f)
    }

    /// Like [`Wal::open`] with a caller-supplied device (tests inject faults this way).
    pub fn open_with_device(
        dir: &Path,
        opts: Options,
        device: Box<dyn LogDevice>,
        from_index: u64,
        mut f: impl FnMut(Record<'_>) -> Result<()>,
    ) -> Result<Wal> {
        if opts.inflight_bytes_max < 4096 || opts.segment_bytes < 4096 {
            return Err(Error::InvalidOptions(
                "segment_bytes and inflight_bytes_max must be at least 4096".into(),
            ));
        }
        fs::create_dir_all(dir)?;
        let rep = replay(dir, &opts, from_index, &mut f)?;
        let mut segments = rep.segments;
        let current = match segments.last() {
            Some(last) => Current {
                file: open_rw(&last.path)?,
                direct: None,
                seq: last.seq,
                off: rep.tail,
            },
            None => {
                let file = preallocate(dir, 0, &opts)?;
                segments.push(install(dir, 0, rep.last_entry_index.map_or(0, |i| i + 1))?);
                Current {
                    file,
                    direct: None,
                    seq: 0,
                    off: SEGMENT_HEADER_LEN as u64,
                }
            }
        };
        Wal::start(
            dir,
            opts,
            device,
            current,
            segments,
            rep.last_entry_index,
            rep.sticky,
        )
    }

    fn start(
        dir: &Path,
        opts: Options,
        device: Box<dyn LogDevice>,
        current: Current,
        segments: Vec<Segment>,
        last_entry_index: Option<u64>,
        sticky: Vec<Vec<u8>>,
    ) -> Result<Wal> {
        let mut st = Sticky::default();
        for r in sticky {
            match RecordKind::from_u8(r[8]) {
                Some(RecordKind::Snapshot) => st.snapshot = Some(r),
                _ => st.state = Some(r),
            }
        }
        let shared = Arc::new(Shared {
            stats: Mutex::new(WalStats::default()),
            q: Mutex::new(Queue {
                buf: Vec::with_capacity(64 << 10),
                next_seq: 1,
                inflight: 0,
                closed: false,
                failed: None,
                sticky_queued: st.clone(),
                sticky_taken: st,
                last_entry_index,
                buf_first_entry: None,
            }),
            work_cv: Condvar::new(),
            room_cv: Condvar::new(),
            done: Mutex::new(Done {
                durable_seq: 0,
                failed: None,
                wakers: Vec::new(),
            }),
            done_cv: Condvar::new(),
            inflight_max: opts.inflight_bytes_max,
        });
        let segments: SegmentList = Arc::new(Mutex::new(segments));

        // The preallocation thread makes segment files ahead of need.
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (file_tx, file_rx) = mpsc::channel::<Result<(u64, File)>>();
        let pdir = dir.to_path_buf();
        let popts = opts.clone();
        let prealloc = std::thread::Builder::new()
            .name("etch-wal-prealloc".into())
            .spawn(move || {
                for seq in req_rx {
                    if file_tx
                        .send(preallocate(&pdir, seq, &popts).map(|f| (seq, f)))
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        req_tx
            .send(current.seq + 1)
            .expect("preallocation thread is running");

        let backend = device.name();
        let mut current = current;
        let tail = match device.direct_block() {
            Some(block) => {
                let path = &lock(&segments)
                    .last()
                    .expect("a segment exists")
                    .path
                    .clone();
                current.direct = open_direct(path);
                Some(AlignedTail::load(&current.file, current.off, block)?)
            }
            None => None,
        };
        let w = Writer {
            tail,
            shared: shared.clone(),
            device,
            current,
            segments: segments.clone(),
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes,
            req_tx,
            file_rx,
        };
        let writer = std::thread::Builder::new()
            .name("etch-wal-writer".into())
            .spawn(move || {
                let shared = w.shared.clone();
                // A panic (a broken invariant) must not leave waiters hanging: fail them.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())).is_err() {
                    let next = shared.done_seq() + 1;
                    shared.fail(next, "the WAL writer thread panicked");
                }
            })?;
        Ok(Wal {
            shared,
            writer: Some(writer),
            prealloc: Some(prealloc),
            segments,
            dir: dir.to_path_buf(),
            backend,
        })
    }

    pub fn stats(&self) -> WalStats {
        *lock(&self.shared.stats)
    }

    /// The device in use: "io_uring" or "syscall".
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Queues a record; the handle completes once it is durable. Waits while the queued
    /// and in-flight bytes exceed `inflight_bytes_max`.
    pub fn append(&self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<AppendHandle> {
        if matches!(kind, RecordKind::State | RecordKind::Snapshot)
            && payload.len() > super::STICKY_PAYLOAD_MAX
        {
            return Err(Error::TooLarge {
                len: payload.len(),
                max: super::STICKY_PAYLOAD_MAX,
            });
        }
        let len = format::record_len(payload.len());
        if len > self.shared.inflight_max {
            return Err(Error::TooLarge {
                len: payload.len(),
                max: self.shared.inflight_max - format::RECORD_HEADER_LEN,
            });
        }
        let mut q = lock(&self.shared.q);
        loop {
            if let Some(why) = &q.failed {
                return Err(Error::Failed(why.clone()));
            }
            if q.closed {
                return Err(Error::Closed);
            }
            if q.buf.len() + q.inflight + len <= self.shared.inflight_max {
                break;
            }
            q = self
                .shared
                .room_cv
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let (RecordKind::Entry, Some(last)) = (kind, q.last_entry_index)
            && index > last + 1
        {
            return Err(Error::Gap { index, last });
        }
        let was_empty = q.buf.is_empty();
        let start = q.buf.len();
        format::encode_record(&mut q.buf, kind, index, payload);
        match kind {
            RecordKind::State => q.sticky_queued.state = Some(q.buf[start..].to_vec()),
            RecordKind::Snapshot => q.sticky_queued.snapshot = Some(q.buf[start..].to_vec()),
            RecordKind::Entry => {
                if q.buf_first_entry.is_none() {
                    q.buf_first_entry = Some(index);
                }
                q.last_entry_index = Some(index);
            }
            RecordKind::Truncate => q.last_entry_index = Some(index.saturating_sub(1)),
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        drop(q);
        if was_empty {
            self.shared.work_cv.notify_one();
        }
        Ok(AppendHandle {
            shared: self.shared.clone(),
            seq,
        })
    }

    /// Appends and waits.
    pub fn append_sync(&self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<()> {
        self.append(kind, index, payload)?.wait()
    }

    /// Voids entries at `index` and above (a Raft log conflict), durably.
    pub fn truncate_suffix(&self, index: u64) -> Result<()> {
        self.append_sync(RecordKind::Truncate, index, &[])
    }

    /// Deletes whole segments that hold only entries below `index` (the next segment
    /// starts at or below it). The segment being written is never deleted. Returns how
    /// many were removed.
    pub fn purge_below(&self, index: u64) -> Result<usize> {
        let mut segs = lock(&self.segments);
        let mut n = 0;
        while segs.len() > 1 && segs[1].first_index <= index {
            fs::remove_file(&segs[0].path)?;
            segs.remove(0);
            n += 1;
        }
        if n > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(n)
    }

    /// Segment files in order.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        lock(&self.segments)
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    /// Finishes every queued append, then stops the writer.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match &lock(&self.shared.q).failed {
            Some(why) => Err(Error::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        lock(&self.shared.q).closed = true;
        self.shared.work_cv.notify_all();
        self.shared.room_cv.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(p) = self.prealloc.take() {
            let _ = p.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer {
    tail: Option<AlignedTail>,
    shared: Arc<Shared>,
    device: Box<dyn LogDevice>,
    current: Current,
    segments: SegmentList,
    dir: PathBuf,
    segment_bytes: u64,
    req_tx: mpsc::Sender<u64>,
    file_rx: mpsc::Receiver<Result<(u64, File)>>,
}

impl Writer {
    fn run(mut self) {
        let mut spare: Vec<u8> = Vec::with_capacity(64 << 10);
        loop {
            let (batch, first_seq, last_seq, sticky, first_index) = {
                let mut q = lock(&self.shared.q);
                while q.buf.is_empty() && !q.closed {
                    q = self
                        .shared
                        .work_cv
                        .wait(q)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if q.buf.is_empty() {
                    break;
                }
                spare.clear();
                let batch = std::mem::replace(&mut q.buf, std::mem::take(&mut spare));
                q.inflight += batch.len();
                let queued = q.sticky_queued.clone();
                let sticky = std::mem::replace(&mut q.sticky_taken, queued);
                let first_index = q
                    .buf_first_entry
                    .take()
                    .unwrap_or_else(|| q.last_entry_index.map_or(0, |i| i + 1));
                let last_seq = q.next_seq - 1;
                let first_seq = self.shared.done_seq() + 1;
                (batch, first_seq, last_seq, sticky, first_index)
            };
            let started = std::time::Instant::now();
            let r = self.write_batch(&batch, &sticky, first_index);
            let took_us = started.elapsed().as_micros() as u64;
            match r {
                Err(e) => {
                    self.fail(first_seq, e);
                    return;
                }
                Ok(written) => {
                    let mut st = lock(&self.shared.stats);
                    st.syncs += 1;
                    st.records += last_seq + 1 - first_seq;
                    st.bytes += written;
                    st.sync_micros += took_us;
                    for (i, bound) in SYNC_BUCKET_BOUNDS_US.iter().enumerate() {
                        if took_us <= *bound {
                            st.sync_buckets[i] += 1;
                        }
                    }
                }
            }
            {
                let mut q = lock(&self.shared.q);
                q.inflight -= batch.len();
            }
            self.shared.room_cv.notify_all();
            self.shared.complete(last_seq);
            spare = batch;
        }
    }

    /// Writes and syncs one batch; returns the bytes written.
    fn write_batch(&mut self, batch: &[u8], sticky: &Sticky, first_index: u64) -> Result<u64> {
        let mut prefix = Vec::new();
        if self.current.off + batch.len() as u64 > self.segment_bytes
            && self.current.off > SEGMENT_HEADER_LEN as u64
        {
            self.roll(first_index)?;
            prefix = sticky.encoded();
        }
        match &mut self.tail {
            None => self.device.write_and_sync(
                &self.current.file,
                self.current.off,
                &[&prefix, batch],
            )?,
            Some(t) => {
                let file = self.current.direct.as_ref().unwrap_or(&self.current.file);
                let total = t.len + prefix.len() + batch.len();
                let padded = total.next_multiple_of(t.block);
                t.buf.reserve(padded);
                let b = t.buf.as_mut_slice();
                b[t.len..t.len + prefix.len()].copy_from_slice(&prefix);
                b[t.len + prefix.len()..total].copy_from_slice(batch);
                b[total..padded].fill(0);
                self.device
                    .write_and_sync(file, t.block_start, &[&b[..padded]])?;
                let full = total / t.block * t.block;
                b.copy_within(full..total, 0);
                t.len = total - full;
                t.block_start += full as u64;
            }
        }
        let written = (prefix.len() + batch.len()) as u64;
        self.current.off += written;
        Ok(written)
    }

    /// Switches to the next (preallocated) segment. Everything in the current one is
    /// already durable: each batch is synced before the next is written.
    fn roll(&mut self, first_index: u64) -> Result<()> {
        let (seq, file) = self.file_rx.recv().map_err(|_| Error::Closed)??;
        assert_eq!(
            seq,
            self.current.seq + 1,
            "preallocated segments arrive in order"
        );
        let seg = install(&self.dir, seq, first_index)?;
        let direct = if self.tail.is_some() {
            open_direct(&seg.path)
        } else {
            None
        };
        lock(&self.segments).push(seg);
        self.current = Current {
            file,
            direct,
            seq,
            off: SEGMENT_HEADER_LEN as u64,
        };
        if let Some(t) = &mut self.tail {
            *t = AlignedTail::load(&self.current.file, self.current.off, t.block)?;
        }
        // The preallocation thread only stops when the WAL is dropped.
        let _ = self.req_tx.send(seq + 1);
        Ok(())
    }

    /// A failed write or sync: fail this batch, everything queued, and every later append.
    fn fail(&self, first_seq: u64, e: Error) {
        self.shared.fail(first_seq, &e.to_string());
    }
}

impl Shared {
    /// Fails appends from `first_seq` on, everything queued, and every later append.
    fn fail(&self, first_seq: u64, why: &str) {
        let why: Arc<str> = Arc::from(why);
        tracing::error!("WAL write failed, refusing further appends: {why}");
        lock(&self.q).failed = Some(why.clone());
        let wakers = {
            let mut d = lock(&self.done);
            if d.failed.is_none() {
                d.failed = Some((first_seq, why));
            }
            std::mem::take(&mut d.wakers)
        };
        self.done_cv.notify_all();
        self.room_cv.notify_all();
        for (_, w) in wakers {
            w.wake();
        }
    }

    fn done_seq(&self) -> u64 {
        lock(&self.done).durable_seq
    }

    fn complete(&self, last_seq: u64) {
        let ready: Vec<Waker> = {
            let mut d = lock(&self.done);
            d.durable_seq = last_seq;
            let (ready, waiting): (Vec<_>, Vec<_>) =
                d.wakers.drain(..).partition(|(s, _)| *s <= last_seq);
            d.wakers = waiting;
            ready.into_iter().map(|(_, w)| w).collect()
        };
        self.done_cv.notify_all();
        for w in ready {
            w.wake();
        }
    }
}
