//! No acknowledged write is lost across SIGKILL: many clients put concurrently, etch is
//! killed at a random moment, restarted, and every acknowledged put must be readable at
//! exactly the revision its response reported. Then `etch check` on the data dir.
//!
//! The randomness comes from one seed, printed at the start and in every failure message;
//! set ETCH_TEST_SEED to replay one.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Etch, client};
use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, KeyValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 16;
const ROUNDS: usize = 4;
/// Puts per writer per round, at most (the kill usually comes first).
const PUTS_PER_WRITER_MAX: usize = 5_000;

fn seed() -> u64 {
    match std::env::var("ETCH_TEST_SEED") {
        Ok(s) => s.parse().expect("ETCH_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

fn key(round: usize, writer: usize, i: usize) -> String {
    format!("load/{round}/{writer:02}/{i:05}")
}

fn value(seed: u64, key: &str) -> String {
    format!("{key}@{seed}")
}

/// What one writer saw in one round: its acknowledged puts in order, with their
/// revisions, and the put in flight when the server died, if any.
#[derive(Debug, Default)]
struct Log {
    acked: Vec<(String, i64)>,
    in_flight: Option<String>,
}

async fn writer(ep: String, seed: u64, round: usize, w: usize, stop: Arc<AtomicBool>) -> Log {
    let mut log = Log::default();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(20));
    let Ok(mut c) = Client::connect([ep.as_str()], Some(opts)).await else {
        return log;
    };
    for i in 0..PUTS_PER_WRITER_MAX {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let k = key(round, w, i);
        match c.put(k.clone(), value(seed, &k), None).await {
            Ok(r) => {
                let rev = r.header().expect("put response header").revision();
                log.acked.push((k, rev));
            }
            Err(_) => {
                // The server died with this put in flight: it may or may not have landed.
                log.in_flight = Some(k);
                break;
            }
        }
    }
    log
}

/// Every key under `prefix`, paged so that no response grows large.
async fn scan(c: &mut Client, prefix: &str) -> Vec<KeyValue> {
    let end = {
        let mut e = prefix.as_bytes().to_vec();
        *e.last_mut().expect("non-empty prefix") += 1;
        e
    };
    let mut out = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    for _ in 0..10_000 {
        let r = c
            .get(
                from.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_limit(1000)),
            )
            .await
            .expect("scan");
        out.extend_from_slice(r.kvs());
        if !r.more() {
            return out;
        }
        from = r.kvs().last().expect("more implies kvs").key().to_vec();
        from.push(0);
    }
    panic!("scan of {prefix} did not end");
}

/// Checks the store against every round's logs: acknowledged puts present at exactly
/// their revision; nothing present that was never sent; revisions unique.
async fn verify(c: &mut Client, seed: u64, logs: &[Vec<Log>], ctx: &str) -> usize {
    let kvs = scan(c, "load/").await;
    let found: HashMap<String, &KeyValue> = kvs
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv))
        .collect();
    let mut revs = HashSet::new();
    for kv in &kvs {
        let k = String::from_utf8_lossy(kv.key());
        assert!(
            revs.insert(kv.mod_revision()),
            "{ctx}: revision {} appears twice (at {k})",
            kv.mod_revision()
        );
    }
    let mut acked_total = 0;
    let mut sent = HashSet::new();
    let mut max_rev = 0;
    for (round, round_logs) in logs.iter().enumerate() {
        for (w, log) in round_logs.iter().enumerate() {
            let mut last = 0;
            for (k, rev) in &log.acked {
                sent.insert(k.clone());
                acked_total += 1;
                assert!(
                    *rev > last,
                    "{ctx}: round {round} writer {w}: revision {rev} after {last}"
                );
                last = *rev;
                max_rev = max_rev.max(*rev);
                let kv = found.get(k).unwrap_or_else(|| {
                    panic!("{ctx}: acknowledged put {k} at revision {rev} is lost")
                });
                assert_eq!(
                    (
                        kv.value(),
                        kv.mod_revision(),
                        kv.create_revision(),
                        kv.version(),
                        kv.lease()
                    ),
                    (value(seed, k).as_bytes(), *rev, *rev, 1, 0),
                    "{ctx}: acknowledged put {k}"
                );
            }
            if let Some(k) = &log.in_flight {
                sent.insert(k.clone());
            }
        }
    }
    for (k, kv) in &found {
        assert!(sent.contains(k), "{ctx}: {k} was never sent");
        assert_eq!(
            kv.value(),
            value(seed, k).as_bytes(),
            "{ctx}: unacknowledged {k}"
        );
        assert_eq!(kv.version(), 1, "{ctx}: {k} was put once");
    }
    let current = c
        .get("load-probe", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    assert!(
        current >= max_rev,
        "{ctx}: current revision {current} behind acknowledged {max_rev}"
    );
    acked_total
}

