//! Feeds arbitrary bytes to WAL replay as the body of a segment (behind a valid header, so
//! the record scanner is reached): replay must return records or an error, never panic,
//! hang or allocate without bound.
#![no_main]

use etch_engine::wal::{self, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { segment_bytes: 1 << 20, inflight_bytes_max: 1 << 16, ..Options::default() };
    let (first, rest) = data.split_at(data.len().min(1));
    let mut seg = wal::segment_header_for_tools(0, u64::from(first.first().copied().unwrap_or(0)) * 64 + 64);
    seg.extend_from_slice(rest);
    std::fs::write(dir.path().join("0000000000000000-0000000000000000.wal"), &seg).expect("write");
    let mut n = 0u64;
    let _ = wal::read_dir(dir.path(), &opts, 0, |r| {
        n += r.payload.len() as u64 + 1;
        Ok(())
    });
    assert!(n <= data.len() as u64 * 2 + 1);
});
