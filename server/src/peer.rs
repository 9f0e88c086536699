//! The peer transport: raft messages between members over etch's `etchpeerpb.Peer` gRPC
//! service (HTTP/2) on `--listen-peer-urls`, dialled at each member's advertised peer URLs.
//!
//! - One long-lived client stream per peer carries batches of messages. Each peer has a
//!   bounded queue: when it is full, or the peer is unreachable, messages are dropped and
//!   raft is told (it retries), so a slow or dead peer never blocks the raft loop or the
//!   other peers. A broken stream is redialled with backoff.
//! - Snapshots go out of band: the sender copies a pinned version of its store to a file
//!   and streams it in checksummed chunks; the receiver stages the file and steps the raft
//!   message only once the whole file arrived intact.
//! - Followers forward the lease calls only the leader answers (keep-alive, time-to-live).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use etch_engine::mvcc::Store;
use etch_raft::{Applied, Message, Transport};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::pb::etchpeerpb as ppb;
use crate::pb::etchpeerpb::peer_client::PeerClient;

/// Messages queued for one peer before new ones are dropped.
const QUEUE_MAX: usize = 4096;
/// Messages sent in one batch.
const BATCH_MAX: usize = 512;
/// Bytes of messages per batch: a batch stays far below what a peer accepts in one
/// message (the peer server's decoding limit), however large the entries are.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// Batches buffered in one stream before the stream counts as stalled.
const STREAM_BUFFER: usize = 64;
/// Snapshot chunk size.
pub const CHUNK_BYTES: usize = 1 << 20;
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the transport tells raft about delivery.
#[derive(Debug, Clone, Copy)]
pub enum PeerEvent {
    Unreachable(u64),
    /// (peer, whether it took the snapshot)
    Snapshot(u64, bool),
}

/// Where delivery feedback goes; set once the raft node exists.
pub type Feedback = Arc<OnceLock<Box<dyn Fn(PeerEvent) + Send + Sync>>>;

fn report(fb: &Feedback, ev: PeerEvent) {
    if let Some(f) = fb.get() {
        f(ev);
    }
}

/// Counters for etcd's network metrics, per peer.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    pub sent_failures: AtomicU64,
    pub heartbeat_send_failures: AtomicU64,
    /// Round trips of dialling the peer.
    pub rtt: crate::metrics::Histogram,
}

/// The other members as the transport knows them.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: u64,
    pub urls: Vec<String>,
}

/// Shared by the transport and the peer service.
#[derive(Debug)]
pub struct Peers {
    pub cluster_id: u64,
    pub member_id: u64,
    urls: Mutex<HashMap<u64, Vec<String>>>,
    pub stats: Mutex<HashMap<u64, Arc<PeerStats>>>,
    channels: Mutex<HashMap<u64, Channel>>,
}

impl Peers {
    pub fn new(cluster_id: u64, member_id: u64, peers: &[PeerInfo]) -> Arc<Peers> {
        Arc::new(Peers {
            cluster_id,
            member_id,
            urls: Mutex::new(peers.iter().map(|p| (p.id, p.urls.clone())).collect()),
            stats: Mutex::new(
                peers
                    .iter()
                    .map(|p| (p.id, Arc::new(PeerStats::default())))
                    .collect(),
            ),
            channels: Mutex::new(HashMap::new()),
        })
    }

    pub fn stats(&self, id: u64) -> Arc<PeerStats> {
        lock(&self.stats).entry(id).or_default().clone()
    }

    fn urls(&self, id: u64) -> Vec<String> {
        lock(&self.urls).get(&id).cloned().unwrap_or_default()
    }

    /// A client for `id`, dialled once and shared (for forwarded lease calls).
    pub async fn client(&self, id: u64) -> Result<PeerClient<Channel>, String> {
        if let Some(ch) = lock(&self.channels).get(&id) {
            return Ok(PeerClient::new(ch.clone()));
        }
        let ch = dial(&self.urls(id)).await?;
        lock(&self.channels).insert(id, ch.clone());
        Ok(PeerClient::new(ch))
    }

