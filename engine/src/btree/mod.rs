//! A copy-on-write B+tree in one data file, read through a read-only memory map.
//!
//! - One writer at a time ([`Db::begin_write`]), any number of readers
//!   ([`Db::begin_read`]), each pinned to the version that was committed when it began.
//! - [`WriteTxn::commit`] makes a version visible to new readers at once: its pages are
//!   written to the file (not synced). [`Db::checkpoint`] makes everything committed so far
//!   durable: sync the pages, write the meta page of the other slot, sync again.
//! - After a crash, the file opens at the last checkpoint, with its marker.
//!
//! Layout on disk: `docs/btree-format.md`.

mod check;
mod cursor;
mod error;
mod file;
mod map;
mod meta;
mod page;
mod view;
mod write;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::util::lock;

pub use check::CheckReport;
pub use cursor::{Cursor, Range, Tree};
pub use error::{Error, Result};
pub use file::{Fault, OsFile, PageFile, SimFile};
pub use meta::MARKER_MAX;
pub use view::{PageSource, View};
pub use write::{ENTRY_MAX, TreeId, WriteTxn};

/// Whether the file at `path` starts like an etch data file (its first meta page's magic).
pub fn is_data_file(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(path)?;
    let mut b = [0u8; 16];
    match f.read_exact_at(&mut b, 0) {
        Ok(()) => Ok(&b[8..16] == meta::MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

use map::Mapping;
use meta::{META_LEN, Meta};
use page::{Limits, PageId};
use view::Verified;
use write::DirtyPages;

/// Smallest and largest page sizes accepted.
pub const PAGE_SIZE_MIN: usize = 512;
pub const PAGE_SIZE_MAX: usize = 64 * 1024;

pub(crate) fn valid_page_size(ps: usize) -> bool {
    ps.is_power_of_two() && (PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&ps)
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Page size for a new file (an existing file keeps its own). Default 4096.
    pub page_size: usize,
    /// Address space reserved for the map up front; the file grows inside it without
    /// remapping. Default 64 GiB (address space only; nothing is allocated).
    pub map_reserve_bytes: usize,
    /// A commit that leaves more than this many unsynced bytes runs a checkpoint.
    /// Default 64 MiB; this bounds the dirty page-cache memory between checkpoints.
    pub checkpoint_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size: 4096,
            map_reserve_bytes: 64 << 30,
            checkpoint_bytes: 64 << 20,
        }
    }
}

/// Counters and sizes, cheap to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub page_size: usize,
    /// Last committed version.
    pub txn: u64,
    /// Last durable (checkpointed) version.
    pub durable_txn: u64,
    /// Pages below the high-water mark (used or free).
    pub high_water_pages: u64,
    pub file_bytes: u64,
    /// Bytes of the distinct pages written by commits since the last checkpoint took its
    /// version: what the next checkpoint syncs (a page rewritten counts once).
    pub unsynced_bytes: u64,
    pub readers: usize,
    pub checkpoints: u64,
    /// Bytes written to the data file since it was opened (pages and meta pages).
    pub written_bytes: u64,
}

struct ReadState {
    meta: Meta,
    map: Arc<Mapping>,
    /// Live readers by the version they read: count.
    readers: BTreeMap<u64, usize>,
}

/// What the writer keeps from one transaction to the next, under the writer lock: the
/// pages written since the last checkpoint took its version ("fresh" pages), and the
/// free-tree entries that list only fresh pages. No version a checkpoint has taken (or is
/// syncing) contains a fresh page, so a fresh page freed by a commit may be reused before
/// the next checkpoint, once no reader can see it: the working set of pages stays small
/// instead of every commit dirtying new ones until the checkpoint frees the old.
#[derive(Default)]
pub(crate) struct WriterState {
    /// First page id of each page or overflow run written since the capture → the txn that
    /// wrote it (the oldest version that can see it).
    pub(crate) fresh: write::PageMap<u64>,
    /// Free-tree entries whose pages are all fresh, by key (so oldest first) → the
    /// versions that can see one of their pages, `written_from..freed_by`: an entry is
    /// reusable once no reader holds one of those.
    pub(crate) fresh_entries: BTreeMap<[u8; write::FREE_KEY_LEN], std::ops::Range<u64>>,
}

