//! `--auto-compaction-mode` / `--auto-compaction-retention`: compaction requests the
//! server proposes to itself, as etcd's compactor does.
//!
//! - periodic: keep `retention` of history. Every tenth of the retention (at most an
//!   hour) the current revision is sampled; the sample taken `retention` ago is compacted.
//! - revision: every 5 minutes, compact to `current - retention`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::apply::WriteResult;
use crate::config::AutoCompaction;
use crate::errors::EtcdError;
use crate::etch::Etch;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::pb::etchpb::internal_request;

const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);

pub fn spawn(etch: Arc<Etch>) -> Option<tokio::task::JoinHandle<()>> {
    match etch.cfg.auto_compaction {
        AutoCompaction::Off => None,
        AutoCompaction::Periodic(retention) => Some(tokio::spawn(periodic(etch, retention))),
        AutoCompaction::Revision(keep) => Some(tokio::spawn(revision(etch, keep))),
    }
}

async fn compact(etch: &Etch, rev: i64) {
    if rev <= etch.store.compact_revision() {
        return;
    }
    let req =
        crate::etch::server_request(internal_request::Request::Compaction(CompactionRequest {
            revision: rev,
            physical: false,
        }));
    match etch.propose(req).await {
        Ok(WriteResult::Compact { revision, .. }) => {
            tracing::info!(revision, "auto-compaction: compacted")
        }
        Ok(other) => tracing::error!("auto-compaction: unexpected result {other:?}"),
        Err(EtcdError::Compacted) => {}
        Err(e) => tracing::warn!(revision = rev, "auto-compaction failed: {e}"),
    }
}

async fn periodic(etch: Arc<Etch>, retention: Duration) {
    let interval = (retention / 10)
        .min(Duration::from_secs(3600))
        .max(Duration::from_millis(100));
    // Samples of (current revision) once per interval; the oldest is `retention` old.
    let keep = (retention.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
    let mut samples: VecDeque<i64> = VecDeque::with_capacity(keep + 1);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        samples.push_back(etch.store.current_revision());
        if samples.len() > keep {
            let rev = samples.pop_front().expect("non-empty");
            compact(&etch, rev).await;
        }
    }
}

async fn revision(etch: Arc<Etch>, keep: i64) {
    let mut tick = tokio::time::interval(REVISION_MODE_INTERVAL);
    loop {
        tick.tick().await;
        let rev = etch.store.current_revision() - keep;
        if rev > 0 {
            compact(&etch, rev).await;
        }
    }
}
