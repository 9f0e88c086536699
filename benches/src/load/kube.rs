//! `kube-mix`: the request mix kube-apiserver sends to etcd.
//!
//! kube-apiserver serves most reads from its watch cache, so etcd sees mostly
//! compare-and-swap writes, a few linearizable gets, paginated LISTs (cache warm-up and
//! `resourceVersion=""` lists), count-only ranges (the object-count metric), watches with
//! `prev_kv` on each resource prefix, and events bound to leases. Each client owns its
//! objects (`/registry/{pods,configmaps}/ns-NNNN/…`), so conflicts are rare, as they are
//! when each controller updates its own objects. Per operation, with probability (per
//! mille):
//!
//! | kind | ‰ | request |
//! |---|---:|---|
//! | update | 460 | `Txn(if mod_revision(k) == r then put(k) else get(k))` |
//! | create | 120 | `Txn(if mod_revision(k) == 0 then put(k) else get(k))` |
//! | delete | 80 | `Txn(if mod_revision(k) == r then delete(k) else get(k))` |
//! | event | 200 | create under `/registry/events/` with a lease (one grant per `--events-per-lease`) |
//! | get | 80 | linearizable get of one object |
//! | count | 50 | count-only range over pods or events |
//! | list | 10 | LIST of all pods, pages of `--page` at a pinned revision |
//!
//! Before the clock starts each client creates `--objects-per-client` objects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, GetOptions, KvClient, LeaseClient, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchOptions,
};
use tokio::sync::Barrier;

use super::list::paginated_list;
use super::{Args, Common, Json, Recorder, Result, Rng, Summary, value};

const KINDS: [&str; 8] = [
    "update",
    "create",
    "delete",
    "event",
    "get",
    "count",
    "list",
    "lease_grant",
];
const UPDATE: usize = 0;
const CREATE: usize = 1;
const DELETE: usize = 2;
const EVENT: usize = 3;
const GET: usize = 4;
const COUNT: usize = 5;
const LIST: usize = 6;
const LEASE: usize = 7;

/// Cumulative per-mille probabilities of the first seven kinds, in `KINDS` order.
const MIX: [u64; 7] = [460, 580, 660, 860, 940, 990, 1000];

const RESOURCES: [&str; 2] = ["pods", "configmaps"];

#[derive(Debug, Clone)]
struct Opts {
    clients: usize,
    conns: usize,
    seconds: f64,
    max_ops: u64,
    objects_per_client: u64,
    val_size: usize,
    event_val_size: usize,
    page: i64,
    watches: usize,
    events_per_lease: u64,
    lease_ttl: i64,
}

/// An object a client created and the revision it last wrote.
#[derive(Debug)]
struct Owned {
    key: Vec<u8>,
    rev: i64,
}

/// One client's state and measurements.
struct Client {
    id: usize,
    kv: KvClient,
    lease: LeaseClient,
    rng: Rng,
    objs: Vec<Owned>,
    names: u64,
    current_lease: Option<(i64, u64)>,
    val: Vec<u8>,
    event_val: Vec<u8>,
    rec: Vec<Recorder>,
    conflicts: u64,
}

/// The revision a txn's `else get(k)` saw for `k`, 0 if absent.
fn seen_revision(r: &TxnResponse) -> i64 {
    match r.op_responses().first() {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().map_or(0, |kv| kv.mod_revision()),
        _ => 0,
    }
}

fn header_revision(r: &TxnResponse) -> i64 {
    r.header().map_or(0, |h| h.revision())
}