/// Fresh free-tree entries a write transaction considers, newest first, and at most how
/// many it looks at to find them: bounded work per transaction however many a long
/// reader holds back (those are reclaimed by the usual rule after the next checkpoint).
const FRESH_READY_MAX: usize = 64;
const FRESH_LOOK_MAX: usize = 512;
/// Fresh entries remembered at most; beyond, the oldest are left to the usual rule.
pub(crate) const FRESH_ENTRIES_MAX: usize = 1 << 16;

struct CheckpointState {
    /// Meta slot (0 or 1) holding the durable version.
    durable_slot: u64,
}

struct Shared {
    file: Box<dyn PageFile>,
    lim: Limits,
    opts: Options,
    state: Mutex<ReadState>,
    writer: Mutex<WriterState>,
    ckpt: Mutex<CheckpointState>,
    checkpoints: AtomicU64,
    durable_txn: AtomicU64,
    file_len: AtomicU64,
    unsynced_bytes: AtomicU64,
    written_bytes: AtomicU64,
    poisoned: AtomicBool,
    poison_reason: Mutex<String>,
    verified: Arc<Verified>,
    /// Page buffers recycled between write transactions.
    page_pool: Mutex<Vec<Box<[u8]>>>,
}

/// Most page buffers kept for reuse (4 MiB at 4 KiB pages).
const PAGE_POOL_MAX: usize = 1024;

/// An open data file.
pub struct Db {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("stats", &self.stats()).finish()
    }
}

impl Db {
    /// Opens or creates the data file at `path`, locking it against other processes.
    pub fn open(path: &Path, opts: Options) -> Result<Db> {
        Db::open_with(Box::new(OsFile::open(path)?), opts)
    }

    /// Opens a database over any page file (tests use [`SimFile`]).
    pub fn open_with(file: Box<dyn PageFile>, opts: Options) -> Result<Db> {
        if !valid_page_size(opts.page_size) {
            return Err(Error::InvalidOptions(format!(
                "page size {} is not a power of two in {PAGE_SIZE_MIN}..={PAGE_SIZE_MAX}",
                opts.page_size
            )));
        }
        let len = file.len().map_err(Error::Io)?;
        let (meta, slot) = if len == 0 {
            let meta = Meta::empty(opts.page_size as u32);
            let ps = opts.page_size as u64;
            file.set_len(2 * ps).map_err(Error::from_io)?;
            let enc = meta.encode();
            file.write_all_at(&enc, 0).map_err(Error::from_io)?;
            file.write_all_at(&enc, ps).map_err(Error::from_io)?;
            file.sync_data().map_err(Error::from_io)?;
            (meta, 0)
        } else {
            read_metas(&*file, len)?
        };
        let ps = meta.page_size as usize;
        let len = file.len().map_err(Error::Io)?;
        if len < meta.high_water * ps as u64 {
            return Err(Error::CorruptFile(format!(
                "file is {len} bytes but its meta (txn {}) needs {} pages of {ps} bytes",
                meta.txn, meta.high_water
            )));
        }
        let reserve = opts.map_reserve_bytes.max(len as usize * 2).max(ps * 64);
        let map = Arc::new(Mapping::new(file.file(), reserve).map_err(Error::Io)?);
        let shared = Shared {
            file,
            lim: Limits::new(ps),
            opts,
            state: Mutex::new(ReadState {
                meta,
                map,
                readers: BTreeMap::new(),
            }),
            writer: Mutex::new(WriterState::default()),
            ckpt: Mutex::new(CheckpointState { durable_slot: slot }),
            checkpoints: AtomicU64::new(0),
            durable_txn: AtomicU64::new(meta.txn),
            file_len: AtomicU64::new(len),
            unsynced_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(String::new()),
            verified: Arc::new(Verified::new()),
            page_pool: Mutex::new(Vec::new()),
        };
        Ok(Db {
            shared: Arc::new(shared),
        })
    }

