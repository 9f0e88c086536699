//! etch-raft: the thin layer over raft-rs.
//!
//! - [`Node`] drives a raft-rs `RawNode` on its own thread in the documented order:
//!   persist entries and hard state in the WAL (one group-committed batch per Ready),
//!   send messages, hand committed entries to the applier, advance.
//! - The applier thread feeds committed entries to the caller's [`StateMachine`], which
//!   records the applied position ([`Applied`]) atomically with their effects; each
//!   proposer gets the output its entry produced.
//! - Linearizable reads use ReadIndex, batched: every read waiting when the loop turns
//!   shares one ReadIndex round.
//! - Peers are reached through the [`Transport`] trait; raft-rs's slog output goes to
//!   tracing.
//!
//! This crate knows nothing of MVCC or gRPC: entries are opaque bytes.

mod logger;
mod node;
mod storage;

use std::time::Duration;

pub use node::{Node, NodeStatus};
pub use raft::prelude::{ConfState, Message};
pub use storage::LogStore;

use etch_engine::wal;
use protobuf::Message as _;

/// Layer errors. Proposers and readers see `Stopped`, `NoLeader`, `Fatal`; opening sees the
/// rest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wal(#[from] wal::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("corrupt raft state: {0}")]
    Corrupt(String),
    #[error("the raft node has stopped")]
    Stopped,
    #[error("no leader")]
    NoLeader,
    #[error("too many requests waiting for a leader")]
    TooManyPending,
    #[error("fatal error: {0}")]
    Fatal(String),
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Error {
        Error::Raft(e.to_string())
    }
}

impl Error {
    pub(crate) fn codec(e: protobuf::ProtobufError) -> Error {
        Error::Corrupt(format!("protobuf: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The position of the last entry the state machine applied, and the membership then. The
/// state machine stores it with its data ([`Applied::encode`]) and hands it back at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

impl Applied {
    const VERSION: u8 = 1;

    /// `[version u8][index u64 le][term u64 le][ConfState protobuf]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.push(Self::VERSION);
        v.extend_from_slice(&self.index.to_le_bytes());
        v.extend_from_slice(&self.term.to_le_bytes());
        v.extend_from_slice(
            &self
                .conf_state
                .write_to_bytes()
                .expect("encoding a ConfState cannot fail"),
        );
        v
    }

    /// Decodes a stored position; an empty one is a new node's.
    pub fn decode(b: &[u8]) -> Result<Applied> {
        if b.is_empty() {
            return Ok(Applied::default());
        }
        if b[0] != Self::VERSION || b.len() < 17 {
            return Err(Error::Corrupt(format!(
                "unknown applied-state record (version {}, {} bytes)",
                b[0],
                b.len()
            )));
        }
        Ok(Applied {
            index: u64::from_le_bytes(b[1..9].try_into().expect("8 bytes")),
            term: u64::from_le_bytes(b[9..17].try_into().expect("8 bytes")),
            conf_state: ConfState::parse_from_bytes(&b[17..]).map_err(Error::codec)?,
        })
    }
}

/// A committed entry's payload, as proposed.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub index: u64,
    pub term: u64,
    pub data: &'a [u8],
}

/// The replicated state machine.
pub trait StateMachine: Send + 'static {
    /// What applying one entry produces for its proposer.
    type Output: Send + 'static;

    /// Applies `entries` in order and records `applied` with their effects, atomically
    /// (a crash keeps all of them or none). Returns one output per entry. An error is
    /// fatal: the node stops applying and fails every waiter.
    fn apply(
        &mut self,
        entries: &[Committed<'_>],
        applied: &Applied,
    ) -> std::result::Result<Vec<Self::Output>, String>;
}

/// Carries raft messages to peers. Sending must not block for long; a message that cannot
/// be delivered is dropped (raft retries).
pub trait Transport: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
}

/// The transport of a one-member group: there is no one to send to.
#[derive(Debug, Default)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            tracing::warn!(to = m.to, kind = ?m.msg_type, "raft: no transport to peer; message dropped");
        }
    }
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This member's id (non-zero).
    pub id: u64,
    /// Voters of a brand-new cluster (ignored once the log or data holds a membership).
    pub initial_voters: Vec<u64>,
    /// One tick: the heartbeat interval.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    pub wal_dir: std::path::PathBuf,
    pub wal: wal::Options,
    /// Proposals held while there is no leader, beyond which new ones fail.
    pub pending_max: usize,
}

impl Config {
    pub fn new(id: u64, wal_dir: impl Into<std::path::PathBuf>) -> Config {
        Config {
            id,
            initial_voters: vec![id],
            tick: Duration::from_millis(100),
            election_ticks: 10,
            wal_dir: wal_dir.into(),
            wal: wal::Options::default(),
            pending_max: 16 * 1024,
        }
    }
}
