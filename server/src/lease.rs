//! etcdserverpb.Lease, and the tasks that expire leases and checkpoint their TTLs.
//!
//! Leases are data (granted, revoked and checkpointed through Raft, stored in the MVCC
//! store); their deadlines are the leader's, kept in memory by the lessor: a keep-alive
//! moves a deadline without a Raft round, as in etcd. An expiry task proposes a revoke for
//! each lease past its deadline. Remaining TTLs are checkpointed through Raft every few
//! minutes and at a graceful stop, so a restart resumes them instead of granting a full
//! TTL again. Idle leases cost nothing: one task sleeps until the earliest deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::WriteResult;
use crate::errors::EtcdError;
use crate::etch::Etch;
use crate::lessor::{CHECKPOINT_INTERVAL, MAX_LEASE_TTL};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etchpb::internal_request;

/// What etcd charges a grant against the quota.
const LEASE_OVERHEAD_BYTES: usize = 64;
/// How often the expiry task checks that this member still leads in the same term.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(500);

/// Proposes etch's own lease request (expiry, checkpoint).
async fn propose(etch: &Etch, req: internal_request::Request) -> Result<WriteResult, EtcdError> {
    etch.propose(crate::etch::server_request(req)).await
}

/// Proposes a client's lease request.
async fn propose_as(
    etch: &Etch,
    req: internal_request::Request,
    who: &crate::auth::AuthInfo,
) -> Result<WriteResult, EtcdError> {
    etch.propose(crate::etch::client_request(req, who)).await
}

/// Revokes expired leases while this member leads.
pub fn spawn_expiry(etch: Arc<Etch>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The term this member last took the lead in. A member that led, lost the lead
        // and won it back in a later term missed keep-alives in between, just as a
        // member leading for the first time.
        let st = etch.node.status();
        let mut leading_term = st.is_leader.then_some(st.term);
        loop {
            let st = etch.node.status();
            if !st.is_leader {
                leading_term = None;
                // Only the leader revokes; a follower (or a member still electing) waits.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if leading_term != Some(st.term) {
                // A new leader never saw the keep-alives its predecessor took: every lease
                // gets its remaining TTL plus an election timeout before any may expire
                // (etcd's promote).
                leading_term = Some(st.term);
                let extend = etch.cfg.heartbeat * etch.cfg.election_ticks as u32;
                if let Err(e) = etch.lessor.reload(&etch.store, extend) {
                    tracing::error!("reloading leases as the new leader: {e}");
                }
            }
            let (expired, next) = etch.lessor.take_expired();
            for id in expired {
                let etch = etch.clone();
                tokio::spawn(async move {
                    let r = propose(
                        &etch,
                        internal_request::Request::LeaseRevoke(pb::LeaseRevokeRequest { id }),
                    )
                    .await;
                    match r {
                        Ok(_) => tracing::debug!(lease = id, "lease expired and revoked"),
                        Err(EtcdError::LeaseNotFound) => etch.lessor.revoked(id),
                        Err(e) => tracing::warn!(lease = id, "revoking an expired lease: {e}"),
                    }
                });
            }
            // Wake often enough to notice a lost (or retaken) lead.
            let soon = Instant::now() + LEADERSHIP_CHECK;
            let sleep = tokio::time::sleep_until(next.map_or(soon, |d| d.min(soon)));
            tokio::select! {
                _ = sleep => {}
                _ = etch.lessor.changed.notified() => {}
            }
        }
    })
}

/// Proposes the remaining TTLs of leases that have run down.
pub async fn checkpoint(etch: &Etch) {
    let cps = etch.lessor.checkpoints();
    if cps.is_empty() {
        return;
    }
    let n = cps.len();
    let r = propose(
        etch,
        internal_request::Request::LeaseCheckpoint(pb::LeaseCheckpointRequest { checkpoints: cps }),
    )
    .await;
    match r {
        Ok(_) => tracing::debug!(leases = n, "lease TTLs checkpointed"),
        Err(e) => tracing::warn!("lease checkpoint: {e}"),
    }
}

pub fn spawn_checkpoints(etch: Arc<Etch>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(Instant::now() + CHECKPOINT_INTERVAL, CHECKPOINT_INTERVAL);
        loop {
            tick.tick().await;
            if etch.node.status().is_leader {
                checkpoint(&etch).await;
            }
        }
    })
}

/// A lease id for a grant that named none, as etcd makes one: its request-id generator
/// (this member's id in the top 16 bits, the start time in milliseconds and a counter
/// below), the sign bit cleared; never one in use.
fn new_lease_id(etch: &Etch) -> i64 {
    static IDS: std::sync::OnceLock<std::sync::Mutex<etch_raft::IdGen>> =
        std::sync::OnceLock::new();
    let ids = IDS.get_or_init(|| {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        std::sync::Mutex::new(etch_raft::IdGen::new(etch.member_id, millis))
    });
    let mut g = ids.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let id = (g.next_id() & i64::MAX as u64) as i64;
        if id != 0 && !etch.lessor.exists(id) {
            return id;
        }
    }
}

