//! Between etcd's wire types and the MVCC store's types.

use etch_engine::mvcc;

use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

pub fn kv_out(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_in(r: &pb::RangeRequest) -> mvcc::RangeRequest {
    use pb::range_request::{SortOrder, SortTarget};
    mvcc::RangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: r.limit,
        revision: r.revision,
        sort_order: match SortOrder::try_from(r.sort_order) {
            Ok(SortOrder::Ascend) => mvcc::SortOrder::Ascend,
            Ok(SortOrder::Descend) => mvcc::SortOrder::Descend,
            _ => mvcc::SortOrder::None,
        },
        sort_target: match SortTarget::try_from(r.sort_target) {
            Ok(SortTarget::Version) => mvcc::SortTarget::Version,
            Ok(SortTarget::Create) => mvcc::SortTarget::Create,
            Ok(SortTarget::Mod) => mvcc::SortTarget::Mod,
            Ok(SortTarget::Value) => mvcc::SortTarget::Value,
            _ => mvcc::SortTarget::Key,
        },
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn put_in(r: &pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key.clone(),
        value: r.value.clone(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_in(r: &pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        prev_kv: r.prev_kv,
    }
}

fn compare_in(c: &pb::Compare) -> mvcc::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Greater) => mvcc::CompareResult::Greater,
        Ok(R::Less) => mvcc::CompareResult::Less,
        Ok(R::NotEqual) => mvcc::CompareResult::NotEqual,
        _ => mvcc::CompareResult::Equal,
    };
    // The target names the field; a union holding another field compares as its zero.
    let int = |want: fn(&U) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match T::try_from(c.target) {
        Ok(T::Create) => mvcc::CompareTarget::Create(int(|u| match u {
            U::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(T::Mod) => mvcc::CompareTarget::Mod(int(|u| match u {
            U::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(T::Value) => mvcc::CompareTarget::Value(match &c.target_union {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        Ok(T::Lease) => mvcc::CompareTarget::Lease(int(|u| match u {
            U::Lease(v) => Some(*v),
            _ => None,
        })),
        _ => mvcc::CompareTarget::Version(int(|u| match u {
            U::Version(v) => Some(*v),
            _ => None,
        })),
    };
    mvcc::Compare {
        result,
        target,
        key: c.key.clone(),
        range_end: c.range_end.clone(),
    }
}

fn op_in(op: &pb::RequestOp) -> Option<mvcc::RequestOp> {
    use pb::request_op::Request;
    Some(match op.request.as_ref()? {
        Request::RequestRange(r) => mvcc::RequestOp::Range(range_in(r)),
        Request::RequestPut(r) => mvcc::RequestOp::Put(put_in(r)),
        Request::RequestDeleteRange(r) => mvcc::RequestOp::DeleteRange(delete_in(r)),
        Request::RequestTxn(t) => mvcc::RequestOp::Txn(txn_in(t)),
    })
}

/// Empty ops were refused by validation; any left are dropped.
pub fn txn_in(t: &pb::TxnRequest) -> mvcc::TxnRequest {
    mvcc::TxnRequest {
        compare: t.compare.iter().map(compare_in).collect(),
        success: t.success.iter().filter_map(op_in).collect(),
        failure: t.failure.iter().filter_map(op_in).collect(),
    }
}

/// A response header carrying only a revision (nested txn responses).
fn rev_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

pub fn range_out(r: mvcc::RangeResponse, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(kv_out).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn put_out(r: mvcc::PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: r.prev_kv.map(kv_out),
    }
}

pub fn delete_out(
    r: mvcc::DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_out).collect(),
    }
}

/// A txn response. As in etcd, each nested range, put and delete response carries a
/// header with only the revision as of that op (a delete that finds nothing before any
/// write reports the revision the txn started at), and a nested txn's header is empty.
pub fn txn_out(r: mvcc::TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                mvcc::ResponseOp::Range(x) => {
                    let h = rev_header(x.revision);
                    Response::ResponseRange(range_out(x, h))
                }
                mvcc::ResponseOp::Put(x) => {
                    let h = rev_header(x.revision);
                    Response::ResponsePut(put_out(x, h))
                }
                mvcc::ResponseOp::DeleteRange(x) => {
                    let h = rev_header(x.revision);
                    Response::ResponseDeleteRange(delete_out(x, h))
                }
                mvcc::ResponseOp::Txn(x) => {
                    Response::ResponseTxn(txn_out(x, Some(pb::ResponseHeader::default())))
                }
            }),
        })
        .collect();
    pb::TxnResponse {
        header,
        succeeded: r.succeeded,
        responses,
    }
}
