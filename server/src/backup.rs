//! Backups in etcd's own format: etch's data as an etcd (bbolt) database with etcd's
//! buckets and encodings, and an etcd database as etch's data.
//!
//! What etcd keeps where (its backend schema):
//! - `key`: revision (8-byte big-endian main, `_`, 8-byte big-endian sub, and `t` for a
//!   tombstone) → `mvccpb.KeyValue` (a tombstone's holds only the key);
//! - `meta`: `consistent_index`, `term` (8-byte big-endian), `scheduledCompactRev` and
//!   `finishedCompactRev` (a 17-byte revision), `confState` (JSON);
//! - `lease`: lease id (8-byte big-endian) → `leasepb.Lease`;
//! - `members`: member id in hex → the member as JSON; `members_removed`;
//! - `cluster`: `clusterVersion`; `alarm`: `etcdserverpb.AlarmMember` → empty;
//! - `auth`: `authEnabled` (one byte), `authRevision`; `authUsers`, `authRoles`.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etch_engine::bolt::{self, BucketRoot, Reader};
use etch_engine::mvcc::{Lease, Revision, Snapshot, Store, StoredVersion};
use etch_raft::Applied;
use prost::Message as _;
use sha2::Digest as _;

use crate::alarms::ALARM_TREE;
use crate::auth;
use crate::members;
use crate::pb::{etcdserverpb as pb, leasepb, mvccpb};

pub const KEY: &[u8] = b"key";
pub const META: &[u8] = b"meta";
pub const LEASE: &[u8] = b"lease";
pub const ALARM: &[u8] = b"alarm";
pub const CLUSTER: &[u8] = b"cluster";
pub const MEMBERS: &[u8] = b"members";
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const AUTH: &[u8] = b"auth";
pub const AUTH_USERS: &[u8] = b"authUsers";
pub const AUTH_ROLES: &[u8] = b"authRoles";

/// The cluster version a backup declares: the oldest etcd that reads this layout, so
/// etcd 3.5 (which refuses a newer cluster version) starts on a restore of it.
const BACKUP_CLUSTER_VERSION: &str = "3.5.0";

pub use etch_engine::mvcc::etcd::{parse_revision_key, revision_key};

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_strings(out: &mut String, v: &[String]) {
    out.push('[');
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, s);
    }
    out.push(']');
}

/// A member as etcd stores it: `{"id":…,"peerURLs":[…],"name":…,"clientURLs":[…]}`, with
/// `isLearner`, `name` and `clientURLs` left out when empty.
pub fn member_json(m: &pb::Member) -> String {
    let mut s = format!("{{\"id\":{},\"peerURLs\":", m.id);
    json_strings(&mut s, &m.peer_ur_ls);
    if m.is_learner {
        s.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        s.push_str(",\"name\":");
        json_string(&mut s, &m.name);
    }
    if !m.client_ur_ls.is_empty() {
        s.push_str(",\"clientURLs\":");
        json_strings(&mut s, &m.client_ur_ls);
    }
    s.push('}');
    s
}

/// A raft conf state as etcd stores it in `meta` (the JSON of raftpb.ConfState).
fn conf_state_json(voters: &[u64], learners: &[u64]) -> String {
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut s = String::from("{");
    if !voters.is_empty() {
        s.push_str(&format!("\"voters\":[{}],", list(voters)));
    }
    if !learners.is_empty() {
        s.push_str(&format!("\"learners\":[{}],", list(learners)));
    }
    s.push_str("\"auto_leave\":false}");
    s
}

/// Progress of a long run: a bar on a terminal, a log line every few seconds otherwise.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    tty: bool,
    quiet: bool,
    /// Whether a line was printed: a run too short for one ends silently.
    printed: bool,
}

impl Progress {
    /// `total` in the unit counted (keys, bytes), if known. Quiet: nothing is printed
    /// (the server's own snapshots).
    pub fn new(what: &'static str, total: Option<u64>, quiet: bool) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            quiet,
            printed: false,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.quiet {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.printed = true;
            self.print(false);
        }
    }

