//! The log-device seam: the WAL writer turns batches into "write these bytes at this
//! offset, then make them durable" requests; a device executes them. One device uses
//! io_uring (linked WRITEV → FSYNC(DATASYNC), one submission), one plain syscalls
//! (pwritev + fdatasync); tests wrap either to inject failures.

use std::fs::File;
use std::io;

pub(crate) use crate::io::pwritev_all;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

/// Which device the WAL uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when the kernel allows it, else syscalls.
    Auto,
    IoUring,
    Syscall,
}

impl Backend {
    /// Reads `ETCH_WAL_BACKEND` (`io_uring`, `syscall` or `auto`), if set.
    pub fn from_env() -> Option<Backend> {
        match std::env::var("ETCH_WAL_BACKEND").ok()?.as_str() {
            "io_uring" | "uring" => Some(Backend::IoUring),
            "syscall" | "pwritev" => Some(Backend::Syscall),
            "auto" => Some(Backend::Auto),
            _ => None,
        }
    }
}

/// Executes the writer's I/O. Each call blocks until the request is complete.
pub trait LogDevice: Send {
    /// Writes `bufs` contiguously at `offset`, then fdatasyncs the file. Returns once both
    /// are done; a short write is completed before the sync.
    fn write_and_sync(&mut self, file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()>;
    /// fdatasync alone.
    fn sync(&mut self, file: &File) -> io::Result<()>;
    /// For devices that write O_DIRECT files: the block size every write's offset, length
    /// and buffer must be aligned to. None: buffered writes.
    fn direct_block(&self) -> Option<usize> {
        None
    }
    /// "io_uring" or "syscall".
    fn name(&self) -> &'static str;
}

/// pwritev + fdatasync.
#[derive(Debug, Default)]
pub struct SyscallDevice;

impl LogDevice for SyscallDevice {
    fn write_and_sync(&mut self, file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        pwritev_all(file, offset, bufs)?;
        file.sync_data()
    }
    fn sync(&mut self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
    fn name(&self) -> &'static str {
        "syscall"
    }
}

/// Opens the device a backend asks for. `Auto` falls back to syscalls when io_uring cannot
/// be set up (EPERM/ENOSYS, seccomp, `kernel.io_uring_disabled`); the reason is returned
/// for the log.
pub fn open_device(backend: Backend) -> io::Result<(Box<dyn LogDevice>, Option<String>)> {
    match backend {
        Backend::Syscall => Ok((Box::new(SyscallDevice), None)),
        Backend::IoUring => Ok((Box::new(super::uring::UringDevice::new()?), None)),
        Backend::Auto => match super::uring::UringDevice::new() {
            Ok(d) => Ok((Box::new(d), None)),
            Err(e) => Ok((
                Box::new(SyscallDevice),
                Some(format!(
                    "io_uring unavailable ({e}); using pwritev + fdatasync"
                )),
            )),
        },
    }
}

/// A fault a [`FaultyDevice`] injects: the Nth write or sync (1-based) fails with EIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFault {
    FailWrite(u64),
    FailSync(u64),
}

#[derive(Debug, Default)]
struct FaultState {
    writes: u64,
    syncs: u64,
    fault: Option<DeviceFault>,
}

/// Wraps a device and fails the Nth write or sync. The handle is shared with the test.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle(Arc<Mutex<FaultState>>);

impl FaultHandle {
    pub fn arm(&self, f: DeviceFault) {
        let mut s = crate::util::lock(&self.0);
        s.writes = 0;
        s.syncs = 0;
        s.fault = Some(f);
    }
}

pub struct FaultyDevice {
    inner: Box<dyn LogDevice>,
    handle: FaultHandle,
}

impl std::fmt::Debug for FaultyDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyDevice")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl FaultyDevice {
    pub fn new(inner: Box<dyn LogDevice>, handle: FaultHandle) -> FaultyDevice {
        FaultyDevice { inner, handle }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl LogDevice for FaultyDevice {
    fn write_and_sync(&mut self, file: &File, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let (fail_write, fail_sync) = {
            let mut s = crate::util::lock(&self.handle.0);
            s.writes += 1;
            s.syncs += 1;
            (
                s.fault == Some(DeviceFault::FailWrite(s.writes)),
                s.fault == Some(DeviceFault::FailSync(s.syncs)),
            )
        };
        if fail_write {
            // A failed write may have reached the disk in part: write a leading part of it
            // (whole blocks, for a device that needs aligned writes).
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                let part = match self.inner.direct_block() {
                    Some(bs) => first.len() / 2 / bs * bs,
                    None => first.len() / 2,
                };
                pwritev_all(file, offset, &[&first[..part]])?;
            }
            return Err(eio());
        }
        if fail_sync {
            pwritev_all(file, offset, bufs)?;
            return Err(eio());
        }
        self.inner.write_and_sync(file, offset, bufs)
    }
    fn sync(&mut self, file: &File) -> io::Result<()> {
        let fail = {
            let mut s = crate::util::lock(&self.handle.0);
            s.syncs += 1;
            s.fault == Some(DeviceFault::FailSync(s.syncs))
        };
        if fail {
            return Err(eio());
        }
        self.inner.sync(file)
    }
    fn direct_block(&self) -> Option<usize> {
        self.inner.direct_block()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// Raw fd of a file, for the io_uring device.
pub(crate) fn raw_fd(file: &File) -> i32 {
    file.as_raw_fd()
}
