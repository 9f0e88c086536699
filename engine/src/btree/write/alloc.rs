//! Page allocation and the free tree.
//!
//! Free tree keys are `ready_after (u64 BE) ‖ txn (u64 BE) ‖ chunk (u32 BE)`; values are
//! lists of page ids (u64 LE). An entry is reclaimable when `ready_after ≤ horizon`, where
//! the horizon is the oldest version any reader or the durable checkpoint may still use.
//! A transaction writes the pages it freed in entries `txn ‖ txn ‖ chunk`: first those a
//! checkpoint may have taken, then the fresh ones (written since the last checkpoint took
//! its version), which the writer remembers so that they can be reused sooner, once no
//! reader can see them.
//! Pages taken from reclaimable entries but not used by a commit are written back with
//! `ready_after = 0`. The free tree is edited in place with the same copy-on-write code;
//! the commit repeats that edit until the lists it writes describe the result of writing
//! them (a fixed point: each round can only add freed pages or use up pooled ones).

use std::ops::Range;

use super::WriteTxn;
use crate::btree::error::Result;
use crate::btree::page::{self, HEADER_LEN, PageId, Ref};
use crate::btree::view;

/// Free-tree entries loaded at most while looking for a run of adjacent free pages.
const RUN_SEARCH_LOADS_MAX: usize = 16;

/// Bytes of a free-tree key.
pub(crate) const FREE_KEY_LEN: usize = 20;

pub(super) fn free_key(ready_after: u64, txn: u64, chunk: u32) -> [u8; FREE_KEY_LEN] {
    let mut k = [0u8; FREE_KEY_LEN];
    k[..8].copy_from_slice(&ready_after.to_be_bytes());
    k[8..16].copy_from_slice(&txn.to_be_bytes());
    k[16..].copy_from_slice(&chunk.to_be_bytes());
    k
}

fn free_key_ready_after(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[..8].try_into().expect("free key"))
}

pub(crate) fn decode_ids(v: &[u8]) -> impl Iterator<Item = PageId> + '_ {
    v.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

