//! Member and cluster ids, computed as etcd computes them, so a default etch has the ids a
//! default etcd has.

/// First 8 bytes of SHA-1 of `b`, big-endian.
fn sha1_u64(b: &[u8]) -> u64 {
    let d = sha1_smol::Sha1::from(b).digest().bytes();
    u64::from_be_bytes(d[..8].try_into().expect("SHA-1 has 20 bytes"))
}

/// A member's id from its peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    sha1_u64(&b)
}

/// The cluster id from its members' ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let b: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    sha1_u64(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_etcd() {
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(m, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[m]), 0xcdf818194e3a8c32);
    }
}
