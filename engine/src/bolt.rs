//! bbolt's file format (the format of etcd's `member/snap/db` and of its snapshots): a
//! streaming writer and a page-at-a-time reader, both with memory bounded by the tree
//! height, whatever the data size.
//!
//! The layout, as bbolt defines it (little-endian, as on every platform etcd ships for):
//! - every page starts with a 16-byte header: page id (u64), flags (u16: branch 0x01,
//!   leaf 0x02, meta 0x04, freelist 0x10), element count (u16), overflow (u32: how many
//!   more pages this one spans);
//! - pages 0 and 1 are meta pages: magic 0xED0CDAED, version 2, page size, flags, the root
//!   bucket (root page id, sequence), the freelist page id, the high-water page id, the
//!   transaction id, and an FNV-1a 64 checksum of the fields before it; the valid one with
//!   the higher transaction id wins;
//! - leaf elements are 16 bytes (flags, pos, key size, value size) and branch elements 16
//!   bytes (pos, key size, child page id); `pos` counts from the element to its key, and a
//!   leaf's value follows its key;
//! - a leaf element with flag 0x01 is a nested bucket: its value is the bucket's root page
//!   id and sequence, and, when the root id is 0, the bucket's only page inline after them;
//! - the freelist page lists free page ids (u64); a count of 0xFFFF means the real count
//!   is the first u64.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
pub const PAGE_SIZE: usize = 4096;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
const LEAF_BUCKET: u32 = 0x01;
/// Bytes of the meta fields the checksum covers.
const META_SUMMED: usize = 56;
/// Deeper than any real tree: a file that claims more is corrupt.
const DEPTH_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid database: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(what: impl Into<String>) -> Error {
    Error::Invalid(what.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn fnv1a64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn page_header(buf: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&count.to_le_bytes());
    buf[12..16].copy_from_slice(&overflow.to_le_bytes());
}

// ------------------------------------------------------------------------------------
// Writer

/// One pending element of a page being filled.
#[derive(Debug)]
struct Item {
    key: Vec<u8>,
    /// A leaf's value, or a branch's child page id (8 bytes LE).
    value: Vec<u8>,
    flags: u32,
}

/// One level of a tree being built bottom-up: the page being filled.
#[derive(Debug, Default)]
struct Level {
    items: Vec<Item>,
    bytes: usize,
    /// Pages this level has written so far.
    written: usize,
}

/// Builds a bbolt file front to back. Buckets are written one after another, each with
/// its keys in ascending byte order; [`Writer::finish`] writes the root bucket, the
/// freelist and the meta pages. Memory holds one page per tree level.
pub struct Writer {
    file: BufWriter<File>,
    next_page: u64,
    /// (name, root page) of every bucket written, in the order written.
    buckets: Vec<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("bolt::Writer")
            .field("pages", &self.next_page)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl Writer {
    /// Creates `path` (which must not exist). Pages 0 and 1 (the meta pages) are
    /// reserved and written last.
    pub fn create(path: &Path) -> Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&[0u8; 2 * PAGE_SIZE])?;
        Ok(Writer {
            file,
            next_page: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts a top-level bucket. Bucket names must be unique; they may come in any order.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_>> {
        if name.is_empty() {
            return Err(invalid("empty bucket name"));
        }
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(invalid(format!(
                "bucket {} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(BucketWriter {
            w: self,
            name: name.to_vec(),
            levels: vec![Level::default()],
            last: None,
            count: 0,
        })
    }

    /// Writes one page (or a run of pages, for a page that overflows) from `items`;
    /// returns its id.
    fn write_page(&mut self, leaf: bool, items: &[Item]) -> Result<u64> {
        let data: usize = items.iter().map(|i| i.key.len() + i.value.len()).sum();
        let size = HEADER + ELEMENT * items.len() + data;
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let id = self.next_page;
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        let count = u16::try_from(items.len()).map_err(|_| invalid("too many elements"))?;
        let overflow = u32::try_from(pages - 1).map_err(|_| invalid("page too large"))?;
        page_header(
            &mut buf,
            id,
            if leaf { FLAG_LEAF } else { FLAG_BRANCH },
            count,
            overflow,
        );
        let mut off = HEADER + ELEMENT * items.len();
        for (n, it) in items.iter().enumerate() {
            let e = HEADER + ELEMENT * n;
            let pos = u32::try_from(off - e).map_err(|_| invalid("page too large"))?;
            let ksize = u32::try_from(it.key.len()).map_err(|_| invalid("key too large"))?;
            if leaf {
                let vsize =
                    u32::try_from(it.value.len()).map_err(|_| invalid("value too large"))?;
                buf[e..e + 4].copy_from_slice(&it.flags.to_le_bytes());
                buf[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
                buf[e + 8..e + 12].copy_from_slice(&ksize.to_le_bytes());
                buf[e + 12..e + 16].copy_from_slice(&vsize.to_le_bytes());
            } else {
                buf[e..e + 4].copy_from_slice(&pos.to_le_bytes());
                buf[e + 4..e + 8].copy_from_slice(&ksize.to_le_bytes());
                buf[e + 8..e + 16].copy_from_slice(&it.value);
            }
            buf[off..off + it.key.len()].copy_from_slice(&it.key);
            off += it.key.len();
            if leaf {
                buf[off..off + it.value.len()].copy_from_slice(&it.value);
                off += it.value.len();
            }
        }
        self.file.write_all(&buf)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes the root bucket, an empty freelist and both meta pages, and syncs. Returns
    /// the file's size.
    pub fn finish(mut self) -> Result<u64> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let root = {
            let mut root = BucketWriter {
                w: &mut self,
                name: Vec::new(),
                levels: vec![Level::default()],
                last: None,
                count: 0,
            };
            for (name, page) in &buckets {
                let mut v = Vec::with_capacity(BUCKET_HEADER);
                v.extend_from_slice(&page.to_le_bytes());
                v.extend_from_slice(&0u64.to_le_bytes());
                root.push(name, v, LEAF_BUCKET)?;
            }
            root.build()?
        };
        let freelist = self.next_page;
        let mut page = vec![0u8; PAGE_SIZE];
        page_header(&mut page, freelist, FLAG_FREELIST, 0, 0);
        self.file.write_all(&page)?;
        self.next_page += 1;
        let high_water = self.next_page;
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        for txid in [2u64, 3] {
            let mut page = vec![0u8; PAGE_SIZE];
            page_header(&mut page, txid % 2, FLAG_META, 0, 0);
            let m = &mut page[HEADER..];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[12..16].copy_from_slice(&0u32.to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[24..32].copy_from_slice(&0u64.to_le_bytes());
            m[32..40].copy_from_slice(&freelist.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..META_SUMMED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            file.seek(SeekFrom::Start((txid % 2) * PAGE_SIZE as u64))?;
            file.write_all(&page)?;
        }
        file.sync_all()?;
        Ok(high_water * PAGE_SIZE as u64)
    }
}

/// Writes one bucket's keys, in ascending order.
pub struct BucketWriter<'w> {
    w: &'w mut Writer,
    name: Vec<u8>,
    levels: Vec<Level>,
    last: Option<Vec<u8>>,
    count: u64,
}

impl std::fmt::Debug for BucketWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("bolt::BucketWriter")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("count", &self.count)
            .finish()
    }
}

impl BucketWriter<'_> {
    /// Adds `key` → `value`; keys must come in strictly ascending order and be non-empty.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.push(key, value.to_vec(), 0)
    }

    fn push(&mut self, key: &[u8], value: Vec<u8>, flags: u32) -> Result<()> {
        if key.is_empty() {
            return Err(invalid("empty key"));
        }
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(invalid("keys out of order"));
        }
        self.last = Some(key.to_vec());
        self.count += 1;
        self.add(0, key.to_vec(), value, flags)
    }

    /// Adds an element to `level`, first writing out its page if the element would not
    /// fit in it.
    fn add(&mut self, level: usize, key: Vec<u8>, value: Vec<u8>, flags: u32) -> Result<()> {
        let size = ELEMENT + key.len() + value.len();
        let l = &self.levels[level];
        if !l.items.is_empty() && HEADER + l.bytes + size > PAGE_SIZE {
            self.flush(level)?;
        }
        let l = &mut self.levels[level];
        l.bytes += size;
        l.items.push(Item { key, value, flags });
        Ok(())
    }

    /// Writes `level`'s page and adds it to the level above.
    fn flush(&mut self, level: usize) -> Result<u64> {
        let items = std::mem::take(&mut self.levels[level].items);
        self.levels[level].bytes = 0;
        self.levels[level].written += 1;
        let id = self.w.write_page(level == 0, &items)?;
        if self.levels.len() == level + 1 {
            self.levels.push(Level::default());
        }
        let first = items.into_iter().next().map(|i| i.key).unwrap_or_default();
        self.add(level + 1, first, id.to_le_bytes().to_vec(), 0)?;
        Ok(id)
    }

    /// Writes what is pending, bottom up; returns the root page.
    fn build(&mut self) -> Result<u64> {
        let mut level = 0;
        loop {
            let l = &self.levels[level];
            let top = self.levels.len() == level + 1;
            if top && l.written == 0 {
                // Nothing above: this level's one page is the root (maybe empty).
                let items = std::mem::take(&mut self.levels[level].items);
                return self.w.write_page(level == 0, &items);
            }
            if !l.items.is_empty() {
                self.flush(level)?;
            }
            let up = &self.levels[level + 1];
            if up.written == 0 && up.items.len() == 1 && self.levels.len() == level + 2 {
                // One child and nothing written above it: the child is the root.
                return Ok(u64_at(&up.items[0].value, 0));
            }
            level += 1;
            if level >= DEPTH_MAX {
                return Err(invalid("tree too deep"));
            }
        }
    }

    /// Ends the bucket. Returns how many keys it holds.
    pub fn finish(mut self) -> Result<u64> {
        let root = self.build()?;
        let name = std::mem::take(&mut self.name);
        self.w.buckets.push((name, root));
        Ok(self.count)
    }
}

// ------------------------------------------------------------------------------------
// Reader

/// Where a bucket's tree starts: a page of the file, or a page held inline in its
/// parent's value.
#[derive(Debug, Clone)]
pub enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

/// Called with each key and value of a bucket; returns whether to go on.
pub type KeyVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;
/// Called with each leaf element (key, value, flags); returns whether to go on.
type ElementVisitor<'a> = dyn FnMut(&[u8], &[u8], u32) -> Result<bool> + 'a;

/// The meta page in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub root: u64,
    pub freelist: u64,
    /// Pages in use (the high-water mark).
    pub pages: u64,
    pub txid: u64,
}

