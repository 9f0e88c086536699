//! redb.
//!
//! Configuration: `Builder::new()` with the cache raised from the 1 GiB default to 4 GiB,
//! so that the whole data set (≈1.2 GB of keys and values at 1M keys) fits in redb's own
//! cache, as it fits in the OS page cache that etch and LMDB read through. Commits use
//! redb's default durability, `Durability::Immediate`: durable when `commit` returns.

use std::path::{Path, PathBuf};

use redb::{Database, ReadOnlyTable, ReadableDatabase, Table, TableDefinition};

use crate::{Batch, BenchDb, FileSize, Reader, Result, Scan};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

/// redb's cache size used here.
pub const REDB_CACHE_BYTES: usize = 4 << 30;

/// A redb database in `DIR/redb.db`.
#[derive(Debug)]
pub struct RedbDb {
    db: Database,
    path: PathBuf,
}

/// An open redb table in a write transaction.
pub struct RedbBatch<'t> {
    table: Table<'t, &'static [u8], &'static [u8]>,
}

impl std::fmt::Debug for RedbBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbBatch")
    }
}

/// A redb read snapshot of the table.
pub struct RedbReader {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl std::fmt::Debug for RedbReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbReader")
    }
}

impl BenchDb for RedbDb {
    const NAME: &'static str = "redb";
    type Batch<'t> = RedbBatch<'t>;
    type Reader<'t> = RedbReader;

    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("redb.db");
        let db = Database::builder()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(&path)?;
        // Create the table so that readers always find it.
        let txn = db.begin_write()?;
        txn.open_table(TABLE)?;
        txn.commit()?;
        Ok(RedbDb { db, path })
    }

    fn write<R>(&self, f: impl FnOnce(&mut Self::Batch<'_>) -> Result<R>) -> Result<R> {
        let txn = self.db.begin_write()?;
        let r = {
            let mut batch = RedbBatch {
                table: txn.open_table(TABLE)?,
            };
            f(&mut batch)?
        };
        txn.commit()?;
        Ok(r)
    }

    fn read<R>(&self, f: impl FnOnce(&Self::Reader<'_>) -> R) -> Result<R> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        Ok(f(&RedbReader { table }))
    }

    fn file_size(&self) -> Result<FileSize> {
        FileSize::of(&self.path)
    }
}

impl Batch for RedbBatch<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.table.insert(key, value)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.table.remove(key)?.is_some())
    }
}

impl Reader for RedbReader {
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.table.get(key)?.map(|v| v.value().len()))
    }

    fn scan(&self, start: &[u8], n: usize) -> Result<Scan> {
        let mut s = Scan::default();
        for kv in self.table.range(start..)?.take(n) {
            let (k, v) = kv?;
            s.entries += 1;
            s.bytes += (k.value().len() + v.value().len()) as u64;
        }
        Ok(s)
    }
}
