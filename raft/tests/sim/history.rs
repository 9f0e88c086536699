//! The clients' key-value operations, their history, and a linearizability checker.
//!
//! Every write carries a unique value, which names it. The state machine keeps, per key,
//! the last write that changed it (a put, a delete, or a compare-and-swap that
//! succeeded); a read answers that write's value (0: never written). Reads name the write
//! they saw, and the log fixes the order of the writes, so checking linearizability needs
//! no search: per key (linearizability is local), the history is linearizable exactly when
//! this precedence graph has no cycle:
//! - the key's writes in log order (a failed compare-and-swap included: its outcome was
//!   decided at its place in the log);
//! - the write a read saw, before the read; the read, before the next write that changed
//!   the key;
//! - real time: an operation that returned before another was invoked, before it.
//!
//! A write whose client never heard back (a crash, a lost reply) has no end in real time;
//! one that never reached the log took no effect and is left out.

use std::collections::BTreeMap;

/// Keys the clients use: few, so operations on one key overlap.
pub const KEYS: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Delete,
    /// Put if the key's last change was the write `expect` (0: never written), like a
    /// transaction comparing a key's mod revision.
    Cas {
        expect: u64,
    },
}

/// A write as an entry's payload: value, key, kind, expected value.
pub fn encode(value: u64, key: u8, op: Op) -> Vec<u8> {
    let (kind, expect) = match op {
        Op::Put => (0u8, 0),
        Op::Delete => (1, 0),
        Op::Cas { expect } => (2, expect),
    };
    let mut v = Vec::with_capacity(18);
    v.extend_from_slice(&value.to_le_bytes());
    v.push(key);
    v.push(kind);
    v.extend_from_slice(&expect.to_le_bytes());
    v
}

pub fn decode(p: &[u8]) -> Option<(u64, u8, Op)> {
    if p.len() != 18 {
        return None;
    }
    let value = u64::from_le_bytes(p[..8].try_into().ok()?);
    let expect = u64::from_le_bytes(p[10..18].try_into().ok()?);
    let op = match p[9] {
        0 => Op::Put,
        1 => Op::Delete,
        2 => Op::Cas { expect },
        _ => return None,
    };
    Some((value, p[8], op))
}

/// Per key: the value of the last write that changed it.
pub type Kv = BTreeMap<u8, u64>;

/// Applies a write; returns whether it changed the key.
pub fn mutate(kv: &mut Kv, value: u64, key: u8, op: Op) -> bool {
    match op {
        Op::Put | Op::Delete => {
            kv.insert(key, value);
            true
        }
        Op::Cas { expect } => {
            let ok = kv.get(&key).copied().unwrap_or(0) == expect;
            if ok {
                kv.insert(key, value);
            }
            ok
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// `value` names the write; `changed` is what its client was told (a
    /// compare-and-swap's success), once it was told.
    Write {
        value: u64,
        op: Op,
        changed: Option<bool>,
    },
    /// The value of the write the read saw, once it returned.
    Read { saw: u64 },
}

#[derive(Debug, Clone)]
pub struct Call {
    pub key: u8,
    /// Simulated ms of the call and of its answer (None: no answer heard).
    pub invoked: u64,
    pub returned: Option<u64>,
    pub kind: Kind,
}

#[derive(Debug, Default)]
pub struct History {
    pub calls: Vec<Call>,
    /// The value each key's last returned read saw (a compare-and-swap's guess).
    pub last_seen: Kv,
}

impl History {
    pub fn invoke(&mut self, key: u8, now: u64, kind: Kind) -> usize {
        self.calls.push(Call {
            key,
            invoked: now,
            returned: None,
            kind,
        });
        self.calls.len() - 1
    }

    pub fn write_returned(&mut self, call: usize, now: u64, changed: bool) {
        let c = &mut self.calls[call];
        c.returned = Some(now);
        if let Kind::Write { changed: ch, .. } = &mut c.kind {
            *ch = Some(changed);
        }
    }

    pub fn read_returned(&mut self, call: usize, now: u64, saw: u64) {
        let c = &mut self.calls[call];
        c.returned = Some(now);
        if let Kind::Read { saw: s } = &mut c.kind {
            *s = saw;
        }
        self.last_seen.insert(c.key, saw);
    }

    /// Checks the history against the log everyone applied: `log` is the (value) of
    /// every write in log order. Returns what is wrong, if anything.
    pub fn check(&self, log: &[u64]) -> Result<CheckReport, String> {
        let writes: BTreeMap<u64, usize> = self
            .calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.kind {
                Kind::Write { value, .. } => Some((value, i)),
                Kind::Read { .. } => None,
            })
            .collect();
        // Replay the log: per key, its writes in order and whether each changed it.
        let mut kv = Kv::new();
        let mut per_key: BTreeMap<u8, Vec<(usize, bool)>> = BTreeMap::new();
        for v in log {
            let Some(&ci) = writes.get(v) else {
                return Err(format!("the log holds value {v}, which no client wrote"));
            };
            let c = &self.calls[ci];
            let Kind::Write { op, changed, .. } = c.kind else {
                unreachable!("indexed writes only")
            };
            let did = mutate(&mut kv, *v, c.key, op);
            if let Some(told) = changed
                && told != did
            {
                return Err(format!(
                    "write {v} on key {}: its client was told changed={told}, the log says {did}",
                    c.key
                ));
            }
            per_key.entry(c.key).or_default().push((ci, did));
        }
        let mut report = CheckReport::default();
        for key in 0..KEYS {
            let chain = per_key.remove(&key).unwrap_or_default();
            let reads: Vec<usize> = self
                .calls
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.key == key && c.returned.is_some() && matches!(c.kind, Kind::Read { .. })
                })
                .map(|(i, _)| i)
                .collect();
            report.reads += reads.len();
            report.writes += chain.len();
            check_key(&self.calls, key, &chain, &reads)?;
        }
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub writes: usize,
    pub reads: usize,
}

