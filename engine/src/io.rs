//! Small I/O helpers shared by the B+tree and the WAL.

use std::fs::File;
use std::io::{self, IoSlice};

/// Writes `bufs` back to back at `offset` with pwritev, finishing short writes.
pub(crate) fn pwritev_all(file: &File, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = rustix::io::pwritev(file, rest, offset).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
