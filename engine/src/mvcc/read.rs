//! Reading at a revision: ranges straight from the `keys` tree, leases.

use std::cmp::Ordering;

use super::keys::{self, KvRecord};
use super::{
    Error, KeyValue, Lease, RangeRequest, RangeResponse, Result, Revision, Revs, SortOrder,
    SortTarget, corrupt, range_bounds,
};
use crate::btree::{PageSource, Tree};

/// Calls `f` with each live key in the range at revision `rev`, in key order, until it
/// returns false. `f` gets the `keys` tree key (decode the user key with
/// [`keys::decode_key`] only when needed), the version's revision and record. Reads the
/// tree directly, allocating nothing per key: memory does not grow with the range.
pub(crate) fn visit<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
    mut f: impl FnMut(&[u8], Revision, KvRecord<'_>) -> Result<bool>,
) -> Result<()> {
    let Some(tree) = tree else { return Ok(()) };
    let (single, end) = range_bounds(key, range_end);
    if !single && end.is_some_and(|e| e <= key) {
        return Ok(());
    }
    // Escaping keeps order, so bounds compare on encoded keys: user < end ⟺ k < esc(end).
    let end_enc = if single {
        None
    } else {
        end.map(keys::key_start)
    };
    let single_prefix = single.then(|| keys::key_prefix(key));
    let mut c = tree.cursor();
    c.seek(&if single {
        keys::key_at_or_before(key, rev)
    } else {
        keys::key_start(key)
    })?;
    let mut prefix: Vec<u8> = Vec::new();
    let mut target: Vec<u8> = Vec::new();
    'outer: while let Some(k) = c.key()? {
        match (&single_prefix, &end_enc) {
            (Some(p), _) if !keys::is_version_of(k, p) => break,
            (None, Some(e)) if k >= e.as_slice() => break,
            _ => {}
        }
        if k.len() < 18 {
            return Err(corrupt("malformed key in the keys tree"));
        }
        prefix.clear();
        prefix.extend_from_slice(&k[..k.len() - 16]);
        let mut r = keys::key_revision(k);
        if r.main > rev {
            // Newer than asked: jump to this key's version at or before `rev`.
            target.clear();
            target.extend_from_slice(&prefix);
            target.extend_from_slice(&(!(rev as u64)).to_be_bytes());
            target.extend_from_slice(&0u64.to_be_bytes());
            c.seek(&target)?;
            match c.key()? {
                Some(k2) if keys::is_version_of(k2, &prefix) => r = keys::key_revision(k2),
                _ => continue 'outer,
            }
        }
        let (k, v) = c.current()?.expect("cursor is on an entry");
        let rec = keys::decode_kv(v).ok_or_else(|| corrupt("malformed value in the keys tree"))?;
        if !rec.tombstone && !f(k, r, rec)? {
            return Ok(());
        }
        if single {
            break;
        }
        // Skip this key's older versions: step a little, then seek past them.
        for _ in 0..2 {
            if !c.next()? {
                break 'outer;
            }
            if !keys::is_version_of(c.key()?.expect("valid cursor"), &prefix) {
                continue 'outer;
            }
        }
        // `prefix` ends in the terminator 00 01; 00 02 sorts after all its versions.
        target.clear();
        target.extend_from_slice(&prefix[..prefix.len() - 2]);
        target.extend_from_slice(&keys::PAST_KEY);
        c.seek(&target)?;
    }
    Ok(())
}

fn user_key(k: &[u8]) -> Result<Vec<u8>> {
    Ok(keys::decode_key(k)
        .ok_or_else(|| corrupt("malformed key in the keys tree"))?
        .0)
}

pub(crate) fn to_kv(key: &[u8], rev: Revision, rec: &KvRecord<'_>, with_value: bool) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: rec.create_revision,
        mod_revision: rev.main,
        version: rec.version,
        value: if with_value {
            rec.value.to_vec()
        } else {
            Vec::new()
        },
        lease: rec.lease,
    }
}

/// The latest live version of `key` at `rev`.
pub(crate) fn get<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    key: &[u8],
    rev: i64,
) -> Result<Option<KeyValue>> {
    let mut out = None;
    visit(tree, key, &[], rev, |k, r, rec| {
        out = Some(to_kv(&user_key(k)?, r, &rec, true));
        Ok(false)
    })?;
    Ok(out)
}

