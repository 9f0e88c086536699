//! A user's key permissions as etcd evaluates them: the union of every granted role's
//! intervals, one union for reading and one for writing. A request is allowed when one
//! merged interval covers its whole range.

use crate::pb::authpb;

/// `[start, end)`; `end == None` is unbounded (a from-key grant).
type Interval = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserPerms {
    /// Holds the root role: everything is allowed.
    pub root: bool,
    read: Vec<Interval>,
    write: Vec<Interval>,
}

/// The key right after `key` in byte order.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// A granted permission as an interval: no range end is the single key; a range end of
/// "\0" is every key from `key` on.
fn grant_interval(p: &authpb::Permission) -> Interval {
    match p.range_end.as_slice() {
        [] => (p.key.clone(), Some(successor(&p.key))),
        [0] => (p.key.clone(), None),
        end => (p.key.clone(), Some(end.to_vec())),
    }
}

/// Sorts and merges overlapping or touching intervals; empty ones are dropped.
fn merge(mut v: Vec<Interval>) -> Vec<Interval> {
    v.retain(|(s, e)| e.as_ref().is_none_or(|e| e > s));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for (s, e) in v {
        if let Some(last) = out.last_mut() {
            let touches = last.1.as_ref().is_none_or(|le| *le >= s);
            if touches {
                let grows = match (&last.1, &e) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(le), Some(ne)) => ne > le,
                };
                if grows {
                    last.1 = e;
                }
                continue;
            }
        }
        out.push((s, e));
    }
    out
}

/// Whether one merged interval covers `[start, end)`.
fn covers(merged: &[Interval], start: &[u8], end: Option<&[u8]>) -> bool {
    // The last interval starting at or before `start`.
    let i = merged.partition_point(|(s, _)| s.as_slice() <= start);
    let Some((_, e)) = i.checked_sub(1).map(|i| &merged[i]) else {
        return false;
    };
    match (e, end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(end)) => e.as_slice() > start && e.as_slice() >= end,
    }
}

impl UserPerms {
    pub fn build<'a>(root: bool, roles: impl IntoIterator<Item = &'a authpb::Role>) -> UserPerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for role in roles {
            for p in &role.key_permission {
                let ivl = grant_interval(p);
                match authpb::permission::Type::try_from(p.perm_type) {
                    Ok(authpb::permission::Type::Read) => read.push(ivl),
                    Ok(authpb::permission::Type::Write) => write.push(ivl),
                    Ok(authpb::permission::Type::Readwrite) => {
                        read.push(ivl.clone());
                        write.push(ivl);
                    }
                    Err(_) => {}
                }
            }
        }
        UserPerms {
            root,
            read: merge(read),
            write: merge(write),
        }
    }

    /// A request's `key` and `range_end` as etcd reads them: no range end is the single
    /// key, "\0" is every key from `key` on.
    pub fn allows(&self, key: &[u8], range_end: &[u8], write: bool) -> bool {
        if self.root {
            return true;
        }
        let merged = if write { &self.write } else { &self.read };
        match range_end {
            [] => covers(merged, key, Some(&successor(key))),
            [0] => covers(merged, key, None),
            end => covers(merged, key, Some(end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authpb::permission::Type;

    fn role(perms: &[(Type, &[u8], &[u8])]) -> authpb::Role {
        authpb::Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| authpb::Permission {
                    perm_type: *t as i32,
                    key: k.to_vec(),
                    range_end: e.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn single_keys_ranges_prefixes_and_from_key() {
        let r = role(&[
            (Type::Read, b"a", b""),
            (Type::Readwrite, b"foo/", b"foo0"),
            (Type::Write, b"z", b"\0"),
        ]);
        let p = UserPerms::build(false, [&r]);
        assert!(p.allows(b"a", b"", false));
        assert!(!p.allows(b"a", b"", true));
        assert!(
            !p.allows(b"a", b"b", false),
            "a range beyond the single key"
        );
        assert!(!p.allows(b"a\0", b"", false));
        assert!(p.allows(b"foo/x", b"", true));
        assert!(p.allows(b"foo/", b"foo0", false));
        assert!(!p.allows(b"foo/", b"foo1", false));
        assert!(!p.allows(b"foo", b"", false));
        assert!(p.allows(b"zzz", b"\0", true));
        assert!(!p.allows(b"zzz", b"\0", false));
        assert!(!p.allows(b"y", b"\0", true));
    }

    #[test]
    fn grants_of_several_roles_join() {
        let r1 = role(&[(Type::Read, b"a", b"c")]);
        let r2 = role(&[(Type::Read, b"c", b"e"), (Type::Read, b"b", b"d")]);
        let p = UserPerms::build(false, [&r1, &r2]);
        assert!(p.allows(b"a", b"e", false), "touching intervals join");
        assert!(!p.allows(b"a", b"e\0", false));
        let gap = UserPerms::build(false, [&r1, &role(&[(Type::Read, b"d", b"e")])]);
        assert!(!gap.allows(b"a", b"e", false));
        assert!(gap.allows(b"d", b"", false));
    }

    #[test]
    fn root_allows_everything_and_nothing_granted_allows_nothing() {
        assert!(UserPerms::build(true, []).allows(b"", b"\0", true));
        assert!(!UserPerms::build(false, []).allows(b"k", b"", false));
    }
}
