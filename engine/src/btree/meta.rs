//! The two meta pages (ids 0 and 1): which version is durable and where its trees are.
//!
//! A checkpoint writes the slot that does not hold the current durable meta, so a torn
//! meta write always leaves the previous checkpoint intact.

use super::error::{Error, Result};
use super::page::{KIND_META, PageId, rd_u16, rd_u32, rd_u64, wr_u16, wr_u32, wr_u64};

pub(crate) const MAGIC: &[u8; 8] = b"ETCHBT01";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes of a meta page covered by its checksum; the rest of the page is zero.
pub(crate) const META_LEN: usize = 512;
/// Largest caller marker stored with each version.
pub const MARKER_MAX: usize = 256;
const OFF_MARKER: usize = 72;

/// One committed version of the database.
#[derive(Clone, Copy)]
pub(crate) struct Meta {
    pub page_size: u32,
    pub txn: u64,
    /// Root of the catalog tree (tree name → root and length); 0 when empty.
    pub catalog_root: PageId,
    /// Root of the free tree; 0 when empty.
    pub free_root: PageId,
    /// Pages in use or free below this id; the file is at least this many pages long.
    pub high_water: u64,
    pub marker_len: u16,
    pub marker: [u8; MARKER_MAX],
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("page_size", &self.page_size)
            .field("txn", &self.txn)
            .field("catalog_root", &self.catalog_root)
            .field("free_root", &self.free_root)
            .field("high_water", &self.high_water)
            .field("marker", &self.marker())
            .finish()
    }
}

impl Meta {
    pub(crate) fn empty(page_size: u32) -> Meta {
        Meta {
            page_size,
            txn: 0,
            catalog_root: 0,
            free_root: 0,
            high_water: 2,
            marker_len: 0,
            marker: [0; MARKER_MAX],
        }
    }

    pub(crate) fn marker(&self) -> &[u8] {
        &self.marker[..self.marker_len as usize]
    }

    pub(crate) fn set_marker(&mut self, m: &[u8]) {
        assert!(m.len() <= MARKER_MAX, "marker checked by caller");
        self.marker = [0; MARKER_MAX];
        self.marker[..m.len()].copy_from_slice(m);
        self.marker_len = m.len() as u16;
    }

    pub(crate) fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[4] = KIND_META;
        b[8..16].copy_from_slice(MAGIC);
        wr_u32(&mut b, 16, FORMAT_VERSION);
        wr_u32(&mut b, 20, self.page_size);
        wr_u64(&mut b, 24, self.txn);
        wr_u64(&mut b, 32, self.catalog_root);
        wr_u64(&mut b, 40, self.free_root);
        wr_u64(&mut b, 48, self.high_water);
        wr_u16(&mut b, 56, self.marker_len);
        b[OFF_MARKER..OFF_MARKER + MARKER_MAX].copy_from_slice(&self.marker);
        let crc = crc32fast::hash(&b[4..]);
        wr_u32(&mut b, 0, crc);
        b
    }

    /// Decodes a meta page; `slot` names it in errors.
    pub(crate) fn decode(b: &[u8], slot: u64) -> Result<Meta> {
        let bad = |reason: &str| {
            Err(Error::Corrupt {
                page: slot,
                reason: reason.to_string(),
            })
        };
        if b.len() < META_LEN {
            return bad("meta page truncated");
        }
        if crc32fast::hash(&b[4..META_LEN]) != rd_u32(b, 0) {
            return bad("meta checksum mismatch");
        }
        if b[4] != KIND_META || &b[8..16] != MAGIC {
            return bad("not an etch meta page");
        }
        let version = rd_u32(b, 16);
        if version != FORMAT_VERSION {
            return bad(&format!("unsupported format version {version}"));
        }
        let page_size = rd_u32(b, 20);
        if !super::valid_page_size(page_size as usize) {
            return bad(&format!("invalid page size {page_size}"));
        }
        let marker_len = rd_u16(b, 56);
        if marker_len as usize > MARKER_MAX {
            return bad("marker too long");
        }
        let mut marker = [0u8; MARKER_MAX];
        marker.copy_from_slice(&b[OFF_MARKER..OFF_MARKER + MARKER_MAX]);
        let m = Meta {
            page_size,
            txn: rd_u64(b, 24),
            catalog_root: rd_u64(b, 32),
            free_root: rd_u64(b, 40),
            high_water: rd_u64(b, 48),
            marker_len,
            marker,
        };
        let roots_ok = |r: u64| r == 0 || (r >= 2 && r < m.high_water);
        if m.high_water < 2 || !roots_ok(m.catalog_root) || !roots_ok(m.free_root) {
            return bad("meta points outside the file");
        }
        Ok(m)
    }
}
