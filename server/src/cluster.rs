//! etcdserverpb.Cluster: the replicated member list, and etcd's answers to membership
//! changes (adding, removing and updating members comes with the next step).

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
    /// The replicated member list, as this member has applied it.
    fn members(&self) -> Result<Vec<pb::Member>, EtcdError> {
        let snap = self.etch.store.read()?;
        crate::members::list(&snap).map_err(EtcdError::Internal)
    }

    /// etcd's Cluster service fills no revision in its headers.
    fn header(&self) -> pb::ResponseHeader {
        self.etch.header(0)
    }

    fn check_member(&self, id: u64) -> Result<(), EtcdError> {
        if self.members()?.iter().any(|m| m.id == id) {
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
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let r = request.into_inner();
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| valid_peer_url(u)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        let members = self.members()?;
        if r.peer_ur_ls
            .iter()
            .any(|u| members.iter().any(|m| m.peer_ur_ls.contains(u)))
        {
            return Err(EtcdError::PeerUrlExist.into());
        }
        Err(Status::unimplemented(
            "etch: adding members is not supported yet",
        ))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        self.check_member(request.into_inner().id)?;
        if self.members()?.len() == 1 {
            // Removing the only voter would leave no quorum.
            return Err(EtcdError::NotEnoughStartedMembers.into());
        }
        Err(Status::unimplemented(
            "etch: removing members is not supported yet",
        ))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        let r = request.into_inner();
        self.check_member(r.id)?;
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| valid_peer_url(u)) {
            return Err(EtcdError::MemberBadUrls.into());
        }
        let mut want = r.peer_ur_ls.clone();
        want.sort();
        let members = self.members()?;
        let mut have = members
            .iter()
            .find(|m| m.id == r.id)
            .map(|m| m.peer_ur_ls.clone())
            .unwrap_or_default();
        have.sort();
        if want == have {
            return Ok(Response::new(pb::MemberUpdateResponse {
                header: Some(self.header()),
                members,
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
            members: self.members()?,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        // Root only (etcd 3.6).
        self.etch.admin(&request).await?;
        self.check_member(request.into_inner().id)?;
        Err(EtcdError::MemberNotLearner.into())
    }
}
