//! The watch hub: reads every new revision once from the MVCC change feed and broadcasts
//! it to the watch streams in bounded batches.

use std::sync::Arc;
use std::time::Duration;

use etch_engine::mvcc::{self, Store};
use tokio::sync::{broadcast, watch};

/// Events per broadcast batch (a batch never splits a revision, so it may hold more).
const HUB_BATCH_EVENTS: usize = 256;
/// Batches the broadcast keeps for slow streams; beyond it they catch up from the store.
const HUB_BATCHES: usize = 128;

/// A run of revisions `from..=to` with every event in them.
#[derive(Debug)]
pub struct Batch {
    pub from: i64,
    pub to: i64,
    pub events: Vec<mvcc::Event>,
}

/// Broadcasts new revisions to every watch stream.
#[derive(Debug)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Batch>>,
    /// Last revision broadcast.
    progress: watch::Receiver<i64>,
}

impl WatchHub {
    /// Starts the hub task; `revisions` follows the store's current revision.
    pub fn start(store: Arc<Store>, mut revisions: watch::Receiver<i64>) -> Arc<WatchHub> {
        let (tx, _) = broadcast::channel(HUB_BATCHES);
        let start = store.current_revision();
        let (progress_tx, progress) = watch::channel(start);
        let hub = Arc::new(WatchHub {
            tx: tx.clone(),
            progress,
        });
        tokio::spawn(async move {
            let mut hub_rev = start;
            loop {
                loop {
                    let s = store.clone();
                    let read = tokio::task::spawn_blocking(move || read_batch(&s, hub_rev)).await;
                    match read {
                        Ok(Ok(Some(b))) => {
                            hub_rev = b.to;
                            // No stream listening is fine: new streams start from the store.
                            let _ = tx.send(Arc::new(b));
                            progress_tx.send_replace(hub_rev);
                        }
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            tracing::error!("watch hub: reading the change feed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                        Err(e) => {
                            tracing::error!("watch hub: read task: {e}");
                            break;
                        }
                    }
                }
                if revisions.changed().await.is_err() {
                    return;
                }
            }
        });
        hub
    }

    /// Batches broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }

    /// The last revision broadcast.
    pub fn progress(&self) -> i64 {
        *self.progress.borrow()
    }
}

fn read_batch(store: &Store, hub_rev: i64) -> Result<Option<Batch>, mvcc::Error> {
    let snap = store.read()?;
    let cur = snap.revision();
    if cur <= hub_rev {
        return Ok(None);
    }
    // History compacted before the hub read it: skip ahead; watchers behind the gap
    // learn of the compaction when they try to catch up.
    let from = (hub_rev + 1).max(snap.compact_revision());
    let events = snap.events(from, &[0], &[0], HUB_BATCH_EVENTS)?;
    let to = if events.len() >= HUB_BATCH_EVENTS {
        events.last().map_or(cur, |e| e.kv.mod_revision)
    } else {
        cur
    };
    Ok(Some(Batch { from, to, events }))
}
