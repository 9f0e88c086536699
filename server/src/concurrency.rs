//! etcd's server-side concurrency services, `v3lockpb.Lock` and `v3electionpb.Election`,
//! on top of the KV service and the watch hub, with etcd's keys and semantics:
//! - a lock or a candidacy is the key `NAME/LEASE` (the lease id in lower-case hex),
//!   created with the caller's lease if absent (a caller without a lease gets a new one
//!   of 60 s, as etcd's session does); the holder is the key under `NAME/` with the
//!   lowest create revision, and a waiter waits for every key created before its own to
//!   be deleted;
//! - a waiter whose request ends (the client gave up) takes its key back out, so it never
//!   holds the lock later on nobody's behalf;
//! - etcd's errors: "election: not leader", "election: no leader", "mutex: session is
//!   expired", `"leader" field must be provided`.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use etch_engine::mvcc::EventType;

use crate::auth::AuthInfo;
use crate::etch::{Credentials, Etch};
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::kv_server::Kv as _;
use crate::pb::etcdserverpb::lease_server::Lease as _;
use crate::pb::v3electionpb as epb;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3lockpb as lpb;
use crate::pb::v3lockpb::lock_server::Lock;

/// The TTL of the lease a caller without one gets (etcd's session default).
const SESSION_TTL: i64 = 60;

/// KV calls made in process, through the same code a client's go through.
#[derive(Debug, Clone)]
struct Client {
    etch: Arc<Etch>,
    /// The caller, whose permissions the calls inside are checked against; resolved for
    /// each call (a token stands for the auth revision current at the call, as etcd's
    /// in-process client passes the caller's token on).
    creds: Credentials,
}

fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn range_op(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(r)),
    }
}

fn put_op(p: pb::PutRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(p)),
    }
}

fn create_is(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
    }
}

/// The key under `pfx` created first (the holder).
fn first_created(pfx: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: pfx.to_vec(),
        range_end: prefix_end(pfx),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Ascend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

fn range_of(r: &pb::ResponseOp) -> &[crate::pb::mvccpb::KeyValue] {
    match &r.response {
        Some(pb::response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

fn unknown(msg: &str) -> Status {
    // etcd returns these as plain errors, which gRPC sends as Unknown.
    Status::unknown(msg)
}

/// An error of the KV or lease calls inside: etcd's services make them through its Go
/// client, whose errors they return as plain errors, so the client sees Unknown with the
/// same message.
fn passed_on(s: Status) -> Status {
    Status::unknown(s.message())
}

impl Client {
    async fn of<T>(etch: &Arc<Etch>, request: &Request<T>) -> Result<Client, Status> {
        let creds = etch.credentials(request);
        // A bad token fails the call at once.
        etch.resolve(&creds).await?;
        Ok(Client {
            etch: etch.clone(),
            creds,
        })
    }

    /// A request of the calls inside, as the caller.
    async fn req<T>(&self, msg: T) -> Result<Request<T>, Status> {
        let who: AuthInfo = self
            .etch
            .resolve(&self.creds)
            .await
            .map_err(Status::from)
            .map_err(passed_on)?;
        let mut r = Request::new(msg);
        r.extensions_mut().insert(who);
        Ok(r)
    }

    async fn txn(&self, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let kv = KvService {
            etch: self.etch.clone(),
        };
        Ok(kv
            .txn(self.req(t).await?)
            .await
            .map_err(passed_on)?
            .into_inner())
    }

    async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let kv = KvService {
            etch: self.etch.clone(),
        };
        Ok(kv
            .range(self.req(r).await?)
            .await
            .map_err(passed_on)?
            .into_inner())
    }

    async fn delete(&self, key: &[u8]) -> Result<pb::DeleteRangeResponse, Status> {
        let kv = KvService {
            etch: self.etch.clone(),
        };
        let r = pb::DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        Ok(kv
            .delete_range(self.req(r).await?)
            .await
            .map_err(passed_on)?
            .into_inner())
    }

    /// The caller's lease, or a new one of `SESSION_TTL` for a caller without one.
    async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let ls = LeaseService {
            etch: self.etch.clone(),
        };
        let r = ls
            .lease_grant(
                self.req(pb::LeaseGrantRequest {
                    ttl: SESSION_TTL,
                    id: 0,
                })
                .await?,
            )
            .await
            .map_err(passed_on)?;
        Ok(r.into_inner().id)
    }

    /// Returns once every key under `pfx` created at or before `max_create` is gone.
    async fn wait_deletes(&self, pfx: &[u8], max_create: i64) -> Result<(), Status> {
        loop {
            let r = self
                .range(pb::RangeRequest {
                    key: pfx.to_vec(),
                    range_end: prefix_end(pfx),
                    limit: 1,
                    sort_order: pb::range_request::SortOrder::Descend as i32,
                    sort_target: pb::range_request::SortTarget::Create as i32,
                    max_create_revision: max_create,
                    ..Default::default()
                })
                .await?;
            let Some(kv) = r.kvs.first() else {
                return Ok(());
            };
            self.wait_delete(&kv.key, kv.create_revision).await?;
        }
    }

    /// Returns once `key`, as created at `create`, is deleted.
    async fn wait_delete(&self, key: &[u8], create: i64) -> Result<(), Status> {
        let mut sub = self.etch.watch_hub.subscribe();
        loop {
            // Checked after subscribing: a delete from now on reaches the subscription.
            let r = self
                .range(pb::RangeRequest {
                    key: key.to_vec(),
                    serializable: true,
                    ..Default::default()
                })
                .await?;
            if r.kvs.first().is_none_or(|kv| kv.create_revision != create) {
                return Ok(());
            }
            loop {
                match sub.recv().await {
                    Ok(b) => {
                        let gone = b
                            .events
                            .iter()
                            .any(|e| e.kind == EventType::Delete && e.kv.key == key);
                        if gone {
                            return Ok(());
                        }
                    }
                    // Fell behind the hub: look at the store again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Status::unavailable("etcdserver: server stopped"));
                    }
                }
            }
        }
    }
}

/// Takes a waiter's key back out if its request ends before it is disarmed (the client
/// gave up, or the wait failed): otherwise it would get the lock later for nobody.
struct Withdraw {
    client: Client,
    key: Vec<u8>,
    create: i64,
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let c = self.client.clone();
        let key = std::mem::take(&mut self.key);
        let create = self.create;
        tokio::spawn(async move {
            let t = pb::TxnRequest {
                compare: vec![create_is(&key, create)],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: Vec::new(),
            };
            if let Err(e) = c.txn(t).await {
                tracing::warn!("withdrawing an abandoned lock or campaign key: {e}");
            }
        });
    }
}

