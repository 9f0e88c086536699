//! `Etch`, the shared handle every service and background task holds: the store, the Raft
//! node, the lessor, the alarms, the watch hub and the metrics; response headers, the
//! space quota, proposing a write and the ReadIndex barrier; and the member's identity.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use etch_engine::mvcc::Store;
use etch_raft::Node;
use prost::Message as _;

use crate::alarms::Alarms;
use crate::apply::{Compactor, Output, WriteResult};
use crate::auth::AuthInfo;
use crate::config::Config;
use crate::data_dir::CLUSTER_TREE;
use crate::errors::EtcdError;
use crate::ids;
use crate::lessor::Lessor;
use crate::members;
use crate::metrics::Metrics;
use crate::pb::etcdserverpb::{self as pb, ResponseHeader};
use crate::pb::etchpb::{AuthHeader, InternalRequest, internal_request};
use crate::pb::etchpeerpb as ppb;
use crate::peer::{Peers, SnapshotInbox};
use crate::watch_hub::WatchHub;

/// Committed entries may run this far ahead of applied ones before writes are refused
/// (etcd's limit).
pub const APPLY_LAG_MAX: u64 = 5000;
/// Headroom above --max-request-bytes that gRPC accepts before refusing a message outright
/// (etcd's 512 KiB).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Shared server state.
pub struct Etch {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub node: Node<Output>,
    pub compactor: Arc<Compactor>,
    pub watch_hub: Arc<WatchHub>,
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<Alarms>,
    pub auth: Arc<crate::auth::AuthStore>,
    pub metrics: Arc<Metrics>,
    /// A NOSPACE activation is being proposed.
    pub raising_nospace: AtomicBool,
    /// Pages on the free list, counted in the background.
    pub free_pages: AtomicU64,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The other members, for the transport, forwarding and metrics.
    pub peers: Arc<Peers>,
    /// Snapshots received from the leader, staged for the state machine.
    pub snapshot_inbox: Arc<SnapshotInbox>,
}

impl std::fmt::Debug for Etch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etch")
            .field("member_id", &format_args!("{:x}", self.member_id))
            .field("cluster_id", &format_args!("{:x}", self.cluster_id))
            .finish()
    }
}

impl Etch {
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.status().term,
        }
    }

    /// Bytes of the data file in use: below the high-water mark and not on the free list
    /// (as of the last background count, at most about a second old).
    pub fn size_in_use(&self) -> u64 {
        let st = self.store.db().stats();
        let free = self.free_pages.load(Ordering::Relaxed);
        st.high_water_pages.saturating_sub(free) * st.page_size as u64
    }

    pub fn refresh_free_pages(&self) -> Result<(), String> {
        let n = self
            .store
            .db()
            .begin_read()
            .and_then(|r| r.free_pages())
            .map_err(|e| e.to_string())?;
        self.free_pages.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.cfg.heartbeat * self.cfg.election_ticks as u32
    }

    /// etcd's space quota: a write that would take the data file past
    /// `--quota-backend-bytes` is refused (deletes and compactions are always accepted).
    pub fn check_quota(self: &Arc<Self>, cost: usize) -> Result<(), EtcdError> {
        if cost == 0 {
            return Ok(());
        }
        if self.alarms.has(pb::AlarmType::Nospace) {
            return Err(EtcdError::NoSpace);
        }
        // Free pages are reused in place, so what counts is the space in use.
        let size = self.size_in_use();
        if size + cost as u64 >= self.cfg.quota_backend_bytes {
            // Raise NOSPACE, as etcd does: from now on only reads, deletes and
            // compactions are accepted until an operator deactivates it. One proposal
            // at a time: a burst of refused writes raises it once.
            if self.raising_nospace.swap(true, Ordering::AcqRel) {
                return Err(EtcdError::NoSpace);
            }
            let etch = self.clone();
            tokio::spawn(async move {
                let req = pb::AlarmRequest {
                    action: pb::alarm_request::AlarmAction::Activate as i32,
                    member_id: etch.member_id,
                    alarm: pb::AlarmType::Nospace as i32,
                };
                if let Err(e) = propose_alarm(&etch, req).await {
                    tracing::warn!("raising the NOSPACE alarm: {e}");
                }
                etch.raising_nospace.store(false, Ordering::Release);
            });
            return Err(EtcdError::NoSpace);
        }
        Ok(())
    }

    /// Replicates one encoded request and returns what applying it produced.
    pub async fn propose(&self, bytes: Vec<u8>) -> Result<WriteResult, EtcdError> {
        if bytes.len() > self.cfg.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        let st = self.node.status();
        if st.commit > *self.node.applied().borrow() + APPLY_LAG_MAX {
            return Err(EtcdError::TooManyRequests);
        }
        let rx = self.node.propose(bytes);
        let m = &self.metrics;
        m.proposals_pending.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(self.request_timeout(), rx).await;
        m.proposals_pending.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(Ok(out))) => out,
            failed => {
                m.proposals_failed.fetch_add(1, Ordering::Relaxed);
                match failed {
                    // etcd's word for a timeout across a change of leader.
                    Err(_) if self.node.status().leader != st.leader => {
                        Err(EtcdError::TimeoutDueToLeaderFail)
                    }
                    Err(_) => Err(EtcdError::Timeout),
                    Ok(Err(_)) => Err(EtcdError::Stopped),
                    Ok(Ok(Err(e))) => Err(e.into()),
                    Ok(Ok(Ok(_))) => unreachable!("matched above"),
                }
            }
        }
    }

    /// Returns once local state reflects every write acknowledged before the call.
    pub async fn linearizable_barrier(&self) -> Result<(), EtcdError> {
        let timeout = self.request_timeout();
        let index = match tokio::time::timeout(timeout, self.node.read_index()).await {
            Err(_) => return Err(EtcdError::Timeout),
            Ok(Err(_)) => return Err(EtcdError::Stopped),
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Ok(Ok(i))) => i,
        };
        let mut applied = self.node.applied();
        match tokio::time::timeout(timeout, applied.wait_for(|a| *a >= index)).await {
            Err(_) => Err(EtcdError::Timeout),
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// What a request carries to say who sent it.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Token(String),
    /// A token that is not text.
    BadToken,
    /// The common name of a verified client certificate (`--client-cert-auth`).
    Certificate(String),
    /// Found by the service that called this one.
    Resolved(AuthInfo),
}