impl Client {
    async fn create(&mut self, resource: &str) {
        self.names += 1;
        let key = format!(
            "/registry/{resource}/ns-{:04}/{resource}-{:08}",
            self.id, self.names
        );
        let key = key.into_bytes();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), self.val.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let t0 = Instant::now();
        match self.kv.txn(txn).await {
            Ok(r) => {
                self.rec[CREATE].ok(t0);
                if r.succeeded() {
                    let rev = header_revision(&r);
                    self.objs.push(Owned { key, rev });
                } else {
                    self.conflicts += 1;
                }
            }
            Err(e) => self.rec[CREATE].err(e),
        }
    }

    async fn update(&mut self) {
        if self.objs.is_empty() {
            return self.create(RESOURCES[0]).await;
        }
        let i = self.rng.below(self.objs.len() as u64) as usize;
        let (key, rev) = (self.objs[i].key.clone(), self.objs[i].rev);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.clone(), self.val.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let t0 = Instant::now();
        match self.kv.txn(txn).await {
            Ok(r) => {
                self.rec[UPDATE].ok(t0);
                if r.succeeded() {
                    self.objs[i].rev = header_revision(&r);
                } else {
                    self.conflicts += 1;
                    match seen_revision(&r) {
                        0 => drop(self.objs.swap_remove(i)),
                        rev => self.objs[i].rev = rev,
                    }
                }
            }
            Err(e) => self.rec[UPDATE].err(e),
        }
    }

    async fn delete(&mut self) {
        if self.objs.is_empty() {
            return self.create(RESOURCES[1]).await;
        }
        let i = self.rng.below(self.objs.len() as u64) as usize;
        let (key, rev) = (self.objs[i].key.clone(), self.objs[i].rev);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let t0 = Instant::now();
        match self.kv.txn(txn).await {
            Ok(r) => {
                self.rec[DELETE].ok(t0);
                if r.succeeded() {
                    self.objs.swap_remove(i);
                } else {
                    self.conflicts += 1;
                    match seen_revision(&r) {
                        0 => drop(self.objs.swap_remove(i)),
                        rev => self.objs[i].rev = rev,
                    }
                }
            }
            Err(e) => self.rec[DELETE].err(e),
        }
    }

    async fn event(&mut self, o: &Opts) {
        let lease = match self.current_lease {
            Some((id, uses)) if uses < o.events_per_lease => id,
            _ => {
                let t0 = Instant::now();
                match self.lease.grant(o.lease_ttl, None).await {
                    Ok(r) => {
                        self.rec[LEASE].ok(t0);
                        r.id()
                    }
                    Err(e) => {
                        self.rec[LEASE].err(e);
                        return;
                    }
                }
            }
        };
        let uses = match self.current_lease {
            Some((id, uses)) if id == lease => uses + 1,
            _ => 1,
        };
        self.current_lease = Some((lease, uses));
        self.names += 1;
        let key = format!("/registry/events/ns-{:04}/ev-{:08}", self.id, self.names);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.event_val.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let t0 = Instant::now();
        match self.kv.txn(txn).await {
            Ok(_) => self.rec[EVENT].ok(t0),
            Err(e) => self.rec[EVENT].err(e),
        }
    }

    async fn get(&mut self) {
        if self.objs.is_empty() {
            return self.create(RESOURCES[0]).await;
        }
        let i = self.rng.below(self.objs.len() as u64) as usize;
        let key = self.objs[i].key.clone();
        let t0 = Instant::now();
        match self.kv.get(key, None).await {
            Ok(_) => self.rec[GET].ok(t0),
            Err(e) => self.rec[GET].err(e),
        }
    }

    async fn count(&mut self) {
        let prefix = if self.rng.below(2) == 0 {
            "/registry/pods/"
        } else {
            "/registry/events/"
        };
        let opts = GetOptions::new().with_prefix().with_count_only();
        let t0 = Instant::now();
        match self.kv.get(prefix, Some(opts)).await {
            Ok(_) => self.rec[COUNT].ok(t0),
            Err(e) => self.rec[COUNT].err(e),
        }
    }

    async fn list(&mut self, o: &Opts, deadline: Instant) {
        let t0 = Instant::now();
        match paginated_list(
            &mut self.kv,
            b"/registry/pods/",
            o.page,
            false,
            100_000,
            deadline,
        )
        .await
        {
            Ok(_) => self.rec[LIST].ok(t0),
            Err(e) => self.rec[LIST].err(e),
        }
    }

    async fn run(mut self, o: Arc<Opts>, barrier: Arc<Barrier>, ops: Arc<AtomicU64>) -> Client {
        for n in 0..o.objects_per_client {
            self.create(RESOURCES[(n % 2) as usize]).await;
        }
        self.rec = vec![Recorder::default(); KINDS.len()];
        self.conflicts = 0;
        barrier.wait().await;
        let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
        while Instant::now() < deadline && ops.fetch_add(1, Ordering::Relaxed) < o.max_ops {
            let dice = self.rng.below(1000);
            match MIX.iter().position(|&m| dice < m).unwrap_or(UPDATE) {
                UPDATE => self.update().await,
                CREATE => {
                    let r = RESOURCES[self.rng.below(2) as usize];
                    self.create(r).await
                }
                DELETE => self.delete().await,
                EVENT => self.event(&o).await,
                GET => self.get().await,
                COUNT => self.count().await,
                _ => self.list(&o, deadline).await,
            }
        }
        self
    }
}

