//! etcdserverpb.KV: reads from the MVCC store (after ReadIndex unless serializable),
//! writes through Raft.

use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::apply::WriteResult;
use crate::convert;
use crate::errors::EtcdError;
use crate::etch::Etch;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etchpb::{InternalRequest, internal_request};
use crate::validate;

#[derive(Debug, Clone)]
pub struct KvService {
    pub etch: Arc<Etch>,
}

impl KvService {
    async fn write(&self, req: internal_request::Request) -> Result<WriteResult, EtcdError> {
        let bytes = InternalRequest { request: Some(req) }.encode_to_vec();
        self.etch.propose(bytes).await
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        validate::range(&r)?;
        if !r.serializable {
            self.etch.linearizable_barrier().await?;
        }
        let store = self.etch.store.clone();
        let req = convert::range_in(&r);
        let resp = tokio::task::spawn_blocking(move || -> Result<_, EtcdError> {
            Ok(store.read()?.range(&req)?)
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("etch: range task: {e}")))??;
        let header = self.etch.header(resp.revision);
        Ok(Response::new(convert::range_out(resp, Some(header))))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        self.etch
            .check_quota(PUT_OVERHEAD_BYTES + r.key.len() + r.value.len())?;
        validate::put(&r)?;
        match self.write(internal_request::Request::Put(r)).await? {
            WriteResult::Put(p) => {
                let h = self.etch.header(p.revision);
                Ok(Response::new(convert::put_out(p, Some(h))))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        validate::delete_range(&r)?;
        match self
            .write(internal_request::Request::DeleteRange(r))
            .await?
        {
            WriteResult::DeleteRange(d) => {
                let h = self.etch.header(d.revision);
                Ok(Response::new(convert::delete_out(d, Some(h))))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let r = request.into_inner();
        self.etch.check_quota(txn_cost(&r))?;
        validate::txn(&r, self.etch.cfg.max_txn_ops)?;
        if is_read_only(&r) {
            // Nothing to replicate: evaluate on a linearizable snapshot.
            if !is_serializable(&r) {
                self.etch.linearizable_barrier().await?;
            }
            let store = self.etch.store.clone();
            let req = convert::txn_in(&r);
            let resp = tokio::task::spawn_blocking(move || -> Result<_, EtcdError> {
                Ok(store.read()?.txn_read_only(&req)?)
            })
            .await
            .map_err(|e| EtcdError::Internal(format!("etch: txn task: {e}")))??;
            let h = self.etch.header(resp.revision);
            return Ok(Response::new(convert::txn_out(resp, Some(h))));
        }
        match self.write(internal_request::Request::Txn(r)).await? {
            WriteResult::Txn(t) => {
                let h = self.etch.header(t.revision);
                Ok(Response::new(convert::txn_out(t, Some(h))))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let r = request.into_inner();
        let physical = r.physical;
        match self.write(internal_request::Request::Compaction(r)).await? {
            WriteResult::Compact { revision, current } => {
                if physical {
                    let c = self.etch.compactor.clone();
                    let timeout = self.etch.request_timeout();
                    tokio::task::spawn_blocking(move || c.wait_done(revision, timeout))
                        .await
                        .map_err(|e| EtcdError::Internal(format!("etch: compact task: {e}")))??;
                }
                Ok(Response::new(pb::CompactionResponse {
                    header: Some(self.etch.header(current)),
                }))
            }
            other => Err(unexpected(other)),
        }
    }
}

/// What etcd charges a put against the quota beyond its key and value.
const PUT_OVERHEAD_BYTES: usize = 256;

/// etcd's quota cost of a txn: the larger branch's puts, nested txns included.
fn txn_cost(t: &pb::TxnRequest) -> usize {
    use pb::request_op::Request as R;
    let branch = |ops: &[pb::RequestOp]| -> usize {
        ops.iter()
            .map(|op| match &op.request {
                Some(R::RequestPut(p)) => PUT_OVERHEAD_BYTES + p.key.len() + p.value.len(),
                Some(R::RequestTxn(n)) => txn_cost(n),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

fn unexpected(r: WriteResult) -> Status {
    EtcdError::Internal(format!("etch: mismatched apply result {r:?}")).into()
}

/// A txn with no put or delete on any branch changes nothing.
fn is_read_only(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(R::RequestRange(_)) => true,
            Some(R::RequestTxn(n)) => is_read_only(n),
            _ => false,
        })
}

/// A read-only txn whose every range is serializable needs no ReadIndex.
fn is_serializable(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(R::RequestRange(r)) => r.serializable,
            Some(R::RequestTxn(n)) => is_serializable(n),
            _ => true,
        })
}
