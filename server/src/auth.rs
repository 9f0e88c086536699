//! etcdserverpb.Auth while etch has no users or roles: authentication is disabled, and
//! every call answers what etcd answers with no users and no roles. Adding users or
//! roles is refused as not implemented rather than silently ignored.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::etch::Etch;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::auth_server::Auth;

#[derive(Debug, Clone)]
pub struct AuthService {
    pub etch: Arc<Etch>,
}

impl AuthService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.etch.header(self.etch.store.current_revision()))
    }
}

/// There are no users: naming one is an error.
fn missing_user(name: &str) -> Status {
    if name.is_empty() {
        EtcdError::UserEmpty.into()
    } else {
        EtcdError::UserNotFound.into()
    }
}

/// There are no roles: naming one is an error.
fn missing_role(name: &str) -> Status {
    if name.is_empty() {
        EtcdError::RoleEmpty.into()
    } else {
        EtcdError::RoleNotFound.into()
    }
}

fn not_yet() -> Status {
    Status::unimplemented("etch: users and roles are not supported yet")
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        _r: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        Err(EtcdError::RootUserNotExist.into())
    }

    async fn auth_disable(
        &self,
        _r: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        _r: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: false,
            // etcd's auth store starts at revision 1 and only user, role and enable
            // changes move it.
            auth_revision: 1,
        }))
    }

    async fn authenticate(
        &self,
        _r: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Err(EtcdError::AuthNotEnabled.into())
    }

    async fn user_add(
        &self,
        r: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        if r.get_ref().name.is_empty() {
            return Err(EtcdError::UserEmpty.into());
        }
        Err(not_yet())
    }

    async fn user_get(
        &self,
        r: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        Err(missing_user(&r.get_ref().name))
    }

    async fn user_list(
        &self,
        _r: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users: Vec::new(),
        }))
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        Err(missing_user(&r.get_ref().name))
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        Err(missing_user(&r.get_ref().name))
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        Err(missing_user(&r.get_ref().user))
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        Err(missing_user(&r.get_ref().name))
    }

    async fn role_add(
        &self,
        r: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        if r.get_ref().name.is_empty() {
            return Err(EtcdError::RoleEmpty.into());
        }
        Err(not_yet())
    }

    async fn role_get(
        &self,
        r: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        Err(missing_role(&r.get_ref().role))
    }

    async fn role_list(
        &self,
        _r: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles: Vec::new(),
        }))
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        Err(missing_role(&r.get_ref().role))
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        Err(missing_role(&r.get_ref().name))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        Err(missing_role(&r.get_ref().role))
    }
}
