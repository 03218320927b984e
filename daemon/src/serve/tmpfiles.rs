//! `O_TMPFILE` for fuse-backend-rs's PassthroughFs, as a `FileSystem`
//! layer.
//!
//! PassthroughFs keeps its inode table to itself and adds inodes only by
//! looking names up, so it cannot hold a file that has no name. This layer
//! holds those files itself: the dispatcher hands it TMPFILE as a CREATE
//! with `O_TMPFILE` in the flags (`Policy::tmpfile_through_create`); it
//! opens the host directory behind the parent inode, makes an `O_TMPFILE`
//! file there (the host's own, so it has no name on the host either), and
//! serves it under a node id of its own until the kernel forgets it and its
//! last handle closes. Every other node id goes to PassthroughFs unchanged.
//!
//! When the caller names the file (`linkat`, a LINK of its node id), the
//! host file is linked into the host directory behind the new parent
//! through `/proc/self/fd` and looked up in PassthroughFs, whose entry the
//! reply carries: from then on the name is an ordinary PassthroughFs inode.
//! The kernel keeps serving the descriptors it already has through this
//! layer's node id (FUSE allows two node ids for one file; the data is the
//! host file's either way). Whether the file may be named (not opened with
//! `O_EXCL`) the kernel decides before it sends LINK.
//!
//! The file is made by the daemon (root) and then given to the caller
//! (`fchown`), which is what PassthroughFs's uid switch achieves for
//! CREATE; the kernel (or `xfuse::perm`) has checked the caller's right to
//! create in the directory before the request arrives.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, ROOT_ID};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData, ListxattrReply,
    OpenOptions as FuseOpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use libc::{stat64, statvfs64};

use super::source::SourceFiles;

/// Node ids and handles of the files this layer holds start here.
/// PassthroughFs's node ids stay below 2^56 (its `VFS_MAX_INO`) and its
/// handles count up from 1.
const TMP_ID_BASE: u64 = 1 << 60;

/// Most nameless files held at once (each is a host descriptor; the
/// daemon's open-file limit is shared with PassthroughFs's own).
pub const TMPFILES_MAX: usize = 4096;

/// Most bytes one READ or WRITE moves (FUSE's own limit is lower).
const IO_MAX: usize = 16 << 20;

/// The host directories behind a filesystem's inodes.
pub trait SourceDirs {
    /// An `O_PATH` descriptor of the host directory behind `inode`,
    /// checked to be the inode's (not another directory renamed into its
    /// path meanwhile).
    fn source_dir(&self, inode: u64) -> io::Result<OwnedFd>;
}

impl<T: SourceDirs> SourceDirs for Arc<T> {
    fn source_dir(&self, inode: u64) -> io::Result<OwnedFd> {
        (**self).source_dir(inode)
    }
}

impl SourceDirs for PassthroughFs<()> {
    fn source_dir(&self, inode: u64) -> io::Result<OwnedFd> {
        let (st, _) = self.getattr(&Context::default(), inode, None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let dir =
            super::source::reopen(self, inode, &st, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| match e
                .raw_os_error()
            {
                // Renamed away meanwhile: gone, as far as this parent goes.
                Some(libc::ESTALE) => errno(libc::ENOENT),
                _ => e,
            })?;
        Ok(dir.into())
    }
}

impl<F: SourceFiles> SourceFiles for Tmpfiles<F> {
    /// The held file itself (a duplicate of its descriptor) for a nameless
    /// file; the inner filesystem's otherwise.
    fn source_file(&self, inode: u64) -> io::Result<File> {
        if is_tmp(inode) {
            return self.file(inode)?.try_clone();
        }
        self.inner.source_file(inode)
    }
}

fn errno(n: i32) -> io::Error {
    io::Error::from_raw_os_error(n)
}

fn is_tmp(id: u64) -> bool {
    id >= TMP_ID_BASE
}

/// `/proc/self/fd/N`: the path of an open descriptor.
fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// One nameless file.
#[derive(Debug)]
struct Held {
    file: Arc<File>,
    /// References the kernel holds (the TMPFILE reply's, then LOOKUPs do
    /// not come: it has no name).
    lookups: u64,
    handles: u64,
}

#[derive(Debug, Default)]
struct Table {
    files: HashMap<u64, Held>,
    /// Node id of each open handle.
    handles: HashMap<u64, u64>,
}

/// `F` with `O_TMPFILE` (see the module docs).
pub struct Tmpfiles<F> {
    inner: F,
    table: Mutex<Table>,
    next: AtomicU64,
    attr_timeout: Duration,
}

impl<F> std::fmt::Debug for Tmpfiles<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tmpfiles").field("held", &self.held()).finish()
    }
}

