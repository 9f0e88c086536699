//! The lessor: lease deadlines, kept in memory.
//!
//! Leases are data (granted, revoked and checkpointed through Raft, stored in the MVCC
//! store); their deadlines are the leader's, kept here: a keep-alive moves a deadline
//! without a Raft round, as in etcd. The expiry and checkpoint tasks (in `lease.rs`) read
//! the expired leases and the remaining TTLs from here.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etch_engine::mvcc::Store;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::pb::etcdserverpb as pb;

/// etcd's largest TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Revokes proposed per expiry round (etcd revokes at most 1000 leases a second).
const REVOKE_BATCH: usize = 1000;
/// A lease whose revoke was proposed is retried after this long if it still exists.
const REVOKE_RETRY: Duration = Duration::from_secs(3);
/// How often remaining TTLs are checkpointed (etcd's default).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Held {
    ttl: i64,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<i64, Held>,
    by_deadline: BTreeSet<(Instant, i64)>,
}

impl State {
    fn set(&mut self, id: i64, ttl: i64, deadline: Instant) {
        if let Some(old) = self.leases.insert(id, Held { ttl, deadline }) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    fn remove(&mut self, id: i64) -> bool {
        match self.leases.remove(&id) {
            Some(old) => {
                self.by_deadline.remove(&(old.deadline, id));
                true
            }
            None => false,
        }
    }
}

/// Lease deadlines.
#[derive(Debug)]
pub struct Lessor {
    state: Mutex<State>,
    /// Wakes the expiry task when the earliest deadline may have moved earlier.
    pub changed: Notify,
    /// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds.
    pub min_ttl: i64,
}

impl Lessor {
    /// Loads every stored lease; each gets its checkpointed remaining TTL (or its full
    /// TTL) plus `extend`, as etcd extends leases when a leader takes over.
    pub fn load(store: &Store, min_ttl: i64, extend: Duration) -> Result<Arc<Lessor>, String> {
        Ok(Arc::new(Lessor {
            state: Mutex::new(Self::read(store, extend)?),
            changed: Notify::new(),
            min_ttl,
        }))
    }

    fn read(store: &Store, extend: Duration) -> Result<State, String> {
        let now = Instant::now();
        let mut st = State::default();
        for l in store
            .read()
            .map_err(|e| e.to_string())?
            .leases()
            .map_err(|e| e.to_string())?
        {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            st.set(l.id, l.ttl, now + extend + secs(left));
        }
        Ok(st)
    }

    /// Rebuilds every deadline from the store, as `load` does: when this member becomes
    /// leader (its deadlines were not renewed while it followed; etcd's promote), and
    /// after a snapshot replaced the leases.
    pub fn reload(&self, store: &Store, extend: Duration) -> Result<(), String> {
        // Read under the lock: a grant or revoke applied meanwhile lands after the swap
        // rather than in the state being replaced.
        let mut held = self.lock();
        *held = Self::read(store, extend)?;
        drop(held);
        self.changed.notify_one();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A grant was applied.
    pub fn granted(&self, id: i64, ttl: i64) {
        self.lock().set(id, ttl, Instant::now() + secs(ttl));
        self.changed.notify_one();
    }

    /// A revoke was applied.
    pub fn revoked(&self, id: i64) {
        self.lock().remove(id);
    }

    /// Keep-alive: the TTL, or None for an unknown lease.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.lock();
        let ttl = st.leases.get(&id)?.ttl;
        st.set(id, ttl, Instant::now() + secs(ttl));
        Some(ttl)
    }

    /// (granted TTL, seconds left) of a live lease.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let st = self.lock();
        let h = st.leases.get(&id)?;
        let left = h.deadline.saturating_duration_since(Instant::now());
        Some((h.ttl, left.as_secs() as i64))
    }

    /// Every lease held, soonest to expire first (etcd lists leases in this order).
    pub fn by_expiry(&self) -> Vec<i64> {
        self.lock().by_deadline.iter().map(|(_, id)| *id).collect()
    }

    pub fn exists(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Up to `REVOKE_BATCH` expired leases, each pushed back by `REVOKE_RETRY` so one
    /// revoke in flight is not proposed again; and the next deadline.
    pub fn take_expired(&self) -> (Vec<i64>, Option<Instant>) {
        let now = Instant::now();
        let mut st = self.lock();
        let mut out = Vec::new();
        while out.len() < REVOKE_BATCH {
            match st.by_deadline.first().copied() {
                Some((d, id)) if d <= now => {
                    let ttl = st.leases[&id].ttl;
                    st.set(id, ttl, now + REVOKE_RETRY);
                    out.push(id);
                }
                _ => break,
            }
        }
        let next = st.by_deadline.first().map(|(d, _)| *d);
        (out, next)
    }

    /// Remaining TTLs of leases that have used some of theirs.
    pub fn checkpoints(&self) -> Vec<pb::LeaseCheckpoint> {
        let now = Instant::now();
        self.lock()
            .leases
            .iter()
            .filter_map(|(id, h)| {
                let left = h.deadline.saturating_duration_since(now).as_secs() as i64;
                (left < h.ttl).then_some(pb::LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: left.max(1),
                })
            })
            .collect()
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// etcd's minimum lease TTL for the given timing.
pub fn min_ttl(heartbeat: Duration, election_ticks: usize) -> i64 {
    let t = heartbeat.as_secs_f64() * (3 * election_ticks) as f64 / 2.0;
    t.ceil() as i64
}