    fn check_poison(&self) -> Result<()> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned(lock(&self.shared.poison_reason).clone()));
        }
        Ok(())
    }

    /// Latches a fatal I/O failure; every later call fails.
    fn poison(&self, what: &str, e: std::io::Error) -> Error {
        let mut reason = lock(&self.shared.poison_reason);
        if reason.is_empty() {
            *reason = format!("{what}: {e}");
        }
        self.shared.poisoned.store(true, Ordering::Release);
        Error::from_io(e)
    }

    /// Starts a read transaction on the latest committed version.
    pub fn begin_read(&self) -> Result<ReadTxn> {
        self.check_poison()?;
        let mut st = lock(&self.shared.state);
        let meta = st.meta;
        *st.readers.entry(meta.txn).or_insert(0) += 1;
        let view = View {
            map: st.map.clone(),
            meta,
            lim: self.shared.lim,
            verified: self.shared.verified.clone(),
        };
        drop(st);
        Ok(ReadTxn {
            shared: self.shared.clone(),
            view,
        })
    }

    /// Starts the write transaction, waiting for the previous one to finish.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        self.check_poison()?;
        let guard = lock(&self.shared.writer);
        let st = lock(&self.shared.state);
        let oldest_reader = st.readers.keys().next().copied().unwrap_or(u64::MAX);
        let horizon = oldest_reader.min(self.shared.durable_txn.load(Ordering::Acquire));
        // Readers that begin later read the latest version, which no longer holds any page
        // of these entries.
        let fresh_ready: Vec<[u8; write::FREE_KEY_LEN]> = guard
            .fresh_entries
            .iter()
            .rev()
            .take(FRESH_LOOK_MAX)
            .filter(|(_, seen_by)| st.readers.range((*seen_by).clone()).next().is_none())
            .map(|(k, _)| *k)
            .take(FRESH_READY_MAX)
            .collect();
        let view = View {
            map: st.map.clone(),
            meta: st.meta,
            lim: self.shared.lim,
            verified: self.shared.verified.clone(),
        };
        drop(st);
        Ok(WriteTxn::new(self, guard, view, horizon, fresh_ready))
    }

    /// Writes a committed version's pages and makes it the latest. Called by commit with
    /// the writer lock held.
    /// A page-sized buffer, recycled when possible. Its contents are unspecified.
    pub(crate) fn page_buffer(&self) -> Box<[u8]> {
        lock(&self.shared.page_pool)
            .pop()
            .unwrap_or_else(|| vec![0u8; self.shared.lim.page_size].into_boxed_slice())
    }

    /// Returns whether unsynced bytes passed `checkpoint_bytes`: the caller checkpoints
    /// once it has released the writer lock. `w` is the writer's state (its lock is held).
    fn publish(&self, meta: Meta, pages: DirtyPages, w: &mut WriterState) -> Result<bool> {
        let sh = &self.shared;
        let ps = sh.lim.page_size as u64;
        let need = meta.high_water * ps;
        let file_len = sh.file_len.load(Ordering::Acquire);
        if need > file_len {
            // Grow in steps (1/8 of the file, at least 64 pages, at most 1 GiB) so that
            // size changes, which fdatasync must also persist, stay rare.
            let step = (file_len / 8).clamp(64 * ps, 1 << 30);
            let new_len = need.div_ceil(step) * step;
            if let Err(e) = sh.file.set_len(new_len) {
                return Err(self.write_failed("growing the data file", e));
            }
            sh.file_len.store(new_len, Ordering::Release);
        }
        let mut sorted: Vec<(PageId, Box<[u8]>)> = pages.into_iter().collect();
        sorted.sort_unstable_by_key(|(id, _)| *id);
        let mut bytes = 0u64;
        for (id, buf) in &mut sorted {
            page::seal(buf, *id, meta.txn, sh.lim.page_size);
            sh.verified.clear(*id);
            bytes += buf.len() as u64;
        }
        let mut new_bytes = 0u64;
        // One vectored write per run of adjacent pages, at most 16 pages: measured on ext4,
        // longer vectors made random-page commits slower while sequential loads gained
        // little more.
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i + 1;
            let mut end = sorted[i].0 + sorted[i].1.len() as u64 / ps;
            while j < sorted.len() && sorted[j].0 == end && j - i < 16 {
                end += sorted[j].1.len() as u64 / ps;
                j += 1;
            }
            let bufs: Vec<&[u8]> = sorted[i..j].iter().map(|(_, b)| &b[..]).collect();
            if let Err(e) = sh.file.write_vectored_at(&bufs, sorted[i].0 * ps) {
                return Err(self.write_failed("writing pages", e));
            }
            i = j;
        }
        // Every write succeeded: record the pages as fresh. Rewriting a page already
        // written since the capture adds nothing for the next checkpoint to sync.
        for (id, buf) in &sorted {
            if w.fresh.insert(*id, meta.txn).is_none() {
                new_bytes += buf.len() as u64;
            }
        }
        // Keep single-page buffers for the next transactions.
        {
            let mut pool = lock(&sh.page_pool);
            for (_, buf) in sorted {
                if buf.len() == sh.lim.page_size && pool.len() < PAGE_POOL_MAX {
                    pool.push(buf);
                }
            }
        }
        let mut st = lock(&sh.state);
        if need as usize > st.map.reserved() {
            let reserve = (need as usize).max(st.map.reserved()) * 2;
            st.map = Arc::new(Mapping::new(sh.file.file(), reserve).map_err(Error::Io)?);
        }
        st.meta = meta;
        drop(st);
        sh.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        let unsynced = sh.unsynced_bytes.fetch_add(new_bytes, Ordering::AcqRel) + new_bytes;
        Ok(unsynced > sh.opts.checkpoint_bytes)
    }

    /// A failed page write: disk full aborts the transaction (nothing it wrote is reachable
    /// from any version); any other error is fatal.
    fn write_failed(&self, what: &str, e: std::io::Error) -> Error {
        match Error::from_io(e) {
            Error::DiskFull(e) => Error::DiskFull(e),
            Error::Io(e) => self.poison(what, e),
            other => other,
        }
    }

    /// Makes every committed version durable: sync pages, write the meta slot not holding
    /// the durable version, sync. Writers may keep committing meanwhile.
    pub fn checkpoint(&self) -> Result<()> {
        self.check_poison()?;
        let sh = &self.shared;
        let mut ck = lock(&sh.ckpt);
        // Take the version under the writer lock (waiting for a running transaction to
        // commit or abort): from here on no page of it may be reused, so the writer's
        // fresh pages start again from empty.
        let (meta, unsynced) = {
            let mut w = lock(&sh.writer);
            let st = lock(&sh.state);
            w.fresh.clear();
            w.fresh_entries.clear();
            (st.meta, sh.unsynced_bytes.load(Ordering::Acquire))
        };
        if meta.txn == sh.durable_txn.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Err(e) = sh.file.sync_data() {
            return Err(self.poison("syncing pages", e));
        }
        let slot = 1 - ck.durable_slot;
        let mut page = vec![0u8; sh.lim.page_size];
        page[..META_LEN].copy_from_slice(&meta.encode());
        if let Err(e) = sh.file.write_all_at(&page, slot * sh.lim.page_size as u64) {
            return Err(self.poison("writing the meta page", e));
        }
        if let Err(e) = sh.file.sync_data() {
            return Err(self.poison("syncing the meta page", e));
        }
        sh.written_bytes
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        ck.durable_slot = slot;
        sh.checkpoints.fetch_add(1, Ordering::Relaxed);
        sh.durable_txn.store(meta.txn, Ordering::Release);
        sh.unsynced_bytes.fetch_sub(unsynced, Ordering::AcqRel);
        Ok(())
    }

    /// Walks every page of the latest version and checks every invariant.
    pub fn check(&self) -> Result<CheckReport> {
        let r = self.begin_read()?;
        check::check(&r.view)
    }

    pub fn stats(&self) -> Stats {
        let sh = &self.shared;
        // Never waits for a checkpoint in progress (which holds ckpt, then state briefly).
        let st = lock(&sh.state);
        Stats {
            page_size: sh.lim.page_size,
            txn: st.meta.txn,
            durable_txn: sh.durable_txn.load(Ordering::Acquire),
            high_water_pages: st.meta.high_water,
            file_bytes: sh.file_len.load(Ordering::Acquire),
            unsynced_bytes: sh.unsynced_bytes.load(Ordering::Acquire),
            readers: st.readers.values().sum(),
            checkpoints: sh.checkpoints.load(Ordering::Relaxed),
            written_bytes: sh.written_bytes.load(Ordering::Relaxed),
        }
    }

    /// Checkpoints and closes.
    pub fn close(self) -> Result<()> {
        self.checkpoint()
    }
}

