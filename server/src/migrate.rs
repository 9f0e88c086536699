//! `etch migrate`: a stopped etcd member's data dir becomes an etch data dir. Its
//! database (`member/snap/db`) is restored as a snapshot is, then the committed entries
//! its WAL (`member/wal/*.wal`) holds beyond the database's consistent index are applied
//! on top: an etcd killed before its backend committed loses nothing acknowledged.
//!
//! etcd's WAL, as etch reads it: each record is an 8-byte little-endian length (the top
//! byte, when its high bit is set, counts padding bytes), a `walpb.Record` (type, CRC,
//! data) and the padding; a length of 0 ends a file's data. The CRC is a CRC-32C running
//! over every record's data, across files; a `crc` record restarts it. Record types:
//! 1 metadata, 2 entry (`raftpb.Entry`), 3 hard state, 4 crc, 5 snapshot.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use etch_engine::mvcc::{self, Store, etcd::Crc32c};
use prost::Message as _;

use crate::backup::{self, ClusterFlags, RestoreOptions, Restored};
use crate::convert;
use crate::pb::etcdwalpb as wpb;

const REC_METADATA: i64 = 1;
const REC_ENTRY: i64 = 2;
const REC_STATE: i64 = 3;
const REC_CRC: i64 = 4;
const REC_SNAPSHOT: i64 = 5;
/// etcd's limit on one WAL record.
const RECORD_MAX: u64 = 10 << 20;
/// Entries applied per write transaction.
const APPLY_BATCH: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    pub cluster: Option<ClusterFlags>,
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub restored: Restored,
    /// The database's consistent index, and the WAL entries applied above it.
    pub consistent_index: u64,
    pub wal_entries: u64,
}

/// The committed entries of the WAL in `dir` above `above`, in index order.
fn read_wal(dir: &Path, above: u64) -> Result<Vec<wpb::Entry>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no WAL files", dir.display()));
    }
    let mut crc = Crc32c::resume(0);
    let mut entries: BTreeMap<u64, wpb::Entry> = BTreeMap::new();
    let mut commit = 0u64;
    let last = files.len() - 1;
    for (n, path) in files.iter().enumerate() {
        let name = path.display();
        let mut f = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?,
        );
        loop {
            let mut len = [0u8; 8];
            match f.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("{name}: {e}")),
            }
            let field = u64::from_le_bytes(len);
            if field == 0 {
                // The preallocated rest of the file.
                break;
            }
            let size = field & !(0xff << 56);
            let pad = if (field as i64) < 0 {
                (field >> 56) & 7
            } else {
                0
            };
            if size >= RECORD_MAX {
                return Err(format!("{name}: a record of {size} bytes"));
            }
            let mut buf = vec![0u8; (size + pad) as usize];
            let torn = |why: String| -> Result<(), String> {
                // Only the last file may end in a torn write (etcd repairs it the same way).
                if n == last {
                    Ok(())
                } else {
                    Err(format!("{name}: {why}"))
                }
            };
            if let Err(e) = f.read_exact(&mut buf) {
                torn(format!("a record cut short: {e}"))?;
                break;
            }
            let rec = match wpb::Record::decode(&buf[..size as usize]) {
                Ok(r) => r,
                Err(e) => {
                    torn(format!("a bad record: {e}"))?;
                    break;
                }
            };
            if rec.r#type == REC_CRC {
                let running = crc.finish();
                if running != 0 && rec.crc != running {
                    return Err(format!("{name}: CRC mismatch at a file boundary"));
                }
                crc = Crc32c::resume(rec.crc);
                continue;
            }
            crc.update(&rec.data);
            if rec.crc != crc.finish() {
                torn("a record's CRC does not match".into())?;
                break;
            }
            let bad = |what: &str, e: prost::DecodeError| format!("{name}: a bad {what}: {e}");
            match rec.r#type {
                REC_METADATA => {}
                REC_ENTRY => {
                    let e = wpb::Entry::decode(rec.data.as_slice()).map_err(|e| bad("entry", e))?;
                    // A later entry at an index replaces it and everything after it.
                    let _ = entries.split_off(&e.index);
                    if e.index > above {
                        entries.insert(e.index, e);
                    }
                }
                REC_STATE => {
                    let hs = wpb::HardState::decode(rec.data.as_slice())
                        .map_err(|e| bad("hard state", e))?;
                    commit = commit.max(hs.commit);
                }
                REC_SNAPSHOT => {
                    let s = wpb::Snapshot::decode(rec.data.as_slice())
                        .map_err(|e| bad("snapshot record", e))?;
                    entries = entries.split_off(&(s.index + 1));
                }
                other => return Err(format!("{name}: a record of unknown type {other}")),
            }
        }
    }
    Ok(entries
        .into_values()
        .filter(|e| e.index <= commit)
        .collect())
}

