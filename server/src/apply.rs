//! The replicated state machine: committed Raft entries applied to the MVCC store, and
//! the background work that follows them (physical compaction, checkpoints).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use etch_engine::mvcc::{self, Store};
use etch_raft::{Applied, Committed, StateMachine};
use prost::Message as _;

use crate::alarms::{ALARM_TREE, Alarms, alarm_key};
use crate::auth::AuthInfo;
use crate::convert;
use crate::errors::EtcdError;
use crate::lessor::Lessor;
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etchpb::{InternalRequest, internal_request::Request};

/// etcd warns about an apply slower than this.
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// What applying one write produced.
#[derive(Debug)]
pub enum WriteResult {
    Put(mvcc::PutResponse),
    DeleteRange(mvcc::DeleteRangeResponse),
    Txn(mvcc::TxnResponse),
    /// Compaction accepted at this revision; the store is at `current`.
    Compact {
        revision: i64,
        current: i64,
    },
    LeaseGrant {
        revision: i64,
    },
    LeaseCheckpoint,
    /// Alarms changed by an ACTIVATE or DEACTIVATE.
    Alarm(Vec<(u64, i32)>),
    /// A member's attributes were published.
    Member,
    /// An auth change was applied.
    Auth(crate::auth::AuthOutcome),
}

pub type Output = Result<WriteResult, EtcdError>;

/// Applies entries to the store; one B+tree transaction per batch.
pub struct Apply {
    pub store: Arc<Store>,
    pub compactor: Arc<Compactor>,
    /// The store's current revision, published after every applied batch (the watch hub
    /// follows it).
    pub revision_tx: tokio::sync::watch::Sender<i64>,
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<Alarms>,
    pub auth: Arc<crate::auth::AuthStore>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Snapshot data received from the leader, waiting for raft.
    pub inbox: Arc<crate::peer::SnapshotInbox>,
    /// How far lease deadlines move when leases are reloaded (an election timeout).
    pub lease_extend: Duration,
}

impl std::fmt::Debug for Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apply").field("store", &self.store).finish()
    }
}

/// An error that stops the state machine: storage failed under it.
fn fatal(e: mvcc::Error) -> String {
    format!("storage: {e}")
}

fn is_fatal(e: &mvcc::Error) -> bool {
    matches!(e, mvcc::Error::Storage(_) | mvcc::Error::Corrupt(_))
}

impl StateMachine for Apply {
    type Output = Output;

