//! The server-side Lock and Election services (v3lockpb, v3electionpb) through the
//! etcd-client crate; every scenario runs on etcd 3.5.1 first, then on etch, with the
//! same assertions.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use etcd_client::{Client, GetOptions, LockOptions, ProclaimOptions, ResignOptions};
use tonic::Code;

async fn lease(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None).await.expect("grant").id()
}

async fn count(c: &mut Client, prefix: &str) -> i64 {
    c.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .count()
}

async fn lock_serializes_holders(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let (l1, l2) = (lease(&mut c, 30).await, lease(&mut c, 30).await);
    let first = c
        .lock("mu", Some(LockOptions::new().with_lease(l1)))
        .await
        .expect("lock");
    let k1 = first.key().to_vec();
    assert_eq!(k1, format!("mu/{l1:x}").into_bytes(), "{who}: the lock key");
    // Locking again with the same lease is the same hold.
    let again = c
        .lock("mu", Some(LockOptions::new().with_lease(l1)))
        .await
        .expect("relock");
    assert_eq!(again.key(), k1.as_slice(), "{who}");
    let mut c2 = c.clone();
    let waiter = tokio::spawn(async move {
        c2.lock("mu", Some(LockOptions::new().with_lease(l2)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "{who}: the second locker waits");
    c.unlock(k1.clone()).await.expect("unlock");
    let k2 = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock")
        .expect("task")
        .expect("lock");
    assert_eq!(k2, format!("mu/{l2:x}").into_bytes(), "{who}");
    c.unlock(k2).await.expect("unlock");
    assert_eq!(count(&mut c, "mu/").await, 0, "{who}");

    // A waiter that gives up takes its key back out.
    let held = c
        .lock("mu2", Some(LockOptions::new().with_lease(l1)))
        .await
        .expect("lock");
    let mut c3 = c.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        c3.lock("mu2", Some(LockOptions::new().with_lease(l2))),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "{who}: the second locker was still waiting"
    );
    let mut left = 0;
    for _ in 0..100 {
        left = count(&mut c, "mu2/").await;
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 1, "{who}: only the holder's key is left");
    c.unlock(held.key().to_vec()).await.expect("unlock");

    // A lease that does not exist: the KV error, passed on as a plain error (Unknown).
    let (code, msg) = status(
        c.lock("mu3", Some(LockOptions::new().with_lease(0x7777_7777)))
            .await,
    );
    assert_eq!(code, Code::Unknown, "{who}: {msg}");
    assert_eq!(msg, "etcdserver: requested lease not found", "{who}");
}
both!(
    lock_serializes_holders_and_withdraws_waiters,
    lock_serializes_holders
);

async fn election_campaign_proclaim_observe_resign(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let (l1, l2) = (lease(&mut c, 30).await, lease(&mut c, 30).await);
    let (code, msg) = status(c.leader("el").await);
    assert_eq!(code, Code::Unknown, "{who}");
    assert_eq!(msg, "election: no leader", "{who}");

    let won = c.campaign("el", "v1", l1).await.expect("campaign");
    // (etcd answers an Observe only once there is a leader to tell of.)
    let mut observer = c.observe("el").await.expect("observe");
    let leader1 = won.leader().expect("leader key").clone();
    assert_eq!(leader1.key(), format!("el/{l1:x}").as_bytes(), "{who}");
    assert_eq!(leader1.lease(), l1, "{who}");
    let seen = observer
        .message()
        .await
        .expect("observe")
        .expect("a leader");
    assert_eq!(seen.kv().expect("kv").value(), b"v1", "{who}");

    let mut c2 = c.clone();
    let second = tokio::spawn(async move { c2.campaign("el", "v2", l2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "{who}: the second candidate waits");

    c.proclaim(
        "v1b",
        Some(ProclaimOptions::new().with_leader(leader1.clone())),
    )
    .await
    .expect("proclaim");
    let now = c.leader("el").await.expect("leader");
    assert_eq!(now.kv().expect("kv").value(), b"v1b", "{who}");
    let seen = tokio::time::timeout(Duration::from_secs(5), observer.message())
        .await
        .expect("an update")
        .expect("observe")
        .expect("a leader");
    assert_eq!(seen.kv().expect("kv").value(), b"v1b", "{who}");

    c.resign(Some(ResignOptions::new().with_leader(leader1.clone())))
        .await
        .expect("resign");
    let won2 = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second candidate wins")
        .expect("task")
        .expect("campaign");
    let leader2 = won2.leader().expect("leader key").clone();
    assert_eq!(leader2.key(), format!("el/{l2:x}").as_bytes(), "{who}");
    let seen = tokio::time::timeout(Duration::from_secs(5), observer.message())
        .await
        .expect("the new leader")
        .expect("observe")
        .expect("a leader");
    assert_eq!(seen.kv().expect("kv").value(), b"v2", "{who}");

    // The old leader key is no longer the leader.
    let (code, msg) = status(
        c.proclaim("late", Some(ProclaimOptions::new().with_leader(leader1)))
            .await,
    );
    assert_eq!(code, Code::Unknown, "{who}");
    assert_eq!(msg, "election: not leader", "{who}");
    c.resign(Some(ResignOptions::new().with_leader(leader2)))
        .await
        .expect("resign");
    assert_eq!(count(&mut c, "el/").await, 0, "{who}");
}
both!(
    election_campaign_proclaim_observe_resign_on_both,
    election_campaign_proclaim_observe_resign
);