impl WriteTxn<'_> {
    pub(super) fn alloc_run(&mut self, n: u64) -> Result<PageId> {
        // A run of several pages looks through a bounded number of free-tree entries for
        // adjacent ids, then takes fresh pages: the pool (rewritten at every commit) must
        // not grow to the whole free list.
        let mut loads = 0;
        loop {
            if n == 1 {
                if let Some(id) = self.pool.pop_first() {
                    return Ok(id);
                }
            } else if let Some(id) = self.take_pool_run(n) {
                return Ok(id);
            }
            if self.in_free_op
                || (n > 1 && loads >= RUN_SEARCH_LOADS_MAX)
                || !self.load_reclaimable()?
            {
                break;
            }
            loads += 1;
        }
        let id = self.meta.high_water;
        self.meta.high_water += n;
        Ok(id)
    }

    /// Removes `n` consecutive ids from the pool, if it holds such a run.
    pub(super) fn take_pool_run(&mut self, n: u64) -> Option<PageId> {
        let mut run_start = 0;
        let mut run_len = 0;
        let mut found = None;
        for &id in &self.pool {
            if run_len > 0 && id == run_start + run_len {
                run_len += 1;
            } else {
                run_start = id;
                run_len = 1;
            }
            if run_len == n {
                found = Some(run_start);
                break;
            }
        }
        let start = found?;
        for id in start..start + n {
            self.pool.remove(&id);
        }
        Some(start)
    }

    /// Moves a reclaimable free-tree entry into the pool: a fresh one no reader can see,
    /// else the oldest reclaimable one. False if there is none.
    pub(super) fn load_reclaimable(&mut self) -> Result<bool> {
        while let Some(key) = self.fresh_ready.pop() {
            self.fresh_used.push(key);
            let ids: Vec<PageId> = match view::get(self, self.meta.free_root, &key)? {
                Some(v) => decode_ids(v).collect(),
                // Already taken as the oldest entry.
                None => continue,
            };
            self.take_entry(&key, ids)?;
            return Ok(true);
        }
        let (key, ids) = {
            let mut c = crate::btree::cursor::Cursor::new(self, self.meta.free_root);
            if !c.first()? {
                return Ok(false);
            }
            let (k, v) = c.current()?.expect("valid cursor");
            if free_key_ready_after(k) > self.horizon {
                return Ok(false);
            }
            (k.to_vec(), decode_ids(v).collect::<Vec<_>>())
        };
        self.take_entry(&key, ids)?;
        Ok(true)
    }

    /// Moves an entry's pages into the pool and deletes the entry.
    fn take_entry(&mut self, key: &[u8], ids: Vec<PageId>) -> Result<()> {
        self.pool.extend(ids);
        self.in_free_op = true;
        let mut root = self.meta.free_root;
        let r = self.delete_in(&mut root, key, true);
        self.meta.free_root = root;
        self.in_free_op = false;
        let removed = r?;
        assert!(removed, "free-tree entry vanished while loading it");
        Ok(())
    }

    pub(super) fn alloc_page(&mut self) -> Result<PageId> {
        let id = self.alloc_run(1)?;
        let buf = self.db.page_buffer();
        let prev = self.dirty.insert(id, buf);
        assert!(prev.is_none(), "page {id} allocated twice");
        Ok(id)
    }

    /// Frees a page (or the first page of a run of `n`).
    pub(super) fn free_run(&mut self, id: PageId, n: u64) {
        if self.dirty.remove(&id).is_some() {
            // Never visible to anyone else: reusable now.
            for p in id..id + n {
                if self.fixpoint {
                    // Seen by no version at all.
                    self.freed_fresh.push((p, self.meta.txn));
                } else {
                    self.pool.insert(p);
                }
            }
        } else if let Some(&written) = self.writer.fresh.get(&id) {
            self.freed_fresh.extend((id..id + n).map(|p| (p, written)));
        } else {
            self.freed.extend(id..id + n);
        }
    }

    pub(super) fn free_ref(&mut self, r: Ref<'_>) {
        if let Ref::Overflow { page, len } = r {
            let n = self.base.lim.overflow_pages(len as usize);
            self.free_run(page, n);
        }
    }

    /// Stores bytes in a new overflow run.
    pub(super) fn store_overflow(&mut self, data: &[u8]) -> Result<(PageId, u32)> {
        let n = self.base.lim.overflow_pages(data.len());
        let id = self.alloc_run(n)?;
        let mut buf = vec![0u8; n as usize * self.page_size()].into_boxed_slice();
        page::init_overflow(&mut buf, data.len(), n);
        buf[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        let prev = self.dirty.insert(id, buf);
        assert!(prev.is_none(), "overflow run at {id} allocated twice");
        Ok((id, data.len() as u32))
    }

    /// Writes the free-tree entries of this transaction (what it freed, and the pool it
    /// took but did not use) and returns the fresh ones with the versions that can see
    /// their pages.
    pub(super) fn write_free_entries(&mut self) -> Result<Vec<([u8; FREE_KEY_LEN], Range<u64>)>> {
        self.in_free_op = true;
        self.fixpoint = true;
        let per = self.ids_per_entry();
        let txn = self.meta.txn;
        let mut written: Vec<[u8; FREE_KEY_LEN]> = Vec::new();
        let mut fresh_out = Vec::new();
        for _round in 0..1000 {
            let mut root = self.meta.free_root;
            for k in written.drain(..) {
                let r = self.delete_in(&mut root, &k, false);
                self.meta.free_root = root;
                assert!(r?, "own free-tree entry missing");
            }
            let (nfreed, nfresh, npool) =
                (self.freed.len(), self.freed_fresh.len(), self.pool.len());
            let mut freed = self.freed.clone();
            freed.sort_unstable();
            let mut fresh = self.freed_fresh.clone();
            fresh.sort_unstable();
            let pool: Vec<PageId> = self.pool.iter().copied().collect();
            fresh_out.clear();
            // Chunks of the freed pages, then of the fresh ones: (ready_after, ids,
            // the oldest version that can see one of them if they are all fresh).
            let mut entries: Vec<(u64, Vec<PageId>, Option<u64>)> = Vec::new();
            for c in freed.chunks(per) {
                entries.push((txn, c.to_vec(), None));
            }
            for c in fresh.chunks(per) {
                let from = c.iter().map(|&(_, w)| w).min();
                entries.push((txn, c.iter().map(|&(p, _)| p).collect(), from));
            }
            let freed_chunks = entries.len();
            for c in pool.chunks(per) {
                entries.push((0, c.to_vec(), None));
            }
            for (i, (ready_after, ids, from)) in entries.iter().enumerate() {
                let chunk = if i < freed_chunks {
                    i
                } else {
                    i - freed_chunks
                };
                let key = free_key(*ready_after, txn, chunk as u32);
                let val: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
                let r = self.put_in(&mut root, &key, &val);
                self.meta.free_root = root;
                r?;
                written.push(key);
                if let Some(from) = from {
                    fresh_out.push((key, *from..txn));
                }
            }
            if self.freed.len() == nfreed
                && self.freed_fresh.len() == nfresh
                && self.pool.len() == npool
            {
                return Ok(fresh_out);
            }
        }
        panic!("free-tree fixed point did not converge");
    }

    pub(super) fn ids_per_entry(&self) -> usize {
        (self.base.lim.cell_max - 1 - (2 + FREE_KEY_LEN) - 2) / 8
    }
}
