//! Deterministic keys and values.
//!
//! Keys are 16–64 bytes (length uniform over 16..=64, mean 40): 16 lowercase hex digits of
//! a 64-bit id, then filler letters. Sequential keys use the id `i`, so they sort in
//! insertion order; random keys use `mix(i)`, a bijection, so they are distinct and land
//! all over the key space.
//!
//! Values are 256 B–4 KiB: 60 % uniform in 256..=1024, 30 % in 1025..=2048, 10 % in
//! 2049..=4096 (mean ≈ 1152 B), length fixed by the id. Their bytes are pseudo-random (not
//! compressible), taken from a shared buffer at an offset picked by id and version, so an
//! overwrite with a new version changes the content but not the length.

/// splitmix64's finaliser: a fast bijective mix of 64 bits.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Shortest and longest key.
pub const KEY_MIN: usize = 16;
pub const KEY_MAX: usize = 64;
/// Shortest and longest value.
pub const VALUE_MIN: usize = 256;
pub const VALUE_MAX: usize = 4096;

/// Which id the `i`-th key is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyGen {
    /// Key `i` sorts after key `i - 1`.
    Sequential,
    /// Keys in random order (distinct for distinct `i`).
    Random,
}

impl KeyGen {
    fn id(self, i: u64) -> u64 {
        match self {
            KeyGen::Sequential => i,
            KeyGen::Random => mix(i),
        }
    }

    /// Writes the `i`-th key into `out` (cleared first).
    pub fn key(self, i: u64, out: &mut Vec<u8>) {
        let id = self.id(i);
        out.clear();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for shift in (0..16).rev() {
            out.push(HEX[((id >> (shift * 4)) & 0xf) as usize]);
        }
        let h = mix(id ^ 0x6b65_795f_6c65_6e00);
        let len = KEY_MIN + (h % (KEY_MAX - KEY_MIN + 1) as u64) as usize;
        let mut f = h;
        while out.len() < len {
            f = mix(f);
            out.push(b'a' + (f % 26) as u8);
        }
    }

    /// The `i`-th key, allocated.
    pub fn key_vec(self, i: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(KEY_MAX);
        self.key(i, &mut k);
        k
    }
}

/// Value length for a key id (see the module docs for the mix).
pub fn value_len(id: u64) -> usize {
    let h = mix(id ^ 0x7661_6c5f_6c65_6e00);
    let r = (h >> 40) % 100;
    let x = h & 0xffff_ffff;
    match r {
        0..60 => 256 + (x % 769) as usize,
        60..90 => 1025 + (x % 1024) as usize,
        _ => 2049 + (x % 2048) as usize,
    }
}

/// Source of value bytes.
#[derive(Debug)]
pub struct Values {
    buf: Vec<u8>,
}

impl Default for Values {
    fn default() -> Self {
        Self::new()
    }
}

impl Values {
    pub fn new() -> Values {
        let mut buf = Vec::with_capacity(2 * VALUE_MAX);
        let mut s = 0x5eed_u64;
        while buf.len() < 2 * VALUE_MAX {
            s = mix(s);
            buf.extend_from_slice(&s.to_le_bytes());
        }
        Values { buf }
    }

    /// The value stored under key id `i` at `version`; its length depends on `i` only.
    pub fn value(&self, i: u64, version: u64) -> &[u8] {
        let len = value_len(i);
        let off = (mix(i ^ version.rotate_left(32)) % VALUE_MAX as u64) as usize;
        &self.buf[off..off + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_promised_shape() {
        let mut prev = Vec::new();
        let mut k = Vec::new();
        for i in 0..10_000 {
            KeyGen::Sequential.key(i, &mut k);
            assert!((KEY_MIN..=KEY_MAX).contains(&k.len()));
            assert!(k > prev, "sequential keys ascend");
            prev.clone_from(&k);
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(KeyGen::Random.key_vec(i)));
        }
    }

    #[test]
    fn values_have_the_promised_mix() {
        let v = Values::new();
        let n = 100_000u64;
        let mut total = 0usize;
        let mut buckets = [0u64; 3];
        for i in 0..n {
            let len = v.value(i, 0).len();
            assert_eq!(len, v.value(i, 7).len());
            assert!((VALUE_MIN..=VALUE_MAX).contains(&len));
            total += len;
            buckets[match len {
                0..=1024 => 0,
                1025..=2048 => 1,
                _ => 2,
            }] += 1;
        }
        let mean = total as f64 / n as f64;
        assert!((1100.0..1200.0).contains(&mean), "mean {mean}");
        assert!((59_000..61_000).contains(&buckets[0]), "{buckets:?}");
        assert!((29_000..31_000).contains(&buckets[1]), "{buckets:?}");
    }
}