fn session_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.push(b'/');
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// `NAME/LEASE` created with `value` if absent, in one txn that also reads the first
/// key created under `NAME/`. Returns the txn's answer and the key's create revision.
async fn enter(
    c: &Client,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<(pb::TxnResponse, Vec<u8>, i64), Status> {
    let key = session_key(name, lease);
    let pfx = with_slash(name);
    let t = pb::TxnRequest {
        compare: vec![create_is(&key, 0)],
        success: vec![
            put_op(pb::PutRequest {
                key: key.clone(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            }),
            range_op(first_created(&pfx)),
        ],
        failure: vec![
            range_op(pb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            }),
            range_op(first_created(&pfx)),
        ],
    };
    let resp = c.txn(t).await?;
    let rev = if resp.succeeded {
        resp.header.as_ref().map_or(0, |h| h.revision)
    } else {
        resp.responses
            .first()
            .and_then(|r| range_of(r).first())
            .map(|kv| kv.create_revision)
            .ok_or_else(|| Status::internal("etch: the lock key vanished inside its txn"))?
    };
    Ok((resp, key, rev))
}

#[derive(Debug, Clone)]
pub struct LockService {
    pub etch: Arc<Etch>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let lease = c.session_lease(r.lease).await?;
        let (resp, key, rev) = enter(&c, &r.name, lease, b"").await?;
        let owner = resp.responses.get(1).and_then(|o| range_of(o).first());
        if owner.is_none_or(|kv| kv.create_revision == rev) {
            return Ok(Response::new(lpb::LockResponse {
                header: resp.header,
                key,
            }));
        }
        let mut guard = Withdraw {
            client: c.clone(),
            key: key.clone(),
            create: rev,
            armed: true,
        };
        c.wait_deletes(&with_slash(&r.name), rev - 1).await?;
        // The session is still alive, and the key still there.
        let got = c
            .range(pb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await?;
        guard.armed = false;
        if got.kvs.is_empty() {
            return Err(unknown("mutex: session is expired"));
        }
        Ok(Response::new(lpb::LockResponse {
            header: got.header,
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let d = c.delete(&r.key).await?;
        Ok(Response::new(lpb::UnlockResponse { header: d.header }))
    }
}

#[derive(Debug, Clone)]
pub struct ElectionService {
    pub etch: Arc<Etch>,
}

fn missing_leader() -> Status {
    unknown("\"leader\" field must be provided")
}

/// Sets the leader's value if it is still the leader key it was (etcd's Proclaim).
async fn proclaim(c: &Client, l: &epb::LeaderKey, value: &[u8]) -> Result<pb::TxnResponse, Status> {
    let t = pb::TxnRequest {
        compare: vec![create_is(&l.key, l.rev)],
        success: vec![put_op(pb::PutRequest {
            key: l.key.clone(),
            value: value.to_vec(),
            ignore_lease: true,
            ..Default::default()
        })],
        failure: Vec::new(),
    };
    let resp = c.txn(t).await?;
    if !resp.succeeded {
        return Err(unknown("election: not leader"));
    }
    Ok(resp)
}

/// Deletes the leader key if it is still the one it was (etcd's Resign).
async fn resign(c: &Client, l: &epb::LeaderKey) -> Result<pb::TxnResponse, Status> {
    c.txn(pb::TxnRequest {
        compare: vec![create_is(&l.key, l.rev)],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key: l.key.clone(),
                    ..Default::default()
                },
            )),
        }],
        failure: Vec::new(),
    })
    .await
}

