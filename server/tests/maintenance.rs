//! etcd's Maintenance, Cluster and Auth services through the etcd-client crate (and a raw
//! call for AuthStatus, which the crate lacks): status, alarms and the space quota,
//! defragment, hashes, snapshot and restore, leader moves, members, auth while disabled.
//!
//! Scenarios marked `both!` run first on real etcd 3.5.1 and then on a fresh etch with
//! the same assertions; where the two must differ (the version etch reports, the quota
//! recovery that etcd needs a defragment for) the test says so.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::raw::{self, AuthStatusRequest, AuthStatusResponse};
use common::{Etch, assert_status, client, current_rev, start_etch, status};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, DeleteOptions,
    DowngradeOptions, GetOptions, Permission, Txn, TxnOp,
};
use sha2::Digest as _;
use tonic::Code;

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

async fn member_id(c: &mut Client) -> u64 {
    c.status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id()
}

async fn alarms(c: &mut Client) -> Vec<(u64, AlarmType)> {
    c.alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list")
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

async fn alarm(c: &mut Client, action: AlarmAction, member: u64) -> Vec<(u64, AlarmType)> {
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    c.alarm(action, AlarmType::Nospace, Some(opts))
        .await
        .expect("alarm")
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

fn version_at_least(v: &str, want: (u32, u32, u32)) -> bool {
    let parts: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.len() == 3 && (parts[0], parts[1], parts[2]) >= want
}

// ---------------------------------------------------------------------------------------
// Both servers
// ---------------------------------------------------------------------------------------

async fn status_fields(ep: String, who: &str) {
    let mut c = client(&ep).await;
    c.put("st/a", "1", None).await.expect("put");
    let rev = current_rev(&mut c).await;
    let s = c.status().await.expect("status");
    let h = s.header().expect("header");
    assert_eq!(h.revision(), rev, "{who}");
    assert_eq!(
        s.leader(),
        h.member_id(),
        "{who}: a one-member cluster leads itself"
    );
    assert!(s.db_size() > 0, "{who}");
    assert!(s.raft_term() >= 1, "{who}");
    assert!(s.raft_index() >= 1, "{who}");
    assert!(
        s.raft_applied_index() >= 1 && s.raft_applied_index() <= s.raft_index(),
        "{who}: applied {} index {}",
        s.raft_applied_index(),
        s.raft_index()
    );
    assert!(!s.is_learner(), "{who}");
    assert!(s.errors().is_empty(), "{who}: {:?}", s.errors());
    if who == "etch" {
        // kube-apiserver gates features on the reported version.
        assert!(version_at_least(s.version(), (3, 6, 0)), "{}", s.version());
        assert!(s.raft_used_db_size() > 0 && s.raft_used_db_size() <= s.db_size());
    } else {
        assert_eq!(s.version(), "3.5.1");
    }
}
both!(status_reports_the_member, status_fields);

/// Alarms raised and cleared by hand: NOSPACE refuses writes but not reads or deletes.
async fn alarms_by_hand(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let me = member_id(&mut c).await;
    c.put("al/a", "1", None).await.expect("put");
    assert!(alarms(&mut c).await.is_empty(), "{who}");
    assert_eq!(
        alarm(&mut c, AlarmAction::Activate, me).await,
        vec![(me, AlarmType::Nospace)],
        "{who}"
    );
    assert_eq!(
        alarms(&mut c).await,
        vec![(me, AlarmType::Nospace)],
        "{who}"
    );
    let s = c.status().await.expect("status");
    assert_eq!(
        s.errors(),
        [format!("memberID:{me} alarm:NOSPACE ")],
        "{who}"
    );
    assert_status(
        c.put("al/b", "1", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    assert_status(
        c.txn(Txn::new().and_then(vec![TxnOp::put("al/b", "1", None)]))
            .await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    assert_status(
        c.lease_grant(60, None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    let r = c.get("al/a", None).await.expect("reads still work");
    assert_eq!(r.kvs().len(), 1, "{who}");
    let r = c.delete("al/a", None).await.expect("deletes still work");
    assert_eq!(r.deleted(), 1, "{who}");
    c.txn(Txn::new().and_then(vec![TxnOp::delete("al/x", None)]))
        .await
        .expect("a txn that only deletes");
    assert_eq!(
        alarm(&mut c, AlarmAction::Deactivate, me).await,
        vec![(me, AlarmType::Nospace)],
        "{who}"
    );
    assert!(alarms(&mut c).await.is_empty(), "{who}");
    // Deactivating an alarm that is not raised answers no alarms.
    assert!(
        alarm(&mut c, AlarmAction::Deactivate, me).await.is_empty(),
        "{who}"
    );
    c.put("al/b", "1", None).await.expect("writes again");
}
both!(alarm_activate_list_deactivate, alarms_by_hand);

async fn defrag_and_hashes(ep: String, who: &str) {
    let mut c = client(&ep).await;
    c.put("hk/a", "1", None).await.expect("put");
    let d = c.defragment().await.expect("defragment");
    assert!(
        d.header().is_none(),
        "{who}: etcd's Defragment answers no header"
    );
    let h = c.hash().await.expect("hash");
    assert!(h.header().is_some(), "{who}");
    let r1 = current_rev(&mut c).await;
    let a = c.hash_kv(0).await.expect("hash kv");
    let b = c.hash_kv(0).await.expect("hash kv");
    assert_eq!(a.hash(), b.hash(), "{who}: same revision, same hash");
    assert_eq!(a.header().expect("header").revision(), r1, "{who}");
    let at = c.hash_kv(r1).await.expect("hash kv at a revision");
    assert_eq!(at.hash(), a.hash(), "{who}");
    c.put("hk/b", "1", None).await.expect("put");
    let r2 = current_rev(&mut c).await;
    let after = c.hash_kv(0).await.expect("hash kv");
    assert_ne!(after.hash(), a.hash(), "{who}: a put changes the hash");
    assert_eq!(
        c.hash_kv(r1).await.expect("hash kv").hash(),
        a.hash(),
        "{who}"
    );
    c.compact(r1, None).await.expect("compact");
    let k = c.hash_kv(0).await.expect("hash kv");
    assert_eq!(k.compact_version(), r1, "{who}");
    assert_eq!(k.header().expect("header").revision(), r2, "{who}");
    // hash_revision is newer than etcd 3.5.1 (which leaves it 0).
    if who == "etch" {
        assert_eq!(k.hash_revision(), r2);
        assert_eq!(c.hash_kv(r2).await.expect("hash kv").hash_revision(), r2);
    }
    assert_status(
        c.hash_kv(r1 - 1).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        c.hash_kv(r2 + 10).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
}
both!(defragment_hash_and_hash_kv, defrag_and_hashes);

/// The snapshot stream as etcd sends it: data chunks whose `remaining_bytes` count the
/// data still to come (0 on the last one), then the SHA-256 of all the data as the last
/// 32 bytes, also with 0.
async fn snapshot_bytes(ep: &str) -> Vec<u8> {
    let mut c = client(ep).await;
    let mut s = c.snapshot().await.expect("snapshot");
    let mut blob = Vec::new();
    let mut remaining = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a snapshot chunk within 20 s")
        .expect("snapshot stream")
    {
        assert!(Instant::now() < deadline, "snapshot took over 30 s");
        remaining.push((m.remaining_bytes(), m.blob().len()));
        blob.extend_from_slice(m.blob());
    }
    assert!(remaining.len() >= 2, "{remaining:?}");
    assert_eq!(remaining.last(), Some(&(0, 32)), "the checksum comes last");
    let data_len = (blob.len() - 32) as u64;
    let mut sent = 0u64;
    for (left, n) in &remaining[..remaining.len() - 1] {
        sent += *n as u64;
        assert_eq!(*left, data_len - sent, "{remaining:?}");
    }
    blob
}

async fn snapshot_checksum(ep: String, who: &str) {
    let mut c = client(&ep).await;
    c.put("sn/a", "1", None).await.expect("put");
    let blob = snapshot_bytes(&ep).await;
    assert!(blob.len() > 32, "{who}");
    let (data, sum) = blob.split_at(blob.len() - 32);
    assert_eq!(sha2::Sha256::digest(data).as_slice(), sum, "{who}");
}
both!(snapshot_ends_with_sha256, snapshot_checksum);

async fn move_leader(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let me = member_id(&mut c).await;
    let r = c
        .move_leader(me)
        .await
        .expect("moving the leader to itself");
    assert!(
        r.header().is_none(),
        "{who}: etcd's MoveLeader answers no header"
    );
    assert_status(
        c.move_leader(me ^ 1).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
}
both!(move_leader_to_self_or_unknown, move_leader);

async fn members(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let me = member_id(&mut c).await;
    let r = c.member_list().await.expect("member list");
    assert_eq!(r.header().expect("header").member_id(), me, "{who}");
    let ms = r.members();
    assert_eq!(ms.len(), 1, "{who}");
    assert_eq!((ms[0].id(), ms[0].name()), (me, "default"), "{who}");
    assert_eq!(ms[0].client_urls(), std::slice::from_ref(&ep), "{who}");
    assert!(!ms[0].is_learner(), "{who}");
    assert_eq!(ms[0].peer_urls().len(), 1, "{who}");
}
both!(member_list_one_member, members);

/// etcd's answers to membership changes a one-member etch refuses. The answers are etcd
/// 3.5.1's (taken from it with etcdctl and this test's calls), but the test runs on etch
/// only: etcd 3.5.1 silently drops a conf change proposed while its previous one is not
/// yet applied (raft's pending conf index), so under this suite's load a membership call
/// on a fresh etcd sometimes waits until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_refused() {
    let f = start_etch(&[]);
    let mut c = client(&f.etch.endpoint()).await;
    let me = member_id(&mut c).await;
    let peer = c.member_list().await.expect("member list").members()[0]
        .peer_urls()
        .to_vec();
    const NOT_FOUND: &str = "etcdserver: member not found";
    assert_status(
        c.member_add(["notaurl"], None).await,
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    );
    assert_status(
        c.member_add(peer.clone(), None).await,
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    );
    assert_status(c.member_remove(me ^ 1).await, Code::NotFound, NOT_FOUND);
    assert_status(c.member_promote(me ^ 1).await, Code::NotFound, NOT_FOUND);
    assert_status(
        c.member_promote(me).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    assert_status(
        c.member_update(me ^ 1, peer.clone()).await,
        Code::NotFound,
        NOT_FOUND,
    );
    // Updating to the same URLs changes nothing.
    let r = c.member_update(me, peer).await.expect("member update");
    assert_eq!(r.members().len(), 1);
    // Removing the only voter would leave no quorum.
    let (code, msg) = status(c.member_remove(me).await);
    assert_eq!(
        msg,
        "etcdserver: re-configuration failed due to not enough started members"
    );
    // etcd sends this one as a plain error, which gRPC reports as Unknown.
    assert_eq!(code, Code::Unknown);
    assert_eq!(c.member_list().await.expect("list").members().len(), 1);
}

/// Auth with no users: disabled, and etcd's errors for what does not exist.
async fn auth_disabled(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r: AuthStatusResponse =
        raw::unary(&ep, "/etcdserverpb.Auth/AuthStatus", AuthStatusRequest {})
            .await
            .expect("auth status");
    // The auth store starts at revision 1.
    assert_eq!((r.enabled, r.auth_revision), (false, 1), "{who}: {r:?}");
    assert!(r.header.is_some(), "{who}");
    assert!(
        c.user_list().await.expect("users").users().is_empty(),
        "{who}"
    );
    assert!(
        c.role_list().await.expect("roles").roles().is_empty(),
        "{who}"
    );
    assert_status(
        c.user_get("alice").await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    assert_status(
        c.role_get("admin").await,
        Code::FailedPrecondition,
        "etcdserver: role name not found",
    );
    assert_status(
        c.user_delete("alice").await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    assert_status(
        c.role_delete("admin").await,
        Code::FailedPrecondition,
        "etcdserver: role name not found",
    );
    assert_status(
        c.auth_enable().await,
        Code::FailedPrecondition,
        "etcdserver: root user does not exist",
    );
    c.auth_disable().await.expect("disabling disabled auth");
    assert_status(
        c.user_grant_role("alice", "admin").await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    assert_status(
        c.user_change_password("alice", "pw").await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    assert_status(
        c.user_revoke_role("alice", "admin").await,
        Code::FailedPrecondition,
        "etcdserver: user name not found",
    );
    assert_status(
        c.role_grant_permission("admin", Permission::read("k"))
            .await,
        Code::FailedPrecondition,
        "etcdserver: role name not found",
    );
    assert_status(
        c.role_revoke_permission("admin", "k", None).await,
        Code::FailedPrecondition,
        "etcdserver: role name not found",
    );
    assert_status(
        c.user_add("", "pw", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    assert_status(
        c.role_add("").await,
        Code::InvalidArgument,
        "etcdserver: role name is empty",
    );
    assert_status(
        c.auth_client()
            .authenticate("alice".into(), "pw".into())
            .await,
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    );
}
both!(auth_status_disabled_and_missing_users, auth_disabled);

// ---------------------------------------------------------------------------------------
// etch only
// ---------------------------------------------------------------------------------------

/// The space quota: writes fail with NOSPACE and raise the alarm; reads and deletes go
/// on; after deleting, a physical compaction and disarming, writes work again. (etcd
/// also needs a defragment here to shrink its file; etch reuses freed pages in place.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_nospace_and_recovery() {
    let f = start_etch(&["--quota-backend-bytes", "300000"]);
    let mut c = client(&f.etch.endpoint()).await;
    let me = member_id(&mut c).await;
    let value = vec![b'q'; 10_000];
    let mut written = 0;
    let err = loop {
        assert!(written < 200, "no NOSPACE after {written} puts of 10 kB");
        match c.put(format!("q/{written:03}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break Err::<(), _>(e),
        }
    };
    assert_status(err, Code::ResourceExhausted, NO_SPACE);
    assert!(written > 5, "only {written} puts fit in 300 kB");
    // The alarm is raised through Raft: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alarms(&mut c).await != vec![(me, AlarmType::Nospace)] {
        assert!(Instant::now() < deadline, "NOSPACE not listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_status(
        c.put("q/x", "1", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    assert_status(
        c.txn(Txn::new().and_then(vec![TxnOp::put("q/x", "1", None)]))
            .await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    assert_status(
        c.lease_grant(60, None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );
    let r = c
        .get(
            "q/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("reads work");
    assert_eq!(r.count(), written);
    c.delete("q/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("deletes work");
    let rev = current_rev(&mut c).await;
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    // Space in use is recounted in the background every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let in_use = c.status().await.expect("status").raft_used_db_size();
        if in_use < 200_000 {
            break;
        }
        assert!(Instant::now() < deadline, "{in_use} bytes still in use");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alarm(&mut c, AlarmAction::Deactivate, me).await;
    assert!(alarms(&mut c).await.is_empty());
    c.put("q/after", "1", None)
        .await
        .expect("writes work again");
    c.lease_grant(60, None).await.expect("grants work again");
}

/// `etch snapshot restore` builds a data dir that serves the same keys at the same
/// revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restore_serves_the_same_data() {
    let f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    for i in 0..50 {
        c.put(format!("sr/{i:02}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    c.delete("sr/1", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    let want = c
        .get("sr/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let rev = want.header().expect("header").revision();
    let blob = snapshot_bytes(&ep).await;
    let file = f.dir.path().join("snap.db");
    std::fs::write(&file, &blob).expect("writing the snapshot");
    let restored = f.dir.path().join("restored");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etch"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("running etch snapshot restore");
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A corrupt snapshot is refused.
    let mut bad = blob.clone();
    bad[100] ^= 0xff;
    let bad_file = f.dir.path().join("bad.db");
    std::fs::write(&bad_file, &bad).expect("writing");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etch"))
        .args(["snapshot", "restore"])
        .arg(&bad_file)
        .arg("--data-dir")
        .arg(f.dir.path().join("bad"))
        .output()
        .expect("running etch snapshot restore");
    assert!(!out.status.success());

    let e2 = Etch::start(&restored, &[]);
    let mut c2 = client(&e2.endpoint()).await;
    let got = c2
        .get("sr/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(got.header().expect("header").revision(), rev);
    let pairs = |r: &etcd_client::GetResponse| {
        r.kvs()
            .iter()
            .map(|k| {
                (
                    k.key().to_vec(),
                    k.value().to_vec(),
                    k.create_revision(),
                    k.mod_revision(),
                    k.version(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&got), pairs(&want));
    assert_eq!(got.kvs().len(), 40);
    let r = c2.put("sr/new", "1", None).await.expect("put");
    assert_eq!(r.header().expect("header").revision(), rev + 1);
}

/// Downgrade, as etcd 3.6 answers it: etch reports 3.6 and accepts 3.5 (or 3.5.x) as the
/// only target; a cancel answers the cluster version even with no downgrade in progress
/// (etcd 3.6 only logs that). etch validates but cannot enable a downgrade (its storage
/// format has no 3.5 form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_validate_and_errors() {
    let f = start_etch(&[]);
    let c = client(&f.etch.endpoint()).await;
    let r = c
        .maintenance_client()
        .downgrade(DowngradeOptions::Validate("3.5".into()))
        .await
        .expect("validate 3.5");
    assert_eq!(r.version(), "3.6");
    assert!(r.header().is_some_and(|h| h.revision() > 0), "{r:?}");
    let mut m = c.maintenance_client();
    let r = m
        .downgrade(DowngradeOptions::Validate("3.5.1".into()))
        .await
        .expect("validate 3.5.1");
    assert_eq!(r.version(), "3.6");
    assert_status(
        m.downgrade(DowngradeOptions::Validate("3.4".into())).await,
        Code::InvalidArgument,
        "etcdserver: invalid downgrade target version",
    );
    assert_status(
        m.downgrade(DowngradeOptions::Validate("three".into()))
            .await,
        Code::InvalidArgument,
        "etcdserver: wrong downgrade target version format",
    );
    let r = m
        .downgrade(DowngradeOptions::Cancel)
        .await
        .expect("a cancel with nothing to cancel");
    assert_eq!(r.version(), "3.6");
    let (code, _) = status(m.downgrade(DowngradeOptions::Enable("3.5".into())).await);
    assert_eq!(code, Code::Unimplemented);
}

/// The member list follows --name and the peer and client URL flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_follows_flags() {
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let ic = format!("node-a={peer}");
    let f = start_etch(&[
        "--name",
        "node-a",
        "--initial-advertise-peer-urls",
        &peer,
        "--listen-peer-urls",
        &peer,
        "--initial-cluster",
        &ic,
    ]);
    let mut c = client(&f.etch.endpoint()).await;
    let r = c.member_list().await.expect("member list");
    let m = &r.members()[0];
    assert_eq!(r.members().len(), 1);
    assert_eq!(m.name(), "node-a");
    assert_eq!(m.peer_urls(), [peer]);
    assert_eq!(m.client_urls(), [f.etch.endpoint()]);
    assert_eq!(m.id(), member_id(&mut c).await);
}
