//! Drives the B+tree with an operation sequence decoded from the fuzzer's bytes and checks
//! it against a `BTreeMap` model, including power cuts that drop or tear unsynced writes.
#![no_main]

use std::collections::BTreeMap;

use etch_engine::btree::{Db, Options, SimFile};
use libfuzzer_sys::fuzz_target;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

fn opts() -> Options {
    Options { page_size: 512, map_reserve_bytes: 1 << 28, checkpoint_bytes: u64::MAX }
}

fn key(b: u8, len: u8) -> Vec<u8> {
    let mut k = vec![b % 64];
    // Occasionally a key long enough to need an overflow run.
    let extra = if len > 250 { 300 } else { (len % 16) as usize };
    k.extend(std::iter::repeat_n(b, extra));
    k
}

fn value(seed: u8, len: u8) -> Vec<u8> {
    let n = if len > 240 { len as usize * 8 } else { len as usize % 64 };
    (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut generation = 0;
    let mut sim = SimFile::create(&dir.path().join("f0")).expect("sim");
    let mut db = Some(Db::open_with(Box::new(sim.clone()), opts()).expect("open"));
    let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut durable = committed.clone();
    let mut input = Bytes(data);
    let mut ops = 0;
    while let Some(op) = input.byte() {
        ops += 1;
        if ops > 200 {
            break;
        }
        let d = db.as_ref().expect("open");
        match op % 8 {
            0..=3 => {
                let mut w = d.begin_write().expect("begin");
                let t = w.open_tree(b"t").expect("tree");
                let mut pending = committed.clone();
                let n = input.byte().unwrap_or(1) % 16;
                for _ in 0..n {
                    let (Some(a), Some(b), Some(c)) = (input.byte(), input.byte(), input.byte()) else { break };
                    if a & 0x80 == 0 {
                        let (k, v) = (key(a, b), value(c, b));
                        w.put(t, &k, &v).expect("put");
                        pending.insert(k, v);
                    } else {
                        let k = key(a & 0x7f, b);
                        assert_eq!(w.delete(t, &k).expect("delete"), pending.remove(&k).is_some());
                    }
                }
                if op % 8 == 3 {
                    drop(w);
                } else {
                    w.commit().expect("commit");
                    committed = pending;
                }
            }
            4 => {
                d.checkpoint().expect("checkpoint");
                durable = committed.clone();
            }
            5 => {
                // Power cut: each unsynced write kept, dropped or torn, by the next bytes.
                sim.power_cut();
                let img = sim.crash_image(|_, sectors| match input.byte().unwrap_or(0) % 3 {
                    0 => None,
                    1 => Some(sectors),
                    _ => Some(sectors / 2),
                });
                drop(db.take());
                generation += 1;
                sim = SimFile::from_image(&dir.path().join(format!("f{generation}")), &img).expect("image");
                let d = Db::open_with(Box::new(sim.clone()), opts()).expect("reopen after power cut");
                d.check().expect("check after power cut");
                db = Some(d);
                committed = durable.clone();
            }
            _ => {
                let r = d.begin_read().expect("read");
                let got: BTreeMap<Vec<u8>, Vec<u8>> = match r.tree(b"t").expect("tree") {
                    None => BTreeMap::new(),
                    Some(t) => t.iter().map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<_, _>>().expect("iter"),
                };
                assert!(got == committed, "contents differ from the model");
            }
        }
    }
    if let Some(d) = db {
        d.check().expect("final check");
    }
});
