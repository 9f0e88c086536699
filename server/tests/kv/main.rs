//! etcd's KV service through the etcd-client crate: every option and every error, with
//! exact values.
//!
//! Each scenario is written against etcd's behaviour and runs twice: on a fresh etch, and
//! (all in one process, in order) on real etcd 3.5.1, so the expectations here are etcd's
//! own answers, not etch's. Scenarios need no empty store: revisions are relative to the
//! revision they start at, and each uses its own keys (only `get_options` writes keys
//! at or after "zz/", so its from-key ranges see nothing else).

#[path = "../common/mod.rs"]
mod common;
mod ops;
mod txn;

use std::fmt::Debug;

use common::{Etch, RealEtcd, client};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    KeyValue, PutOptions, ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A fresh etch in a temporary dir; the dir outlives the server (field order).
struct Fresh {
    etch: Etch,
    _dir: tempfile::TempDir,
}

fn start_etch(flags: &[&str]) -> Fresh {
    let dir = tempfile::tempdir().expect("tempdir");
    let etch = Etch::start(&dir.path().join("data"), flags);
    Fresh { etch, _dir: dir }
}

/// The gRPC status of a failed call; panics on success or on a non-gRPC error.
#[track_caller]
fn status<T: Debug>(r: Result<T, etcd_client::Error>) -> (Code, String) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

#[track_caller]
fn assert_status<T: Debug>(r: Result<T, etcd_client::Error>, code: Code, msg: &str) {
    assert_eq!(status(r), (code, msg.to_string()));
}

const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_LARGE: &str = "etcdserver: request is too large";

/// (key, value, create_revision, mod_revision, version, lease)
type Kv = (String, String, i64, i64, i64, i64);

fn kv(k: &KeyValue) -> Kv {
    (
        String::from_utf8_lossy(k.key()).into_owned(),
        String::from_utf8_lossy(k.value()).into_owned(),
        k.create_revision(),
        k.mod_revision(),
        k.version(),
        k.lease(),
    )
}

fn expect(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
    (key.into(), value.into(), create, modified, version, 0)
}

fn kvs(r: &GetResponse) -> Vec<Kv> {
    r.kvs().iter().map(kv).collect()
}

fn keys(r: &GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|k| String::from_utf8_lossy(k.key()).into_owned())
        .collect()
}

fn header(h: Option<&ResponseHeader>) -> &ResponseHeader {
    h.expect("a response header")
}

/// The store's current revision, as a Range header reports it.
async fn current_rev(c: &mut Client) -> i64 {
    let r = c.get("current-rev-probe", None).await.expect("get");
    header(r.header()).revision()
}

