//! Backing files for FUSE passthrough of `xfused passthrough`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::passthrough::PassthroughFs;
use xfuse::passthrough::BackingOpener;
use xfused::serve::source;

/// Opens the source file behind a PassthroughFs inode.
///
/// PassthroughFs does not lend out its own descriptors, so the file is
/// opened again by the path the inode has now and accepted only if it is
/// the same inode (`xfused::serve::source::reopen`): a file renamed in
/// between is served without passthrough rather than backed by the wrong
/// file.
pub struct PassthroughBacking {
    fs: Arc<PassthroughFs>,
}

impl PassthroughBacking {
    /// Backing files for inodes of `fs`.
    pub fn new(fs: Arc<PassthroughFs>) -> PassthroughBacking {
        PassthroughBacking { fs }
    }
}

impl BackingOpener for PassthroughBacking {
    fn open_backing(&self, inode: u64, open_flags: u32) -> io::Result<Option<OwnedFd>> {
        let (st, _) = self.fs.getattr(&Context::default(), inode, None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            tracing::debug!(inode, "not a regular file: no backing file");
            return Ok(None);
        }
        let flags = open_flags as i32;
        let kept = flags
            & (libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_DIRECT
                | libc::O_SYNC
                | libc::O_DSYNC
                | libc::O_NOATIME);
        let file = source::reopen(&self.fs, inode, &st, kept)?;
        Ok(Some(file.into()))
    }
}
