//! Backups in etcd's format, both ways, with unmodified etcd 3.5.1 tools: etch's snapshot
//! → `etcdutl snapshot status` / `restore` → etcd serves the same data; etcd's snapshot →
//! `etch snapshot restore` → etch serves the same data; `etch snapshot status` agrees with
//! `etcdutl snapshot status`; bad files are refused and leave nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

/// One key version as a client sees it.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Everything a client can see of the data that a restore must carry.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    revision: i64,
    compact_revision: i64,
    /// Every key at the current revision, then at a few older revisions.
    at: Vec<(i64, Vec<Kv>)>,
    /// (id, granted TTL, keys) of every lease.
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
}

async fn all_at(c: &mut Client, rev: i64) -> Vec<Kv> {
    let mut opts = GetOptions::new().with_all_keys();
    if rev > 0 {
        opts = opts.with_revision(rev);
    }
    let r = c.get(vec![0u8], Some(opts)).await.expect("get all");
    r.kvs()
        .iter()
        .map(|k| {
            (
                k.key().to_vec(),
                k.value().to_vec(),
                k.create_revision(),
                k.mod_revision(),
                k.version(),
                k.lease(),
            )
        })
        .collect()
}

async fn seen(ep: &str, older: &[i64]) -> Seen {
    let mut c = client(ep).await;
    let revision = current_rev(&mut c).await;
    let hk = c.hash_kv(0).await.expect("hash kv");
    let mut at = vec![(revision, all_at(&mut c, 0).await)];
    for &r in older {
        at.push((r, all_at(&mut c, r).await));
    }
    let mut leases = Vec::new();
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    for id in ids {
        let t = c
            .lease_time_to_live(
                id,
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .expect("time to live");
        let mut keys = t.keys().to_vec();
        keys.sort();
        leases.push((id, t.granted_ttl(), keys));
    }
    Seen {
        revision,
        compact_revision: hk.compact_version(),
        at,
        leases,
    }
}

/// A history with many revisions per key, deletes, a multi-key txn, binary keys, a value
/// larger than a page, leases, and a compaction in the middle. Returns older revisions
/// worth reading back (above the compaction).
async fn write_history(ep: &str) -> Vec<i64> {
    let mut c = client(ep).await;
    // Ids given, so the same history on etcd and etch holds the same lease ids.
    let with_id = |id| Some(etcd_client::LeaseGrantOptions::new().with_id(id));
    let lease = c
        .lease_grant(600, with_id(0x1234))
        .await
        .expect("grant")
        .id();
    let other = c
        .lease_grant(900, with_id(0x7fff_0000_0000_0001))
        .await
        .expect("grant")
        .id();
    for round in 0..3 {
        for i in 0..30 {
            c.put(format!("k/{i:02}"), format!("v{round}-{i}"), None)
                .await
                .expect("put");
        }
    }
    c.delete("k/0", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete");
    let compact_at = current_rev(&mut c).await;
    for i in 0..5 {
        c.put(
            format!("leased/{i}"),
            "x",
            Some(PutOptions::new().with_lease(if i % 2 == 0 { lease } else { other })),
        )
        .await
        .expect("put with lease");
    }
    c.put(vec![0u8, 0xff, 1, b'b'], vec![0u8; 7], None)
        .await
        .expect("binary key");
    c.put("big", vec![0xabu8; 300 * 1024], None)
        .await
        .expect("large value");
    c.compact(compact_at, None).await.expect("compact");
    let mid = current_rev(&mut c).await;
    c.txn(
        Txn::new()
            .when([Compare::version("k/15", CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put("k/15", "txn", None),
                TxnOp::put("k/16", "txn", None),
                TxnOp::delete("k/17", None),
            ]),
    )
    .await
    .expect("txn");
    c.delete("leased/4", None).await.expect("delete");
    c.put("last", "put", None).await.expect("put");
    vec![compact_at, mid]
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("running a command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn etcdctl_save(ep: &str, file: &Path) {
    etcdctl_save_with(&etcd_bin_dir().join("etcdctl"), ep, file);
}

fn etcdctl_save_with(etcdctl: &Path, ep: &str, file: &Path) {
    let (ok, out, err) = run(Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", ep, "snapshot", "save"])
        .arg(file));
    assert!(ok, "etcdctl snapshot save failed: {out}{err}");
}

/// (hash, revision, totalKey, totalSize) from `snapshot status -w json` output.
fn status_fields(out: &str) -> (u64, i64, u64, u64) {
    let field = |name: &str| -> u64 {
        let at = out
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("no {name} in {out}"));
        out[at + name.len() + 3..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("bad {name} in {out}"))
    };
    (
        field("hash"),
        field("revision") as i64,
        field("totalKey"),
        field("totalSize"),
    )
}

/// etcdutl's `snapshot status -w json`.
fn etcdutl_status(file: &Path) -> (u64, i64, u64, u64) {
    let (ok, out, err) = run(Command::new(etcd_bin_dir().join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file));
    assert!(ok, "etcdutl snapshot status failed: {out}{err}");
    status_fields(&out)
}

/// etch's `snapshot status -w json`.
fn etch_status(file: &Path) -> (u64, i64, u64, u64) {
    let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_etch"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file));
    assert!(ok, "etch snapshot status failed: {out}{err}");
    status_fields(&out)
}

/// `TOOL snapshot restore` (etcdutl, or etcd 3.4's etcdctl) of `file` into `dir` as a
/// one-member cluster whose peer listens on `peer`.
fn etcd_tool_restore(mut tool: Command, file: &Path, dir: &Path, peer: u16) {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let (ok, out, err) = run(tool
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--name",
            "default",
            "--initial-cluster",
            &format!("default={peer_url}"),
        ])
        .args(["--initial-advertise-peer-urls", &peer_url]));
    assert!(
        ok,
        "{:?} snapshot restore failed: {out}{err}",
        tool.get_program()
    );
}

/// etcd 3.5.1 on an existing data dir.
struct EtcdOn {
    child: Child,
    port: u16,
}

/// Where etcd 3.4.23's etcd and etcdctl are (Debian's packages, unpacked by
/// server/tests/prereqs.sh); panics with the hint when they are missing.
fn etcd34_bin_dir() -> PathBuf {
    let base = std::env::var_os("ETCH_ETCD34_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/etch/etcd-3.4.23"),
        PathBuf::from,
    );
    let dir = base.join("usr/bin");
    assert!(
        dir.join("etcd").is_file(),
        "etcd 3.4.23 not found in {}: run server/tests/prereqs.sh",
        dir.display()
    );
    dir
}