#[derive(Debug, Clone)]
pub struct LeaseService {
    pub etch: Arc<Etch>,
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        self.etch.check_quota(LEASE_OVERHEAD_BYTES)?;
        if r.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let id = if r.id == 0 {
            new_lease_id(&self.etch)
        } else {
            r.id
        };
        let ttl = r.ttl.max(self.etch.lessor.min_ttl);
        match propose_as(
            &self.etch,
            internal_request::Request::LeaseGrant(pb::LeaseGrantRequest { ttl, id }),
            &who,
        )
        .await?
        {
            WriteResult::LeaseGrant { revision } => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(self.etch.header(revision)),
                id,
                ttl,
                error: String::new(),
            })),
            other => {
                Err(EtcdError::Internal(format!("etch: mismatched apply result {other:?}")).into())
            }
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        match propose_as(&self.etch, internal_request::Request::LeaseRevoke(r), &who).await? {
            WriteResult::DeleteRange(d) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(self.etch.header(d.revision)),
            })),
            other => {
                Err(EtcdError::Internal(format!("etch: mismatched apply result {other:?}")).into())
            }
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        Ok(Response::new(keep_alive(
            self.etch.clone(),
            request.into_inner(),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let who = self.etch.who(&request).await?;
        let r = request.into_inner();
        let checked = r.keys && self.etch.auth.enabled();
        if checked && who.revision == 0 {
            return Err(EtcdError::UserEmpty.into());
        }
        let out = self.time_to_live(&r).await?;
        if checked {
            // etcd 3.6: listing a lease's keys needs read permission on each, and
            // credentials still current after the answer.
            for k in &out.keys {
                self.etch.auth.range_permitted(&who, k, &[])?;
            }
            self.etch.still_current(&who)?;
        }
        Ok(Response::new(out))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.etch.linearizable_barrier().await?;
        let snap = self.etch.store.read().map_err(EtcdError::from)?;
        let stored: std::collections::BTreeSet<i64> = snap
            .leases()
            .map_err(EtcdError::from)?
            .into_iter()
            .map(|l| l.id)
            .collect();
        // As etcd lists them: soonest to expire first; any the lessor has yet to load
        // (a grant applying right now) after them.
        let mut ids: Vec<i64> = self
            .etch
            .lessor
            .by_expiry()
            .into_iter()
            .filter(|id| stored.contains(id))
            .collect();
        let listed: std::collections::HashSet<i64> = ids.iter().copied().collect();
        ids.extend(stored.iter().filter(|id| !listed.contains(id)));
        let leases = ids.into_iter().map(|id| pb::LeaseStatus { id }).collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.etch.header(snap.revision())),
            leases,
        }))
    }
}

impl LeaseService {
    async fn time_to_live(
        &self,
        r: &pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, EtcdError> {
        self.etch.linearizable_barrier().await?;
        if !self.etch.node.status().is_leader {
            // The remaining TTL is the leader's to tell.
            let rep = self.etch.lease_at_leader(r.id, r.keys, false).await?;
            return Ok(pb::LeaseTimeToLiveResponse {
                header: Some(self.etch.header(self.etch.store.current_revision())),
                id: r.id,
                ttl: rep.ttl,
                granted_ttl: rep.granted_ttl,
                keys: rep.keys,
            });
        }
        let rev = self.etch.store.current_revision();
        let Some((granted, left)) = self.etch.lessor.remaining(r.id) else {
            return Ok(pb::LeaseTimeToLiveResponse {
                header: Some(self.etch.header(rev)),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let keys = if r.keys {
            let store = self.etch.store.clone();
            let id = r.id;
            tokio::task::spawn_blocking(move || -> Result<_, EtcdError> {
                Ok(store.read()?.lease_keys(id)?)
            })
            .await
            .map_err(|e| EtcdError::Internal(format!("etch: lease task: {e}")))??
        } else {
            Vec::new()
        };
        Ok(pb::LeaseTimeToLiveResponse {
            header: Some(self.etch.header(rev)),
            id: r.id,
            ttl: left,
            granted_ttl: granted,
            keys,
        })
    }
}

/// Serves one keep-alive stream: requests from `inbound`, answers in the returned stream
/// (the gRPC service and the JSON gateway both run it).
pub fn keep_alive<S>(
    etch: Arc<Etch>,
    mut inbound: S,
) -> ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>
where
    S: tokio_stream::Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>>
        + Send
        + Unpin
        + 'static,
{
    use tokio_stream::StreamExt as _;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(r)) = inbound.next().await {
            let resp = if etch.node.status().is_leader {
                // An unknown lease answers TTL 0, as etcd does.
                let ttl = etch.renew_lease(r.id).await;
                Ok(pb::LeaseKeepAliveResponse {
                    header: Some(etch.header(etch.store.current_revision())),
                    id: r.id,
                    ttl,
                })
            } else {
                // Only the leader holds deadlines: a follower forwards.
                match etch.lease_at_leader(r.id, false, true).await {
                    Ok(rep) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(etch.header(etch.store.current_revision())),
                        id: r.id,
                        ttl: rep.ttl,
                    }),
                    Err(e) => Err(e.into()),
                }
            };
            let stop = resp.is_err();
            if tx.send(resp).await.is_err() || stop {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