/// A client's request as proposed: with who asked, for the permission checks at apply.
pub fn client_request(req: internal_request::Request, who: &AuthInfo) -> Vec<u8> {
    InternalRequest {
        request: Some(req),
        auth: Some(AuthHeader {
            username: who.user.clone(),
            revision: who.revision,
        }),
    }
    .encode_to_vec()
}

/// etch's own request (lease expiry, auto-compaction, alarms, member attributes):
/// applied as the server, unchecked.
pub fn server_request(req: internal_request::Request) -> Vec<u8> {
    InternalRequest {
        request: Some(req),
        auth: None,
    }
    .encode_to_vec()
}

impl Etch {
    /// Who sent a request, as etcd finds out: a token in the `token` (or gateway's
    /// `authorization`) metadata, else with `--client-cert-auth` the common name of the
    /// client's certificate, else nobody. A token this member does not know is refused.
    pub async fn who<T>(&self, req: &tonic::Request<T>) -> Result<AuthInfo, EtcdError> {
        self.resolve(&self.credentials(req)).await
    }

    /// What a request carries to say who sent it (see [`Etch::who`]); a stream keeps it
    /// to check each new watcher.
    pub fn credentials<T>(&self, req: &tonic::Request<T>) -> Credentials {
        // Services calling services pass on what they found.
        if let Some(ai) = req.extensions().get::<AuthInfo>() {
            return Credentials::Resolved(ai.clone());
        }
        let md = req.metadata();
        if let Some(t) = md.get("token").or_else(|| md.get("authorization")) {
            return match t.to_str() {
                Ok(t) => Credentials::Token(t.to_string()),
                Err(_) => Credentials::BadToken,
            };
        }
        if self.cfg.tls.as_ref().is_some_and(|t| t.client_cert_auth)
            && md.get("grpcgateway-accept").is_none()
            && let Some(certs) = req.peer_certs()
            && let Some(user) = certs
                .first()
                .and_then(|c| crate::auth::cert::common_name(c))
        {
            return Credentials::Certificate(user);
        }
        Credentials::None
    }