impl<F> Tmpfiles<F> {
    /// `inner` with nameless files, whose attributes the kernel may cache
    /// for `attr_timeout`.
    pub fn new(inner: F, attr_timeout: Duration) -> Tmpfiles<F> {
        Tmpfiles {
            inner,
            table: Mutex::new(Table::default()),
            next: AtomicU64::new(TMP_ID_BASE),
            attr_timeout,
        }
    }

    /// Nameless files held now.
    pub fn held(&self) -> usize {
        self.table().files.len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file behind node id `ino`.
    fn file(&self, ino: u64) -> io::Result<Arc<File>> {
        self.table()
            .files
            .get(&ino)
            .map(|h| h.file.clone())
            .ok_or_else(|| errno(libc::ESTALE))
    }

    fn stat(&self, ino: u64) -> io::Result<stat64> {
        stat_of(&*self.file(ino)?)
    }

    fn entry(&self, ino: u64, attr: stat64) -> Entry {
        Entry {
            inode: ino,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: self.attr_timeout,
            entry_timeout: Duration::ZERO,
        }
    }

    /// Drops the file of `ino` once nothing refers to it.
    fn settle(table: &mut Table, ino: u64) {
        if table
            .files
            .get(&ino)
            .is_some_and(|h| h.lookups == 0 && h.handles == 0)
        {
            table.files.remove(&ino);
        }
    }

    fn forget_tmp(&self, ino: u64, count: u64) {
        let mut table = self.table();
        if let Some(h) = table.files.get_mut(&ino) {
            h.lookups = h.lookups.saturating_sub(count);
        }
        Self::settle(&mut table, ino);
    }

    fn new_handle(&self, ino: u64) -> io::Result<u64> {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table();
        let held = table.files.get_mut(&ino).ok_or_else(|| errno(libc::ESTALE))?;
        held.handles += 1;
        table.handles.insert(handle, ino);
        Ok(handle)
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64> + SourceDirs> Tmpfiles<F> {
    /// Makes a nameless file in `parent` for the caller.
    fn make(&self, ctx: &Context, parent: u64, args: &CreateIn) -> io::Result<(Entry, u64)> {
        if self.held() >= TMPFILES_MAX {
            tracing::warn!("{TMPFILES_MAX} O_TMPFILE files held already: refusing another (ENFILE)");
            return Err(errno(libc::ENFILE));
        }
        let dir = self.inner.source_dir(parent)?;
        let dir_meta = File::from(dir.try_clone()?).metadata()?;
        let mode = args.mode & !(args.umask & 0o777) & 0o7777;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(mode)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(fd_path(&dir))?;
        // The caller's, as Linux makes it: the directory's group if it is
        // set-group-ID. Giving it away clears set-ID bits, so the mode is
        // set again after; set-group-ID only for the caller's own group.
        let gid = if dir_meta.mode() & libc::S_ISGID != 0 {
            dir_meta.gid()
        } else {
            ctx.gid
        };
        std::os::unix::fs::fchown(&file, Some(ctx.uid), Some(gid))?;
        let mut keep = mode;
        if gid != ctx.gid {
            keep &= !libc::S_ISGID;
        }
        if keep & (libc::S_ISUID | libc::S_ISGID) != 0 {
            file.set_permissions(Permissions::from_mode(keep))?;
        }
        let attr = stat_of(&file)?;
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        self.table().files.insert(
            ino,
            Held {
                file: Arc::new(file),
                lookups: 1,
                handles: 0,
            },
        );
        let handle = self.new_handle(ino)?;
        Ok((self.entry(ino, attr), handle))
    }

    /// Names nameless file `ino` `newparent/newname`: the new name's
    /// PassthroughFs entry.
    fn name(&self, ctx: &Context, ino: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let file = self.file(ino)?;
        let dir = self.inner.source_dir(newparent)?;
        let name = newname.to_bytes();
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(errno(libc::EINVAL));
        }
        // Through /proc, following the link: the host allows naming an
        // O_TMPFILE file so (opened without O_EXCL, as this layer does).
        rustix::fs::linkat(
            rustix::fs::CWD,
            fd_path(&*file),
            &dir,
            newname,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )?;
        self.inner.lookup(ctx, newparent, newname)
    }
}

/// The attributes of `file`, as PassthroughFs gives them (host numbers).
fn stat_of(file: &File) -> io::Result<stat64> {
    let m = file.metadata()?;
    let mut st = Entry::default().attr;
    st.st_dev = m.dev();
    st.st_ino = m.ino();
    st.st_mode = m.mode();
    st.st_nlink = m.nlink();
    st.st_uid = m.uid();
    st.st_gid = m.gid();
    st.st_rdev = m.rdev();
    st.st_size = m.size() as i64;
    st.st_blksize = m.blksize() as i64;
    st.st_blocks = m.blocks() as i64;
    st.st_atime = m.atime();
    st.st_atime_nsec = m.atime_nsec();
    st.st_mtime = m.mtime();
    st.st_mtime_nsec = m.mtime_nsec();
    st.st_ctime = m.ctime();
    st.st_ctime_nsec = m.ctime_nsec();
    Ok(st)
}

fn time_of(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

/// Linux's permission check by mode bits (the caller's primary group only),
/// for ACCESS on a nameless file.
fn may(ctx: &Context, st: &stat64, mask: u32) -> bool {
    let mask = mask & 7;
    if ctx.uid == 0 {
        return mask & 1 == 0 || st.st_mode & 0o111 != 0;
    }
    let class = if ctx.uid == st.st_uid {
        (st.st_mode >> 6) & 7
    } else if ctx.gid == st.st_gid {
        (st.st_mode >> 3) & 7
    } else {
        st.st_mode & 7
    };
    class & mask == mask
}

impl<F: FileSystem<Inode = u64, Handle = u64> + SourceDirs> FileSystem for Tmpfiles<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        *self.table() = Table::default();
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if is_tmp(parent) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        if is_tmp(inode) {
            self.forget_tmp(inode, count)
        } else {
            self.inner.forget(ctx, inode, count)
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        let (tmp, rest): (Vec<_>, Vec<_>) = requests.into_iter().partition(|(ino, _)| is_tmp(*ino));
        for (ino, count) in tmp {
            self.forget_tmp(ino, count);
        }
        if !rest.is_empty() {
            self.inner.batch_forget(ctx, rest)
        }
    }

    fn getattr(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        if is_tmp(inode) {
            return Ok((self.stat(inode)?, self.attr_timeout));
        }
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if !is_tmp(inode) {
            return self.inner.setattr(ctx, inode, attr, handle, valid);
        }
        let file = self.file(inode)?;
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = valid.contains(SetattrValid::UID).then_some(attr.st_uid);
            let gid = valid.contains(SetattrValid::GID).then_some(attr.st_gid);
            std::os::unix::fs::fchown(&*file, uid, gid)?;
        }
        if valid.contains(SetattrValid::MODE) {
            file.set_permissions(Permissions::from_mode(attr.st_mode & 0o7777))?;
        }
        if valid.contains(SetattrValid::SIZE) {
            file.set_len(attr.st_size as u64)?;
        }
        let mut times = std::fs::FileTimes::new();
        let mut set_times = false;
        if valid.contains(SetattrValid::ATIME_NOW) {
            times = times.set_accessed(SystemTime::now());
            set_times = true;
        } else if valid.contains(SetattrValid::ATIME) {
            times = times.set_accessed(time_of(attr.st_atime, attr.st_atime_nsec));
            set_times = true;
        }
        if valid.contains(SetattrValid::MTIME_NOW) {
            times = times.set_modified(SystemTime::now());
            set_times = true;
        } else if valid.contains(SetattrValid::MTIME) {
            times = times.set_modified(time_of(attr.st_mtime, attr.st_mtime_nsec));
            set_times = true;
        }
        if set_times {
            file.set_times(times)?;
        }
        Ok((stat_of(&file)?, self.attr_timeout))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        if is_tmp(inode) {
            return Err(errno(libc::EINVAL));
        }
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        if is_tmp(parent) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        if is_tmp(parent) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        if is_tmp(parent) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        if is_tmp(parent) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if is_tmp(olddir) || is_tmp(newdir) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        if is_tmp(newparent) {
            return Err(errno(libc::ENOTDIR));
        }
        if is_tmp(inode) {
            return self.name(ctx, inode, newparent, newname);
        }
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, FuseOpenOptions, Option<u32>)> {
        if !is_tmp(inode) {
            return self.inner.open(ctx, inode, flags, fuse_flags);
        }
        let file = self.file(inode)?;
        if flags as i32 & libc::O_TRUNC != 0 && flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            file.set_len(0)?;
        }
        Ok((Some(self.new_handle(inode)?), FuseOpenOptions::empty(), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, FuseOpenOptions, Option<u32>)> {
        if is_tmp(parent) {
            return Err(errno(libc::ENOTDIR));
        }
        if args.flags as i32 & libc::O_TMPFILE == libc::O_TMPFILE {
            let (entry, handle) = self.make(ctx, parent, &args)?;
            return Ok((entry, Some(handle), FuseOpenOptions::empty(), None));
        }
        self.inner.create(ctx, parent, name, args)
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        if !is_tmp(inode) {
            return self
                .inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags);
        }
        let file = self.file(inode)?;
        let mut buf = vec![0u8; (size as usize).min(IO_MAX)];
        let mut n = 0;
        while n < buf.len() {
            match file.read_at(&mut buf[n..], offset + n as u64)? {
                0 => break,
                got => n += got,
            }
        }
        w.write_all(&buf[..n])?;
        Ok(n)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        if !is_tmp(inode) {
            return self.inner.write(
                ctx,
                inode,
                handle,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                flags,
                fuse_flags,
            );
        }
        let file = self.file(inode)?;
        if size as usize > IO_MAX {
            return Err(errno(libc::EINVAL));
        }
        let mut buf = vec![0u8; size as usize];
        r.read_exact(&mut buf)?;
        file.write_all_at(&buf, offset)?;
        Ok(buf.len())
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        if is_tmp(inode) {
            return Ok(());
        }
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        if !is_tmp(inode) {
            return self.inner.fsync(ctx, inode, datasync, handle);
        }
        let file = self.file(inode)?;
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        if !is_tmp(inode) {
            return self.inner.fallocate(ctx, inode, handle, mode, offset, length);
        }
        let file = self.file(inode)?;
        let flags = rustix::fs::FallocateFlags::from_bits(mode).ok_or_else(|| errno(libc::EOPNOTSUPP))?;
        rustix::fs::fallocate(&*file, flags, offset, length).map_err(io::Error::from)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        if !is_tmp(inode) {
            return self
                .inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        }
        let mut table = self.table();
        if table.handles.get(&handle) != Some(&inode) {
            return Err(errno(libc::EBADF));
        }
        table.handles.remove(&handle);
        if let Some(h) = table.files.get_mut(&inode) {
            h.handles = h.handles.saturating_sub(1);
        }
        Self::settle(&mut table, inode);
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        // A nameless file is in its directory's filesystem; the root's is
        // the served tree's.
        self.inner
            .statfs(ctx, if is_tmp(inode) { ROOT_ID } else { inode })
    }

    fn setxattr(&self, ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        if !is_tmp(inode) {
            return self.inner.setxattr(ctx, inode, name, value, flags);
        }
        let file = self.file(inode)?;
        let flags = rustix::fs::XattrFlags::from_bits(flags).ok_or_else(|| errno(libc::EINVAL))?;
        rustix::fs::fsetxattr(&*file, name, value, flags).map_err(io::Error::from)
    }

    fn getxattr(&self, ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        if !is_tmp(inode) {
            return self.inner.getxattr(ctx, inode, name, size);
        }
        let file = self.file(inode)?;
        let mut buf = vec![0u8; size as usize];
        let n = rustix::fs::fgetxattr(&*file, name, &mut buf).map_err(io::Error::from)?;
        if size == 0 {
            return Ok(GetxattrReply::Count(n as u32));
        }
        buf.truncate(n);
        Ok(GetxattrReply::Value(buf))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        if !is_tmp(inode) {
            return self.inner.listxattr(ctx, inode, size);
        }
        let file = self.file(inode)?;
        let mut buf = vec![0u8; size as usize];
        let n = rustix::fs::flistxattr(&*file, &mut buf).map_err(io::Error::from)?;
        if size == 0 {
            return Ok(ListxattrReply::Count(n as u32));
        }
        buf.truncate(n);
        Ok(ListxattrReply::Names(buf))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if !is_tmp(inode) {
            return self.inner.removexattr(ctx, inode, name);
        }
        let file = self.file(inode)?;
        rustix::fs::fremovexattr(&*file, name).map_err(io::Error::from)
    }

    fn opendir(&self, ctx: &Context, inode: u64, flags: u32) -> io::Result<(Option<u64>, FuseOpenOptions)> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if !is_tmp(inode) {
            return self.inner.access(ctx, inode, mask);
        }
        if may(ctx, &self.stat(inode)?, mask) {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }

    fn lseek(&self, ctx: &Context, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        if !is_tmp(inode) {
            return self.inner.lseek(ctx, inode, handle, offset, whence);
        }
        let file = self.file(inode)?;
        let to = match whence as i32 {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset),
            _ => return Err(errno(libc::EINVAL)),
        };
        // A descriptor of its own: the shared one's offset is nobody's.
        let own = File::open(fd_path(&*file))?;
        rustix::fs::seek(&own, to).map_err(io::Error::from)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOSYS));
        }
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOSYS));
        }
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOSYS));
        }
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOTTY));
        }
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOSYS));
        }
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        if is_tmp(inode) {
            return Err(errno(libc::ENOSYS));
        }
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: u32, uid: u32, gid: u32) -> stat64 {
        let mut st = Entry::default().attr;
        st.st_mode = libc::S_IFREG | mode;
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    fn ctx(uid: u32, gid: u32) -> Context {
        Context { uid, gid, pid: 1 }
    }

    #[test]
    fn access_follows_the_callers_class() {
        let file = st(0o640, 10, 20);
        assert!(may(&ctx(10, 99), &file, libc::R_OK as u32 | libc::W_OK as u32));
        assert!(may(&ctx(11, 20), &file, libc::R_OK as u32));
        assert!(!may(&ctx(11, 20), &file, libc::W_OK as u32));
        assert!(!may(&ctx(11, 21), &file, libc::R_OK as u32));
        assert!(may(&ctx(0, 0), &file, libc::W_OK as u32), "root reads and writes");
        assert!(
            !may(&ctx(0, 0), &file, libc::X_OK as u32),
            "root executes only with an x bit"
        );
        assert!(may(&ctx(0, 0), &st(0o001, 10, 20), libc::X_OK as u32));
    }

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        assert_eq!(time_of(1, 5), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(
            time_of(-2, 500),
            UNIX_EPOCH - Duration::new(2, 0) + Duration::new(0, 500)
        );
        assert_eq!(
            time_of(0, 2_000_000_000),
            UNIX_EPOCH + Duration::new(0, 999_999_999)
        );
    }

    #[test]
    fn node_ids_of_nameless_files_are_above_passthroughfs_ones() {
        assert!(!is_tmp((1 << 56) - 1), "PassthroughFs's largest node id");
        assert!(is_tmp(TMP_ID_BASE));
    }
}
