//! Point workloads: `put`, `range` and `txn-put`.
//!
//! `clients` tasks share `conns` connections round-robin and take operation numbers from
//! one counter until `total` is reached or `--max-seconds` has passed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use tokio::task::JoinHandle;

use super::{Args, Common, Json, Recorder, Result, Rng, Summary, ensure_keys, key, value};

/// Merges the recorders of finished tasks.
pub async fn join_all(tasks: Vec<JoinHandle<Recorder>>) -> Result<Recorder> {
    let mut all = Recorder::default();
    for t in tasks {
        all.merge(t.await?);
    }
    Ok(all)
}

/// Flags shared by the point workloads.
#[derive(Debug, Clone)]
struct Shape {
    clients: usize,
    conns: usize,
    total: u64,
    key_size: usize,
    val_size: usize,
}

impl Shape {
    fn from_args(a: &mut Args, total: u64) -> Result<Shape> {
        Ok(Shape {
            clients: a.get("clients", 1usize)?.max(1),
            conns: a.get("conns", 1usize)?.max(1),
            total: a.get("total", total)?,
            key_size: a.get("key-size", 32usize)?,
            val_size: a.get("val-size", 256usize)?,
        })
    }

    fn write(&self, j: &mut Json) {
        j.num("clients", self.clients as f64);
        j.num("conns", self.conns as f64);
        j.num("key_size", self.key_size as f64);
        j.num("val_size", self.val_size as f64);
    }
}

/// `put`: `total` puts of random keys in `key-space` (or `--sequential-keys true`:
/// keys 0, 1, 2, … so that `total` distinct keys are written).
pub async fn put(c: &Common, a: &mut Args) -> Result<String> {
    let s = Shape::from_args(a, 10_000)?;
    let key_space: u64 = a.get("key-space", 100_000)?;
    let sequential: bool = a.get("sequential-keys", false)?;
    let prefix: String = a.get("prefix", "put/".to_string())?;
    a.finish()?;
    let clients = c.connect(s.conns).await?;
    let next = Arc::new(AtomicU64::new(0));
    let val = value(s.val_size, c.seed);
    let started = Instant::now();
    let deadline = started + c.max;
    let mut tasks = Vec::new();
    for t in 0..s.clients {
        let mut kv = clients[t % clients.len()].kv_client();
        let (next, val, prefix) = (next.clone(), val.clone(), prefix.clone());
        let (total, key_size) = (s.total, s.key_size);
        let mut rng = Rng::new(c.seed ^ (t as u64 + 1));
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return rec;
                }
                let k = if sequential {
                    i
                } else {
                    rng.below(key_space.max(1))
                };
                let t0 = Instant::now();
                match kv.put(key(&prefix, k, key_size), val.clone(), None).await {
                    Ok(_) => rec.ok(t0),
                    Err(e) => rec.err(e),
                }
            }
        }));
    }
    let rec = join_all(tasks).await?;
    let sum = Summary::of(rec, started.elapsed());
    let mut j = Json::new();
    j.str("workload", "put");
    s.write(&mut j);
    sum.write(&mut j);
    Ok(j.finish())
}

/// `range`: point gets of random keys among `--keys` written first (untimed), with
/// `--consistency l` (linearizable, the default) or `s` (serializable).
pub async fn range(c: &Common, a: &mut Args) -> Result<String> {
    let s = Shape::from_args(a, 50_000)?;
    let keys: u64 = a.get("keys", 10_000)?;
    let consistency: String = a.get("consistency", "l".to_string())?;
    a.finish()?;
    let serializable = match consistency.as_str() {
        "l" => false,
        "s" => true,
        other => return Err(format!("--consistency {other}: want l or s").into()),
    };
    let prefix = "range/";
    let load_seconds = ensure_keys(c, prefix, keys, s.key_size, s.val_size).await?;
    let clients = c.connect(s.conns).await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + c.max;
    let mut tasks = Vec::new();
    for t in 0..s.clients {
        let mut kv = clients[t % clients.len()].kv_client();
        let next = next.clone();
        let (total, key_size) = (s.total, s.key_size);
        let mut rng = Rng::new(c.seed ^ (t as u64 + 1));
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return rec;
                }
                let k = key(prefix, rng.below(keys.max(1)), key_size);
                let opts = serializable.then(|| GetOptions::new().with_serializable());
                let t0 = Instant::now();
                match kv.get(k, opts).await {
                    Ok(r) if r.kvs().len() == 1 => rec.ok(t0),
                    Ok(r) => rec.err(format!("get returned {} kvs, want 1", r.kvs().len())),
                    Err(e) => rec.err(e),
                }
            }
        }));
    }
    let rec = join_all(tasks).await?;
    let sum = Summary::of(rec, started.elapsed());
    let mut j = Json::new();
    j.str("workload", "range");
    j.str("consistency", &consistency);
    j.num("keys", keys as f64);
    j.num("load_seconds", load_seconds);
    s.write(&mut j);
    sum.write(&mut j);
    Ok(j.finish())
}

/// `txn-put`: compare-and-swap updates. Each client owns `--keys-per-client` keys and
/// cycles through them with `Txn(if mod_revision(k) == r then put(k) else get(k))`,
/// where `r` is the revision it last wrote (0 at first: a create). A failed compare is
/// counted as a conflict and `r` is refreshed from the get.
pub async fn txn_put(c: &Common, a: &mut Args) -> Result<String> {
    let s = Shape::from_args(a, 10_000)?;
    let per_client: usize = a.get("keys-per-client", 8usize)?.max(1);
    a.finish()?;
    let clients = c.connect(s.conns).await?;
    let next = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let val = value(s.val_size, c.seed);
    let started = Instant::now();
    let deadline = started + c.max;
    let mut tasks = Vec::new();
    for t in 0..s.clients {
        let mut kv = clients[t % clients.len()].kv_client();
        let (next, conflicts, val) = (next.clone(), conflicts.clone(), val.clone());
        let (total, key_size) = (s.total, s.key_size);
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            let prefix = format!("txn/{t:05}/");
            let keys: Vec<Vec<u8>> = (0..per_client as u64)
                .map(|j| key(&prefix, j, key_size))
                .collect();
            let mut revs = vec![0i64; per_client];
            for n in 0usize.. {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let j = n % per_client;
                let k = keys[j].clone();
                let txn = Txn::new()
                    .when([Compare::mod_revision(k.clone(), CompareOp::Equal, revs[j])])
                    .and_then([TxnOp::put(k.clone(), val.clone(), None)])
                    .or_else([TxnOp::get(k, None)]);
                let t0 = Instant::now();
                match kv.txn(txn).await {
                    Ok(r) if r.succeeded() => {
                        rec.ok(t0);
                        revs[j] = r.header().map_or(0, |h| h.revision());
                    }
                    Ok(r) => {
                        rec.ok(t0);
                        conflicts.fetch_add(1, Ordering::Relaxed);
                        revs[j] = match r.op_responses().first() {
                            Some(TxnOpResponse::Get(g)) => {
                                g.kvs().first().map_or(0, |kv| kv.mod_revision())
                            }
                            _ => 0,
                        };
                    }
                    Err(e) => rec.err(e),
                }
            }
            rec
        }));
    }
    let rec = join_all(tasks).await?;
    let sum = Summary::of(rec, started.elapsed());
    let mut j = Json::new();
    j.str("workload", "txn-put");
    s.write(&mut j);
    j.num("keys_per_client", per_client as f64);
    j.num("conflicts", conflicts.load(Ordering::Relaxed) as f64);
    sum.write(&mut j);
    Ok(j.finish())
}
