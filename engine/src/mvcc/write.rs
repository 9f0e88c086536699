//! The MVCC write transaction: puts, deletes, transactions and leases, each request at its
//! own main revision, all in one B+tree write transaction.

use super::keys::{self, KvRecord};
use super::read::{self, decode_lease, encode_lease};
use super::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Error, KEYS,
    KeyValue, LEASE_KEYS, LEASES, Lease, META, META_COMPACT, PutRequest, PutResponse, REVS,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, Result, Revision, Revs, Store, TxnRequest,
    TxnResponse, lock,
};
use crate::btree::{PageSource, Tree, TreeId, WriteTxn};

/// Writes to the store. Requests apply in order; each one that changes something gets the
/// next main revision. Nothing is visible to readers before [`MvccTxn::commit`].
pub struct MvccTxn<'s> {
    store: &'s Store,
    pub(crate) w: WriteTxn<'s>,
    pub(crate) t_keys: TreeId,
    pub(crate) t_revs: TreeId,
    pub(crate) t_meta: TreeId,
    t_leases: TreeId,
    t_lease_keys: TreeId,
    pub(crate) revs: Revs,
    /// Main revision of the request being applied.
    main: i64,
    sub: i64,
    changed: bool,
    /// A storage error hit mid-request: the transaction must not commit.
    broken: bool,
}

impl std::fmt::Debug for MvccTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MvccTxn")
            .field("revs", &self.revs)
            .field("main", &self.main)
            .finish()
    }
}

impl<'s> MvccTxn<'s> {
    pub(crate) fn begin(store: &'s Store) -> Result<MvccTxn<'s>> {
        let mut w = store.db.begin_write()?;
        // The writer lock is held: no other commit can change the revisions now.
        let revs = *lock(&store.revs);
        let t_keys = w.open_tree(KEYS)?;
        let t_revs = w.open_tree(REVS)?;
        let t_meta = w.open_tree(META)?;
        let t_leases = w.open_tree(LEASES)?;
        let t_lease_keys = w.open_tree(LEASE_KEYS)?;
        Ok(MvccTxn {
            store,
            w,
            t_keys,
            t_revs,
            t_meta,
            t_leases,
            t_lease_keys,
            revs,
            main: revs.current + 1,
            sub: 0,
            changed: false,
            broken: false,
        })
    }

    /// The revision reads see: including this request's own changes so far.
    fn read_rev(&self) -> i64 {
        if self.changed {
            self.main
        } else {
            self.revs.current
        }
    }

    /// The current revision (after every finished request).
    pub fn revision(&self) -> i64 {
        self.revs.current
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        self.changed = true;
        r
    }

    /// Ends a request: if it changed anything, its main revision becomes current.
    fn finish(&mut self) {
        if self.changed {
            self.revs.current = self.main;
        }
        self.main = self.revs.current + 1;
        self.sub = 0;
        self.changed = false;
    }

    /// Runs `f` as one request, marking the transaction broken on a storage error.
    fn request<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        assert!(!self.broken, "MvccTxn used after a storage error; drop it");
        let r = f(self);
        match &r {
            Err(Error::Storage(_)) | Err(Error::Corrupt(_)) => self.broken = true,
            _ => self.finish(),
        }
        r
    }

    // ----------------------------------------------------------------------------------
    // Requests

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let revs = Revs {
            current: self.read_rev(),
            ..self.revs
        };
        let t = self.w.tree(self.t_keys);
        read::range(Some(&t), &revs, req)
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        self.request(|s| {
            s.check_put(req, s.read_rev())?;
            s.apply_put(req)
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.request(|s| s.apply_delete_range(req))
    }

    /// etcd's Txn: compares (and the branch of every nested txn) are evaluated on the state
    /// before the txn; every chosen operation is validated before any applies; then all
    /// apply at one main revision.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse> {
        self.request(|s| {
            let before = s.read_rev();
            let mut path = Vec::new();
            s.choose_path(req, before, &mut path)?;
            let mut at = 0;
            s.check_txn(req, &path, &mut at, before)?;
            let mut at = 0;
            let mut resp = s.apply_txn(req, &path, &mut at)?;
            resp.revision = s.read_rev();
            Ok(resp)
        })
    }

