//! Auth through real clients: users, roles and permissions set up with the etcd-client
//! crate, then every kind of request made as root, as a user with some permissions and
//! as nobody. The shared scenarios run on etcd 3.5.1 first, then on etch, with the same
//! assertions; what etcd 3.5.1 does otherwise than the 3.6 etch reports (old auth
//! revisions, nested txns) is tested on etch alone.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use etcd_client::{
    Client, GetOptions, LockOptions, Permission, PutOptions, Txn, TxnOp, WatchOptions,
};
use tonic::Code;

const DENIED: &str = "etcdserver: permission denied";
/// A watch's cancel reason: grpc-go's rendering of the status.
const WATCH_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

fn port_of(ep: &str) -> u16 {
    ep.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

async fn users_roles_and_permissions(ep: String, who: &str) {
    let mut c = client(&ep).await;
    assert_status(
        c.auth_enable().await,
        Code::FailedPrecondition,
        "etcdserver: root user does not exist",
    );
    auth_set_up(&mut c).await;

    // Nobody: every data call asks for a user.
    assert_status(
        c.get("app/x", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    assert_status(
        c.put("app/x", "v", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    assert_status(
        connect_as(&ep, "alice", "wrong").await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert_status(
        connect_as(&ep, "nobody", "x").await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );

    let mut root = connect_as(&ep, "root", "rootpw").await.expect("root");
    let mut alice = connect_as(&ep, "alice", "alicepw").await.expect("alice");
    root.put("pub", "p", None).await.expect("root put");
    root.put("secret", "s", None).await.expect("root put");
    alice
        .put("app/x", "1", None)
        .await
        .expect("{who}: alice's own key");
    let got = alice
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix");
    assert_eq!(got.count(), 1, "{who}");
    assert_eq!(
        alice.get("pub", None).await.expect("pub").count(),
        1,
        "{who}"
    );
    assert_status(
        alice.put("pub", "x", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_status(
        alice.get("secret", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_status(
        alice.get("", Some(GetOptions::new().with_all_keys())).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_status(
        alice.delete("secret", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    // A txn is checked whole: every compare and both branches.
    let t = Txn::new()
        .when([etcd_client::Compare::value(
            "secret",
            etcd_client::CompareOp::Equal,
            "s",
        )])
        .and_then([TxnOp::put("app/y", "1", None)]);
    assert_status(alice.txn(t).await, Code::PermissionDenied, DENIED);
    let t = Txn::new()
        .and_then([TxnOp::put("app/y", "1", None)])
        .or_else([TxnOp::get("secret", None)]);
    assert_status(alice.txn(t).await, Code::PermissionDenied, DENIED);
    let ok = Txn::new()
        .and_then([TxnOp::put("app/y", "1", None)])
        .or_else([TxnOp::get("pub", None)]);
    assert!(alice.txn(ok).await.expect("{who}: allowed txn").succeeded());

    // A watch without read permission is created and cancelled at once.
    let mut ws = alice.watch("secret", None).await.expect("watch stream");
    let r = tokio::time::timeout(Duration::from_secs(5), ws.message())
        .await
        .expect("an answer")
        .expect("stream")
        .expect("message");
    assert!(r.created() && r.canceled(), "{who}: {r:?}");
    assert_eq!(r.cancel_reason(), WATCH_DENIED, "{who}");
    let mut ws = alice
        .watch("app/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch stream");
    let r = ws.message().await.expect("stream").expect("message");
    assert!(r.created() && !r.canceled(), "{who}: {r:?}");

    // A lease with a key alice may not write: she may not revoke it.
    let l = root.lease_grant(60, None).await.expect("grant").id();
    root.put("secret", "s2", Some(PutOptions::new().with_lease(l)))
        .await
        .expect("put on lease");
    assert_status(alice.lease_revoke(l).await, Code::PermissionDenied, DENIED);
    assert_status(
        alice
            .put("app/z", "1", Some(PutOptions::new().with_lease(l)))
            .await,
        Code::PermissionDenied,
        DENIED,
    );
    root.lease_revoke(l).await.expect("root revokes");

    // Administration is root's.
    assert_status(alice.user_list().await, Code::PermissionDenied, DENIED);
    assert_status(alice.role_add("x").await, Code::PermissionDenied, DENIED);
    assert_status(
        alice.user_add("eve", "x", None).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_status(alice.auth_disable().await, Code::PermissionDenied, DENIED);
    alice
        .member_list()
        .await
        .expect("{who}: anyone lists members");
    // …except one's own user and roles.
    assert_eq!(
        alice.user_get("alice").await.expect("self").roles(),
        ["app"]
    );
    assert_status(alice.user_get("root").await, Code::PermissionDenied, DENIED);
    assert_eq!(
        alice
            .role_get("app")
            .await
            .expect("own role")
            .permissions()
            .len(),
        2
    );
    assert_status(alice.role_get("root").await, Code::PermissionDenied, DENIED);

    // Locks are held with the caller's permissions.
    let held = alice
        .lock("app/lock", None)
        .await
        .expect("{who}: lock under app/");
    alice.unlock(held.key().to_vec()).await.expect("unlock");
    assert_status(alice.lock("elsewhere", None).await, Code::Unknown, DENIED);

    // A lock waiter goes on waiting, and gets the lock, across an auth change.
    let l1 = alice.lease_grant(30, None).await.expect("grant").id();
    let held = alice
        .lock("app/mu", Some(LockOptions::new().with_lease(l1)))
        .await
        .expect("lock");
    let mut alice_waits = alice.clone();
    let waiter = tokio::spawn(async move {
        alice_waits
            .lock("app/mu", None)
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    root.user_add("dave", "davepw", None)
        .await
        .expect("an auth change");
    alice.unlock(held.key().to_vec()).await.expect("unlock");
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("{who}: the waiter gets the lock after the auth change")
        .expect("task");
    alice.unlock(got.expect("lock")).await.expect("unlock");

    // root's limits while enabled.
    assert_status(
        root.user_delete("root").await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    assert_status(
        root.user_revoke_role("root", "root").await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    assert_status(
        root.role_delete("root").await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );

    // A new password: the old one no longer authenticates, the new one does.
    root.user_change_password("alice", "newpw")
        .await
        .expect("passwd");
    assert_status(
        connect_as(&ep, "alice", "alicepw").await.map(|_| ()),
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let mut alice2 = connect_as(&ep, "alice", "newpw")
        .await
        .expect("new password");
    assert_eq!(alice2.get("pub", None).await.expect("pub").count(), 1);
    // Without the role, nothing.
    root.user_revoke_role("alice", "app").await.expect("revoke");
    assert_status(
        alice2.get("pub", None).await,
        Code::PermissionDenied,
        DENIED,
    );

    root.auth_disable().await.expect("disable");
    c.get("secret", None).await.expect("{who}: open again");
}

both!(
    users_roles_and_permissions_as_etcd,
    users_roles_and_permissions
);

/// The JSON gateway takes the token in `Authorization`, as etcd's does.
async fn gateway_tokens(ep: String, who: &str) {
    let mut c = client(&ep).await;
    auth_set_up(&mut c).await;
    let port = port_of(&ep);
    let (code, body) = http_post(
        port,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"alicepw"}"#,
    );
    assert_eq!(code, 200, "{who}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let token = v["token"].as_str().expect("token").to_string();
    let (code, body) = http_post_auth(
        port,
        "/v3/kv/put",
        &token,
        r#"{"key":"YXBwL2c=","value":"MQ=="}"#,
    );
    assert_eq!(code, 200, "{who}: {body}");
    let (code, body) = http_post_auth(port, "/v3/kv/range", &token, r#"{"key":"c2VjcmV0"}"#);
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            r#"{"error":"etcdserver: permission denied","code":7,"message":"etcdserver: permission denied"}"#
        ),
        "{who}"
    );
    let (code, body) = http_post(port, "/v3/kv/range", r#"{"key":"YXBwL2c="}"#);
    assert_eq!(code, 400, "{who}: {body}");
    assert!(
        body.contains("etcdserver: user name is empty"),
        "{who}: {body}"
    );
    let (code, body) = http_post_auth(port, "/v3/kv/range", "bogus.1", r#"{"key":"YXBwL2c="}"#);
    assert_eq!(
        (code, body.as_str()),
        (
            401,
            r#"{"error":"etcdserver: invalid auth token","code":16,"message":"etcdserver: invalid auth token"}"#
        ),
        "{who}"
    );
    let (code, body) = http_post(
        port,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"nope"}"#,
    );
    assert_eq!(code, 400, "{who}: {body}");
}

both!(gateway_tokens_as_etcd, gateway_tokens);

/// Generates an RSA key pair with openssl for JWT tokens.
fn rsa_keys(dir: &std::path::Path) -> (String, String) {
    let private = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .expect("openssl genrsa")
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-in"])
        .arg(&private)
        .args(["-pubout", "-out"])
        .arg(&public)
        .output()
        .expect("openssl rsa")
        .status
        .success();
    assert!(ok, "openssl rsa -pubout");
    (public.display().to_string(), private.display().to_string())
}

/// JWT tokens carry the auth revision they were made at: after any auth change, etch
/// (as etcd 3.6) refuses them as old; the client authenticates again. The auth state
/// survives a SIGKILL and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_old_revisions_and_restart() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (public, private) = rsa_keys(keys.path());
    let opt =
        format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=10m");
    let mut f = start_etch(&[&opt, "--bcrypt-cost=4"]);
    let ep = f.etch.endpoint();
    bounded("etch", async {
        let mut c = client(&ep).await;
        auth_set_up(&mut c).await;
        let mut alice = connect_as(&ep, "alice", "alicepw").await.expect("alice");
        alice.put("app/1", "v", None).await.expect("put");
        let mut root = connect_as(&ep, "root", "rootpw").await.expect("root");
        root.role_add("other").await.expect("an auth change");
        assert_status(
            alice.get("app/1", None).await,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        );
        let mut alice = connect_as(&ep, "alice", "alicepw").await.expect("again");
        assert_eq!(alice.get("app/1", None).await.expect("get").count(), 1);
        // Maintenance is root's; etcd 3.6 says so with PermissionDenied (3.5.1 sent
        // Unknown).
        assert_status(alice.defragment().await, Code::PermissionDenied, DENIED);
        assert_status(alice.hash_kv(0).await, Code::PermissionDenied, DENIED);
        assert_status(alice.status().await, Code::PermissionDenied, DENIED);
        root.status().await.expect("root's status");
        // A nested txn is checked too (etcd 3.5.1 let it through).
        let nested = Txn::new().and_then([TxnOp::txn(
            Txn::new().and_then([TxnOp::put("secret", "x", None)]),
        )]);
        assert_status(alice.txn(nested).await, Code::PermissionDenied, DENIED);
    })
    .await;
    f.etch.kill();
    f.etch.restart();
    bounded("etch after restart", async {
        let mut root = connect_as_when_up(&ep, "root", "rootpw").await;
        let users = root.user_list().await.expect("list");
        assert_eq!(users.users(), ["alice", "root"]);
        let mut anonymous = Client::connect([&ep], None).await.expect("connect");
        assert_status(
            anonymous.user_list().await,
            Code::InvalidArgument,
            "etcdserver: user name is empty",
        );
        let mut alice = connect_as(&ep, "alice", "alicepw").await.expect("alice");
        assert_eq!(alice.get("app/1", None).await.expect("get").count(), 1);
        assert_status(
            alice.get("pubx", None).await,
            Code::PermissionDenied,
            DENIED,
        );
    })
    .await;
}

/// Many bad passwords at once cost their callers time, not the server its cores: reads
/// by others go on being answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_passwords_queue_behind_bcrypt() {
    let f = start_etch(&[]);
    let ep = f.etch.endpoint();
    bounded("etch", async {
        let mut c = client(&ep).await;
        auth_set_up(&mut c).await;
        let mut root = connect_as(&ep, "root", "rootpw").await.expect("root");
        let mut tries = Vec::new();
        for _ in 0..16 {
            let ep = ep.clone();
            tries.push(tokio::spawn(async move {
                connect_as(&ep, "alice", "wrong").await.is_err()
            }));
        }
        for _ in 0..5 {
            root.get("app/x", None).await.expect("root is still served");
        }
        for t in tries {
            assert!(
                t.await.expect("task"),
                "a wrong password never authenticates"
            );
        }
    })
    .await;
}

/// What etcd 3.6 does otherwise than 3.5.1: permission ranges are validated, root's role
/// shows its implicit grant, and a refused watch has no id and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_6_auth_answers() {
    let f = start_etch(&["--bcrypt-cost=4"]);
    let ep = f.etch.endpoint();
    bounded("etch", async {
        let mut c = client(&ep).await;
        for (key, end) in [("", ""), ("b", "a"), ("b", "b")] {
            assert_status(
                c.role_grant_permission("nosuch", Permission::read(key).with_range_end(end))
                    .await,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            );
        }
        auth_set_up(&mut c).await;
        let mut root = connect_as(&ep, "root", "rootpw").await.expect("root");
        let perms = root.role_get("root").await.expect("role get root");
        let ps = perms.permissions();
        let p = &ps[0];
        assert_eq!(
            (ps.len(), p.key(), p.range_end()),
            (1, &b""[..], &b"\0"[..])
        );
        let mut nobody = Client::connect([&ep], None).await.expect("connect");
        let mut ws = nobody.watch("app/x", None).await.expect("watch stream");
        let r = ws.message().await.expect("stream").expect("message");
        assert!(r.canceled(), "{r:?}");
        assert_eq!(r.watch_id(), -1);
        assert_eq!(
            r.cancel_reason(),
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
        );
    })
    .await;
}