type ObserveStream = ReceiverStream<Result<epb::LeaderResponse, Status>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let lease = c.session_lease(r.lease).await?;
        let (resp, key, rev) = enter(&c, &r.name, lease, &r.value).await?;
        let leader = epb::LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev,
            lease,
        };
        let mut guard = Withdraw {
            client: c.clone(),
            key,
            create: rev,
            armed: true,
        };
        if !resp.succeeded {
            // Campaigning again with another value proclaims it.
            let held = resp.responses.first().and_then(|x| range_of(x).first());
            if held.is_some_and(|kv| kv.value != r.value) {
                proclaim(&c, &leader, &r.value).await?;
            }
        }
        c.wait_deletes(&with_slash(&r.name), rev - 1).await?;
        guard.armed = false;
        Ok(Response::new(epb::CampaignResponse {
            header: resp.header,
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let l = r.leader.ok_or_else(missing_leader)?;
        let resp = proclaim(&c, &l, &r.value).await?;
        Ok(Response::new(epb::ProclaimResponse {
            header: resp.header,
        }))
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let got = c.range(first_created(&with_slash(&r.name))).await?;
        let kv = got
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| unknown("election: no leader"))?;
        Ok(Response::new(epb::LeaderResponse {
            header: got.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = observe(&c, &with_slash(&r.name), &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let c = Client::of(&self.etch, &request).await?;
        let r = request.into_inner();
        let l = r.leader.ok_or_else(missing_leader)?;
        let resp = resign(&c, &l).await?;
        Ok(Response::new(epb::ResignResponse {
            header: resp.header,
        }))
    }
}

/// Sends the leader under `pfx`, then each new value it proclaims, then the next leader
/// once it is gone, until the client goes away.
async fn observe(
    c: &Client,
    pfx: &[u8],
    tx: &mpsc::Sender<Result<epb::LeaderResponse, Status>>,
) -> Result<(), Status> {
    let end = prefix_end(pfx);
    loop {
        let mut sub = c.etch.watch_hub.subscribe();
        let got = c.range(first_created(pfx)).await?;
        let seen_at = got.header.as_ref().map_or(0, |h| h.revision);
        let (mut kv, mut header) = match got.kvs.into_iter().next() {
            Some(kv) => (Some(kv), got.header),
            None => (None, None),
        };
        let mut lagged = false;
        // No leader yet: the first put under the prefix after the read makes one.
        while kv.is_none() {
            match sub.recv().await {
                Ok(b) => {
                    let first = b.events.iter().find(|e| {
                        e.kind == EventType::Put
                            && e.kv.mod_revision > seen_at
                            && e.kv.key.as_slice() >= pfx
                            && e.kv.key < end
                    });
                    if let Some(e) = first {
                        header = Some(c.etch.header(e.kv.mod_revision));
                        kv = Some(crate::convert::kv_out(e.kv.clone()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
        if lagged {
            continue;
        }
        let kv = kv.expect("the loop above ends with a leader");
        let from = header.as_ref().map_or(0, |h| h.revision);
        if tx
            .send(Ok(epb::LeaderResponse {
                header,
                kv: Some(kv.clone()),
            }))
            .await
            .is_err()
        {
            return Ok(());
        }
        // The leader's changes until it is deleted.
        'leader: loop {
            match sub.recv().await {
                Ok(b) => {
                    for e in b
                        .events
                        .iter()
                        .filter(|e| e.kv.key == kv.key && e.kv.mod_revision > from)
                    {
                        if e.kind == EventType::Delete {
                            break 'leader;
                        }
                        let resp = epb::LeaderResponse {
                            header: Some(c.etch.header(b.to)),
                            kv: Some(crate::convert::kv_out(e.kv.clone())),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break 'leader,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}