    /// Forgets a broken shared channel.
    pub fn drop_client(&self, id: u64) {
        lock(&self.channels).remove(&id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Dials the first of `urls` that answers.
async fn dial(urls: &[String]) -> Result<Channel, String> {
    let mut last = String::from("no peer URLs");
    for u in urls {
        let ep = match Endpoint::from_shared(u.clone()) {
            Ok(ep) => ep
                .connect_timeout(DIAL_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5)),
            Err(e) => {
                last = format!("{u}: {e}");
                continue;
            }
        };
        match ep.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = format!("{u}: {e}"),
        }
    }
    Err(last)
}

/// The raft transport over the peer service. `send` never blocks.
pub struct PeerTransport {
    peers: Arc<Peers>,
    queues: HashMap<u64, mpsc::Sender<Message>>,
    feedback: Feedback,
    rt: tokio::runtime::Handle,
    store: Arc<Store>,
    /// Where snapshot copies are made before they are streamed.
    scratch: PathBuf,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("peers", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PeerTransport {
    /// Starts one sender task per peer on `rt`.
    pub fn start(
        peers: Arc<Peers>,
        others: &[PeerInfo],
        feedback: Feedback,
        rt: tokio::runtime::Handle,
        store: Arc<Store>,
        scratch: PathBuf,
    ) -> PeerTransport {
        let mut queues = HashMap::new();
        for p in others {
            let (tx, rx) = mpsc::channel(QUEUE_MAX);
            queues.insert(p.id, tx);
            rt.spawn(run_sender(p.id, rx, peers.clone(), feedback.clone()));
        }
        PeerTransport {
            peers,
            queues,
            feedback,
            rt,
            store,
            scratch,
        }
    }
}

impl Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(q) = self.queues.get(&to) else {
                tracing::warn!(to, "raft: message to an unknown member dropped");
                continue;
            };
            if let Err(e) = q.try_send(m) {
                let st = self.peers.stats(to);
                st.sent_failures.fetch_add(1, Ordering::Relaxed);
                if let mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) = e
                    && m.msg_type == etch_raft::MessageType::MsgHeartbeat
                {
                    st.heartbeat_send_failures.fetch_add(1, Ordering::Relaxed);
                }
                report(&self.feedback, PeerEvent::Unreachable(to));
            }
        }
    }

    fn send_snapshot(&mut self, msg: Message) -> bool {
        let to = msg.to;
        let peers = self.peers.clone();
        let fb = self.feedback.clone();
        let store = self.store.clone();
        let scratch = self.scratch.clone();
        self.rt.spawn(async move {
            let ok = match send_snapshot(&peers, msg, store, &scratch).await {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(to = %format!("{to:x}"), "sending a snapshot: {e}");
                    false
                }
            };
            report(&fb, PeerEvent::Snapshot(to, ok));
        });
        true
    }
}

/// One peer's sender: keeps a stream open and feeds it batches from the queue.
async fn run_sender(
    to: u64,
    mut rx: mpsc::Receiver<Message>,
    peers: Arc<Peers>,
    feedback: Feedback,
) {
    let mut backoff = BACKOFF_MIN;
    let stats = peers.stats(to);
    loop {
        let started = Instant::now();
        let ch = match dial(&peers.urls(to)).await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::debug!(to = %format!("{to:x}"), "peer unreachable: {e}");
                // What waited meanwhile is lost; raft learns the peer is unreachable.
                if !drain_unreachable(&mut rx, to, &feedback, &stats) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        stats.rtt.observe(started.elapsed());
        backoff = BACKOFF_MIN;
        let (stream_tx, stream_rx) = mpsc::channel::<ppb::RaftBatch>(STREAM_BUFFER);
        let mut client = PeerClient::new(ch);
        let call = client.raft(ReceiverStream::new(stream_rx));
        tokio::pin!(call);
        let mut ended = false;
        loop {
            tokio::select! {
                r = &mut call => {
                    if let Err(e) = r {
                        tracing::debug!(to = %format!("{to:x}"), "peer stream ended: {e}");
                    }
                    ended = true;
                }
                m = rx.recv() => {
                    let Some(m) = m else { return };
                    let mut messages = vec![etch_raft::encode_message(&m)];
                    let mut bytes = messages[0].len();
                    while messages.len() < BATCH_MAX && bytes < BATCH_BYTES_MAX {
                        match rx.try_recv() {
                            Ok(m) => {
                                let enc = etch_raft::encode_message(&m);
                                bytes += enc.len();
                                messages.push(enc);
                            }
                            Err(_) => break,
                        }
                    }
                    let count = messages.len();
                    let b = ppb::RaftBatch {
                        cluster_id: peers.cluster_id,
                        from: peers.member_id,
                        messages,
                    };
                    match stream_tx.try_send(b) {
                        Ok(()) => {
                            stats.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            // The stream is stalled or gone: drop and tell raft.
                            stats.sent_failures.fetch_add(count as u64, Ordering::Relaxed);
                            report(&feedback, PeerEvent::Unreachable(to));
                        }
                    }
                }
            }
            if ended {
                break;
            }
        }
        report(&feedback, PeerEvent::Unreachable(to));
        tokio::time::sleep(backoff).await;
    }
}

