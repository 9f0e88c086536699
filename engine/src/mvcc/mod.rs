//! etcd's data model on the B+tree: revisions, key versions, ranges at a revision,
//! transactions, compaction, leases and the change feed. Nothing held in memory grows with
//! the number of keys: the key index is the `keys` tree.
//!
//! A [`Store`] is read with [`Store::read`] (a snapshot at the current revision) and
//! written with [`Store::write`], which opens one B+tree write transaction in which any
//! number of requests apply, each getting its own main revision when it writes.

mod compact;
pub mod etcd;
mod install;
mod keys;
mod read;
mod write;

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::btree::{self, Db, ReadTxn, Tree, View};

pub use compact::{CompactProgress, HashKv, StoredVersion};
pub use write::MvccTxn;

/// A revision: `main` counts writing requests, `sub` the changes within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// A change: for a delete, `kv` holds the key and the deleting revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's RangeRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    /// Empty: the single key. `[0]`: every key ≥ `key`. Otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    pub limit: i64,
    /// ≤ 0: the current revision.
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
    /// The store's current revision (etcd's header revision for a Range).
    pub revision: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
    pub revision: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
    pub revision: i64,
}

/// A lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
    /// Remaining TTL as last checkpointed (0: never checkpointed).
    pub remaining_ttl: i64,
}

/// Operating errors. The texts are etcd's where etcd has one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("corrupt MVCC data: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] btree::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) const KEYS: &[u8] = b"mvcc.keys";
pub(crate) const REVS: &[u8] = b"mvcc.revs";
pub(crate) const META: &[u8] = b"mvcc.meta";
pub(crate) const LEASES: &[u8] = b"mvcc.leases";
pub(crate) const LEASE_KEYS: &[u8] = b"mvcc.lease_keys";

pub(crate) const META_COMPACT: &[u8] = b"compact_rev";
pub(crate) const META_COMPACT_DONE: &[u8] = b"compact_done_rev";

/// Revisions known without reading the trees.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Revs {
    pub current: i64,
    pub compact: i64,
    /// Physical compaction has removed history up to here.
    pub compact_done: i64,
}

/// The MVCC store over one B+tree data file.
pub struct Store {
    db: Db,
    revs: Arc<Mutex<Revs>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revs", &*lock(&self.revs))
            .finish()
    }
}

pub(crate) use crate::util::lock;

pub(crate) fn corrupt(what: &str) -> Error {
    Error::Corrupt(what.to_string())
}

pub(crate) fn be_i64(v: Option<&[u8]>) -> Result<i64> {
    match v {
        None => Ok(0),
        Some(b) => {
            Ok(i64::from_be_bytes(b.try_into().map_err(|_| {
                Error::Corrupt("meta value is not 8 bytes".into())
            })?))
        }
    }
}

impl Revs {
    /// The revisions a version of the data holds.
    pub(crate) fn of(r: &ReadTxn) -> Result<Revs> {
        let mut revs = Revs::default();
        if let Some(meta) = r.tree(META)? {
            revs.compact = be_i64(meta.get(META_COMPACT)?)?;
            revs.compact_done = be_i64(meta.get(META_COMPACT_DONE)?)?;
        }
        let last = match r.tree(REVS)? {
            Some(t) => match t.last()? {
                Some((k, _)) => {
                    keys::decode_rev_key(k)
                        .ok_or_else(|| Error::Corrupt("bad revision key".into()))?
                        .main
                }
                None => 0,
            },
            None => 0,
        };
        // The store starts at revision 1; compaction never removes the current revision's
        // record unless it was compacted at exactly that revision.
        revs.current = last.max(revs.compact).max(1);
        Ok(revs)
    }
}

impl Store {
    /// Opens the store in the data file at `path`. Reads only a few pages: nothing is
    /// loaded in proportion to the data.
    pub fn open(path: &Path, opts: btree::Options) -> Result<Store> {
        Store::from_db(Db::open(path, opts)?)
    }

    pub fn from_db(db: Db) -> Result<Store> {
        let revs = Revs::of(&db.begin_read()?)?;
        Ok(Store {
            db,
            revs: Arc::new(Mutex::new(revs)),
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn current_revision(&self) -> i64 {
        lock(&self.revs).current
    }

    pub fn compact_revision(&self) -> i64 {
        lock(&self.revs).compact
    }

    /// A read snapshot at the current revision.
    pub fn read(&self) -> Result<Snapshot> {
        // Commit publishes the B+tree version first and then the revisions under this lock;
        // opening the version while holding the lock gives data at least as new as the
        // revisions, and never a compaction step the revisions do not cover.
        let revs = lock(&self.revs);
        let txn = self.db.begin_read()?;
        let r = *revs;
        drop(revs);
        Ok(Snapshot { txn, revs: r })
    }

    /// Begins the write transaction.
    pub fn write(&self) -> Result<MvccTxn<'_>> {
        MvccTxn::begin(self)
    }

    /// Makes everything committed durable.
    pub fn checkpoint(&self) -> Result<()> {
        Ok(self.db.checkpoint()?)
    }

    /// The marker (e.g. applied Raft index) of the current version.
    pub fn marker(&self) -> Result<Vec<u8>> {
        Ok(self.db.begin_read()?.marker().to_vec())
    }
}

/// A consistent read view at one revision.
pub struct Snapshot {
    txn: ReadTxn,
    revs: Revs,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revs", &self.revs)
            .finish()
    }
}

impl Snapshot {
    pub fn revision(&self) -> i64 {
        self.revs.current
    }

