//! etch-server: etcd's flags, v3 gRPC API and HTTP endpoints over the Raft node and the
//! MVCC store. The binary `etch` (`src/main.rs`) is a thin wrapper; tests can start a
//! member in process with [`config::parse`] and [`run`].
//!
//! Imports run one way: state (`data_dir`, `backup`, `alarms`, `auth` (the store),
//! `lessor`, `watch_hub`, `metrics`, `apply`) below the shared handle (`etch`), the
//! services (`kv`, `watch`, `lease`, `maintenance`, `cluster`, `auth::service`,
//! `concurrency`, `http`, `gateway`) above it, start-up (`server`) on top.

pub(crate) mod alarms;
pub(crate) mod apply;
pub(crate) mod auth;
pub(crate) mod autocompact;
pub mod backup;
pub(crate) mod cluster;
pub(crate) mod concurrency;
pub mod config;
pub(crate) mod convert;
pub mod data_dir;
pub(crate) mod errors;
pub(crate) mod etch;
pub(crate) mod gateway;
pub(crate) mod http;
pub(crate) mod ids;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod lessor;
pub(crate) mod maintenance;
pub(crate) mod members;
pub(crate) mod metrics;
pub mod migrate;
pub(crate) mod pb;
pub(crate) mod peer;
pub(crate) mod peer_service;
pub(crate) mod server;
pub(crate) mod validate;
pub(crate) mod watch;
pub(crate) mod watch_hub;

pub use config::Config;
pub use server::run;

/// The etcd API version etch speaks and reports.
pub const ETCD_VERSION: &str = "3.6.0";