/// Every live key-value in a range at `rev` (for txn compares and deletes).
pub(crate) fn all<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    visit(tree, key, range_end, rev, |k, r, rec| {
        out.push(to_kv(&user_key(k)?, r, &rec, true));
        Ok(true)
    })?;
    Ok(out)
}

/// etcd's Range, including its order of limit, filters and sorting.
pub(crate) fn range<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    revs: &Revs,
    req: &RangeRequest,
) -> Result<RangeResponse> {
    let cur = revs.current;
    if req.revision > cur {
        return Err(Error::FutureRev);
    }
    let rev = if req.revision <= 0 { cur } else { req.revision };
    if rev < revs.compact {
        return Err(Error::Compacted);
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd fetches everything when it must sort or filter, else one past the limit.
    let fetch = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
    };
    let mut count: i64 = 0;
    let mut kvs = Vec::new();
    visit(tree, &req.key, &req.range_end, rev, |k, r, rec| {
        count += 1;
        if !req.count_only && kvs.len() < fetch {
            kvs.push(to_kv(&user_key(k)?, r, &rec, !req.keys_only));
        }
        Ok(true)
    })?;
    if req.count_only {
        return Ok(RangeResponse {
            kvs: Vec::new(),
            more: false,
            count,
            revision: cur,
        });
    }
    if filtered {
        kvs.retain(|kv| {
            !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
                || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
                || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
                || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
        });
    }
    let order = match (req.sort_target, req.sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, o) => o,
    };
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Stable: equal targets keep key order (etcd's order for ties is unspecified).
        if order == SortOrder::Ascend {
            kvs.sort_by(cmp);
        } else {
            kvs.sort_by(|a, b| cmp(b, a));
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    Ok(RangeResponse {
        kvs,
        more,
        count,
        revision: cur,
    })
}

pub(crate) fn decode_lease(k: &[u8], v: &[u8]) -> Result<Lease> {
    if k.len() != 8 || v.len() != 16 {
        return Err(Error::Corrupt("malformed lease record".into()));
    }
    Ok(Lease {
        id: u64::from_be_bytes(k.try_into().expect("8 bytes")) as i64,
        ttl: i64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
        remaining_ttl: i64::from_le_bytes(v[8..].try_into().expect("8 bytes")),
    })
}

pub(crate) fn encode_lease(l: &Lease) -> Vec<u8> {
    let mut v = l.ttl.to_le_bytes().to_vec();
    v.extend_from_slice(&l.remaining_ttl.to_le_bytes());
    v
}

pub(crate) fn lease<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    id: i64,
) -> Result<Option<Lease>> {
    let Some(t) = tree else { return Ok(None) };
    let k = (id as u64).to_be_bytes();
    match t.get(&k)? {
        Some(v) => Ok(Some(decode_lease(&k, v)?)),
        None => Ok(None),
    }
}

pub(crate) fn leases<S: PageSource + ?Sized>(tree: Option<&Tree<'_, S>>) -> Result<Vec<Lease>> {
    let Some(t) = tree else { return Ok(Vec::new()) };
    t.iter()
        .map(|e| {
            let (k, v) = e?;
            decode_lease(k, v)
        })
        .collect()
}

pub(crate) fn lease_keys<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    id: i64,
) -> Result<Vec<Vec<u8>>> {
    let Some(t) = tree else { return Ok(Vec::new()) };
    let start = (id as u64).to_be_bytes();
    let end = (id as u64).checked_add(1).map(u64::to_be_bytes);
    t.range(&start, end.as_ref().map(|e| &e[..]))
        .map(|e| Ok(e?.0[8..].to_vec()))
        .collect()
}

/// Up to `max_kvs` keys (and about `max_bytes` of them) of `[key, range_end)` live at
/// `rev`, in key order, with no count: the pieces of a streamed range. Returns them and
/// whether more follow.
pub(crate) fn chunk<S: PageSource + ?Sized>(
    tree: Option<&Tree<'_, S>>,
    key: &[u8],
    range_end: &[u8],
    rev: i64,
    max_kvs: usize,
    max_bytes: usize,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, bool)> {
    let mut kvs = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    visit(tree, key, range_end, rev, |k, r, rec| {
        if kvs.len() >= max_kvs.max(1) || (!kvs.is_empty() && bytes >= max_bytes) {
            more = true;
            return Ok(false);
        }
        let kv = to_kv(&user_key(k)?, r, &rec, !keys_only);
        bytes += kv.key.len() + kv.value.len() + 32;
        kvs.push(kv);
        Ok(true)
    })?;
    Ok((kvs, more))
}
