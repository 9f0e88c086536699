//! Benchmarks for etch (see benches/README.md).
//!
//! [`BenchDb`] is the one interface the B+tree benchmark drives. It is implemented for
//! etch's own B+tree ([`EtchDb`]), for redb ([`RedbDb`]) and for LMDB through heed
//! ([`LmdbDb`]), each configured so that one committed batch is durable (synced to disk)
//! when the commit returns. [`workload`] makes the keys and values.
//!
//! [`load`] is the `etch-bench` load generator, which drives etch or etcd over gRPC.

use std::path::Path;

mod etch_db;
mod lmdb_db;
pub mod load;
mod redb_db;
pub mod workload;

pub use etch_db::EtchDb;
pub use lmdb_db::LmdbDb;
pub use redb_db::RedbDb;

/// Any engine's error.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Size of an engine's data file(s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSize {
    /// Apparent length (`st_size`).
    pub len: u64,
    /// Blocks actually allocated (`st_blocks * 512`); smaller than `len` for sparse files.
    pub allocated: u64,
}

impl FileSize {
    /// Size of one file.
    pub fn of(path: &Path) -> Result<FileSize> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileSize {
            len: m.len(),
            allocated: m.blocks() * 512,
        })
    }
}

/// What a scan saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    pub entries: usize,
    /// Key plus value bytes of every entry seen.
    pub bytes: u64,
}

/// A key-value store under benchmark: one ordered map of byte keys to byte values.
///
/// The handle is `Sync`: share `&db` between threads; each thread opens its own read
/// transactions with [`BenchDb::read`] while one thread writes with [`BenchDb::write`]
/// (every engine here allows one writer and any number of concurrent readers).
pub trait BenchDb: Sized + Sync {
    /// Short name for tables.
    const NAME: &'static str;

    /// The open write transaction as the batch closure sees it.
    type Batch<'t>: Batch
    where
        Self: 't;

    /// The open read transaction as the read closure sees it.
    type Reader<'t>: Reader
    where
        Self: 't;

    /// Opens (creating) a store whose files live in the existing directory `dir`.
    fn open(dir: &Path) -> Result<Self>;

    /// One write transaction: begins it, lets `f` put and delete, then commits it so that
    /// it is durable (synced) when this returns. If `f` fails the transaction is dropped.
    fn write<R>(&self, f: impl FnOnce(&mut Self::Batch<'_>) -> Result<R>) -> Result<R>;

    /// One read transaction (a consistent snapshot) for the duration of `f`.
    fn read<R>(&self, f: impl FnOnce(&Self::Reader<'_>) -> R) -> Result<R>;

    /// Size of the data file(s) now.
    fn file_size(&self) -> Result<FileSize>;
}

/// Writes inside one transaction.
pub trait Batch {
    /// Inserts or replaces.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes; whether the key was there.
    fn delete(&mut self, key: &[u8]) -> Result<bool>;
}

/// Reads inside one transaction. Values are borrowed from the engine (never copied out).
pub trait Reader {
    /// Length of the key's value, if present.
    fn get(&self, key: &[u8]) -> Result<Option<usize>>;
    /// Reads up to `n` entries in key order from the first key ≥ `start`.
    fn scan(&self, start: &[u8], n: usize) -> Result<Scan>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use workload::{KeyGen, Values};

    /// The same small workload gives the same answers on every engine.
    fn roundtrip<D: BenchDb>() -> (Vec<Option<usize>>, Scan, FileSize) {
        let dir = tempfile::tempdir().unwrap();
        let db = D::open(dir.path()).unwrap();
        let vals = Values::new();
        let mut key = Vec::new();
        for batch in 0..3u64 {
            db.write(|b| {
                for i in batch * 100..(batch + 1) * 100 {
                    KeyGen::Sequential.key(i, &mut key);
                    b.put(&key, vals.value(i, 0))?;
                }
                Ok(())
            })
            .unwrap();
        }
        db.write(|b| {
            for i in (0..300).step_by(3) {
                KeyGen::Sequential.key(i, &mut key);
                assert!(b.delete(&key)?);
            }
            KeyGen::Sequential.key(1000, &mut key);
            assert!(!b.delete(&key)?);
            Ok(())
        })
        .unwrap();
        let gets = db
            .read(|r| {
                (0..10)
                    .map(|i| {
                        let mut k = Vec::new();
                        KeyGen::Sequential.key(i, &mut k);
                        r.get(&k).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();
        KeyGen::Sequential.key(10, &mut key);
        let scan = db.read(|r| r.scan(&key, 50).unwrap()).unwrap();
        (gets, scan, db.file_size().unwrap())
    }

    #[test]
    fn engines_agree() {
        let (g1, s1, f1) = roundtrip::<EtchDb>();
        let (g2, s2, f2) = roundtrip::<RedbDb>();
        let (g3, s3, f3) = roundtrip::<LmdbDb>();
        assert_eq!(g1, g2);
        assert_eq!(g1, g3);
        assert_eq!(g1[0], None);
        assert_eq!(g1[1], Some(Values::new().value(1, 0).len()));
        assert_eq!(s1, s2);
        assert_eq!(s1, s3);
        assert_eq!(s1.entries, 50);
        for f in [f1, f2, f3] {
            assert!(f.len > 0);
        }
    }
}
