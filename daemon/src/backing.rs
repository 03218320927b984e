//! Backing files for FUSE passthrough of `xfused passthrough`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::passthrough::PassthroughFs;
use xfuse::passthrough::BackingOpener;

/// Opens the source file behind a PassthroughFs inode.
///
/// PassthroughFs does not lend out its own descriptors, so the file is opened
/// again by the path the inode has now, and checked to be the same inode
/// (device and inode number) before it is used: a file renamed in between
/// is served without passthrough rather than backed by the wrong file.
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
        let path = self.fs.readlinkat_proc_file(inode)?;
        let flags = open_flags as i32;
        let access = flags & libc::O_ACCMODE;
        let kept = flags & (libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
        let file = OpenOptions::new()
            .read(access == libc::O_RDONLY || access == libc::O_RDWR)
            .write(access == libc::O_WRONLY || access == libc::O_RDWR)
            .append(flags & libc::O_APPEND != 0)
            .custom_flags(kept | libc::O_NOFOLLOW)
            .open(&path)?;
        let meta = file.metadata()?;
        if meta.ino() != st.st_ino || meta.dev() != st.st_dev {
            tracing::debug!(
                inode,
                "{} is no longer inode {} on device {}: no backing file",
                path.display(),
                st.st_ino,
                st.st_dev
            );
            return Ok(None);
        }
        Ok(Some(file.into()))
    }
}
