//! Installing another store's state in place: what a Raft follower does with a snapshot
//! from its leader. The store object, its map and its readers stay; one write transaction
//! swaps every replicated tree, so a reader sees the old state or the new one, never a mix.

use super::{Revs, Store, lock};
use crate::btree::ReadTxn;
use crate::mvcc::{Error, Result};

/// Keys deleted or copied per batch while the transaction walks a tree.
const BATCH: usize = 1024;

impl Store {
    /// Replaces every tree except those named in `keep` (local state such as the member's
    /// own identity) with the trees of `src`, takes `src`'s marker, and commits, in one
    /// transaction. The revisions follow the new data.
    pub fn replace_from(&self, src: &ReadTxn, keep: &[&[u8]]) -> Result<()> {
        let live = self.db.begin_read()?.tree_names()?;
        let incoming = src.tree_names()?;
        let mut w = self.db.begin_write()?;
        for name in live.iter().filter(|n| !keep.contains(&n.as_slice())) {
            let t = w.open_tree(name)?;
            loop {
                let mut batch = Vec::with_capacity(BATCH);
                for e in w.range(t, &[], None) {
                    batch.push(e?.0.to_vec());
                    if batch.len() == BATCH {
                        break;
                    }
                }
                if batch.is_empty() {
                    break;
                }
                for k in &batch {
                    w.delete(t, k)?;
                }
            }
        }
        for name in incoming.iter().filter(|n| !keep.contains(&n.as_slice())) {
            let from = src
                .tree(name)?
                .ok_or_else(|| Error::Corrupt("a listed tree is missing".into()))?;
            let t = w.open_tree(name)?;
            for e in from.iter() {
                let (k, v) = e?;
                w.put(t, k, v)?;
            }
        }
        w.set_marker(src.marker())?;
        let revs = Revs::of(src)?;
        let shared = self.revs.clone();
        w.commit_with(move || *lock(&shared) = revs)?;
        Ok(())
    }
}