fn etch_check(data_dir: &std::path::Path, ctx: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_etch"))
        .arg("check")
        .arg(data_dir)
        .output()
        .expect("running etch check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.starts_with("ok: "),
        "{ctx}: etch check {} failed ({}):\n{stdout}\n{}",
        data_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_sigkill_under_load() {
    let seed = seed();
    eprintln!("durability seed {seed} (ETCH_TEST_SEED={seed} replays it)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let mut etch = Etch::start(&data_dir, &[]);
    let ep = etch.endpoint();
    let started = Instant::now();
    // One round runs long enough for a background checkpoint (every 5 s) to land before
    // the kill, so recovery replays the WAL on top of a checkpoint, not from empty.
    let long_round = rng.random_range(0..ROUNDS);
    let mut logs: Vec<Vec<Log>> = Vec::new();
    for round in 0..ROUNDS {
        let ctx = format!("seed {seed}, round {round}");
        let _ready = client(&ep).await;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(ep.clone(), seed, round, w, stop.clone())))
            .collect();
        let load_ms = if round == long_round {
            rng.random_range(5_500..6_500)
        } else {
            rng.random_range(20..1_200)
        };
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        etch.kill();
        stop.store(true, Ordering::Release);
        let mut round_logs = Vec::new();
        for t in tasks {
            let log = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap_or_else(|_| panic!("{ctx}: a writer hung after the kill"))
                .unwrap_or_else(|e| panic!("{ctx}: a writer panicked: {e}"));
            round_logs.push(log);
        }
        let acked: usize = round_logs.iter().map(|l| l.acked.len()).sum();
        eprintln!("{ctx}: killed after {load_ms} ms, {acked} puts acknowledged");
        logs.push(round_logs);

        etch.restart();
        let mut c = client(&ep).await;
        let total = verify(&mut c, seed, &logs, &ctx).await;
        eprintln!("{ctx}: {total} acknowledged puts verified after restart");
    }
    let ctx = format!("seed {seed}");
    let acked: usize = logs.iter().flatten().map(|l| l.acked.len()).sum();
    assert!(acked > 0, "{ctx}: no put was acknowledged at all");

    // A clean stop after the crash-recoveries leaves a data file that passes the checker,
    // and still holds everything.
    assert_eq!(etch.stop(), Some(0), "{ctx}: clean exit on SIGTERM");
    let report = etch_check(&data_dir, &ctx);
    eprintln!("{report}");
    etch.restart();
    let mut c = client(&ep).await;
    verify(&mut c, seed, &logs, &format!("{ctx}, after SIGTERM")).await;
    assert_eq!(etch.stop(), Some(0));
    eprintln!("durability test took {:?}", started.elapsed());
}

/// `etch check DATA_DIR` passes after a SIGKILL, a restart (recovery) and a SIGTERM, on a
/// store with overwrites, deletes and a compaction behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_after_sigkill_restart_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let mut etch = Etch::start(&data_dir, &[]);
    let ep = etch.endpoint();
    let mut c = client(&ep).await;
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..300 {
        let k = format!("chk/{:03}", i % 120);
        let v = format!("v{i}-{}", "x".repeat(i % 50));
        c.put(k.clone(), v.clone(), None).await.expect("put");
        want.insert(k, v);
    }
    let big = "b".repeat(200_000);
    c.put("chk/big", big.clone(), None).await.expect("put");
    want.insert("chk/big".into(), big);
    let r = c
        .delete("chk/010", Some(DeleteOptions::new().with_range("chk/030")))
        .await
        .expect("delete");
    assert_eq!(r.deleted(), 20);
    want.retain(|k, _| !("chk/010".."chk/030").contains(&k.as_str()));
    let rev = r.header().expect("header").revision();
    c.compact(rev - 50, None).await.expect("compact");
    drop(c);

    etch.kill();
    etch.restart();
    let mut c = client(&ep).await;
    let got: BTreeMap<String, String> = scan(&mut c, "chk/")
        .await
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    assert!(
        got == want,
        "data after SIGKILL differs from what was written"
    );
    let r = c.get("chk/000", None).await.expect("get");
    assert_eq!(r.header().expect("header").revision(), rev);
    drop(c);

    assert_eq!(etch.stop(), Some(0), "clean exit on SIGTERM");
    let report = etch_check(&data_dir, "after SIGKILL, restart, SIGTERM");
    assert!(report.contains("tree "), "{report}");
}