fn check_key(
    calls: &[Call],
    key: u8,
    chain: &[(usize, bool)],
    reads: &[usize],
) -> Result<(), String> {
    // Nodes: the chain's writes, then the reads.
    let nodes: Vec<usize> = chain
        .iter()
        .map(|(c, _)| *c)
        .chain(reads.iter().copied())
        .collect();
    let n = nodes.len();
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for w in 1..chain.len() {
        edges[w - 1].push(w);
    }
    // Where each changing write sits in the chain, by value.
    let value_at = |node: usize| match calls[nodes[node]].kind {
        Kind::Write { value, .. } => value,
        Kind::Read { .. } => unreachable!("writes come first"),
    };
    let changing: Vec<usize> = (0..chain.len()).filter(|&w| chain[w].1).collect();
    let pos_of: BTreeMap<u64, usize> = changing
        .iter()
        .enumerate()
        .map(|(k, &w)| (value_at(w), k))
        .collect();
    for (r, &ci) in reads.iter().enumerate() {
        let node = chain.len() + r;
        let Kind::Read { saw } = calls[ci].kind else {
            unreachable!("reads only")
        };
        let next = if saw == 0 {
            0
        } else {
            let Some(&k) = pos_of.get(&saw) else {
                return Err(format!(
                    "a read of key {key} saw value {saw}, which never changed that key"
                ));
            };
            edges[changing[k]].push(node);
            k + 1
        };
        if let Some(&w) = changing.get(next) {
            edges[node].push(w);
        }
    }
    // Real time, between every two calls that answered and were asked.
    for a in 0..n {
        let Some(done) = calls[nodes[a]].returned else {
            continue;
        };
        for (b, eb) in nodes.iter().enumerate() {
            if a != b && done < calls[*eb].invoked {
                edges[a].push(b);
            }
        }
    }
    // Kahn's algorithm: what is left over lies on a cycle.
    let mut indegree = vec![0usize; n];
    for e in &edges {
        for &b in e {
            indegree[b] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&x| indegree[x] == 0).collect();
    let mut seen = 0;
    while let Some(x) = ready.pop() {
        seen += 1;
        for &b in &edges[x] {
            indegree[b] -= 1;
            if indegree[b] == 0 {
                ready.push(b);
            }
        }
    }
    if seen == n {
        return Ok(());
    }
    let stuck: Vec<String> = (0..n)
        .filter(|&x| indegree[x] > 0)
        .take(8)
        .map(|x| format!("{:?}", calls[nodes[x]]))
        .collect();
    Err(format!(
        "the history of key {key} is not linearizable; calls on a cycle include:\n    {}",
        stuck.join("\n    ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(h: &mut History, key: u8, value: u64, t: (u64, u64)) {
        let c = h.invoke(
            key,
            t.0,
            Kind::Write {
                value,
                op: Op::Put,
                changed: None,
            },
        );
        h.write_returned(c, t.1, true);
    }

    fn read(h: &mut History, key: u8, saw: u64, t: (u64, u64)) {
        let c = h.invoke(key, t.0, Kind::Read { saw: 0 });
        h.read_returned(c, t.1, saw);
    }

    #[test]
    fn accepts_overlapping_reads_either_way() {
        let mut h = History::default();
        write(&mut h, 0, 1, (0, 10));
        write(&mut h, 0, 2, (20, 30));
        // Overlaps the second write: may see either.
        read(&mut h, 0, 1, (25, 40));
        read(&mut h, 0, 2, (26, 41));
        h.check(&[1, 2]).unwrap();
    }

    #[test]
    fn rejects_a_stale_read() {
        let mut h = History::default();
        write(&mut h, 0, 1, (0, 10));
        write(&mut h, 0, 2, (20, 30));
        read(&mut h, 0, 1, (40, 50));
        assert!(h.check(&[1, 2]).unwrap_err().contains("not linearizable"));
    }

    #[test]
    fn rejects_a_read_from_the_future_and_reads_going_back() {
        let mut h = History::default();
        write(&mut h, 0, 1, (20, 30));
        read(&mut h, 0, 1, (0, 10));
        assert!(h.check(&[1]).is_err());
        let mut h = History::default();
        write(&mut h, 0, 1, (0, 10));
        write(&mut h, 0, 2, (20, 100));
        read(&mut h, 0, 2, (30, 40));
        read(&mut h, 0, 1, (50, 60));
        assert!(h.check(&[1, 2]).is_err());
    }

    #[test]
    fn rejects_a_log_against_real_time_and_a_wrong_cas_answer() {
        let mut h = History::default();
        write(&mut h, 0, 1, (0, 10));
        write(&mut h, 0, 2, (20, 30));
        assert!(h.check(&[2, 1]).is_err());
        let mut h = History::default();
        let c = h.invoke(
            1,
            0,
            Kind::Write {
                value: 5,
                op: Op::Cas { expect: 9 },
                changed: None,
            },
        );
        h.write_returned(c, 10, true);
        assert!(h.check(&[5]).unwrap_err().contains("changed=true"));
    }
}
