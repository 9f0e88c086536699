//! The member list: replicated data in the `etch.members` meta tree (key: member id, u64
//! BE; value: `etcdserverpb.Member`). Every member writes the same initial list at
//! bootstrap (from `--initial-cluster`); after that it changes only through apply, and a
//! snapshot from the leader carries it.

use etch_engine::mvcc::{MvccTxn, Snapshot};
use prost::Message as _;

use crate::ids;
use crate::pb::etcdserverpb as pb;

pub const MEMBERS_TREE: &[u8] = b"etch.members";

/// The members `--initial-cluster` describes, with etcd's ids, sorted by id.
pub fn initial(cluster: &[(String, Vec<String>)], token: &str) -> Vec<pb::Member> {
    let mut v: Vec<pb::Member> = cluster
        .iter()
        .map(|(name, urls)| pb::Member {
            id: ids::member_id(urls, token),
            name: name.clone(),
            peer_ur_ls: urls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: false,
        })
        .collect();
    v.sort_by_key(|m| m.id);
    v
}

/// Writes `m` (whole) into the member list.
pub fn put(tx: &mut MvccTxn<'_>, m: &pb::Member) -> Result<(), etch_engine::mvcc::Error> {
    tx.meta_put(MEMBERS_TREE, &m.id.to_be_bytes(), &m.encode_to_vec())
}

/// One member, as the write transaction `tx` sees it.
pub fn get_in(
    tx: &mut MvccTxn<'_>,
    id: u64,
) -> Result<Option<pb::Member>, etch_engine::mvcc::Error> {
    match tx.meta_get(MEMBERS_TREE, &id.to_be_bytes())? {
        Some(v) => Ok(Some(pb::Member::decode(v.as_slice()).map_err(|e| {
            etch_engine::mvcc::Error::Corrupt(format!("member record: {e}"))
        })?)),
        None => Ok(None),
    }
}

/// Every member, sorted by id (as etcd lists them).
pub fn list(snap: &Snapshot) -> Result<Vec<pb::Member>, String> {
    let mut v = Vec::new();
    for (k, val) in snap.meta_entries(MEMBERS_TREE).map_err(|e| e.to_string())? {
        if k.len() != 8 {
            return Err("corrupt member record in the data file".into());
        }
        v.push(
            pb::Member::decode(val.as_slice())
                .map_err(|e| format!("corrupt member record: {e}"))?,
        );
    }
    v.sort_by_key(|m| m.id);
    Ok(v)
}

/// One member.
pub fn get(snap: &Snapshot, id: u64) -> Result<Option<pb::Member>, String> {
    match snap
        .meta_get(MEMBERS_TREE, &id.to_be_bytes())
        .map_err(|e| e.to_string())?
    {
        Some(v) => Ok(Some(
            pb::Member::decode(v.as_slice()).map_err(|e| format!("corrupt member record: {e}"))?,
        )),
        None => Ok(None),
    }
}
