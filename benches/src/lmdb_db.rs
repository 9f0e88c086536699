//! LMDB through heed.
//!
//! Configuration: map size 64 GiB (address space only; the file grows as pages are
//! written), default environment flags — so no `NO_SYNC`, `NO_META_SYNC` or `WRITE_MAP`:
//! a write transaction's commit writes the pages, syncs, writes the meta page and syncs
//! again, and is durable when it returns. Read transactions are opened without
//! thread-local storage (`read_txn_without_tls`). One unnamed database, byte keys and
//! values, the default comparator (memcmp order, like etch and redb on `&[u8]`).

use std::ops::Bound;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

use crate::{Batch, BenchDb, FileSize, Reader, Result, Scan};

/// LMDB map size used here.
pub const LMDB_MAP_BYTES: usize = 64 << 30;

type Db = Database<'static, Bytes, Bytes>;

/// An LMDB environment in `DIR/lmdb/` (`data.mdb` and `lock.mdb`).
#[derive(Debug)]
pub struct LmdbDb {
    env: Env<WithoutTls>,
    db: Db,
    path: PathBuf,
}

/// An open LMDB write transaction.
pub struct LmdbBatch<'t> {
    txn: RwTxn<'t>,
    db: Db,
}

impl std::fmt::Debug for LmdbBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LmdbBatch")
    }
}

/// An LMDB read transaction.
pub struct LmdbReader<'t> {
    txn: RoTxn<'t, WithoutTls>,
    db: Db,
}

impl std::fmt::Debug for LmdbReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LmdbReader")
    }
}

impl BenchDb for LmdbDb {
    const NAME: &'static str = "lmdb";
    type Batch<'t> = LmdbBatch<'t>;
    type Reader<'t> = LmdbReader<'t>;

    fn open(dir: &Path) -> Result<Self> {
        let env_dir = dir.join("lmdb");
        std::fs::create_dir_all(&env_dir)?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(LMDB_MAP_BYTES);
        // SAFETY: each benchmark opens one environment per fresh temporary directory and
        // opens it once per process; nothing else maps, truncates or writes its files, no
        // unsafe flags (NO_LOCK, NO_SYNC, ...) are set, and the directory is on a local
        // file system (/tmp).
        let env = unsafe { opts.open(&env_dir)? };
        let wtxn = env.write_txn()?;
        let db: Db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener
                    .create_database(wtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })?
            .unwrap_commit();
        Ok(LmdbDb {
            env,
            db,
            path: env_dir.join("data.mdb"),
        })
    }

    fn write<R>(&self, f: impl FnOnce(&mut Self::Batch<'_>) -> Result<R>) -> Result<R> {
        let mut batch = LmdbBatch {
            txn: self.env.write_txn()?,
            db: self.db,
        };
        let r = f(&mut batch)?;
        batch.txn.commit()?;
        Ok(r)
    }

    fn read<R>(&self, f: impl FnOnce(&Self::Reader<'_>) -> R) -> Result<R> {
        let txn = self.env.read_txn()?;
        Ok(f(&LmdbReader { txn, db: self.db }))
    }

    fn file_size(&self) -> Result<FileSize> {
        FileSize::of(&self.path)
    }
}

impl Batch for LmdbBatch<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.put(&mut self.txn, key, value)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.db.delete(&mut self.txn, key)?)
    }
}

impl Reader for LmdbReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.db.get(&self.txn, key)?.map(<[u8]>::len))
    }

    fn scan(&self, start: &[u8], n: usize) -> Result<Scan> {
        let mut s = Scan::default();
        let range = (Bound::Included(start), Bound::Unbounded);
        for kv in self.db.range(&self.txn, &range)?.take(n) {
            let (k, v) = kv?;
            s.entries += 1;
            s.bytes += (k.len() + v.len()) as u64;
        }
        Ok(s)
    }
}
