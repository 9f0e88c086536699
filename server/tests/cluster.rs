//! Multi-member clusters of real `etch` processes on 127.0.0.1, used through the
//! etcd-client crate and etcdctl: replication, reads and watches on followers, SIGKILL of
//! the leader, a member brought back by a snapshot, quorum loss, leases across failover,
//! graceful leader hand-over, five members, and member ids as etcd 3.5.1 computes them.
//!
//! Every wait is bounded; every process is killed (by PID) when its handle drops.

mod common;

use std::time::{Duration, Instant};

use common::{Etch, client, etcd_bin_dir, free_port, status};
use etcd_client::{Client, GetOptions, WatchOptions};

/// Generous: CI machines are loaded, and an election takes a second or two.
const WAIT: Duration = Duration::from_secs(30);

/// One member's ports.
struct Spec {
    name: String,
    client_port: u16,
    peer_port: u16,
}

/// A cluster of etch processes; members are killed when it drops.
struct Cluster {
    members: Vec<Etch>,
    specs: Vec<Spec>,
    _dir: tempfile::TempDir,
}

fn specs(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            name: format!("m{i}"),
            client_port: free_port(),
            peer_port: free_port(),
        })
        .collect()
}

fn initial_cluster(specs: &[Spec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}=http://127.0.0.1:{}", s.name, s.peer_port))
        .collect::<Vec<_>>()
        .join(",")
}

/// The flags of member `s` in a cluster of `all`.
fn member_flags(s: &Spec, all: &[Spec], token: &str) -> Vec<String> {
    let peer = format!("http://127.0.0.1:{}", s.peer_port);
    vec![
        "--name".into(),
        s.name.clone(),
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer,
        "--initial-cluster".into(),
        initial_cluster(all),
        "--initial-cluster-token".into(),
        token.into(),
    ]
}

