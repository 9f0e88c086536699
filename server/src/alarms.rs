//! The alarms (NOSPACE, CORRUPT) that gate writes: raised and cleared through Raft, stored
//! in the `etch.alarms` meta tree, mirrored in memory.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use etch_engine::mvcc::Store;

use crate::pb::etcdserverpb as pb;

/// Meta tree of raised alarms: key = member id (u64 BE) ‖ alarm type (i32 BE).
pub const ALARM_TREE: &[u8] = b"etch.alarms";

/// Raised alarms, mirrored in memory from the store.
#[derive(Debug, Default)]
pub struct Alarms {
    set: Mutex<BTreeSet<(u64, i32)>>,
}

pub fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = member.to_be_bytes().to_vec();
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

impl Alarms {
    pub fn load(store: &Store) -> Result<Arc<Alarms>, String> {
        Ok(Arc::new(Alarms {
            set: Mutex::new(Self::read(store)?),
        }))
    }

    /// Takes the alarms a new state holds (after a snapshot install).
    pub fn reload(&self, store: &Store) -> Result<(), String> {
        *self.lock() = Self::read(store)?;
        Ok(())
    }

    fn read(store: &Store) -> Result<BTreeSet<(u64, i32)>, String> {
        let snap = store.read().map_err(|e| e.to_string())?;
        let mut set = BTreeSet::new();
        for (k, _) in snap.meta_entries(ALARM_TREE).map_err(|e| e.to_string())? {
            if k.len() != 12 {
                return Err("corrupt alarm record in the data file".into());
            }
            let m = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            let a = i32::from_be_bytes(k[8..].try_into().expect("4 bytes"));
            set.insert((m, a));
        }
        Ok(set)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u64, i32)>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<(u64, i32)> {
        self.lock().iter().copied().collect()
    }

    pub fn has(&self, alarm: pb::AlarmType) -> bool {
        self.lock().iter().any(|(_, a)| *a == alarm as i32)
    }

    pub fn set(&self, member: u64, alarm: i32, on: bool) {
        let mut s = self.lock();
        if on {
            s.insert((member, alarm));
        } else {
            s.remove(&(member, alarm));
        }
    }
}

/// etcd's name of an alarm type.
pub fn alarm_name(a: i32) -> &'static str {
    match pb::AlarmType::try_from(a) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}