/// Reads both meta slots and picks the valid one with the highest txn.
fn read_metas(file: &dyn PageFile, len: u64) -> Result<(Meta, u64)> {
    let mut buf = vec![0u8; META_LEN];
    let read = |buf: &mut [u8], off: u64| -> Result<()> {
        if off + META_LEN as u64 > len {
            return Err(Error::CorruptFile(
                "file too short for its meta pages".into(),
            ));
        }
        file.read_exact_at(buf, off).map_err(Error::Io)
    };
    read(&mut buf, 0)?;
    let m0 = Meta::decode(&buf, 0);
    // Slot 1 sits one page in; its page size comes from slot 0, or is found by trying each.
    let sizes: Vec<usize> = match &m0 {
        Ok(m) => vec![m.page_size as usize],
        Err(_) => (9..=16).map(|s| 1usize << s).collect(),
    };
    let mut m1 = Err(Error::CorruptFile("no readable second meta page".into()));
    for ps in sizes {
        if read(&mut buf, ps as u64).is_err() {
            continue;
        }
        if let Ok(m) = Meta::decode(&buf, 1).and_then(|m| {
            if m.page_size as usize == ps {
                Ok(m)
            } else {
                Err(Error::CorruptFile(String::new()))
            }
        }) {
            m1 = Ok(m);
            break;
        }
    }
    match (m0, m1) {
        (Ok(a), Ok(b)) if b.txn > a.txn => Ok((b, 1)),
        (Ok(a), _) => Ok((a, 0)),
        (Err(_), Ok(b)) => Ok((b, 1)),
        (Err(e), Err(_)) => Err(Error::CorruptFile(format!(
            "both meta pages are invalid ({e})"
        ))),
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Best effort: a clean drop leaves nothing to replay. Errors were or will be
        // reported by the calls that hit them; a poisoned database is left as it is.
        // Compare versions, not unsynced bytes: a commit that changed only the marker
        // writes no pages but must still become durable.
        let committed = lock(&self.shared.state).meta.txn;
        if !self.shared.poisoned.load(Ordering::Acquire)
            && committed != self.shared.durable_txn.load(Ordering::Acquire)
        {
            let _ = self.checkpoint();
        }
    }
}