/// Watches `/registry/{resource}/` with `prev_kv` from the barrier until `deadline`;
/// returns (events, events that carried a previous value).
async fn watch(
    client: etcd_client::Client,
    resource: &str,
    barrier: Arc<Barrier>,
    seconds: f64,
) -> Result<(u64, u64)> {
    barrier.wait().await;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let prefix = format!("/registry/{resource}/");
    let opts = WatchOptions::new().with_prefix().with_prev_key();
    let mut stream = client.watch_client().watch(prefix, Some(opts)).await?;
    let (mut events, mut with_prev) = (0, 0);
    while let Ok(msg) = tokio::time::timeout_at(deadline.into(), stream.message()).await {
        let Some(r) = msg? else { break };
        for ev in r.events() {
            events += 1;
            with_prev += u64::from(ev.prev_kv().is_some());
        }
    }
    Ok((events, with_prev))
}

pub async fn kube_mix(c: &Common, a: &mut Args) -> Result<String> {
    let o = Arc::new(Opts {
        clients: a.get("clients", 16usize)?.max(1),
        conns: a.get("conns", 4usize)?.max(1),
        seconds: a.get("seconds", 30.0f64)?.min(c.max.as_secs_f64()),
        max_ops: a.get("max-ops", 10_000_000)?,
        objects_per_client: a.get("objects-per-client", 200)?,
        val_size: a.get("val-size", 1024)?,
        event_val_size: a.get("event-val-size", 512)?,
        page: a.get("page", 500)?,
        watches: a.get("watches", 3usize)?,
        events_per_lease: a.get("events-per-lease", 100)?.max(1),
        lease_ttl: a.get("lease-ttl", 3600)?,
    });
    a.finish()?;
    let conns = c.connect(o.conns).await?;
    let barrier = Arc::new(Barrier::new(o.clients + o.watches + 1));
    let ops = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for w in 0..o.watches {
        let resource = ["pods", "configmaps", "events"][w % 3];
        let client = conns[w % conns.len()].clone();
        let (barrier, seconds) = (barrier.clone(), o.seconds);
        watchers.push(tokio::spawn(async move {
            watch(client, resource, barrier, seconds).await
        }));
    }
    let mut tasks = Vec::new();
    for id in 0..o.clients {
        let conn = &conns[id % conns.len()];
        let client = Client {
            id,
            kv: conn.kv_client(),
            lease: conn.lease_client(),
            rng: Rng::new(c.seed ^ (id as u64 + 1)),
            objs: Vec::new(),
            names: 0,
            current_lease: None,
            val: value(o.val_size, c.seed + id as u64),
            event_val: value(o.event_val_size, c.seed + id as u64),
            rec: vec![Recorder::default(); KINDS.len()],
            conflicts: 0,
        };
        tasks.push(tokio::spawn(client.run(
            o.clone(),
            barrier.clone(),
            ops.clone(),
        )));
    }
    let setup = Instant::now();
    barrier.wait().await;
    let setup_seconds = setup.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut per_kind = vec![Recorder::default(); KINDS.len()];
    let (mut conflicts, mut objects) = (0, 0);
    for t in tasks {
        let client = t.await?;
        conflicts += client.conflicts;
        objects += client.objs.len() as u64;
        for (all, r) in per_kind.iter_mut().zip(client.rec) {
            all.merge(r);
        }
    }
    let elapsed = started.elapsed();
    let (mut watch_events, mut watch_prev, mut watch_errors) = (0, 0, 0u64);
    for w in watchers {
        match w.await? {
            Ok((e, p)) => {
                watch_events += e;
                watch_prev += p;
            }
            Err(_) => watch_errors += 1,
        }
    }

    let mut total = Recorder::default();
    let mut kinds = Json::new();
    for (name, r) in KINDS.iter().zip(per_kind) {
        total.merge(r.clone());
        let s = Summary::of(r, elapsed);
        let mut k = Json::new();
        k.num("ops", s.ops as f64);
        k.num("throughput", s.throughput);
        k.num("p50_ms", s.p50_ms);
        k.num("p99_ms", s.p99_ms);
        k.num("errors", s.errors as f64);
        kinds.obj(name, k);
    }
    let sum = Summary::of(total, elapsed);
    let mut j = Json::new();
    j.str("workload", "kube-mix");
    j.num("clients", o.clients as f64);
    j.num("conns", o.conns as f64);
    j.num("setup_seconds", setup_seconds);
    j.num("conflicts", conflicts as f64);
    j.num("objects_at_end", objects as f64);
    j.num("watch_events", watch_events as f64);
    j.num("watch_events_prev_kv", watch_prev as f64);
    j.num("watch_errors", watch_errors as f64);
    j.num(
        "watch_events_per_s",
        watch_events as f64 / elapsed.as_secs_f64(),
    );
    sum.write(&mut j);
    j.obj("kinds", kinds);
    Ok(j.finish())
}
