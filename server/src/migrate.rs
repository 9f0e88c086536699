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

use crate::auth::tokens::Tokens;
use crate::auth::{AuthInfo, AuthStore};
use crate::backup::{self, ClusterFlags, RestoreOptions, Restored};
use crate::convert;
use crate::pb::etcdwalpb as wpb;
use crate::pb::etchpb::internal_request::Request;

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

/// etcd's request as etch's, with who sent it; None for entries that change no data
/// (alarms, membership, cluster version, auth reads, Authenticate: tokens are the
/// running members' own).
fn as_request(
    req: wpb::InternalRaftRequest,
) -> Result<Option<(Request, Option<AuthInfo>)>, String> {
    let who = req.header.map(|h| AuthInfo {
        user: h.username,
        revision: h.auth_revision,
    });
    let r = if let Some(p) = req.put {
        Request::Put(p)
    } else if let Some(d) = req.delete_range {
        Request::DeleteRange(d)
    } else if let Some(t) = req.txn {
        Request::Txn(t)
    } else if let Some(c) = req.compaction {
        Request::Compaction(c)
    } else if let Some(g) = req.lease_grant {
        Request::LeaseGrant(g)
    } else if let Some(r) = req.lease_revoke {
        Request::LeaseRevoke(r)
    } else if let Some(c) = req.lease_checkpoint {
        Request::LeaseCheckpoint(c)
    } else if let Some(a) = req.auth_enable {
        Request::AuthEnable(a)
    } else if let Some(a) = req.auth_disable {
        Request::AuthDisable(a)
    } else if let Some(mut a) = req.auth_user_add {
        // etcd before 3.5 logged the password and hashed it at apply.
        if a.hashed_password.is_empty()
            && !a.password.is_empty()
            && !a.options.is_some_and(|o| o.no_password)
        {
            a.hashed_password = hash_password(&std::mem::take(&mut a.password))?;
        }
        Request::UserAdd(a)
    } else if let Some(a) = req.auth_user_delete {
        Request::UserDelete(a)
    } else if let Some(mut a) = req.auth_user_change_password {
        if a.hashed_password.is_empty() && !a.password.is_empty() {
            a.hashed_password = hash_password(&std::mem::take(&mut a.password))?;
        }
        Request::UserChangePassword(a)
    } else if let Some(a) = req.auth_user_grant_role {
        Request::UserGrantRole(a)
    } else if let Some(a) = req.auth_user_revoke_role {
        Request::UserRevokeRole(a)
    } else if let Some(a) = req.auth_role_add {
        Request::RoleAdd(a)
    } else if let Some(a) = req.auth_role_delete {
        Request::RoleDelete(a)
    } else if let Some(a) = req.auth_role_grant_permission {
        Request::RoleGrantPermission(a)
    } else if let Some(a) = req.auth_role_revoke_permission {
        Request::RoleRevokePermission(a)
    } else {
        return Ok(None);
    };
    Ok(Some((r, who)))
}

/// A password as etcd stores it, at etcd's default bcrypt cost.
fn hash_password(p: &str) -> Result<String, String> {
    crate::auth::hash_password(p, 10)
}

/// Applies etcd's entries (index order) to `store`, as etcd applied them, with etcd's
/// permission checks when auth is on. Returns how many changed or could have changed
/// data.
fn apply_wal(store: &Store, entries: &[wpb::Entry]) -> Result<u64, String> {
    let auth = AuthStore::load(store, Tokens::from_flags("simple", 300)?, 10)?;
    let mut applied = 0u64;
    for batch in entries.chunks(APPLY_BATCH) {
        let mut tx = store.write().map_err(|e| e.to_string())?;
        for e in batch {
            if e.r#type != 0 || e.data.is_empty() {
                continue;
            }
            let req = wpb::InternalRaftRequest::decode(e.data.as_slice())
                .map_err(|err| format!("WAL entry {}: not an etcd v3 request: {err}", e.index))?;
            let Some((req, who)) = as_request(req)? else {
                continue;
            };
            applied += 1;
            if let Some(w) = &who
                && auth.request_permitted_as_etcd_3_6(&tx, w, &req).is_err()
            {
                // etcd refused it too.
                continue;
            }
            let r = match &req {
                Request::Put(p) => tx.put(&convert::put_in(p)).map(|_| ()),
                Request::DeleteRange(d) => tx.delete_range(&convert::delete_in(d)).map(|_| ()),
                Request::Txn(t) => tx.txn(&convert::txn_in(t)).map(|_| ()),
                Request::Compaction(c) => tx.compact(c.revision),
                Request::LeaseGrant(g) => tx.lease_grant(g.id, g.ttl),
                Request::LeaseRevoke(r) => tx.lease_revoke(r.id).map(|_| ()),
                Request::LeaseCheckpoint(c) => {
                    let mut r = Ok(());
                    for cp in &c.checkpoints {
                        r = tx.lease_checkpoint(cp.id, cp.remaining_ttl);
                        if r.as_ref().is_err_and(|e| !request_outcome(e)) {
                            break;
                        }
                    }
                    r
                }
                auth_change => auth
                    .apply(&mut tx, auth_change, who.as_ref(), e.index)
                    .map(|_| ()),
            };
            match r {
                Ok(()) => {}
                Err(err) if request_outcome(&err) => {}
                Err(err) => return Err(format!("applying WAL entry {}: {err}", e.index)),
            }
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