async fn get(c: &mut Client, key: &str, opts: GetOptions) -> GetResponse {
    c.get(key, Some(opts))
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let r = c
        .put(key, value, None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    header(r.header()).revision()
}

/// Whether a txn with these compares and no ops takes its success branch.
async fn holds(c: &mut Client, cmps: Vec<Compare>) -> bool {
    c.txn(Txn::new().when(cmps)).await.expect("txn").succeeded()
}

fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::put(format!("{prefix}{i:03}"), "v", None))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios (etcd's answers)
// ---------------------------------------------------------------------------------------

use ops::{delete_options, get_options, put_options};
use txn::{txn_branches, txn_compares, txn_limits};

async fn request_size(c: &mut Client) {
    let r0 = current_rev(c).await;
    const MIB: usize = 1024 * 1024;
    // The default --max-request-bytes is 1.5 MiB.
    let big = vec![b'x'; MIB * 16 / 10];
    assert_status(
        c.put("big/a", big.clone(), None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    let half = vec![b'y'; MIB * 8 / 10];
    assert_status(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("big/a", half.clone(), None),
            TxnOp::put("big/b", half.clone(), None),
        ]))
        .await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    assert_eq!(current_rev(c).await, r0);
    let fits = vec![b'z'; MIB * 14 / 10];
    assert_eq!(
        header(
            c.put("big/a", fits.clone(), None)
                .await
                .expect("1.4 MiB")
                .header()
        )
        .revision(),
        r0 + 1
    );
    let r = get(c, "big/a", GetOptions::new()).await;
    assert_eq!(r.kvs()[0].value(), fits.as_slice());
    // Past the limit plus gRPC's 512 KiB headroom, gRPC refuses the message itself. The
    // size is the encoded PutRequest: tag+len+key (7), tag + 4-byte len + value.
    let huge = vec![b'h'; 2 * MIB + 100];
    assert_status(
        c.put("big/a", huge, None).await,
        Code::ResourceExhausted,
        &format!(
            "grpc: received message larger than max ({} vs. {})",
            7 + 5 + 2 * MIB + 100,
            2 * MIB
        ),
    );
    assert_eq!(current_rev(c).await, r0 + 1);
}

/// Header fields on every kind of response; the revision moves by exactly one per
/// mutating request and not at all otherwise.
async fn headers(c: &mut Client) {
    use CompareOp::Equal as Eq;
    let r0 = current_rev(c).await;
    let first = c.put("hdr/a", "1", None).await.expect("put");
    let h0 = header(first.header()).clone();
    assert_ne!(h0.cluster_id(), 0);
    assert_ne!(h0.member_id(), 0);
    assert!(h0.raft_term() >= 1);
    assert_eq!(h0.revision(), r0 + 1);
    let same = |h: Option<&ResponseHeader>, rev: i64, what: &str| {
        let h = header(h);
        assert_eq!(
            (h.cluster_id(), h.member_id(), h.raft_term(), h.revision()),
            (h0.cluster_id(), h0.member_id(), h0.raft_term(), rev),
            "{what}"
        );
    };
    let r = c.put("hdr/b", "1", None).await.expect("put");
    same(r.header(), r0 + 2, "put");
    let r = c.get("hdr/a", None).await.expect("get");
    same(r.header(), r0 + 2, "get");
    let r = get(c, "hdr/a", GetOptions::new().with_serializable()).await;
    same(r.header(), r0 + 2, "serializable get");
    let r = get(c, "hdr/a", GetOptions::new().with_revision(r0 + 1)).await;
    same(r.header(), r0 + 2, "get at an older revision");
    let r = c.delete("hdr/b", None).await.expect("delete");
    same(r.header(), r0 + 3, "delete");
    let r = c.delete("hdr/b", None).await.expect("delete");
    same(r.header(), r0 + 3, "delete of nothing");
    let r = c
        .txn(Txn::new().and_then(vec![
            TxnOp::put("hdr/c", "1", None),
            TxnOp::put("hdr/d", "1", None),
            TxnOp::delete("hdr/a", None),
        ]))
        .await
        .expect("txn");
    same(r.header(), r0 + 4, "txn with three writes");
    let r = c
        .txn(Txn::new().and_then(vec![TxnOp::get("hdr/c", None)]))
        .await
        .expect("txn");
    same(r.header(), r0 + 4, "read-only txn");
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::version("hdr/c", Eq, 5)])
                .and_then(vec![TxnOp::put("hdr/c", "2", None)]),
        )
        .await
        .expect("txn");
    same(r.header(), r0 + 4, "txn taking an empty failure branch");
    let _ = c.put("", "", None).await.expect_err("empty key");
    let _ = c
        .put("hdr/e", "", Some(PutOptions::new().with_lease(5)))
        .await
        .expect_err("no lease");
    let r = c.get("hdr/", None).await.expect("get");
    same(r.header(), r0 + 4, "after failed puts");
    let r = c.put("hdr/e", "1", None).await.expect("put");
    same(r.header(), r0 + 5, "put");
    for i in 0..10 {
        let r = c.put(format!("hdr/seq{i}"), "v", None).await.expect("put");
        same(r.header(), r0 + 6 + i, "sequential puts");
    }
}

