//! The data dir: its layout, opening its store, copying its data file, and building one
//! from a snapshot (`etch snapshot restore`).

use std::path::{Path, PathBuf};

use etch_engine::btree::{self, Db};
use etch_engine::mvcc::{Snapshot, Store};
use sha2::Digest as _;

use crate::alarms::ALARM_TREE;
use crate::members::MEMBERS_TREE;

/// Meta tree of cluster identity (local, not replicated).
pub const CLUSTER_TREE: &[u8] = b"etch.cluster";
/// Entries copied per write transaction when copying the data file.
const COPY_BATCH: usize = 8192;

/// The member dir inside a data dir (etcd's layout).
pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member")
}

/// The data file inside a data dir.
pub fn db_file(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("etch.db")
}

/// Creates the member dir if needed and opens the store in it, as the server runs it.
pub fn open_store(data_dir: &Path) -> Result<Store, String> {
    let member_dir = member_dir(data_dir);
    std::fs::create_dir_all(&member_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", member_dir.display()))?;
    let db_path = db_file(data_dir);
    Store::open(
        &db_path,
        btree::Options {
            // Commits never checkpoint: the apply thread would wait for two
            // fdatasyncs. The checkpoint thread watches the unsynced bytes instead.
            checkpoint_bytes: u64::MAX,
            ..btree::Options::default()
        },
    )
    .map_err(|e| format!("cannot open {}: {e}", db_path.display()))
}

/// Copies the version `snap` reads into a new data file at `dest`: a consistent copy
/// taken while writes go on.
pub fn copy_data_file(snap: &Snapshot, dest: &Path) -> Result<(), String> {
    let src = snap.btree();
    let db = Db::open(dest, btree::Options::default()).map_err(|e| e.to_string())?;
    for name in src.tree_names().map_err(|e| e.to_string())? {
        let tree = src
            .tree(&name)
            .map_err(|e| e.to_string())?
            .ok_or("a tree vanished from a pinned version")?;
        let mut it = tree.iter();
        loop {
            let mut w = db.begin_write().map_err(|e| e.to_string())?;
            let t = w.open_tree(&name).map_err(|e| e.to_string())?;
            let mut n = 0;
            let mut done = true;
            for e in it.by_ref() {
                let (k, v) = e.map_err(|e| e.to_string())?;
                w.put(t, k, v).map_err(|e| e.to_string())?;
                n += 1;
                if n >= COPY_BATCH {
                    done = false;
                    break;
                }
            }
            w.commit().map_err(|e| e.to_string())?;
            if done {
                break;
            }
        }
    }
    let mut w = db.begin_write().map_err(|e| e.to_string())?;
    w.set_marker(src.marker()).map_err(|e| e.to_string())?;
    w.commit().map_err(|e| e.to_string())?;
    db.close().map_err(|e| e.to_string())
}

/// `etch snapshot restore FILE --data-dir DIR`: checks the SHA-256 trailer and builds a
/// new data dir whose first start forms a new cluster from its flags, with the data.
pub fn restore(snapshot: &Path, data_dir: &Path) -> Result<(), String> {
    if data_dir.exists() {
        return Err(format!("data-dir {:?} exists", data_dir.display()));
    }
    let size = std::fs::metadata(snapshot)
        .map_err(|e| format!("{}: {e}", snapshot.display()))?
        .len();
    if size < 32 {
        return Err("snapshot file is too short".into());
    }
    std::fs::create_dir_all(member_dir(data_dir)).map_err(|e| e.to_string())?;
    // Whole or not at all: a failure takes the new data dir back out.
    restore_into(snapshot, data_dir, size - 32).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(data_dir);
    })
}

fn restore_into(snapshot: &Path, data_dir: &Path, len: u64) -> Result<(), String> {
    let db_path = db_file(data_dir);
    copy_checked(snapshot, &db_path, len)?;
    let store = Store::open(&db_path, btree::Options::default()).map_err(|e| e.to_string())?;
    store
        .db()
        .check()
        .map_err(|e| format!("snapshot data: {e}"))?;
    let mut tx = store.write().map_err(|e| e.to_string())?;
    // A new cluster: no Raft history, identity from the flags of the first start.
    tx.set_marker(&[]).map_err(|e| e.to_string())?;
    tx.meta_delete(CLUSTER_TREE, b"member_id")
        .map_err(|e| e.to_string())?;
    tx.meta_delete(CLUSTER_TREE, b"cluster_id")
        .map_err(|e| e.to_string())?;
    // The old cluster's alarms and members go: the first start lists the new members.
    let snap = store.read().map_err(|e| e.to_string())?;
    for tree in [ALARM_TREE, MEMBERS_TREE] {
        for (k, _) in snap.meta_entries(tree).map_err(|e| e.to_string())? {
            tx.meta_delete(tree, &k).map_err(|e| e.to_string())?;
        }
    }
    drop(snap);
    tx.commit().map_err(|e| e.to_string())?;
    store.checkpoint().map_err(|e| e.to_string())?;
    let f = std::fs::File::open(&db_path).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(())
}

/// Copies the first `len` bytes of `src` to `dest`, checking them against the SHA-256 in
/// the 32 bytes after them; a chunk at a time.
fn copy_checked(src: &Path, dest: &Path, len: u64) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let mut from = std::fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut to = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        from.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        sha.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let mut sum = [0u8; 32];
    from.read_exact(&mut sum).map_err(|e| e.to_string())?;
    if sha.finalize().as_slice() != sum {
        return Err("snapshot file integrity check failed: SHA-256 mismatch".into());
    }
    to.sync_all().map_err(|e| e.to_string())
}
