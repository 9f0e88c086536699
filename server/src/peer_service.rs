//! The `etchpeerpb.Peer` service other members call: raft message streams, snapshots from
//! the leader, and the lease calls followers forward to the leader.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;
use tonic::{Request, Response, Status, Streaming};

use crate::etch::Etch;
use crate::pb::etchpeerpb as ppb;
use crate::pb::etchpeerpb::peer_server::Peer;

#[derive(Debug, Clone)]
pub struct PeerService {
    pub etch: Arc<Etch>,
}

impl PeerService {
    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.etch.cluster_id {
            // etcd refuses a peer of another cluster the same way.
            return Err(Status::failed_precondition(format!(
                "request cluster ID mismatch (got {cluster_id:x}, want {:x})",
                self.etch.cluster_id
            )));
        }
        Ok(())
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.etch.node.status().is_leader {
            Ok(())
        } else {
            Err(Status::unavailable("etcdserver: not leader"))
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<ppb::RaftBatch>>,
    ) -> Result<Response<ppb::Empty>, Status> {
        let mut s = request.into_inner();
        while let Some(b) = s.message().await? {
            self.check_cluster(b.cluster_id)?;
            let stats = self.etch.peers.stats(b.from);
            for raw in &b.messages {
                stats
                    .received_bytes
                    .fetch_add(raw.len() as u64, Ordering::Relaxed);
                let m = etch_raft::decode_message(raw)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                self.etch.node.step(m);
            }
        }
        Ok(Response::new(ppb::Empty {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<ppb::SnapshotChunk>>,
    ) -> Result<Response<ppb::SnapshotAck>, Status> {
        let mut s = request.into_inner();
        let inbox = self.etch.snapshot_inbox.clone();
        let Some(first) = s.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        self.check_cluster(first.cluster_id)?;
        let msg = etch_raft::decode_message(&first.message)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot message: {e}")))?;
        let index = msg.get_snapshot().get_metadata().index;
        let (tmp, path) = inbox.paths(index);
        // At most the quota, and a margin: a sender cannot fill the disk.
        let max_bytes = self.etch.cfg.quota_backend_bytes.saturating_mul(2);
        // tokio's file runs its writes and syncs on the blocking pool, off the threads
        // that serve clients and raft streams.
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Status::internal(format!("staging a snapshot: {e}")))?;
        let mut sha = sha2::Sha256::new();
        let mut offset = 0u64;
        let mut chunk = Some(first);
        let stats = self.etch.peers.stats(msg.from);
        let result: Result<(), Status> = async {
            loop {
                let c = match chunk.take() {
                    Some(c) => c,
                    None => s
                        .message()
                        .await?
                        .ok_or_else(|| Status::invalid_argument("snapshot stream ended early"))?,
                };
                if c.offset != offset {
                    return Err(Status::invalid_argument(format!(
                        "snapshot chunk at {} where {offset} was expected",
                        c.offset
                    )));
                }
                if crc32fast::hash(&c.data) != c.crc32 {
                    return Err(Status::data_loss(format!(
                        "snapshot chunk at {offset}: checksum mismatch"
                    )));
                }
                offset += c.data.len() as u64;
                if offset > max_bytes {
                    return Err(Status::resource_exhausted(
                        "snapshot larger than twice the backend quota",
                    ));
                }
                stats
                    .received_bytes
                    .fetch_add(c.data.len() as u64, Ordering::Relaxed);
                sha.update(&c.data);
                file.write_all(&c.data)
                    .await
                    .map_err(|e| Status::internal(format!("staging a snapshot: {e}")))?;
                if c.last {
                    if sha.clone().finalize().as_slice() != c.sha256.as_slice() {
                        return Err(Status::data_loss("snapshot SHA-256 mismatch"));
                    }
                    return Ok(());
                }
            }
        }
        .await;
        let result = match result {
            Ok(()) => async {
                file.sync_all().await?;
                drop(file);
                tokio::fs::rename(&tmp, &path).await
            }
            .await
            .map_err(|e| Status::internal(format!("staging a snapshot: {e}"))),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tracing::info!(
            index,
            bytes = offset,
            from = %format!("{:x}", msg.from),
            "received a snapshot"
        );
        inbox.stage(index, path);
        self.etch.node.step(msg);
        Ok(Response::new(ppb::SnapshotAck { accepted: true }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<ppb::LeaseRequest>,
    ) -> Result<Response<ppb::LeaseReply>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        self.leader_only()?;
        let ttl = self.etch.renew_lease(r.id).await;
        Ok(Response::new(ppb::LeaseReply {
            ttl,
            granted_ttl: ttl,
            keys: Vec::new(),
            revision: self.etch.store.current_revision(),
        }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<ppb::LeaseRequest>,
    ) -> Result<Response<ppb::LeaseReply>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        self.leader_only()?;
        let rev = self.etch.store.current_revision();
        let Some((granted, left)) = self.etch.lease_remaining(r.id).await else {
            return Ok(Response::new(ppb::LeaseReply {
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
                revision: rev,
            }));
        };
        let keys = if r.keys {
            let store = self.etch.store.clone();
            let id = r.id;
            tokio::task::spawn_blocking(move || store.read().and_then(|s| s.lease_keys(id)))
                .await
                .map_err(|e| Status::internal(format!("lease task: {e}")))?
                .map_err(|e| Status::internal(e.to_string()))?
        } else {
            Vec::new()
        };
        Ok(Response::new(ppb::LeaseReply {
            ttl: left,
            granted_ttl: granted,
            keys,
            revision: rev,
        }))
    }
}
