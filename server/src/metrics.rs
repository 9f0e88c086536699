//! Prometheus metrics with etcd's names for what operators graph, and the gRPC call
//! counter wrapped around every service.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etch_engine::mvcc::Store;
use etch_engine::wal::{SYNC_BUCKET_BOUNDS_US, SYNC_BUCKETS};
use etch_raft::Node;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// A duration histogram with etcd's disk buckets (1 ms doubling to 8.192 s).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; SYNC_BUCKETS],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        for (i, bound) in SYNC_BUCKET_BOUNDS_US.iter().enumerate() {
            if us <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ([u64; SYNC_BUCKETS], u64, u64) {
        let mut b = [0; SYNC_BUCKETS];
        for (i, x) in self.buckets.iter().enumerate() {
            b[i] = x.load(Ordering::Relaxed);
        }
        (
            b,
            self.sum_us.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }
}

type CallKey = (String, String, &'static str, &'static str);

#[derive(Debug, Default)]
pub struct Metrics {
    pub proposals_failed: AtomicU64,
    pub proposals_pending: AtomicI64,
    pub backend_commit: Histogram,
    /// Applied batches that took longer than etcd's 100 ms warning threshold.
    pub slow_applies: AtomicU64,
    /// Snapshots from the leader installed.
    pub snapshot_installs: AtomicU64,
    /// Time spent installing them.
    pub snapshot_install: Histogram,
    grpc_handled: Mutex<BTreeMap<CallKey, u64>>,
    keys_cache: Mutex<Option<(Instant, i64)>>,
}

/// How long a count of live keys is reused (counting walks the key index).
const KEYS_COUNT_TTL: Duration = Duration::from_secs(30);

fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" => "server_stream",
        _ => "unary",
    }
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

impl Metrics {
    fn handled(&self, path: &str, code: &'static str) {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or("").to_string();
        let method = parts.next().unwrap_or("").to_string();
        let kind = grpc_type(&method);
        let mut m = self.grpc_handled.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((service, method, kind, code)).or_insert(0) += 1;
    }
}

/// Wraps every gRPC service: gives an over-sized request grpc-go's status (as etcd
/// answers it), and counts calls by service, method and status code
/// (`grpc_server_handled_total`). The code counted is the one in the response headers
/// (errors answered before any message); a stream that fails after it started is counted
/// as it started.
#[derive(Debug, Clone)]
pub struct Instrumented<S> {
    pub inner: S,
    pub metrics: Arc<Metrics>,
}

impl<S: NamedService> NamedService for Instrumented<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Instrumented<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let resp = self.inner.call(req);
        Box::pin(async move {
            let resp = crate::errors::too_large_as_grpc_go(resp.await?);
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            metrics.handled(&path, code_name(code));
            Ok(resp)
        })
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, buckets: &[u64], sum_us: u64, count: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, c) in buckets.iter().enumerate() {
        let le = SYNC_BUCKET_BOUNDS_US[i] as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}

/// Live keys at the current revision, counted at most every 30 s.
fn keys_total(m: &Metrics, store: &Store) -> i64 {
    let mut cache = m.keys_cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, n)) = *cache
        && at.elapsed() < KEYS_COUNT_TTL
    {
        return n;
    }
    let req = etch_engine::mvcc::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let n = store
        .read()
        .and_then(|s| s.range(&req))
        .map_or(0, |r| r.count);
    *cache = Some((Instant::now(), n));
    n
}

