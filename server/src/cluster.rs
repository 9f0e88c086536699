//! etcdserverpb.Cluster for a one-member cluster: the member list, and etcd's answers to
//! membership changes until etch runs multi-member clusters.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::etch::Etch;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::cluster_server::Cluster;

#[derive(Debug, Clone)]
pub struct ClusterService {
    pub etch: Arc<Etch>,
}

impl ClusterService {
    fn members(&self) -> Vec<pb::Member> {
        let c = &self.etch.cfg;
        vec![pb::Member {
            id: self.etch.member_id,
            name: c.name.clone(),
            peer_ur_ls: c.peer_urls.clone(),
            client_ur_ls: c.advertise_client_urls.clone(),
            is_learner: false,
        }]
    }

    /// etcd's Cluster service fills no revision in its headers.
    fn header(&self) -> pb::ResponseHeader {
        self.etch.header(0)
    }

    fn check_member(&self, id: u64) -> Result<(), EtcdError> {
        if id == self.etch.member_id {
            Ok(())
        } else {
            Err(EtcdError::MemberNotFound)
        }
    }
}

/// etcd accepts only absolute http(s) URLs with a host and port for peers.
fn valid_peer_url(u: &str) -> bool {
    crate::config::split_url(u).is_ok_and(|(_, host, _)| !host.is_empty())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = request.into_inner();
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| valid_peer_url(u)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        if r.peer_ur_ls
            .iter()
            .any(|u| self.etch.cfg.peer_urls.contains(u))
        {
            return Err(EtcdError::PeerUrlExist.into());
        }
        Err(Status::unimplemented(
            "etch: adding members is not supported yet (one-member clusters only)",
        ))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_member(request.into_inner().id)?;
        // Removing the only voter would leave no quorum.
        Err(EtcdError::NotEnoughStartedMembers.into())
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = request.into_inner();
        self.check_member(r.id)?;
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| valid_peer_url(u)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        let mut want = r.peer_ur_ls.clone();
        want.sort();
        let mut have = self.etch.cfg.peer_urls.clone();
        have.sort();
        if want == have {
            return Ok(Response::new(pb::MemberUpdateResponse {
                header: Some(self.header()),
                members: self.members(),
            }));
        }
        Err(Status::unimplemented(
            "etch: changing peer URLs is not supported yet",
        ))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.etch.linearizable_barrier().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.check_member(request.into_inner().id)?;
        Err(EtcdError::MemberNotLearner.into())
    }
}
