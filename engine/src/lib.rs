//! etch-engine: etch's storage. No Raft, no gRPC, no async runtime.
//!
//! - [`bolt`]: bbolt's file format (etcd's database and snapshots), written and read.
//! - [`btree`]: a crash-safe copy-on-write B+tree in one memory-mapped data file.
//! - [`mvcc`]: etcd's data model (revisions, ranges, txns, compaction, leases) on the B+tree.
//! - [`wal`]: the segmented write-ahead log with an io_uring group-commit writer.

pub mod bolt;
pub mod btree;
mod io;
pub mod mvcc;
mod util;
pub mod wal;
