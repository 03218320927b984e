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
/// PassthroughFs does not lend out its own descriptors (and reports virtual
/// inode numbers), so the file is opened again by the path the inode has
/// now, and accepted only if it is still there and matches the inode's
/// attributes (device, type, size, change time to the nanosecond — a rename
/// changes the ctime): a file renamed in between is served without
/// passthrough rather than backed by the wrong file.
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
        let same = meta.dev() == st.st_dev
            && meta.mode() & libc::S_IFMT == st.st_mode & libc::S_IFMT
            && meta.size() == st.st_size as u64
            && meta.ctime() == st.st_ctime
            && meta.ctime_nsec() == st.st_ctime_nsec
            && self.fs.readlinkat_proc_file(inode)? == path;
        if !same {
            tracing::debug!(
                inode,
                "{} changed while being opened: no backing file",
                path.display()
            );
            return Ok(None);
        }
        Ok(Some(file.into()))
    }
}
