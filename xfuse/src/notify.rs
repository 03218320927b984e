//! Notifications: messages the server sends the kernel unasked, to drop
//! cached attributes, data and directory entries it knows to be stale.
//!
//! They always travel over `/dev/fuse` (FUSE-over-io_uring carries only
//! replies), on any descriptor of the connection.

use std::io;
use std::sync::Arc;

use kmod_shim::abi::{NotifyCode, NotifyInvalEntryOut, NotifyInvalInodeOut};
use kmod_shim::FuseDev;
use zerocopy::IntoBytes;

use crate::transport::out_header;

/// Sends cache invalidations for one session. Cheap to clone.
///
/// Do not call these from inside a request handler for the same inode or
/// directory: the kernel may be holding the lock the invalidation needs
/// while it waits for that very reply.
#[derive(Debug, Clone)]
pub struct Notifier {
    dev: Arc<FuseDev>,
}

impl Notifier {
    pub(crate) fn new(dev: Arc<FuseDev>) -> Notifier {
        Notifier { dev }
    }

    /// Drops the kernel's cached attributes of `ino` and its cached data in
    /// `[offset, offset + len)` (`len == 0`: to the end; `offset < 0`:
    /// attributes only). An inode the kernel does not cache is not an error.
    pub fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        let body = NotifyInvalInodeOut {
            ino,
            off: offset,
            len,
        };
        self.send(NotifyCode::InvalInode, &[body.as_bytes()])
    }

    /// Drops the kernel's cached entry `name` in directory `parent` (and
    /// the parent's cached attributes). A name the kernel does not cache is
    /// not an error.
    pub fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.contains(&0) || name.len() > 255 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let body = NotifyInvalEntryOut {
            parent,
            namelen: name.len() as u32,
            flags: 0,
        };
        self.send(NotifyCode::InvalEntry, &[body.as_bytes(), name, &[0]])
    }

    /// Makes every directory entry the kernel caches for this connection
    /// stale (FUSE_NOTIFY_INC_EPOCH, Linux 6.16+): each is looked up again
    /// before its next use. Takes no kernel locks, so it may be sent from a
    /// request handler, before the reply.
    pub fn inc_epoch(&self) -> io::Result<()> {
        self.send(NotifyCode::IncEpoch, &[])
    }

    fn send(&self, code: NotifyCode, parts: &[&[u8]]) -> io::Result<()> {
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        let header = out_header(0, code as i32, body_len);
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(header.as_bytes());
        all.extend_from_slice(parts);
        match self.dev.write_message(&all) {
            Ok(_) => Ok(()),
            // ENOENT: nothing cached under that inode or name.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
