//! etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot,
//! MoveLeader, Downgrade.

use std::io::Read as _;
use std::sync::Arc;

use etch_engine::mvcc::Snapshot;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::alarms::alarm_name;
use crate::data_dir;
use crate::errors::EtcdError;
use crate::etch::{Etch, propose_alarm};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;

/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// crc32 over every tree's name, keys and values at one version (etcd's Hash covers its
/// whole backend the same way).
fn hash_all(snap: &Snapshot) -> Result<u32, String> {
    let src = snap.btree();
    let mut h = crc32fast::Hasher::new();
    for name in src.tree_names().map_err(|e| e.to_string())? {
        h.update(&name);
        if let Some(t) = src.tree(&name).map_err(|e| e.to_string())? {
            for e in t.iter() {
                let (k, v) = e.map_err(|e| e.to_string())?;
                h.update(k);
                h.update(v);
            }
        }
    }
    Ok(h.finalize())
}

#[derive(Debug, Clone)]
pub struct MaintenanceService {
    pub etch: Arc<Etch>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    EtcdError::Internal(format!("etch: {e}")).into()
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let r = request.into_inner();
        let alarms = match pb::alarm_request::AlarmAction::try_from(r.action) {
            Ok(pb::alarm_request::AlarmAction::Get) => {
                let all = self.etch.alarms.list();
                if r.alarm == pb::AlarmType::None as i32 {
                    all
                } else {
                    all.into_iter().filter(|(_, a)| *a == r.alarm).collect()
                }
            }
            Ok(_) => propose_alarm(&self.etch, r).await?,
            Err(_) => Vec::new(),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.etch.header(self.etch.store.current_revision())),
            alarms: alarms
                .into_iter()
                .map(|(m, a)| pb::AlarmMember {
                    member_id: m,
                    alarm: a,
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let etch = &self.etch;
        let st = etch.node.status();
        let stats = etch.store.db().stats();
        let db_size = stats.high_water_pages * stats.page_size as u64;
        Ok(Response::new(pb::StatusResponse {
            header: Some(etch.header(etch.store.current_revision())),
            version: crate::ETCD_VERSION.to_string(),
            db_size: db_size as i64,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: *etch.node.applied().borrow(),
            errors: etch
                .alarms
                .list()
                .into_iter()
                .map(|(m, a)| format!("memberID:{m} alarm:{} ", alarm_name(a)))
                .collect(),
            db_size_in_use: etch.size_in_use() as i64,
            is_learner: false,
            storage_version: crate::ETCD_VERSION.to_string(),
            db_size_quota: etch.cfg.quota_backend_bytes as i64,
            downgrade_info: Some(pb::DowngradeInfo::default()),
        }))
    }

    /// Freed pages are reused in place, so the file never needs rewriting: there is
    /// nothing to do, and nothing stops.
    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        // Freed pages are reused in place: nothing to rewrite. etcd's answer has no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let store = self.etch.store.clone();
        let (rev, hash) = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let snap = store.read().map_err(|e| e.to_string())?;
            Ok((snap.revision(), hash_all(&snap)?))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.etch.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let r = request.into_inner();
        let store = self.etch.store.clone();
        let (cur, h) = tokio::task::spawn_blocking(move || -> Result<_, EtcdError> {
            let snap = store.read()?;
            Ok((snap.revision(), snap.hash_kv(r.revision)?))
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.etch.header(cur)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    /// The data at one revision as an etcd (bbolt) database, then the SHA-256 of everything
    /// sent before it as the last 32 bytes, as etcd sends it (what `etcdutl snapshot
    /// restore` and `etch snapshot restore` check).
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let etch = self.etch.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let r = stream_snapshot(&etch, &tx);
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(internal(e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let r = request.into_inner();
        let etch = &self.etch;
        if !etch.node.status().is_leader {
            return Err(EtcdError::NotLeader.into());
        }
        let snap = etch.store.read().map_err(internal)?;
        let target = crate::members::get(&snap, r.target_id).map_err(internal)?;
        drop(snap);
        if target.is_none_or(|m| m.is_learner) {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        etch.node.transfer_leader(r.target_id);
        let deadline = tokio::time::Instant::now() + etch.request_timeout();
        while etch.node.status().leader != r.target_id {
            if tokio::time::Instant::now() >= deadline {
                return Err(EtcdError::TimeoutLeaderTransfer.into());
            }
            tokio::time::sleep(etch.cfg.heartbeat).await;
        }
        tracing::info!(to = %format!("{:x}", r.target_id), "leadership moved");
        // etcd's answer has no header.
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        use pb::downgrade_request::DowngradeAction as A;
        let r = request.into_inner();
        let answer = || {
            Ok(Response::new(pb::DowngradeResponse {
                header: Some(self.etch.header(self.etch.store.current_revision())),
                version: CLUSTER_VERSION.to_string(),
            }))
        };
        match A::try_from(r.action) {
            // etcd 3.6 answers a cancel with the cluster version whatever happens (an
            // error, such as no downgrade in progress, is only logged).
            Ok(A::Cancel) => {
                if let Err(e) = self.etch.linearizable_barrier().await {
                    tracing::warn!("downgrade cancel: {e}");
                } else {
                    tracing::warn!("downgrade cancel: {}", EtcdError::NoInflightDowngrade);
                }
                answer()
            }
            Ok(action) => {
                let (major, minor) = downgrade_target(&r.version)?;
                self.etch.linearizable_barrier().await?;
                // Only one minor version down is a valid target (3.6 → 3.5).
                if (major, minor) != (3, 5) {
                    return Err(EtcdError::InvalidDowngradeTargetVersion.into());
                }
                if action == A::Enable {
                    // Validated as etcd validates it, but etch cannot write its data in an
                    // older etcd's format: it refuses rather than start a downgrade it
                    // could not finish.
                    return Err(Status::unimplemented(
                        "etch: downgrading the storage format is not supported",
                    ));
                }
                answer()
            }
            Err(_) => Err(Status::unknown("etcdserver: unknown method")),
        }
    }
}

/// The cluster version a downgrade answer names (major.minor of the version etch
/// reports).
const CLUSTER_VERSION: &str = "3.6";

/// A downgrade target as etcd parses it: a semantic version (`3.5.0`, with optional
/// pre-release and build parts) or `major.minor`; only major and minor count.
fn downgrade_target(v: &str) -> Result<(u64, u64), EtcdError> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let core = v.split_once('+').map_or(v, |(c, _)| c);
        let core = core.split_once('-').map_or(core, |(c, _)| c);
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some((parts[0].parse().ok()?, parts[1].parse().ok()?))
    };
    parse(v)
        .or_else(|| parse(&format!("{v}.0")))
        .ok_or(EtcdError::WrongDowngradeVersionFormat)
}

fn stream_snapshot(
    etch: &Etch,
    tx: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("snapshot")
        .tempdir_in(data_dir::member_dir(&etch.cfg.data_dir))
        .map_err(|e| format!("creating a snapshot dir: {e}"))?;
    let path = dir.path().join("db");
    let snap = etch.store.read().map_err(|e| e.to_string())?;
    let revision = snap.revision();
    // etcd's own format, so etcdutl restores it and etcd serves it.
    let mut progress = crate::backup::Progress::new("snapshot", None, true);
    crate::backup::export(&snap, &path, &mut progress)?;
    drop(snap);
    let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    // As etcd counts it: the data still to come, without the checksum message.
    let total = size;
    let mut sent = 0u64;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    let header = Some(etch.header(revision));
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        sent += n as u64;
        let msg = pb::SnapshotResponse {
            header,
            remaining_bytes: total - sent,
            blob: buf[..n].to_vec(),
            version: crate::ETCD_VERSION.to_string(),
        };
        if tx.blocking_send(Ok(msg)).is_err() {
            return Ok(());
        }
    }
    let _ = tx.blocking_send(Ok(pb::SnapshotResponse {
        header,
        remaining_bytes: 0,
        blob: sha.finalize().to_vec(),
        version: crate::ETCD_VERSION.to_string(),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrade_targets_parse_as_etcd_parses_them() {
        assert_eq!(downgrade_target("3.5"), Ok((3, 5)));
        assert_eq!(downgrade_target("3.5.0"), Ok((3, 5)));
        assert_eq!(downgrade_target("3.5.2-rc.1+abc"), Ok((3, 5)));
        assert_eq!(downgrade_target("3.4"), Ok((3, 4)));
        for bad in ["", "3", "v3.5", "3.5.x", "3.5.0.1", "three.five", "3..5"] {
            assert_eq!(
                downgrade_target(bad),
                Err(EtcdError::WrongDowngradeVersionFormat),
                "{bad}"
            );
        }
    }
}