    fn print(&self, end: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let mut line = format!("{}: {}", self.what, self.done);
        if let Some(t) = self.total {
            let pct = if t == 0 {
                100.0
            } else {
                100.0 * self.done as f64 / t as f64
            };
            line.push_str(&format!(" of {t} ({pct:.0}%)"));
            if !end && rate > 0.0 && t > self.done {
                line.push_str(&format!(", ETA {:.0} s", (t - self.done) as f64 / rate));
            }
        }
        line.push_str(&format!(", {rate:.0}/s, {secs:.1} s"));
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if end {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    pub fn finish(&self) {
        if !self.quiet && self.printed {
            self.print(true);
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub revision: i64,
    pub versions: u64,
    pub bytes: u64,
}

/// Writes the version `snap` reads as an etcd database at `dest` (a new file). Memory
/// stays bounded by the trees' height, whatever the data size.
pub fn export(snap: &Snapshot, dest: &Path, progress: &mut Progress) -> Result<Exported, String> {
    let e = |e: bolt::Error| e.to_string();
    let m = |e: etch_engine::mvcc::Error| e.to_string();
    let applied = if snap.marker().is_empty() {
        None
    } else {
        Some(Applied::decode(snap.marker()).map_err(|e| e.to_string())?)
    };
    let mut w = bolt::Writer::create(dest).map_err(e)?;

    // key: every version compaction keeps, in revision order (the bucket's key order).
    let mut versions = 0u64;
    {
        let mut b = w.bucket(KEY).map_err(e)?;
        let mut failed = None;
        snap.for_each_version(&mut |v: StoredVersion| {
            let value = etch_engine::mvcc::etcd::encode_key_value(&v.kv, v.tombstone);
            if let Err(err) = b.put(&revision_key(v.rev, v.tombstone), &value) {
                failed = Some(err.to_string());
                return Ok(false);
            }
            versions += 1;
            progress.add(1);
            Ok(true)
        })
        .map_err(m)?;
        if let Some(f) = failed {
            return Err(f);
        }
        b.finish().map_err(e)?;
    }

    // meta
    {
        let mut b = w.bucket(META).map_err(e)?;
        let mut entries: Vec<(&[u8], Vec<u8>)> = Vec::new();
        // The raft position the data is at. etcdutl's restore rewrites both; etcd 3.6
        // refuses a 3.5-layout database without a term, so there is always one.
        let (index, term) = applied.as_ref().map_or((0, 0), |a| (a.index, a.term));
        if let Some(a) = &applied {
            let cs = &a.conf_state;
            entries.push((
                b"confState",
                conf_state_json(&cs.voters, &cs.learners).into_bytes(),
            ));
        }
        entries.push((b"consistent_index", index.to_be_bytes().to_vec()));
        entries.push((b"term", term.max(1).to_be_bytes().to_vec()));
        let compact = snap.compact_revision();
        if compact > 0 {
            let r = revision_key(
                Revision {
                    main: compact,
                    sub: 0,
                },
                false,
            );
            entries.push((b"finishedCompactRev", r.clone()));
            entries.push((b"scheduledCompactRev", r));
        }
        entries.sort();
        for (k, v) in entries {
            b.put(k, &v).map_err(e)?;
        }
        b.finish().map_err(e)?;
    }

    // lease
    {
        let mut leases = snap.leases().map_err(m)?;
        leases.sort_by_key(|l| l.id as u64);
        let mut b = w.bucket(LEASE).map_err(e)?;
        for l in leases {
            let v = leasepb::Lease {
                id: l.id,
                ttl: l.ttl,
                remaining_ttl: l.remaining_ttl,
            }
            .encode_to_vec();
            b.put(&(l.id as u64).to_be_bytes(), &v).map_err(e)?;
        }
        b.finish().map_err(e)?;
    }

    // members: etcd's key is the id in hex, so its order is not the ids' order.
    {
        let mut list: Vec<(String, String)> = members::list(snap)?
            .iter()
            .map(|mb| (format!("{:x}", mb.id), member_json(mb)))
            .collect();
        list.sort();
        let mut b = w.bucket(MEMBERS).map_err(e)?;
        for (k, v) in list {
            b.put(k.as_bytes(), v.as_bytes()).map_err(e)?;
        }
        b.finish().map_err(e)?;
        w.bucket(MEMBERS_REMOVED).map_err(e)?.finish().map_err(e)?;
    }

    // cluster, alarm, auth
    {
        let mut b = w.bucket(CLUSTER).map_err(e)?;
        b.put(b"clusterVersion", BACKUP_CLUSTER_VERSION.as_bytes())
            .map_err(e)?;
        b.finish().map_err(e)?;

        let mut alarms: Vec<Vec<u8>> = Vec::new();
        for (k, _) in snap.meta_entries(ALARM_TREE).map_err(m)? {
            if k.len() != 12 {
                return Err("corrupt alarm record in the data file".into());
            }
            let member_id = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            let alarm = i32::from_be_bytes(k[8..].try_into().expect("4 bytes"));
            alarms.push(pb::AlarmMember { member_id, alarm }.encode_to_vec());
        }
        alarms.sort();
        let mut b = w.bucket(ALARM).map_err(e)?;
        for k in alarms {
            b.put(&k, &[]).map_err(e)?;
        }
        b.finish().map_err(e)?;

        // Auth as etcd stores it; the trees already hold etcd's encodings.
        let enabled = snap
            .meta_get(auth::AUTH_TREE, auth::ENABLED_KEY)
            .map_err(m)?
            .unwrap_or_else(|| vec![0]);
        let revision = snap
            .meta_get(auth::AUTH_TREE, auth::REVISION_KEY)
            .map_err(m)?
            .unwrap_or_else(|| 1u64.to_be_bytes().to_vec());
        let mut b = w.bucket(AUTH).map_err(e)?;
        b.put(auth::ENABLED_KEY, &enabled).map_err(e)?;
        b.put(auth::REVISION_KEY, &revision).map_err(e)?;
        b.finish().map_err(e)?;
        for (bucket, tree) in [
            (AUTH_ROLES, auth::ROLES_TREE),
            (AUTH_USERS, auth::USERS_TREE),
        ] {
            let mut b = w.bucket(bucket).map_err(e)?;
            for (k, v) in snap.meta_entries(tree).map_err(m)? {
                b.put(&k, &v).map_err(e)?;
            }
            b.finish().map_err(e)?;
        }
    }
    let bytes = w.finish().map_err(e)?;
    progress.finish();
    Ok(Exported {
        revision: snap.revision(),
        versions,
        bytes,
    })
}

/// How `etch snapshot restore` treats an etcd snapshot (etcdutl's flags).
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub skip_hash_check: bool,
    /// Added to the current revision, with `mark_compacted` (etcdutl requires both).
    pub bump_revision: i64,
    pub mark_compacted: bool,
    /// Nothing printed (tests, the server).
    pub quiet: bool,
    /// The cluster the restored member starts (etcdutl's `--name`, `--initial-cluster`,
    /// `--initial-cluster-token`, `--initial-advertise-peer-urls`). Without it, the first
    /// start forms a new cluster from its own flags.
    pub cluster: Option<ClusterFlags>,
}

#[derive(Debug, Clone)]
pub struct ClusterFlags {
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub token: String,
    /// This member's advertised peer URLs.
    pub peer_urls: Vec<String>,
}

/// `etch snapshot restore`: an etcd snapshot (bbolt) or an etch data file with a SHA-256
/// trailer (what etch's Snapshot sent before it spoke etcd's format).
pub fn restore(file: &Path, data_dir: &Path, opts: &RestoreOptions) -> Result<Restored, String> {
    let what = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    if bolt::is_bolt(file).map_err(|e| what(&e))? {
        return restore_etcd(file, data_dir, opts);
    }
    if !etch_engine::btree::is_data_file(file).map_err(|e| what(&e))? {
        return Err(format!(
            "{}: not a snapshot (neither an etcd database nor an etch data file)",
            file.display()
        ));
    }
    crate::data_dir::restore(file, data_dir)?;
    let store = crate::data_dir::open_store(data_dir)?;
    if let Some(c) = &opts.cluster {
        let mut tx = store.write().map_err(|e| e.to_string())?;
        crate::etch::write_identity(&mut tx, &c.initial_cluster, &c.token, &c.peer_urls)?;
        tx.commit().map_err(|e| e.to_string())?;
        store.checkpoint().map_err(|e| e.to_string())?;
    }
    let snap = store.read().map_err(|e| e.to_string())?;
    Ok(Restored {
        revision: snap.revision(),
        compact_revision: snap.compact_revision(),
        versions: 0,
        leases: snap.leases().map_err(|e| e.to_string())?.len() as u64,
    })
}

/// What a restore built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub compact_revision: i64,
    pub versions: u64,
    pub leases: u64,
}

/// Versions written per write transaction during a restore.
const RESTORE_BATCH: usize = 10_000;

/// The length of the database in `file`, after checking its SHA-256 trailer (etcd's rule:
/// a file whose size is 32 past a multiple of 512 carries one).
pub fn check_trailer(file: &Path, skip_hash_check: bool) -> Result<u64, String> {
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let has_hash = size % 512 == 32;
    if !has_hash {
        if !skip_hash_check {
            return Err("snapshot missing hash but --skip-hash-check=false".into());
        }
        return Ok(size);
    }
    let db_len = size - 32;
    if skip_hash_check {
        return Ok(db_len);
    }
    let mut sha = sha2::Sha256::new();
    let mut left = db_len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.read_exact(&mut want).map_err(|e| e.to_string())?;
    let got = sha.finalize();
    if got.as_slice() != want {
        return Err(format!(
            "snapshot file integrity check failed: expected sha256 {}, got {}",
            hex(&want),
            hex(got.as_slice())
        ));
    }
    Ok(db_len)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn bucket_value(r: &Reader, bucket: &BucketRoot, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut found = None;
    r.for_each(bucket, &mut |k, v| {
        if k == key {
            found = Some(v.to_vec());
            return Ok(false);
        }
        Ok(true)
    })
    .map_err(|e| e.to_string())?;
    Ok(found)
}

/// A compact revision in `meta`: a 17-byte revision key (or 8 bytes, as some writers
/// store a bare main revision).
fn compact_rev(v: Option<Vec<u8>>) -> Result<i64, String> {
    match v {
        None => Ok(0),
        Some(v) if v.len() >= 17 && v[8] == b'_' => {
            Ok(u64::from_be_bytes(v[..8].try_into().expect("8 bytes")) as i64)
        }
        Some(v) if v.len() == 8 => {
            Ok(u64::from_be_bytes(v[..].try_into().expect("8 bytes")) as i64)
        }
        Some(v) => Err(format!("meta: a compact revision of {} bytes", v.len())),
    }
}

/// A sibling of `dir` to build in before renaming it into place.
fn staging_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!(".{name}.restoring"))
}

/// Builds the etch data dir `data_dir` (which must not exist) from the etcd database in
/// `file`: every revision, tombstones and the compact revision, and the leases. The data
/// dir appears whole or not at all.
pub fn restore_etcd(
    file: &Path,
    data_dir: &Path,
    opts: &RestoreOptions,
) -> Result<Restored, String> {
    restore_etcd_then(file, data_dir, opts, &mut |_| Ok(()))
}

/// [`restore_etcd`], with `then` run on the restored store before the data dir is moved
/// into place (the migration applies an etcd WAL's tail there).
pub fn restore_etcd_then(
    file: &Path,
    data_dir: &Path,
    opts: &RestoreOptions,
    then: &mut dyn FnMut(&Store) -> Result<(), String>,
) -> Result<Restored, String> {
    if data_dir.exists() {
        return Err(format!("data-dir {:?} exists", data_dir.display()));
    }
    if opts.bump_revision < 0 {
        return Err("--bump-revision must not be negative".into());
    }
    if opts.bump_revision > 0 && !opts.mark_compacted {
        return Err("--mark-compacted required if --bump-revision > 0".into());
    }
    if opts.bump_revision == 0 && opts.mark_compacted {
        return Err("--mark-compacted disallowed if --bump-revision is 0".into());
    }
    let db_len = check_trailer(file, opts.skip_hash_check)?;
    let r = Reader::open(file, Some(db_len)).map_err(|e| format!("{}: {e}", file.display()))?;
    let buckets = r.buckets(&r.root()).map_err(|e| e.to_string())?;
    let get = |name: &[u8]| {
        buckets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    };
    let Some(key_bucket) = get(KEY) else {
        return Err("invalid database: no \"key\" bucket (not an etcd v3 database)".into());
    };
    let staging = staging_dir(data_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    }
    let built = build_from_etcd(&r, &key_bucket, get(LEASE), get(META), &staging, opts, then);
    match built {
        Ok(done) => {
            std::fs::rename(&staging, data_dir).map_err(|e| {
                let _ = std::fs::remove_dir_all(&staging);
                format!("moving the restored data into {}: {e}", data_dir.display())
            })?;
            if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty())
                && let Ok(d) = std::fs::File::open(parent)
            {
                let _ = d.sync_all();
            }
            Ok(done)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn build_from_etcd(
    r: &Reader,
    key_bucket: &BucketRoot,
    lease_bucket: Option<BucketRoot>,
    meta_bucket: Option<BucketRoot>,
    staging: &Path,
    opts: &RestoreOptions,
    then: &mut dyn FnMut(&Store) -> Result<(), String>,
) -> Result<Restored, String> {
    let m = |e: etch_engine::mvcc::Error| e.to_string();
    let store: Store = crate::data_dir::open_store(staging)?;
    let mut progress = Progress::new("restoring revisions", None, opts.quiet);
    let mut versions = 0u64;
    let mut tx = Some(store.write().map_err(m)?);
    let mut in_tx = 0usize;
    let mut failed: Option<String> = None;
    r.for_each(key_bucket, &mut |k, v| {
        let Some((rev, tombstone)) = parse_revision_key(k) else {
            failed = Some(format!(
                "key bucket: a key of {} bytes is not a revision",
                k.len()
            ));
            return Ok(false);
        };
        let kv = match mvccpb::KeyValue::decode(v) {
            Ok(kv) => kv,
            Err(e) => {
                failed = Some(format!("key bucket: revision {}: {e}", rev.main));
                return Ok(false);
            }
        };
        let version = StoredVersion {
            rev,
            tombstone,
            kv: etch_engine::mvcc::KeyValue {
                key: kv.key,
                create_revision: kv.create_revision,
                mod_revision: rev.main,
                version: kv.version,
                value: kv.value,
                lease: kv.lease,
            },
        };
        if let Err(e) = tx
            .as_mut()
            .expect("a transaction is open")
            .import_version(&version)
        {
            failed = Some(e.to_string());
            return Ok(false);
        }
        versions += 1;
        in_tx += 1;
        progress.add(1);
        if in_tx >= RESTORE_BATCH {
            // One write transaction per batch: memory holds one batch's pages.
            in_tx = 0;
            let done = tx.take().expect("a transaction is open");
            match done.commit().and_then(|_| store.write()) {
                Ok(t) => tx = Some(t),
                Err(e) => {
                    failed = Some(e.to_string());
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })
    .map_err(|e| e.to_string())?;
    if let Some(f) = failed {
        return Err(f);
    }
    progress.finish();
    let mut tx = tx.expect("a transaction is open");
    let mut leases = 0u64;
    if let Some(lb) = lease_bucket {
        let mut bad = None;
        r.for_each(&lb, &mut |_, v| {
            match leasepb::Lease::decode(v) {
                Ok(l) => {
                    let lease = Lease {
                        id: l.id,
                        ttl: l.ttl,
                        remaining_ttl: l.remaining_ttl,
                    };
                    if let Err(e) = tx.import_lease(&lease) {
                        bad = Some(e.to_string());
                        return Ok(false);
                    }
                    leases += 1;
                }
                Err(e) => {
                    bad = Some(format!("lease bucket: {e}"));
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .map_err(|e| e.to_string())?;
        if let Some(b) = bad {
            return Err(b);
        }
    }
    import_auth(r, &mut tx)?;
    let (mut scheduled, finished) = match &meta_bucket {
        Some(mb) => (
            compact_rev(bucket_value(r, mb, b"scheduledCompactRev")?)?,
            compact_rev(bucket_value(r, mb, b"finishedCompactRev")?)?,
        ),
        None => (0, 0),
    };
    if opts.bump_revision > 0 {
        scheduled = tx.revision().max(scheduled) + opts.bump_revision;
    }
    tx.import_compacted(scheduled, finished).map_err(m)?;
    // A new cluster: no Raft history; its identity from the restore's flags, or else
    // from the first start's.
    tx.set_marker(&[]).map_err(m)?;
    if let Some(c) = &opts.cluster {
        crate::etch::write_identity(&mut tx, &c.initial_cluster, &c.token, &c.peer_urls)?;
    }
    tx.commit().map_err(m)?;
    then(&store)?;
    store.checkpoint().map_err(m)?;
    let revision = store.current_revision();
    let compact_revision = store.compact_revision();
    drop(store);
    Ok(Restored {
        revision,
        compact_revision,
        versions,
        leases,
    })
}

/// etcd's auth buckets into the auth trees, as they are: the same encodings. Users and
/// roles are checked to decode, so a damaged record is refused here, not at start.
fn import_auth(r: &Reader, tx: &mut etch_engine::mvcc::MvccTxn<'_>) -> Result<(), String> {
    let m = |e: etch_engine::mvcc::Error| e.to_string();
    if let Some(b) = r.bucket(AUTH).map_err(|e| e.to_string())? {
        for (key, len) in [(auth::ENABLED_KEY, 1), (auth::REVISION_KEY, 8)] {
            if let Some(v) = bucket_value(r, &b, key)? {
                if v.len() != len {
                    return Err(format!(
                        "auth bucket: a damaged {} record",
                        String::from_utf8_lossy(key)
                    ));
                }
                tx.meta_put(auth::AUTH_TREE, key, &v).map_err(m)?;
            }
        }
    }
    for (bucket, tree, what) in [
        (AUTH_USERS, auth::USERS_TREE, "user"),
        (AUTH_ROLES, auth::ROLES_TREE, "role"),
    ] {
        let Some(b) = r.bucket(bucket).map_err(|e| e.to_string())? else {
            continue;
        };
        let mut bad = None;
        r.for_each(&b, &mut |k, v| {
            let ok = if what == "user" {
                crate::pb::authpb::User::decode(v).is_ok()
            } else {
                crate::pb::authpb::Role::decode(v).is_ok()
            };
            if !ok {
                bad = Some(format!(
                    "{} bucket: a damaged {what} record",
                    String::from_utf8_lossy(bucket)
                ));
                return Ok(false);
            }
            if let Err(e) = tx.meta_put(tree, k, v) {
                bad = Some(e.to_string());
                return Ok(false);
            }
            Ok(true)
        })
        .map_err(|e| e.to_string())?;
        if let Some(b) = bad {
            return Err(b);
        }
    }
    Ok(())
}

/// What `etch snapshot status` (like `etcdutl snapshot status`) tells of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// CRC-32C of every bucket's name, keys and values, in order.
    pub hash: u32,
    /// The main revision of the last key version.
    pub revision: i64,
    pub total_key: u64,
    /// Bytes of the database (pages in use × page size).
    pub total_size: u64,
    /// The storage version, or the cluster version when there is none.
    pub version: String,
}

/// Describes the etcd snapshot in `file`, as etcdutl does. Reads a page at a time.
pub fn status(file: &Path, show_progress: bool) -> Result<SnapshotStatus, String> {
    let r = Reader::open(file, None).map_err(|e| format!("{}: {e}", file.display()))?;
    let total_size = r.meta().pages * u64::from(r.meta().page_size);
    let mut h = etch_engine::mvcc::etcd::Crc32c::default();
    let mut revision = 0;
    let mut total_key = 0u64;
    let mut version = String::new();
    let mut progress = Progress::new("reading keys", None, !show_progress);
    for (name, b) in r.buckets(&r.root()).map_err(|e| e.to_string())? {
        h.update(&name);
        let is_key = name == KEY;
        let is_meta = name == META;
        let is_cluster = name == CLUSTER;
        r.for_each(&b, &mut |k, v| {
            h.update(k);
            h.update(v);
            if is_key && let Some((rev, _)) = parse_revision_key(k) {
                revision = rev.main;
            }
            if is_meta && k == b"storageVersion" {
                version = String::from_utf8_lossy(v).into_owned();
            }
            if is_cluster && k == b"clusterVersion" && version.is_empty() {
                version = String::from_utf8_lossy(v).into_owned();
            }
            total_key += 1;
            progress.add(1);
            Ok(true)
        })
        .map_err(|e| e.to_string())?;
    }
    progress.finish();
    Ok(SnapshotStatus {
        hash: h.finish(),
        revision,
        total_key,
        total_size,
        version,
    })
}

/// Bytes in SI units, as etcd's tools print sizes ("2.1 MB").
fn si_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(units.len() - 1);
    let v = n as f64 / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

/// `-w table|simple|json`, as etcdutl prints them.
pub fn format_status(st: &SnapshotStatus, format: &str) -> Result<String, String> {
    let size = si_bytes(st.total_size);
    match format {
        "json" => Ok(format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{},\"version\":\"{}\"}}\n",
            st.hash, st.revision, st.total_key, st.total_size, st.version
        )),
        "simple" => Ok(format!(
            "{:x}, {}, {}, {}, {}\n",
            st.hash, st.revision, st.total_key, size, st.version
        )),
        "table" => {
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "VERSION"];
            let row = [
                format!("{:x}", st.hash),
                st.revision.to_string(),
                st.total_key.to_string(),
                size,
                st.version.clone(),
            ];
            let widths: Vec<usize> = head
                .iter()
                .zip(&row)
                .map(|(h, r)| h.len().max(r.len()) + 2)
                .collect();
            let line: String = widths.iter().fold(String::from("+"), |mut s, w| {
                s.push_str(&"-".repeat(*w));
                s.push('+');
                s
            });
            // Headings centred, values right-aligned, as etcd's tools print tables.
            let mut heads = String::from("|");
            let mut cells = String::from("|");
            for ((h, c), w) in head.iter().zip(&row).zip(&widths) {
                heads.push_str(&format!("{h:^w$}|"));
                let inner = w - 1;
                cells.push_str(&format!("{c:>inner$} |"));
            }
            Ok(format!("{line}\n{heads}\n{line}\n{cells}\n{line}\n"))
        }
        other => Err(format!(
            "unknown output format {other:?} (table, simple or json)"
        )),
    }
}

/// The consistent index (the raft index its data is at) of the etcd database `db`.
pub fn consistent_index(db: &Path) -> Result<u64, String> {
    let r = Reader::open(db, None).map_err(|e| format!("{}: {e}", db.display()))?;
    let Some(meta) = r.bucket(META).map_err(|e| e.to_string())? else {
        return Err(format!("{}: no \"meta\" bucket", db.display()));
    };
    match bucket_value(&r, &meta, b"consistent_index")? {
        None => Ok(0),
        Some(v) if v.len() == 8 => Ok(u64::from_be_bytes(v[..].try_into().expect("8 bytes"))),
        Some(v) => Err(format!("meta: a consistent index of {} bytes", v.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_conf_state_as_etcd_writes_them() {
        let m = pb::Member {
            id: 10,
            name: "a\"b".into(),
            peer_ur_ls: vec!["http://1:2380".into()],
            client_ur_ls: vec![],
            is_learner: false,
        };
        assert_eq!(
            member_json(&m),
            r#"{"id":10,"peerURLs":["http://1:2380"],"name":"a\"b"}"#
        );
        assert_eq!(
            conf_state_json(&[1, 2], &[]),
            r#"{"voters":[1,2],"auto_leave":false}"#
        );
        assert_eq!(si_bytes(2_121_728), "2.1 MB");
        assert_eq!(si_bytes(20_480), "20 kB");
    }
}