    pub async fn resolve(&self, c: &Credentials) -> Result<AuthInfo, EtcdError> {
        match c {
            Credentials::Resolved(ai) => Ok(ai.clone()),
            Credentials::Token(t) => self.token_info(t).await.ok_or(EtcdError::InvalidAuthToken),
            Credentials::BadToken => Err(EtcdError::InvalidAuthToken),
            Credentials::Certificate(user) => Ok(AuthInfo {
                user: user.clone(),
                revision: self.auth.revision(),
            }),
            Credentials::None => Ok(AuthInfo::default()),
        }
    }

    async fn token_info(&self, token: &str) -> Option<AuthInfo> {
        match self.auth.tokens.index_of(token) {
            Some(_) if self.auth.tokens.known(token) => {}
            // A simple token is known once its Authenticate entry is applied here.
            Some(index) => {
                let mut applied = self.node.applied();
                tokio::time::timeout(self.request_timeout(), applied.wait_for(|a| *a >= index))
                    .await
                    .ok()?
                    .ok()?;
            }
            None if self.auth.tokens.is_simple() => return None,
            None => {}
        }
        self.auth.tokens.info(token, self.auth.revision())
    }

    /// etcd's check after a read: credentials from before an auth change that landed
    /// while the read ran are refused.
    pub fn still_current(&self, who: &AuthInfo) -> Result<(), EtcdError> {
        if who.revision != 0 && who.revision != self.auth.revision() {
            return Err(EtcdError::AuthOldRevision);
        }
        Ok(())
    }

    /// Root only (maintenance, membership).
    pub async fn admin<T>(&self, req: &tonic::Request<T>) -> Result<AuthInfo, EtcdError> {
        let who = self.who(req).await?;
        self.auth.admin_permitted(&who)?;
        Ok(who)
    }
}

impl Etch {
    /// Returns once this member has applied everything committed when it was called (at
    /// most the request timeout): a leader may know a lease a follower has already told
    /// its client about, before applying its grant.
    pub async fn caught_up_to_commit(&self) {
        let commit = self.node.status().commit;
        let mut applied = self.node.applied();
        let _ =
            tokio::time::timeout(self.request_timeout(), applied.wait_for(|a| *a >= commit)).await;
    }

    /// The leader's keep-alive: the lease's TTL, or 0 for an unknown lease (etcd's answer).
    pub async fn renew_lease(&self, id: i64) -> i64 {
        if let Some(ttl) = self.lessor.renew(id) {
            return ttl;
        }
        self.caught_up_to_commit().await;
        self.lessor.renew(id).unwrap_or(0)
    }

    /// The leader's (granted TTL, seconds left) of a live lease, as of every committed
    /// grant.
    pub async fn lease_remaining(&self, id: i64) -> Option<(i64, i64)> {
        if let Some(r) = self.lessor.remaining(id) {
            return Some(r);
        }
        self.caught_up_to_commit().await;
        self.lessor.remaining(id)
    }

    /// Asks the leader a lease question only it can answer (keep-alive, time-to-live):
    /// here if this member leads, else over the peer service.
    pub async fn lease_at_leader(
        &self,
        id: i64,
        keys: bool,
        keep_alive: bool,
    ) -> Result<ppb::LeaseReply, EtcdError> {
        let leader = self.node.status().leader;
        if leader == 0 {
            return Err(EtcdError::NoLeader);
        }
        let req = ppb::LeaseRequest {
            cluster_id: self.cluster_id,
            id,
            keys,
        };
        let call = async {
            let mut c = self
                .peers
                .client(leader)
                .await
                .map_err(|_| EtcdError::NoLeader)?;
            let r = if keep_alive {
                c.lease_keep_alive(req).await
            } else {
                c.lease_time_to_live(req).await
            };
            r.map(tonic::Response::into_inner).map_err(|s| {
                self.peers.drop_client(leader);
                tracing::debug!(leader = %format!("{leader:x}"), "forwarding a lease call: {s}");
                EtcdError::NoLeader
            })
        };
        match tokio::time::timeout(self.request_timeout(), call).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Timeout),
        }
    }
}