    pub fn compact_revision(&self) -> i64 {
        self.revs.compact
    }

    fn tree(&self, name: &[u8]) -> Result<Option<Tree<'_, View>>> {
        Ok(self.txn.tree(name)?)
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        read::range(self.tree(KEYS)?.as_ref(), &self.revs, req)
    }

    /// One piece of a streamed range: up to `max_kvs` keys (about `max_bytes` of them)
    /// of `[key, range_end)` (range_end as in Range) live at `rev` (≤ 0: this snapshot's
    /// revision), in key order, without counting the rest. Returns them and whether more
    /// follow.
    pub fn range_chunk(
        &self,
        key: &[u8],
        range_end: &[u8],
        rev: i64,
        max_kvs: usize,
        max_bytes: usize,
        keys_only: bool,
    ) -> Result<(Vec<KeyValue>, bool)> {
        if rev > self.revs.current {
            return Err(Error::FutureRev);
        }
        let rev = if rev <= 0 { self.revs.current } else { rev };
        if rev < self.revs.compact {
            return Err(Error::Compacted);
        }
        read::chunk(
            self.tree(KEYS)?.as_ref(),
            key,
            range_end,
            rev,
            max_kvs,
            max_bytes,
            keys_only,
        )
    }

    /// Events with revision ≥ `start_rev` for keys in `[key, range_end)` (range_end as in
    /// Range), in revision order: about `max` of them, never stopping inside a main
    /// revision (a multi-key txn is returned whole), so a caller resumes at the last
    /// returned main revision + 1.
    pub fn events(
        &self,
        start_rev: i64,
        key: &[u8],
        range_end: &[u8],
        max: usize,
    ) -> Result<Vec<Event>> {
        if start_rev < self.revs.compact {
            return Err(Error::Compacted);
        }
        compact::events(
            self.tree(REVS)?.as_ref(),
            self.tree(KEYS)?.as_ref(),
            &self.revs,
            start_rev,
            key,
            range_end,
            max,
        )
    }

    /// Evaluates a txn whose branches hold only ranges (nothing to write) at this
    /// snapshot, as the write path would: compares first, then the chosen branch's ranges.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse> {
        let keys = self.tree(KEYS)?;
        self.read_txn(keys.as_ref(), req)
    }

    fn read_txn(&self, keys: Option<&Tree<'_, View>>, req: &TxnRequest) -> Result<TxnResponse> {
        let rev = self.revs.current;
        let mut ok = true;
        for c in &req.compare {
            if !write::compare_at(keys, c, rev)? {
                ok = false;
                break;
            }
        }
        let ops = if ok { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(read::range(keys, &self.revs, r)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.read_txn(keys, t)?),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    panic!("txn_read_only given a txn that writes")
                }
            });
        }
        Ok(TxnResponse {
            succeeded: ok,
            responses,
            revision: rev,
        })
    }

    pub fn hash_kv(&self, rev: i64) -> Result<HashKv> {
        compact::hash_kv(
            self.tree(REVS)?.as_ref(),
            self.tree(KEYS)?.as_ref(),
            &self.revs,
            rev,
        )
    }

    /// Every version compaction keeps, in revision order (see [`StoredVersion`]), until
    /// `f` returns false. Reads a page at a time: memory does not grow with the data.
    pub fn for_each_version(&self, f: &mut dyn FnMut(StoredVersion) -> Result<bool>) -> Result<()> {
        compact::for_each_version(
            self.tree(REVS)?.as_ref(),
            self.tree(KEYS)?.as_ref(),
            &self.revs,
            self.revs.current,
            f,
        )
    }

    pub fn lease(&self, id: i64) -> Result<Option<Lease>> {
        read::lease(self.tree(LEASES)?.as_ref(), id)
    }

    pub fn leases(&self) -> Result<Vec<Lease>> {
        read::leases(self.tree(LEASES)?.as_ref())
    }

    /// Keys attached to a lease.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        read::lease_keys(self.tree(LEASE_KEYS)?.as_ref(), id)
    }

    /// A value in a small meta tree (members, auth, alarms, …).
    pub fn meta_get(&self, tree: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.tree(tree)? {
            Some(t) => Ok(t.get(key)?.map(<[u8]>::to_vec)),
            None => Ok(None),
        }
    }

    /// Every entry of a small meta tree, in key order.
    pub fn meta_entries(&self, tree: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(t) = self.tree(tree)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in t.iter() {
            let (k, v) = e?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    pub fn marker(&self) -> &[u8] {
        self.txn.marker()
    }

    /// The B+tree version this snapshot reads (for copying the whole file).
    pub fn btree(&self) -> &ReadTxn {
        &self.txn
    }
}

/// Resolves etcd's range_end convention: None = unbounded above; Some(end) = exclusive end;
/// the single-key case is reported by `single`.
pub(crate) fn range_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (bool, Option<&'a [u8]>) {
    if range_end.is_empty() {
        (true, Some(key))
    } else if range_end == [0] {
        (false, None)
    } else {
        (false, Some(range_end))
    }
}