/// A read transaction: one consistent version, never blocked by the writer.
pub struct ReadTxn {
    shared: Arc<Shared>,
    view: View,
}

impl std::fmt::Debug for ReadTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTxn")
            .field("txn", &self.view.meta.txn)
            .finish()
    }
}

impl ReadTxn {
    /// The version read.
    pub fn txn_id(&self) -> u64 {
        self.view.meta.txn
    }

    /// The marker stored with this version.
    pub fn marker(&self) -> &[u8] {
        self.view.meta.marker()
    }

    /// Opens a named tree; None if it was never written.
    pub fn tree(&self, name: &[u8]) -> Result<Option<Tree<'_, View>>> {
        match view::get(&self.view, self.view.meta.catalog_root, name)? {
            None => Ok(None),
            Some(v) => {
                let (root, len) = write::decode_tree_desc(v)
                    .ok_or_else(|| Error::CorruptFile("malformed catalog entry".into()))?;
                Ok(Some(Tree {
                    src: &self.view,
                    root,
                    len,
                }))
            }
        }
    }

    /// Pages on the free list of this version (free now or once older readers finish).
    /// Reads the free tree: its size, not the data's.
    pub fn free_pages(&self) -> Result<u64> {
        if self.view.meta.free_root == 0 {
            return Ok(0);
        }
        let free = Tree {
            src: &self.view,
            root: self.view.meta.free_root,
            len: 0,
        };
        let mut n = 0u64;
        for e in free.iter() {
            let (_, v) = e?;
            n += (v.len() / 8) as u64;
        }
        Ok(n)
    }

    /// Names of all trees.
    pub fn tree_names(&self) -> Result<Vec<Vec<u8>>> {
        let t = Tree {
            src: &self.view,
            root: self.view.meta.catalog_root,
            len: 0,
        };
        t.iter().map(|r| r.map(|(k, _)| k.to_vec())).collect()
    }
}

impl Drop for ReadTxn {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        let txn = self.view.meta.txn;
        let n = st.readers.get_mut(&txn).expect("reader registered");
        *n -= 1;
        if *n == 0 {
            st.readers.remove(&txn);
        }
    }
}
