//! The change feed, HashKV, and incremental compaction.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::etcd;
use super::keys::{self, KvRecord};
use super::read::to_kv;
use super::{
    Error, Event, EventType, KeyValue, META_COMPACT_DONE, Result, Revision, Revs, Store, corrupt,
    range_bounds,
};
use crate::btree::{PageSource, Tree};

fn in_range(user: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_bounds(key, range_end) {
        (true, _) => user == key,
        (false, None) => user >= key,
        (false, Some(end)) => user >= key && user < end,
    }
}

/// The stored record of `user` at `rev`, and the version just before it (if live).
fn version_and_prev<'a, S: PageSource + ?Sized>(
    keys_tree: &Tree<'a, S>,
    user: &[u8],
    rev: Revision,
) -> Result<(KvRecord<'a>, Option<KeyValue>)> {
    let mut c = keys_tree.cursor();
    c.seek(&keys::key_at(user, rev))?;
    let (k, v) = c
        .current()?
        .ok_or_else(|| corrupt("revision without a key version"))?;
    if keys::key_revision(k) != rev || !keys::is_version_of(k, &keys::key_prefix(user)) {
        return Err(corrupt("revision without a key version"));
    }
    let rec = keys::decode_kv(v).ok_or_else(|| corrupt("malformed key version"))?;
    let mut prev = None;
    if c.next()? {
        let (pk, pv) = c.current()?.expect("valid cursor");
        if keys::is_version_of(pk, &keys::key_prefix(user)) {
            let prec = keys::decode_kv(pv).ok_or_else(|| corrupt("malformed key version"))?;
            if !prec.tombstone {
                prev = Some(to_kv(user, keys::key_revision(pk), &prec, true));
            }
        }
    }
    Ok((rec, prev))
}

/// Events from `start_rev` (main) up to the snapshot's current revision: at least `max`
/// unless the feed ends first, and always every event of the last main revision returned.
pub(crate) fn events<S: PageSource + ?Sized>(
    revs_tree: Option<&Tree<'_, S>>,
    keys_tree: Option<&Tree<'_, S>>,
    revs: &Revs,
    start_rev: i64,
    key: &[u8],
    range_end: &[u8],
    max: usize,
) -> Result<Vec<Event>> {
    let (upto, compact) = (revs.current, revs.compact);
    let (Some(revs_tree), Some(keys_tree)) = (revs_tree, keys_tree) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let start = keys::rev_key(Revision {
        main: start_rev.max(0),
        sub: 0,
    });
    let mut last_main = 0;
    for e in revs_tree.range(&start, None) {
        let (rk, rv) = e?;
        let rev = keys::decode_rev_key(rk).ok_or_else(|| corrupt("malformed revision key"))?;
        // Stop at `max`, but never inside a main revision: callers resume at the next one.
        if rev.main > upto || (out.len() >= max && rev.main != last_main) {
            break;
        }
        last_main = rev.main;
        let user = rv
            .get(1..)
            .ok_or_else(|| corrupt("malformed revision value"))?;
        if !in_range(user, key, range_end) {
            continue;
        }
        // At the compact revision itself only what compaction keeps is visible, whether or
        // not it has physically run: the newest version of a key, unless a tombstone.
        if rev.main <= compact
            && (rv[0] & keys::FLAG_TOMBSTONE != 0 || !is_latest_at(keys_tree, user, rev, compact)?)
        {
            continue;
        }
        let (rec, mut prev_kv) = version_and_prev(keys_tree, user, rev)?;
        // The previous version is read at revision - 1, which is gone below the compact
        // revision (whether or not compaction has physically removed it yet).
        if rev.main - 1 < compact {
            prev_kv = None;
        }
        let (kind, kv) = if rec.tombstone {
            (
                EventType::Delete,
                KeyValue {
                    key: user.to_vec(),
                    mod_revision: rev.main,
                    ..KeyValue::default()
                },
            )
        } else {
            (EventType::Put, to_kv(user, rev, &rec, true))
        };
        out.push(Event { kind, kv, prev_kv });
    }
    Ok(out)
}

/// Whether version `rev` of `user` (with `rev.main ≤ at`) is the newest one at or before
/// `at`, i.e. the one compaction at `at` keeps (unless it is a tombstone).
fn is_latest_at<S: PageSource + ?Sized>(
    keys_tree: &Tree<'_, S>,
    user: &[u8],
    rev: Revision,
    at: i64,
) -> Result<bool> {
    let mut c = keys_tree.cursor();
    c.seek(&keys::key_at_or_before(user, at))?;
    match c.key()? {
        Some(k) if keys::is_version_of(k, &keys::key_prefix(user)) => {
            Ok(keys::key_revision(k) == rev)
        }
        _ => Err(corrupt("revision without a key version")),
    }
}

