//! The io_uring log device: one WRITEV with RWF_DSYNC per batch, on an O_DIRECT file where
//! the filesystem allows it.
//! All `unsafe` of the WAL lives here.

use std::fs::File;
use std::io;

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::device::{LogDevice, raw_fd};

const WRITE_TAG: u64 = 1;
const SYNC_TAG: u64 = 2;

pub(crate) struct UringDevice {
    ring: IoUring,
}

impl UringDevice {
    /// Sets up a small ring and checks the kernel supports WRITEV and FSYNC.
    pub(crate) fn new() -> io::Result<UringDevice> {
        let ring = IoUring::new(8)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Writev::CODE) || !probe.is_supported(opcode::Fsync::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks WRITEV or FSYNC",
            ));
        }
        Ok(UringDevice { ring })
    }

    /// Submits the prepared entries and reaps exactly `n` completions, returning their
    /// results by tag.
    fn run(&mut self, entries: &[squeue::Entry], n: usize) -> io::Result<[Option<i32>; 3]> {
        {
            let mut sq = self.ring.submission();
            for e in entries {
                // SAFETY: every entry's buffers (the iovec array and the slices it points
                // to, owned by the caller of `write_and_sync`) stay alive and unmoved until
                // this function returns, and it returns only after reaping every completion
                // of this submission (or after the submit call itself failed, in which case
                // the kernel took none of the entries). The ring is empty on entry: each
                // call reaps all it submits.
                unsafe { sq.push(e) }
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        self.submit_and_wait(n)?;
        let mut out = [None; 3];
        let mut reaped = 0;
        while reaped < n {
            let mut cq = self.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                out[cqe.user_data() as usize] = Some(cqe.result());
                reaped += 1;
            }
            drop(cq);
            if reaped < n {
                self.submit_and_wait(n - reaped)?;
            }
        }
        Ok(out)
    }
}

impl UringDevice {
    fn submit_and_wait(&mut self, n: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(n) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map(|_| ()),
            }
        }
    }
}

fn result_err(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl LogDevice for UringDevice {
    /// One WRITEV with RWF_DSYNC: the data and what is needed to read it back are durable
    /// when it completes, as after write + fdatasync. On an O_DIRECT file (see
    /// `direct_block`) the kernel completes it from the disk interrupt, with no worker
    /// thread in between.
    fn write_and_sync(&mut self, file: &File, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let fd = types::Fd(raw_fd(file));
        // Remaining bytes as (ptr, len) pairs; advanced after a short write.
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut first = 0;
        loop {
            let rest = &iov[first..];
            let total: usize = rest.iter().map(|v| v.iov_len).sum();
            if total == 0 {
                let sync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(SYNC_TAG);
                let r = self.run(&[sync], 1)?;
                let res = r[SYNC_TAG as usize].expect("sync completion");
                return if res < 0 {
                    Err(result_err(res))
                } else {
                    Ok(())
                };
            }
            let write = opcode::Writev::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(offset)
                .rw_flags(libc::RWF_DSYNC)
                .build()
                .user_data(WRITE_TAG);
            let r = self.run(&[write], 1)?;
            let wres = r[WRITE_TAG as usize].expect("write completion");
            if wres < 0 {
                return Err(result_err(wres));
            }
            let written = wres as usize;
            if written == total {
                return Ok(());
            }
            if written == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "io_uring write wrote nothing",
                ));
            }
            // Short write: what was written is durable; go again with the rest.
            offset += written as u64;
            let mut skip = written;
            while skip >= iov[first].iov_len {
                skip -= iov[first].iov_len;
                first += 1;
            }
            let v = &mut iov[first];
            v.iov_base = (v.iov_base as usize + skip) as *mut libc::c_void;
            v.iov_len -= skip;
        }
    }

    fn sync(&mut self, file: &File) -> io::Result<()> {
        self.write_and_sync(file, 0, &[])
    }

    fn direct_block(&self) -> Option<usize> {
        Some(DIRECT_BLOCK)
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

/// Alignment of O_DIRECT writes: offsets, lengths and buffer addresses.
pub(crate) const DIRECT_BLOCK: usize = 4096;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; DIRECT_BLOCK]);

/// A growable byte buffer whose start is aligned for O_DIRECT.
pub(crate) struct AlignedBuf {
    blocks: Vec<Block>,
}

impl AlignedBuf {
    pub(crate) fn new() -> AlignedBuf {
        AlignedBuf {
            blocks: vec![Block([0; DIRECT_BLOCK])],
        }
    }

    /// Makes room for at least `len` bytes, keeping the contents.
    pub(crate) fn reserve(&mut self, len: usize) {
        let blocks = len.div_ceil(DIRECT_BLOCK);
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, Block([0; DIRECT_BLOCK]));
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.blocks.len() * DIRECT_BLOCK;
        // SAFETY: `Block` is `repr(C)` around `[u8; 4096]` with no padding (size equals
        // alignment), so the vector's storage is `len` initialized, contiguous bytes. The
        // slice borrows `self` mutably, so the vector cannot reallocate while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), len) }
    }
}
