//! The running server (`run`): opening the data dir, the Raft node over the store,
//! background checkpoints, the gRPC and HTTP listeners and graceful stop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use etch_raft::{Applied, Node};

use crate::alarms::Alarms;
use crate::apply::{Apply, Compactor};
use crate::auth::service::AuthService;
use crate::cluster::ClusterService;
use crate::concurrency::{ElectionService, LockService};
use crate::config::Config;
use crate::data_dir;
use crate::etch::{Etch, GRPC_OVERHEAD_BYTES, identity};
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lessor::Lessor;
use crate::maintenance::MaintenanceService;
use crate::members;
use crate::metrics::{Instrumented, Metrics};
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::etchpeerpb::peer_server::PeerServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::peer::{Feedback, PeerEvent, PeerInfo, PeerTransport, Peers, SnapshotInbox};
use crate::peer_service::PeerService;
use crate::watch::WatchService;
use crate::watch_hub::WatchHub;

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
                let mut last_applied = *etch.node.applied().borrow();
                while !s.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited.as_millis().is_multiple_of(1000)
                        && let Err(e) = etch.refresh_free_pages()
                    {
                        tracing::warn!("counting free pages: {e}");
                    }
                    let applied = *etch.node.applied().borrow();
                    // --snapshot-count: this many entries applied also start one, so the
                    // WAL kept for a restart stays short under a fast write load.
                    if waited < CHECKPOINT_INTERVAL
                        && etch.store.db().stats().unsynced_bytes < CHECKPOINT_DIRTY_BYTES
                        && applied < last_applied + etch.cfg.snapshot_count
                    {
                        continue;
                    }
                    waited = Duration::ZERO;
                    last_applied = applied;
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
    let db_path = data_dir::db_file(&cfg.data_dir);
    let store = Arc::new(data_dir::open_store(&cfg.data_dir)?);
    let (member_id, cluster_id) = identity(&store, &cfg)?;
    let listed = members::list(&store.read().map_err(|e| e.to_string())?)?;
    let others: Vec<PeerInfo> = listed
        .iter()
        .filter(|m| m.id != member_id)
        .map(|m| PeerInfo {
            id: m.id,
            urls: m.peer_ur_ls.clone(),
        })
        .collect();
    if !listed.iter().any(|m| m.id == member_id) {
        return Err(format!(
            "member {member_id:x} is not in the member list this data dir holds"
        ));
    }
    let peers = Peers::new(cluster_id, member_id, &others);
    let inbox = SnapshotInbox::new(data_dir::member_dir(&cfg.data_dir).join("snap"))?;
    let feedback: Feedback = Arc::new(std::sync::OnceLock::new());
    let transport = PeerTransport::start(
        peers.clone(),
        &others,
        feedback.clone(),
        tokio::runtime::Handle::current(),
        store.clone(),
        inbox.dir.clone(),
    );
    let applied = Applied::decode(&store.marker().map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", db_path.display()))?;
    let (compactor, compactor_thread) = Compactor::start(store.clone());
    let (revision_tx, revision_rx) = tokio::sync::watch::channel(store.current_revision());
    let watch_hub = WatchHub::start(store.clone(), revision_rx);
    let election = cfg.heartbeat * cfg.election_ticks as u32;
    let lessor = Lessor::load(
        &store,
        crate::lessor::min_ttl(cfg.heartbeat, cfg.election_ticks),
        election,
    )?;
    let alarms = Alarms::load(&store)?;
    let auth = Arc::new(crate::auth::AuthStore::load(
        &store,
        crate::auth::tokens::Tokens::from_flags(&cfg.auth_token, cfg.auth_token_ttl)?,
        cfg.bcrypt_cost,
    )?);
    let metrics = Arc::new(Metrics::default());
    let mut rcfg = etch_raft::Config::new(member_id, &cfg.wal_dir);
    rcfg.tick = cfg.heartbeat;
    rcfg.election_ticks = cfg.election_ticks;
    rcfg.initial_voters = listed.iter().map(|m| m.id).collect();
    rcfg.catchup_entries = cfg.snapshot_catchup_entries;
    rcfg.retained_max = cfg.snapshot_count;
    let node = Node::start(
        rcfg,
        applied.clone(),
        Apply {
            store: store.clone(),
            compactor: compactor.clone(),
            revision_tx,
            lessor: lessor.clone(),
            alarms: alarms.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            inbox: inbox.clone(),
            lease_extend: election,
        },
        transport,
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
        auth,
        metrics,
        raising_nospace: AtomicBool::new(false),
        free_pages: AtomicU64::new(0),
        member_id,
        cluster_id,
        peers,
        snapshot_inbox: inbox,
    });
    {
        let weak = Arc::downgrade(&etch);
        let report: Box<dyn Fn(PeerEvent) + Send + Sync> = Box::new(move |ev| {
            if let Some(e) = weak.upgrade() {
                match ev {
                    PeerEvent::Unreachable(id) => e.node.report_unreachable(id),
                    PeerEvent::Snapshot(id, ok) => e.node.report_snapshot(id, ok),
                }
            }
        });
        let _ = feedback.set(report);
    }
    let publisher = tokio::spawn(crate::etch::publish_attributes(etch.clone()));
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
    let mut peer_servers = Vec::new();
    // The peer service: only a cluster of more than one member has peers to serve.
    if !others.is_empty() {
        for l in &cfg.listen_peer {
            let addr = l.addr;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} for peers: {e}"))?;
            tracing::info!(%addr, "serving peer traffic");
            let mut stop_rx = stop_tx.subscribe();
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            peer_servers.push(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(
                        PeerServer::new(PeerService { etch: etch.clone() })
                            .max_decoding_message_size(PEER_MESSAGE_MAX),
                    )
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop_rx.recv().await;
                    }),
            ));
        }
    }
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
            .merge(crate::gateway::router(etch.clone()))
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
    publisher.abort();
    if etch.node.status().is_leader && !others.is_empty() {
        hand_over_leadership(&etch).await;
    }
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
    // Peers hold their streams open for as long as they run: the peer listener stops
    // without waiting for them.
    for s in peer_servers {
        s.abort();
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

/// The largest message the peer service accepts: a batch of raft messages or one
/// snapshot chunk, with room to spare.
const PEER_MESSAGE_MAX: usize = 64 << 20;

/// A leader that stops hands leadership to a caught-up follower first, as etcd does, so
/// a rolling restart costs no election timeout. Waits at most one election timeout.
async fn hand_over_leadership(etch: &Etch) {
    let me = etch.member_id;
    etch.node.transfer_leadership();
    let wait = etch.cfg.heartbeat * etch.cfg.election_ticks as u32;
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        let st = etch.node.status();
        if st.leader != me && st.leader != 0 {
            tracing::info!(
                to = %format!("{:x}", st.leader),
                "handed leadership over before stopping"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!("no follower took leadership before the stop");
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
        .add_service(Instrumented {
            inner: LockServer::new(LockService { etch: e() }).max_decoding_message_size(max_msg),
            metrics: etch.metrics.clone(),
        })
        .add_service(Instrumented {
            inner: ElectionServer::new(ElectionService { etch: e() })
                .max_decoding_message_size(max_msg),
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
