//! Request checks made before a request reaches Raft, in etcd's order and with its errors.

use std::collections::HashSet;

use crate::errors::EtcdError;
use crate::pb::etcdserverpb as pb;
use pb::request_op::Request;

pub fn range(r: &pb::RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &pb::PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &pb::DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's txn check: operation count (the largest of the three lists, against what the
/// enclosing txns left), keys, each op, then keys written twice.
pub fn txn(t: &pb::TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    txn_ops(t, max_ops as i64)?;
    intervals(&t.success)?;
    intervals(&t.failure)?;
    Ok(())
}

fn txn_ops(t: &pb::TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len()) as i64;
    if opc > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => range(r)?,
            Some(Request::RequestPut(r)) => put(r)?,
            Some(Request::RequestDeleteRange(r)) => delete_range(r)?,
            Some(Request::RequestTxn(n)) => txn_ops(n, max_ops - opc)?,
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval: one key (`end` None) or `[start, end)` compared bytewise.
struct Del {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Del {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => self.start == k,
            Some(end) => self.start.as_slice() <= k && k < end.as_slice(),
        }
    }
}

fn deleted(dels: &[Del], k: &[u8]) -> bool {
    dels.iter().any(|d| d.contains(k))
}

/// Puts and deletes of one op list, with the nested txns' folded in; a key put twice, or
/// put inside a deleted range, is a duplicate. The two branches of a nested txn exclude
/// each other, so the same key in both is allowed.
fn intervals(ops: &[pb::RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Del>), EtcdError> {
    let mut dels: Vec<Del> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Del {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(n)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&n.success)?;
        let (puts_else, dels_else) = intervals(&n.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestTxn(pb::TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn check(success: Vec<pb::RequestOp>) -> Result<(), EtcdError> {
        txn(
            &pb::TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    #[test]
    fn duplicates() {
        assert_eq!(
            check(vec![put_op("a"), put_op("a")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![put_op("b"), del_op("a", "c")]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(check(vec![put_op("c"), del_op("a", "c")]), Ok(()));
        assert_eq!(check(vec![del_op("a", "c"), del_op("b", "d")]), Ok(()));
        // Both branches of a nested txn may write the same key.
        assert_eq!(
            check(vec![txn_op(vec![put_op("k")], vec![put_op("k")])]),
            Ok(())
        );
        assert_eq!(
            check(vec![put_op("k"), txn_op(vec![put_op("k")], vec![])]),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            check(vec![txn_op(vec![del_op("k", "")], vec![]), put_op("k")]),
            Err(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn op_counts_and_empty_ops() {
        let many: Vec<pb::RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(check(many), Err(EtcdError::TooManyOps));
        assert_eq!(
            check(vec![pb::RequestOp { request: None }]),
            Err(EtcdError::KeyNotFound)
        );
        // A nested txn gets what its parent left.
        let inner: Vec<pb::RequestOp> = (0..65).map(|i| put_op(&format!("n{i}"))).collect();
        let mut outer: Vec<pb::RequestOp> = (0..63).map(|i| put_op(&format!("o{i}"))).collect();
        outer.push(txn_op(inner, vec![]));
        assert_eq!(check(outer), Err(EtcdError::TooManyOps));
    }
}
