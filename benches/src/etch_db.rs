//! etch's copy-on-write B+tree.
//!
//! Configuration: `Options::default()` — 4 KiB pages, 64 GiB of address space reserved
//! for the read-only map (nothing allocated), no cache of its own (reads go through the
//! OS page cache via the map). A batch is `WriteTxn::commit` followed by
//! `Db::checkpoint`, which syncs the pages (fdatasync), writes the meta page and syncs
//! again: the batch is durable when `write` returns. (The automatic checkpoint after
//! 64 MiB of unsynced commits never triggers, since every batch checkpoints.)

use std::path::{Path, PathBuf};

use etch_engine::btree::{Db, Options, Tree, TreeId, View, WriteTxn};

use crate::{Batch, BenchDb, FileSize, Reader, Result, Scan};

const TREE: &[u8] = b"bench";

/// etch's B+tree in `DIR/etch.db`.
#[derive(Debug)]
pub struct EtchDb {
    db: Db,
    path: PathBuf,
}

/// An open etch write transaction.
#[derive(Debug)]
pub struct EtchBatch<'t> {
    txn: WriteTxn<'t>,
    tree: TreeId,
}

/// An etch read snapshot; `None` until the tree has been written once.
#[derive(Debug)]
pub struct EtchReader<'t> {
    tree: Option<Tree<'t, View>>,
}

impl BenchDb for EtchDb {
    const NAME: &'static str = "etch";
    type Batch<'t> = EtchBatch<'t>;
    type Reader<'t> = EtchReader<'t>;

    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("etch.db");
        let db = Db::open(&path, Options::default())?;
        Ok(EtchDb { db, path })
    }

    fn write<R>(&self, f: impl FnOnce(&mut Self::Batch<'_>) -> Result<R>) -> Result<R> {
        let mut txn = self.db.begin_write()?;
        let tree = txn.open_tree(TREE)?;
        let mut batch = EtchBatch { txn, tree };
        let r = f(&mut batch)?;
        batch.txn.commit()?;
        self.db.checkpoint()?;
        Ok(r)
    }

    fn read<R>(&self, f: impl FnOnce(&Self::Reader<'_>) -> R) -> Result<R> {
        let txn = self.db.begin_read()?;
        let tree = txn.tree(TREE)?;
        Ok(f(&EtchReader { tree }))
    }

    fn file_size(&self) -> Result<FileSize> {
        FileSize::of(&self.path)
    }
}

impl Batch for EtchBatch<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.txn.put(self.tree, key, value)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.txn.delete(self.tree, key)?)
    }
}

impl Reader for EtchReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        let Some(t) = &self.tree else {
            return Ok(None);
        };
        Ok(t.get(key)?.map(<[u8]>::len))
    }

    fn scan(&self, start: &[u8], n: usize) -> Result<Scan> {
        let mut s = Scan::default();
        let Some(t) = &self.tree else {
            return Ok(s);
        };
        for kv in t.range(start, None).take(n) {
            let (k, v) = kv?;
            s.entries += 1;
            s.bytes += (k.len() + v.len()) as u64;
        }
        Ok(s)
    }
}