    fn apply(
        &mut self,
        entries: &[Committed<'_>],
        applied: &Applied,
    ) -> Result<Vec<Output>, String> {
        let applying = std::time::Instant::now();
        let mut tx = self.store.write().map_err(fatal)?;
        let mut outs = Vec::with_capacity(entries.len());
        let mut compacted = false;
        let mut granted = Vec::new();
        let mut revoked = Vec::new();
        let mut alarms = Vec::new();
        for e in entries {
            let req = InternalRequest::decode(e.data)
                .map_err(|err| format!("entry {} is not a request: {err}", e.index))?;
            let who = req.auth.map(|h| AuthInfo {
                user: h.username,
                revision: h.revision,
            });
            if let (Some(who), Some(r)) = (&who, &req.request)
                && let Err(denied) = self.auth.request_permitted(&tx, who, r)
            {
                outs.push(Err(denied));
                continue;
            }
            let out = match req.request {
                Some(Request::Put(p)) => tx.put(&convert::put_in(&p)).map(WriteResult::Put),
                Some(Request::DeleteRange(d)) => tx
                    .delete_range(&convert::delete_in(&d))
                    .map(WriteResult::DeleteRange),
                Some(Request::Txn(t)) => tx.txn(&convert::txn_in(&t)).map(WriteResult::Txn),
                Some(Request::Compaction(c)) => {
                    let r = tx.compact(c.revision).map(|()| WriteResult::Compact {
                        revision: c.revision,
                        current: tx.revision(),
                    });
                    compacted |= r.is_ok();
                    r
                }
                Some(Request::LeaseGrant(g)) => tx.lease_grant(g.id, g.ttl).map(|()| {
                    granted.push((g.id, g.ttl));
                    WriteResult::LeaseGrant {
                        revision: tx.revision(),
                    }
                }),
                Some(Request::LeaseRevoke(r)) => tx.lease_revoke(r.id).map(|d| {
                    revoked.push(r.id);
                    WriteResult::DeleteRange(d)
                }),
                Some(Request::LeaseCheckpoint(c)) => {
                    let mut r = Ok(WriteResult::LeaseCheckpoint);
                    for cp in &c.checkpoints {
                        match tx.lease_checkpoint(cp.id, cp.remaining_ttl) {
                            // Revoked since the checkpoint was taken.
                            Ok(()) | Err(mvcc::Error::LeaseNotFound) => {}
                            Err(e) => {
                                r = Err(e);
                                break;
                            }
                        }
                    }
                    r
                }
                Some(Request::Alarm(a)) => {
                    let key = alarm_key(a.member_id, a.alarm);
                    match AlarmAction::try_from(a.action) {
                        Ok(AlarmAction::Activate) => tx.meta_put(ALARM_TREE, &key, &[]).map(|()| {
                            alarms.push((a.member_id, a.alarm, true));
                            WriteResult::Alarm(vec![(a.member_id, a.alarm)])
                        }),
                        Ok(AlarmAction::Deactivate) => {
                            tx.meta_delete(ALARM_TREE, &key).map(|existed| {
                                alarms.push((a.member_id, a.alarm, false));
                                WriteResult::Alarm(if existed {
                                    vec![(a.member_id, a.alarm)]
                                } else {
                                    Vec::new()
                                })
                            })
                        }
                        _ => Ok(WriteResult::Alarm(Vec::new())),
                    }
                }
                Some(Request::MemberAttributes(m)) => {
                    // Only the name and client URLs are the member's to publish.
                    crate::members::get_in(&mut tx, m.id).and_then(|cur| match cur {
                        Some(mut cur) => {
                            cur.name = m.name;
                            cur.client_ur_ls = m.client_ur_ls;
                            crate::members::put(&mut tx, &cur).map(|()| WriteResult::Member)
                        }
                        // Removed meanwhile: nothing to update.
                        None => Ok(WriteResult::Member),
                    })
                }
                // The auth changes.
                Some(r) => match self.auth.apply(&mut tx, &r, who.as_ref(), e.index) {
                    Ok(Ok(o)) => Ok(WriteResult::Auth(o)),
                    Ok(Err(denied)) => {
                        outs.push(Err(denied));
                        continue;
                    }
                    Err(err) => Err(err),
                },
                None => return Err(format!("entry {} holds an empty request", e.index)),
            };
            match out {
                Ok(r) => outs.push(Ok(r)),
                Err(e) if is_fatal(&e) => return Err(fatal(e)),
                Err(e) => outs.push(Err(EtcdError::from(e))),
            }
        }
        tx.set_marker(&applied.encode()).map_err(fatal)?;
        let started = std::time::Instant::now();
        let rev = tx.commit().map_err(fatal)?;
        self.metrics.backend_commit.observe(started.elapsed());
        if applying.elapsed() > SLOW_APPLY {
            self.metrics
                .slow_applies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.revision_tx.send_replace(rev);
        for (id, ttl) in granted {
            self.lessor.granted(id, ttl);
        }
        for id in revoked {
            self.lessor.revoked(id);
        }
        for (m, a, on) in alarms {
            self.alarms.set(m, a, on);
        }
        if compacted {
            self.compactor.kick();
        }
        Ok(outs)
    }

    fn install(&mut self, snap: &etch_raft::Snapshot) -> Result<Applied, String> {
        let index = snap.get_metadata().index;
        let path = self
            .inbox
            .take(index)
            .ok_or_else(|| format!("no data was received for the snapshot at {index}"))?;
        let started = std::time::Instant::now();
        let applied = {
            let db = etch_engine::btree::Db::open(&path, etch_engine::btree::Options::default())
                .map_err(|e| format!("opening the received snapshot: {e}"))?;
            let src = db.begin_read().map_err(|e| e.to_string())?;
            let applied = Applied::decode(src.marker()).map_err(|e| e.to_string())?;
            if applied.index != index {
                return Err(format!(
                    "the received snapshot holds entry {} but raft expects {index}",
                    applied.index
                ));
            }
            self.store
                .replace_from(&src, &[crate::data_dir::CLUSTER_TREE])
                .map_err(fatal)?;
            applied
        };
        let _ = std::fs::remove_file(&path);
        // Readers see the new data from the swap on, so the mirrors of leases, alarms and
        // auth follow it at once, not after the (slow) sync below.
        self.lessor.reload(&self.store, self.lease_extend)?;
        self.alarms.reload(&self.store)?;
        self.auth.reload(&self.store)?;
        self.revision_tx.send_replace(self.store.current_revision());
        // Durable before raft counts the snapshot as persisted.
        self.store.checkpoint().map_err(fatal)?;
        self.compactor.kick();
        self.metrics
            .snapshot_installs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.snapshot_install.observe(started.elapsed());
        tracing::info!(
            index,
            revision = self.store.current_revision(),
            took_ms = started.elapsed().as_millis() as u64,
            "installed the leader's snapshot"
        );
        Ok(applied)
    }
}

/// Removes compacted history in the background, in short steps, so writers never wait
/// long; `physical` compactions wait for it.
pub struct Compactor {
    state: Mutex<CompactState>,
    cv: Condvar,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor").finish()
    }
}

#[derive(Default)]
struct CompactState {
    work: bool,
    stop: bool,
    /// History is physically removed up to here.
    done: i64,
    failed: Option<String>,
}

impl Compactor {
    pub fn start(store: Arc<Store>) -> (Arc<Compactor>, JoinHandle<()>) {
        let c = Arc::new(Compactor {
            state: Mutex::new(CompactState {
                // A compaction interrupted by a restart resumes.
                work: true,
                ..Default::default()
            }),
            cv: Condvar::new(),
        });
        let c2 = c.clone();
        let h = std::thread::Builder::new()
            .name("etch-compact".into())
            .spawn(move || c2.run(&store))
            .expect("spawning the compactor thread");
        (c, h)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CompactState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn kick(&self) {
        self.lock().work = true;
        self.cv.notify_all();
    }

    pub fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// Waits until history below `rev` is physically gone (or compaction failed).
    pub fn wait_done(&self, rev: i64, timeout: Duration) -> Result<(), EtcdError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.done >= rev {
                return Ok(());
            }
            if let Some(why) = &st.failed {
                return Err(EtcdError::Internal(why.clone()));
            }
            let now = std::time::Instant::now();
            if now >= deadline || st.stop {
                return Err(EtcdError::Timeout);
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn run(&self, store: &Store) {
        loop {
            {
                let mut st = self.lock();
                while !st.work && !st.stop {
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop {
                    return;
                }
                st.work = false;
            }
            loop {
                match store.compact_step(1000, Duration::from_millis(10)) {
                    Ok(p) => {
                        let mut st = self.lock();
                        st.done = st.done.max(p.done_revision);
                        self.cv.notify_all();
                        if p.finished || st.stop {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!("compaction: {e}");
                        self.lock().failed = Some(format!("etch: compaction: {e}"));
                        self.cv.notify_all();
                        return;
                    }
                }
                // Let writers in between steps.
                std::thread::yield_now();
            }
        }
    }
}
