//! Cursors and ranges. Keys and values are borrowed from the map (or the write
//! transaction's dirty pages) for the lifetime of the transaction: nothing is copied.

use super::error::Result;
use super::page::{self, KIND_BRANCH, PageId};
use super::view::{self, PageSource};

/// A position in one tree: the path of (page, index) from the root to a leaf cell.
pub struct Cursor<'a, S: PageSource + ?Sized> {
    src: &'a S,
    root: PageId,
    stack: Vec<(&'a [u8], usize)>,
    valid: bool,
}

impl<S: PageSource + ?Sized> std::fmt::Debug for Cursor<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("root", &self.root)
            .field("valid", &self.valid)
            .finish()
    }
}

impl<'a, S: PageSource + ?Sized> Cursor<'a, S> {
    pub(crate) fn new(src: &'a S, root: PageId) -> Self {
        Cursor {
            src,
            root,
            stack: Vec::with_capacity(8),
            valid: false,
        }
    }

    /// Whether the cursor sits on an entry.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The entry under the cursor.
    pub fn current(&self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        if !self.valid {
            return Ok(None);
        }
        let &(p, i) = self.stack.last().expect("valid cursor has a leaf");
        let (k, v) = page::leaf_entry(p, i);
        Ok(Some((
            view::resolve(self.src, k)?,
            view::resolve(self.src, v)?,
        )))
    }

    /// Key under the cursor.
    pub fn key(&self) -> Result<Option<&'a [u8]>> {
        if !self.valid {
            return Ok(None);
        }
        let &(p, i) = self.stack.last().expect("valid cursor has a leaf");
        Ok(Some(view::resolve(self.src, page::leaf_key(p, i))?))
    }

    /// Descends from the page at the top of the stack (or the root) to a leaf, always taking
    /// the first (`last == false`) or last child.
    fn descend_edge(&mut self, mut id: PageId, last: bool) -> Result<()> {
        loop {
            let p = self.src.node(id)?;
            let n = page::count(p);
            let i = if last { n.saturating_sub(1) } else { 0 };
            self.stack.push((p, i));
            if page::kind(p) != KIND_BRANCH {
                return Ok(());
            }
            id = page::branch_child(p, i);
        }
    }

    /// Moves to the first entry.
    pub fn first(&mut self) -> Result<bool> {
        self.stack.clear();
        self.valid = false;
        if self.root == 0 {
            return Ok(false);
        }
        self.descend_edge(self.root, false)?;
        self.settle_forward()
    }

    /// Moves to the last entry.
    pub fn last(&mut self) -> Result<bool> {
        self.stack.clear();
        self.valid = false;
        if self.root == 0 {
            return Ok(false);
        }
        self.descend_edge(self.root, true)?;
        self.settle_backward()
    }

    /// Moves to the first entry with key ≥ `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<bool> {
        self.stack.clear();
        self.valid = false;
        if self.root == 0 {
            return Ok(false);
        }
        let mut p = self.src.node(self.root)?;
        while page::kind(p) == KIND_BRANCH {
            let i = view::branch_search(self.src, p, key)?;
            self.stack.push((p, i));
            p = self.src.node(page::branch_child(p, i))?;
        }
        let (i, _) = view::leaf_search(self.src, p, key)?;
        self.stack.push((p, i));
        self.settle_forward()
    }

    /// Moves to the last entry with key < `key`.
    pub fn seek_before(&mut self, key: &[u8]) -> Result<bool> {
        if self.seek(key)? {
            return self.prev();
        }
        self.last()
    }

    /// If the leaf index is past the end, climbs to the next leaf (skipping empty ones).
    fn settle_forward(&mut self) -> Result<bool> {
        loop {
            let &(p, i) = self.stack.last().expect("stack holds a leaf");
            if i < page::count(p) {
                self.valid = true;
                return Ok(true);
            }
            // Climb to the first ancestor with a next child.
            self.stack.pop();
            loop {
                let Some((bp, bi)) = self.stack.last_mut() else {
                    self.valid = false;
                    return Ok(false);
                };
                if *bi + 1 < page::count(bp) {
                    *bi += 1;
                    let child = page::branch_child(bp, *bi);
                    self.descend_edge(child, false)?;
                    break;
                }
                self.stack.pop();
            }
        }
    }

    /// If the leaf is empty, climbs to the previous non-empty leaf.
    fn settle_backward(&mut self) -> Result<bool> {
        loop {
            let &(p, _) = self.stack.last().expect("stack holds a leaf");
            if page::count(p) > 0 {
                self.valid = true;
                return Ok(true);
            }
            self.stack.pop();
            if !self.climb_back()? {
                return Ok(false);
            }
        }
    }

    /// Pops to the nearest ancestor with a previous child and descends to its last leaf.
    fn climb_back(&mut self) -> Result<bool> {
        loop {
            let Some((bp, bi)) = self.stack.last_mut() else {
                self.valid = false;
                return Ok(false);
            };
            if *bi > 0 {
                *bi -= 1;
                let child = page::branch_child(bp, *bi);
                self.descend_edge(child, true)?;
                return Ok(true);
            }
            self.stack.pop();
        }
    }

    /// Moves to the next entry; false at the end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<bool> {
        if !self.valid {
            return Ok(false);
        }
        self.stack.last_mut().expect("valid cursor has a leaf").1 += 1;
        self.settle_forward()
    }

    /// Moves to the previous entry; false at the start.
    pub fn prev(&mut self) -> Result<bool> {
        if !self.valid {
            return Ok(false);
        }
        let leaf = self.stack.last_mut().expect("valid cursor has a leaf");
        if leaf.1 > 0 {
            leaf.1 -= 1;
            return Ok(true);
        }
        self.stack.pop();
        if !self.climb_back()? {
            return Ok(false);
        }
        self.settle_backward()
    }
}

