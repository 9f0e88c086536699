//! etch-engine: etch's storage. No Raft, no gRPC, no async runtime.
//!
//! - [`btree`]: a crash-safe copy-on-write B+tree in one memory-mapped data file.

pub mod btree;
