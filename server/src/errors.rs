//! etcd's client-visible errors, and the one place they become gRPC statuses. The codes
//! and texts are etcd's (clients match on the text).

use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

/// An error a client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd has no gRPC status for this one: it travels as Unknown with the auth
    /// package's own text.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// A fault inside etch (storage failed): the text says what.
    #[error("{0}")]
    Internal(String),
}

impl EtcdError {
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            NoSpace => Code::ResourceExhausted,
            LeaseExist => Code::FailedPrecondition,
            // etcd sends this one as a plain error, which gRPC reports as Unknown.
            TooManyRequests => Code::Unknown,
            NoLeader | Stopped | Timeout | TimeoutDueToLeaderFail | LeaderChanged => {
                Code::Unavailable
            }
            Corrupt => Code::DataLoss,
            WrongDowngradeVersionFormat
            | InvalidDowngradeTargetVersion
            | MemberBadUrls
            | UserEmpty
            | RoleEmpty
            | AuthFailed
            | PermissionNotGiven
            | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            RootRoleNotExist | UserAlreadyExist | RoleAlreadyExist | RoleNotGranted
            | PermissionNotGranted => Code::FailedPrecondition,
            NoPasswordUser => Code::Unknown,
            BadLeaderTransferee | NotLeader | NoInflightDowngrade | PeerUrlExist
            | MemberNotLearner | RootUserNotExist | UserNotFound | RoleNotFound
            | AuthNotEnabled => Code::FailedPrecondition,
            MemberNotFound => Code::NotFound,
            // Like TooManyRequests, etcd sends these as plain errors.
            NotEnoughStartedMembers | TimeoutLeaderTransfer => Code::Unknown,
            Internal(_) => Code::Internal,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<etch_engine::mvcc::Error> for EtcdError {
    fn from(e: etch_engine::mvcc::Error) -> EtcdError {
        use etch_engine::mvcc::Error as M;
        match e {
            M::Compacted => EtcdError::Compacted,
            M::FutureRev => EtcdError::FutureRev,
            M::KeyNotFound => EtcdError::KeyNotFound,
            M::LeaseNotFound => EtcdError::LeaseNotFound,
            M::LeaseExists => EtcdError::LeaseExist,
            M::Corrupt(why) => {
                tracing::error!("corrupt data: {why}");
                EtcdError::Corrupt
            }
            M::Storage(e) => EtcdError::Internal(format!("etch: storage: {e}")),
        }
    }
}

impl From<etch_raft::Error> for EtcdError {
    fn from(e: etch_raft::Error) -> EtcdError {
        use etch_raft::Error as R;
        match e {
            R::Stopped => EtcdError::Stopped,
            R::NoLeader => EtcdError::NoLeader,
            R::LeaderChanged => EtcdError::LeaderChanged,
            R::TooManyPending => EtcdError::TooManyRequests,
            other => EtcdError::Internal(format!("etch: raft: {other}")),
        }
    }
}

/// tonic: OutOfRange "Error, decoded message length too large: found N bytes, the limit
/// is: M bytes"; grpc-go: ResourceExhausted "grpc: received message larger than max (N
/// vs. M)".
/// Gives a request message over the decoding limit (`--max-request-bytes` plus gRPC's
/// headroom) the status grpc-go gives it in etcd, rather than tonic's. Unary calls only:
/// there tonic refuses the message before calling the service, in a trailers-only
/// response this can rewrite.
pub fn too_large_as_grpc_go(resp: http::Response<Body>) -> http::Response<Body> {
    let Some(st) = resp.extensions().get::<Status>() else {
        return resp;
    };
    let Some(rest) = (st.code() == Code::OutOfRange)
        .then(|| {
            st.message()
                .strip_prefix("Error, decoded message length too large: found ")
        })
        .flatten()
    else {
        return resp;
    };
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let (Some(len), Some(limit)) = (numbers.next(), numbers.next()) else {
        return resp;
    };
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({len} vs. {limit})"
    ))
    .into_http()
}
