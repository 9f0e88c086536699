//! etcd's encodings of the data etch shares with it: the revision keys and
//! `mvccpb.KeyValue` values of its backend's `key` bucket, and the CRC-32C its hashes use.
//! (HashKV hashes these bytes, and etcd-format backups store them.)

use super::{KeyValue, Revision};

/// etcd's revision key: 8-byte big-endian main, `_`, 8-byte big-endian sub, and `t`
/// after them for a tombstone.
pub fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Splits an etcd revision key into its revision and tombstone mark.
pub fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    Some((Revision { main, sub }, tombstone))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `mvccpb.KeyValue` in protobuf's encoding as etcd writes it: fields in number order,
/// zero and empty ones left out. A tombstone's value holds only the key.
pub fn encode_key_value(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(kv.key.len() + kv.value.len() + 40);
    let bytes = |out: &mut Vec<u8>, field: u64, b: &[u8]| {
        if !b.is_empty() {
            varint(out, (field << 3) | 2);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    };
    let int = |out: &mut Vec<u8>, field: u64, v: i64| {
        if v != 0 {
            varint(out, field << 3);
            varint(out, v as u64);
        }
    };
    bytes(&mut out, 1, &kv.key);
    if tombstone {
        return out;
    }
    int(&mut out, 2, kv.create_revision);
    int(&mut out, 3, kv.mod_revision);
    int(&mut out, 4, kv.version);
    bytes(&mut out, 5, &kv.value);
    int(&mut out, 6, kv.lease);
    out
}

/// CRC-32 with the Castagnoli polynomial.
#[derive(Debug, Clone)]
pub struct Crc32c {
    table: [u32; 256],
    crc: u32,
}

impl Default for Crc32c {
    fn default() -> Self {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc32c { table, crc: !0 }
    }
}

impl Crc32c {
    /// Continues a CRC whose value so far is `crc` (0 starts afresh).
    pub fn resume(crc: u32) -> Crc32c {
        Crc32c {
            crc: !crc,
            ..Crc32c::default()
        }
    }

    pub fn update(&mut self, b: &[u8]) {
        let mut c = self.crc;
        for &x in b {
            c = self.table[((c ^ u32::from(x)) & 0xff) as usize] ^ (c >> 8);
        }
        self.crc = c;
    }

    pub fn finish(&self) -> u32 {
        !self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_by_revision() {
        let a = revision_key(Revision { main: 5, sub: 0 }, false);
        let b = revision_key(Revision { main: 5, sub: 1 }, true);
        let c = revision_key(Revision { main: 6, sub: 0 }, false);
        assert!(a < b && b < c);
        assert_eq!(
            parse_revision_key(&b),
            Some((Revision { main: 5, sub: 1 }, true))
        );
        assert_eq!(parse_revision_key(&a[..16]), None);
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut h = Crc32c::default();
        h.update(b"123456789");
        assert_eq!(h.finish(), 0xE306_9283);
    }

    #[test]
    fn key_values_encode_as_protobuf() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 1,
            value: Vec::new(),
            lease: 0,
        };
        assert_eq!(
            encode_key_value(&kv, false),
            vec![0x0a, 1, b'k', 0x10, 2, 0x18, 0xac, 0x02, 0x20, 1]
        );
        assert_eq!(encode_key_value(&kv, true), vec![0x0a, 1, b'k']);
    }
}