/// Publishes this member's name and client URLs through Raft once a leader is known, so
/// every member lists them (etcd's publish). Retries until it lands or the task is
/// stopped; does nothing if the member list already holds them.
pub async fn publish_attributes(etch: Arc<Etch>) {
    let mine = pb::Member {
        id: etch.member_id,
        name: etch.cfg.name.clone(),
        peer_ur_ls: Vec::new(),
        client_ur_ls: etch.cfg.advertise_client_urls.clone(),
        is_learner: false,
    };
    for attempt in 0u32.. {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let current = etch
            .store
            .read()
            .map_err(|e| e.to_string())
            .and_then(|s| members::get(&s, etch.member_id));
        match current {
            Ok(Some(m)) if m.name == mine.name && m.client_ur_ls == mine.client_ur_ls => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("reading the member list: {e}");
                continue;
            }
        }
        if etch.node.status().leader == 0 {
            continue;
        }
        let bytes = server_request(internal_request::Request::MemberAttributes(mine.clone()));
        match etch.propose(bytes).await {
            Ok(_) => {
                tracing::info!(
                    name = %mine.name,
                    client_urls = ?mine.client_ur_ls,
                    "published this member's attributes"
                );
                return;
            }
            Err(e) => tracing::debug!("publishing this member's attributes: {e}"),
        }
    }
}

/// Proposes an alarm change.
pub async fn propose_alarm(
    etch: &Etch,
    req: pb::AlarmRequest,
) -> Result<Vec<(u64, i32)>, EtcdError> {
    let bytes = server_request(internal_request::Request::Alarm(req));
    match etch.propose(bytes).await? {
        WriteResult::Alarm(v) => Ok(v),
        other => Err(EtcdError::Internal(format!(
            "etch: mismatched apply result {other:?}"
        ))),
    }
}

/// Reads the member and cluster ids stored at bootstrap, or computes them as etcd does
/// (from `--initial-cluster` and the token) and stores them with the initial member list.
pub fn identity(store: &Store, cfg: &Config) -> Result<(u64, u64), String> {
    let snap = store.read().map_err(|e| e.to_string())?;
    let get = |k: &[u8]| -> Result<Option<u64>, String> {
        match snap.meta_get(CLUSTER_TREE, k).map_err(|e| e.to_string())? {
            Some(v) => Ok(Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| "corrupt cluster identity in the data file".to_string(),
            )?))),
            None => Ok(None),
        }
    };
    let stored = (get(b"member_id")?, get(b"cluster_id")?);
    let listed = members::list(&snap)?;
    drop(snap);
    if let (Some(m), Some(c)) = stored {
        if !listed.is_empty() {
            // Once data exists, membership comes from it; the flags are not consulted.
            return Ok((m, c));
        }
        // A data dir from before the member list was stored: this member alone.
        let mut tx = store.write().map_err(|e| e.to_string())?;
        members::put(
            &mut tx,
            &pb::Member {
                id: m,
                name: cfg.name.clone(),
                peer_ur_ls: cfg.peer_urls.clone(),
                client_ur_ls: Vec::new(),
                is_learner: false,
            },
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        store.checkpoint().map_err(|e| e.to_string())?;
        return Ok((m, c));
    }
    if cfg.initial_cluster_state == "existing" {
        return Err(
            "--initial-cluster-state=existing needs a data dir that already belongs to the cluster"
                .into(),
        );
    }
    let mut tx = store.write().map_err(|e| e.to_string())?;
    let (m, c) = write_identity(
        &mut tx,
        &cfg.initial_cluster,
        &cfg.initial_cluster_token,
        &cfg.peer_urls,
    )?;
    tx.commit().map_err(|e| e.to_string())?;
    store.checkpoint().map_err(|e| e.to_string())?;
    Ok((m, c))
}

/// Writes a new cluster's identity (this member's id and the cluster id, as etcd computes
/// them) and its member list: at a first start, or at a restore given the cluster's flags.
pub fn write_identity(
    tx: &mut etch_engine::mvcc::MvccTxn<'_>,
    initial_cluster: &[(String, Vec<String>)],
    token: &str,
    peer_urls: &[String],
) -> Result<(u64, u64), String> {
    let initial = members::initial(initial_cluster, token);
    let m = ids::member_id(peer_urls, token);
    let ids: Vec<u64> = initial.iter().map(|x| x.id).collect();
    let c = ids::cluster_id(&ids);
    tx.meta_put(CLUSTER_TREE, b"member_id", &m.to_be_bytes())
        .map_err(|e| e.to_string())?;
    tx.meta_put(CLUSTER_TREE, b"cluster_id", &c.to_be_bytes())
        .map_err(|e| e.to_string())?;
    for x in &initial {
        members::put(tx, x).map_err(|e| e.to_string())?;
    }
    Ok((m, c))
}
