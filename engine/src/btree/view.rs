//! Reading pages of one committed version, and the search routines shared by readers and
//! the writer.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtOrd};
use std::sync::{Arc, OnceLock};

use super::error::{Error, Result};
use super::map::Mapping;
use super::meta::Meta;
use super::page::{self, HEADER_LEN, KIND_BRANCH, KIND_LEAF, KIND_OVERFLOW, Limits, PageId, Ref};

mod sealed {
    pub trait Sealed {}
}

/// Something pages can be read from: a read snapshot or a write transaction (which sees
/// its own dirty pages). Sealed; implemented only inside the engine.
pub trait PageSource: sealed::Sealed {
    #[doc(hidden)]
    fn node(&self, id: PageId) -> Result<&[u8]>;
    #[doc(hidden)]
    fn overflow(&self, id: PageId, len: u32) -> Result<&[u8]>;
}

impl sealed::Sealed for View {}
impl<'db> sealed::Sealed for super::write::WriteTxn<'db> {}

/// Which pages have had their checksum verified since the file was opened. A page is
/// verified once; its bit is cleared whenever the page id is written again.
pub(crate) struct Verified {
    segs: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

const SEG_BITS: u64 = 1 << 20;
const SEGS: usize = 4096;

impl Verified {
    pub(crate) fn new() -> Verified {
        Verified {
            segs: (0..SEGS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn word(&self, id: PageId, create: bool) -> Option<(&AtomicU64, u64)> {
        let seg = (id / SEG_BITS) as usize;
        if seg >= SEGS {
            return None;
        }
        let bit = id % SEG_BITS;
        let words = if create {
            self.segs[seg].get_or_init(|| (0..SEG_BITS / 64).map(|_| AtomicU64::new(0)).collect())
        } else {
            self.segs[seg].get()?
        };
        Some((&words[(bit / 64) as usize], 1 << (bit % 64)))
    }

    #[inline]
    pub(crate) fn get(&self, id: PageId) -> bool {
        self.word(id, false)
            .is_some_and(|(w, m)| w.load(AtOrd::Acquire) & m != 0)
    }

    pub(crate) fn set(&self, id: PageId) {
        if let Some((w, m)) = self.word(id, true) {
            w.fetch_or(m, AtOrd::Release);
        }
    }

    pub(crate) fn clear(&self, id: PageId) {
        if let Some((w, m)) = self.word(id, false) {
            w.fetch_and(!m, AtOrd::Release);
        }
    }
}

/// A committed version: its meta and the map it is read through.
pub struct View {
    pub(crate) map: Arc<Mapping>,
    pub(crate) meta: Meta,
    pub(crate) lim: Limits,
    pub(crate) verified: Arc<Verified>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("meta", &self.meta).finish()
    }
}

impl View {
    fn bytes(&self, id: PageId, pages: u64) -> Result<&[u8]> {
        if id < 2
            || id
                .checked_add(pages)
                .is_none_or(|end| end > self.meta.high_water)
        {
            return Err(Error::Corrupt {
                page: id,
                reason: format!(
                    "reference past the high-water mark {}",
                    self.meta.high_water
                ),
            });
        }
        let ps = self.lim.page_size;
        Ok(self.map.slice(id as usize * ps, pages as usize * ps))
    }
}

impl PageSource for View {
    #[inline]
    fn node(&self, id: PageId) -> Result<&[u8]> {
        let p = self.bytes(id, 1)?;
        if !self.verified.get(id) {
            let k = page::kind(p);
            if k != KIND_LEAF && k != KIND_BRANCH {
                return Err(Error::Corrupt {
                    page: id,
                    reason: format!("expected a node, found kind {k}"),
                });
            }
            page::validate(p, id, &self.lim)?;
            self.verified.set(id);
        }
        Ok(p)
    }

    fn overflow(&self, id: PageId, len: u32) -> Result<&[u8]> {
        let pages = self.lim.overflow_pages(len as usize);
        let run = self.bytes(id, pages)?;
        if !self.verified.get(id) {
            check_overflow_header(run, id, len, pages)?;
            page::validate(run, id, &self.lim)?;
            self.verified.set(id);
        }
        Ok(&run[HEADER_LEN..HEADER_LEN + len as usize])
    }
}

pub(crate) fn check_overflow_header(run: &[u8], id: PageId, len: u32, pages: u64) -> Result<()> {
    if page::kind(run) != KIND_OVERFLOW
        || page::overflow_len(run) != len as usize
        || page::overflow_run_pages(run) != pages
    {
        return Err(Error::Corrupt {
            page: id,
            reason: format!("expected an overflow run of {len} bytes"),
        });
    }
    Ok(())
}

/// The bytes behind a key or value reference.
#[inline]
pub(crate) fn resolve<'a, S: PageSource + ?Sized>(src: &'a S, r: Ref<'a>) -> Result<&'a [u8]> {
    match r {
        Ref::Inline(b) => Ok(b),
        Ref::Overflow { page, len } => src.overflow(page, len),
    }
}

/// First cell index whose key is ≥ `key`, and whether it is equal.
pub(crate) fn leaf_search<S: PageSource + ?Sized>(
    src: &S,
    p: &[u8],
    key: &[u8],
) -> Result<(usize, bool)> {
    let (mut lo, mut hi) = (0usize, page::count(p));
    while lo < hi {
        let mid = (lo + hi) / 2;
        match resolve(src, page::leaf_key(p, mid))?.cmp(key) {
            Ordering::Less => lo = mid + 1,
            Ordering::Equal => return Ok((mid, true)),
            Ordering::Greater => hi = mid,
        }
    }
    Ok((lo, false))
}

/// Index of the child whose subtree may hold `key`: the last cell whose separator is ≤ key
/// (cell 0 stands for everything below the first separator).
pub(crate) fn branch_search<S: PageSource + ?Sized>(
    src: &S,
    p: &[u8],
    key: &[u8],
) -> Result<usize> {
    let (mut lo, mut hi) = (1usize, page::count(p));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if resolve(src, page::branch_entry(p, mid).1)? <= key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo - 1)
}

/// Point lookup from `root`.
pub(crate) fn get<'a, S: PageSource + ?Sized>(
    src: &'a S,
    root: PageId,
    key: &[u8],
) -> Result<Option<&'a [u8]>> {
    if root == 0 {
        return Ok(None);
    }
    let mut p = src.node(root)?;
    while page::kind(p) == KIND_BRANCH {
        let i = branch_search(src, p, key)?;
        p = src.node(page::branch_child(p, i))?;
    }
    let (i, found) = leaf_search(src, p, key)?;
    if !found {
        return Ok(None);
    }
    Ok(Some(resolve(src, page::leaf_entry(p, i).1)?))
}
