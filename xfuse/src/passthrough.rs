//! FUSE passthrough: regular files whose reads, writes and mmaps the kernel
//! serves from a backing file directly, never asking the daemon.
//!
//! On OPEN and CREATE, the dispatcher asks the session's [`BackingOpener`]
//! for a descriptor of the file behind the inode, registers it with the
//! kernel (`FUSE_DEV_IOC_BACKING_OPEN`) and answers `FOPEN_PASSTHROUGH`
//! with the backing id; on RELEASE of the inode's last open file it closes
//! the id again. Where that fails (no CAP_SYS_ADMIN, a backing filesystem
//! the kernel refuses), the open is served the ordinary way, and after the
//! first refusal for lack of privilege passthrough is switched off with one
//! log line.
//!
//! The kernel's rule: all open files of an inode use one backing file, and
//! an inode is either in passthrough mode or in cached mode, never both at
//! once (a conflicting open fails). So the backing id is per inode, shared
//! by reference count, and an inode with files open in cached mode gets no
//! passthrough until they are all closed.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kmod_shim::FuseDev;

/// Opens the file behind an inode for the kernel to use as backing file.
pub trait BackingOpener: Send + Sync {
    /// A descriptor of the file `inode` of the served filesystem, opened with
    /// the access mode of `open_flags` (the flags of the OPEN request).
    /// `Ok(None)`: serve this file without passthrough.
    fn open_backing(&self, inode: u64, open_flags: u32) -> io::Result<Option<OwnedFd>>;
}

/// How the open files of one inode are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InodeMode {
    /// By the kernel from this backing id.
    Backed { id: u32, open: usize },
    /// Through the daemon.
    Cached { open: usize },
}

#[derive(Debug, Default)]
struct Table {
    inodes: HashMap<u64, InodeMode>,
    /// Inode of each open file handle.
    handles: HashMap<u64, u64>,
}

/// Passthrough state of one session.
pub(crate) struct Passthrough {
    dev: Arc<FuseDev>,
    opener: Box<dyn BackingOpener>,
    table: Mutex<Table>,
    enabled: AtomicBool,
    opened: AtomicU64,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("enabled", &self.enabled)
            .field("opened", &self.opened)
            .finish()
    }
}

impl Passthrough {
    pub(crate) fn new(dev: Arc<FuseDev>, opener: Box<dyn BackingOpener>) -> Passthrough {
        Passthrough {
            dev,
            opener,
            table: Mutex::new(Table::default()),
            enabled: AtomicBool::new(true),
            opened: AtomicU64::new(0),
        }
    }

    /// Records the open file `fh` of `inode`; returns the backing id to
    /// answer with, or `None` to serve the file through the daemon.
    pub(crate) fn open(&self, inode: u64, fh: u64, open_flags: u32) -> Option<u32> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.handles.insert(fh, inode);
        let mode = match table.inodes.get(&inode).copied() {
            Some(InodeMode::Backed { id, open }) => InodeMode::Backed { id, open: open + 1 },
            Some(InodeMode::Cached { open }) => InodeMode::Cached { open: open + 1 },
            None => match self.register(inode, open_flags) {
                Some(id) => InodeMode::Backed { id, open: 1 },
                None => InodeMode::Cached { open: 1 },
            },
        };
        table.inodes.insert(inode, mode);
        match mode {
            InodeMode::Backed { id, .. } => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                Some(id)
            }
            InodeMode::Cached { .. } => None,
        }
    }

    fn register(&self, inode: u64, open_flags: u32) -> Option<u32> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let fd = match self.opener.open_backing(inode, open_flags) {
            Ok(Some(fd)) => fd,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(inode, "no backing file: {e}");
                return None;
            }
        };
        match self.dev.backing_open(fd.as_fd()) {
            Ok(id) => Some(id),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if self.enabled.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "FUSE passthrough refused ({e}: it needs CAP_SYS_ADMIN); \
                         serving reads and writes through the daemon"
                    );
                }
                None
            }
            Err(e) => {
                tracing::debug!(inode, "FUSE_DEV_IOC_BACKING_OPEN failed: {e}");
                None
            }
        }
    }

    /// Forgets the open file `fh`; closes its inode's backing id when it was
    /// the inode's last open file.
    pub(crate) fn release(&self, fh: u64) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inode) = table.handles.remove(&fh) else {
            return;
        };
        let close = match table.inodes.get(&inode).copied() {
            Some(InodeMode::Backed { id, open }) if open > 1 => {
                table
                    .inodes
                    .insert(inode, InodeMode::Backed { id, open: open - 1 });
                None
            }
            Some(InodeMode::Backed { id, .. }) => {
                table.inodes.remove(&inode);
                Some(id)
            }
            Some(InodeMode::Cached { open }) if open > 1 => {
                table.inodes.insert(inode, InodeMode::Cached { open: open - 1 });
                None
            }
            _ => {
                table.inodes.remove(&inode);
                None
            }
        };
        drop(table);
        if let Some(id) = close {
            if let Err(e) = self.dev.backing_close(id) {
                tracing::warn!("FUSE_DEV_IOC_BACKING_CLOSE({id}) failed: {e}");
            }
        }
    }

    /// Files opened with a backing file so far.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}
