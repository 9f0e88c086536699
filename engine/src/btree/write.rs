//! The write transaction: copy-on-write edits of the trees, splits and merges, commit.
//!
//! Every page a transaction changes is first copied to a fresh page id (a "dirty" page,
//! held in memory until commit). Pages the copy replaces are *freed by this transaction*:
//! older versions may still read them, so they are recorded in the free tree under this
//! transaction's id and reused only once no reader and no durable checkpoint can see them
//! (see `alloc.rs`) — or, for pages written since the last checkpoint took its version,
//! once no reader can see them (`WriterState` in `mod.rs`).

mod alloc;

pub(crate) use alloc::{FREE_KEY_LEN, decode_ids};

use std::collections::{BTreeSet, HashMap};
use std::sync::MutexGuard;

use super::cursor::{Range, Tree};
use super::error::{Error, Result};
use super::meta::{MARKER_MAX, Meta};
use super::page::{self, HEADER_LEN, KIND_BRANCH, KIND_LEAF, PageId, Ref};
use super::view::{self, PageSource, View};
use super::{Db, FRESH_ENTRIES_MAX, WriterState};

/// Hashes page ids (already well spread integers) with one multiply.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by page id.
pub(crate) type PageMap<V> = HashMap<PageId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Dirty pages of a write transaction by id.
pub(crate) type DirtyPages = PageMap<Box<[u8]>>;

/// Handle to a tree opened in a write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeId(usize);

#[derive(Debug)]
struct TreeState {
    name: Vec<u8>,
    root: PageId,
    len: u64,
    changed: bool,
}

/// The single write transaction. Dropping it without `commit` discards every change.
pub struct WriteTxn<'db> {
    db: &'db Db,
    writer: MutexGuard<'db, WriterState>,
    base: View,
    meta: Meta,
    dirty: DirtyPages,
    /// Pages of the base version freed, which a checkpoint may have taken.
    freed: Vec<PageId>,
    /// Fresh pages freed (written since the last checkpoint took its version), with the
    /// txn that wrote each.
    freed_fresh: Vec<(PageId, u64)>,
    /// Fresh free-tree entries no reader can see, to take before any other.
    fresh_ready: Vec<[u8; FREE_KEY_LEN]>,
    /// Fresh entries taken (or found gone): forgotten by the writer at commit.
    fresh_used: Vec<[u8; FREE_KEY_LEN]>,
    pool: BTreeSet<PageId>,
    horizon: u64,
    trees: Vec<TreeState>,
    /// Set while the free tree itself is edited: no loading of reclaimable entries.
    in_free_op: bool,
    /// Set during the commit's fixed point: fresh pages freed go to `freed`, not the pool.
    fixpoint: bool,
}

impl std::fmt::Debug for WriteTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("txn", &self.meta.txn)
            .field("dirty", &self.dirty.len())
            .finish()
    }
}

impl PageSource for WriteTxn<'_> {
    #[inline]
    fn node(&self, id: PageId) -> Result<&[u8]> {
        match self.dirty.get(&id) {
            Some(b) => Ok(b),
            None => self.base.node(id),
        }
    }

    fn overflow(&self, id: PageId, len: u32) -> Result<&[u8]> {
        match self.dirty.get(&id) {
            Some(b) => Ok(&b[HEADER_LEN..HEADER_LEN + len as usize]),
            None => self.base.overflow(id, len),
        }
    }
}

/// Catalog value: root u64 LE, len u64 LE.
pub(crate) fn decode_tree_desc(v: &[u8]) -> Option<(PageId, u64)> {
    if v.len() != 16 {
        return None;
    }
    Some((page::rd_u64(v, 0), page::rd_u64(v, 8)))
}

/// A copied path: branch pages with the child index taken, the leaf, and whether every
/// step took the last child.
type Descent = (Vec<(PageId, usize)>, PageId, bool);

/// Longest key or value accepted.
pub const ENTRY_MAX: usize = 64 << 20;

