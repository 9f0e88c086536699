//! Encodings of the MVCC trees' keys and values.
//!
//! - `keys` tree: `esc(user key) ‖ 00 01 ‖ !main (u64 BE) ‖ !sub (u64 BE)` → [`KvRecord`].
//!   Each user key's versions sit together, newest first, so "the version at revision R"
//!   is one seek. `esc` doubles every 0x00 as 00 FF, which keeps byte order.
//! - `revs` tree: `main (u64 BE) ‖ sub (u64 BE)` → `flags u8 ‖ user key`: the change feed.
//! - `lease_keys` tree: `lease id (u64 BE) ‖ user key` → empty.

use super::Revision;

const TERMINATOR: [u8; 2] = [0x00, 0x01];
/// Sorts after every revision suffix of a user key, before any longer user key.
pub(crate) const PAST_KEY: [u8; 2] = [0x00, 0x02];

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// Prefix shared by every version of `key`.
pub(crate) fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 18);
    escape_into(&mut out, key);
    out.extend_from_slice(&TERMINATOR);
    out
}

/// Tree key of `key` at `rev`.
pub(crate) fn key_at(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = key_prefix(key);
    out.extend_from_slice(&(!(rev.main as u64)).to_be_bytes());
    out.extend_from_slice(&(!(rev.sub as u64)).to_be_bytes());
    out
}

/// Seek target for the newest version of `key` with main revision ≤ `main`.
pub(crate) fn key_at_or_before(key: &[u8], main: i64) -> Vec<u8> {
    key_at(
        key,
        Revision {
            main,
            sub: i64::MAX,
        },
    )
}

/// Seek target just past every version of `key`.
#[cfg(test)]
pub(crate) fn key_past(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(&mut out, key);
    out.extend_from_slice(&PAST_KEY);
    out
}

/// Seek target for the first version of any key ≥ `key`.
pub(crate) fn key_start(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(&mut out, key);
    out
}

/// Splits a `keys` tree key into the user key and revision. None if malformed.
pub(crate) fn decode_key(k: &[u8]) -> Option<(Vec<u8>, Revision)> {
    if k.len() < 18 {
        return None;
    }
    let (body, rev) = k.split_at(k.len() - 16);
    let body = body.strip_suffix(&TERMINATOR)?;
    let mut user = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        user.push(body[i]);
        if body[i] == 0 {
            if body.get(i + 1) != Some(&0xFF) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    let main = !u64::from_be_bytes(rev[..8].try_into().ok()?);
    let sub = !u64::from_be_bytes(rev[8..].try_into().ok()?);
    Some((
        user,
        Revision {
            main: main as i64,
            sub: sub as i64,
        },
    ))
}

/// Whether tree key `k` is a version of the user key whose prefix is `prefix`.
pub(crate) fn is_version_of(k: &[u8], prefix: &[u8]) -> bool {
    k.len() == prefix.len() + 16 && k.starts_with(prefix)
}

/// Revision of a `keys` tree key (the last 16 bytes).
pub(crate) fn key_revision(k: &[u8]) -> Revision {
    let n = k.len();
    let main = !u64::from_be_bytes(k[n - 16..n - 8].try_into().expect("8 bytes"));
    let sub = !u64::from_be_bytes(k[n - 8..].try_into().expect("8 bytes"));
    Revision {
        main: main as i64,
        sub: sub as i64,
    }
}

pub(crate) fn rev_key(rev: Revision) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(rev.main as u64).to_be_bytes());
    k[8..].copy_from_slice(&(rev.sub as u64).to_be_bytes());
    k
}

pub(crate) fn decode_rev_key(k: &[u8]) -> Option<Revision> {
    if k.len() != 16 {
        return None;
    }
    Some(Revision {
        main: u64::from_be_bytes(k[..8].try_into().ok()?) as i64,
        sub: u64::from_be_bytes(k[8..].try_into().ok()?) as i64,
    })
}

pub(crate) const FLAG_TOMBSTONE: u8 = 1;

/// A version's stored fields (key and mod revision live in the tree key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvRecord<'a> {
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: &'a [u8],
}

pub(crate) fn encode_kv(r: &KvRecord<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + r.value.len());
    out.push(if r.tombstone { FLAG_TOMBSTONE } else { 0 });
    out.extend_from_slice(&r.create_revision.to_le_bytes());
    out.extend_from_slice(&r.version.to_le_bytes());
    out.extend_from_slice(&r.lease.to_le_bytes());
    out.extend_from_slice(r.value);
    out
}

pub(crate) fn decode_kv(v: &[u8]) -> Option<KvRecord<'_>> {
    if v.len() < 25 {
        return None;
    }
    Some(KvRecord {
        tombstone: v[0] & FLAG_TOMBSTONE != 0,
        create_revision: i64::from_le_bytes(v[1..9].try_into().ok()?),
        version: i64::from_le_bytes(v[9..17].try_into().ok()?),
        lease: i64::from_le_bytes(v[17..25].try_into().ok()?),
        value: &v[25..],
    })
}

pub(crate) fn lease_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&(lease as u64).to_be_bytes());
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding_preserves_order_and_roundtrips() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"a\x01",
            b"ab",
            b"b",
        ];
        let mut enc = Vec::new();
        for k in &keys {
            for main in [9i64, 5, 1] {
                for sub in [3i64, 0] {
                    let e = key_at(k, Revision { main, sub });
                    assert_eq!(decode_key(&e), Some((k.to_vec(), Revision { main, sub })));
                    assert!(is_version_of(&e, &key_prefix(k)));
                    enc.push(e);
                }
            }
            assert!(
                key_start(k)
                    <= key_at(
                        k,
                        Revision {
                            main: i64::MAX,
                            sub: i64::MAX
                        }
                    )
            );
            assert!(key_past(k) > key_at(k, Revision { main: 0, sub: 0 }));
        }
        let mut sorted = enc.clone();
        sorted.sort();
        assert_eq!(sorted, enc, "user key ascending, then revision descending");
        for w in keys.windows(2) {
            assert!(key_past(w[0]) <= key_start(w[1]));
        }
    }
}
