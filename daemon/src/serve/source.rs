//! The host files behind fuse-backend-rs's PassthroughFs inodes, opened
//! again by the daemon: for FUSE passthrough backing files, for the
//! directories `O_TMPFILE` files are made in ([`super::tmpfiles`]), and for
//! the file attribute ioctls ([`super::fileattrs`]).
//!
//! PassthroughFs lends out no descriptor of its own (with
//! `inode_file_handles` it holds a file handle, not an open file), so the
//! file is opened by the path its inode has now (`/proc/self/fd` of a
//! descriptor PassthroughFs opens from the handle) and accepted only if it
//! is the same inode: device and inode number as PassthroughFs's `getattr`
//! reports them (the host's; only node ids are PassthroughFs's own). A file
//! renamed away and another put at its path meanwhile is refused, never
//! used in its place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use fuse_backend_rs::passthrough::PassthroughFs;
use libc::stat64;

/// Opens the host file behind `inode` of `fs` again, with `flags` (an
/// access mode and `open(2)` flags; `O_NOFOLLOW` and `O_CLOEXEC` are
/// added), and checks that it is the inode `st` (from `fs.getattr`) names.
/// The caller checks the file type in `st` first, so that nothing that
/// blocks in open (a FIFO) or is not a file is opened. `ESTALE` if the path
/// leads elsewhere now.
pub fn reopen(fs: &PassthroughFs<()>, inode: u64, st: &stat64, flags: i32) -> io::Result<File> {
    let path = fs.readlinkat_proc_file(inode)?;
    let access = flags & libc::O_ACCMODE;
    let file = OpenOptions::new()
        .read(access == libc::O_RDONLY || access == libc::O_RDWR)
        .write(access == libc::O_WRONLY || access == libc::O_RDWR)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NOFOLLOW)
        .open(&path)?;
    let now = file.metadata()?;
    if now.dev() != st.st_dev || now.ino() != st.st_ino {
        tracing::debug!(
            inode,
            "{} is another file than the inode's now; not reopened",
            path.display()
        );
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
    }
    Ok(file)
}

/// The host files behind a filesystem's inodes, for ioctls made on them.
pub trait SourceFiles: Send + Sync {
    /// A read-only descriptor of the host file or directory behind `inode`
    /// (`ENOTTY` for any other type: the kernel sends the file attribute
    /// ioctls for regular files and directories only).
    fn source_file(&self, inode: u64) -> io::Result<File>;
}

impl<T: SourceFiles> SourceFiles for Arc<T> {
    fn source_file(&self, inode: u64) -> io::Result<File> {
        (**self).source_file(inode)
    }
}

impl SourceFiles for PassthroughFs<()> {
    fn source_file(&self, inode: u64) -> io::Result<File> {
        let (st, _) = self.getattr(&Context::default(), inode, None)?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTTY));
        }
        // O_RDONLY is enough for FS_IOC_SETFLAGS (the kernel asks for a
        // writable mount, not a writable descriptor), and opens files of
        // any mode for the daemon; O_NONBLOCK and O_NOCTTY as chattr(1)
        // opens, in case the path leads to a special file now (the inode
        // check then refuses it).
        reopen(
            self,
            inode,
            &st,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    }
}