/// etcd's per-peer network metrics, labelled as etcd labels them.
fn peer_metrics(out: &mut String, peers: &crate::peer::Peers) {
    let stats: Vec<(u64, Arc<crate::peer::PeerStats>)> = peers
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, s)| (*id, s.clone()))
        .collect();
    let mut stats = stats;
    stats.sort_by_key(|(id, _)| *id);
    let heartbeat_failures: u64 = stats
        .iter()
        .map(|(_, s)| s.heartbeat_send_failures.load(Ordering::Relaxed))
        .sum();
    counter(
        out,
        "etcd_server_heartbeat_send_failures_total",
        "Heartbeats that could not be sent.",
        heartbeat_failures,
    );
    type Pick = fn(&crate::peer::PeerStats) -> &AtomicU64;
    let families: [(&str, &str, &str, Pick); 3] = [
        (
            "etcd_network_peer_sent_bytes_total",
            "Bytes sent to peers.",
            "To",
            |s| &s.sent_bytes,
        ),
        (
            "etcd_network_peer_received_bytes_total",
            "Bytes received from peers.",
            "From",
            |s| &s.received_bytes,
        ),
        (
            "etcd_network_peer_sent_failures_total",
            "Messages to peers that were dropped.",
            "To",
            |s| &s.sent_failures,
        ),
    ];
    for (name, help, label, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (id, s) in &stats {
            let _ = writeln!(
                out,
                "{name}{{{label}=\"{id:x}\"}} {}",
                pick(s).load(Ordering::Relaxed)
            );
        }
    }
    let name = "etcd_network_peer_round_trip_time_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Round trip of connecting to a peer.\n# TYPE {name} histogram"
    );
    for (id, s) in &stats {
        let (b, sum, count) = s.rtt.snapshot();
        for (i, bound) in SYNC_BUCKET_BOUNDS_US.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{To=\"{id:x}\",le=\"{}\"}} {}",
                *bound as f64 / 1e6,
                b[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{To=\"{id:x}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{To=\"{id:x}\"}} {}", sum as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{To=\"{id:x}\"}} {count}");
    }
}

/// The Prometheus text page. Blocking (it may count keys): call off the async threads.
pub fn render<O: Send + 'static>(
    m: &Metrics,
    node: &Node<O>,
    store: &Store,
    peers: &crate::peer::Peers,
    quota_backend_bytes: u64,
    size_in_use: u64,
) -> String {
    let st = node.status();
    let applied = *node.applied().borrow();
    let stats = store.db().stats();
    let mut out = String::new();
    gauge(
        &mut out,
        "etcd_server_has_leader",
        "1 if a leader is known, else 0.",
        u8::from(st.leader != 0),
    );
    gauge(
        &mut out,
        "etcd_server_is_leader",
        "1 if this member leads, else 0.",
        u8::from(st.is_leader),
    );
    gauge(
        &mut out,
        "etcd_server_proposals_committed_total",
        "Highest committed Raft index.",
        st.commit,
    );
    gauge(
        &mut out,
        "etcd_server_proposals_applied_total",
        "Highest applied Raft index.",
        applied,
    );
    gauge(
        &mut out,
        "etcd_server_proposals_pending",
        "Proposals waiting to be applied.",
        m.proposals_pending.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "etcd_server_proposals_failed_total",
        "Proposals that failed or timed out.",
        m.proposals_failed.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "etcd_server_quota_backend_bytes",
        "The space quota in bytes.",
        quota_backend_bytes,
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "Size of the data file below its high-water mark, in bytes.",
        stats.high_water_pages * stats.page_size as u64,
    );
    gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Bytes of the data file in use (not on the free list).",
        size_in_use,
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_keys_total",
        "Live keys at the current revision.",
        keys_total(m, store),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_current_revision",
        "The current revision.",
        store.current_revision(),
    );
    gauge(
        &mut out,
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction.",
        store.compact_revision(),
    );
    let wal = node.wal_stats();
    histogram(
        &mut out,
        "etcd_disk_wal_fsync_duration_seconds",
        "Write and fdatasync of one WAL batch.",
        &wal.sync_buckets,
        wal.sync_micros,
        wal.syncs,
    );
    let (b, sum, count) = m.backend_commit.snapshot();
    histogram(
        &mut out,
        "etcd_disk_backend_commit_duration_seconds",
        "Commit of one applied batch to the data file.",
        &b,
        sum,
        count,
    );
    counter(
        &mut out,
        "etch_wal_bytes_written_total",
        "Bytes written to the WAL.",
        wal.bytes,
    );
    counter(
        &mut out,
        "etch_btree_checkpoints_total",
        "Checkpoints of the data file.",
        stats.checkpoints,
    );
    counter(
        &mut out,
        "etcd_server_leader_changes_seen_total",
        "Leader changes this member has seen.",
        node.leader_changes(),
    );
    counter(
        &mut out,
        "etcd_server_slow_apply_total",
        "Applied batches that took over 100 ms.",
        m.slow_applies.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "etch_snapshot_installs_total",
        "Snapshots from the leader installed on this member.",
        m.snapshot_installs.load(Ordering::Relaxed),
    );
    let (b, sum, count) = m.snapshot_install.snapshot();
    histogram(
        &mut out,
        "etch_snapshot_install_duration_seconds",
        "Installing one snapshot from the leader.",
        &b,
        sum,
        count,
    );
    peer_metrics(&mut out, peers);
    let _ = writeln!(
        out,
        "# HELP grpc_server_handled_total RPCs completed, by method and status code.\n# TYPE grpc_server_handled_total counter"
    );
    for ((service, method, kind, code), n) in m
        .grpc_handled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {n}"
        );
    }
    out
}