/// One stored version, as etcd's `key` bucket holds it: a put's whole `KeyValue`, or a
/// tombstone (`kv` holds only the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub rev: Revision,
    pub tombstone: bool,
    pub kv: KeyValue,
}

/// Calls `f` for every version up to main revision `upto` that compaction at the compact
/// revision keeps (whether or not it has physically run), in revision order, until `f`
/// returns false: the newest version at or below the compact revision of each key live
/// there, and every version above it.
pub(crate) fn for_each_version<S: PageSource + ?Sized>(
    revs_tree: Option<&Tree<'_, S>>,
    keys_tree: Option<&Tree<'_, S>>,
    revs: &Revs,
    upto: i64,
    f: &mut dyn FnMut(StoredVersion) -> Result<bool>,
) -> Result<()> {
    let (Some(revs_tree), Some(keys_tree)) = (revs_tree, keys_tree) else {
        return Ok(());
    };
    for e in revs_tree.iter() {
        let (rk, rv) = e?;
        let rev = keys::decode_rev_key(rk).ok_or_else(|| corrupt("malformed revision key"))?;
        if rev.main > upto {
            break;
        }
        let user = rv
            .get(1..)
            .ok_or_else(|| corrupt("malformed revision value"))?;
        let tombstone = rv[0] & keys::FLAG_TOMBSTONE != 0;
        if rev.main <= revs.compact
            && (tombstone || !is_latest_at(keys_tree, user, rev, revs.compact)?)
        {
            continue;
        }
        let v = keys_tree
            .get(&keys::key_at(user, rev))?
            .ok_or_else(|| corrupt("revision without a key version"))?;
        let rec = keys::decode_kv(v).ok_or_else(|| corrupt("malformed key version"))?;
        let kv = if rec.tombstone {
            KeyValue {
                key: user.to_vec(),
                ..KeyValue::default()
            }
        } else {
            to_kv(user, rev, &rec, true)
        };
        if !f(StoredVersion {
            rev,
            tombstone: rec.tombstone,
            kv,
        })? {
            break;
        }
    }
    Ok(())
}

/// HashKV's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    pub compact_revision: i64,
    pub hash_revision: i64,
}

/// etcd's HashKV: CRC-32C of `key`, then of each stored version up to `rev` as etcd's
/// `key` bucket holds it (revision key, then `mvccpb.KeyValue`), where a version at or
/// below the compact revision counts only if it is still its key's live version at `rev`
/// (unless no key is live at `rev`: then etcd filters nothing). It does not depend on how
/// far physical compaction has got, and equals etcd's for the same history.
pub(crate) fn hash_kv<S: PageSource + ?Sized>(
    revs_tree: Option<&Tree<'_, S>>,
    keys_tree: Option<&Tree<'_, S>>,
    revs: &Revs,
    rev: i64,
) -> Result<HashKv> {
    let rev = if rev <= 0 { revs.current } else { rev };
    if rev > revs.current {
        return Err(Error::FutureRev);
    }
    if rev < revs.compact {
        return Err(Error::Compacted);
    }
    let mut h = etcd::Crc32c::default();
    h.update(b"key");
    let mut none_live: Option<bool> = None;
    for_each_version(revs_tree, keys_tree, revs, rev, &mut |v| {
        if v.rev.main <= revs.compact {
            let keys_tree = keys_tree.expect("versions come from the keys tree");
            if !is_latest_at(keys_tree, &v.kv.key, v.rev, rev)? {
                let none = match none_live {
                    Some(n) => n,
                    None => {
                        let n = !any_live_at(keys_tree, rev)?;
                        none_live = Some(n);
                        n
                    }
                };
                if !none {
                    return Ok(true);
                }
            }
        }
        h.update(&etcd::revision_key(v.rev, v.tombstone));
        h.update(&etcd::encode_key_value(&v.kv, v.tombstone));
        Ok(true)
    })?;
    Ok(HashKv {
        hash: h.finish(),
        // etcd's word for "never compacted".
        compact_revision: if revs.compact == 0 { -1 } else { revs.compact },
        hash_revision: rev,
    })
}

