//! User and group id translation between an untrusted client (a virtual
//! machine's guest kernel) and the host, as a [`FileSystem`] layer:
//! [`IdMapped`].
//!
//! Without it a guest's root is the host's: whatever uid a request names,
//! the filesystem creates files as it (PassthroughFs switches to the
//! caller's ids), and a SETATTR may give a file any owner. With it:
//!
//! - **callers** (the [`Context`] of every request) are translated guest →
//!   host before the filesystem sees them, so files are created as the
//!   mapped host ids. A caller no rule names acts as [`OVERFLOW_ID`]
//!   (nobody/nogroup), as NFS's `root_squash` does, rather than being
//!   refused: the guest kernel sends some requests with no caller at all
//!   (uid 0, gid 0: RELEASE, writeback WRITEs), which must not fail for a
//!   guest whose root is unmapped, and acting as nobody grants nothing;
//! - **attributes** in every reply (the entries of LOOKUP, CREATE, MKNOD,
//!   MKDIR, SYMLINK, LINK and READDIRPLUS; GETATTR and SETATTR) are
//!   translated host → guest; a host id the guest has no mapping for is
//!   shown as [`OVERFLOW_ID`] (STATX is not served: the dispatcher answers
//!   ENOSYS and the guest falls back to GETATTR);
//! - **new owners** (SETATTR with a uid or gid, i.e. chown/chgrp) are
//!   translated guest → host, and one the mapping cannot express is
//!   refused with EINVAL, as chown(2) refuses an id outside a user
//!   namespace's map: a guest cannot give a file to a host id it has no
//!   mapping for;
//! - **device nodes** (MKNOD of a character or block device) are refused
//!   with EPERM unless the caller is host root after translation: a guest
//!   root mapped to an ordinary host user must not leave a device node
//!   that user can open on the host (Linux asks CAP_MKNOD in the initial
//!   namespace for the same reason);
//! - **ids inside xattr values**: POSIX ACLs (`system.posix_acl_access`,
//!   `system.posix_acl_default`) are translated both ways, unmapped ids
//!   refused from the guest; file capabilities (`security.capability`) are
//!   stored with the host id of the guest's root as their root id, so they
//!   grant nothing to host processes (as Linux stores those a user
//!   namespace's root writes).
//!
//! The set-user-ID and set-group-ID bits need nothing more: they give the
//! file's owner, which is now a mapped host id. A guest root mapped to
//! host uid 1000 that creates a file and sets mode 04755 leaves a program
//! that runs as uid 1000.
//!
//! Translation happens in this layer only; the dispatcher's own rules run
//! in the guest's view (its caller, and the attributes this layer
//! replies). One consequence: the dispatcher clears set-ID bits on a write
//! (FUSE_HANDLE_KILLPRIV_V2) with a SETATTR as uid 0, which arrives here
//! as the guest's root: a filesystem that checks that SETATTR against the
//! caller (`--meta tcp://`, where the service checks every call) refuses it
//! unless the guest's root owns the file. PassthroughFs and in-process
//! metadata do not check it.
//!
//! The wrapped filesystem's own `id_remap` is not called: this layer's
//! translation replaces it.

mod rules;
mod xattr;

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use libc::{stat64, statvfs64};

pub use rules::{IdMap, IdMapError, IdMaps, IdRule, OVERFLOW_ID};
use xattr::{IdXattr, Way};

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// `F` as a guest sees it through the id translation of [`IdMaps`] (see
/// the module docs).
#[derive(Debug)]
pub struct IdMapped<F> {
    fs: F,
    ids: IdMaps,
}

impl<F: FileSystem> IdMapped<F> {
    /// `fs` behind the translation `ids`.
    pub fn new(fs: F, ids: IdMaps) -> IdMapped<F> {
        IdMapped { fs, ids }
    }

    /// The wrapped filesystem.
    pub fn inner(&self) -> &F {
        &self.fs
    }

    /// The translation.
    pub fn ids(&self) -> &IdMaps {
        &self.ids
    }

    /// The caller as the host sees it.
    fn host(&self, ctx: &Context) -> Context {
        Context {
            uid: self.ids.uid.caller_to_host(ctx.uid),
            gid: self.ids.gid.caller_to_host(ctx.gid),
            pid: ctx.pid,
        }
    }

    /// Attributes as the guest sees them.
    fn guest_attr(&self, mut st: stat64) -> stat64 {
        st.st_uid = self.ids.uid.shown_to_guest(st.st_uid);
        st.st_gid = self.ids.gid.shown_to_guest(st.st_gid);
        st
    }