/// Entries with `start ≤ key < end`, ascending or descending.
pub struct Range<'a, S: PageSource + ?Sized> {
    cursor: Cursor<'a, S>,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    reverse: bool,
    begun: bool,
    done: bool,
}

impl<S: PageSource + ?Sized> std::fmt::Debug for Range<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range")
            .field("reverse", &self.reverse)
            .field("done", &self.done)
            .finish()
    }
}

impl<'a, S: PageSource + ?Sized> Range<'a, S> {
    pub(crate) fn new(
        src: &'a S,
        root: PageId,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
    ) -> Self {
        Range {
            cursor: Cursor::new(src, root),
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            reverse,
            begun: false,
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let moved = if !self.begun {
            self.begun = true;
            match (&self.end, self.reverse) {
                (_, false) => {
                    let start = std::mem::take(&mut self.start);
                    let r = self.cursor.seek(&start);
                    self.start = start;
                    r?
                }
                (Some(end), true) => {
                    let end = end.clone();
                    self.cursor.seek_before(&end)?
                }
                (None, true) => self.cursor.last()?,
            }
        } else if self.reverse {
            self.cursor.prev()?
        } else {
            self.cursor.next()?
        };
        if !moved {
            return Ok(None);
        }
        let Some((k, v)) = self.cursor.current()? else {
            return Ok(None);
        };
        let inside = if self.reverse {
            k >= self.start.as_slice()
        } else {
            self.end.as_deref().is_none_or(|e| k < e)
        };
        Ok(inside.then_some((k, v)))
    }
}

impl<'a, S: PageSource + ?Sized> Iterator for Range<'a, S> {
    type Item = Result<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A read handle on one named tree at one version.
pub struct Tree<'a, S: PageSource + ?Sized> {
    pub(crate) src: &'a S,
    pub(crate) root: PageId,
    pub(crate) len: u64,
}

impl<S: PageSource + ?Sized> std::fmt::Debug for Tree<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("root", &self.root)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a, S: PageSource + ?Sized> Tree<'a, S> {
    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<&'a [u8]>> {
        view::get(self.src, self.root, key)
    }

    /// `start ≤ key < end` (no end: to the last key), ascending.
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> Range<'a, S> {
        Range::new(self.src, self.root, start, end, false)
    }

    /// `start ≤ key < end`, descending.
    pub fn range_rev(&self, start: &[u8], end: Option<&[u8]>) -> Range<'a, S> {
        Range::new(self.src, self.root, start, end, true)
    }

    /// Every entry, ascending.
    pub fn iter(&self) -> Range<'a, S> {
        self.range(&[], None)
    }

    pub fn cursor(&self) -> Cursor<'a, S> {
        Cursor::new(self.src, self.root)
    }

    pub fn first(&self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let mut c = self.cursor();
        c.first()?;
        c.current()
    }

    pub fn last(&self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let mut c = self.cursor();
        c.last()?;
        c.current()
    }
}