impl Cluster {
    fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = specs(n);
        let mut members = Vec::new();
        for s in &specs {
            let mut flags = member_flags(s, &specs, "etch-test-cluster");
            flags.extend(extra.iter().map(|x| x.to_string()));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let url = format!("http://127.0.0.1:{}", s.client_port);
            members.push(Etch::start_at(
                &dir.path().join(&s.name),
                s.client_port,
                &url,
                &flags,
            ));
        }
        Cluster {
            members,
            specs,
            _dir: dir,
        }
    }

    fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.specs[i].client_port)
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.specs.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The index of the member that leads, as the members that answer agree (waits for
    /// one).
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let Ok(mut c) = Client::connect([self.endpoint(i)], None).await else {
                    continue;
                };
                if let Ok(st) = c.status().await {
                    let id = st.header().expect("header").member_id();
                    if st.leader() == id {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of every member still running.
    async fn client_of_live(&self) -> Client {
        let eps: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        Client::connect(eps, None).await.expect("connect")
    }
}

/// Retries `f` until it succeeds or `WAIT` passes.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), f()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) if Instant::now() > deadline => panic!("{what}: timed out"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn serializable_value(ep: &str, key: &str) -> Option<Vec<u8>> {
    let mut c = Client::connect([ep], None).await.ok()?;
    let r = c
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .ok()?;
    r.kvs().first().map(|kv| kv.value().to_vec())
}

/// Waits until every running member has applied `key = value`.
async fn converged(cl: &Cluster, key: &str, value: &str) {
    for i in 0..cl.members.len() {
        if cl.members[i].child.is_none() {
            continue;
        }
        let ep = cl.endpoint(i);
        eventually(&format!("member {i} applies {key}"), || {
            let ep = ep.clone();
            async move {
                match serializable_value(&ep, key).await {
                    Some(v) if v == value.as_bytes() => Ok(()),
                    other => Err(format!("{key} = {other:?}")),
                }
            }
        })
        .await;
    }
}

/// Every running member's HashKV at its current revision, which must agree.
async fn assert_same_hash(cl: &Cluster) {
    let mut seen = Vec::new();
    for i in 0..cl.members.len() {
        if cl.members[i].child.is_none() {
            continue;
        }
        let mut c = client(&cl.endpoint(i)).await;
        let r = c.hash_kv(0).await.expect("hash_kv");
        seen.push((r.header().expect("header").revision(), r.hash()));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "members disagree on (revision, HashKV): {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_serve_on_every_member() {
    let cl = Cluster::start(3, &[]);
    let leader = cl.leader().await;
    let follower = (leader + 1) % 3;
    // Writes on any member, reads on every member.
    let mut on_follower = client(&cl.endpoint(follower)).await;
    let mut watch = on_follower
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch on a follower");
    assert!(
        tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("created in time")
            .expect("stream")
            .expect("message")
            .created()
    );
    for i in 0..3 {
        let mut c = client(&cl.endpoint(i)).await;
        let r = c
            .put(format!("w/{i}"), format!("v{i}"), None)
            .await
            .expect("put");
        let h = r.header().expect("header");
        // The header is the member asked.
        let st = c.status().await.expect("status");
        assert_eq!(h.member_id(), st.header().expect("header").member_id());
    }
    for i in 0..3 {
        let mut c = client(&cl.endpoint(i)).await;
        let r = c
            .get("w/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("linearizable get");
        assert_eq!(r.count(), 3, "member {i} sees every write");
    }
    converged(&cl, "w/2", "v2").await;
    // The follower's watcher saw all three puts, in revision order.
    let mut revs = Vec::new();
    while revs.len() < 3 {
        let m = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("events in time")
            .expect("stream")
            .expect("message");
        revs.extend(
            m.events()
                .iter()
                .map(|e| e.kv().expect("kv").mod_revision()),
        );
    }
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    // Every member lists the same members, with their client URLs published.
    let mut lists = Vec::new();
    let mut cluster_ids = Vec::new();
    for i in 0..3 {
        let mut c = client(&cl.endpoint(i)).await;
        let l = eventually("client URLs published", || {
            let mut c = c.clone();
            async move {
                let l = c.member_list().await.map_err(|e| e.to_string())?;
                if l.members().iter().all(|m| !m.client_urls().is_empty()) {
                    Ok(l)
                } else {
                    Err(format!("{:?}", l.members()))
                }
            }
        })
        .await;
        cluster_ids.push(l.header().expect("header").cluster_id());
        let mut ms: Vec<(u64, String, Vec<String>, Vec<String>)> = l
            .members()
            .iter()
            .map(|m| {
                (
                    m.id(),
                    m.name().to_string(),
                    m.peer_urls().to_vec(),
                    m.client_urls().to_vec(),
                )
            })
            .collect();
        ms.sort();
        lists.push(ms);
        c.put("mlist-probe", "x", None).await.expect("put");
    }
    assert_eq!(lists[0].len(), 3);
    assert!(lists.windows(2).all(|w| w[0] == w[1]), "{lists:?}");
    assert!(cluster_ids.windows(2).all(|w| w[0] == w[1]));
    for (i, s) in cl.specs.iter().enumerate() {
        let m = lists[0]
            .iter()
            .find(|m| m.1 == s.name)
            .expect("every member listed");
        assert_eq!(m.3, vec![cl.endpoint(i)]);
    }
    converged(&cl, "mlist-probe", "x").await;
    assert_same_hash(&cl).await;
    // etcd's peer metrics, per peer.
    let (code, text) = common::http_get(cl.specs[leader].client_port, "/metrics");
    assert_eq!(code, 200);
    let sent: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("etcd_network_peer_sent_bytes_total{To="))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count")
        })
        .collect();
    assert_eq!(sent.len(), 2, "one series per peer: {text}");
    assert!(
        sent.iter().all(|n| *n > 0),
        "the leader sent to both peers: {sent:?}"
    );
    assert!(
        text.contains("etcd_server_leader_changes_seen_total 1"),
        "{text}"
    );

    // etcdctl against all three, as an operator runs it.
    let out = std::process::Command::new(etcd_bin_dir().join("etcdctl"))
        .args([
            "--endpoints",
            &cl.endpoints().join(","),
            "endpoint",
            "status",
        ])
        .output()
        .expect("etcdctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(", true, false,"))
            .count(),
        1,
        "exactly one leader: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_writes_resume_and_the_member_catches_up() {
    let mut cl = Cluster::start(3, &[]);
    let mut c = cl.client_of_live().await;
    for i in 0..50 {
        c.put(format!("k/{i:03}"), "before", None)
            .await
            .expect("put");
    }
    let leader = cl.leader().await;
    cl.members[leader].kill();
    let killed_at = Instant::now();
    let mut c = cl.client_of_live().await;
    eventually("a write after the leader died", || {
        let mut c = c.clone();
        async move {
            c.put("after", "1", None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    eprintln!(
        "first write acknowledged {:?} after SIGKILL of the leader",
        killed_at.elapsed()
    );
    let new_leader = cl.leader().await;
    assert_ne!(new_leader, leader);
    for i in 0..50 {
        c.put(format!("k/{i:03}"), "after", None)
            .await
            .expect("put");
    }
    cl.members[leader].restart();
    converged(&cl, "k/049", "after").await;
    let r = Client::connect([cl.endpoint(leader)], None)
        .await
        .expect("connect")
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("get on the restarted member");
    assert_eq!(r.count(), 50);
    assert!(r.kvs().iter().all(|kv| kv.value() == b"after"));
    assert_same_hash(&cl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_kept_down_while_the_log_is_compacted_catches_up_by_snapshot() {
    let mut cl = Cluster::start(
        3,
        &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "20",
        ],
    );
    let leader = cl.leader().await;
    let down = (leader + 1) % 3;
    cl.members[down].kill();
    let mut c = cl.client_of_live().await;
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    for i in 0..400 {
        let opts = (i % 10 == 0).then(|| etcd_client::PutOptions::new().with_lease(lease));
        c.put(format!("s/{i:04}"), format!("v{i}"), opts)
            .await
            .expect("put");
    }
    c.compact(200, None).await.expect("compact");
    // Let the checkpoints compact the log past the catch-up window.
    tokio::time::sleep(Duration::from_secs(6)).await;
    cl.members[down].restart();
    converged(&cl, "s/0399", "v399").await;
    // The data is served from the swap on; the line is logged once it is also durable.
    eventually("the member caught up by snapshot", || {
        let text = cl.members[down].log_text();
        async move {
            if text.contains("installed the leader's snapshot") {
                Ok(())
            } else {
                Err("no snapshot install in its log".to_string())
            }
        }
    })
    .await;
    let mut d = client(&cl.endpoint(down)).await;
    let r = d
        .get(
            "s/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("get");
    assert_eq!(r.count(), 400);
    let leases = d.leases().await.expect("leases");
    assert_eq!(leases.leases().len(), 1, "the lease came with the snapshot");
    // History below the compaction is gone there too; above it, it is served.
    let old = d
        .get("s/0001", Some(GetOptions::new().with_revision(100)))
        .await;
    assert!(
        old.is_err(),
        "compacted revisions are refused on the new member"
    );
    assert_same_hash(&cl).await;
    // The member keeps following after the snapshot.
    c.put("s/after", "x", None).await.expect("put");
    converged(&cl, "s/after", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_answers_errors_and_recovers() {
    let mut cl = Cluster::start(
        3,
        &["--election-timeout", "500", "--heartbeat-interval", "50"],
    );
    let mut c = cl.client_of_live().await;
    c.put("q", "1", None).await.expect("put");
    let leader = cl.leader().await;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            cl.members[i].kill();
        }
    }
    let mut s = Client::connect([cl.endpoint(survivor)], None)
        .await
        .expect("connect");
    let started = Instant::now();
    let r = tokio::time::timeout(WAIT, s.put("q", "2", None))
        .await
        .expect("a write without quorum answers, it does not hang");
    let (code, msg) = common::status(r);
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    assert!(
        msg.starts_with("etcdserver: request timed out") || msg == "etcdserver: no leader",
        "{msg}"
    );
    eprintln!(
        "write without quorum failed after {:?}: {msg}",
        started.elapsed()
    );
    let r = tokio::time::timeout(WAIT, s.get("q", None))
        .await
        .expect("a linearizable read without quorum answers");
    assert!(r.is_err(), "no linearizable read without a quorum");
    // A serializable read is local and still served.
    let r = s
        .get("q", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable read");
    assert_eq!(r.kvs()[0].value(), b"1");
    // /health says why.
    let (code, body) = common::http_get(cl.specs[survivor].client_port, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"health\":\"false\""), "{body}");
    for i in 0..3 {
        if i != survivor {
            cl.members[i].restart();
        }
    }
    let mut c = cl.client_of_live().await;
    eventually("writes after the quorum is back", || {
        let mut c = c.clone();
        async move {
            c.put("q", "3", None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    converged(&cl, "q", "3").await;
    let _ = c.get("q", None).await.expect("linearizable read again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_live_across_failover_and_expire_after() {
    let mut cl = Cluster::start(3, &[]);
    let leader = cl.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut f = client(&cl.endpoint(follower)).await;
    let id = f
        .lease_grant(6, None)
        .await
        .expect("grant on a follower")
        .id();
    f.put(
        "l/key",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(id)),
    )
    .await
    .expect("put");
    // Keep-alives on a follower reach the leader.
    let (mut keeper, mut stream) = f.lease_keep_alive(id).await.expect("keep alive");
    keeper.keep_alive().await.expect("send");
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an answer")
        .expect("stream")
        .expect("message");
    assert_eq!(r.ttl(), 6);
    // A grant acknowledged by one follower is known to the leader when another follower
    // forwards a keep-alive at once. (The leader usually applies first; when its applier
    // lags, it waits for what it has committed before answering "unknown".)
    let mut o = client(&cl.endpoint(other)).await;
    for round in 0..20 {
        let g = f.lease_grant(30, None).await.expect("grant").id();
        let (mut k, mut s) = o.lease_keep_alive(g).await.expect("keep alive");
        k.keep_alive().await.expect("send");
        let r = tokio::time::timeout(WAIT, s.message())
            .await
            .expect("an answer")
            .expect("stream")
            .expect("message");
        assert_eq!(
            r.ttl(),
            30,
            "round {round}: a fresh lease answered as unknown"
        );
        f.lease_revoke(g).await.expect("revoke");
    }
    let ttl = f
        .lease_time_to_live(id, None)
        .await
        .expect("time to live on a follower");
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 6, "{}", ttl.ttl());
    cl.members[leader].kill();
    // For 10 s (past the TTL) keep the lease alive through the survivors.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let (mut k, mut s) = match o.lease_keep_alive(id).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        if k.keep_alive().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.message()).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let r = o.get("l/key", None).await.expect("get after the failover");
    assert_eq!(r.count(), 1, "a kept-alive lease outlives the leader");
    // Stop the keep-alives: the new leader expires it.
    drop(keeper);
    drop(stream);
    eventually("the lease expires", || {
        let mut o = o.clone();
        async move {
            let r = o.get("l/key", None).await.map_err(|e| e.to_string())?;
            if r.count() == 0 {
                Ok(())
            } else {
                Err("still there".into())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_moves_it_and_only_the_leader_may() {
    let cl = Cluster::start(3, &[]);
    let leader = cl.leader().await;
    let target = (leader + 1) % 3;
    let mut on_target = client(&cl.endpoint(target)).await;
    let target_id = on_target
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let (code, msg) = status(on_target.move_leader(target_id).await);
    assert_eq!(
        (code, msg.as_str()),
        (tonic::Code::FailedPrecondition, "etcdserver: not leader")
    );
    let mut on_leader = client(&cl.endpoint(leader)).await;
    let (code, msg) = status(on_leader.move_leader(target_id ^ 1).await);
    assert_eq!(
        (code, msg.as_str()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: bad leader transferee"
        )
    );
    on_leader.move_leader(target_id).await.expect("move leader");
    let st = on_target.status().await.expect("status");
    assert_eq!(
        st.leader(),
        target_id,
        "the target leads once MoveLeader answers"
    );
    on_target.put("after-move", "1", None).await.expect("put");
    converged(&cl, "after-move", "1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_leadership_over() {
    let mut cl = Cluster::start(3, &[]);
    let mut c = cl.client_of_live().await;
    c.put("g", "1", None).await.expect("put");
    let leader = cl.leader().await;
    let term = client(&cl.endpoint(leader))
        .await
        .status()
        .await
        .expect("status")
        .raft_term();
    assert_eq!(cl.members[leader].stop(), Some(0), "a clean exit");
    assert!(
        cl.members[leader]
            .log_text()
            .contains("handed leadership over before stopping"),
        "{}",
        cl.members[leader].log_text()
    );
    let new_leader = cl.leader().await;
    assert_ne!(new_leader, leader);
    let st = client(&cl.endpoint(new_leader))
        .await
        .status()
        .await
        .expect("status");
    assert_eq!(
        st.raft_term(),
        term + 1,
        "a transfer, not an election after a timeout"
    );
    let mut c = cl.client_of_live().await;
    c.put("g", "2", None)
        .await
        .expect("put after the hand-over");
    cl.members[leader].restart();
    converged(&cl, "g", "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_survive_two_failures() {
    let mut cl = Cluster::start(5, &[]);
    let mut c = cl.client_of_live().await;
    c.put("f", "1", None).await.expect("put");
    let leader = cl.leader().await;
    cl.members[leader].kill();
    cl.members[(leader + 1) % 5].kill();
    let c = cl.client_of_live().await;
    eventually("writes with three of five", || {
        let mut c = c.clone();
        async move {
            c.put("f", "2", None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    converged(&cl, "f", "2").await;
    assert_same_hash(&cl).await;
}

/// etcd 3.5.1 and etch, started with the same `--initial-cluster` and token, give every
/// member the same id and the cluster the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_and_cluster_ids_are_etcds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = specs(3);
    let ids_of = |eps: Vec<String>| async move {
        // Members come up one by one: the client may route any call to one not yet
        // listening, so the whole exchange is retried.
        let l = eventually("member list", || {
            let eps = eps.clone();
            async move {
                let mut c = Client::connect(eps, None)
                    .await
                    .map_err(|e| e.to_string())?;
                c.get("x", None).await.map_err(|e| e.to_string())?;
                c.member_list().await.map_err(|e| e.to_string())
            }
        })
        .await;
        let mut ids: Vec<(String, u64)> = l
            .members()
            .iter()
            .map(|m| (m.peer_urls()[0].clone(), m.id()))
            .collect();
        ids.sort();
        (l.header().expect("header").cluster_id(), ids)
    };
    let eps: Vec<String> = specs
        .iter()
        .map(|s| format!("http://127.0.0.1:{}", s.client_port))
        .collect();
    let etcd = {
        let mut procs = Vec::new();
        for s in &specs {
            let url = format!("http://127.0.0.1:{}", s.client_port);
            let log = std::fs::File::create(dir.path().join(format!("etcd-{}.log", s.name)))
                .expect("log");
            let child = std::process::Command::new(etcd_bin_dir().join("etcd"))
                .arg("--data-dir")
                .arg(dir.path().join(format!("etcd-{}", s.name)))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(member_flags(s, &specs, "ids-token"))
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("etcd");
            procs.push(KillOnDrop(child));
        }
        let ids = ids_of(eps.clone()).await;
        drop(procs);
        ids
    };
    // The ports are free again once etcd is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut members = Vec::new();
    for s in &specs {
        let url = format!("http://127.0.0.1:{}", s.client_port);
        let flags = member_flags(s, &specs, "ids-token");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        members.push(Etch::start_at(
            &dir.path().join(format!("etch-{}", s.name)),
            s.client_port,
            &url,
            &flags,
        ));
    }
    let etch = ids_of(eps).await;
    assert_eq!(
        etch, etcd,
        "(cluster id, member ids) of etch and etcd 3.5.1"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `etcdctl snapshot save` from one member of a cluster, `etch snapshot restore` into
/// three new data dirs, and the new cluster serves the data with its own members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster() {
    let cl = Cluster::start(3, &[]);
    let mut c = cl.client_of_live().await;
    for i in 0..20 {
        c.put(format!("b/{i:02}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    let rev = common::current_rev(&mut c).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.db");
    let out = std::process::Command::new(etcd_bin_dir().join("etcdctl"))
        .args(["--endpoints", &cl.endpoint(1), "snapshot", "save"])
        .arg(&backup)
        .output()
        .expect("etcdctl snapshot save");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(cl);
    let specs = specs(3);
    let mut members = Vec::new();
    for s in &specs {
        let data = dir.path().join(&s.name);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_etch"))
            .args(["snapshot", "restore"])
            .arg(&backup)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("etch snapshot restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = format!("http://127.0.0.1:{}", s.client_port);
        let flags = member_flags(s, &specs, "restored");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        members.push(Etch::start_at(&data, s.client_port, &url, &flags));
    }
    let restored = Cluster {
        members,
        specs,
        _dir: dir,
    };
    let mut c = restored.client_of_live().await;
    let r = eventually("the restored cluster serves", || {
        let mut c = c.clone();
        async move {
            c.get("b/", Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(r.count(), 20);
    assert!(r.header().expect("header").revision() >= rev);
    let l = c.member_list().await.expect("member list");
    let mut names: Vec<&str> = l.members().iter().map(|m| m.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["m0", "m1", "m2"], "only the new members are listed");
    c.put("b/new", "x", None).await.expect("writes go on");
    converged(&restored, "b/new", "x").await;
    assert_same_hash(&restored).await;
}

/// Auth is replicated data: set up through one member, enforced by every member; a
/// simple token made by one member is taken by the others (once they apply its entry);
/// an auth change on another member reaches all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_holds_on_every_member_and_tokens_travel() {
    let cl = Cluster::start(3, &["--bcrypt-cost=4"]);
    let mut c = client(&cl.endpoint(0)).await;
    common::auth_set_up(&mut c).await;
    for i in 0..3 {
        let ep = cl.endpoint(i);
        let mut alice = eventually(&format!("alice on member {i}"), || {
            let ep = ep.clone();
            async move {
                common::connect_as(&ep, "alice", "alicepw")
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        alice
            .put(format!("app/{i}"), "v", None)
            .await
            .expect("alice writes under app/");
        assert_eq!(
            status(alice.put("other", "v", None).await),
            (
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied".to_string()
            ),
            "member {i} checks"
        );
        let mut nobody = Client::connect([ep.as_str()], None).await.expect("connect");
        assert_eq!(
            status(nobody.get("app/0", None).await).1,
            "etcdserver: user name is empty",
            "member {i}"
        );
    }
    // A token from member 1's gateway, used on member 2's.
    let port = |i: usize| cl.specs[i].client_port;
    let (code, body) = common::http_post(
        port(1),
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"alicepw"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let token = v["token"].as_str().expect("token").to_string();
    let (code, body) =
        common::http_post_auth(port(2), "/v3/kv/range", &token, r#"{"key":"YXBwLzA="}"#);
    assert_eq!(code, 200, "member 2 takes member 1's token: {body}");
    assert!(body.contains(r#""count":"1""#), "{body}");
    // A user added through member 2 authenticates on member 0.
    let mut root2 = common::connect_as(&cl.endpoint(2), "root", "rootpw")
        .await
        .expect("root");
    root2
        .user_add("carol", "carolpw", None)
        .await
        .expect("user add");
    eventually("carol on member 0", || {
        let ep = cl.endpoint(0);
        async move {
            common::connect_as(&ep, "carol", "carolpw")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
}