impl<'db> WriteTxn<'db> {
    pub(crate) fn new(
        db: &'db Db,
        writer: MutexGuard<'db, WriterState>,
        base: View,
        horizon: u64,
        fresh_ready: Vec<[u8; FREE_KEY_LEN]>,
    ) -> Self {
        let mut meta = base.meta;
        meta.txn += 1;
        WriteTxn {
            db,
            writer,
            base,
            meta,
            dirty: DirtyPages::default(),
            freed: Vec::new(),
            freed_fresh: Vec::new(),
            fresh_ready,
            fresh_used: Vec::new(),
            pool: BTreeSet::new(),
            horizon,
            trees: Vec::new(),
            in_free_op: false,
            fixpoint: false,
        }
    }

    /// Id this transaction's version will have.
    pub fn txn_id(&self) -> u64 {
        self.meta.txn
    }

    /// Pages this transaction has dirtied so far: what its commit will write.
    pub fn dirty_pages(&self) -> usize {
        self.dirty.len()
    }

    /// Opens (creating if missing) a named tree.
    pub fn open_tree(&mut self, name: &[u8]) -> Result<TreeId> {
        if let Some(i) = self.trees.iter().position(|t| t.name == name) {
            return Ok(TreeId(i));
        }
        if name.len() > 255 {
            return Err(Error::TooLarge {
                what: "tree name",
                len: name.len(),
                max: 255,
            });
        }
        let (root, len) = match view::get(self, self.meta.catalog_root, name)? {
            Some(v) => decode_tree_desc(v).ok_or_else(|| {
                Error::CorruptFile(format!(
                    "catalog entry for {:?} is malformed",
                    String::from_utf8_lossy(name)
                ))
            })?,
            None => (0, 0),
        };
        self.trees.push(TreeState {
            name: name.to_vec(),
            root,
            len,
            changed: false,
        });
        Ok(TreeId(self.trees.len() - 1))
    }