/// Whether any key is live at `rev`: one key found ends the walk.
fn any_live_at<S: PageSource + ?Sized>(keys_tree: &Tree<'_, S>, rev: i64) -> Result<bool> {
    let (kvs, _) = super::read::chunk(Some(keys_tree), &[0], &[0], rev, 1, 0, true)?;
    Ok(!kvs.is_empty())
}

/// A compaction step stops once it has dirtied this many pages, so that its commit (which
/// writes them while writers wait) stays short.
const STEP_DIRTY_PAGES_MAX: usize = 256;

/// Progress of physical compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactProgress {
    /// History is removed up to this main revision.
    pub done_revision: i64,
    /// Versions removed by this step.
    pub removed: usize,
    /// Nothing left to remove.
    pub finished: bool,
}

impl Store {
    /// Removes compacted history in one short write transaction: up to about `batch`
    /// revisions, stopping early once `budget` has passed or the step has dirtied 256 pages
    /// (after at least one main revision, so every step makes progress). Call until `finished`; writers wait at most
    /// for one step.
    pub fn compact_step(&self, batch: usize, budget: Duration) -> Result<CompactProgress> {
        let deadline = Instant::now() + budget;
        let mut tx = self.write()?;
        let (target, done) = (tx.revs.compact, tx.revs.compact_done);
        if done >= target {
            return Ok(CompactProgress {
                done_revision: done,
                removed: 0,
                finished: true,
            });
        }
        // Collect whole main revisions, about `batch` records, then decide and delete.
        let mut todo: Vec<(Revision, bool, Vec<u8>)> = Vec::new();
        let mut last_main = done;
        {
            let revs_tree = tx.w.tree(tx.t_revs);
            let start = keys::rev_key(Revision {
                main: done + 1,
                sub: 0,
            });
            for e in revs_tree.range(&start, None) {
                let (rk, rv) = e?;
                let r =
                    keys::decode_rev_key(rk).ok_or_else(|| corrupt("malformed revision key"))?;
                if r.main > target || (todo.len() >= batch && r.main != last_main) {
                    break;
                }
                let user = rv
                    .get(1..)
                    .ok_or_else(|| corrupt("malformed revision value"))?;
                todo.push((r, rv[0] & keys::FLAG_TOMBSTONE != 0, user.to_vec()));
                last_main = r.main;
            }
        }
        let mut finished = todo.len() < batch || last_main >= target;
        let mut done_revision = if finished { target } else { last_main };
        // For each key changed in this stretch, keep only its newest version at or before
        // the target (none if that is a tombstone). Older versions may predate `done`: an
        // earlier compaction kept them as the newest at its own target.
        let mut removed = 0;
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let first_main = todo.first().map_or(0, |t| t.0.main);
        for (r, _, user) in &todo {
            if r.main != first_main
                && (Instant::now() >= deadline || tx.w.dirty_pages() >= STEP_DIRTY_PAGES_MAX)
            {
                // Out of time, or the commit would write too much: this main revision and
                // later ones are left for the next step (redoing part of one is harmless).
                finished = false;
                done_revision = r.main - 1;
                break;
            }
            if !seen.insert(user) {
                continue;
            }
            let mut doomed = Vec::new();
            {
                let keys_tree = tx.w.tree(tx.t_keys);
                let prefix = keys::key_prefix(user);
                let mut c = keys_tree.cursor();
                c.seek(&keys::key_at_or_before(user, target))?;
                let mut first = true;
                while let Some((k, v)) = c.current()? {
                    if !keys::is_version_of(k, &prefix) {
                        break;
                    }
                    let rec = keys::decode_kv(v).ok_or_else(|| corrupt("malformed key version"))?;
                    if !first || rec.tombstone {
                        doomed.push(keys::key_revision(k));
                    }
                    first = false;
                    c.next()?;
                }
            }
            for r in doomed {
                tx.w.delete(tx.t_keys, &keys::key_at(user, r))?;
                tx.w.delete(tx.t_revs, &keys::rev_key(r))?;
                removed += 1;
            }
        }
        tx.w.put(tx.t_meta, META_COMPACT_DONE, &done_revision.to_be_bytes())?;
        tx.revs.compact_done = done_revision;
        tx.commit()?;
        Ok(CompactProgress {
            done_revision,
            removed,
            finished,
        })
    }

    /// Runs compaction steps until the history below the compact revision is gone.
    pub fn compact_finish(&self, batch: usize) -> Result<usize> {
        let mut removed = 0;
        loop {
            let p = self.compact_step(batch, Duration::from_millis(5))?;
            removed += p.removed;
            if p.finished {
                return Ok(removed);
            }
        }
    }
}
