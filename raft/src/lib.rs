//! etch-raft: the thin layer over raft-rs.
//!
//! - [`Core`] is raft-rs's `RawNode` with etch's bookkeeping, as a pure state machine:
//!   inputs (proposals, reads, peer messages, ticks, disk progress) in, effects (messages,
//!   committed entries, replies) out; no clock, no threads, no waiting.
//! - [`Log`] is the log raft-rs reads, made durable through a [`LogDisk`]: the engine's
//!   WAL ([`WalDisk`]) or, in simulation, [`MemDisk`], which loses its unsynced tail in a
//!   power cut.
//! - [`Node`] drives a core on its own thread with wall-clock ticks, the WAL (one
//!   group-committed batch per Ready, never waited on by the loop) and a [`Transport`].
//! - The applier thread feeds committed entries to the caller's [`StateMachine`], which
//!   records the applied position ([`Applied`]) atomically with their effects; each
//!   proposer gets the output its entry produced.
//! - Linearizable reads use ReadIndex, batched: every read waiting when the loop turns
//!   shares one ReadIndex round.
//! - Peers are reached through the [`Transport`] trait; raft-rs's slog output goes to
//!   tracing.
//!
//! This crate knows nothing of MVCC or gRPC: entries are opaque bytes.

mod core;
mod disk;
mod log;
mod logger;
mod node;

use std::time::Duration;

pub use crate::core::{Apply, ApplyBatch, Core, CoreConfig, Effects, RequestId};
pub use disk::{MemDisk, WalDisk};
pub use log::{Log, LogDisk, RETAINED_ENTRIES, Replay};
pub use node::{Node, NodeStatus};
pub use raft::StateRole;
pub use raft::prelude::{
    ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};

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
    #[error("the leader changed")]
    LeaderChanged,
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

    /// Replaces the state with the leader's snapshot `snap` (its data came out of band,
    /// through the transport), durably, and returns the position the new state holds
    /// (the snapshot's). An error is fatal, as for `apply`.
    fn install(&mut self, snap: &Snapshot) -> std::result::Result<Applied, String> {
        Err(format!(
            "this state machine cannot install snapshots (index {})",
            snap.get_metadata().index
        ))
    }
}

/// Carries raft messages to peers. Sending must not block for long; a message that cannot
/// be delivered is dropped (raft retries), and the transport reports the peer unreachable
/// through [`Node::report_unreachable`] (and a snapshot's fate through
/// [`Node::report_snapshot`]).
pub trait Transport: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);

    /// Sends a `MsgSnapshot` (metadata only) with the state machine's data, out of band,
    /// and later reports the outcome through [`Node::report_snapshot`]. Returns false if
    /// it cannot (the node then reports the failure at once).
    fn send_snapshot(&mut self, msg: Message) -> bool {
        tracing::warn!(to = msg.to, "raft: this transport does not send snapshots");
        false
    }
}

/// Request ids unique across members and restarts, laid out as etcd's idutil lays them
/// out: the member id's low 16 bits, then 48 bits that start at the boot time in
/// milliseconds (its low 40 bits, shifted left by 8) and count up.
#[derive(Debug, Clone)]
pub struct IdGen {
    prefix: u64,
    suffix: u64,
}

impl IdGen {
    const SUFFIX_BITS: u32 = 48;

    /// `boot` is the start time in milliseconds (in simulation, any value that differs
    /// between a member's restarts).
    pub fn new(member: u64, boot: u64) -> IdGen {
        IdGen {
            prefix: (member & 0xffff) << Self::SUFFIX_BITS,
            suffix: (boot & ((1 << 40) - 1)) << 8,
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.suffix = (self.suffix + 1) & ((1 << Self::SUFFIX_BITS) - 1);
        self.prefix | self.suffix
    }
}

pub(crate) fn crate_lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Entries kept in memory below the applied index for slow followers (etcd's
    /// `--snapshot-catchup-entries`); one further behind gets a snapshot.
    pub catchup_entries: u64,
    /// Entries kept at most below the applied index while a follower that is still
    /// replicating lags behind (etcd keeps up to `--snapshot-count` in memory).
    pub retained_max: u64,
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
            catchup_entries: RETAINED_ENTRIES,
            retained_max: RETAINED_ENTRIES,
        }
    }
}

/// A raft message in raft-rs's protobuf encoding, for a transport to carry.
pub fn encode_message(m: &Message) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a raft message cannot fail")
}

/// Decodes what [`encode_message`] made.
pub fn decode_message(b: &[u8]) -> Result<Message> {
    Message::parse_from_bytes(b).map_err(Error::codec)
}
