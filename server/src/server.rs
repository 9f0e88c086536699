//! The running server: opening the data dir, the Raft node over the store, background
//! checkpoints, the gRPC listeners and graceful stop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use etch_engine::btree;
use etch_engine::mvcc::Store;
use etch_raft::{Applied, NoPeers, Node};

use crate::apply::{Apply, Compactor, Output, WriteResult};
use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::config::Config;
use crate::errors::EtcdError;
use crate::ids;
use crate::kv::KvService;
use crate::lease::{LeaseService, Lessor};
use crate::maintenance::{Alarms, MaintenanceService};
use crate::metrics::{Instrumented, Metrics};
use crate::pb::etcdserverpb::ResponseHeader;
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::watch::{WatchHub, WatchService};

/// Meta tree of cluster identity (local, not replicated).
pub const CLUSTER_TREE: &[u8] = b"etch.cluster";
/// Committed entries may run this far ahead of applied ones before writes are refused
/// (etcd's limit).
const APPLY_LAG_MAX: u64 = 5000;
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
    pub metrics: Arc<Metrics>,
    /// A NOSPACE activation is being proposed.
    pub raising_nospace: AtomicBool,
    /// Pages on the free list, counted in the background.
    pub free_pages: std::sync::atomic::AtomicU64,
    pub member_id: u64,
    pub cluster_id: u64,
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

    fn refresh_free_pages(&self) -> Result<(), String> {
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
        if self.alarms.has(crate::pb::etcdserverpb::AlarmType::Nospace) {
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
                let req = crate::pb::etcdserverpb::AlarmRequest {
                    action: crate::pb::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
                    member_id: etch.member_id,
                    alarm: crate::pb::etcdserverpb::AlarmType::Nospace as i32,
                };
                if let Err(e) = crate::maintenance::propose_alarm(&etch, req).await {
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

/// Reads the member and cluster ids stored at bootstrap, or computes and stores them.
fn identity(store: &Store, cfg: &Config) -> Result<(u64, u64), String> {
    let snap = store.read().map_err(|e| e.to_string())?;
    let get = |k: &[u8]| -> Result<Option<u64>, String> {
        match snap.meta_get(CLUSTER_TREE, k).map_err(|e| e.to_string())? {
            Some(v) => Ok(Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| "corrupt cluster identity in the data file".to_string(),
            )?))),
            None => Ok(None),
        }
    };
    if let (Some(m), Some(c)) = (get(b"member_id")?, get(b"cluster_id")?) {
        return Ok((m, c));
    }
    drop(snap);
    if cfg.initial_cluster_state == "existing" {
        return Err(
            "--initial-cluster-state=existing needs a data dir that already belongs to the cluster"
                .into(),
        );
    }
    let m = ids::member_id(&cfg.peer_urls, &cfg.initial_cluster_token);
    let c = ids::cluster_id(&[m]);
    let mut tx = store.write().map_err(|e| e.to_string())?;
    tx.meta_put(CLUSTER_TREE, b"member_id", &m.to_be_bytes())
        .map_err(|e| e.to_string())?;
    tx.meta_put(CLUSTER_TREE, b"cluster_id", &c.to_be_bytes())
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    store.checkpoint().map_err(|e| e.to_string())?;
    Ok((m, c))
}

/// Checkpoints the store in the background and lets the Raft log drop what the
/// checkpoint covers.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the background checkpoint runs when writes are slow.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// Page bytes written since the last checkpoint that start the next one at once: this
/// bounds the dirty page cache and the WAL kept for recovery.
const CHECKPOINT_DIRTY_BYTES: u64 = 64 << 20;

