//! The subject common name of a client certificate (DER), which `--client-cert-auth`
//! takes as the user name, as etcd does. A small reader of just the DER needed to reach
//! the subject; anything it does not understand yields no name.

/// One DER element: (tag, contents, rest).
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The certificate subject's common name: the last one, if there are several (as Go's
/// crypto/x509 reads it).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version, if present.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut subject, _) = element(rest)? else {
        return None;
    };
    let mut name = None;
    while !subject.is_empty() {
        let (SET, mut rdn, after) = element(subject)? else {
            return None;
        };
        subject = after;
        while !rdn.is_empty() {
            let (SEQUENCE, atv, after) = element(rdn)? else {
                return None;
            };
            rdn = after;
            let (OID, oid, value) = element(atv)? else {
                return None;
            };
            if oid == COMMON_NAME {
                // UTF8String, PrintableString, IA5String, T61String, BMPString…: the
                // first three are what certificates use; others are taken as bytes.
                let (_, v, _) = element(value)?;
                name = Some(String::from_utf8(v.to_vec()).ok()?);
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of a length-prefixed element.
    fn el(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn cert(subject: &[u8]) -> Vec<u8> {
        let mut tbs = el(0xa0, &el(0x02, &[2]));
        tbs.extend(el(0x02, &[1, 2, 3]));
        tbs.extend(el(SEQUENCE, &el(OID, &[0x2a, 0x86, 0x48])));
        tbs.extend(el(SEQUENCE, &[]));
        tbs.extend(el(SEQUENCE, &[0u8; 200]));
        tbs.extend(subject);
        el(SEQUENCE, &el(SEQUENCE, &tbs))
    }

    fn rdn(oid: &[u8], value: &str) -> Vec<u8> {
        let mut atv = el(OID, oid);
        atv.extend(el(0x0c, value.as_bytes()));
        el(SET, &el(SEQUENCE, &atv))
    }

    #[test]
    fn finds_the_common_name_after_other_attributes() {
        let mut s = rdn(&[0x55, 0x04, 0x0a], "org");
        s.extend(rdn(COMMON_NAME, "alice"));
        assert_eq!(
            common_name(&cert(&el(SEQUENCE, &s))).as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn no_name_and_garbage_give_none() {
        let s = rdn(&[0x55, 0x04, 0x0a], "org");
        assert_eq!(common_name(&cert(&el(SEQUENCE, &s))), None);
        let good = cert(&el(SEQUENCE, &rdn(COMMON_NAME, "bob")));
        for cut in 0..good.len() {
            assert_eq!(common_name(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
