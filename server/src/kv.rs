//! etcdserverpb.KV: reads from the MVCC store (after ReadIndex unless serializable),
//! writes through Raft.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::apply::WriteResult;
use crate::auth::AuthInfo;
use crate::convert;
use crate::errors::EtcdError;
use crate::etch::Etch;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etchpb::internal_request;
use crate::validate;

#[derive(Debug, Clone)]
pub struct KvService {
    pub etch: Arc<Etch>,
}

impl KvService {
    async fn write(
        &self,
        req: internal_request::Request,
        who: &AuthInfo,
    ) -> Result<WriteResult, EtcdError> {
        self.etch
            .propose(crate::etch::client_request(req, who))
            .await
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        validate::range(&r)?;
        if !r.serializable {
            self.etch.linearizable_barrier().await?;
        }
        self.etch.auth.range_permitted(&who, &r.key, &r.range_end)?;
        let store = self.etch.store.clone();
        let req = convert::range_in(&r);
        let read = move || -> Result<_, EtcdError> { Ok(store.read()?.range(&req)?) };
        let resp = if r.range_end.is_empty() {
            // One key: a few page lookups, cheaper here than a trip to the blocking pool.
            read()?
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| EtcdError::Internal(format!("etch: range task: {e}")))??
        };
        self.etch.still_current(&who)?;
        let header = self.etch.header(resp.revision);
        Ok(Response::new(convert::range_out(resp, Some(header))))
    }

    type RangeStreamStream = ReceiverStream<Result<pb::RangeStreamResponse, Status>>;

    /// etcd 3.7's streamed Range: every chunk read from one pinned version, at most
    /// `RANGE_CHUNK_BYTES` of keys each (memory bounded by that, whatever the range),
    /// the count computed once; header, `more` and `count` on the last chunk.
    async fn range_stream(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        use pb::range_request::{SortOrder, SortTarget};
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        validate::range(&r)?;
        let default_order = r.sort_order == SortOrder::None as i32
            || (r.sort_target == SortTarget::Key as i32
                && r.sort_order == SortOrder::Ascend as i32);
        if !default_order {
            return Err(Status::unimplemented(
                "RangeStream does not support custom sort orders",
            ));
        }
        if r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0
        {
            return Err(Status::unimplemented(
                "RangeStream does not support revision filters",
            ));
        }
        if !r.serializable {
            self.etch.linearizable_barrier().await?;
        }
        self.etch.auth.range_permitted(&who, &r.key, &r.range_end)?;
        let etch = self.etch.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = stream_range(&etch, &r, &tx) {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        self.etch
            .check_quota(PUT_OVERHEAD_BYTES + r.key.len() + r.value.len())?;
        validate::put(&r)?;
        match self.write(internal_request::Request::Put(r), &who).await? {
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
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        validate::delete_range(&r)?;
        match self
            .write(internal_request::Request::DeleteRange(r), &who)
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
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        self.etch.check_quota(txn_cost(&r))?;
        validate::txn(&r, self.etch.cfg.max_txn_ops)?;
        if is_read_only(&r) {
            // Nothing to replicate: evaluate on a linearizable snapshot.
            if !is_serializable(&r) {
                self.etch.linearizable_barrier().await?;
            }
            // Read-only: no put, so no lease to look up.
            self.etch
                .auth
                .txn_permitted(&who, &r, &|_| Ok(Vec::new()))?;
            let store = self.etch.store.clone();
            let req = convert::txn_in(&r);
            let small = single_key_reads(&r);
            let read = move || -> Result<_, EtcdError> { Ok(store.read()?.txn_read_only(&req)?) };
            let resp = if small {
                read()?
            } else {
                tokio::task::spawn_blocking(read)
                    .await
                    .map_err(|e| EtcdError::Internal(format!("etch: txn task: {e}")))??
            };
            self.etch.still_current(&who)?;
            let h = self.etch.header(resp.revision);
            return Ok(Response::new(convert::txn_out(resp, Some(h))));
        }
        match self.write(internal_request::Request::Txn(r), &who).await? {
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
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        let physical = r.physical;
        match self
            .write(internal_request::Request::Compaction(r), &who)
            .await?
        {
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

/// A read-only txn that reads and compares single keys only: cheap enough to run on the
/// request's own task.
fn single_key_reads(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as R;
    t.compare.iter().all(|c| c.range_end.is_empty())
        && t.success
            .iter()
            .chain(&t.failure)
            .all(|op| match &op.request {
                Some(R::RequestRange(r)) => r.range_end.is_empty(),
                Some(R::RequestTxn(n)) => single_key_reads(n),
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

/// Keys per streamed chunk, at most; and about this many bytes.
const RANGE_CHUNK_KEYS: usize = 10_000;
const RANGE_CHUNK_BYTES: usize = 1 << 20;

/// Sends the chunks of a streamed range (see `range_stream`).
fn stream_range(
    etch: &Etch,
    r: &pb::RangeRequest,
    tx: &tokio::sync::mpsc::Sender<Result<pb::RangeStreamResponse, Status>>,
) -> Result<(), EtcdError> {
    let snap = etch.store.read()?;
    let rev = if r.revision > 0 {
        r.revision
    } else {
        snap.revision()
    };
    let req = convert::range_in(&pb::RangeRequest {
        count_only: true,
        limit: 0,
        revision: rev,
        ..r.clone()
    });
    let total = snap.range(&req)?.count;
    if r.count_only {
        let out = pb::RangeResponse {
            header: Some(etch.header(rev)),
            count: total,
            ..Default::default()
        };
        let _ = tx.blocking_send(Ok(pb::RangeStreamResponse {
            range_response: Some(out),
        }));
        return Ok(());
    }
    let limit = if r.limit > 0 {
        r.limit as usize
    } else {
        usize::MAX
    };
    let mut key = r.key.clone();
    let mut sent = 0usize;
    loop {
        let (kvs, more) = snap.range_chunk(
            &key,
            &r.range_end,
            rev,
            RANGE_CHUNK_KEYS.min(limit - sent),
            RANGE_CHUNK_BYTES,
            r.keys_only,
        )?;
        sent += kvs.len();
        let done = !more || sent >= limit;
        if let Some(last) = kvs.last() {
            key = last.key.clone();
            key.push(0);
        }
        let mut out = pb::RangeResponse {
            kvs: kvs.into_iter().map(convert::kv_out).collect(),
            ..Default::default()
        };
        if done {
            out.header = Some(etch.header(rev));
            out.more = more;
            out.count = total;
        }
        if tx
            .blocking_send(Ok(pb::RangeStreamResponse {
                range_response: Some(out),
            }))
            .is_err()
            || done
        {
            return Ok(());
        }
    }
}