fn checkpoint_once(etch: &Etch) -> Result<(), String> {
    let applied = Applied::decode(&etch.store.marker().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    etch.store.checkpoint().map_err(|e| e.to_string())?;
    if applied.index > 0 {
        etch.node.compact(&applied);
    }
    Ok(())
}

impl Checkpointer {
    fn start(etch: Arc<Etch>) -> Checkpointer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("etch-checkpoint".into())
            .spawn(move || {
                let mut waited = Duration::ZERO;
                let step = Duration::from_millis(100);
                while !s.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited.as_millis().is_multiple_of(1000)
                        && let Err(e) = etch.refresh_free_pages()
                    {
                        tracing::warn!("counting free pages: {e}");
                    }
                    if waited < CHECKPOINT_INTERVAL
                        && etch.store.db().stats().unsynced_bytes < CHECKPOINT_DIRTY_BYTES
                    {
                        continue;
                    }
                    waited = Duration::ZERO;
                    if let Err(e) = checkpoint_once(&etch) {
                        tracing::error!("checkpoint failed: {e}; stopping");
                        // A failed sync is fatal: recover from disk at the next start.
                        std::process::exit(1);
                    }
                }
            })
            .expect("spawning the checkpoint thread");
        Checkpointer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub async fn run(cfg: Config) -> Result<(), String> {
    let member_dir = cfg.data_dir.join("member");
    std::fs::create_dir_all(&member_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", member_dir.display()))?;
    let db_path = member_dir.join("etch.db");
    let store = Arc::new(
        Store::open(
            &db_path,
            btree::Options {
                // Commits never checkpoint: the apply thread would wait for two
                // fdatasyncs. The checkpoint thread watches the unsynced bytes instead.
                checkpoint_bytes: u64::MAX,
                ..btree::Options::default()
            },
        )
        .map_err(|e| format!("cannot open {}: {e}", db_path.display()))?,
    );
    let (member_id, cluster_id) = identity(&store, &cfg)?;
    let applied = Applied::decode(&store.marker().map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", db_path.display()))?;
    let (compactor, compactor_thread) = Compactor::start(store.clone());
    let (revision_tx, revision_rx) = tokio::sync::watch::channel(store.current_revision());
    let watch_hub = WatchHub::start(store.clone(), revision_rx);
    let election = cfg.heartbeat * cfg.election_ticks as u32;
    let lessor = Lessor::load(
        &store,
        crate::lease::min_ttl(cfg.heartbeat, cfg.election_ticks),
        election,
    )?;
    let alarms = Alarms::load(&store)?;
    let metrics = Arc::new(Metrics::default());
    let mut rcfg = etch_raft::Config::new(member_id, &cfg.wal_dir);
    rcfg.tick = cfg.heartbeat;
    rcfg.election_ticks = cfg.election_ticks;
    let node = Node::start(
        rcfg,
        applied.clone(),
        Apply {
            store: store.clone(),
            compactor: compactor.clone(),
            revision_tx,
            lessor: lessor.clone(),
            alarms: alarms.clone(),
            metrics: metrics.clone(),
        },
        NoPeers,
    )
    .map_err(|e| format!("cannot start raft from {}: {e}", cfg.wal_dir.display()))?;
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{member_id:x}"),
        cluster_id = %format!("{cluster_id:x}"),
        applied = applied.index,
        revision = store.current_revision(),
        data_dir = %cfg.data_dir.display(),
        advertise_client_urls = ?cfg.advertise_client_urls,
        "etch starting"
    );
    let etch = Arc::new(Etch {
        cfg: cfg.clone(),
        store: store.clone(),
        node,
        compactor: compactor.clone(),
        watch_hub,
        lessor,
        alarms,
        metrics,
        raising_nospace: AtomicBool::new(false),
        free_pages: std::sync::atomic::AtomicU64::new(0),
        member_id,
        cluster_id,
    });
    etch.refresh_free_pages()?;
    let checkpointer = Checkpointer::start(etch.clone());
    let autocompactor = crate::autocompact::spawn(etch.clone());
    let lease_tasks = [
        crate::lease::spawn_expiry(etch.clone()),
        crate::lease::spawn_checkpoints(etch.clone()),
    ];

    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let tls = match &cfg.tls {
        Some(t) => Some(tls_config(t)?),
        None => None,
    };
    let mut servers = Vec::new();
    for l in &cfg.listen_client {
        let addr = l.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, tls = l.tls, "serving client requests");
        let mut stop_rx = stop_tx.subscribe();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder().accept_http1(true);
        if l.tls {
            let t = tls
                .clone()
                .expect("https listeners are refused without TLS files");
            builder = builder
                .tls_config(t)
                .map_err(|e| format!("TLS setup for {addr}: {e}"))?;
        }
        // etcd serves HTTP/1.1 (health, version, metrics) on the client URLs beside gRPC.
        let router = client_routes(&etch, max_msg)
            .into_axum_router()
            .merge(crate::http::router(etch.clone()))
            .fallback(crate::http::fallback);
        servers.push(tokio::spawn(
            builder
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.recv().await;
                }),
        ));
    }
    for addr in &cfg.listen_metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "serving metrics and health");
        let mut stop_rx = stop_tx.subscribe();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        servers.push(tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(
                    crate::http::router(etch.clone()).fallback(crate::http::fallback),
                ))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.recv().await;
                }),
        ));
    }
    println!(
        "etch is ready to serve client requests on {:?}",
        cfg.listen_client
    );

    wait_for_signal(&etch).await;
    tracing::info!("stopping: finishing in-flight requests");
    let _ = stop_tx.send(());
    if let Some(a) = autocompactor {
        a.abort();
    }
    for t in lease_tasks {
        t.abort();
    }
    // Remaining TTLs survive the restart.
    if etch.node.status().is_leader {
        crate::lease::checkpoint(&etch).await;
    }
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    checkpointer.stop();
    etch.node.stop();
    compactor.stop();
    let _ = compactor_thread.join();
    let fatal = etch.node.fatal();
    if let Some(why) = &fatal {
        tracing::error!("stopped after a fatal error: {why}");
    } else {
        checkpoint_once(&etch)?;
    }
    tracing::info!(revision = store.current_revision(), "etch stopped");
    match fatal {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Every gRPC service, instrumented and with etcd's message size limit.
fn client_routes(etch: &Arc<Etch>, max_msg: usize) -> tonic::service::Routes {
    let e = || etch.clone();
    tonic::service::Routes::builder()
        .add_service(Instrumented {
            inner: KvServer::new(KvService { etch: e() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
            metrics: etch.metrics.clone(),
        })
        .add_service(Instrumented {
            inner: WatchServer::new(WatchService { etch: e() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
            metrics: etch.metrics.clone(),
        })
        .add_service(Instrumented {
            inner: LeaseServer::new(LeaseService { etch: e() }).max_decoding_message_size(max_msg),
            metrics: etch.metrics.clone(),
        })
        .add_service(Instrumented {
            inner: MaintenanceServer::new(MaintenanceService { etch: e() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(usize::MAX),
            metrics: etch.metrics.clone(),
        })
        .add_service(Instrumented {
            inner: ClusterServer::new(ClusterService { etch: e() })
                .max_decoding_message_size(max_msg),
            metrics: etch.metrics.clone(),
        })
        .add_service(Instrumented {
            inner: AuthServer::new(AuthService { etch: e() }).max_decoding_message_size(max_msg),
            metrics: etch.metrics.clone(),
        })
        .clone()
        .routes()
}

/// The server side of client TLS from the PEM files named by the flags.
fn tls_config(t: &crate::config::Tls) -> Result<tonic::transport::ServerTlsConfig, String> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut c = ServerTlsConfig::new().identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
    if let Some(ca) = &t.trusted_ca {
        c = c
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(!t.client_cert_auth);
    }
    Ok(c)
}

async fn wait_for_signal(etch: &Etch) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = check.tick() => {
                // A fatal storage error stops the server; the next start recovers from disk.
                if etch.node.fatal().is_some() {
                    return;
                }
            }
        }
    }
}

/// `etch check DATA_FILE`-style path helper: the data file inside a data dir.
pub fn db_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("member").join("etch.db")
}
