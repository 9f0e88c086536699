//! Damages a real bbolt file (branch and leaf pages, an overflow value, an empty bucket)
//! with arbitrary byte changes past its meta pages, or replaces it with arbitrary bytes:
//! the reader must list buckets and keys or return an error, never panic, hang or
//! allocate without bound.
#![no_main]

use etch_engine::bolt::{Reader, Writer};
use libfuzzer_sys::fuzz_target;

fn good_file(path: &std::path::Path) -> Vec<u8> {
    let mut w = Writer::create(path).expect("create");
    let mut b = w.bucket(b"key").expect("bucket");
    for i in 0..600u32 {
        b.put(&i.to_be_bytes(), &[i as u8; 20]).expect("put");
    }
    b.finish().expect("finish");
    let mut b = w.bucket(b"big").expect("bucket");
    b.put(b"v", &[7u8; 9000]).expect("put");
    b.finish().expect("finish");
    w.bucket(b"empty").expect("bucket").finish().expect("finish");
    w.finish().expect("finish");
    std::fs::read(path).expect("read")
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let bytes = if data.first().is_some_and(|b| b & 1 == 1) {
        let mut f = good_file(&dir.path().join("good"));
        // (offset, value) pairs: the offset counts from the first page after the metas.
        let body = f.len() - 2 * 4096;
        for c in data[1..].chunks_exact(4) {
            let off = u32::from_le_bytes([c[0], c[1], c[2], 0]) as usize % body;
            f[2 * 4096 + off] = c[3];
        }
        f
    } else {
        data.to_vec()
    };
    std::fs::write(&path, &bytes).expect("write");
    let Ok(r) = Reader::open(&path, None) else { return };
    let Ok(buckets) = r.buckets(&r.root()) else { return };
    let mut n = 0u64;
    for (_, b) in buckets.iter().take(64) {
        let _ = r.for_each(b, &mut |k, v| {
            n += (k.len() + v.len()) as u64;
            Ok(n < 1 << 26)
        });
    }
});