/// Runs last on a shared server: it compacts away everyone's history.
async fn compaction(c: &mut Client) {
    let r0 = current_rev(c).await;
    for i in 1..=5 {
        put(c, "cmp/k", &format!("v{i}")).await; // r0 + i
    }
    let now = r0 + 5;
    let r = c.compact(r0 + 3, None).await.expect("compact");
    assert_eq!(header(r.header()).revision(), now, "compaction is no write");
    assert_ne!(header(r.header()).member_id(), 0);
    assert_eq!(current_rev(c).await, now);
    assert_status(
        c.get("cmp/k", Some(GetOptions::new().with_revision(r0 + 2)))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_status(
        c.get("cmp/k", Some(GetOptions::new().with_revision(1)))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    // The compaction revision itself is still readable.
    let r = get(c, "cmp/k", GetOptions::new().with_revision(r0 + 3)).await;
    assert_eq!(kvs(&r), vec![expect("cmp/k", "v3", r0 + 1, r0 + 3, 3)]);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "cmp/k", GetOptions::new().with_revision(r0 + 4)).await;
    assert_eq!(kvs(&r), vec![expect("cmp/k", "v4", r0 + 1, r0 + 4, 4)]);
    // Compacting at or below the compacted revision again, or past the current one.
    assert_status(c.compact(r0 + 3, None).await, Code::OutOfRange, COMPACTED);
    assert_status(c.compact(r0 + 2, None).await, Code::OutOfRange, COMPACTED);
    assert_status(c.compact(now + 1, None).await, Code::OutOfRange, FUTURE_REV);
    assert_status(
        c.compact(now + 100, Some(CompactionOptions::new().with_physical()))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    // A read-only txn reading compacted history.
    assert_status(
        c.txn(Txn::new().and_then(vec![TxnOp::get(
            "cmp/k",
            Some(GetOptions::new().with_revision(r0 + 1)),
        )]))
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    // Physical compaction up to the current revision.
    let r = c
        .compact(now, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("physical compact");
    assert_eq!(header(r.header()).revision(), now);
    assert_status(
        c.get("cmp/k", Some(GetOptions::new().with_revision(now - 1)))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    let r = get(c, "cmp/k", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("cmp/k", "v5", r0 + 1, now, 5)]);
    let r = get(c, "cmp/k", GetOptions::new().with_revision(now)).await;
    assert_eq!(kvs(&r), vec![expect("cmp/k", "v5", r0 + 1, now, 5)]);
    // Writes go on from there; a deleted key's history is compacted away too.
    let r = c.delete("cmp/k", None).await.expect("delete");
    assert_eq!(header(r.header()).revision(), now + 1);
    put(c, "cmp/k", "new").await;
    c.compact(now + 2, None).await.expect("compact");
    let r = get(c, "cmp/k", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("cmp/k", "new", now + 2, now + 2, 1)]);
    assert_status(
        c.get("cmp/k", Some(GetOptions::new().with_revision(now + 1)))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
}

// ---------------------------------------------------------------------------------------
// On etch
// ---------------------------------------------------------------------------------------

macro_rules! on_etch {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let f = start_etch(&[]);
            let mut c = client(&f.etch.endpoint()).await;
            super::$name(&mut c).await;
        }
    )*};
}

mod etch {
    use super::*;
    on_etch!(
        put_options,
        get_options,
        delete_options,
        txn_compares,
        txn_branches,
        txn_limits,
        request_size,
        headers,
        compaction,
    );
}

/// The same scenarios on real etcd 3.5.1, in one process, in order: proof that what the
/// scenarios expect is what etcd answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_hold_on_real_etcd() {
    let etcd = RealEtcd::start();
    let mut c = client(&etcd.endpoint()).await;
    put_options(&mut c).await;
    get_options(&mut c).await;
    delete_options(&mut c).await;
    txn_compares(&mut c).await;
    txn_branches(&mut c).await;
    txn_limits(&mut c).await;
    request_size(&mut c).await;
    headers(&mut c).await;
    compaction(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_txn_ops_flag() {
    let f = start_etch(&["--max-txn-ops", "4"]);
    let mut c = client(&f.etch.endpoint()).await;
    c.txn(Txn::new().and_then(puts("ops/a", 4)))
        .await
        .expect("4 ops");
    assert_status(
        c.txn(Txn::new().and_then(puts("ops/b", 5))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let cmps: Vec<Compare> = (0..5)
        .map(|i| Compare::version(format!("ops/c{i}"), CompareOp::Equal, 0))
        .collect();
    assert_status(
        c.txn(Txn::new().when(cmps)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let mut ops = puts("ops/d", 1);
    ops.push(TxnOp::txn(Txn::new().and_then(puts("ops/e", 3))));
    assert_status(
        c.txn(Txn::new().and_then(ops)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let mut ops = puts("ops/d", 1);
    ops.push(TxnOp::txn(Txn::new().and_then(puts("ops/e", 2))));
    c.txn(Txn::new().and_then(ops)).await.expect("2 + 2");
    let r = get(
        &mut c,
        "ops/",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert_eq!(r.count(), 4 + 1 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_request_bytes_flag() {
    let f = start_etch(&["--max-request-bytes", "4096"]);
    let mut c = client(&f.etch.endpoint()).await;
    let r0 = current_rev(&mut c).await;
    c.put("mrb/a", vec![b'x'; 3000], None)
        .await
        .expect("3000 bytes fit in 4096");
    assert_status(
        c.put("mrb/a", vec![b'x'; 5000], None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    assert_status(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("mrb/b", vec![b'x'; 2500], None),
            TxnOp::put("mrb/c", vec![b'x'; 2500], None),
        ]))
        .await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    // Past the limit plus gRPC's 512 KiB headroom the message is refused before it is
    // decoded (etcd: ResourceExhausted "grpc: received message larger than max").
    assert_status(
        c.put("mrb/a", vec![b'x'; 600 * 1024], None).await,
        Code::ResourceExhausted,
        "grpc: received message larger than max (614411 vs. 528384)",
    );
    assert_eq!(current_rev(&mut c).await, r0 + 1);
    // Reads are not limited by it.
    let r = get(&mut c, "mrb/a", GetOptions::new()).await;
    assert_eq!(r.kvs()[0].value().len(), 3000);
}

/// What a restart must keep: the "dur/" keys as they were, the ids, and old revisions.
struct Snapshot {
    kvs: Vec<Kv>,
    cluster_id: u64,
    member_id: u64,
    raft_term: u64,
    /// (revision, what "dur/07" was at it)
    old: (i64, Vec<Kv>),
    compacted_below: i64,
}

async fn check_kept(c: &mut Client, want: &Snapshot, revision: i64, what: &str) {
    let r = get(c, "dur/", GetOptions::new().with_prefix()).await;
    assert_eq!(kvs(&r), want.kvs, "{what}");
    let h = header(r.header());
    assert_eq!(
        (h.cluster_id(), h.member_id(), h.revision()),
        (want.cluster_id, want.member_id, revision),
        "{what}"
    );
    assert!(h.raft_term() >= want.raft_term, "{what}");
    let r = get(c, "dur/07", GetOptions::new().with_revision(want.old.0)).await;
    assert_eq!(kvs(&r), want.old.1, "{what}");
    assert_status(
        c.get(
            "dur/07",
            Some(GetOptions::new().with_revision(want.compacted_below - 1)),
        )
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
}

/// Everything written is still there, byte for byte and revision for revision, after a
/// SIGTERM restart and after a SIGKILL restart; ids stay, the revision goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_sigterm_and_sigkill_restarts() {
    let mut f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    for i in 0..50 {
        put(&mut c, &format!("dur/{i:02}"), &format!("v{i}")).await;
    }
    put(&mut c, "dur/07", "again").await;
    c.delete("dur/1", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    c.txn(Txn::new().and_then(vec![
        TxnOp::put("dur/x", "tx", None),
        TxnOp::put("dur/y", vec![b'b'; 100_000], None),
    ]))
    .await
    .expect("txn");
    c.compact(r0 + 5, None).await.expect("compact");
    let r = get(&mut c, "dur/", GetOptions::new().with_prefix()).await;
    assert_eq!(header(r.header()).revision(), r0 + 53);
    assert_eq!(r.kvs().len(), 42);
    let h = header(r.header());
    let want = Snapshot {
        kvs: kvs(&r),
        cluster_id: h.cluster_id(),
        member_id: h.member_id(),
        raft_term: h.raft_term(),
        old: (r0 + 20, vec![expect("dur/07", "v7", r0 + 8, r0 + 8, 1)]),
        compacted_below: r0 + 5,
    };
    check_kept(&mut c, &want, r0 + 53, "before any restart").await;

    assert_eq!(f.etch.stop(), Some(0), "clean exit on SIGTERM");
    f.etch.restart();
    let mut c = client(&ep).await;
    check_kept(&mut c, &want, r0 + 53, "after SIGTERM").await;
    assert_eq!(put(&mut c, "dur-after-term", "1").await, r0 + 54);

    f.etch.kill();
    f.etch.restart();
    let mut c = client(&ep).await;
    check_kept(&mut c, &want, r0 + 54, "after SIGKILL").await;
    let r = get(&mut c, "dur-after-term", GetOptions::new()).await;
    assert_eq!(
        kvs(&r),
        vec![expect("dur-after-term", "1", r0 + 54, r0 + 54, 1)]
    );
    assert_eq!(put(&mut c, "dur-after-kill", "1").await, r0 + 55);

    // Killed right after an acknowledged write, before any checkpoint could run.
    f.etch.kill();
    f.etch.restart();
    let mut c = client(&ep).await;
    check_kept(&mut c, &want, r0 + 55, "after a second SIGKILL").await;
    assert_eq!(f.etch.stop(), Some(0));
}
