//! The read-only memory map of the data file. All `unsafe` of the B+tree lives here.
//!
//! The map reserves more address space than the file holds, so the file can grow without
//! remapping. When it outgrows the reservation a new, larger map is made; readers keep the
//! `Arc` of the map they started with, so no live slice is ever unmapped under them.

use std::fs::File;
use std::io;

use memmap2::{Mmap, MmapOptions};

#[derive(Debug)]
pub(crate) struct Mapping {
    map: Mmap,
}

impl Mapping {
    /// Maps `reserve` bytes of `file` read-only (shared), whatever the file's length now.
    pub(crate) fn new(file: &File, reserve: usize) -> io::Result<Mapping> {
        // SAFETY: the map is read-only and shared. etch never writes through it: all writes
        // go through pwrite on the same file, which the kernel keeps coherent with shared
        // maps. Bytes past the end of the file are never read: every access goes through
        // `slice`, whose callers only ask for pages below the high-water mark of a committed
        // version, and the file is always at least that long before the version is
        // published. The data file is locked (flock) against other etch processes; a third
        // party truncating it would fault, as with any mmap-based store.
        let map = unsafe { MmapOptions::new().len(reserve).map(file)? };
        Ok(Mapping { map })
    }

    pub(crate) fn reserved(&self) -> usize {
        self.map.len()
    }

    /// The bytes `[off, off + len)` of the file.
    ///
    /// Callers guarantee the range lies below the file's current length (see `new`);
    /// the reservation bound is asserted here.
    #[inline]
    pub(crate) fn slice(&self, off: usize, len: usize) -> &[u8] {
        &self.map[off..off + len]
    }
}