/// Reads a bbolt file a page at a time.
#[derive(Debug)]
pub struct Reader {
    file: File,
    len: u64,
    meta: Meta,
}

fn parse_meta(page: &[u8]) -> Result<Meta> {
    let m = &page[HEADER..HEADER + 64];
    if u32_at(m, 0) != MAGIC {
        return Err(invalid("not a bbolt file (bad magic)"));
    }
    if u32_at(m, 4) != VERSION {
        return Err(invalid(format!(
            "bbolt version {} (2 expected)",
            u32_at(m, 4)
        )));
    }
    if u64_at(m, 56) != fnv1a64(&m[..META_SUMMED]) {
        return Err(invalid("meta page checksum mismatch"));
    }
    Ok(Meta {
        page_size: u32_at(m, 8),
        root: u64_at(m, 16),
        freelist: u64_at(m, 32),
        pages: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl Reader {
    /// Opens `path`, checking its meta pages. `len` limits the file to its first `len`
    /// bytes (a snapshot with a trailer after the database).
    pub fn open(path: &Path, len: Option<u64>) -> Result<Reader> {
        let file = File::open(path)?;
        let flen = file.metadata()?.len();
        let len = len.unwrap_or(flen).min(flen);
        if len < 2 * 1024 {
            return Err(invalid("file too small"));
        }
        let mut first = vec![0u8; 1024];
        file.read_exact_at(&mut first, 0)?;
        let a = parse_meta(&first);
        // The second meta page sits one page in; its size is in the first one (or, when
        // that one is damaged, the usual 4 KiB).
        let ps = match &a {
            Ok(m) => m.page_size as u64,
            Err(_) => PAGE_SIZE as u64,
        };
        let b = if len >= ps + 1024 {
            let mut second = vec![0u8; 1024];
            file.read_exact_at(&mut second, ps)?;
            parse_meta(&second)
        } else {
            Err(invalid("file too small"))
        };
        let meta = match (a, b) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e), Err(_)) => return Err(e),
        };
        if !(1024..=1 << 20).contains(&meta.page_size) || !meta.page_size.is_power_of_two() {
            return Err(invalid(format!("page size {}", meta.page_size)));
        }
        if meta.pages.saturating_mul(meta.page_size as u64) > len {
            return Err(invalid(format!(
                "the file holds {len} bytes, its meta page counts {} pages of {}",
                meta.pages, meta.page_size
            )));
        }
        Ok(Reader { file, len, meta })
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Bytes of the database (without any trailer).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        let ps = self.meta.page_size as usize;
        if id < 2 || id >= self.meta.pages {
            return Err(invalid(format!("page {id} out of range")));
        }
        let mut buf = vec![0u8; ps];
        self.file.read_exact_at(&mut buf, id * ps as u64)?;
        let overflow = u32_at(&buf, 12) as u64;
        if overflow > 0 {
            if id + overflow >= self.meta.pages {
                return Err(invalid(format!("page {id} overflows past the end")));
            }
            buf.resize(ps * (1 + overflow as usize), 0);
            self.file
                .read_exact_at(&mut buf[ps..], (id + 1) * ps as u64)?;
        }
        if u64_at(&buf, 0) != id {
            return Err(invalid(format!("page {id} holds page {}", u64_at(&buf, 0))));
        }
        Ok(buf)
    }

    /// The root bucket (which holds the top-level buckets).
    pub fn root(&self) -> BucketRoot {
        BucketRoot::Page(self.meta.root)
    }

    /// The buckets directly under `parent`, by name.
    pub fn buckets(&self, parent: &BucketRoot) -> Result<Vec<(Vec<u8>, BucketRoot)>> {
        let mut out = Vec::new();
        self.walk(parent, &mut |k, v, flags| {
            if flags & LEAF_BUCKET != 0 {
                out.push((k.to_vec(), bucket_root(v)?));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The top-level bucket called `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot>> {
        Ok(self
            .buckets(&self.root())?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r))
    }

    /// Calls `f(key, value)` for every key of the bucket (nested buckets skipped), in key
    /// order, until it returns false.
    pub fn for_each(&self, bucket: &BucketRoot, f: &mut KeyVisitor<'_>) -> Result<()> {
        self.walk(bucket, &mut |k, v, flags| {
            if flags & LEAF_BUCKET != 0 {
                return Ok(true);
            }
            f(k, v)
        })?;
        Ok(())
    }

    fn walk(&self, bucket: &BucketRoot, f: &mut ElementVisitor<'_>) -> Result<bool> {
        // A sound tree visits each page once: more visits than pages means pages shared
        // or in a cycle (a damaged file), which would otherwise cost unbounded time.
        let mut budget = self.meta.pages;
        match bucket {
            BucketRoot::Page(id) => self.walk_page(*id, 0, &mut budget, f),
            BucketRoot::Inline(page) => {
                let flags = if page.len() >= HEADER {
                    u16_at(page, 8)
                } else {
                    0
                };
                if flags != FLAG_LEAF {
                    return Err(invalid("inline bucket page is not a leaf"));
                }
                walk_leaf(page, f)
            }
        }
    }

    fn walk_page(
        &self,
        id: u64,
        depth: usize,
        budget: &mut u64,
        f: &mut ElementVisitor<'_>,
    ) -> Result<bool> {
        if depth > DEPTH_MAX {
            return Err(invalid("tree too deep (a page cycle?)"));
        }
        if *budget == 0 {
            return Err(invalid(format!("page {id} reached twice (a page cycle?)")));
        }
        *budget -= 1;
        let page = self.page(id)?;
        match u16_at(&page, 8) {
            FLAG_LEAF => walk_leaf(&page, f),
            FLAG_BRANCH => {
                let count = u16_at(&page, 10) as usize;
                if HEADER + count * ELEMENT > page.len() {
                    return Err(invalid(format!("branch page {id}: too many elements")));
                }
                for n in 0..count {
                    let child = u64_at(&page, HEADER + n * ELEMENT + 8);
                    if !self.walk_page(child, depth + 1, budget, f)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            other => Err(invalid(format!("page {id} has flags {other:#x}"))),
        }
    }
}

fn bucket_root(v: &[u8]) -> Result<BucketRoot> {
    if v.len() < BUCKET_HEADER {
        return Err(invalid("short bucket value"));
    }
    match u64_at(v, 0) {
        0 => Ok(BucketRoot::Inline(v[BUCKET_HEADER..].to_vec())),
        id => Ok(BucketRoot::Page(id)),
    }
}

fn walk_leaf(page: &[u8], f: &mut ElementVisitor<'_>) -> Result<bool> {
    let count = u16_at(page, 10) as usize;
    if HEADER + count * ELEMENT > page.len() {
        return Err(invalid("leaf page: too many elements"));
    }
    for n in 0..count {
        let e = HEADER + n * ELEMENT;
        let flags = u32_at(page, e);
        let pos = u32_at(page, e + 4) as usize;
        let ksize = u32_at(page, e + 8) as usize;
        let vsize = u32_at(page, e + 12) as usize;
        let start = e + pos;
        let end = start
            .checked_add(ksize)
            .and_then(|x| x.checked_add(vsize))
            .filter(|&x| x <= page.len())
            .ok_or_else(|| invalid("leaf element beyond its page"))?;
        let (k, v) = page[start..end].split_at(ksize);
        if !f(k, v, flags)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether the file at `path` starts like a bbolt database.
pub fn is_bolt(path: &Path) -> Result<bool> {
    let file = File::open(path)?;
    let mut m = [0u8; HEADER + 4];
    match file.read_exact_at(&mut m, 0) {
        Ok(()) => Ok(u32_at(&m, HEADER) == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn write(path: &Path, buckets: &[(&[u8], Pairs)]) -> u64 {
        let mut w = Writer::create(path).unwrap();
        for (name, kvs) in buckets {
            let mut b = w.bucket(name).unwrap();
            for (k, v) in kvs {
                b.put(k, v).unwrap();
            }
            assert_eq!(b.finish().unwrap(), kvs.len() as u64);
        }
        w.finish().unwrap()
    }

    fn read_all(r: &Reader, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let b = r.bucket(name).unwrap().expect("bucket");
        let mut out = Vec::new();
        r.for_each(&b, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn round_trips_small_large_and_empty_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; (i % 300) as usize]))
            .collect();
        let big = vec![(b"big".to_vec(), vec![7u8; 3 * PAGE_SIZE + 11])];
        let size = write(
            &path,
            &[
                (b"many", many.clone()),
                (b"empty", Vec::new()),
                (b"big", big.clone()),
            ],
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let r = Reader::open(&path, None).unwrap();
        let names: Vec<Vec<u8>> = r
            .buckets(&r.root())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            vec![b"big".to_vec(), b"empty".to_vec(), b"many".to_vec()]
        );
        assert_eq!(read_all(&r, b"many"), many);
        assert_eq!(read_all(&r, b"big"), big);
        assert!(read_all(&r, b"empty").is_empty());
        assert!(is_bolt(&path).unwrap());
    }

    #[test]
    fn refuses_out_of_order_keys_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = Writer::create(&path).unwrap();
        let mut b = w.bucket(b"x").unwrap();
        b.put(b"b", b"").unwrap();
        assert!(b.put(b"a", b"").is_err());
        assert!(b.put(b"b", b"").is_err());
        drop(b);
        drop(w);
        std::fs::remove_file(&path).unwrap();
        write(&path, &[(b"k", vec![(b"a".to_vec(), b"1".to_vec())])]);
        // Both meta pages damaged: refused, never a panic.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 20] ^= 1;
        bytes[PAGE_SIZE + HEADER + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = Reader::open(&path, None).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // Truncated: the meta page counts pages the file does not hold.
        write(
            &dir.path().join("db2"),
            &[(b"k", vec![(b"a".to_vec(), b"1".to_vec())])],
        );
        let bytes = std::fs::read(dir.path().join("db2")).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - PAGE_SIZE]).unwrap();
        assert!(Reader::open(&path, None).is_err());
        std::fs::write(&path, b"not a database at all, just some text").unwrap();
        assert!(!is_bolt(&path).unwrap());
        assert!(Reader::open(&path, None).is_err());
    }
}