    /// An entry as the guest sees it (a negative entry carries no
    /// attributes).
    fn guest_entry(&self, mut entry: Entry) -> Entry {
        if entry.inode != 0 {
            entry.attr = self.guest_attr(entry.attr);
        }
        entry
    }

    fn guest_attr_reply(&self, reply: io::Result<(stat64, Duration)>) -> io::Result<(stat64, Duration)> {
        reply.map(|(st, timeout)| (self.guest_attr(st), timeout))
    }
}

impl<F: FileSystem> FileSystem for IdMapped<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.fs.init(capable)
    }

    fn destroy(&self) {
        self.fs.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<Entry> {
        self.fs
            .lookup(&self.host(ctx), parent, name)
            .map(|e| self.guest_entry(e))
    }

    fn forget(&self, ctx: &Context, inode: F::Inode, count: u64) {
        self.fs.forget(&self.host(ctx), inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(F::Inode, u64)>) {
        self.fs.batch_forget(&self.host(ctx), requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: Option<F::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.guest_attr_reply(self.fs.getattr(&self.host(ctx), inode, handle))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        mut attr: stat64,
        handle: Option<F::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if valid.contains(SetattrValid::UID) {
            attr.st_uid = self
                .ids
                .uid
                .to_host(attr.st_uid)
                .ok_or_else(|| err(libc::EINVAL))?;
        }
        if valid.contains(SetattrValid::GID) {
            attr.st_gid = self
                .ids
                .gid
                .to_host(attr.st_gid)
                .ok_or_else(|| err(libc::EINVAL))?;
        }
        self.guest_attr_reply(self.fs.setattr(&self.host(ctx), inode, attr, handle, valid))
    }

    fn readlink(&self, ctx: &Context, inode: F::Inode) -> io::Result<Vec<u8>> {
        self.fs.readlink(&self.host(ctx), inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: F::Inode, name: &CStr) -> io::Result<Entry> {
        self.fs
            .symlink(&self.host(ctx), linkname, parent, name)
            .map(|e| self.guest_entry(e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: F::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let host = self.host(ctx);
        let kind = mode & libc::S_IFMT;
        if (kind == libc::S_IFCHR || kind == libc::S_IFBLK) && host.uid != 0 {
            return Err(err(libc::EPERM));
        }
        self.fs
            .mknod(&host, parent, name, mode, rdev, umask)
            .map(|e| self.guest_entry(e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: F::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.fs
            .mkdir(&self.host(ctx), parent, name, mode, umask)
            .map(|e| self.guest_entry(e))
    }

    fn unlink(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<()> {
        self.fs.unlink(&self.host(ctx), parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<()> {
        self.fs.rmdir(&self.host(ctx), parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: F::Inode,
        oldname: &CStr,
        newdir: F::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.fs
            .rename(&self.host(ctx), olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: F::Inode, newparent: F::Inode, newname: &CStr) -> io::Result<Entry> {
        self.fs
            .link(&self.host(ctx), inode, newparent, newname)
            .map(|e| self.guest_entry(e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<F::Handle>, OpenOptions, Option<u32>)> {
        self.fs.open(&self.host(ctx), inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: F::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<F::Handle>, OpenOptions, Option<u32>)> {
        let (entry, handle, options, passthrough) = self.fs.create(&self.host(ctx), parent, name, args)?;
        Ok((self.guest_entry(entry), handle, options, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.fs
            .read(&self.host(ctx), inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.fs.write(
            &self.host(ctx),
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, lock_owner: u64) -> io::Result<()> {
        self.fs.flush(&self.host(ctx), inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: F::Inode, datasync: bool, handle: F::Handle) -> io::Result<()> {
        self.fs.fsync(&self.host(ctx), inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.fs
            .fallocate(&self.host(ctx), inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
        handle: F::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.fs.release(
            &self.host(ctx),
            inode,
            flags,
            handle,
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, inode: F::Inode) -> io::Result<statvfs64> {
        self.fs.statfs(&self.host(ctx), inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let host = self.host(ctx);
        match IdXattr::of(name.to_bytes()) {
            None => self.fs.setxattr(&host, inode, name, value, flags),
            Some(IdXattr::Acl) => {
                let mut value = value.to_vec();
                xattr::translate_acl(&mut value, &self.ids.uid, &self.ids.gid, Way::ToHost)?;
                self.fs.setxattr(&host, inode, name, &value, flags)
            }
            Some(IdXattr::Capability) => {
                let value = xattr::translate_capability(value, &self.ids.uid, Way::ToHost)?;
                self.fs.setxattr(&host, inode, name, &value, flags)
            }
        }
    }

    fn getxattr(&self, ctx: &Context, inode: F::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        let host = self.host(ctx);
        match IdXattr::of(name.to_bytes()) {
            None => self.fs.getxattr(&host, inode, name, size),
            // Translation keeps an ACL's length: a size query passes.
            Some(IdXattr::Acl) => match self.fs.getxattr(&host, inode, name, size)? {
                GetxattrReply::Value(mut value) => {
                    xattr::translate_acl(&mut value, &self.ids.uid, &self.ids.gid, Way::ToGuest)?;
                    Ok(GetxattrReply::Value(value))
                }
                count => Ok(count),
            },
            // Translation may change a capability's length (version 2 to
            // 3): the value is always read, and the dispatcher answers a
            // size query or ERANGE from the translated one.
            Some(IdXattr::Capability) => match self.fs.getxattr(&host, inode, name, xattr::CAP_BYTES_MAX)? {
                GetxattrReply::Value(value) => Ok(GetxattrReply::Value(xattr::translate_capability(
                    &value,
                    &self.ids.uid,
                    Way::ToGuest,
                )?)),
                GetxattrReply::Count(_) => Err(err(libc::EIO)),
            },
        }
    }

    fn listxattr(&self, ctx: &Context, inode: F::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.fs.listxattr(&self.host(ctx), inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: F::Inode, name: &CStr) -> io::Result<()> {
        self.fs.removexattr(&self.host(ctx), inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
    ) -> io::Result<(Option<F::Handle>, OpenOptions)> {
        self.fs.opendir(&self.host(ctx), inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs
            .readdir(&self.host(ctx), inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs
            .readdirplus(&self.host(ctx), inode, handle, size, offset, &mut |d, e| {
                add_entry(d, self.guest_entry(e))
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: F::Inode, datasync: bool, handle: F::Handle) -> io::Result<()> {
        self.fs.fsyncdir(&self.host(ctx), inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: F::Inode, flags: u32, handle: F::Handle) -> io::Result<()> {
        self.fs.releasedir(&self.host(ctx), inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: F::Inode, mask: u32) -> io::Result<()> {
        self.fs.access(&self.host(ctx), inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.fs.lseek(&self.host(ctx), inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.fs.getlk(&self.host(ctx), inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.fs.setlk(&self.host(ctx), inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.fs.setlkw(&self.host(ctx), inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.fs
            .ioctl(&self.host(ctx), inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: F::Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        self.fs.bmap(&self.host(ctx), inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        khandle: F::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.fs
            .poll(&self.host(ctx), inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.fs.notify_reply()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A filesystem of one file owned by `owner`, recording the caller
    /// and attributes it is given.
    #[derive(Debug, Default)]
    struct Recorder {
        owner: (u32, u32),
        callers: Mutex<Vec<(u32, u32)>>,
        set: Mutex<Option<stat64>>,
        xattr: Mutex<Vec<u8>>,
    }

    impl Recorder {
        fn owned_by(uid: u32, gid: u32) -> Recorder {
            Recorder {
                owner: (uid, gid),
                ..Default::default()
            }
        }

        fn saw(&self, ctx: &Context) {
            self.callers.lock().unwrap().push((ctx.uid, ctx.gid));
        }

        fn last_caller(&self) -> (u32, u32) {
            *self.callers.lock().unwrap().last().expect("a call")
        }

        fn entry(&self, mode: u32) -> Entry {
            let mut e = Entry {
                inode: 2,
                ..Default::default()
            };
            e.attr.st_mode = mode;
            (e.attr.st_uid, e.attr.st_gid) = self.owner;
            e
        }
    }

    impl FileSystem for Recorder {
        type Inode = u64;
        type Handle = u64;

        fn lookup(&self, ctx: &Context, _: u64, _: &CStr) -> io::Result<Entry> {
            self.saw(ctx);
            Ok(self.entry(libc::S_IFREG | 0o644))
        }

        fn mknod(&self, ctx: &Context, _: u64, _: &CStr, mode: u32, _: u32, _: u32) -> io::Result<Entry> {
            self.saw(ctx);
            Ok(self.entry(mode))
        }

        fn getattr(&self, ctx: &Context, _: u64, _: Option<u64>) -> io::Result<(stat64, Duration)> {
            self.saw(ctx);
            Ok((self.entry(libc::S_IFREG).attr, Duration::ZERO))
        }

        fn setattr(
            &self,
            ctx: &Context,
            _: u64,
            attr: stat64,
            _: Option<u64>,
            _: SetattrValid,
        ) -> io::Result<(stat64, Duration)> {
            self.saw(ctx);
            *self.set.lock().unwrap() = Some(attr);
            Ok((attr, Duration::ZERO))
        }

        fn readdirplus(
            &self,
            ctx: &Context,
            _: u64,
            _: u64,
            _: u32,
            _: u64,
            add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
        ) -> io::Result<()> {
            self.saw(ctx);
            let d = DirEntry {
                ino: 2,
                offset: 1,
                type_: libc::DT_REG as u32,
                name: b"f",
            };
            add_entry(d, self.entry(libc::S_IFREG | 0o644))?;
            add_entry(d, Entry::default())?;
            Ok(())
        }

        fn setxattr(&self, ctx: &Context, _: u64, _: &CStr, value: &[u8], _: u32) -> io::Result<()> {
            self.saw(ctx);
            *self.xattr.lock().unwrap() = value.to_vec();
            Ok(())
        }

        fn getxattr(&self, _: &Context, _: u64, _: &CStr, size: u32) -> io::Result<GetxattrReply> {
            let v = self.xattr.lock().unwrap().clone();
            if size == 0 {
                Ok(GetxattrReply::Count(v.len() as u32))
            } else if v.len() > size as usize {
                Err(err(libc::ERANGE))
            } else {
                Ok(GetxattrReply::Value(v))
            }
        }
    }

    fn ids(uid: &[&str], gid: &[&str]) -> IdMaps {
        let map = |rules: &[&str]| IdMap::new(rules.iter().map(|s| s.parse().unwrap()).collect()).unwrap();
        IdMaps {
            uid: map(uid),
            gid: map(gid),
        }
    }

    fn guest(uid: u32, gid: u32) -> Context {
        Context { uid, gid, pid: 7 }
    }

    const ROOT_TO_1000: [&str; 2] = ["map:0:1000:1", "map:1000:2000:10"];

    fn code(r: io::Result<impl Sized>) -> i32 {
        r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
    }

    #[test]
    fn callers_act_as_their_host_ids_and_unmapped_ones_as_nobody() {
        let fs = IdMapped::new(
            Recorder::owned_by(1000, 1000),
            ids(&ROOT_TO_1000, &["map:0:1000:1"]),
        );
        fs.lookup(&guest(0, 0), 1, c"f").unwrap();
        assert_eq!(fs.inner().last_caller(), (1000, 1000));
        fs.lookup(&guest(1003, 0), 1, c"f").unwrap();
        assert_eq!(fs.inner().last_caller(), (2003, 1000));
        fs.lookup(&guest(5, 5), 1, c"f").unwrap();
        assert_eq!(fs.inner().last_caller(), (OVERFLOW_ID, OVERFLOW_ID));
        // Only uids translated: gids pass as they are.
        let fs = IdMapped::new(Recorder::owned_by(1000, 1000), ids(&ROOT_TO_1000, &[]));
        fs.lookup(&guest(0, 42), 1, c"f").unwrap();
        assert_eq!(fs.inner().last_caller(), (1000, 42));
    }

    #[test]
    fn replies_show_guest_ids_and_unmapped_host_ids_as_nobody() {
        let fs = IdMapped::new(Recorder::owned_by(1000, 2005), ids(&ROOT_TO_1000, &ROOT_TO_1000));
        let e = fs.lookup(&guest(0, 0), 1, c"f").unwrap();
        assert_eq!((e.attr.st_uid, e.attr.st_gid), (0, 1005));
        let (st, _) = fs.getattr(&guest(0, 0), 2, None).unwrap();
        assert_eq!((st.st_uid, st.st_gid), (0, 1005));
        let mut listed = Vec::new();
        fs.readdirplus(&guest(0, 0), 1, 0, 4096, 0, &mut |_, e| {
            listed.push((e.inode, e.attr.st_uid, e.attr.st_gid));
            Ok(1)
        })
        .unwrap();
        // The negative entry keeps its empty attributes.
        assert_eq!(listed, [(2, 0, 1005), (0, 0, 0)]);
        let fs = IdMapped::new(Recorder::owned_by(0, 4242), ids(&ROOT_TO_1000, &ROOT_TO_1000));
        let e = fs.lookup(&guest(0, 0), 1, c"f").unwrap();
        assert_eq!((e.attr.st_uid, e.attr.st_gid), (OVERFLOW_ID, OVERFLOW_ID));
    }

    #[test]
    fn chown_targets_are_translated_and_unmapped_ones_refused() {
        let fs = IdMapped::new(
            Recorder::owned_by(1000, 1000),
            ids(&ROOT_TO_1000, &["map:0:1000:1"]),
        );
        let mut attr = fs.inner().entry(libc::S_IFREG).attr;
        attr.st_uid = 1001;
        attr.st_gid = 0;
        let (st, _) = fs
            .setattr(&guest(0, 0), 2, attr, None, SetattrValid::UID | SetattrValid::GID)
            .unwrap();
        let set = fs.inner().set.lock().unwrap().take().unwrap();
        assert_eq!((set.st_uid, set.st_gid), (2001, 1000), "what the host was asked");
        assert_eq!((st.st_uid, st.st_gid), (1001, 0), "what the guest is told");
        for (uid, gid, valid) in [
            (5, 0, SetattrValid::UID),
            (OVERFLOW_ID, 0, SetattrValid::UID),
            (0, 7, SetattrValid::GID),
        ] {
            attr.st_uid = uid;
            attr.st_gid = gid;
            assert_eq!(code(fs.setattr(&guest(0, 0), 2, attr, None, valid)), libc::EINVAL);
            assert!(
                fs.inner().set.lock().unwrap().is_none(),
                "refused before the host"
            );
        }
        // Ids not being changed are not looked at.
        attr.st_mode = libc::S_IFREG | 0o4755;
        fs.setattr(&guest(0, 0), 2, attr, None, SetattrValid::MODE)
            .unwrap();
        assert_eq!(fs.inner().last_caller(), (1000, 1000));
    }

    #[test]
    fn device_nodes_need_host_root() {
        let fs = IdMapped::new(Recorder::owned_by(1000, 1000), ids(&ROOT_TO_1000, &[]));
        for kind in [libc::S_IFCHR, libc::S_IFBLK] {
            assert_eq!(
                code(fs.mknod(&guest(0, 0), 1, c"dev", kind | 0o600, 0x801, 0)),
                libc::EPERM
            );
        }
        fs.mknod(&guest(0, 0), 1, c"fifo", libc::S_IFIFO | 0o600, 0, 0)
            .unwrap();
        fs.mknod(&guest(0, 0), 1, c"file", libc::S_IFREG | 0o600, 0, 0)
            .unwrap();
        let fs = IdMapped::new(Recorder::owned_by(0, 0), ids(&["map:0:0:1"], &[]));
        fs.mknod(&guest(0, 0), 1, c"dev", libc::S_IFCHR | 0o600, 0x103, 0)
            .unwrap();
    }

    #[test]
    fn acl_and_capability_values_are_translated_on_their_way_through() {
        let fs = IdMapped::new(Recorder::owned_by(1000, 1000), ids(&ROOT_TO_1000, &[]));
        // An ACL granting guest uid 1001 (host 2001) read access:
        // u::rw-,u:1001:r--,g::r--,m::r--,o::---.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1001),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        fs.setxattr(&guest(0, 0), 2, c"system.posix_acl_access", &acl, 0)
            .unwrap();
        assert_eq!(fs.inner().xattr.lock().unwrap()[16..20], 2001u32.to_le_bytes());
        match fs
            .getxattr(&guest(0, 0), 2, c"system.posix_acl_access", 64)
            .unwrap()
        {
            GetxattrReply::Value(v) => assert_eq!(v, acl),
            GetxattrReply::Count(n) => panic!("a count ({n}) for a value"),
        }
        // A user.* value is bytes, whatever they look like.
        fs.setxattr(&guest(0, 0), 2, c"user.acl", &acl, 0).unwrap();
        assert_eq!(*fs.inner().xattr.lock().unwrap(), acl);
        // Capabilities: stored for the guest root's host id (version 3,
        // 24 bytes), shown as the 20 bytes the guest wrote, also to a size
        // query.
        let mut caps = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
        caps.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        fs.setxattr(&guest(0, 0), 2, c"security.capability", &caps, 0)
            .unwrap();
        assert_eq!(fs.inner().xattr.lock().unwrap().len(), 24);
        for size in [0, 20] {
            match fs
                .getxattr(&guest(0, 0), 2, c"security.capability", size)
                .unwrap()
            {
                GetxattrReply::Value(v) => assert_eq!(v, caps),
                GetxattrReply::Count(n) => panic!("a count ({n}) for a value"),
            }
        }
        let mut unmapped = acl.clone();
        unmapped[16..20].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            code(fs.setxattr(&guest(0, 0), 2, c"system.posix_acl_default", &unmapped, 0)),
            libc::EINVAL
        );
    }
}
