//! etcdserverpb.Auth: changes go through Raft and are checked for root at apply; reads
//! are answered from this member's state after a ReadIndex; passwords are hashed and
//! checked with bcrypt on the blocking pool, never on the async runtime's threads.

use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{AuthInfo, AuthOutcome};
use crate::apply::WriteResult;
use crate::errors::EtcdError;
use crate::etch::{Etch, client_request};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etchpb::{Authenticate, InternalRequest, internal_request::Request as Ir};

#[derive(Debug, Clone)]
pub struct AuthService {
    pub etch: Arc<Etch>,
}

/// Tries of Authenticate when an auth change lands between the password check and the
/// token (etcd retries the same way).
const AUTHENTICATE_TRIES: usize = 5;

impl AuthService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.etch.header(self.etch.store.current_revision()))
    }

    /// Proposes an auth change as `who` and waits for it.
    async fn change(&self, req: Ir, who: &AuthInfo) -> Result<AuthOutcome, EtcdError> {
        match self.etch.propose(client_request(req, who)).await? {
            WriteResult::Auth(o) => Ok(o),
            other => Err(EtcdError::Internal(format!(
                "etch: mismatched apply result {other:?}"
            ))),
        }
    }

    /// Runs bcrypt off the async threads, a bounded number at a time.
    async fn bcrypt<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, EtcdError> {
        // The permit goes with the work: a caller that gives up does not free a slot
        // while its hash still runs.
        let slot = self
            .etch
            .auth
            .bcrypt_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EtcdError::Stopped)?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(slot);
            out
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("etch: bcrypt task: {e}")))
    }

    /// A password as etcd stores it, at `--bcrypt-cost`.
    async fn hash(&self, password: String) -> Result<String, EtcdError> {
        let cost = self.etch.auth.bcrypt_cost;
        self.bcrypt(move || super::hash_password(&password, cost))
            .await?
            .map_err(EtcdError::Internal)
    }

    /// Linearizable, then `who` from the request.
    async fn reader<T>(&self, r: &Request<T>) -> Result<AuthInfo, EtcdError> {
        let who = self.etch.who(r).await?;
        self.etch.linearizable_barrier().await?;
        Ok(who)
    }
}

macro_rules! done {
    ($self:ident, $resp:ident) => {
        Ok(Response::new(pb::$resp {
            header: $self.header(),
        }))
    };
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        r: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::AuthEnable(r.into_inner()), &who).await?;
        done!(self, AuthEnableResponse)
    }

    async fn auth_disable(
        &self,
        r: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::AuthDisable(r.into_inner()), &who).await?;
        done!(self, AuthDisableResponse)
    }

    async fn auth_status(
        &self,
        r: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let who = self.reader(&r).await?;
        let (enabled, auth_revision) = self.etch.auth.status(&who)?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        r: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let r = r.into_inner();
        self.etch.linearizable_barrier().await?;
        let auth = &self.etch.auth;
        for _ in 0..AUTHENTICATE_TRIES {
            let (hash, checked_at) = auth.password_hash(&r.name)?;
            let password = r.password.clone();
            let ok = self
                .bcrypt(move || {
                    std::str::from_utf8(&hash)
                        .ok()
                        .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
                })
                .await?;
            if !ok {
                tracing::info!(user = %r.name, "invalid password");
                return Err(EtcdError::AuthFailed.into());
            }
            let prefix = auth.tokens.prefix().map_err(EtcdError::Internal)?;
            // No credentials travel with it, and the password stays here: only the name
            // and the token's random part reach the log.
            let bytes = InternalRequest {
                request: Some(Ir::Authenticate(Authenticate {
                    name: r.name.clone(),
                    simple_token: prefix,
                })),
                auth: None,
            }
            .encode_to_vec();
            let token = match self.etch.propose(bytes).await? {
                WriteResult::Auth(AuthOutcome::Token(t)) => t,
                other => {
                    return Err(EtcdError::Internal(format!(
                        "etch: mismatched apply result {other:?}"
                    ))
                    .into());
                }
            };
            if checked_at == auth.revision() {
                return Ok(Response::new(pb::AuthenticateResponse {
                    header: self.header(),
                    token,
                }));
            }
            tracing::info!("the auth revision moved while a password was checked; retrying");
        }
        Err(EtcdError::AuthOldRevision.into())
    }

    async fn user_add(
        &self,
        r: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        // Refused at apply anyway; checked first so that only root makes the server hash.
        let who = self.etch.admin(&r).await?;
        let mut r = r.into_inner();
        if r.options.is_none_or(|o| !o.no_password) {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        self.change(Ir::UserAdd(r), &who).await?;
        done!(self, AuthUserAddResponse)
    }

    async fn user_get(
        &self,
        r: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let who = self.reader(&r).await?;
        let roles = self.etch.auth.user_get(&who, &r.get_ref().name)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        r: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let who = self.reader(&r).await?;
        let users = self.etch.auth.user_list(&who)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        r: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::UserDelete(r.into_inner()), &who).await?;
        done!(self, AuthUserDeleteResponse)
    }

    async fn user_change_password(
        &self,
        r: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let who = self.etch.admin(&r).await?;
        let mut r = r.into_inner();
        if !r.password.is_empty() {
            r.hashed_password = self.hash(std::mem::take(&mut r.password)).await?;
        }
        self.change(Ir::UserChangePassword(r), &who).await?;
        done!(self, AuthUserChangePasswordResponse)
    }

    async fn user_grant_role(
        &self,
        r: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::UserGrantRole(r.into_inner()), &who).await?;
        done!(self, AuthUserGrantRoleResponse)
    }

    async fn user_revoke_role(
        &self,
        r: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::UserRevokeRole(r.into_inner()), &who)
            .await?;
        done!(self, AuthUserRevokeRoleResponse)
    }

    async fn role_add(
        &self,
        r: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::RoleAdd(r.into_inner()), &who).await?;
        done!(self, AuthRoleAddResponse)
    }

    async fn role_get(
        &self,
        r: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let who = self.reader(&r).await?;
        let perm = self.etch.auth.role_get(&who, &r.get_ref().role)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        r: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let who = self.reader(&r).await?;
        let roles = self.etch.auth.role_list(&who)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        r: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::RoleDelete(r.into_inner()), &who).await?;
        done!(self, AuthRoleDeleteResponse)
    }

    async fn role_grant_permission(
        &self,
        r: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::RoleGrantPermission(r.into_inner()), &who)
            .await?;
        done!(self, AuthRoleGrantPermissionResponse)
    }

    async fn role_revoke_permission(
        &self,
        r: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let who = self.etch.who(&r).await?;
        self.change(Ir::RoleRevokePermission(r.into_inner()), &who)
            .await?;
        done!(self, AuthRoleRevokePermissionResponse)
    }
}
