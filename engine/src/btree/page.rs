//! Byte layout of tree pages: the common header, slotted leaf and branch nodes, overflow
//! runs. Everything is explicit little-endian; see `docs/btree-format.md`.
//!
//! Functions here work on plain byte slices: a page read from the map, or a dirty page
//! buffer owned by a write transaction. Structural validation happens once per page in
//! [`validate`]; after that the accessors index freely (a bug panics, it never reads out of
//! the slice).

use super::error::{Error, Result};

pub(crate) type PageId = u64;

/// Bytes of the common page header.
pub(crate) const HEADER_LEN: usize = 32;

pub(crate) const KIND_META: u8 = 1;
pub(crate) const KIND_BRANCH: u8 = 2;
pub(crate) const KIND_LEAF: u8 = 3;
pub(crate) const KIND_OVERFLOW: u8 = 4;

/// Cell flag: the key lives in an overflow run.
pub(crate) const FLAG_KEY_OVERFLOW: u8 = 1;
/// Cell flag: the value lives in an overflow run.
pub(crate) const FLAG_VALUE_OVERFLOW: u8 = 2;

/// Size of an overflow reference inside a cell: page id u64 + length u32.
const OVERFLOW_REF_LEN: usize = 12;

// Header field offsets.
const OFF_CRC: usize = 0;
const OFF_KIND: usize = 4;
const OFF_COUNT: usize = 6;
const OFF_ID: usize = 8;
const OFF_TXN: usize = 16;
/// Node pages: start of the cell area. Overflow runs: payload length.
const OFF_AUX0: usize = 24;
/// Node pages: bytes of dead cells (reclaimed by compaction). Overflow runs: page count.
const OFF_AUX1: usize = 28;

pub(crate) use crate::util::{rd_u16, rd_u32, rd_u64};

#[inline]
pub(crate) fn wr_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn wr_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn wr_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Limits derived from the page size. Every cell (with its slot) is at most a third of a
/// page's usable space, so the byte-balanced split of a full page plus one new cell always
/// yields two valid pages. (Half a page would also split safely and keep values up to
/// ~2 KB inline, but measured worse under churn: every copy-on-write of a leaf rewrites
/// its inline values, see benches/README.md.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub page_size: usize,
    /// Longest key stored inline; longer keys go to an overflow run.
    pub key_inline_max: usize,
    /// Largest leaf cell (with its slot) stored inline.
    pub cell_max: usize,
}

impl Limits {
    pub(crate) fn new(page_size: usize) -> Limits {
        let usable = page_size - HEADER_LEN;
        let cell_max = usable / 3 - 2;
        Limits {
            page_size,
            key_inline_max: cell_max - 24,
            cell_max,
        }
    }

    /// Whether a key of this length is stored inline.
    pub(crate) fn key_inline(&self, key_len: usize) -> bool {
        key_len <= self.key_inline_max
    }

    /// Whether a value is stored inline next to a key of the given stored size.
    pub(crate) fn value_inline(&self, key_part_len: usize, value_len: usize) -> bool {
        1 + key_part_len + 2 + value_len <= self.cell_max
    }

    /// Pages needed by an overflow run holding `len` payload bytes.
    pub(crate) fn overflow_pages(&self, len: usize) -> u64 {
        (HEADER_LEN + len).div_ceil(self.page_size) as u64
    }
}

/// Where a key or value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ref<'a> {
    Inline(&'a [u8]),
    Overflow { page: PageId, len: u32 },
}

// ---------------------------------------------------------------------------------------
// Header

pub(crate) fn kind(p: &[u8]) -> u8 {
    p[OFF_KIND]
}
pub(crate) fn count(p: &[u8]) -> usize {
    rd_u16(p, OFF_COUNT) as usize
}
pub(crate) fn page_id(p: &[u8]) -> PageId {
    rd_u64(p, OFF_ID)
}
fn cells_start(p: &[u8]) -> usize {
    rd_u32(p, OFF_AUX0) as usize
}
fn garbage(p: &[u8]) -> usize {
    rd_u32(p, OFF_AUX1) as usize
}
pub(crate) fn overflow_len(p: &[u8]) -> usize {
    rd_u32(p, OFF_AUX0) as usize
}
pub(crate) fn overflow_run_pages(p: &[u8]) -> u64 {
    u64::from(rd_u32(p, OFF_AUX1))
}

