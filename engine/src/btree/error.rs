//! Operating errors of the B+tree. Programmer errors (broken invariants) panic instead.

use std::path::PathBuf;

use super::page::PageId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    #[error("disk full: {0}")]
    DiskFull(#[source] std::io::Error),
    #[error("corrupt page {page}: {reason}")]
    Corrupt { page: PageId, reason: String },
    #[error("corrupt data file: {0}")]
    CorruptFile(String),
    #[error("data file {path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("database unusable after an earlier failed write or sync: {0}")]
    Poisoned(String),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl Error {
    /// Classifies an I/O error from a write or sync: ENOSPC/EDQUOT become `DiskFull`.
    pub(crate) fn from_io(e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull(e),
            _ if e.kind() == std::io::ErrorKind::StorageFull => Error::DiskFull(e),
            _ => Error::Io(e),
        }
    }
}
