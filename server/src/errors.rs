//! etcd's client-visible errors, and the one place they become gRPC statuses. The codes
//! and texts are etcd's (clients match on the text).

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
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
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
            Compacted | FutureRev => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            NoSpace => Code::ResourceExhausted,
            LeaseExist => Code::FailedPrecondition,
            // etcd sends this one as a plain error, which gRPC reports as Unknown.
            TooManyRequests => Code::Unknown,
            NoLeader | Stopped | Timeout => Code::Unavailable,
            Corrupt => Code::DataLoss,
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
            R::TooManyPending => EtcdError::TooManyRequests,
            other => EtcdError::Internal(format!("etch: raft: {other}")),
        }
    }
}
