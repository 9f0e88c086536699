//! `Db::check`: walks every page of a version and verifies every structural invariant.

use super::error::{Error, Result};
use super::page::{self, KIND_BRANCH, KIND_LEAF, KIND_OVERFLOW, PageId, Ref};
use super::view::{self, PageSource, View};
use super::write::{decode_ids, decode_tree_desc};

/// What a successful check saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub high_water_pages: u64,
    pub node_pages: u64,
    pub overflow_pages: u64,
    pub free_pages: u64,
    /// Each tree's name and number of entries.
    pub trees: Vec<(Vec<u8>, u64)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Unseen,
    Meta,
    Node,
    Overflow,
    Free,
}

struct Walker<'a> {
    view: &'a View,
    uses: Vec<Use>,
    report: CheckReport,
}

fn fail<T>(page: PageId, reason: String) -> Result<T> {
    Err(Error::Corrupt { page, reason })
}

impl Walker<'_> {
    fn claim(&mut self, id: PageId, u: Use) -> Result<()> {
        let hw = self.view.meta.high_water;
        if id >= hw {
            return fail(
                id,
                format!("referenced page is past the high-water mark {hw}"),
            );
        }
        let slot = &mut self.uses[id as usize];
        if *slot != Use::Unseen {
            let was = match *slot {
                Use::Meta => "a meta page",
                Use::Node => "a tree page",
                Use::Overflow => "an overflow page",
                Use::Free => "free",
                Use::Unseen => unreachable!(),
            };
            return fail(id, format!("page is referenced twice (already {was})"));
        }
        *slot = u;
        Ok(())
    }

    fn overflow(&mut self, r: Ref<'_>) -> Result<()> {
        if let Ref::Overflow { page, len } = r {
            let n = self.view.lim.overflow_pages(len as usize);
            self.view.overflow(page, len)?;
            // Re-verify even if cached: the checker trusts nothing.
            let ps = self.view.lim.page_size;
            let bytes = self.view.map.slice(page as usize * ps, n as usize * ps);
            view::check_overflow_header(bytes, page, len, n)?;
            page::validate(bytes, page, &self.view.lim)?;
            for p in page..page + n {
                self.claim(p, Use::Overflow)?;
            }
            self.report.overflow_pages += n;
        }
        Ok(())
    }

    /// Walks a subtree whose keys must lie in `[lo, hi)`. Returns (entries, leaf depth).
    fn walk(
        &mut self,
        id: PageId,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        allow_empty: bool,
    ) -> Result<(u64, usize)> {
        self.claim(id, Use::Node)?;
        self.report.node_pages += 1;
        let ps = self.view.lim.page_size;
        let p = self.view.map.slice(id as usize * ps, ps);
        page::validate(p, id, &self.view.lim)?;
        let kind = page::kind(p);
        let n = page::count(p);
        match kind {
            KIND_LEAF => {
                if n == 0 && !allow_empty {
                    return fail(id, "empty leaf inside a tree".into());
                }
                let mut prev: Option<Vec<u8>> = None;
                for i in 0..n {
                    let (k, v) = page::leaf_entry(p, i);
                    self.overflow(k)?;
                    self.overflow(v)?;
                    let key = view::resolve(self.view, k)?;
                    self.bounds(id, key, lo, hi, prev.as_deref())?;
                    prev = Some(key.to_vec());
                }
                Ok((n as u64, 0))
            }
            KIND_BRANCH => {
                let mut total = 0;
                let mut depth = None;
                let mut prev: Option<Vec<u8>> = None;
                for i in 0..n {
                    let (child, k) = page::branch_entry(p, i);
                    let sep = if i == 0 {
                        if k != Ref::Inline(&[]) {
                            return fail(id, "first branch cell has a key".into());
                        }
                        None
                    } else {
                        self.overflow(k)?;
                        let key = view::resolve(self.view, k)?.to_vec();
                        self.bounds(id, &key, lo, hi, prev.as_deref())?;
                        Some(key)
                    };
                    let child_lo = sep.clone().or_else(|| lo.map(<[u8]>::to_vec));
                    let child_hi = if i + 1 < n {
                        Some(view::resolve(self.view, page::branch_entry(p, i + 1).1)?.to_vec())
                    } else {
                        hi.map(<[u8]>::to_vec)
                    };
                    let (cnt, d) =
                        self.walk(child, child_lo.as_deref(), child_hi.as_deref(), allow_empty)?;
                    if *depth.get_or_insert(d) != d {
                        return fail(id, "leaves at different depths".into());
                    }
                    total += cnt;
                    if sep.is_some() {
                        prev = sep;
                    }
                }
                Ok((total, depth.unwrap_or(0) + 1))
            }
            KIND_OVERFLOW => fail(id, "overflow page where a node was expected".into()),
            k => fail(id, format!("unknown page kind {k}")),
        }
    }

    fn bounds(
        &self,
        id: PageId,
        key: &[u8],
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        prev: Option<&[u8]>,
    ) -> Result<()> {
        if prev.is_some_and(|p| p >= key) {
            return fail(id, "keys out of order".into());
        }
        if lo.is_some_and(|l| key < l) || hi.is_some_and(|h| key >= h) {
            return fail(id, "key outside the range its parent assigns".into());
        }
        Ok(())
    }
}

pub(crate) fn check(v: &View) -> Result<CheckReport> {
    let hw = v.meta.high_water;
    let mut w = Walker {
        view: v,
        uses: vec![Use::Unseen; hw as usize],
        report: CheckReport {
            high_water_pages: hw,
            ..Default::default()
        },
    };
    w.uses[0] = Use::Meta;
    w.uses[1] = Use::Meta;
    let mut trees = Vec::new();
    if v.meta.catalog_root != 0 {
        w.walk(v.meta.catalog_root, None, None, false)?;
        let cat = super::Tree {
            src: v,
            root: v.meta.catalog_root,
            len: 0,
        };
        for e in cat.iter() {
            let (name, desc) = e?;
            let Some((root, len)) = decode_tree_desc(desc) else {
                return Err(Error::CorruptFile("malformed catalog entry".into()));
            };
            trees.push((name.to_vec(), root, len));
        }
    }
    for (name, root, len) in trees {
        let count = if root == 0 {
            0
        } else {
            w.walk(root, None, None, false)?.0
        };
        if count != len {
            return Err(Error::CorruptFile(format!(
                "tree {:?} records {len} entries but holds {count}",
                String::from_utf8_lossy(&name)
            )));
        }
        w.report.trees.push((name, len));
    }
    if v.meta.free_root != 0 {
        // The commit's fixed point may leave empty leaves in the free tree.
        w.walk(v.meta.free_root, None, None, true)?;
        let free = super::Tree {
            src: v,
            root: v.meta.free_root,
            len: 0,
        };
        for e in free.iter() {
            let (k, ids) = e?;
            if k.len() != 20 || ids.len() % 8 != 0 {
                return Err(Error::CorruptFile("malformed free-tree entry".into()));
            }
            for id in decode_ids(ids) {
                if id < 2 {
                    return fail(id, "meta page listed as free".into());
                }
                w.claim(id, Use::Free)?;
                w.report.free_pages += 1;
            }
        }
    }
    if let Some(lost) = w.uses.iter().position(|u| *u == Use::Unseen) {
        return fail(
            lost as PageId,
            "page is neither reachable nor free (leaked)".into(),
        );
    }
    Ok(w.report)
}
