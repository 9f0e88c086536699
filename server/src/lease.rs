//! etcdserverpb.Lease and the lessor.
//!
//! Leases are data (granted, revoked and checkpointed through Raft, stored in the MVCC
//! store); their deadlines are the leader's, kept in memory: a keep-alive moves a
//! deadline without a Raft round, as in etcd. An expiry task proposes a revoke for each
//! lease past its deadline. Remaining TTLs are checkpointed through Raft every few
//! minutes and at a graceful stop, so a restart resumes them instead of granting a full
//! TTL again. Idle leases cost nothing: one task sleeps until the earliest deadline.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etch_engine::mvcc::Store;
use prost::Message as _;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::WriteResult;
use crate::errors::EtcdError;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etchpb::{InternalRequest, internal_request};
use crate::server::Etch;

/// etcd's largest TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Revokes proposed per expiry round (etcd revokes at most 1000 leases a second).
const REVOKE_BATCH: usize = 1000;
/// A lease whose revoke was proposed is retried after this long if it still exists.
const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// How often remaining TTLs are checkpointed (etcd's default).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// What etcd charges a grant against the quota.
const LEASE_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Held {
    ttl: i64,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<i64, Held>,
    by_deadline: BTreeSet<(Instant, i64)>,
}

impl State {
    fn set(&mut self, id: i64, ttl: i64, deadline: Instant) {
        if let Some(old) = self.leases.insert(id, Held { ttl, deadline }) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    fn remove(&mut self, id: i64) -> bool {
        match self.leases.remove(&id) {
            Some(old) => {
                self.by_deadline.remove(&(old.deadline, id));
                true
            }
            None => false,
        }
    }
}

/// Lease deadlines.
#[derive(Debug)]
pub struct Lessor {
    state: Mutex<State>,
    /// Wakes the expiry task when the earliest deadline may have moved earlier.
    changed: Notify,
    /// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds.
    pub min_ttl: i64,
}

impl Lessor {
    /// Loads every stored lease; each gets its checkpointed remaining TTL (or its full
    /// TTL) plus `extend`, as etcd extends leases when a leader takes over.
    pub fn load(store: &Store, min_ttl: i64, extend: Duration) -> Result<Arc<Lessor>, String> {
        let now = Instant::now();
        let mut st = State::default();
        for l in store
            .read()
            .map_err(|e| e.to_string())?
            .leases()
            .map_err(|e| e.to_string())?
        {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            st.set(l.id, l.ttl, now + extend + secs(left));
        }
        Ok(Arc::new(Lessor {
            state: Mutex::new(st),
            changed: Notify::new(),
            min_ttl,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A grant was applied.
    pub fn granted(&self, id: i64, ttl: i64) {
        self.lock().set(id, ttl, Instant::now() + secs(ttl));
        self.changed.notify_one();
    }

    /// A revoke was applied.
    pub fn revoked(&self, id: i64) {
        self.lock().remove(id);
    }

    /// Keep-alive: the TTL, or None for an unknown lease.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.lock();
        let ttl = st.leases.get(&id)?.ttl;
        st.set(id, ttl, Instant::now() + secs(ttl));
        Some(ttl)
    }

    /// (granted TTL, seconds left) of a live lease.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let st = self.lock();
        let h = st.leases.get(&id)?;
        let left = h.deadline.saturating_duration_since(Instant::now());
        Some((h.ttl, left.as_secs() as i64))
    }

    pub fn exists(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Up to `REVOKE_BATCH` expired leases, each pushed back by `REVOKE_RETRY` so one
    /// revoke in flight is not proposed again; and the next deadline.
    fn take_expired(&self) -> (Vec<i64>, Option<Instant>) {
        let now = Instant::now();
        let mut st = self.lock();
        let mut out = Vec::new();
        while out.len() < REVOKE_BATCH {
            match st.by_deadline.first().copied() {
                Some((d, id)) if d <= now => {
                    let ttl = st.leases[&id].ttl;
                    st.set(id, ttl, now + REVOKE_RETRY);
                    out.push(id);
                }
                _ => break,
            }
        }
        let next = st.by_deadline.first().map(|(d, _)| *d);
        (out, next)
    }

    /// Remaining TTLs of leases that have used some of theirs.
    fn checkpoints(&self) -> Vec<pb::LeaseCheckpoint> {
        let now = Instant::now();
        self.lock()
            .leases
            .iter()
            .filter_map(|(id, h)| {
                let left = h.deadline.saturating_duration_since(now).as_secs() as i64;
                (left < h.ttl).then_some(pb::LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: left.max(1),
                })
            })
            .collect()
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// etcd's minimum lease TTL for the given timing.
pub fn min_ttl(heartbeat: Duration, election_ticks: usize) -> i64 {
    let t = heartbeat.as_secs_f64() * (3 * election_ticks) as f64 / 2.0;
    t.ceil() as i64
}

async fn propose(etch: &Etch, req: internal_request::Request) -> Result<WriteResult, EtcdError> {
    let bytes = InternalRequest { request: Some(req) }.encode_to_vec();
    etch.propose(bytes).await
}

/// Revokes expired leases while this member leads.
pub fn spawn_expiry(etch: Arc<Etch>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if !etch.node.status().is_leader {
                // Only the leader revokes; a follower (or a member still electing) waits.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
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
            let sleep = match next {
                Some(d) => tokio::time::sleep_until(d),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
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

/// A lease id for a grant that named none: positive, not in use.
fn new_lease_id(etch: &Etch) -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x =
            nanos ^ etch.member_id ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        // splitmix64 finaliser: spreads the bits.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let id = (x & i64::MAX as u64) as i64;
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
        match propose(
            &self.etch,
            internal_request::Request::LeaseGrant(pb::LeaseGrantRequest { ttl, id }),
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
        let r = request.into_inner();
        match propose(&self.etch, internal_request::Request::LeaseRevoke(r)).await? {
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
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let etch = self.etch.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let resp = if !etch.node.status().is_leader {
                    Err(EtcdError::NoLeader.into())
                } else {
                    // An unknown lease answers TTL 0, as etcd does.
                    let ttl = etch.lessor.renew(r.id).unwrap_or(0);
                    Ok(pb::LeaseKeepAliveResponse {
                        header: Some(etch.header(etch.store.current_revision())),
                        id: r.id,
                        ttl,
                    })
                };
                let stop = resp.is_err();
                if tx.send(resp).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        self.etch.linearizable_barrier().await?;
        let rev = self.etch.store.current_revision();
        let Some((granted, left)) = self.etch.lessor.remaining(r.id) else {
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.etch.header(rev)),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
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
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(self.etch.header(rev)),
            id: r.id,
            ttl: left,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.etch.linearizable_barrier().await?;
        let snap = self.etch.store.read().map_err(EtcdError::from)?;
        let leases = snap
            .leases()
            .map_err(EtcdError::from)?
            .into_iter()
            .map(|l| pb::LeaseStatus { id: l.id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.etch.header(snap.revision())),
            leases,
        }))
    }
}
