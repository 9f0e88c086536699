//! etcd's KV service through the etcd-client crate: every option and every error, with
//! exact values.
//!
//! Each scenario is written against etcd's behaviour and runs twice: on a fresh etch, and
//! (all in one process, in order) on real etcd 3.5.1, so the expectations here are etcd's
//! own answers, not etch's. Scenarios need no empty store: revisions are relative to the
//! revision they start at, and each uses its own keys (only `get_options` writes keys
//! at or after "zz/", so its from-key ranges see nothing else).

mod common;

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

async fn put_options(c: &mut Client) {
    let r0 = current_rev(c).await;
    let r = c.put("put/a", "1", None).await.expect("put");
    assert_eq!(header(r.header()).revision(), r0 + 1);
    assert!(r.prev_key().is_none(), "prev_kv only when asked");

    let r = c
        .put("put/a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(header(r.header()).revision(), r0 + 2);
    assert_eq!(
        kv(r.prev_key().expect("prev kv")),
        expect("put/a", "1", r0 + 1, r0 + 1, 1)
    );
    let r = c
        .put("put/new", "n", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert!(r.prev_key().is_none(), "no prev kv for a new key");
    assert_eq!(header(r.header()).revision(), r0 + 3);
    // An empty value is a value.
    assert_eq!(put(c, "put/empty", "").await, r0 + 4);
    let r = get(c, "put/empty", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/empty", "", r0 + 4, r0 + 4, 1)]);

    // Errors leave the revision alone.
    assert_status(
        c.put("put/a", "x", Some(PutOptions::new().with_lease(0x1234)))
            .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert_status(
        c.put(
            "put/missing",
            "",
            Some(PutOptions::new().with_ignore_value()),
        )
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.put(
            "put/missing",
            "v",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.put("put/a", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        c.put(
            "put/a",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(7)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_status(
        c.put("", "v", None).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_status(
        c.put("", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_eq!(current_rev(c).await, r0 + 4);
    assert!(
        get(c, "put/missing", GetOptions::new())
            .await
            .kvs()
            .is_empty()
    );

    // ignore_value keeps the value and still makes a new version.
    let r = c
        .put(
            "put/a",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .expect("put ignore_value");
    assert_eq!(header(r.header()).revision(), r0 + 5);
    assert_eq!(
        kv(r.prev_key().expect("prev kv")),
        expect("put/a", "2", r0 + 1, r0 + 2, 2)
    );
    let r = get(c, "put/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/a", "2", r0 + 1, r0 + 5, 3)]);
    // ignore_lease takes the new value and keeps the (absent) lease.
    let r = c
        .put("put/a", "3", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put ignore_lease");
    assert_eq!(header(r.header()).revision(), r0 + 6);
    let r = get(c, "put/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/a", "3", r0 + 1, r0 + 6, 4)]);
    // Both at once: a pure touch.
    let r = c
        .put(
            "put/a",
            "",
            Some(PutOptions::new().with_ignore_value().with_ignore_lease()),
        )
        .await
        .expect("put ignore both");
    assert_eq!(header(r.header()).revision(), r0 + 7);
    let r = get(c, "put/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/a", "3", r0 + 1, r0 + 7, 5)]);
    // Binary keys and values round-trip.
    let key = vec![b'p', 0, 0xff, b'\n'];
    let value = vec![0u8, 1, 2, 0xfe, 0xff];
    c.put(key.clone(), value.clone(), None).await.expect("put");
    let r = c.get(key.clone(), None).await.expect("get");
    assert_eq!(r.kvs()[0].key(), key.as_slice());
    assert_eq!(r.kvs()[0].value(), value.as_slice());
}

async fn get_options(c: &mut Client) {
    let r0 = current_rev(c).await;
    for (k, v) in [
        ("zz/a", "5"),
        ("zz/b", "4"),
        ("zz/c", "3"),
        ("zz/d", "2"),
        ("zz/e", "1"),
    ] {
        put(c, k, v).await;
    }
    put(c, "zz/b", "44").await; // r0 + 6
    put(c, "zz/d", "22").await; // r0 + 7
    put(c, "zz/d", "222").await; // r0 + 8
    // Neighbours just outside the "zz/" prefix on both sides.
    put(c, "zy", "x").await; // r0 + 9
    put(c, "zz0", "x").await; // r0 + 10
    let now = r0 + 10;
    let a = expect("zz/a", "5", r0 + 1, r0 + 1, 1);
    let b = expect("zz/b", "44", r0 + 2, r0 + 6, 2);
    let cc = expect("zz/c", "3", r0 + 3, r0 + 3, 1);
    let d = expect("zz/d", "222", r0 + 4, r0 + 8, 3);
    let e = expect("zz/e", "1", r0 + 5, r0 + 5, 1);
    let zz0 = expect("zz0", "x", r0 + 10, r0 + 10, 1);
    let all = vec![a.clone(), b.clone(), cc.clone(), d.clone(), e.clone()];

    // One key, a missing key.
    let r = get(c, "zz/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![a.clone()]);
    assert_eq!((r.count(), r.more()), (1, false));
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/nope", GetOptions::new()).await;
    assert!(r.kvs().is_empty());
    assert_eq!((r.count(), r.more()), (0, false));

    // Ranges: [key, end), prefix, from key, an end before the key.
    let r = get(c, "zz/b", GetOptions::new().with_range("zz/d")).await;
    assert_eq!(kvs(&r), vec![b.clone(), cc.clone()]);
    assert_eq!(r.count(), 2);
    let r = get(c, "zz/", GetOptions::new().with_prefix()).await;
    assert_eq!(kvs(&r), all);
    assert_eq!((r.count(), r.more()), (5, false));
    let r = get(c, "zz/c", GetOptions::new().with_from_key()).await;
    assert_eq!(kvs(&r), vec![cc.clone(), d.clone(), e.clone(), zz0.clone()]);
    let r = get(c, "zz/d", GetOptions::new().with_range("zz/b")).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);

    // Limit, more, count.
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_limit(2)).await;
    assert_eq!(kvs(&r), vec![a.clone(), b.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_limit(4)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d"]);
    assert_eq!((r.count(), r.more()), (5, true));
    for limit in [5, 6, 0] {
        let r = get(c, "zz/", GetOptions::new().with_prefix().with_limit(limit)).await;
        assert_eq!(kvs(&r), all, "limit {limit}");
        assert_eq!((r.count(), r.more()), (5, false), "limit {limit}");
    }

    // count_only, keys_only.
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_count_only()).await;
    assert!(r.kvs().is_empty());
    assert_eq!((r.count(), r.more()), (5, false));
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_keys_only()).await;
    let stripped: Vec<Kv> = all
        .iter()
        .map(|(k, _, cr, m, v, l)| (k.clone(), String::new(), *cr, *m, *v, *l))
        .collect();
    assert_eq!(kvs(&r), stripped);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(1),
    )
    .await;
    assert_eq!(kvs(&r), vec![stripped[0].clone()]);
    assert_eq!((r.count(), r.more()), (5, true));

    // Reads at an old revision; the header still carries the current revision.
    let r = get(
        c,
        "zz/",
        GetOptions::new().with_prefix().with_revision(r0 + 3),
    )
    .await;
    assert_eq!(
        kvs(&r),
        vec![
            expect("zz/a", "5", r0 + 1, r0 + 1, 1),
            expect("zz/b", "4", r0 + 2, r0 + 2, 1),
            expect("zz/c", "3", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(r.count(), 3);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/d", GetOptions::new().with_revision(r0 + 7)).await;
    assert_eq!(kvs(&r), vec![expect("zz/d", "22", r0 + 4, r0 + 7, 2)]);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/a", GetOptions::new().with_revision(r0)).await;
    assert!(r.kvs().is_empty(), "zz/a did not exist yet");
    let r = get(c, "zz/a", GetOptions::new().with_revision(now)).await;
    assert_eq!(kvs(&r), vec![a.clone()]);
    assert_status(
        c.get("zz/a", Some(GetOptions::new().with_revision(now + 1)))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    assert_status(
        c.get("zz/a", Some(GetOptions::new().with_revision(now + 1000)))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );

    // Sorting. Values: a=5 b=44 c=3 d=222 e=1; versions a1 b2 c1 d3 e1;
    // mod revisions a<c<e<b<d; create revisions a<b<c<d<e.
    let sorted = |t: SortTarget, o: SortOrder| GetOptions::new().with_prefix().with_sort(t, o);
    let r = get(c, "zz/", sorted(SortTarget::Key, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/e", "zz/d", "zz/c", "zz/b", "zz/a"]);
    let r = get(c, "zz/", sorted(SortTarget::Key, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d", "zz/e"]);
    let r = get(c, "zz/", sorted(SortTarget::Value, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/e", "zz/d", "zz/c", "zz/b", "zz/a"]);
    let r = get(c, "zz/", sorted(SortTarget::Value, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d", "zz/e"]);
    let r = get(c, "zz/", sorted(SortTarget::Version, SortOrder::Ascend)).await;
    let versions: Vec<i64> = r.kvs().iter().map(|k| k.version()).collect();
    assert_eq!(versions, [1, 1, 1, 2, 3]);
    assert_eq!(keys(&r)[3..], ["zz/b", "zz/d"]);
    let r = get(c, "zz/", sorted(SortTarget::Version, SortOrder::Descend)).await;
    assert_eq!(keys(&r)[..2], ["zz/d", "zz/b"]);
    let r = get(c, "zz/", sorted(SortTarget::Create, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/e", "zz/d", "zz/c", "zz/b", "zz/a"]);
    let r = get(c, "zz/", sorted(SortTarget::Create, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d", "zz/e"]);
    let r = get(c, "zz/", sorted(SortTarget::Mod, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/c", "zz/e", "zz/b", "zz/d"]);
    let r = get(c, "zz/", sorted(SortTarget::Mod, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/d", "zz/b", "zz/e", "zz/c", "zz/a"]);
    // A target other than the key with no order sorts ascending.
    let r = get(c, "zz/", sorted(SortTarget::Mod, SortOrder::None)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/c", "zz/e", "zz/b", "zz/d"]);
    // Sorting comes before the limit.
    let r = get(
        c,
        "zz/",
        sorted(SortTarget::Mod, SortOrder::Descend).with_limit(2),
    )
    .await;
    assert_eq!(kvs(&r), vec![d.clone(), b.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));
    let r = get(
        c,
        "zz/",
        sorted(SortTarget::Value, SortOrder::Ascend).with_limit(1),
    )
    .await;
    assert_eq!(kvs(&r), vec![e.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));

    // Revision filters; count is the range's count before filtering.
    let with = |o: GetOptions| o.with_prefix();
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_min_mod_revision(r0 + 5)),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone(), d.clone(), e.clone()]);
    assert_eq!((r.count(), r.more()), (5, false));
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_max_mod_revision(r0 + 4)),
    )
    .await;
    assert_eq!(kvs(&r), vec![a.clone(), cc.clone()]);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_min_create_revision(r0 + 3)),
    )
    .await;
    assert_eq!(kvs(&r), vec![cc.clone(), d.clone(), e.clone()]);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_max_create_revision(r0 + 2)),
    )
    .await;
    assert_eq!(kvs(&r), vec![a.clone(), b.clone()]);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        with(
            GetOptions::new()
                .with_min_mod_revision(r0 + 3)
                .with_max_mod_revision(r0 + 6)
                .with_min_create_revision(r0 + 2),
        ),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone(), cc.clone(), e.clone()]);
    // Filters come before the limit.
    let r = get(
        c,
        "zz/",
        with(
            GetOptions::new()
                .with_min_mod_revision(r0 + 5)
                .with_limit(1),
        ),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));
    let r = get(
        c,
        "zz/",
        with(
            GetOptions::new()
                .with_min_mod_revision(r0 + 5)
                .with_limit(3),
        ),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone(), d.clone(), e.clone()]);
    assert_eq!((r.count(), r.more()), (5, false));

    // Serializable reads see the same.
    let r = get(
        c,
        "zz/",
        GetOptions::new().with_prefix().with_serializable(),
    )
    .await;
    assert_eq!(kvs(&r), all);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(
        c,
        "zz/",
        GetOptions::new()
            .with_prefix()
            .with_serializable()
            .with_revision(r0 + 3),
    )
    .await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c"]);

    // An empty key is refused, with or without a range end.
    assert_status(
        c.get("", None).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_status(
        c.get("", Some(GetOptions::new().with_range("zz/b"))).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_eq!(current_rev(c).await, now, "reads do not move the revision");
}

async fn delete_options(c: &mut Client) {
    let r0 = current_rev(c).await;
    for k in ["del/a", "del/b", "del/c", "del/d", "del/e", "del/f"] {
        put(c, k, &format!("v-{k}")).await;
    }
    // r0+1 .. r0+6
    let r = c.delete("del/a", None).await.expect("delete");
    assert_eq!(r.deleted(), 1);
    assert!(r.prev_kvs().is_empty(), "prev_kvs only when asked");
    assert_eq!(header(r.header()).revision(), r0 + 7);
    // Deleting nothing changes nothing.
    let r = c.delete("del/a", None).await.expect("delete");
    assert_eq!(r.deleted(), 0);
    assert_eq!(header(r.header()).revision(), r0 + 7);
    let r = c
        .delete("del/zzz", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!(r.deleted(), 0);
    assert!(r.prev_kvs().is_empty());
    assert_eq!(header(r.header()).revision(), r0 + 7);

    // A range with prev_kv.
    let r = c
        .delete(
            "del/b",
            Some(DeleteOptions::new().with_range("del/d").with_prev_key()),
        )
        .await
        .expect("delete range");
    assert_eq!(r.deleted(), 2);
    let prev: Vec<Kv> = r.prev_kvs().iter().map(kv).collect();
    assert_eq!(
        prev,
        vec![
            expect("del/b", "v-del/b", r0 + 2, r0 + 2, 1),
            expect("del/c", "v-del/c", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(header(r.header()).revision(), r0 + 8);
    let r = get(c, "del/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&r), ["del/d", "del/e", "del/f"]);

    // The deleted keys are still there at older revisions.
    let r = get(
        c,
        "del/",
        GetOptions::new().with_prefix().with_revision(r0 + 7),
    )
    .await;
    assert_eq!(keys(&r), ["del/b", "del/c", "del/d", "del/e", "del/f"]);

    // A prefix, without prev_kv.
    put(c, "del/e/x", "x").await; // r0 + 9
    let r = c
        .delete("del/e", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
    assert_eq!(r.deleted(), 2);
    assert!(r.prev_kvs().is_empty());
    assert_eq!(header(r.header()).revision(), r0 + 10);
    let r = get(c, "del/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&r), ["del/d", "del/f"]);

    // A key created again starts over at version 1.
    assert_eq!(put(c, "del/a", "again").await, r0 + 11);
    let r = get(c, "del/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("del/a", "again", r0 + 11, r0 + 11, 1)]);

    // An empty key is refused.
    assert_status(
        c.delete("", None).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_status(
        c.delete("", Some(DeleteOptions::new().with_range("z")))
            .await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_eq!(current_rev(c).await, r0 + 11);
}

async fn txn_compares(c: &mut Client) {
    let r0 = current_rev(c).await;
    put(c, "txn/a", "1").await;
    put(c, "txn/a", "2").await;
    put(c, "txn/b", "x").await;
    // txn/a: value "2", create r0+1, mod r0+2, version 2, lease 0; txn/b version 1.
    use CompareOp::{Equal as Eq, Greater as Gt, Less as Lt, NotEqual as Ne};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("txn/a", Eq, 2), true),
        (Compare::version("txn/a", Eq, 1), false),
        (Compare::version("txn/a", Gt, 1), true),
        (Compare::version("txn/a", Gt, 2), false),
        (Compare::version("txn/a", Lt, 3), true),
        (Compare::version("txn/a", Lt, 2), false),
        (Compare::version("txn/a", Ne, 2), false),
        (Compare::version("txn/a", Ne, 0), true),
        (Compare::create_revision("txn/a", Eq, r0 + 1), true),
        (Compare::create_revision("txn/a", Gt, r0 + 1), false),
        (Compare::create_revision("txn/a", Gt, r0), true),
        (Compare::create_revision("txn/a", Lt, r0 + 2), true),
        (Compare::create_revision("txn/a", Ne, r0 + 1), false),
        (Compare::mod_revision("txn/a", Eq, r0 + 2), true),
        (Compare::mod_revision("txn/a", Eq, r0 + 1), false),
        (Compare::mod_revision("txn/a", Gt, r0 + 1), true),
        (Compare::mod_revision("txn/a", Lt, r0 + 2), false),
        (Compare::mod_revision("txn/a", Lt, r0 + 3), true),
        (Compare::mod_revision("txn/a", Ne, r0 + 3), true),
        (Compare::value("txn/a", Eq, "2"), true),
        (Compare::value("txn/a", Eq, "1"), false),
        (Compare::value("txn/a", Gt, "1"), true),
        (Compare::value("txn/a", Gt, "2"), false),
        (Compare::value("txn/a", Lt, "3"), true),
        (Compare::value("txn/a", Lt, "10"), false),
        (Compare::value("txn/a", Ne, "2"), false),
        (Compare::value("txn/a", Ne, "22"), true),
        (Compare::lease("txn/a", Eq, 0), true),
        (Compare::lease("txn/a", Gt, 0), false),
        (Compare::lease("txn/a", Lt, 1), true),
        (Compare::lease("txn/a", Ne, 5), true),
        (Compare::lease("txn/a", Ne, 0), false),
        // A missing key compares as zeros, except that its value never compares.
        (Compare::version("txn/none", Eq, 0), true),
        (Compare::version("txn/none", Gt, 0), false),
        (Compare::create_revision("txn/none", Eq, 0), true),
        (Compare::mod_revision("txn/none", Lt, 1), true),
        (Compare::lease("txn/none", Eq, 0), true),
        (Compare::value("txn/none", Eq, ""), false),
        (Compare::value("txn/none", Ne, "x"), false),
        (Compare::value("txn/none", Lt, "x"), false),
        // Over a range: every key must satisfy it.
        (Compare::version("txn/a", Gt, 0).with_range("txn/c"), true),
        (Compare::version("txn/", Eq, 2).with_prefix(), false),
        (Compare::version("txn/", Ne, 3).with_prefix(), true),
        (Compare::create_revision("txn/", Gt, r0).with_prefix(), true),
        (
            Compare::mod_revision("txn/", Lt, r0 + 3).with_prefix(),
            false,
        ),
        (Compare::value("txn/", Ne, "zzz").with_prefix(), true),
        (Compare::value("txn/", Eq, "2").with_prefix(), false),
        // An empty range compares as one missing key.
        (Compare::version("txn/q", Eq, 0).with_range("txn/r"), true),
        (Compare::version("txn/q", Eq, 5).with_range("txn/r"), false),
        (Compare::value("txn/q", Eq, "").with_range("txn/r"), false),
        (Compare::value("txn/q", Ne, "5").with_range("txn/r"), false),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let dbg = format!("{cmp:?}");
        assert_eq!(holds(c, vec![cmp]).await, want, "case {i}: {dbg}");
    }
    // Several compares must all hold.
    assert!(
        holds(
            c,
            vec![
                Compare::version("txn/a", Eq, 2),
                Compare::value("txn/b", Eq, "x")
            ]
        )
        .await
    );
    assert!(
        !holds(
            c,
            vec![
                Compare::version("txn/a", Eq, 2),
                Compare::value("txn/b", Eq, "y")
            ]
        )
        .await
    );
    assert_eq!(current_rev(c).await, r0 + 3, "compares alone write nothing");

    // An empty compare key is refused.
    assert_status(
        c.txn(Txn::new().when(vec![Compare::version("", Eq, 0)]))
            .await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
}

async fn txn_branches(c: &mut Client) {
    use CompareOp::Equal as Eq;
    let r0 = current_rev(c).await;
    put(c, "br/a", "2").await; // r0 + 1
    put(c, "br/b", "x").await; // r0 + 2

    // Success: put (prev_kv), get, delete (prev_kv), nested txn; one revision for all.
    let t = Txn::new()
        .when(vec![Compare::value("br/a", Eq, "2")])
        .and_then(vec![
            TxnOp::get("br/a", None),
            TxnOp::put("br/a", "3", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("br/a", None),
            TxnOp::delete("br/b", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::version("br/a", Eq, 2)])
                    .and_then(vec![TxnOp::put("br/c", "then", None)])
                    .or_else(vec![
                        TxnOp::put("br/c", "else", None),
                        TxnOp::get("br/", Some(GetOptions::new().with_prefix())),
                    ]),
            ),
        ])
        .or_else(vec![TxnOp::put("br/a", "fail", None)]);
    let r = c.txn(t).await.expect("txn");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 3);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 5);
    let TxnOpResponse::Get(g) = &ops[0] else {
        panic!("{:?}", ops[0])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "2", r0 + 1, r0 + 1, 1)]);
    assert_eq!(header(g.header()).revision(), r0 + 2);
    let TxnOpResponse::Put(p) = &ops[1] else {
        panic!("{:?}", ops[1])
    };
    assert_eq!(
        kv(p.prev_key().expect("prev kv")),
        expect("br/a", "2", r0 + 1, r0 + 1, 1)
    );
    assert_eq!(header(p.header()).revision(), r0 + 3);
    // A read after a write in the same txn sees it.
    let TxnOpResponse::Get(g) = &ops[2] else {
        panic!("{:?}", ops[2])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "3", r0 + 1, r0 + 3, 2)]);
    assert_eq!(header(g.header()).revision(), r0 + 3);
    let TxnOpResponse::Delete(d) = &ops[3] else {
        panic!("{:?}", ops[3])
    };
    assert_eq!(d.deleted(), 1);
    let prev: Vec<Kv> = d.prev_kvs().iter().map(kv).collect();
    assert_eq!(prev, vec![expect("br/b", "x", r0 + 2, r0 + 2, 1)]);
    assert_eq!(header(d.header()).revision(), r0 + 3);
    // Every compare, nested ones included, sees the store as it was before the txn:
    // br/a had version 1 then, so the nested txn takes its failure branch.
    let TxnOpResponse::Txn(n) = &ops[4] else {
        panic!("{:?}", ops[4])
    };
    assert!(!n.succeeded());
    // etcd leaves a nested txn's own header empty.
    let nh = header(n.header());
    assert_eq!(
        (
            nh.cluster_id(),
            nh.member_id(),
            nh.revision(),
            nh.raft_term()
        ),
        (0, 0, 0, 0)
    );
    let nested = n.op_responses();
    assert_eq!(nested.len(), 2);
    let TxnOpResponse::Put(p) = &nested[0] else {
        panic!("{:?}", nested[0])
    };
    assert!(p.prev_key().is_none());
    assert_eq!(header(p.header()).revision(), r0 + 3);
    let TxnOpResponse::Get(g) = &nested[1] else {
        panic!("{:?}", nested[1])
    };
    assert_eq!(
        kvs(g),
        vec![
            expect("br/a", "3", r0 + 1, r0 + 3, 2),
            expect("br/c", "else", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(header(g.header()).revision(), r0 + 3);
    let r = get(c, "br/", GetOptions::new().with_prefix()).await;
    assert_eq!(
        kvs(&r),
        vec![
            expect("br/a", "3", r0 + 1, r0 + 3, 2),
            expect("br/c", "else", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(header(r.header()).revision(), r0 + 3);

    // Failure branch.
    let t = Txn::new()
        .when(vec![Compare::value("br/a", Eq, "nope")])
        .and_then(vec![TxnOp::put("br/a", "x", None)])
        .or_else(vec![
            TxnOp::put("br/d", "f", None),
            TxnOp::get(
                "br/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        ]);
    let r = c.txn(t).await.expect("txn");
    assert!(!r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 2);
    let TxnOpResponse::Get(g) = &ops[1] else {
        panic!("{:?}", ops[1])
    };
    assert_eq!(keys(g), ["br/a", "br/c", "br/d"]);
    assert_eq!(g.count(), 3);

    // A failed compare with no failure ops, a read-only txn, an empty txn: no revision.
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::value("br/a", Eq, "nope")])
                .and_then(vec![TxnOp::put("br/a", "x", None)]),
        )
        .await
        .expect("txn");
    assert!(!r.succeeded());
    assert!(r.op_responses().is_empty());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    let r = c
        .txn(Txn::new().and_then(vec![
            TxnOp::get("br/a", None),
            TxnOp::get("br/a", Some(GetOptions::new().with_revision(r0 + 1))),
            TxnOp::get(
                "br/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        ]))
        .await
        .expect("read-only txn");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    let ops = r.op_responses();
    let TxnOpResponse::Get(g) = &ops[0] else {
        panic!("{:?}", ops[0])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "3", r0 + 1, r0 + 3, 2)]);
    assert_eq!(header(g.header()).revision(), r0 + 4);
    let TxnOpResponse::Get(g) = &ops[1] else {
        panic!("{:?}", ops[1])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "2", r0 + 1, r0 + 1, 1)]);
    assert_eq!(header(g.header()).revision(), r0 + 4);
    let TxnOpResponse::Get(g) = &ops[2] else {
        panic!("{:?}", ops[2])
    };
    assert_eq!((g.kvs().len(), g.count()), (0, 3));
    let r = c.txn(Txn::new()).await.expect("empty txn");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    // A txn whose only delete finds nothing writes nothing.
    let r = c
        .txn(Txn::new().and_then(vec![TxnOp::delete("br/none", None)]))
        .await
        .expect("txn");
    assert_eq!(header(r.header()).revision(), r0 + 4);

    // Errors inside the branch taken; the branch not taken is not checked at apply.
    assert_status(
        c.txn(Txn::new().and_then(vec![TxnOp::put(
            "br/missing",
            "",
            Some(PutOptions::new().with_ignore_value()),
        )]))
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("br/e", "e", None),
            TxnOp::put("br/f", "f", Some(PutOptions::new().with_lease(0x77))),
        ]))
        .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::version("br/a", Eq, 2)])
                .and_then(vec![TxnOp::put("br/e", "e", None)])
                .or_else(vec![TxnOp::put(
                    "br/missing",
                    "",
                    Some(PutOptions::new().with_ignore_value()),
                )]),
        )
        .await
        .expect("txn with a bad op in the branch not taken");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 5);
    assert_status(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("br/e", "e", None),
            TxnOp::get("br/a", Some(GetOptions::new().with_revision(r0 + 1000))),
        ]))
        .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    // Each op's header carries the revision as of that op: a delete that finds nothing
    // before any write still reports the revision the txn started at.
    let r = c
        .txn(Txn::new().and_then(vec![
            TxnOp::delete("br/none", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::put("br/g", "g", None),
            TxnOp::delete("br/none", None),
        ]))
        .await
        .expect("txn");
    assert_eq!(header(r.header()).revision(), r0 + 6);
    let revs: Vec<(i64, i64)> = r
        .op_responses()
        .iter()
        .map(|op| match op {
            TxnOpResponse::Delete(d) => (header(d.header()).revision(), d.deleted()),
            TxnOpResponse::Put(p) => (header(p.header()).revision(), 1),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revs, [(r0 + 5, 0), (r0 + 6, 1), (r0 + 6, 0)]);
    // Validation covers both branches.
    for op in [
        TxnOp::put("", "v", None),
        TxnOp::get("", None),
        TxnOp::delete("", None),
        TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("", "v", None)])),
    ] {
        let dbg = format!("{op:?}");
        assert_eq!(
            status(c.txn(Txn::new().or_else(vec![op])).await),
            (Code::InvalidArgument, KEY_NOT_PROVIDED.to_string()),
            "{dbg}"
        );
    }
    assert_status(
        c.txn(Txn::new().or_else(vec![TxnOp::put(
            "br/a",
            "v",
            Some(PutOptions::new().with_ignore_value()),
        )]))
        .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        c.txn(Txn::new().or_else(vec![TxnOp::put(
            "br/a",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(9)),
        )]))
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_eq!(current_rev(c).await, r0 + 6, "failed txns write nothing");
    let r = get(c, "br/f", GetOptions::new()).await;
    assert!(r.kvs().is_empty(), "a failed txn is all-or-nothing");
}

async fn txn_limits(c: &mut Client) {
    use CompareOp::Equal as Eq;
    let r0 = current_rev(c).await;
    // 128 operations per list by default.
    let r = c
        .txn(Txn::new().and_then(puts("lim/a", 128)))
        .await
        .expect("128 ops");
    assert_eq!(header(r.header()).revision(), r0 + 1);
    let r = get(
        c,
        "lim/a",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert_eq!(r.count(), 128);
    assert_status(
        c.txn(Txn::new().and_then(puts("lim/b", 129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_status(
        c.txn(Txn::new().or_else(puts("lim/b", 129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let cmps: Vec<Compare> = (0..129)
        .map(|i| Compare::version(format!("lim/c{i}"), Eq, 0))
        .collect();
    assert_status(
        c.txn(Txn::new().when(cmps)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let cmps: Vec<Compare> = (0..128)
        .map(|i| Compare::version(format!("lim/c{i}"), Eq, 0))
        .collect();
    let r = c
        .txn(
            Txn::new()
                .when(cmps)
                .and_then(puts("lim/d", 128))
                .or_else(puts("lim/e", 128)),
        )
        .await
        .expect("128 compares and 128 ops on each branch");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 2);
    // A nested txn gets what its parent's largest list left.
    let nested = |n: usize| TxnOp::txn(Txn::new().and_then(puts("lim/n", n)));
    assert_status(
        c.txn(Txn::new().and_then(vec![nested(128)])).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let r = c
        .txn(Txn::new().and_then(vec![nested(127)]))
        .await
        .expect("nested 127");
    assert_eq!(header(r.header()).revision(), r0 + 3);
    let mut ops = puts("lim/f", 63);
    ops.push(nested(65));
    assert_status(
        c.txn(Txn::new().and_then(ops)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let mut ops = puts("lim/f", 63);
    ops.push(nested(64));
    c.txn(Txn::new().and_then(ops)).await.expect("63 + 64");
    assert_eq!(current_rev(c).await, r0 + 4);

    // Duplicate keys: one key written twice on one branch, or put inside a deleted range.
    let dup = |ops: Vec<TxnOp>| Txn::new().and_then(ops);
    for (i, ops) in [
        vec![
            TxnOp::put("dup/k", "1", None),
            TxnOp::put("dup/k", "2", None),
        ],
        vec![TxnOp::put("dup/k", "1", None), TxnOp::delete("dup/k", None)],
        vec![TxnOp::delete("dup/k", None), TxnOp::put("dup/k", "1", None)],
        vec![
            TxnOp::delete("dup/a", Some(DeleteOptions::new().with_range("dup/z"))),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![
            TxnOp::delete("dup/", Some(DeleteOptions::new().with_prefix())),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![
            TxnOp::put("dup/k", "1", None),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("dup/k", "2", None)])),
        ],
        vec![
            TxnOp::txn(Txn::new().or_else(vec![TxnOp::put("dup/k", "2", None)])),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::delete("dup/k", None)])),
            TxnOp::put("dup/k", "1", None),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            status(c.txn(dup(ops)).await),
            (Code::InvalidArgument, DUPLICATE_KEY.to_string()),
            "duplicate case {i}"
        );
    }
    // Not duplicates: deletes may overlap, a put at a range's end, the two branches, the
    // two branches of a nested txn, gets anywhere.
    for (i, ops) in [
        vec![TxnOp::delete("dup/k", None), TxnOp::delete("dup/k", None)],
        vec![
            TxnOp::delete("dup/a", Some(DeleteOptions::new().with_range("dup/m"))),
            TxnOp::delete("dup/c", Some(DeleteOptions::new().with_range("dup/z"))),
        ],
        vec![
            TxnOp::delete("dup/a", Some(DeleteOptions::new().with_range("dup/k"))),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![TxnOp::txn(
            Txn::new()
                .and_then(vec![TxnOp::put("dup/k", "1", None)])
                .or_else(vec![TxnOp::put("dup/k", "2", None)]),
        )],
        vec![
            TxnOp::put("dup/k", "1", None),
            TxnOp::get("dup/k", None),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::get("dup/k", None)])),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.txn(dup(ops)).await;
        assert!(r.is_ok(), "not a duplicate, case {i}: {r:?}");
    }
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::version("dup/k", CompareOp::Greater, 0)])
                .and_then(vec![TxnOp::put("dup/k", "then", None)])
                .or_else(vec![TxnOp::put("dup/k", "else", None)]),
        )
        .await
        .expect("the same key on both branches");
    assert!(r.succeeded());
}

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
