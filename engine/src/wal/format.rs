//! Byte layout of WAL segments and records, and the scan that replays one segment.
//! See `docs/wal-format.md`.

use std::path::Path;

use super::{Error, RecordKind, Result};
use crate::util::{rd_u32, rd_u64};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"ETCHWAL1";
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Bytes before the first record of a segment.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 24;

/// Record size on disk: header + payload, padded to 8 bytes.
pub(crate) fn record_len(payload_len: usize) -> usize {
    (RECORD_HEADER_LEN + payload_len).next_multiple_of(8)
}

/// Appends one framed record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, kind: RecordKind, index: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.push(kind as u8);
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(start + record_len(payload.len()), 0);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start + 8..start + RECORD_HEADER_LEN]);
    h.update(payload);
    let crc = h.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub(crate) fn encode_segment_header(seq: u64, window: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    b[..8].copy_from_slice(SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&window.to_le_bytes());
    let crc = crc32fast::hash(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a segment header; returns the tail window it records.
pub(crate) fn decode_segment_header(b: &[u8], seq: u64, path: &Path) -> Result<u64> {
    let bad = |reason: String| {
        Err(Error::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            reason,
        })
    };
    if b.len() < SEGMENT_HEADER_LEN {
        return bad("segment shorter than its header".into());
    }
    if crc32fast::hash(&b[..32]) != rd_u32(b, 32) || &b[..8] != SEGMENT_MAGIC {
        return bad("bad segment header".into());
    }
    if rd_u32(b, 8) != SEGMENT_VERSION {
        return bad(format!("unsupported segment version {}", rd_u32(b, 8)));
    }
    if rd_u64(b, 16) != seq {
        return bad(format!(
            "header names segment {} but the file name says {seq}",
            rd_u64(b, 16)
        ));
    }
    Ok(rd_u64(b, 24))
}

/// One record found in a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found<'a> {
    pub offset: usize,
    pub kind: RecordKind,
    pub index: u64,
    pub payload: &'a [u8],
    pub end: usize,
}

/// What lies at `off`: a valid record, the zeroed end of the log, or something invalid.
pub(crate) enum Slot<'a> {
    Record(Found<'a>),
    End,
    Invalid(&'static str),
}

pub(crate) fn read_slot(b: &[u8], off: usize, record_max: usize) -> Slot<'_> {
    if off + RECORD_HEADER_LEN > b.len() {
        return if b[off.min(b.len())..].iter().all(|&x| x == 0) {
            Slot::End
        } else {
            Slot::Invalid("truncated record header")
        };
    }
    let h = &b[off..off + RECORD_HEADER_LEN];
    if h.iter().all(|&x| x == 0) {
        return Slot::End;
    }
    let len = rd_u32(h, 0) as usize;
    let Some(kind) = RecordKind::from_u8(h[8]) else {
        return Slot::Invalid("unknown record type");
    };
    if len > record_max {
        return Slot::Invalid("record length beyond the limit");
    }
    let end = off + record_len(len);
    if end > b.len() {
        return Slot::Invalid("record runs past the segment end");
    }
    let payload = &b[off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + len];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..]);
    hasher.update(payload);
    if hasher.finalize() != rd_u32(h, 4) {
        return Slot::Invalid("checksum mismatch");
    }
    Slot::Record(Found {
        offset: off,
        kind,
        index: rd_u64(h, 16),
        payload,
        end,
    })
}

/// The result of scanning one segment.
pub(crate) struct Scan<'a> {
    pub records: Vec<Found<'a>>,
    /// Offset just past the last valid record: where appends continue.
    pub tail: usize,
    /// End of the bytes past `tail` that must be zeroed before appending (a torn batch).
    pub dirty_end: usize,
}

/// Scans a segment's records. In the last segment, an invalid record is a torn tail (and
/// everything from it on is discarded) only if no valid record starts `window` or more
/// bytes after it: the writer never has more than `window` unsynced bytes. Anywhere else
/// an invalid record is corruption.
pub(crate) fn scan<'a>(
    b: &'a [u8],
    path: &Path,
    last: bool,
    window: usize,
    record_max: usize,
) -> Result<Scan<'a>> {
    let mut records = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    loop {
        match read_slot(b, off, record_max) {
            Slot::Record(f) => {
                records.push(f);
                off = f.end;
            }
            Slot::End | Slot::Invalid(_) if off >= b.len() => {
                return Ok(Scan {
                    records,
                    tail: off,
                    dirty_end: off,
                });
            }
            slot => {
                let reason = match slot {
                    Slot::Invalid(r) => r,
                    _ => "zeroed record header",
                };
                // Look past the stop for records that would prove this is not the end.
                let (beyond, dirty_end) = later_records(b, off, window, record_max);
                if beyond.is_none() && (last || dirty_end == off) {
                    return Ok(Scan {
                        records,
                        tail: off,
                        dirty_end,
                    });
                }
                let at = beyond.unwrap_or(off);
                let reason = if matches!(slot, Slot::End) || !last {
                    format!("{reason}, with valid records after it (at offset {at})")
                } else {
                    format!(
                        "{reason}, followed by valid records beyond the torn-write window (at offset {at})"
                    )
                };
                return Err(Error::Corrupt {
                    segment: path.to_path_buf(),
                    offset: off as u64,
                    reason,
                });
            }
        }
    }
}

/// Looks for valid records after `off`. Returns the offset of the first one at or beyond
/// `off + window` (proof of corruption), and the end of the last non-zero 8-byte word
/// seen before that (the extent of a torn batch).
fn later_records(b: &[u8], off: usize, window: usize, record_max: usize) -> (Option<usize>, usize) {
    let mut dirty_end = off;
    let mut at = off;
    let limit = b.len();
    while at + 8 <= limit {
        if b[at..at + 8] != [0u8; 8] {
            if let Slot::Record(f) = read_slot(b, at, record_max) {
                if at >= off + window {
                    return (Some(at), dirty_end);
                }
                dirty_end = dirty_end.max(f.end);
                at = f.end;
                continue;
            }
            dirty_end = dirty_end.max(at + 8);
        }
        at += 8;
    }
    (None, dirty_end)
}