    /// Creates a lease.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        self.request(|s| {
            let k = (id as u64).to_be_bytes();
            if s.w.get(s.t_leases, &k)?.is_some() {
                return Err(Error::LeaseExists);
            }
            s.w.put(
                s.t_leases,
                &k,
                &encode_lease(&Lease {
                    id,
                    ttl,
                    remaining_ttl: 0,
                }),
            )?;
            Ok(())
        })
    }

    /// Deletes a lease and every key attached to it, at one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<DeleteRangeResponse> {
        self.request(|s| {
            let k = (id as u64).to_be_bytes();
            if s.w.get(s.t_leases, &k)?.is_none() {
                return Err(Error::LeaseNotFound);
            }
            let attached = read::lease_keys(Some(&s.w.tree(s.t_lease_keys)), id)?;
            let mut deleted = 0;
            for key in attached {
                if let Some(kv) = read::get(Some(&s.w.tree(s.t_keys)), &key, s.read_rev())? {
                    s.delete_key(&kv)?;
                    deleted += 1;
                }
            }
            s.w.delete(s.t_leases, &k)?;
            Ok(DeleteRangeResponse {
                deleted,
                prev_kvs: Vec::new(),
                revision: s.read_rev(),
            })
        })
    }

    /// Records a lease's remaining TTL (etcd's lease checkpoint).
    pub fn lease_checkpoint(&mut self, id: i64, remaining_ttl: i64) -> Result<()> {
        self.request(|s| {
            let k = (id as u64).to_be_bytes();
            let Some(v) = s.w.get(s.t_leases, &k)? else {
                return Err(Error::LeaseNotFound);
            };
            let mut l = decode_lease(&k, v)?;
            l.remaining_ttl = remaining_ttl;
            s.w.put(s.t_leases, &k, &encode_lease(&l))?;
            Ok(())
        })
    }

    pub fn lease(&self, id: i64) -> Result<Option<Lease>> {
        read::lease(Some(&self.w.tree(self.t_leases)), id)
    }

    /// Keys attached to a lease, as this transaction sees them.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        read::lease_keys(Some(&self.w.tree(self.t_lease_keys)), id)
    }

    /// Sets a value in a small meta tree (members, auth, alarms, …); no revision.
    pub fn meta_put(&mut self, tree: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        let t = self.w.open_tree(tree)?;
        self.w.put(t, key, value)?;
        Ok(())
    }

    /// Reads a value of a meta tree as this transaction sees it.
    pub fn meta_get(&mut self, tree: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = self.w.open_tree(tree)?;
        Ok(self.w.get(t, key)?.map(<[u8]>::to_vec))
    }

    pub fn meta_delete(&mut self, tree: &[u8], key: &[u8]) -> Result<bool> {
        let t = self.w.open_tree(tree)?;
        Ok(self.w.delete(t, key)?)
    }

    /// Stores the caller's marker (e.g. applied Raft index, term, conf state) with this
    /// version; the checkpoint that covers it persists both atomically.
    pub fn set_marker(&mut self, marker: &[u8]) -> Result<()> {
        Ok(self.w.set_marker(marker)?)
    }

    /// Starts compaction at `rev`: reads below it fail from now on. The history is removed
    /// afterwards by [`Store::compact_step`], in bounded batches.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        self.request(|s| {
            if rev <= s.revs.compact {
                return Err(Error::Compacted);
            }
            if rev > s.read_rev() {
                return Err(Error::FutureRev);
            }
            s.w.put(s.t_meta, META_COMPACT, &rev.to_be_bytes())?;
            s.revs.compact = rev;
            Ok(())
        })
    }

    /// Writes a version with the revision it already has (a restore from a backup).
    /// Versions must come in increasing revision order, none below what the store holds;
    /// the current revision follows them.
    pub fn import_version(&mut self, v: &super::StoredVersion) -> Result<()> {
        if v.rev.main < self.revs.current || v.rev.main <= 0 || v.rev.sub < 0 {
            return Err(Error::Corrupt(format!(
                "imported revision {}_{} is not above the current revision {}",
                v.rev.main, v.rev.sub, self.revs.current
            )));
        }
        let key = &v.kv.key;
        let prev = read::get(Some(&self.w.tree(self.t_keys)), key, i64::MAX)?;
        let rec = if v.tombstone {
            KvRecord {
                tombstone: true,
                create_revision: 0,
                version: 0,
                lease: 0,
                value: &[],
            }
        } else {
            KvRecord {
                tombstone: false,
                create_revision: v.kv.create_revision,
                version: v.kv.version,
                lease: v.kv.lease,
                value: &v.kv.value,
            }
        };
        self.w.put(
            self.t_keys,
            &keys::key_at(key, v.rev),
            &keys::encode_kv(&rec),
        )?;
        self.put_rev(v.rev, v.tombstone, key)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != 0 && old_lease != rec.lease {
            self.w
                .delete(self.t_lease_keys, &keys::lease_key(old_lease, key))?;
        }
        if rec.lease != 0 {
            self.w
                .put(self.t_lease_keys, &keys::lease_key(rec.lease, key), &[])?;
        }
        self.revs.current = self.revs.current.max(v.rev.main);
        self.main = self.revs.current + 1;
        Ok(())
    }

    /// Restores a lease as a backup holds it.
    pub fn import_lease(&mut self, l: &Lease) -> Result<()> {
        let k = (l.id as u64).to_be_bytes();
        self.w.put(self.t_leases, &k, &encode_lease(l))?;
        Ok(())
    }

    /// Restores the compaction state of a backup: history up to `scheduled` is gone for
    /// readers, and the backup's data holds none up to `finished` (etch removes the rest).
    /// The current revision is at least `scheduled`.
    pub fn import_compacted(&mut self, scheduled: i64, finished: i64) -> Result<()> {
        if scheduled > 0 {
            self.w
                .put(self.t_meta, META_COMPACT, &scheduled.to_be_bytes())?;
            self.revs.compact = scheduled;
        }
        let finished = finished.min(scheduled);
        if finished > 0 {
            self.w.put(
                self.t_meta,
                super::META_COMPACT_DONE,
                &finished.to_be_bytes(),
            )?;
            self.revs.compact_done = finished;
        }
        self.revs.current = self.revs.current.max(scheduled);
        self.main = self.revs.current + 1;
        Ok(())
    }

    /// Publishes everything to readers. Returns the current revision.
    pub fn commit(mut self) -> Result<i64> {
        assert!(!self.broken, "MvccTxn committed after a storage error");
        self.finish();
        let revs = self.revs;
        let store = self.store;
        // The counters change while the writer lock is still held, so the next writer
        // starts from them. Readers copy the counters and open the B+tree version under
        // the same counters lock, so they never see revisions ahead of the data.
        self.w.commit_with(|| *lock(&store.revs) = revs)?;
        Ok(revs.current)
    }

    // ----------------------------------------------------------------------------------
    // Internals

    fn check_put(&self, req: &PutRequest, rev: i64) -> Result<()> {
        if req.ignore_value || req.ignore_lease {
            let t = self.w.tree(self.t_keys);
            if read::get(Some(&t), &req.key, rev)?.is_none() {
                return Err(Error::KeyNotFound);
            }
        }
        if req.lease != 0
            && !req.ignore_lease
            && self
                .w
                .get(self.t_leases, &(req.lease as u64).to_be_bytes())?
                .is_none()
        {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    fn apply_put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        let prev = read::get(Some(&self.w.tree(self.t_keys)), &req.key, self.read_rev())?;
        let (value, lease) = match &prev {
            Some(p) => (
                if req.ignore_value {
                    p.value.as_slice()
                } else {
                    req.value.as_slice()
                },
                if req.ignore_lease { p.lease } else { req.lease },
            ),
            // The key existed when the txn was validated but an earlier op of the same txn
            // deleted it. etcd aborts the process here; etch writes the request as given
            // (ignore_value implies an empty value, ignore_lease no lease).
            None => (req.value.as_slice(), req.lease),
        };
        let rev = self.next_rev();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev.main, 1),
        };
        let rec = KvRecord {
            tombstone: false,
            create_revision,
            version,
            lease,
            value,
        };
        self.w.put(
            self.t_keys,
            &keys::key_at(&req.key, rev),
            &keys::encode_kv(&rec),
        )?;
        self.put_rev(rev, false, &req.key)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != 0 && old_lease != lease {
            self.w
                .delete(self.t_lease_keys, &keys::lease_key(old_lease, &req.key))?;
        }
        if lease != 0 {
            self.w
                .put(self.t_lease_keys, &keys::lease_key(lease, &req.key), &[])?;
        }
        Ok(PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
            revision: self.main,
        })
    }

    fn put_rev(&mut self, rev: Revision, tombstone: bool, key: &[u8]) -> Result<()> {
        let mut v = Vec::with_capacity(1 + key.len());
        v.push(if tombstone { keys::FLAG_TOMBSTONE } else { 0 });
        v.extend_from_slice(key);
        self.w.put(self.t_revs, &keys::rev_key(rev), &v)?;
        Ok(())
    }

    /// Writes a tombstone for a live key.
    fn delete_key(&mut self, kv: &KeyValue) -> Result<()> {
        let rev = self.next_rev();
        let rec = KvRecord {
            tombstone: true,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: &[],
        };
        self.w.put(
            self.t_keys,
            &keys::key_at(&kv.key, rev),
            &keys::encode_kv(&rec),
        )?;
        self.put_rev(rev, true, &kv.key)?;
        if kv.lease != 0 {
            self.w
                .delete(self.t_lease_keys, &keys::lease_key(kv.lease, &kv.key))?;
        }
        Ok(())
    }

    fn apply_delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let kvs = read::all(
            Some(&self.w.tree(self.t_keys)),
            &req.key,
            &req.range_end,
            self.read_rev(),
        )?;
        for kv in &kvs {
            self.delete_key(kv)?;
        }
        Ok(DeleteRangeResponse {
            deleted: kvs.len() as i64,
            prev_kvs: if req.prev_kv { kvs } else { Vec::new() },
            revision: self.read_rev(),
        })
    }

    fn compare(&self, c: &Compare, rev: i64) -> Result<bool> {
        compare_at(Some(&self.w.tree(self.t_keys)), c, rev)
    }

    /// Records, depth first, which branch every (nested) txn takes.
    fn choose_path(&self, req: &TxnRequest, rev: i64, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &req.compare {
            if !self.compare(c, rev)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &req.success } else { &req.failure } {
            if let RequestOp::Txn(t) = op {
                self.choose_path(t, rev, path)?;
            }
        }
        Ok(())
    }

    fn check_txn(&self, req: &TxnRequest, path: &[bool], at: &mut usize, rev: i64) -> Result<()> {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &req.success } else { &req.failure } {
            match op {
                RequestOp::Put(p) => self.check_put(p, rev)?,
                RequestOp::Range(r) => {
                    if r.revision > rev {
                        return Err(Error::FutureRev);
                    }
                    if r.revision > 0 && r.revision < self.revs.compact {
                        return Err(Error::Compacted);
                    }
                }
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => self.check_txn(t, path, at, rev)?,
            }
        }
        Ok(())
    }

    fn apply_txn(
        &mut self,
        req: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse> {
        let ok = path[*at];
        *at += 1;
        let ops = if ok { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.apply_put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.apply_delete_range(d)?),
                RequestOp::Txn(t) => {
                    let mut r = self.apply_txn(t, path, at)?;
                    r.revision = self.read_rev();
                    ResponseOp::Txn(r)
                }
            });
        }
        Ok(TxnResponse {
            succeeded: ok,
            responses,
            revision: 0,
        })
    }
}

/// Evaluates one compare against the keys tree at revision `rev`.
pub(crate) fn compare_at<S: PageSource + ?Sized>(
    keys_tree: Option<&Tree<'_, S>>,
    c: &Compare,
    rev: i64,
) -> Result<bool> {
    let kvs = read::all(keys_tree, &c.key, &c.range_end, rev)?;
    if kvs.is_empty() {
        // A missing key compares as zeroes, except that a value compare always fails.
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}