/// Whether an error is a request's own outcome (etcd answered its client with it and
/// changed nothing), not a storage failure.
fn request_outcome(e: &mvcc::Error) -> bool {
    !matches!(e, mvcc::Error::Storage(_) | mvcc::Error::Corrupt(_))
}

/// Applies etcd's entries (index order) to `store`, as etcd applied them. Returns how
/// many changed or could have changed data.
fn apply_wal(store: &Store, entries: &[wpb::Entry]) -> Result<u64, String> {
    let mut applied = 0u64;
    for batch in entries.chunks(APPLY_BATCH) {
        let mut tx = store.write().map_err(|e| e.to_string())?;
        for e in batch {
            if e.r#type != 0 || e.data.is_empty() {
                continue;
            }
            let req = wpb::InternalRaftRequest::decode(e.data.as_slice())
                .map_err(|err| format!("WAL entry {}: not an etcd v3 request: {err}", e.index))?;
            if req.auth_enable.is_some() {
                return Err(format!(
                    "WAL entry {} enables auth; etch does not serve auth yet",
                    e.index
                ));
            }
            let r = if let Some(p) = &req.put {
                tx.put(&convert::put_in(p)).map(|_| ())
            } else if let Some(d) = &req.delete_range {
                tx.delete_range(&convert::delete_in(d)).map(|_| ())
            } else if let Some(t) = &req.txn {
                tx.txn(&convert::txn_in(t)).map(|_| ())
            } else if let Some(c) = &req.compaction {
                tx.compact(c.revision)
            } else if let Some(g) = &req.lease_grant {
                tx.lease_grant(g.id, g.ttl)
            } else if let Some(r) = &req.lease_revoke {
                tx.lease_revoke(r.id).map(|_| ())
            } else if let Some(c) = &req.lease_checkpoint {
                let mut r = Ok(());
                for cp in &c.checkpoints {
                    r = tx.lease_checkpoint(cp.id, cp.remaining_ttl);
                    if r.as_ref().is_err_and(|e| !request_outcome(e)) {
                        break;
                    }
                }
                r
            } else {
                // Alarms, membership, cluster version, auth reads: nothing of the data.
                continue;
            };
            match r {
                Ok(()) => {}
                Err(err) if request_outcome(&err) => {}
                Err(err) => return Err(format!("applying WAL entry {}: {err}", e.index)),
            }
            applied += 1;
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(applied)
}

/// `etch migrate --from-etcd-data-dir SRC --data-dir DEST`.
pub fn migrate(
    etcd_dir: &Path,
    data_dir: &Path,
    opts: &MigrateOptions,
) -> Result<Migrated, String> {
    let db = etcd_dir.join("member").join("snap").join("db");
    if !db.is_file() {
        return Err(format!(
            "{} not found: {} is not an etcd v3 data dir",
            db.display(),
            etcd_dir.display()
        ));
    }
    // A running etcd holds its database's lock for as long as it runs.
    let f = std::fs::File::open(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!(
                "{} is in use (its database is locked): stop the etcd member first",
                etcd_dir.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("locking {}: {e}", db.display()));
        }
    }
    let consistent_index = backup::consistent_index(&db)?;
    let entries = read_wal(&etcd_dir.join("member").join("wal"), consistent_index)?;
    let ropts = RestoreOptions {
        // A member's own database carries no trailer.
        skip_hash_check: true,
        quiet: opts.quiet,
        cluster: opts.cluster.clone(),
        ..RestoreOptions::default()
    };
    let mut wal_entries = 0;
    let restored = backup::restore_etcd_then(&db, data_dir, &ropts, &mut |store: &Store| {
        wal_entries = apply_wal(store, &entries)?;
        Ok(())
    })?;
    drop(f);
    Ok(Migrated {
        restored,
        consistent_index,
        wal_entries,
    })
}