    /// Read access to a tree as this transaction sees it.
    pub fn tree(&self, t: TreeId) -> Tree<'_, Self> {
        let s = &self.trees[t.0];
        Tree {
            src: self,
            root: s.root,
            len: s.len,
        }
    }

    pub fn get(&self, t: TreeId, key: &[u8]) -> Result<Option<&[u8]>> {
        view::get(self, self.trees[t.0].root, key)
    }

    pub fn range(&self, t: TreeId, start: &[u8], end: Option<&[u8]>) -> Range<'_, Self> {
        Range::new(self, self.trees[t.0].root, start, end, false)
    }

    /// Inserts or replaces. Returns whether a previous value was replaced.
    pub fn put(&mut self, t: TreeId, key: &[u8], value: &[u8]) -> Result<bool> {
        if key.len() > ENTRY_MAX {
            return Err(Error::TooLarge {
                what: "key",
                len: key.len(),
                max: ENTRY_MAX,
            });
        }
        if value.len() > ENTRY_MAX {
            return Err(Error::TooLarge {
                what: "value",
                len: value.len(),
                max: ENTRY_MAX,
            });
        }
        let mut root = self.trees[t.0].root;
        let replaced = self.put_in(&mut root, key, value);
        let s = &mut self.trees[t.0];
        s.root = root;
        s.changed = true;
        let replaced = replaced?;
        if !replaced {
            s.len += 1;
        }
        Ok(replaced)
    }

    /// Removes a key. Returns whether it was present.
    pub fn delete(&mut self, t: TreeId, key: &[u8]) -> Result<bool> {
        let mut root = self.trees[t.0].root;
        let r = self.delete_in(&mut root, key, true);
        let s = &mut self.trees[t.0];
        s.root = root;
        let removed = r?;
        if removed {
            s.changed = true;
            s.len -= 1;
        }
        Ok(removed)
    }

    /// Stores `marker` (at most 256 bytes, e.g. an applied index) with this version; it is
    /// persisted atomically with the data by the checkpoint that covers this commit.
    pub fn set_marker(&mut self, marker: &[u8]) -> Result<()> {
        if marker.len() > MARKER_MAX {
            return Err(Error::TooLarge {
                what: "marker",
                len: marker.len(),
                max: MARKER_MAX,
            });
        }
        self.meta.set_marker(marker);
        Ok(())
    }

    pub fn marker(&self) -> &[u8] {
        self.meta.marker()
    }

    // -----------------------------------------------------------------------------------
    // Allocation

    fn page_size(&self) -> usize {
        self.base.lim.page_size
    }

    /// Returns a dirty copy of page `id` (itself if already dirty).
    fn touch(&mut self, id: PageId) -> Result<PageId> {
        if self.dirty.contains_key(&id) {
            return Ok(id);
        }
        let mut copy = self.db.page_buffer();
        copy.copy_from_slice(self.base.node(id)?);
        let new = self.alloc_run(1)?;
        self.dirty.insert(new, copy);
        self.free_run(id, 1);
        Ok(new)
    }

    fn page_mut(&mut self, id: PageId) -> &mut [u8] {
        self.dirty.get_mut(&id).expect("page is dirty")
    }

    fn page_ref(&self, id: PageId) -> &[u8] {
        self.dirty.get(&id).expect("page is dirty")
    }

    // -----------------------------------------------------------------------------------
    // Insert

    /// Copies the path to `key`'s leaf. Returns the branch path (page, child index), the
    /// leaf, and whether the path always took the last child.
    fn descend_mut(&mut self, root: &mut PageId, key: &[u8]) -> Result<Descent> {
        let mut id = self.touch(*root)?;
        *root = id;
        let mut path = Vec::new();
        let mut rightmost = true;
        loop {
            let p = self.page_ref(id);
            if page::kind(p) != KIND_BRANCH {
                return Ok((path, id, rightmost));
            }
            let i = view::branch_search(self, p, key)?;
            rightmost &= i + 1 == page::count(p);
            let child = page::branch_child(p, i);
            let new = self.touch(child)?;
            if new != child {
                page::set_branch_child(self.page_mut(id), i, new);
            }
            path.push((id, i));
            id = new;
        }
    }

    fn put_in(&mut self, root: &mut PageId, key: &[u8], value: &[u8]) -> Result<bool> {
        if *root == 0 {
            let id = self.alloc_page()?;
            page::init_node(self.page_mut(id), KIND_LEAF);
            *root = id;
        }
        let (path, leaf, rightmost) = self.descend_mut(root, key)?;
        let (idx, found) = view::leaf_search(self, self.page_ref(leaf), key)?;
        let lim = self.base.lim;

        // The key's stored form: reuse the existing one on replace.
        let mut key_ovf: Option<(PageId, u32)> = None;
        if found {
            let (k, v) = page::leaf_entry(self.page_ref(leaf), idx);
            if let Ref::Overflow { page, len } = k {
                key_ovf = Some((page, len));
            }
            let old_v = match v {
                Ref::Overflow { page, len } => Some((page, len)),
                Ref::Inline(_) => None,
            };
            page::remove_cell(self.page_mut(leaf), idx);
            if let Some((page, len)) = old_v {
                self.free_ref(Ref::Overflow { page, len });
            }
        } else if !lim.key_inline(key.len()) {
            key_ovf = Some(self.store_overflow(key)?);
        }
        let key_ref = match key_ovf {
            Some((page, len)) => Ref::Overflow { page, len },
            None => Ref::Inline(key),
        };
        let val_ovf = if lim.value_inline(page::part_len(key_ref), value.len()) {
            None
        } else {
            Some(self.store_overflow(value)?)
        };
        let val_ref = match val_ovf {
            Some((page, len)) => Ref::Overflow { page, len },
            None => Ref::Inline(value),
        };
        let cell = page::encode_leaf_cell(key_ref, val_ref);
        if !page::insert_cell(self.page_mut(leaf), idx, &cell) {
            self.split(root, path, leaf, idx, cell, rightmost)?;
        }
        Ok(found)
    }

    /// Splits page `id` after inserting `cell` at `idx`, and inserts the separator into the
    /// parent (recursively).
    fn split(
        &mut self,
        root: &mut PageId,
        mut path: Vec<(PageId, usize)>,
        id: PageId,
        idx: usize,
        cell: Vec<u8>,
        rightmost: bool,
    ) -> Result<()> {
        let p = self.page_ref(id);
        let kind = page::kind(p);
        let n = page::count(p);
        let mut cells: Vec<Vec<u8>> = (0..n).map(|i| page::cell(p, i).to_vec()).collect();
        cells.insert(idx, cell);
        let at = if rightmost && idx == n {
            n
        } else {
            split_point(&cells)
        };
        let mut right = cells.split_off(at);
        let ps = self.page_size();
        assert!(
            page::cells_size(&cells) <= ps
                && page::cells_size(&right) <= ps
                && !cells.is_empty()
                && !right.is_empty(),
            "split of page {id} does not fit two pages"
        );

        // The separator for the parent, owned by the new branch cell.
        let sep: Vec<u8>;
        let sep_ovf;
        if kind == KIND_LEAF {
            let left_last = view::resolve(
                self,
                page::leaf_cell_refs(cells.last().expect("nonempty")).0,
            )?;
            let right_first = view::resolve(self, page::leaf_cell_refs(&right[0]).0)?;
            sep = shortest_separator(left_last, right_first);
            sep_ovf = if self.base.lim.key_inline(sep.len()) {
                None
            } else {
                Some(self.store_overflow(&sep)?)
            };
        } else {
            sep = match page::branch_cell_key(&right[0]) {
                Ref::Inline(b) => b.to_vec(),
                Ref::Overflow { .. } => Vec::new(),
            };
            sep_ovf = match page::branch_cell_key(&right[0]) {
                Ref::Overflow { page, len } => Some((page, len)),
                Ref::Inline(_) => None,
            };
            page::clear_first_branch_key(&mut right);
        }
        let sep_ref = match sep_ovf {
            Some((page, len)) => Ref::Overflow { page, len },
            None => Ref::Inline(&sep),
        };

        page::build_node(self.page_mut(id), kind, &cells);
        let rid = self.alloc_page()?;
        page::build_node(self.page_mut(rid), kind, &right);
        let up = page::encode_branch_cell(rid, sep_ref);

        match path.pop() {
            None => {
                let nr = self.alloc_page()?;
                let first = page::encode_branch_cell(id, Ref::Inline(&[]));
                page::build_node(self.page_mut(nr), KIND_BRANCH, &[first, up]);
                *root = nr;
                Ok(())
            }
            Some((pid, pidx)) => {
                if page::insert_cell(self.page_mut(pid), pidx + 1, &up) {
                    return Ok(());
                }
                let parent_rightmost = rightmost;
                self.split(root, path, pid, pidx + 1, up, parent_rightmost)
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Delete

    /// Searches read-only for `key`: the child index taken at each branch and the leaf
    /// cell index, or None if the key is absent.
    fn find(&self, root: PageId, key: &[u8]) -> Result<Option<(Vec<usize>, usize)>> {
        if root == 0 {
            return Ok(None);
        }
        let mut steps = Vec::new();
        let mut p = self.node(root)?;
        while page::kind(p) == KIND_BRANCH {
            let i = view::branch_search(self, p, key)?;
            steps.push(i);
            p = self.node(page::branch_child(p, i))?;
        }
        let (idx, found) = view::leaf_search(self, p, key)?;
        Ok(found.then_some((steps, idx)))
    }

    /// Copies the pages along a path found by `find`, without searching again. Returns the
    /// branch path (page, child index) and the leaf.
    fn copy_path(
        &mut self,
        root: &mut PageId,
        steps: &[usize],
    ) -> Result<(Vec<(PageId, usize)>, PageId)> {
        let mut id = self.touch(*root)?;
        *root = id;
        let mut path = Vec::with_capacity(steps.len());
        for &i in steps {
            let child = page::branch_child(self.page_ref(id), i);
            let new = self.touch(child)?;
            if new != child {
                page::set_branch_child(self.page_mut(id), i, new);
            }
            path.push((id, i));
            id = new;
        }
        Ok((path, id))
    }

    fn delete_in(&mut self, root: &mut PageId, key: &[u8], rebalance: bool) -> Result<bool> {
        // Search first and copy only on a hit: a miss must not dirty any page.
        let Some((steps, idx)) = self.find(*root, key)? else {
            return Ok(false);
        };
        let (mut path, leaf) = self.copy_path(root, &steps)?;
        let (k, v) = page::leaf_entry(self.page_ref(leaf), idx);
        let (k, v) = (owned_ref(k), owned_ref(v));
        page::remove_cell(self.page_mut(leaf), idx);
        self.free_owned(k);
        self.free_owned(v);
        if rebalance {
            self.rebalance(root, &mut path, leaf)?;
        }
        Ok(true)
    }

    fn free_owned(&mut self, r: Option<(PageId, u32)>) {
        if let Some((page, len)) = r {
            self.free_ref(Ref::Overflow { page, len });
        }
    }

    /// Merges or removes underfull pages from `id` upwards, then collapses the root.
    fn rebalance(
        &mut self,
        root: &mut PageId,
        path: &mut Vec<(PageId, usize)>,
        mut id: PageId,
    ) -> Result<()> {
        let ps = self.page_size();
        while let Some((pid, pidx)) = path.pop() {
            if page::count(self.page_ref(id)) == 0 {
                self.free_run(id, 1);
                self.remove_branch_cell(pid, pidx, true);
                id = pid;
                continue;
            }
            if page::used_bytes(self.page_ref(id)) >= ps / 4 {
                break;
            }
            let n = page::count(self.page_ref(pid));
            let (li, ri) = if pidx + 1 < n {
                (pidx, pidx + 1)
            } else if pidx > 0 {
                (pidx - 1, pidx)
            } else {
                break;
            };
            let l = self.touch(page::branch_child(self.page_ref(pid), li))?;
            page::set_branch_child(self.page_mut(pid), li, l);
            let r = self.touch(page::branch_child(self.page_ref(pid), ri))?;
            page::set_branch_child(self.page_mut(pid), ri, r);
            let lp = self.page_ref(l);
            let rp = self.page_ref(r);
            let kind = page::kind(lp);
            let mut cells: Vec<Vec<u8>> = (0..page::count(lp))
                .map(|i| page::cell(lp, i).to_vec())
                .collect();
            let mut right: Vec<Vec<u8>> = (0..page::count(rp))
                .map(|i| page::cell(rp, i).to_vec())
                .collect();
            if kind == KIND_BRANCH {
                // The parent's separator moves down onto the right page's first child.
                let sep_cell = page::cell(self.page_ref(pid), ri).to_vec();
                let child = page::branch_cell_child(&right[0]);
                right[0] = page::encode_branch_cell(child, page::branch_cell_key(&sep_cell));
            }
            cells.append(&mut right);
            if page::cells_size(&cells) > ps * 7 / 8 {
                break;
            }
            page::build_node(self.page_mut(l), kind, &cells);
            self.free_run(r, 1);
            // A leaf merge drops the separator; a branch merge moved it into `l`.
            self.remove_branch_cell(pid, ri, kind == KIND_LEAF);
            id = pid;
        }
        // Collapse a root that no longer branches.
        loop {
            let p = self.node(*root)?;
            let (kind, n) = (page::kind(p), page::count(p));
            if kind == KIND_BRANCH && n == 1 {
                let child = page::branch_child(p, 0);
                self.free_run(*root, 1);
                *root = child;
            } else if (kind == KIND_BRANCH || kind == KIND_LEAF) && n == 0 {
                self.free_run(*root, 1);
                *root = 0;
                break;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// Removes branch cell `i` of dirty page `pid`, freeing its key's overflow run if
    /// `free_key`. Keeps cell 0's key empty.
    fn remove_branch_cell(&mut self, pid: PageId, i: usize, free_key: bool) {
        let key = owned_ref(page::branch_entry(self.page_ref(pid), i).1);
        page::remove_cell(self.page_mut(pid), i);
        if free_key {
            self.free_owned(key);
        }
        let p = self.page_ref(pid);
        if i == 0 && page::count(p) > 0 {
            let (child, k) = page::branch_entry(p, 0);
            let k = owned_ref(k);
            let cell = page::encode_branch_cell(child, Ref::Inline(&[]));
            page::remove_cell(self.page_mut(pid), 0);
            let ok = page::insert_cell(self.page_mut(pid), 0, &cell);
            assert!(ok, "a shorter cell always fits");
            self.free_owned(k);
        }
    }

    // -----------------------------------------------------------------------------------
    // Commit

    /// Makes the transaction visible to new readers. Durability comes with the next
    /// checkpoint (run by this call, after the writer lock is released, once unsynced
    /// bytes pass `Options::checkpoint_bytes`).
    pub fn commit(self) -> Result<()> {
        self.commit_with(|| {})
    }

    /// Like [`WriteTxn::commit`], running `published` once the new version is visible and
    /// before the writer lock is released, so that state kept beside the tree (such as the
    /// MVCC revision counters) changes in the same order as the versions.
    pub fn commit_with(mut self, published: impl FnOnce()) -> Result<()> {
        self.db.check_poison()?;
        // Record changed trees in the catalog.
        let changed: Vec<(Vec<u8>, PageId, u64)> = self
            .trees
            .iter()
            .filter(|t| t.changed)
            .map(|t| (t.name.clone(), t.root, t.len))
            .collect();
        for (name, root, len) in changed {
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&root.to_le_bytes());
            desc[8..].copy_from_slice(&len.to_le_bytes());
            let mut croot = self.meta.catalog_root;
            let r = self.put_in(&mut croot, &name, &desc);
            self.meta.catalog_root = croot;
            r?;
        }
        // Editing the free tree below must not load entries from it, so take enough
        // reclaimable pages now for its copy-on-write edits; otherwise they would come from
        // the end of the file while free pages pile up.
        let freed = self.freed.len() + self.freed_fresh.len();
        let reserve = 32 + 8 * (freed / self.ids_per_entry() + 1);
        while self.pool.len() < reserve && self.load_reclaimable()? {}
        let fresh_entries = self.write_free_entries()?;
        let pages = std::mem::take(&mut self.dirty);
        let meta = self.meta;
        let db = self.db;
        let checkpoint = db.publish(meta, pages, &mut self.writer)?;
        let w = &mut *self.writer;
        for k in &self.fresh_used {
            w.fresh_entries.remove(k);
        }
        w.fresh_entries.extend(fresh_entries);
        while w.fresh_entries.len() > FRESH_ENTRIES_MAX {
            w.fresh_entries.pop_first();
        }
        published();
        // Release the writer lock first: the checkpoint's fsyncs must not hold up writers.
        drop(self);
        if checkpoint {
            db.checkpoint()?;
        }
        Ok(())
    }
}

fn owned_ref(r: Ref<'_>) -> Option<(PageId, u32)> {
    match r {
        Ref::Overflow { page, len } => Some((page, len)),
        Ref::Inline(_) => None,
    }
}

/// The split index that best balances bytes between two pages.
fn split_point(cells: &[Vec<u8>]) -> usize {
    let total: usize = cells.iter().map(|c| c.len() + 2).sum();
    let mut acc = 0;
    let mut best = 1;
    let mut best_diff = usize::MAX;
    for (i, c) in cells.iter().enumerate().take(cells.len() - 1) {
        acc += c.len() + 2;
        let diff = acc.abs_diff(total - acc);
        if diff < best_diff {
            best_diff = diff;
            best = i + 1;
        }
    }
    best
}

/// The shortest key `s` with `left < s ≤ right` (a prefix of `right`).
fn shortest_separator(left: &[u8], right: &[u8]) -> Vec<u8> {
    let common = left.iter().zip(right).take_while(|(a, b)| a == b).count();
    debug_assert!(left < right, "leaf keys are strictly ordered");
    right[..(common + 1).min(right.len())].to_vec()
}
