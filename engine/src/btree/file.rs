//! The page-file seam: how the B+tree reaches the disk.
//!
//! Production uses [`OsFile`]. Tests use [`SimFile`], which forwards to a real file (so
//! the read-only map sees every write, as the page cache would) while recording which
//! writes a power cut could lose, and which can fail the Nth write or sync on demand.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::{Error, Result};

/// What the B+tree needs from its data file. Reads go through a map of [`PageFile::file`].
#[allow(clippy::len_without_is_empty)]
pub trait PageFile: Send + Sync + std::fmt::Debug {
    /// The open file, for mapping read-only.
    fn file(&self) -> &File;
    fn len(&self) -> io::Result<u64>;
    /// Grows (or shrinks) the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Writes `bufs` back to back starting at `off`.
    fn write_vectored_at(&self, bufs: &[&[u8]], mut off: u64) -> io::Result<()> {
        for b in bufs {
            self.write_all_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
}

/// A real file, locked against other processes for as long as it is open.
#[derive(Debug)]
pub struct OsFile {
    file: File,
}

impl OsFile {
    /// Opens (creating if needed) and locks the data file.
    pub fn open(path: &Path) -> Result<OsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::Io)?;
        match file.try_lock() {
            Ok(()) => Ok(OsFile { file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: PathBuf::from(path),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::Io(e)),
        }
    }
}

impl PageFile for OsFile {
    fn file(&self) -> &File {
        &self.file
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, off)
    }
    fn write_vectored_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        crate::io::pwritev_all(&self.file, off, bufs)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A fault a [`SimFile`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The Nth write (1-based, counted from when the fault is armed) fails with EIO.
    FailWrite(u64),
    /// The Nth write fails with ENOSPC.
    DiskFullAtWrite(u64),
    /// The Nth sync fails with EIO.
    FailSync(u64),
    /// Power is cut just before the Nth write: it and everything after fail.
    PowerCutAtWrite(u64),
}

#[derive(Debug, Default)]
struct SimState {
    /// File contents as of the last completed sync (what survives any power cut).
    durable: Vec<u8>,
    /// Writes since the last sync, in order; a power cut keeps, drops or tears each.
    pending: Vec<(u64, Vec<u8>)>,
    writes: u64,
    syncs: u64,
    fault: Option<Fault>,
    dead: bool,
}

/// A test page file over a real file that remembers what a power cut could lose.
#[derive(Debug, Clone)]
pub struct SimFile {
    file: Arc<File>,
    state: Arc<Mutex<SimState>>,
}

impl SimFile {
    /// Wraps a new, empty real file at `path`.
    pub fn create(path: &Path) -> io::Result<SimFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(SimFile {
            file: Arc::new(file),
            state: Arc::default(),
        })
    }

    /// A real file at `path` holding `image`, treated as fully durable (a disk after a
    /// reboot).
    pub fn from_image(path: &Path, image: &[u8]) -> io::Result<SimFile> {
        let sim = SimFile::create(path)?;
        FileExt::write_all_at(&*sim.file, image, 0)?;
        sim.state().durable = image.to_vec();
        Ok(sim)
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        crate::util::lock(&self.state)
    }

    /// Arms a fault; counting starts now.
    pub fn arm(&self, fault: Fault) {
        let mut s = self.state();
        s.writes = 0;
        s.syncs = 0;
        s.fault = Some(fault);
    }

    /// Cuts the power now: every later call fails.
    pub fn power_cut(&self) {
        self.state().dead = true;
    }

    pub fn is_dead(&self) -> bool {
        self.state().dead
    }

    /// The bytes a disk would hold after a power cut now. Each unsynced write is kept,
    /// dropped, or torn at a 512-byte sector boundary, as `choose(write_no, sectors)`
    /// decides: `None` drops it, `Some(n)` keeps its first `n` sectors (all of them when
    /// `n` ≥ the write's sector count).
    pub fn crash_image(&self, mut choose: impl FnMut(usize, usize) -> Option<usize>) -> Vec<u8> {
        let s = self.state();
        let mut img = s.durable.clone();
        for (i, (off, data)) in s.pending.iter().enumerate() {
            let sectors = data.len().div_ceil(512);
            let Some(keep) = choose(i, sectors) else {
                continue;
            };
            let n = (keep * 512).min(data.len());
            apply(&mut img, *off, &data[..n]);
        }
        img
    }

    /// Number of writes not yet covered by a sync.
    pub fn pending_writes(&self) -> usize {
        self.state().pending.len()
    }
}

fn apply(img: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if img.len() < off + data.len() {
        img.resize(off + data.len(), 0);
    }
    img[off..off + data.len()].copy_from_slice(data);
}

fn dead() -> io::Error {
    io::Error::other("simulated power cut")
}

impl PageFile for SimFile {
    fn file(&self) -> &File {
        &self.file
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state();
        if s.dead {
            return Err(dead());
        }
        self.file.set_len(len)?;
        // Size changes are treated as durable at once; the bytes they add are zeros.
        s.durable.resize(len as usize, 0);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut s = self.state();
        if s.dead {
            return Err(dead());
        }
        s.writes += 1;
        match s.fault {
            Some(Fault::FailWrite(n)) if n == s.writes => {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Some(Fault::DiskFullAtWrite(n)) if n == s.writes => {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Some(Fault::PowerCutAtWrite(n)) if n == s.writes => {
                s.dead = true;
                return Err(dead());
            }
            _ => {}
        }
        FileExt::write_all_at(&*self.file, buf, off)?;
        s.pending.push((off, buf.to_vec()));
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(&*self.file, buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state();
        if s.dead {
            return Err(dead());
        }
        s.syncs += 1;
        if s.fault == Some(Fault::FailSync(s.syncs)) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let pending = std::mem::take(&mut s.pending);
        for (off, data) in pending {
            apply(&mut s.durable, off, &data);
        }
        Ok(())
    }
}
