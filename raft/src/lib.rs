//! etch-raft: the thin layer over raft-rs that will drive the node loop, keep the Raft log
//! on the engine's WAL, and ship messages to peers.
//!
//! Nothing is implemented here yet; the crate exists so the workspace has its fixed shape.
//! See `ARCHITECTURE.md` for what will live here.
