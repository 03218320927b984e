//! Adaptive timeouts as a `FileSystem` layer, like [`crate::perm::Checked`]:
//! [`AdaptiveFs`] puts the timeouts of [`AdaptiveTtl`] on every entry and
//! attribute the filesystem answers with, marks hot directories' listings
//! cacheable, and reports every change a request makes before the
//! dispatcher replies. The dispatcher builds it around the session's
//! filesystem; without an [`AdaptiveTtl`] it only forwards.

use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use libc::{stat64, statvfs64};

use super::AdaptiveTtl;

/// `F` with adaptive entry and attribute timeouts (see [`crate::cache`]).
#[derive(Debug)]
pub struct AdaptiveFs<F> {
    inner: F,
    ttl: Option<Arc<AdaptiveTtl>>,
    zero_entry_timeout_stands: bool,
}

impl<F: FileSystem> AdaptiveFs<F> {
    /// `inner` with the timeouts of `ttl` (none: `inner` unchanged). With
    /// `zero_entry_timeout_stands`, an entry `inner` answers with a zero
    /// entry timeout keeps it ([`crate::Policy::zero_entry_timeout_stands`]).
    pub fn new(inner: F, ttl: Option<Arc<AdaptiveTtl>>, zero_entry_timeout_stands: bool) -> AdaptiveFs<F> {
        AdaptiveFs {
            inner,
            ttl,
            zero_entry_timeout_stands,
        }
    }

    /// The filesystem underneath.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The adaptive timeouts, if set.
    pub fn ttl(&self) -> Option<&Arc<AdaptiveTtl>> {
        self.ttl.as_ref()
    }

    /// `entry` with the adaptive timeouts of its inode (unchanged without
    /// them, or for a negative entry).
    fn with_ttl(&self, entry: Entry) -> Entry {
        self.entry_with(entry, |ttl, ino| ttl.ttl(ino))
    }

    /// `entry`, listed by READDIRPLUS of `dir`, with adaptive timeouts
    /// ([`AdaptiveTtl::ttl_listed`]).
    fn with_listed_ttl(&self, dir: u64, entry: Entry) -> Entry {
        self.entry_with(entry, |ttl, ino| ttl.ttl_listed(dir, ino))
    }

    fn entry_with(
        &self,
        mut e: Entry,
        ttls: impl FnOnce(&AdaptiveTtl, u64) -> (Duration, Duration),
    ) -> Entry {
        if let (Some(ttl), true) = (&self.ttl, e.inode != 0) {
            let (entry, attr) = ttls(ttl, e.inode);
            // The adaptive entry timeout, or the filesystem's zero where
            // that says "never cache this name".
            if !(self.zero_entry_timeout_stands && e.entry_timeout.is_zero()) {
                e.entry_timeout = entry;
            }
            e.attr_timeout = attr;
        }
        e
    }

    /// The attribute timeout for `ino`: the adaptive one, or `fs_timeout`.
    fn attr_ttl(&self, ino: u64, fs_timeout: Duration) -> Duration {
        self.ttl.as_ref().map_or(fs_timeout, |t| t.ttl(ino).1)
    }

    /// A request changed `ino`: demote it and drop the kernel's long-cached
    /// attributes before the reply goes out.
    fn changed(&self, ino: u64) {
        if let Some(t) = &self.ttl {
            t.changed_by_request(ino);
        }
    }
}

impl<F: FileSystem> FileSystem for AdaptiveFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name).map(|e| self.with_ttl(e))
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let ino: u64 = inode.into();
        let (st, timeout) = self.inner.getattr(ctx, ino.into(), handle)?;
        Ok((st, self.attr_ttl(ino, timeout)))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let ino: u64 = inode.into();
        let (st, timeout) = self.inner.setattr(ctx, ino.into(), attr, handle, valid)?;
        self.changed(ino);
        Ok((st, self.attr_ttl(ino, timeout)))
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let parent: u64 = parent.into();
        let entry = self.inner.symlink(ctx, linkname, parent.into(), name)?;
        self.changed(parent);
        Ok(self.with_ttl(entry))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let parent: u64 = inode.into();
        let entry = self.inner.mknod(ctx, parent.into(), name, mode, rdev, umask)?;
        self.changed(parent);
        Ok(self.with_ttl(entry))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let parent: u64 = parent.into();
        let entry = self.inner.mkdir(ctx, parent.into(), name, mode, umask)?;
        self.changed(parent);
        Ok(self.with_ttl(entry))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        let parent: u64 = parent.into();
        self.inner.unlink(ctx, parent.into(), name)?;
        self.changed(parent);
        Ok(())
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        let parent: u64 = parent.into();
        self.inner.rmdir(ctx, parent.into(), name)?;
        self.changed(parent);
        Ok(())
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let (olddir, newdir): (u64, u64) = (olddir.into(), newdir.into());
        self.inner
            .rename(ctx, olddir.into(), oldname, newdir.into(), newname, flags)?;
        self.changed(olddir);
        self.changed(newdir);
        Ok(())
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let (ino, newparent): (u64, u64) = (inode.into(), newparent.into());
        let entry = self.inner.link(ctx, ino.into(), newparent.into(), newname)?;
        self.changed(newparent);
        self.changed(ino);
        Ok(self.with_ttl(entry))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let parent: u64 = parent.into();
        let (entry, handle, opts, passthrough) = self.inner.create(ctx, parent.into(), name, args)?;
        self.changed(parent);
        Ok((self.with_ttl(entry), handle, opts, passthrough))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let ino: u64 = inode.into();
        let written = self.inner.write(
            ctx,
            ino.into(),
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )?;
        // Size and mtime changed.
        self.changed(ino);
        Ok(written)
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let ino: u64 = inode.into();
        self.inner
            .fallocate(ctx, ino.into(), handle, mode, offset, length)?;
        self.changed(ino);
        Ok(())
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let ino: u64 = inode.into();
        self.inner.setxattr(ctx, ino.into(), name, value, flags)?;
        self.changed(ino);
        Ok(())
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        let ino: u64 = inode.into();
        self.inner.removexattr(ctx, ino.into(), name)?;
        self.changed(ino);
        Ok(())
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        let ino: u64 = inode.into();
        let (handle, mut opts) = self.inner.opendir(ctx, ino.into(), flags)?;
        if self.ttl.as_ref().is_some_and(|t| t.is_long(ino)) {
            // A hot, unchanged directory: the kernel keeps its listing
            // across opens. Changes through the mount reset that cache in
            // the kernel (the directory's i_version) and demote it here;
            // outside changes invalidate it (AdaptiveTtl::entry_changed,
            // inode_changed).
            opts |= OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE;
        }
        Ok((handle, opts))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let dir: u64 = inode.into();
        self.inner
            .readdirplus(ctx, dir.into(), handle, size, offset, &mut |d, e| {
                add_entry(d, self.with_listed_ttl(dir, e))
            })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: Self::Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