/// Drops what is queued for an unreachable peer. Returns false once the queue is closed.
fn drain_unreachable(
    rx: &mut mpsc::Receiver<Message>,
    to: u64,
    feedback: &Feedback,
    stats: &PeerStats,
) -> bool {
    let mut dropped = 0u64;
    loop {
        match rx.try_recv() {
            Ok(m) => {
                dropped += 1;
                if m.msg_type == etch_raft::MessageType::MsgHeartbeat {
                    stats
                        .heartbeat_send_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    if dropped > 0 {
        stats.sent_failures.fetch_add(dropped, Ordering::Relaxed);
        report(feedback, PeerEvent::Unreachable(to));
    }
    true
}

/// Copies a pinned version of the store, then streams it to the peer. Returns whether the
/// peer took it.
async fn send_snapshot(
    peers: &Peers,
    mut msg: Message,
    store: Arc<Store>,
    scratch: &Path,
) -> Result<bool, String> {
    let to = msg.to;
    let asked = msg.get_snapshot().get_metadata().index;
    let path = scratch.join(format!("send-{to:x}.db"));
    let _ = std::fs::remove_file(&path);
    let copy_path = path.clone();
    let applied = tokio::task::spawn_blocking(move || -> Result<Applied, String> {
        let snap = store.read().map_err(|e| e.to_string())?;
        let applied = Applied::decode(snap.marker()).map_err(|e| e.to_string())?;
        crate::data_dir::copy_data_file(&snap, &copy_path)?;
        Ok(applied)
    })
    .await
    .map_err(|e| format!("snapshot copy task: {e}"))??;
    let guard = RemoveOnDrop(path.clone());
    if applied.index < asked {
        return Err(format!(
            "the store has applied only up to {} but raft asked for a snapshot at {asked}",
            applied.index
        ));
    }
    {
        let meta = msg.mut_snapshot().mut_metadata();
        meta.index = applied.index;
        meta.term = applied.term;
        meta.set_conf_state(applied.conf_state.clone());
    }
    let mut client = peers.client(to).await?;
    let (tx, rx) = mpsc::channel::<ppb::SnapshotChunk>(4);
    let cluster_id = peers.cluster_id;
    let from = peers.member_id;
    let stats = peers.stats(to);
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| e.to_string())?;
        let mut sha = sha2::Sha256::new();
        let mut offset = 0u64;
        let mut first = Some(etch_raft::encode_message(&msg));
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let mut n = 0;
            while n < buf.len() {
                let k = f.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            buf.truncate(n);
            sha.update(&buf);
            let last = n < CHUNK_BYTES;
            let chunk = ppb::SnapshotChunk {
                cluster_id,
                from,
                message: first.take().unwrap_or_default(),
                offset,
                crc32: crc32fast::hash(&buf),
                data: buf,
                sha256: if last {
                    sha.clone().finalize().to_vec()
                } else {
                    Vec::new()
                },
                last,
            };
            offset += n as u64;
            stats.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            if tx.send(chunk).await.is_err() {
                return Err::<(), String>("the peer closed the snapshot stream".into());
            }
            if last {
                return Ok(());
            }
        }
    });
    let r = client.snapshot(ReceiverStream::new(rx)).await;
    let sent = reader.await.map_err(|e| format!("snapshot reader: {e}"))?;
    drop(guard);
    match r {
        Ok(ack) => {
            sent?;
            Ok(ack.into_inner().accepted)
        }
        Err(s) => {
            peers.drop_client(to);
            Err(format!("peer refused the snapshot: {}", s.message()))
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Snapshot files received from the leader, staged until raft hands the snapshot to the
/// state machine; keyed by the index they hold.
#[derive(Debug)]
pub struct SnapshotInbox {
    pub dir: PathBuf,
    staged: Mutex<std::collections::BTreeMap<u64, PathBuf>>,
    /// Makes every received file's name unique, so two streams of the same snapshot
    /// (a retry while the first is still arriving) never write one file.
    next: AtomicU64,
}

impl SnapshotInbox {
    /// `dir` holds the staged files; what an earlier run left there is removed.
    pub fn new(dir: PathBuf) -> Result<Arc<SnapshotInbox>, String> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Arc::new(SnapshotInbox {
            dir,
            staged: Mutex::new(Default::default()),
            next: Default::default(),
        }))
    }

    /// A fresh pair of paths for a snapshot at `index` on its way in: where it is
    /// written, and where it is kept once whole.
    pub fn paths(&self, index: u64) -> (PathBuf, PathBuf) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (
            self.dir.join(format!("incoming-{index}-{n}.part")),
            self.dir.join(format!("incoming-{index}-{n}.db")),
        )
    }

    /// Keeps `path` as the data of the snapshot at `index`. Raft may still install any
    /// staged snapshot, so older ones stay until a newer one is taken; a second copy of
    /// the same index replaces the first.
    pub fn stage(&self, index: u64, path: PathBuf) {
        if let Some(old) = lock(&self.staged).insert(index, path) {
            let _ = std::fs::remove_file(old);
        }
    }

    /// The data of the snapshot at `index`, for its install. Raft installs snapshots in
    /// order, so the older staged ones can never be installed any more and go.
    pub fn take(&self, index: u64) -> Option<PathBuf> {
        let mut s = lock(&self.staged);
        let older: Vec<u64> = s.range(..index).map(|(i, _)| *i).collect();
        for i in older {
            if let Some(p) = s.remove(&i) {
                let _ = std::fs::remove_file(p);
            }
        }
        s.remove(&index)
    }
}
