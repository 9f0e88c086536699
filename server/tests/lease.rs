//! etcd's Lease service through the etcd-client crate (and one raw stream for a
//! keep-alive of an unknown lease): grant, revoke, keep-alive, time-to-live, leases,
//! expiry, and what a restart keeps.
//!
//! Scenarios marked `both!` run first on real etcd 3.5.1 and then on a fresh etch with
//! the same assertions; the restart scenarios run on etch only.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::raw::{self, LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use common::{assert_status, client, current_rev, start_etch};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};
use tonic::Code;

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

async fn ttl_of(c: &mut Client, id: i64) -> (i64, i64) {
    let r = c.lease_time_to_live(id, None).await.expect("time to live");
    (r.ttl(), r.granted_ttl())
}

async fn keys_of(c: &mut Client, prefix: &str) -> Vec<String> {
    let r = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("get");
    r.kvs()
        .iter()
        .map(|k| String::from_utf8_lossy(k.key()).into_owned())
        .collect()
}

/// Grant: ids chosen by the server or the client, the minimum TTL, the errors.
async fn grant(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let r0 = current_rev(&mut c).await;
    let g = c.lease_grant(60, None).await.expect("grant");
    assert!(
        g.id() > 0,
        "{who}: a server-chosen id is positive: {}",
        g.id()
    );
    assert_eq!((g.ttl(), g.error()), (60, ""), "{who}");
    // A grant is not a revision.
    assert_eq!(g.header().expect("header").revision(), r0, "{who}");
    let g2 = c.lease_grant(60, None).await.expect("grant");
    assert_ne!(g.id(), g2.id(), "{who}");
    // With etcd's default timing (100 ms heartbeat, 1 s election) the minimum TTL is
    // ceil(1.5 × election timeout) = 2 s.
    for ttl in [1, 0, -5] {
        let g = c.lease_grant(ttl, None).await.expect("grant");
        assert_eq!(g.ttl(), 2, "{who}: TTL {ttl} raised to the minimum");
        assert_eq!(ttl_of(&mut c, g.id()).await.1, 2, "{who}");
    }
    let mine = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .expect("grant with an id");
    assert_eq!((mine.id(), mine.ttl()), (0x1234, 30), "{who}");
    assert_status(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_status(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    let max = c
        .lease_grant(9_000_000_000, None)
        .await
        .expect("the largest TTL");
    assert_eq!(max.ttl(), 9_000_000_000, "{who}");
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 7, "{who}: {ids:?}");
    for id in [g.id(), g2.id(), 0x1234, max.id()] {
        assert!(ids.contains(&id), "{who}: {id} listed");
    }
    assert_eq!(
        current_rev(&mut c).await,
        r0,
        "{who}: grants write no revision"
    );
}
both!(grant_ids_minimum_ttl_and_errors, grant);

/// Revoke deletes every attached key in one revision; unknown leases are NotFound.
async fn revoke(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let id = c.lease_grant(60, None).await.expect("grant").id();
    c.put("rv/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    c.put("rv/b", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    c.put("rv/c", "1", None).await.expect("put");
    let r = c.get("rv/a", None).await.expect("get");
    assert_eq!(r.kvs()[0].lease(), id, "{who}");
    let r0 = current_rev(&mut c).await;
    let mut w = c
        .watch("rv/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(w.message().await.expect("created").expect("msg").created());
    let r = c.lease_revoke(id).await.expect("revoke");
    assert_eq!(r.header().expect("header").revision(), r0 + 1, "{who}");
    assert_eq!(keys_of(&mut c, "rv/").await, vec!["rv/c"], "{who}");
    let r = tokio::time::timeout(Duration::from_secs(15), w.message())
        .await
        .expect("the deletes within 15 s")
        .expect("watch")
        .expect("msg");
    let evs: Vec<(EventType, String, i64)> = r
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("kv");
            (
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    assert_eq!(
        evs,
        vec![
            (EventType::Delete, "rv/a".to_string(), r0 + 1),
            (EventType::Delete, "rv/b".to_string(), r0 + 1),
        ],
        "{who}"
    );
    assert_status(c.lease_revoke(id).await, Code::NotFound, LEASE_NOT_FOUND);
    assert_status(c.lease_revoke(777).await, Code::NotFound, LEASE_NOT_FOUND);
    // A revoked lease is gone for time-to-live and puts too.
    assert_eq!(ttl_of(&mut c, id).await, (-1, 0), "{who}");
    assert_status(
        c.put("rv/d", "1", Some(PutOptions::new().with_lease(id)))
            .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    // A revoke of a lease without keys deletes nothing: no new revision.
    let empty = c.lease_grant(60, None).await.expect("grant").id();
    let r = c.lease_revoke(empty).await.expect("revoke");
    assert_eq!(r.header().expect("header").revision(), r0 + 1, "{who}");
    assert_eq!(current_rev(&mut c).await, r0 + 1, "{who}");
}
both!(revoke_deletes_keys_in_one_revision, revoke);

/// Keep-alive refreshes the TTL; time-to-live reports keys; unknown leases answer TTL 0
/// (keep-alive) and -1 (time-to-live).
async fn keep_alive_and_ttl(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let id = c.lease_grant(10, None).await.expect("grant").id();
    for k in ["ka/b", "ka/a"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put");
    }
    let r = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    let mut keys: Vec<String> = r
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["ka/a", "ka/b"], "{who}");
    assert_eq!((r.id(), r.granted_ttl()), (id, 10), "{who}");
    assert!((8..=10).contains(&r.ttl()), "{who}: {}", r.ttl());
    // Without the flag, no keys.
    let r = c.lease_time_to_live(id, None).await.expect("ttl");
    assert!(r.keys().is_empty(), "{who}");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before = ttl_of(&mut c, id).await.0;
    assert!(before <= 6, "{who}: {before} s left after 3.5 s");
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keep alive");
    keeper.keep_alive().await.expect("send");
    let r = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("an answer within 15 s")
        .expect("stream")
        .expect("msg");
    assert_eq!((r.id(), r.ttl()), (id, 10), "{who}");
    let after = ttl_of(&mut c, id).await.0;
    assert!(after >= 8, "{who}: {after} s left after a keep-alive");

    // An unknown lease: the keep-alive answers TTL 0, time-to-live -1.
    let r: LeaseKeepAliveResponse = raw::stream_once(
        &ep,
        "/etcdserverpb.Lease/LeaseKeepAlive",
        LeaseKeepAliveRequest { id: 4242 },
    )
    .await;
    assert_eq!((r.id, r.ttl), (4242, 0), "{who}");
    assert!(c.lease_keep_alive(4242).await.is_err(), "{who}");
    let r = c
        .lease_time_to_live(4242, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl of an unknown lease");
    assert_eq!(
        (r.id(), r.ttl(), r.granted_ttl(), r.keys().len()),
        (4242, -1, 0, 0),
        "{who}"
    );
}
both!(
    keep_alive_refreshes_and_time_to_live_lists_keys,
    keep_alive_and_ttl
);

/// A 2 s lease with a key expires: the key's delete event reaches a watcher.
async fn expiry(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let granted = Instant::now();
    let id = c.lease_grant(2, None).await.expect("grant").id();
    c.put("ex/k", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    let put_rev = current_rev(&mut c).await;
    let mut w = c
        .watch("ex/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(w.message().await.expect("created").expect("msg").created());
    let r = tokio::time::timeout(Duration::from_secs(20), w.message())
        .await
        .expect("the expiry within 20 s")
        .expect("watch")
        .expect("msg");
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Delete, "{who}");
    assert_eq!(e.kv().expect("kv").key(), b"ex/k", "{who}");
    assert_eq!(e.kv().expect("kv").mod_revision(), put_rev + 1, "{who}");
    // Not before its TTL (with a margin for the clocks of client and server).
    assert!(
        granted.elapsed() >= Duration::from_millis(1500),
        "{who}: expired after {:?}",
        granted.elapsed()
    );
    assert_eq!(ttl_of(&mut c, id).await, (-1, 0), "{who}");
    assert!(keys_of(&mut c, "ex/").await.is_empty(), "{who}");
    let ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(!ids.contains(&id), "{who}");
}
both!(expired_lease_deletes_its_keys, expiry);

/// A lease granted before a SIGKILL still expires after the restart, and its keys go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_across_sigkill_restart() {
    let mut f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    let id = c.lease_grant(3, None).await.expect("grant").id();
    c.put("kr/k", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    c.put("kr/stay", "v", None).await.expect("put");
    f.etch.kill();
    f.etch.restart();
    let mut c = client(&ep).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if keys_of(&mut c, "kr/").await == vec!["kr/stay"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease did not expire after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ttl_of(&mut c, id).await, (-1, 0));
}

/// A graceful stop checkpoints remaining TTLs: after the restart a lease has at most what
/// it had left (plus the election timeout etcd grants a new leader's leases), not its
/// full TTL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_survives_graceful_restart() {
    let mut f = start_etch(&[]);
    let ep = f.etch.endpoint();
    let mut c = client(&ep).await;
    let id = c.lease_grant(60, None).await.expect("grant").id();
    c.put("gr/k", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let before = ttl_of(&mut c, id).await.0;
    assert!(before <= 56, "{before} s left after 4.5 s");
    assert_eq!(f.etch.stop(), Some(0));
    f.etch.restart();
    let mut c = client(&ep).await;
    let (after, granted) = ttl_of(&mut c, id).await;
    assert_eq!(granted, 60);
    // The election timeout (1 s) plus a second of rounding.
    assert!(
        after <= before + 2 && after >= before - 10,
        "{after} s left after the restart, {before} s before"
    );
    assert_eq!(keys_of(&mut c, "gr/").await, vec!["gr/k"]);
}

/// Lease ids come from the member's request-id generator (its id in the top bits, then a
/// counter), and LeaseLeases lists the soonest to expire first, as etcd does.
async fn ids_and_listing_order(ep: String, who: &str) {
    let mut c = client(&ep).await;
    let member = c
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let mut by_ttl = Vec::new();
    for ttl in [50, 10, 30] {
        let id = c.lease_grant(ttl, None).await.expect("grant").id();
        assert_eq!(
            (id as u64) >> 48,
            member & 0x7fff,
            "{who}: lease id {id:x} of member {member:x}"
        );
        by_ttl.push((ttl, id));
    }
    assert!(
        by_ttl[0].1 < by_ttl[1].1 && by_ttl[1].1 < by_ttl[2].1,
        "{who}: ids count up: {by_ttl:?}"
    );
    by_ttl.sort();
    let want: Vec<i64> = by_ttl.iter().map(|(_, id)| *id).collect();
    let listed: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(listed, want, "{who}: soonest to expire first");
}
both!(lease_ids_and_listing_order_are_etcds, ids_and_listing_order);