impl EtcdOn {
    fn start(data_dir: &Path, peer_port: u16) -> EtcdOn {
        EtcdOn::start_bin(&etcd_bin_dir().join("etcd"), data_dir, peer_port)
    }

    fn start_bin(bin: &Path, data_dir: &Path, peer_port: u16) -> EtcdOn {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(data_dir.with_extension("log")).expect("log");
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting etcd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd on the restored data dir did not listen; log:\n{}",
                std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        EtcdOn { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for EtcdOn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bbolt file of these buckets (names and entries in order), with the SHA-256 trailer
/// of a snapshot.
type Bucket<'a> = (&'a [u8], &'a [(&'a [u8], &'a [u8])]);

fn bolt_snapshot(path: &Path, buckets: &[Bucket<'_>]) {
    let mut w = etch_engine::bolt::Writer::create(path).expect("create");
    for (name, entries) in buckets {
        let mut b = w.bucket(name).expect("bucket");
        for (k, v) in *entries {
            b.put(k, v).expect("put");
        }
        b.finish().expect("finish");
    }
    w.finish().expect("finish");
    use sha2::Digest as _;
    let mut bytes = std::fs::read(path).expect("read");
    let sum = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    std::fs::write(path, &bytes).expect("write");
}

fn etch_restore(file: &Path, dir: &Path, extra: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_etch"))
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .args(extra));
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etch_snapshot_restores_into_etcd_with_etcdutl() {
    bounded("etch → etcd", async {
        let f = start_etch(&[]);
        let ep = f.etch.endpoint();
        let older = write_history(&ep).await;
        let want = seen(&ep, &older).await;
        let file = f.dir.path().join("etch-snap.db");
        etcdctl_save(&ep, &file);

        // etcdutl reads it, and etch reads it the same way.
        let st = etcdutl_status(&file);
        assert_eq!(st.1, want.revision, "etcdutl's revision: {st:?}");
        assert_eq!(
            etch_status(&file),
            st,
            "etch and etcdutl describe the snapshot alike"
        );

        let peer = free_port();
        let restored = f.dir.path().join("etcd-data");
        etcd_tool_restore(
            Command::new(etcd_bin_dir().join("etcdutl")),
            &file,
            &restored,
            peer,
        );
        let etcd = EtcdOn::start(&restored, peer);
        let got = seen(&etcd.endpoint(), &older).await;
        assert_eq!(got, want, "etcd serves what etch held");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_etch() {
    bounded("etcd → etch", async {
        let etcd = RealEtcd::start();
        let ep = etcd.endpoint();
        let older = write_history(&ep).await;
        let want = seen(&ep, &older).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("etcd-snap.db");
        etcdctl_save(&ep, &file);
        assert_eq!(
            etch_status(&file),
            etcdutl_status(&file),
            "etch and etcdutl describe etcd's snapshot alike"
        );
        let restored = dir.path().join("etch-data");
        let (ok, out) = etch_restore(&file, &restored, &[]);
        assert!(ok, "etch snapshot restore failed: {out}");
        let e = Etch::start(&restored, &[]);
        let got = seen(&e.endpoint(), &older).await;
        assert_eq!(got, want, "etch serves what etcd held");
        // Writes go on from the restored revision.
        let mut c = client(&e.endpoint()).await;
        let r = c.put("after", "restore", None).await.expect("put");
        assert_eq!(r.header().expect("header").revision(), want.revision + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bump_revision_and_mark_compacted_as_etcdutl_does() {
    bounded("bump", async {
        let etcd = RealEtcd::start();
        let ep = etcd.endpoint();
        let mut c = client(&ep).await;
        for i in 0..10 {
            c.put(format!("b/{i}"), "v", None).await.expect("put");
        }
        let rev = current_rev(&mut c).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("snap.db");
        etcdctl_save(&ep, &file);
        let (ok, out) = etch_restore(&file, &dir.path().join("no"), &["--bump-revision", "100"]);
        assert!(!ok && out.contains("--mark-compacted required"), "{out}");
        let restored = dir.path().join("bumped");
        let (ok, out) = etch_restore(
            &file,
            &restored,
            &["--bump-revision", "100", "--mark-compacted"],
        );
        assert!(ok, "{out}");
        let e = Etch::start(&restored, &[]);
        let mut c = client(&e.endpoint()).await;
        assert_eq!(current_rev(&mut c).await, rev + 100);
        let (code, msg) = status(
            c.get("b/1", Some(GetOptions::new().with_revision(rev)))
                .await,
        );
        assert_eq!(code, tonic::Code::OutOfRange, "{msg}");
        assert!(msg.contains("compacted"), "{msg}");
        assert_eq!(
            c.get("b/", Some(GetOptions::new().with_prefix()))
                .await
                .expect("get")
                .count(),
            10
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshots_are_refused_and_leave_nothing_behind() {
    bounded("bad input", async {
        let etcd = RealEtcd::start();
        let ep = etcd.endpoint();
        let mut c = client(&ep).await;
        for i in 0..200 {
            c.put(format!("x/{i:03}"), vec![b'v'; 500], None)
                .await
                .expect("put");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.db");
        etcdctl_save(&ep, &good);
        let bytes = std::fs::read(&good).expect("read");
        let write = |name: &str, b: &[u8]| -> PathBuf {
            let p = dir.path().join(name);
            std::fs::write(&p, b).expect("write");
            p
        };
        // A flipped byte: the SHA-256 trailer no longer matches.
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x40;
        // Cut short: no trailer (the size rule), and pages missing.
        let cases: Vec<(PathBuf, &[&str], &str)> = vec![
            (write("flipped.db", &flipped), &[], "integrity check failed"),
            (
                write("short.db", &bytes[..bytes.len() / 2]),
                &[],
                "missing hash",
            ),
            (
                write("short2.db", &bytes[..bytes.len() / 2]),
                &["--skip-hash-check"],
                "invalid database",
            ),
            (
                write("text.db", b"this is not a database\n"),
                &[],
                "not a snapshot",
            ),
            (
                write("text2.db", &[b'x'; 4096 * 3 + 32]),
                &["--skip-hash-check"],
                "not a snapshot",
            ),
        ];
        for (file, extra, want) in cases {
            let target = dir.path().join("target");
            let (ok, out) = etch_restore(&file, &target, extra);
            assert!(!ok, "{} was accepted: {out}", file.display());
            assert!(
                out.contains(want),
                "{}: want {want:?} in {out}",
                file.display()
            );
            assert!(
                !target.exists(),
                "{}: a half-built data dir was left",
                file.display()
            );
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .expect("ls")
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
                .collect();
            assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
        }
        // A bbolt file that is not an etcd database (no `key` bucket), trailer and all.
        let other = dir.path().join("other.db");
        bolt_snapshot(&other, &[(b"things", &[(b"a", b"1")])]);
        let (ok, out) = etch_restore(&other, &dir.path().join("other"), &[]);
        assert!(!ok && out.contains("no \"key\" bucket"), "{out}");
        assert!(!dir.path().join("other").exists());
        // An etcd database whose auth revision is damaged.
        let bad_auth = dir.path().join("bad-auth.db");
        bolt_snapshot(
            &bad_auth,
            &[
                (
                    b"auth",
                    &[(b"authEnabled", &[1]), (b"authRevision", &[0, 0, 7])],
                ),
                (b"key", &[]),
            ],
        );
        let (ok, out) = etch_restore(&bad_auth, &dir.path().join("bad-auth"), &[]);
        assert!(!ok && out.contains("damaged authRevision"), "{out}");
        assert!(!dir.path().join("bad-auth").exists());
        // An existing data dir is never overwritten.
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).expect("mkdir");
        let (ok, out) = etch_restore(&good, &existing, &[]);
        assert!(!ok && out.contains("exists"), "{out}");
        // The good one restores.
        let (ok, out) = etch_restore(&good, &dir.path().join("ok"), &[]);
        assert!(ok, "{out}");
    })
    .await;
}

/// The same history gives the same HashKV on etcd and etch, at every revision asked, so
/// `etcdctl endpoint hashkv` can compare an etch member with an etcd one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_equals_etcds_for_the_same_history() {
    bounded("hashkv", async {
        let mut hashes = Vec::new();
        for who in ["etcd", "etch"] {
            let (etcd, etch);
            let ep = if who == "etcd" {
                etcd = RealEtcd::start();
                etcd.endpoint()
            } else {
                etch = start_etch(&[]);
                etch.etch.endpoint()
            };
            let older = write_history(&ep).await;
            let mut c = client(&ep).await;
            let cur = current_rev(&mut c).await;
            let mut got = Vec::new();
            // Not at the compact revision itself: etcd 3.5.1 refuses that one.
            for rev in [0, older[0] + 1, older[1], cur - 1, cur] {
                let h = c.hash_kv(rev).await.expect("hash kv");
                got.push((rev, h.hash(), h.compact_version()));
            }
            hashes.push(got);
        }
        assert_eq!(hashes[0], hashes[1], "etcd's hashes, then etch's");
        // A fresh store: etcd's "never compacted" is -1.
        let f = start_etch(&[]);
        let mut c = client(&f.etch.endpoint()).await;
        c.put("a", "b", None).await.expect("put");
        assert_eq!(c.hash_kv(0).await.expect("hash kv").compact_version(), -1);
    })
    .await;
}

/// etcd committing its backend only every 10 s: a SIGKILL leaves the rest in its WAL.
fn slow_committing_etcd() -> RealEtcd {
    RealEtcd::start_with(&[
        "--backend-batch-interval",
        "10s",
        "--backend-batch-limit",
        "1000000",
    ])
}

/// `etch migrate --from-etcd-data-dir FROM --data-dir DEST`; its standard output.
fn migrate(from: &Path, dest: &Path) -> String {
    let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_etch"))
        .arg("migrate")
        .arg("--from-etcd-data-dir")
        .arg(from)
        .arg("--data-dir")
        .arg(dest));
    assert!(ok, "etch migrate failed: {out}{err}");
    out
}

/// A stopped etcd member moves to etch in place: its database, plus what its WAL holds
/// beyond the database (here, everything after a forced backend commit: etcd commits
/// its backend only every 10 s in this test, and is SIGKILLed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_etcd_member_migrates_with_its_wal_tail() {
    bounded("migrate", async {
        let mut etcd = slow_committing_etcd();
        let ep = etcd.endpoint();
        let mut older = write_history(&ep).await;
        // A snapshot commits etcd's backend: the database holds everything so far.
        etcdctl_save(&ep, &etcd.dir.path().join("forced-commit.db"));
        let mut c = client(&ep).await;
        older.push(current_rev(&mut c).await);
        // After it, only the WAL: puts, a delete, a txn, a lease with keys, and a revoke
        // whose keys go with it.
        for i in 0..20 {
            c.put(format!("tail/{i:02}"), format!("t{i}"), None)
                .await
                .expect("put");
        }
        c.delete("k/20", None).await.expect("delete");
        let l = c
            .lease_grant(
                300,
                Some(etcd_client::LeaseGrantOptions::new().with_id(0x55)),
            )
            .await
            .expect("grant")
            .id();
        c.put("tail/leased", "x", Some(PutOptions::new().with_lease(l)))
            .await
            .expect("put");
        c.lease_revoke(0x1234).await.expect("revoke");
        c.txn(Txn::new().and_then([
            TxnOp::put("tail/txn-a", "1", None),
            TxnOp::put("tail/txn-b", "2", None),
        ]))
        .await
        .expect("txn");
        // (No compaction here: etcd commits its backend at every compaction.)
        c.put("tail/last", "end", None).await.expect("put");
        let want = seen(&ep, &older).await;
        let _ = etcd.child.kill();
        let _ = etcd.child.wait();

        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("etch-data");
        let out = migrate(&etcd.dir.path().join("data"), &dest);
        let applied: u64 = out
            .split(" WAL entries applied")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {out:?}"));
        assert!(applied >= 20, "the WAL's tail was applied: {out}");
        let e = Etch::start(&dest, &[]);
        let got = seen(&e.endpoint(), &older).await;
        assert_eq!(
            got, want,
            "etch serves what the killed etcd had acknowledged"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_a_running_member_and_what_is_not_etcd() {
    bounded("migrate refusals", async {
        let etcd = RealEtcd::start();
        let mut c = client(&etcd.endpoint()).await;
        c.put("a", "b", None).await.expect("put");
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("d");
        let migrate = |from: &Path| {
            run(Command::new(env!("CARGO_BIN_EXE_etch"))
                .arg("migrate")
                .arg("--from-etcd-data-dir")
                .arg(from)
                .arg("--data-dir")
                .arg(&dest))
        };
        let (ok, out, err) = migrate(&etcd.dir.path().join("data"));
        assert!(
            !ok && err.contains("stop the etcd member first"),
            "{out}{err}"
        );
        assert!(!dest.exists());
        let (ok, out, err) = migrate(dir.path());
        assert!(!ok && err.contains("not an etcd v3 data dir"), "{out}{err}");
        assert!(!dest.exists());
    })
    .await;
}

/// etcd 3.4's snapshots restore into etch, and etch's into etcd 3.4 (with 3.4's own
/// `etcdctl snapshot restore`: 3.4 has no etcdutl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_4_snapshots_round_trip() {
    bounded("etcd 3.4", async {
        let bin = etcd34_bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");

        // etcd 3.4 → etch.
        let etcd = EtcdOn::start_bin(&bin.join("etcd"), &dir.path().join("etcd34"), free_port());
        let older = write_history(&etcd.endpoint()).await;
        let want = seen(&etcd.endpoint(), &older).await;
        let file = dir.path().join("from-3.4.db");
        etcdctl_save_with(&bin.join("etcdctl"), &etcd.endpoint(), &file);
        drop(etcd);
        assert_eq!(etch_status(&file).1, want.revision);
        let (ok, out) = etch_restore(&file, &dir.path().join("etch-from-3.4"), &[]);
        assert!(ok, "{out}");
        let e = Etch::start(&dir.path().join("etch-from-3.4"), &[]);
        assert_eq!(
            seen(&e.endpoint(), &older).await,
            want,
            "etch serves etcd 3.4's data"
        );
        drop(e);

        // etch → etcd 3.4.
        let f = start_etch(&[]);
        let older = write_history(&f.etch.endpoint()).await;
        let want = seen(&f.etch.endpoint(), &older).await;
        let file = dir.path().join("from-etch.db");
        etcdctl_save_with(&bin.join("etcdctl"), &f.etch.endpoint(), &file);
        let peer = free_port();
        let restored = dir.path().join("etcd34-from-etch");
        let mut etcdctl = Command::new(bin.join("etcdctl"));
        etcdctl.env("ETCDCTL_API", "3");
        etcd_tool_restore(etcdctl, &file, &restored, peer);
        let etcd = EtcdOn::start_bin(&bin.join("etcd"), &restored, peer);
        assert_eq!(
            seen(&etcd.endpoint(), &older).await,
            want,
            "etcd 3.4 serves etch's data"
        );
    })
    .await;
}

/// A snapshot taken while writes go on is one revision's data: etcd, restored from it,
/// serves exactly the writes up to that revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_write_load_is_one_revision() {
    bounded("snapshot under load", async {
        let f = start_etch(&[]);
        let ep = f.etch.endpoint();
        let mut c = client(&ep).await;
        for i in 0..2000 {
            c.put(format!("pre/{i:05}"), vec![b'p'; 200], None)
                .await
                .expect("put");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.put(format!("load/{}", n % 300), format!("v{n}"), None)
                        .await
                        .expect("put under load");
                    n += 1;
                }
                n
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let file = f.dir.path().join("under-load.db");
        etcdctl_save(&ep, &file);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.await.expect("writer");
        assert!(writes > 20, "the load ran: {writes} puts");
        let (_, snap_rev, _, _) = etcdutl_status(&file);
        let now = current_rev(&mut c).await;
        assert!(
            snap_rev > 2001 && snap_rev < now,
            "mid-load: {snap_rev} of {now}"
        );
        // What etch held at that revision is what etcd serves from the snapshot.
        let want = all_at(&mut c, snap_rev).await;
        let peer = free_port();
        let restored = f.dir.path().join("etcd-under-load");
        etcd_tool_restore(
            Command::new(etcd_bin_dir().join("etcdutl")),
            &file,
            &restored,
            peer,
        );
        let etcd = EtcdOn::start(&restored, peer);
        let mut e = client(&etcd.endpoint()).await;
        assert_eq!(current_rev(&mut e).await, snap_rev);
        assert_eq!(all_at(&mut e, 0).await, want);
    })
    .await;
}

/// A backup in etch's own earlier format (its data file with a SHA-256 trailer, what
/// etch's Snapshot sent before it spoke etcd's) still restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etch_format_backup_still_restores() {
    bounded("etch-format backup", async {
        let mut f = start_etch(&[]);
        let ep = f.etch.endpoint();
        let mut c = client(&ep).await;
        for i in 0..50 {
            c.put(format!("old/{i:02}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        let want = all_at(&mut c, 0).await;
        assert_eq!(f.etch.stop(), Some(0), "a clean stop");
        use sha2::Digest as _;
        let mut bytes = std::fs::read(f.etch.data_dir.join("member/etch.db")).expect("data file");
        let sum = sha2::Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        let file = f.dir.path().join("etch-format.snap");
        std::fs::write(&file, &bytes).expect("write");
        let restored = f.dir.path().join("restored");
        let (ok, out) = etch_restore(&file, &restored, &[]);
        assert!(ok, "{out}");
        let e = Etch::start(&restored, &[]);
        let mut c2 = client(&e.endpoint()).await;
        assert_eq!(all_at(&mut c2, 0).await, want);
        // A flipped byte is caught by the trailer.
        let mut bad = bytes.clone();
        bad[5000] ^= 1;
        std::fs::write(&file, &bad).expect("write");
        let (ok, out) = etch_restore(&file, &f.dir.path().join("bad"), &[]);
        assert!(!ok && out.contains("integrity check failed"), "{out}");
        assert!(!f.dir.path().join("bad").exists());
    })
    .await;
}

/// `etcdctl --user root:rootpw snapshot save`: a backup of a server with auth enabled.
fn etcdctl_save_as_root(ep: &str, file: &Path) {
    let (ok, out, err) = run(Command::new(etcd_bin_dir().join("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            ep,
            "--user",
            "root:rootpw",
            "snapshot",
            "save",
        ])
        .arg(file));
    assert!(ok, "etcdctl snapshot save failed: {out}{err}");
}

/// What a restored server must show of `auth_set_up`'s users: alice authenticates and
/// is held to her role, root lists the users, nobody gets in.
async fn auth_holds(ep: &str, who: &str) {
    let mut root = connect_as_when_up(ep, "root", "rootpw").await;
    let users = root.user_list().await.expect("user list");
    assert_eq!(users.users(), ["alice", "root"], "{who}");
    let mut alice = connect_as(ep, "alice", "alicepw").await.expect("alice");
    let got = alice
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("alice reads app/");
    assert_eq!(got.count(), 1, "{who}");
    assert_status(
        alice.get("secret", None).await,
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    assert_status(
        connect_as(ep, "alice", "wrong").await.map(|_| ()),
        tonic::Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let mut nobody = Client::connect([ep], None).await.expect("connect");
    assert_status(
        nobody.get("app/a", None).await,
        tonic::Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
}

async fn write_auth_data(ep: &str) {
    let mut c = client(ep).await;
    auth_set_up(&mut c).await;
    let mut root = connect_as(ep, "root", "rootpw").await.expect("root");
    root.put("app/a", "1", None).await.expect("put");
    root.put("secret", "s", None).await.expect("put");
}

/// Users, roles, permissions and the enabled flag travel in backups both ways: etch's
/// snapshot restored by etcdutl into etcd 3.5.1, and etcd's restored into etch, with
/// passwords (bcrypt from Go and from etch) checked on the other side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_travels_in_backups_both_ways() {
    bounded("etch → etcd with auth", async {
        let f = start_etch(&[]);
        let ep = f.etch.endpoint();
        write_auth_data(&ep).await;
        let file = f.dir.path().join("etch-snap.db");
        etcdctl_save_as_root(&ep, &file);
        assert_eq!(etch_status(&file), etcdutl_status(&file));
        let peer = free_port();
        let restored = f.dir.path().join("etcd-data");
        etcd_tool_restore(
            Command::new(etcd_bin_dir().join("etcdutl")),
            &file,
            &restored,
            peer,
        );
        let etcd = EtcdOn::start(&restored, peer);
        auth_holds(&etcd.endpoint(), "etcd from etch's backup").await;
    })
    .await;
    bounded("etcd → etch with auth", async {
        let etcd = RealEtcd::start();
        let ep = etcd.endpoint();
        write_auth_data(&ep).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("etcd-snap.db");
        etcdctl_save_as_root(&ep, &file);
        let restored = dir.path().join("etch-data");
        let (ok, out) = etch_restore(&file, &restored, &[]);
        assert!(ok, "etch snapshot restore failed: {out}");
        let e = Etch::start(&restored, &[]);
        auth_holds(&e.endpoint(), "etch from etcd's backup").await;
    })
    .await;
}

/// A killed etcd's WAL tail holding auth changes and writes checked against them:
/// migrate applies the changes and refuses what etcd refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_auth_changes_and_checks_of_the_wal_tail() {
    bounded("migrate with auth", async {
        let mut etcd = slow_committing_etcd();
        let ep = etcd.endpoint();
        write_auth_data(&ep).await;
        etcdctl_save_as_root(&ep, &etcd.dir.path().join("forced-commit.db"));
        // Only in the WAL from here: a new user with alice's role, alice's allowed and
        // refused writes, and one of bob's.
        let mut root = connect_as(&ep, "root", "rootpw").await.expect("root");
        root.user_add("bob", "bobpw", None).await.expect("user add");
        root.user_grant_role("bob", "app").await.expect("grant");
        let mut alice = connect_as(&ep, "alice", "alicepw").await.expect("alice");
        alice.put("app/b", "2", None).await.expect("allowed");
        assert_status(
            alice.put("secret", "overwritten", None).await,
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied",
        );
        let mut bob = connect_as(&ep, "bob", "bobpw").await.expect("bob");
        bob.put("app/c", "3", None).await.expect("bob's put");
        let _ = etcd.child.kill();
        let _ = etcd.child.wait();

        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("etch-data");
        migrate(&etcd.dir.path().join("data"), &dest);
        let e = Etch::start(&dest, &[]);
        let ep = e.endpoint();
        let mut bob = connect_as_when_up(&ep, "bob", "bobpw").await;
        let got = bob
            .get("app/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("bob reads app/");
        let keys: Vec<&[u8]> = got.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!(keys, [&b"app/a"[..], b"app/b", b"app/c"]);
        let mut root = connect_as(&ep, "root", "rootpw").await.expect("root");
        let secret = root.get("secret", None).await.expect("get");
        assert_eq!(
            secret.kvs()[0].value(),
            b"s",
            "alice's refused put stays refused"
        );
    })
    .await;
}