/// Bytes covered by the page checksum: the whole page for nodes, header + payload for
/// overflow runs.
fn checked_len(p: &[u8], page_size: usize) -> usize {
    if kind(p) == KIND_OVERFLOW {
        (HEADER_LEN + overflow_len(p)).min(p.len())
    } else {
        page_size
    }
}

/// Fills in id, txn and checksum just before the page is written.
pub(crate) fn seal(p: &mut [u8], id: PageId, txn: u64, page_size: usize) {
    wr_u64(p, OFF_ID, id);
    wr_u64(p, OFF_TXN, txn);
    let n = checked_len(p, page_size);
    let crc = crc32fast::hash(&p[4..n]);
    wr_u32(p, OFF_CRC, crc);
}

/// Checks checksum, id, kind and (for nodes) the slot and cell structure.
/// `p` holds the page (for an overflow run: the first page, or the whole run once its
/// length is known — the caller passes the whole run).
pub(crate) fn validate(p: &[u8], id: PageId, lim: &Limits) -> Result<()> {
    let corrupt = |reason: String| Err(Error::Corrupt { page: id, reason });
    let k = kind(p);
    if k != KIND_BRANCH && k != KIND_LEAF && k != KIND_OVERFLOW {
        return corrupt(format!("unknown page kind {k}"));
    }
    if k == KIND_OVERFLOW && HEADER_LEN + overflow_len(p) > p.len() {
        return corrupt("overflow length exceeds its run".into());
    }
    let n = checked_len(p, lim.page_size);
    let stored = rd_u32(p, OFF_CRC);
    let actual = crc32fast::hash(&p[4..n]);
    if stored != actual {
        return corrupt(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    if page_id(p) != id {
        return corrupt(format!("page header names page {}", page_id(p)));
    }
    if k == KIND_OVERFLOW {
        return Ok(());
    }
    let c = count(p);
    let cs = cells_start(p);
    if HEADER_LEN + 2 * c > cs || cs > lim.page_size || garbage(p) > lim.page_size {
        return corrupt("slot array overlaps cell area".into());
    }
    for i in 0..c {
        let off = rd_u16(p, HEADER_LEN + 2 * i) as usize;
        if off < cs || off >= lim.page_size {
            return corrupt(format!("slot {i} points outside the cell area"));
        }
        match cell_len_checked(p, off, k) {
            Some(len) if off + len <= lim.page_size => {}
            _ => return corrupt(format!("cell {i} runs past the page end")),
        }
    }
    if k == KIND_BRANCH && c == 0 {
        return corrupt("branch page without children".into());
    }
    Ok(())
}

fn part_len_checked(p: &[u8], off: usize, overflow: bool) -> Option<usize> {
    if overflow {
        Some(OVERFLOW_REF_LEN)
    } else {
        let b = p.get(off..off + 2)?;
        Some(2 + u16::from_le_bytes([b[0], b[1]]) as usize)
    }
}

fn cell_len_checked(p: &[u8], off: usize, k: u8) -> Option<usize> {
    if k == KIND_LEAF {
        let flags = *p.get(off)?;
        let kl = part_len_checked(p, off + 1, flags & FLAG_KEY_OVERFLOW != 0)?;
        let vl = part_len_checked(p, off + 1 + kl, flags & FLAG_VALUE_OVERFLOW != 0)?;
        Some(1 + kl + vl)
    } else {
        let flags = *p.get(off + 8)?;
        let kl = part_len_checked(p, off + 9, flags & FLAG_KEY_OVERFLOW != 0)?;
        Some(9 + kl)
    }
}

// ---------------------------------------------------------------------------------------
// Cells

#[inline]
fn slot(p: &[u8], i: usize) -> usize {
    rd_u16(p, HEADER_LEN + 2 * i) as usize
}

#[inline]
fn read_part(p: &[u8], off: usize, overflow: bool) -> (Ref<'_>, usize) {
    if overflow {
        (
            Ref::Overflow {
                page: rd_u64(p, off),
                len: rd_u32(p, off + 8),
            },
            OVERFLOW_REF_LEN,
        )
    } else {
        let len = rd_u16(p, off) as usize;
        (Ref::Inline(&p[off + 2..off + 2 + len]), 2 + len)
    }
}

/// Key and value of leaf cell `i`.
#[inline]
pub(crate) fn leaf_entry(p: &[u8], i: usize) -> (Ref<'_>, Ref<'_>) {
    let off = slot(p, i);
    let flags = p[off];
    let (k, kl) = read_part(p, off + 1, flags & FLAG_KEY_OVERFLOW != 0);
    let (v, _) = read_part(p, off + 1 + kl, flags & FLAG_VALUE_OVERFLOW != 0);
    (k, v)
}

/// Key of leaf cell `i`.
#[inline]
pub(crate) fn leaf_key(p: &[u8], i: usize) -> Ref<'_> {
    let off = slot(p, i);
    read_part(p, off + 1, p[off] & FLAG_KEY_OVERFLOW != 0).0
}

/// Child and separator key of branch cell `i` (the key of cell 0 is empty and unused).
#[inline]
pub(crate) fn branch_entry(p: &[u8], i: usize) -> (PageId, Ref<'_>) {
    let off = slot(p, i);
    let child = rd_u64(p, off);
    let (k, _) = read_part(p, off + 9, p[off + 8] & FLAG_KEY_OVERFLOW != 0);
    (child, k)
}

#[inline]
pub(crate) fn branch_child(p: &[u8], i: usize) -> PageId {
    rd_u64(p, slot(p, i))
}

pub(crate) fn set_branch_child(p: &mut [u8], i: usize, child: PageId) {
    let off = slot(p, i);
    wr_u64(p, off, child);
}

/// The raw bytes of cell `i`.
pub(crate) fn cell(p: &[u8], i: usize) -> &[u8] {
    let off = slot(p, i);
    let len = cell_len_checked(p, off, kind(p)).expect("validated cell");
    &p[off..off + len]
}

fn encode_part(out: &mut Vec<u8>, r: Ref<'_>) {
    match r {
        Ref::Inline(b) => {
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
        Ref::Overflow { page, len } => {
            out.extend_from_slice(&page.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
    }
}

fn flags_of(key: Ref<'_>, value: Option<Ref<'_>>) -> u8 {
    let mut f = 0;
    if matches!(key, Ref::Overflow { .. }) {
        f |= FLAG_KEY_OVERFLOW;
    }
    if matches!(value, Some(Ref::Overflow { .. })) {
        f |= FLAG_VALUE_OVERFLOW;
    }
    f
}

pub(crate) fn encode_leaf_cell(key: Ref<'_>, value: Ref<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(flags_of(key, Some(value)));
    encode_part(&mut out, key);
    encode_part(&mut out, value);
    out
}

pub(crate) fn encode_branch_cell(child: PageId, key: Ref<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&child.to_le_bytes());
    out.push(flags_of(key, None));
    encode_part(&mut out, key);
    out
}

/// Stored size of a key or value part.
pub(crate) fn part_len(r: Ref<'_>) -> usize {
    match r {
        Ref::Inline(b) => 2 + b.len(),
        Ref::Overflow { .. } => OVERFLOW_REF_LEN,
    }
}

// ---------------------------------------------------------------------------------------
// Node mutation on a dirty page buffer

pub(crate) fn init_node(p: &mut [u8], k: u8) {
    p[..HEADER_LEN].fill(0);
    p[OFF_KIND] = k;
    wr_u16(p, OFF_COUNT, 0);
    wr_u32(p, OFF_AUX0, p.len() as u32);
    wr_u32(p, OFF_AUX1, 0);
}

pub(crate) fn init_overflow(p: &mut [u8], len: usize, pages: u64) {
    p[..HEADER_LEN].fill(0);
    p[OFF_KIND] = KIND_OVERFLOW;
    wr_u32(p, OFF_AUX0, len as u32);
    wr_u32(p, OFF_AUX1, pages as u32);
}

/// Bytes in use: header, slots and live cells.
pub(crate) fn used_bytes(p: &[u8]) -> usize {
    HEADER_LEN + 2 * count(p) + (p.len() - cells_start(p) - garbage(p))
}

fn compact(p: &mut [u8]) {
    let n = count(p);
    let cells: Vec<Vec<u8>> = (0..n).map(|i| cell(p, i).to_vec()).collect();
    let k = kind(p);
    init_node(p, k);
    for (i, c) in cells.iter().enumerate() {
        let ok = insert_cell(p, i, c);
        debug_assert!(ok, "compaction cannot run out of space");
    }
}

/// Inserts `c` as cell `i`. Returns false (page unchanged) when it does not fit.
pub(crate) fn insert_cell(p: &mut [u8], i: usize, c: &[u8]) -> bool {
    let n = count(p);
    assert!(i <= n, "insert position {i} past count {n}");
    let need = c.len() + 2;
    let free = cells_start(p) - (HEADER_LEN + 2 * n);
    if free < need {
        if free + garbage(p) < need {
            return false;
        }
        compact(p);
    }
    let start = cells_start(p) - c.len();
    p[start..start + c.len()].copy_from_slice(c);
    wr_u32(p, OFF_AUX0, start as u32);
    let slots = HEADER_LEN + 2 * i;
    p.copy_within(slots..HEADER_LEN + 2 * n, slots + 2);
    wr_u16(p, slots, start as u16);
    wr_u16(p, OFF_COUNT, (n + 1) as u16);
    true
}

/// Removes cell `i`; its bytes become garbage until the next compaction.
pub(crate) fn remove_cell(p: &mut [u8], i: usize) {
    let n = count(p);
    assert!(i < n, "remove position {i} past count {n}");
    let len = cell(p, i).len();
    let g = garbage(p) + len;
    wr_u32(p, OFF_AUX1, g as u32);
    let slots = HEADER_LEN + 2 * i;
    p.copy_within(slots + 2..HEADER_LEN + 2 * n, slots);
    wr_u16(p, OFF_COUNT, (n - 1) as u16);
}

/// Rebuilds a node page from a list of cells. Panics if they do not fit (callers size
/// the lists).
pub(crate) fn build_node(p: &mut [u8], k: u8, cells: &[Vec<u8>]) {
    init_node(p, k);
    for (i, c) in cells.iter().enumerate() {
        assert!(
            insert_cell(p, i, c),
            "cells passed to build_node must fit one page"
        );
    }
}

/// Space a list of cells needs in a node page.
pub(crate) fn cells_size(cells: &[Vec<u8>]) -> usize {
    HEADER_LEN + cells.iter().map(|c| c.len() + 2).sum::<usize>()
}

/// Rewrites the key of branch cell 0 as empty, keeping its child. Used when a branch's
/// first cell becomes the leftmost child after a split.
pub(crate) fn clear_first_branch_key(cells: &mut [Vec<u8>]) {
    let child = rd_u64(&cells[0], 0);
    cells[0] = encode_branch_cell(child, Ref::Inline(&[]));
}

/// Key ref of an encoded branch cell.
pub(crate) fn branch_cell_key(c: &[u8]) -> Ref<'_> {
    read_part(c, 9, c[8] & FLAG_KEY_OVERFLOW != 0).0
}

/// Child of an encoded branch cell.
pub(crate) fn branch_cell_child(c: &[u8]) -> PageId {
    rd_u64(c, 0)
}

/// Key and value refs of an encoded leaf cell.
pub(crate) fn leaf_cell_refs(c: &[u8]) -> (Ref<'_>, Ref<'_>) {
    let flags = c[0];
    let (k, kl) = read_part(c, 1, flags & FLAG_KEY_OVERFLOW != 0);
    let (v, _) = read_part(c, 1 + kl, flags & FLAG_VALUE_OVERFLOW != 0);
    (k, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_compact_roundtrip() {
        let lim = Limits::new(512);
        let mut p = vec![0u8; 512];
        init_node(&mut p, KIND_LEAF);
        let mut n = 0;
        loop {
            let key = format!("k{n:04}");
            let c = encode_leaf_cell(Ref::Inline(key.as_bytes()), Ref::Inline(b"value"));
            if !insert_cell(&mut p, n, &c) {
                break;
            }
            n += 1;
        }
        assert!(n > 10);
        for i in (0..n).step_by(2).rev() {
            remove_cell(&mut p, i);
        }
        // Garbage is reclaimed by compaction when the next insert needs it.
        let big = encode_leaf_cell(Ref::Inline(b"zz"), Ref::Inline(&[7u8; 100]));
        let n_now = count(&p);
        assert!(insert_cell(&mut p, n_now, &big));
        seal(&mut p, 9, 1, 512);
        validate(&p, 9, &lim).expect("valid page");
        assert_eq!(leaf_key(&p, 0), Ref::Inline(b"k0001"));
        let (k, v) = leaf_entry(&p, count(&p) - 1);
        assert_eq!(k, Ref::Inline(b"zz"));
        assert_eq!(v, Ref::Inline(&[7u8; 100][..]));
        p[100] ^= 1;
        assert!(matches!(
            validate(&p, 9, &lim),
            Err(Error::Corrupt { page: 9, .. })
        ));
    }
}
