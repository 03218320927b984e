//! `MetaFs`: the filesystem a client mounts. Its namespace is the metadata
//! layer (a [`Namespace`]: [`crate::meta::Meta`] in this process, or
//! [`crate::net::RemoteMeta`] for an `xfused meta` service); its file data
//! is in a [`FileData`]: the local chunk store, or the storage cluster.
//!
//! A size change cuts the data first and commits the size after (see
//! [`FileData::cut`]): a crash in between leaves the old size over fewer
//! bytes (reading zeros), never a larger size over old bytes.
//!
//! `fallocate` takes mode 0 and `FALLOC_FL_KEEP_SIZE` (allocate),
//! `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` and `FALLOC_FL_ZERO_RANGE`
//! (with or without `KEEP_SIZE`); any other mode is `EOPNOTSUPP`. Allocating
//! reserves nothing: chunks stay sparse (neither store can promise space
//! ahead: the local one shares its disk, the cluster's targets are
//! elsewhere), so it only grows the size. Punching and zeroing go through
//! [`FileData::zero`]: whole chunks are emptied, the edges get zeros.
//! Every fallocate that succeeds updates mtime and ctime, growing or not,
//! as ext4 and tmpfs do on Linux 6.x (their fallocate calls
//! `file_modified()`); the kernel leaves the times to us (a FUSE inode
//! without writeback cache is `S_NOCMTIME`). A size grown by fallocate is
//! handled like one grown by truncate: whatever a crash left past the old
//! end is cut first.
//!
//! `lseek`'s `SEEK_DATA` and `SEEK_HOLE` answer from the chunks that hold
//! data (see [`crate::data`]).
//!
//! Inode numbers are the metadata layer's; the kernel's lookup counts need
//! no bookkeeping here, because an inode's life is decided by the metadata
//! (links and open-file sessions), not by this process's memory. Open file
//! handles are the metadata layer's session handles.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use crate::data::{seek_hole_data, FileData, Seek};
use crate::meta::schema::{InodeRec, Timestamp};
use crate::meta::{
    relatime_due, Caller, Clock, MetaError, Namespace, Reclaim, SetAttr, SystemClock, TimeSet,
    FILE_SIZE_MAX_BYTES,
};

/// Block size reported in stat and statfs.
const BLOCK_SIZE: u32 = 4096;
/// Entries fetched from the metadata layer per readdir round.
const READDIR_BATCH: usize = 128;
/// Largest read or write served at once (the kernel's max_write is lower).
const IO_LEN_MAX: u32 = 16 << 20;

thread_local! {
    /// Where a FUSE thread takes a write's data from the kernel's request:
    /// zeroed once, up to the largest write it has served (at most
    /// [`IO_LEN_MAX`]), not once per write.
    static WRITE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Settings of a [`MetaFs`].
#[derive(Debug, Clone)]
pub struct MetaFsConfig {
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache entries.
    pub entry_timeout: Duration,
    /// Check permissions in the metadata layer (needed when the mount does
    /// not use the kernel's `default_permissions`).
    pub check_permissions: bool,
    /// State callers' supplementary groups (read from `/proc/PID/status`)
    /// to the metadata layer: a service checks every caller, and needs
    /// them to decide as the kernel would.
    pub caller_groups: bool,
    /// When reads and listings update access times: the mount's own
    /// option (the kernel leaves it to a FUSE filesystem), `Noatime` on a
    /// read-only mount.
    pub atime: kmod_shim::Atime,
}

/// See the module docs.
#[derive(Debug)]
pub struct MetaFs {
    meta: Arc<dyn Namespace>,
    data: Arc<dyn FileData>,
    config: MetaFsConfig,
    /// Directories the kernel has open: handle -> inode and its record
    /// at opendir (see [`MetaFs::getattr`]). One per open directory
    /// description, dropped at RELEASEDIR.
    open_dirs: Mutex<HashMap<u64, (u64, InodeRec)>>,
    /// The next directory handle.
    dir_handle_next: AtomicU64,
    /// Regular files' records as a write first read them, for later
    /// writes: a write uses only a file's type, chunk size and layout id,
    /// which never change while the inode lives (and inode numbers are
    /// never reused), so those writes ask the metadata layer only to
    /// commit their size. At most [`WRITE_RECS_MAX`]; cleared past it.
    write_recs: Mutex<HashMap<u64, Arc<InodeRec>>>,
    /// Regular files' records as an open, a getattr or a read last had
    /// them, and when: a read within the attribute timeout uses the record
    /// kept (its size, layout and times) instead of asking the metadata
    /// layer again, as the kernel uses its cached attributes. A change
    /// this mount makes to the file drops it, so the mount reads its own
    /// writes at once; another client's change shows within the timeout
    /// (at once after an open). At most [`WRITE_RECS_MAX`]; cleared past
    /// it.
    read_recs: Mutex<HashMap<u64, (Arc<InodeRec>, Instant)>>,
    /// Bumped, under `read_recs`, by every change this mount makes: a
    /// record fetched before a change is not kept.
    read_epoch: AtomicU64,
}

/// Most records [`MetaFs`] keeps for writes, and for reads.
const WRITE_RECS_MAX: usize = 1 << 16;

fn io_err(e: MetaError) -> io::Error {
    if let MetaError::Kv(_) | MetaError::Schema(_) | MetaError::Corrupt(_) = e {
        tracing::error!("metadata operation failed: {e}");
    }
    e.into()
}

/// A zeroed `statvfs64` without `unsafe`: the trait's default `statfs`
/// builds one (with `f_namemax` and `f_bsize` set).
struct Defaults;
impl FileSystem for Defaults {
    type Inode = u64;
    type Handle = u64;
}

fn stat(ino: u64, rec: &InodeRec) -> stat64 {
    let mut st = Entry::default().attr;
    st.st_ino = ino;
    st.st_mode = rec.mode;
    st.st_nlink = u64::from(rec.nlink);
    st.st_uid = rec.uid;
    st.st_gid = rec.gid;
    st.st_size = rec.size as i64;
    st.st_rdev = u64::from(rec.rdev);
    st.st_blksize = i64::from(BLOCK_SIZE);
    st.st_blocks = rec.size.div_ceil(512) as i64;
    st.st_atime = rec.atime.sec;
    st.st_atime_nsec = i64::from(rec.atime.nsec);
    st.st_mtime = rec.mtime.sec;
    st.st_mtime_nsec = i64::from(rec.mtime.nsec);
    st.st_ctime = rec.ctime.sec;
    st.st_ctime_nsec = i64::from(rec.ctime.nsec);
    st
}

fn timestamp(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

impl MetaFs {
    /// A filesystem over `meta` with file data in `data`.
    pub fn new(meta: Arc<dyn Namespace>, data: Arc<dyn FileData>, config: MetaFsConfig) -> MetaFs {
        MetaFs {
            meta,
            data,
            config,
            open_dirs: Mutex::new(HashMap::new()),
            dir_handle_next: AtomicU64::new(1),
            write_recs: Mutex::new(HashMap::new()),
            read_recs: Mutex::new(HashMap::new()),
            read_epoch: AtomicU64::new(0),
        }
    }

    /// The record a read of `ino` uses: kept within the attribute timeout,
    /// or read now (see [`MetaFs::read_recs`](MetaFs)).
    fn read_rec(&self, ino: u64) -> io::Result<Arc<InodeRec>> {
        if let Some((rec, at)) = self.read_recs.lock().unwrap_or_else(|p| p.into_inner()).get(&ino) {
            if at.elapsed() < self.config.attr_timeout {
                return Ok(rec.clone());
            }
        }
        let epoch = self.read_epoch.load(Ordering::SeqCst);
        let rec = Arc::new(self.meta.getattr(ino).map_err(io_err)?);
        self.keep_read_rec(ino, &rec, epoch);
        Ok(rec)
    }

    /// Keeps `rec`, read after `epoch` was current, for reads of `ino`;
    /// not if this mount changed something since.
    fn keep_read_rec(&self, ino: u64, rec: &Arc<InodeRec>, epoch: u64) {
        if self.config.attr_timeout.is_zero() || rec.kind() != libc::S_IFREG {
            return;
        }
        let mut recs = self.read_recs.lock().unwrap_or_else(|p| p.into_inner());
        if self.read_epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if recs.len() >= WRITE_RECS_MAX {
            recs.clear();
        }
        recs.insert(ino, (rec.clone(), Instant::now()));
    }

    /// This mount changed `ino` (committed): reads ask for its record
    /// again.
    fn changed(&self, ino: u64) {
        let mut recs = self.read_recs.lock().unwrap_or_else(|p| p.into_inner());
        self.read_epoch.fetch_add(1, Ordering::SeqCst);
        recs.remove(&ino);
    }

    /// The record a write of `ino` passes to [`FileData::write`]: kept
    /// from an earlier write, or read now and kept (see
    /// [`MetaFs::write_recs`](MetaFs)).
    fn write_rec(&self, ino: u64) -> io::Result<Arc<InodeRec>> {
        if let Some(rec) = self
            .write_recs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
        {
            return Ok(rec.clone());
        }
        let rec = Arc::new(self.meta.getattr(ino).map_err(io_err)?);
        if rec.kind() == libc::S_IFREG {
            let mut recs = self.write_recs.lock().unwrap_or_else(|p| p.into_inner());
            if recs.len() >= WRITE_RECS_MAX {
                recs.clear();
            }
            recs.insert(ino, rec.clone());
        }
        Ok(rec)
    }

    /// The metadata handle.
    pub fn meta(&self) -> &Arc<dyn Namespace> {
        &self.meta
    }

    /// Records a read of the file or a listing of the directory in its
    /// atime, by the mount's rule; `rec` is the inode as just read. The
    /// relatime rule is checked here first, so the usual read (atime
    /// already after the last change) costs no transaction. A failed
    /// update is logged, never the access's error.
    fn note_access(&self, ino: u64, rec: &InodeRec) {
        let strict = match self.config.atime {
            kmod_shim::Atime::Noatime => return,
            kmod_shim::Atime::Relatime => false,
            kmod_shim::Atime::Strictatime => true,
        };
        if !strict && !relatime_due(rec, SystemClock.now()) {
            return;
        }
        if let Err(e) = self.meta.touch_atime(ino, strict) {
            tracing::debug!("updating the atime of inode {ino}: {e}");
        }
        self.changed(ino);
    }

    fn caller(&self, ctx: &Context) -> Caller {
        // Root passes every group check: its groups are not read.
        let groups = if self.config.caller_groups && ctx.uid != 0 {
            std::fs::read_to_string(format!("/proc/{}/status", ctx.pid))
                .ok()
                .and_then(|status| xfuse::perm::parse_groups(&status))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Caller {
            uid: ctx.uid,
            gid: ctx.gid,
            groups,
            check: self.config.check_permissions,
            umask: 0,
        }
    }

    /// [`MetaFs::caller`] creating with `umask` (with FUSE_DONT_MASK the
    /// kernel leaves it to us; without, it is applied already, and applying
    /// it again changes nothing).
    fn creator(&self, ctx: &Context, umask: u32) -> Caller {
        Caller {
            umask,
            ..self.caller(ctx)
        }
    }

    fn entry(&self, ino: u64, rec: &InodeRec) -> Entry {
        Entry {
            inode: ino,
            generation: 0,
            attr: stat(ino, rec),
            attr_flags: 0,
            attr_timeout: self.config.attr_timeout,
            entry_timeout: self.config.entry_timeout,
        }
    }

    /// Deletes the data of inodes the metadata layer let go of.
    pub fn reclaim(&self, reclaim: Option<Reclaim>) {
        if let Some(r) = reclaim {
            if let Err(e) = self.data.remove(&r) {
                tracing::warn!(
                    "deleting the chunks of inode {} (layout {}): {e}",
                    r.ino,
                    r.layout_id
                );
            }
        }
    }
}

/// What a `fallocate` mode asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallocate {
    /// Mode 0 or `KEEP_SIZE`: reserve (nothing here: see the module docs).
    Allocate,
    /// `PUNCH_HOLE | KEEP_SIZE`.
    PunchHole,
    /// `ZERO_RANGE`, with or without `KEEP_SIZE`.
    ZeroRange,
}

impl Fallocate {
    /// The operation and whether the size stays, or `EOPNOTSUPP`.
    fn parse(mode: u32) -> io::Result<(Fallocate, bool)> {
        let keep_size = libc::FALLOC_FL_KEEP_SIZE as u32;
        let op = match mode & !keep_size {
            0 => Fallocate::Allocate,
            m if m == libc::FALLOC_FL_PUNCH_HOLE as u32 && mode & keep_size != 0 => Fallocate::PunchHole,
            m if m == libc::FALLOC_FL_ZERO_RANGE as u32 => Fallocate::ZeroRange,
            _ => return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        };
        Ok((op, mode & keep_size != 0))
    }
}

fn name_bytes(name: &CStr) -> &[u8] {
    name.to_bytes()
}

impl FileSystem for MetaFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::MAX_PAGES
            | FsOptions::EXPORT_SUPPORT)
    }

    fn destroy(&self) {}

    /// A LOOKUP of "." names the node itself, of any type: the kernel
    /// sends one to turn a file handle (`open_by_handle_at`, an NFS
    /// re-export) into an inode it no longer holds, and ".." for a
    /// directory's parent. Inode numbers are never reused, so a handle
    /// stays good until its file is gone, across remounts.
    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if name.to_bytes() == b"." {
            let rec = self.meta.getattr(parent).map_err(io_err)?;
            return Ok(self.entry(parent, &rec));
        }
        let (ino, rec) = self
            .meta
            .lookup(&self.caller(ctx), parent, name_bytes(name))
            .map_err(io_err)?;
        Ok(self.entry(ino, &rec))
    }

    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}

    /// A directory removed (rmdir, or replaced by a rename) while open
    /// still answers `fstat` on its descriptors, as on Linux filesystems:
    /// with its record from the last opendir and no links (xfstests
    /// generic/035). The namespace deletes a directory's record with its
    /// last entry; listing it is refused by the kernel itself (ENOENT).
    fn getattr(&self, _ctx: &Context, inode: u64, _handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        let epoch = self.read_epoch.load(Ordering::SeqCst);
        match self.meta.getattr(inode) {
            Ok(rec) => {
                let attr = stat(inode, &rec);
                self.keep_read_rec(inode, &Arc::new(rec), epoch);
                Ok((attr, self.config.attr_timeout))
            }
            Err(MetaError::Errno(libc::ENOENT)) => {
                let dirs = self.open_dirs.lock().unwrap_or_else(|p| p.into_inner());
                let Some((_, rec)) = dirs.values().find(|(ino, _)| *ino == inode) else {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                };
                let gone = InodeRec {
                    nlink: 0,
                    ..rec.clone()
                };
                Ok((stat(inode, &gone), self.config.attr_timeout))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let time = |set: SetattrValid, now: SetattrValid, sec: i64, nsec: i64| {
            if valid.contains(now) {
                Some(TimeSet::Now)
            } else if valid.contains(set) {
                Some(TimeSet::At(timestamp(sec, nsec)))
            } else {
                None
            }
        };
        let set = SetAttr {
            mode: valid.contains(SetattrValid::MODE).then_some(attr.st_mode),
            uid: valid.contains(SetattrValid::UID).then_some(attr.st_uid),
            gid: valid.contains(SetattrValid::GID).then_some(attr.st_gid),
            size: valid
                .contains(SetattrValid::SIZE)
                .then_some(attr.st_size.max(0) as u64),
            atime: time(
                SetattrValid::ATIME,
                SetattrValid::ATIME_NOW,
                attr.st_atime,
                attr.st_atime_nsec,
            ),
            mtime: time(
                SetattrValid::MTIME,
                SetattrValid::MTIME_NOW,
                attr.st_mtime,
                attr.st_mtime_nsec,
            ),
            ctime: valid
                .contains(SetattrValid::CTIME)
                .then(|| timestamp(attr.st_ctime, attr.st_ctime_nsec)),
            handle: handle.filter(|_| valid.contains(SetattrValid::SIZE)),
        };
        // The data is cut before the size commits (module docs), at the
        // lower of the sizes: shrinking drops the tail, growing drops
        // whatever a crash left past the old end.
        let before = match set.size {
            Some(new) => {
                let rec = self.meta.getattr(inode).map_err(io_err)?;
                // Nothing is cut for a caller the size change will refuse:
                // the metadata layer checks write permission unless the
                // change comes through a handle opened for writing.
                if new < rec.size && self.config.check_permissions && set.handle.is_none() {
                    self.meta
                        .access(&self.caller(ctx), inode, libc::W_OK as u32)
                        .map_err(io_err)?;
                }
                if rec.kind() == libc::S_IFREG {
                    self.data.cut(inode, &rec, rec.size.min(new))?;
                }
                Some(rec.size)
            }
            None => None,
        };
        let set_result = self.meta.setattr(&self.caller(ctx), inode, &set).map_err(io_err);
        self.changed(inode);
        let (rec, old_size) = set_result?;
        if let (Some(old), Some(seen)) = (old_size, before) {
            // Another client changed the size in between: cut again.
            if old.min(rec.size) < seen.min(rec.size) {
                self.data.cut(inode, &rec, old.min(rec.size))?;
            }
        }
        Ok((stat(inode, &rec), self.config.attr_timeout))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.meta.readlink(inode).map_err(io_err)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        let (ino, rec) = self
            .meta
            .symlink(&self.caller(ctx), parent, name_bytes(name), linkname.to_bytes())
            .map_err(io_err)?;
        Ok(self.entry(ino, &rec))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (ino, rec, _) = self
            .meta
            .mknod(
                &self.creator(ctx, umask),
                parent,
                name_bytes(name),
                mode,
                rdev,
                &[],
                false,
            )
            .map_err(io_err)?;
        Ok(self.entry(ino, &rec))
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        let (ino, rec) = self
            .meta
            .mkdir(&self.creator(ctx, umask), parent, name_bytes(name), mode)
            .map_err(io_err)?;
        Ok(self.entry(ino, &rec))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let reclaim = self
            .meta
            .unlink(&self.caller(ctx), parent, name_bytes(name))
            .map_err(io_err)?;
        self.reclaim(reclaim);
        Ok(())
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.meta
            .rmdir(&self.caller(ctx), parent, name_bytes(name))
            .map_err(io_err)
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
        let reclaim = self
            .meta
            .rename(
                &self.caller(ctx),
                olddir,
                name_bytes(oldname),
                newdir,
                name_bytes(newname),
                flags,
            )
            .map_err(io_err)?;
        self.reclaim(reclaim);
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let rec = self
            .meta
            .link(&self.caller(ctx), inode, newparent, name_bytes(newname))
            .map_err(io_err)?;
        Ok(self.entry(inode, &rec))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let accmode = flags as i32 & libc::O_ACCMODE;
        let read = accmode != libc::O_WRONLY;
        let write = accmode != libc::O_RDONLY;
        let epoch = self.read_epoch.load(Ordering::SeqCst);
        let (rec, handle) = self
            .meta
            .open(&self.caller(ctx), inode, read, write)
            .map_err(io_err)?;
        // Close-to-open: reads through this open start from the record
        // as the open found it.
        self.keep_read_rec(inode, &Arc::new(rec), epoch);
        Ok((Some(handle), OpenOptions::empty(), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let mode = libc::S_IFREG | (args.mode & 0o7777);
        if args.flags as i32 & libc::O_TMPFILE == libc::O_TMPFILE {
            // xfuse hands TMPFILE over this way (Policy::tmpfile_through_create),
            // with an empty name.
            let (ino, rec, handle) = self
                .meta
                .tmpfile(&self.creator(ctx, args.umask), parent, mode)
                .map_err(io_err)?;
            return Ok((self.entry(ino, &rec), Some(handle), OpenOptions::empty(), None));
        }
        let (ino, rec, handle) = self
            .meta
            .mknod(
                &self.creator(ctx, args.umask),
                parent,
                name_bytes(name),
                mode,
                0,
                &[],
                true,
            )
            .map_err(io_err)?;
        Ok((self.entry(ino, &rec), handle, OpenOptions::empty(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let rec = self.read_rec(inode)?;
        if rec.kind() != libc::S_IFREG {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let want = size.min(IO_LEN_MAX) as u64;
        let len = want.min(rec.size.saturating_sub(offset)) as usize;
        let n = self.data.read_to(inode, &rec, offset, len, w)?;
        self.note_access(inode, &rec);
        Ok(n)
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        if size > IO_LEN_MAX {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // The metadata layer refuses the new size too (for every client);
        // checking first keeps the data of a refused write out of the
        // chunk store.
        let end = offset
            .checked_add(u64::from(size))
            .filter(|end| *end <= FILE_SIZE_MAX_BYTES)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let rec = self.write_rec(inode)?;
        WRITE_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let data = &mut buf[..size];
            r.read_exact(data)?;
            if rec.kind() != libc::S_IFREG {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.data.write(inode, &rec, offset, data)?;
            let noted = self.meta.note_write(inode, handle, end).map_err(io_err);
            self.changed(inode);
            noted?;
            Ok(size)
        })
    }

    /// See the module docs. Like a write, it needs a session opened for
    /// writing (the kernel answers `EBADF` for others, and the metadata
    /// layer checked `W_OK` at the open when it checks permissions); the
    /// data changes first, then the size and times commit (also checking
    /// the session, as a write's do).
    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let (op, keep_size) = Fallocate::parse(mode)?;
        // The kernel refuses these already (vfs_fallocate); its offsets
        // are signed.
        if length == 0 || offset > i64::MAX as u64 || length > i64::MAX as u64 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let end = offset
            .checked_add(length)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let grows_to = (!keep_size).then_some(end);
        // Space past the largest size cannot be had; bytes there are never
        // data, so zeroing them with the size kept is no error (ext4 and
        // tmpfs agree).
        if (op == Fallocate::Allocate || grows_to.is_some()) && end > FILE_SIZE_MAX_BYTES {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        let rec = self.meta.getattr(inode).map_err(io_err)?;
        match rec.kind() {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => return Err(io::Error::from_raw_os_error(libc::ENODEV)),
        }
        if grows_to.is_some_and(|end| end > rec.size) {
            self.data.cut(inode, &rec, rec.size)?;
        }
        if op != Fallocate::Allocate {
            // Past the size (and anything a crash left there was cut
            // above, or is cut before the size ever grows over it) the
            // bytes read as zeros already.
            let zero_end = end.min(rec.size);
            if offset < zero_end {
                self.data.zero(inode, &rec, offset..zero_end)?;
            }
        }
        let noted = self
            .meta
            .note_write(inode, handle, grows_to.unwrap_or(0))
            .map_err(io_err);
        self.changed(inode);
        noted?;
        Ok(())
    }

    /// `SEEK_DATA` and `SEEK_HOLE` (the kernel does the others itself).
    fn lseek(&self, _ctx: &Context, inode: u64, _handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        let seek = match whence as i32 {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let rec = self.meta.getattr(inode).map_err(io_err)?;
        if rec.kind() != libc::S_IFREG {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if offset >= rec.size {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        let cs = u64::from(rec.chunk_size.max(1));
        let data = self
            .data
            .data_chunks(inode, &rec, offset / cs..rec.size.div_ceil(cs))?;
        seek_hole_data(&data, rec.chunk_size, rec.size, offset, seek)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENXIO))
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Ok(())
    }

    /// The file's data, then the metadata (its size and everything else
    /// acknowledged so far: the engine syncs whole, not per inode). Also
    /// for fdatasync: the size is what reading the data back needs.
    fn fsync(&self, _ctx: &Context, inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        let rec = self.meta.getattr(inode).map_err(io_err)?;
        self.data.sync(inode, &rec)?;
        self.meta.sync().map_err(io_err)
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let reclaim = self.meta.release(inode, handle).map_err(io_err)?;
        self.reclaim(reclaim);
        Ok(())
    }

    fn statfs(&self, ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        let usage = self.meta.usage().map_err(io_err)?;
        let mut st = Defaults.statfs(ctx, 0)?;
        // Capacity is not limited by the metadata layer; report the used
        // amounts from the counters and a large, fixed headroom.
        let blocks_used = usage.bytes.div_ceil(u64::from(BLOCK_SIZE));
        let free: u64 = 1 << 40;
        st.f_bsize = u64::from(BLOCK_SIZE);
        st.f_frsize = u64::from(BLOCK_SIZE);
        st.f_blocks = blocks_used + free;
        st.f_bfree = free;
        st.f_bavail = free;
        st.f_files = usage.inodes + free;
        st.f_ffree = free;
        st.f_favail = free;
        st.f_namemax = crate::meta::schema::NAME_LEN_MAX as u64;
        Ok(st)
    }

    fn setxattr(&self, ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.meta
            .setxattr(&self.caller(ctx), inode, name.to_bytes(), value, flags)
            .map_err(io_err)
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        let value = self.meta.getxattr(inode, name.to_bytes()).map_err(io_err)?;
        if size == 0 {
            return Ok(GetxattrReply::Count(value.len() as u32));
        }
        if value.len() > size as usize {
            return Err(io::Error::from_raw_os_error(libc::ERANGE));
        }
        Ok(GetxattrReply::Value(value))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let mut out = Vec::new();
        for name in self.meta.listxattr(inode).map_err(io_err)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        if size == 0 {
            return Ok(ListxattrReply::Count(out.len() as u32));
        }
        if out.len() > size as usize {
            return Err(io::Error::from_raw_os_error(libc::ERANGE));
        }
        Ok(ListxattrReply::Names(out))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.meta
            .removexattr(&self.caller(ctx), inode, name.to_bytes())
            .map_err(io_err)
    }

    fn opendir(&self, ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let rec = self.meta.opendir(&self.caller(ctx), inode).map_err(io_err)?;
        let handle = self.dir_handle_next.fetch_add(1, Ordering::Relaxed);
        self.open_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle, (inode, rec));
        Ok((Some(handle), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // A listing is an access of the directory, once, at its start.
        if offset == 0 && self.config.atime != kmod_shim::Atime::Noatime {
            let rec = self.meta.getattr(inode).map_err(io_err)?;
            self.note_access(inode, &rec);
        }
        let mut after = offset;
        loop {
            let items = self.meta.readdir(inode, after, READDIR_BATCH).map_err(io_err)?;
            if items.is_empty() {
                return Ok(());
            }
            for item in &items {
                let added = add_entry(DirEntry {
                    ino: item.ino,
                    offset: item.cookie,
                    type_: item.kind >> 12,
                    name: &item.name,
                })?;
                if added == 0 {
                    return Ok(());
                }
                after = item.cookie;
            }
        }
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.open_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        Ok(())
    }

    /// A directory's entries are metadata only: the engine's sync makes
    /// them (and every other acknowledged change) durable.
    fn fsyncdir(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        self.meta.sync().map_err(io_err)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.meta.access(&self.caller(ctx), inode, mask).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkStore;
    use crate::data::LocalData;
    use crate::meta::embedded::{Durability, EmbeddedEngine};
    use crate::meta::schema::ROOT_INO;
    use crate::meta::{Meta, MetaConfig, SystemClock};

    /// A MetaFs on an embedded store with buffered durability, whose
    /// `all_synced` counts only the syncs asked of the engine (not fjall's
    /// background timer): what fsync and fsyncdir must do.
    fn fs() -> (MetaFs, Arc<EmbeddedEngine>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(EmbeddedEngine::open(&dir.path().join("meta"), Durability::default()).unwrap());
        let meta = Meta::connect(engine.clone(), MetaConfig::default(), Arc::new(SystemClock)).unwrap();
        let data = LocalData(ChunkStore::open(&dir.path().join("data")).unwrap());
        let config = MetaFsConfig {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            check_permissions: false,
            caller_groups: false,
            atime: kmod_shim::Atime::Relatime,
        };
        (MetaFs::new(Arc::new(meta), Arc::new(data), config), engine, dir)
    }

    fn create(fs: &MetaFs, name: &CStr) -> (u64, u64) {
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&Context::default(), ROOT_INO, name, args).unwrap();
        (entry.inode, handle.unwrap())
    }

    #[test]
    fn fsync_makes_the_files_metadata_durable() {
        let (fs, engine, _dir) = fs();
        let (ino, handle) = create(&fs, c"a");
        assert!(!engine.all_synced(), "the create should wait for the timer");
        fs.fsync(&Context::default(), ino, false, handle).unwrap();
        assert!(
            engine.all_synced(),
            "fsync returned before the create was on disk"
        );
        // fdatasync too: the size is part of reading the data back.
        create(&fs, c"b");
        fs.fsync(&Context::default(), ino, true, handle).unwrap();
        assert!(engine.all_synced());
    }

    #[test]
    fn fsyncdir_makes_the_directorys_entries_durable() {
        let (fs, engine, _dir) = fs();
        create(&fs, c"a");
        assert!(!engine.all_synced());
        fs.fsyncdir(&Context::default(), ROOT_INO, false, 0).unwrap();
        assert!(
            engine.all_synced(),
            "fsyncdir returned before the entry was on disk"
        );
    }

    #[test]
    fn fallocate_modes_are_parsed_as_the_kernel_names_them() {
        let keep = libc::FALLOC_FL_KEEP_SIZE as u32;
        let punch = libc::FALLOC_FL_PUNCH_HOLE as u32;
        let zero = libc::FALLOC_FL_ZERO_RANGE as u32;
        assert_eq!(Fallocate::parse(0).unwrap(), (Fallocate::Allocate, false));
        assert_eq!(Fallocate::parse(keep).unwrap(), (Fallocate::Allocate, true));
        assert_eq!(
            Fallocate::parse(punch | keep).unwrap(),
            (Fallocate::PunchHole, true)
        );
        assert_eq!(Fallocate::parse(zero).unwrap(), (Fallocate::ZeroRange, false));
        assert_eq!(
            Fallocate::parse(zero | keep).unwrap(),
            (Fallocate::ZeroRange, true)
        );
        for mode in [
            punch,
            punch | zero | keep,
            libc::FALLOC_FL_COLLAPSE_RANGE as u32,
            libc::FALLOC_FL_INSERT_RANGE as u32,
            libc::FALLOC_FL_UNSHARE_RANGE as u32,
            keep | 0x100,
        ] {
            let e = Fallocate::parse(mode).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "mode {mode:#x}");
        }
    }

    /// A store whose process "dies" at one kind of change, before making
    /// it or right after: an error stands for the crash, so nothing after
    /// it (the size commit) happens. What is left is what a SIGKILL at that
    /// point leaves.
    #[derive(Debug)]
    struct DiesAfter {
        inner: LocalData,
        /// Dies at a cut: `Some(true)` once it is made, `Some(false)`
        /// before.
        cut: Option<bool>,
        /// Dies once a write is made.
        write: bool,
    }

    impl FileData for DiesAfter {
        fn read(&self, ino: u64, rec: &InodeRec, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(ino, rec, offset, buf)
        }
        fn write(&self, ino: u64, rec: &InodeRec, offset: u64, data: &[u8]) -> io::Result<()> {
            self.inner.write(ino, rec, offset, data)?;
            if self.write {
                return Err(io::Error::other("killed after the write"));
            }
            Ok(())
        }
        fn cut(&self, ino: u64, rec: &InodeRec, at: u64) -> io::Result<()> {
            if self.cut == Some(false) {
                return Err(io::Error::other("killed before the cut"));
            }
            self.inner.cut(ino, rec, at)?;
            if self.cut == Some(true) {
                return Err(io::Error::other("killed after the cut"));
            }
            Ok(())
        }
        fn remove(&self, reclaim: &Reclaim) -> io::Result<()> {
            self.inner.remove(reclaim)
        }
        fn sync(&self, ino: u64, rec: &InodeRec) -> io::Result<()> {
            self.inner.sync(ino, rec)
        }
        fn zero(&self, ino: u64, rec: &InodeRec, range: std::ops::Range<u64>) -> io::Result<()> {
            self.inner.zero(ino, rec, range)
        }
        fn data_chunks(
            &self,
            ino: u64,
            rec: &InodeRec,
            indexes: std::ops::Range<u64>,
        ) -> io::Result<Vec<u64>> {
            self.inner.data_chunks(ino, rec, indexes)
        }
    }

    /// `fs`'s namespace with file data in `dir`'s chunk store through
    /// `data`: the same files, as a restarted mount sees them.
    fn remount(
        fs: &MetaFs,
        dir: &tempfile::TempDir,
        data: impl FnOnce(LocalData) -> Arc<dyn FileData>,
    ) -> MetaFs {
        let store = LocalData(ChunkStore::open(&dir.path().join("data")).unwrap());
        MetaFs::new(fs.meta.clone(), data(store), fs.config.clone())
    }

    /// A WRITE's bytes, as the kernel hands them to `MetaFs::write`.
    struct Bytes<'a>(&'a [u8]);

    impl io::Read for Bytes<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl ZeroCopyReader for Bytes<'_> {
        fn read_to(
            &mut self,
            _f: &mut dyn fuse_backend_rs::common::file_traits::FileReadWriteVolatile,
            _count: usize,
            _off: u64,
        ) -> io::Result<usize> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// A READ's reply.
    struct Reply(Vec<u8>);

    impl io::Write for Reply {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl ZeroCopyWriter for Reply {
        fn write_from(
            &mut self,
            _f: &mut dyn fuse_backend_rs::common::file_traits::FileReadWriteVolatile,
            _count: usize,
            _off: u64,
        ) -> io::Result<usize> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn available_bytes(&self) -> usize {
            usize::MAX
        }
    }

    fn read_at(fs: &MetaFs, ino: u64, handle: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut reply = Reply(Vec::new());
        let ctx = Context::default();
        fs.read(&ctx, ino, handle, &mut reply, size, offset, None, 0)
            .unwrap();
        reply.0
    }

    fn write_at(fs: &MetaFs, ino: u64, handle: u64, offset: u64, data: &[u8]) {
        let ctx = Context::default();
        let n = fs
            .write(
                &ctx,
                ino,
                handle,
                &mut Bytes(data),
                data.len() as u32,
                offset,
                None,
                false,
                0,
                0,
            )
            .unwrap();
        assert_eq!(n, data.len());
    }

    /// A read uses the record kept from the last read within the
    /// attribute timeout: another client's append does not show, this
    /// mount's own writes and truncates show at once, and a record read
    /// before a change of this mount is not kept.
    #[test]
    fn reads_keep_a_files_record_until_this_mount_changes_the_file() {
        let (mut fs, _engine, _dir) = fs();
        fs.config.attr_timeout = Duration::from_secs(600);
        let (ino, h) = create(&fs, c"f");
        write_at(&fs, ino, h, 0, &[1; 4096]);
        // The first read after a write updates the atime (relatime), which
        // drops the record; the second keeps it.
        for _ in 0..2 {
            assert_eq!(read_at(&fs, ino, h, 0, 8192), vec![1; 4096]);
        }
        // Another client's append, around this MetaFs.
        let rec = fs.meta.getattr(ino).unwrap();
        fs.data.write(ino, &rec, 4096, &[2; 4096]).unwrap();
        fs.meta.note_write(ino, h, 8192).unwrap();
        assert_eq!(read_at(&fs, ino, h, 4096, 4096), Vec::<u8>::new());
        // This mount's own append shows at once, and the other's with it.
        write_at(&fs, ino, h, 8192, &[3; 4096]);
        assert_eq!(read_at(&fs, ino, h, 4096, 8192), [[2; 4096], [3; 4096]].concat());
        // So does its truncate.
        set_size(&fs, ino, 100).unwrap();
        assert_eq!(read_at(&fs, ino, h, 0, 8192).len(), 100);
        // A record read before a change of this mount is not kept.
        let epoch = fs.read_epoch.load(Ordering::SeqCst);
        let old = Arc::new(fs.meta.getattr(ino).unwrap());
        set_size(&fs, ino, 200).unwrap();
        fs.keep_read_rec(ino, &old, epoch);
        assert_eq!(read_at(&fs, ino, h, 0, 8192).len(), 200);
        // With no attribute timeout, every read asks.
        fs.config.attr_timeout = Duration::ZERO;
        let rec = fs.meta.getattr(ino).unwrap();
        fs.data.write(ino, &rec, 200, &[4; 100]).unwrap();
        fs.meta.note_write(ino, h, 300).unwrap();
        assert_eq!(read_at(&fs, ino, h, 0, 8192).len(), 300);
    }

    fn set_size(fs: &MetaFs, ino: u64, size: u64) -> io::Result<()> {
        let mut attr = Entry::default().attr;
        attr.st_size = size as i64;
        fs.setattr(&Context::default(), ino, attr, None, SetattrValid::SIZE)
            .map(|_| ())
    }

    /// The file's bytes as a reader sees them.
    fn contents(fs: &MetaFs, ino: u64) -> Vec<u8> {
        let rec = fs.meta.getattr(ino).unwrap();
        let mut buf = vec![0xeeu8; rec.size as usize];
        assert_eq!(fs.data.read(ino, &rec, 0, &mut buf).unwrap(), buf.len());
        buf
    }

    /// A truncate killed at its cut, before or after making it, leaves
    /// the old size over the old bytes or over zeros, and no later size
    /// brings the old bytes back. (With the size committed first, as
    /// before, a kill before the cut left the new size over old bytes,
    /// and the extension showed them.)
    #[test]
    fn a_truncate_killed_at_its_cut_never_brings_old_bytes_back() {
        for cut_made in [false, true] {
            let (fs, _engine, dir) = fs();
            let (ino, _) = create(&fs, c"a");
            let old: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 + 1).collect();
            set_size(&fs, ino, old.len() as u64).unwrap();
            let rec = fs.meta.getattr(ino).unwrap();
            fs.data.write(ino, &rec, 0, &old).unwrap();
            let dying = remount(&fs, &dir, |store| {
                Arc::new(DiesAfter {
                    inner: store,
                    cut: Some(cut_made),
                    write: false,
                })
            });
            assert!(set_size(&dying, ino, 1000).is_err(), "the truncate was killed");
            let after = remount(&fs, &dir, |store| Arc::new(store));
            let committed = after.meta.getattr(ino).unwrap().size as usize;
            assert_eq!(committed, old.len(), "the size committed before the cut");
            set_size(&after, ino, 5_000_000).unwrap();
            let got = contents(&after, ino);
            assert_eq!(got[..1000], old[..1000]);
            // Below the old size: the old bytes, or zeros where the cut
            // was made; past it, zeros.
            assert!(
                got[1000..committed] == old[1000..] && !cut_made
                    || got[1000..committed].iter().all(|b| *b == 0),
                "cut made: {cut_made}: part of the cut bytes read back"
            );
            assert!(got[committed..].iter().all(|b| *b == 0));
        }
    }

    /// A write killed before its size commits leaves bytes past the end;
    /// a truncate growing the file over them drops them first.
    #[test]
    fn bytes_a_killed_write_left_past_the_end_never_show() {
        let (fs, _engine, dir) = fs();
        let (ino, _) = create(&fs, c"a");
        let dying = remount(&fs, &dir, |store| {
            Arc::new(DiesAfter {
                inner: store,
                cut: None,
                write: true,
            })
        });
        let rec = fs.meta.getattr(ino).unwrap();
        assert!(dying.data.write(ino, &rec, 100, &[7u8; 70_000]).is_err());
        let after = remount(&fs, &dir, |store| Arc::new(store));
        assert_eq!(
            after.meta.getattr(ino).unwrap().size,
            0,
            "the size never committed"
        );
        set_size(&after, ino, 200_000).unwrap();
        assert!(
            contents(&after, ino).iter().all(|b| *b == 0),
            "bytes of the killed write showed"
        );
    }

    /// Bytes a crash left past the end (written, the size never
    /// committed) must not show when fallocate grows the file over them.
    #[test]
    fn fallocate_growing_the_size_drops_what_a_crash_left_past_the_end() {
        let zero = libc::FALLOC_FL_ZERO_RANGE as u32;
        for (mode, offset) in [(0, 0), (zero, 6000)] {
            let (fs, _engine, _dir) = fs();
            let (ino, handle) = create(&fs, c"a");
            let rec = fs.meta.getattr(ino).unwrap();
            fs.data.write(ino, &rec, 4000, b"stale bytes").unwrap();
            fs.fallocate(&Context::default(), ino, handle, mode, offset, 8192 - offset)
                .unwrap();
            let rec = fs.meta.getattr(ino).unwrap();
            assert_eq!(rec.size, 8192, "mode {mode:#x}");
            let mut buf = vec![1u8; 8192];
            assert_eq!(fs.data.read(ino, &rec, 0, &mut buf).unwrap(), 8192);
            assert!(buf.iter().all(|b| *b == 0), "mode {mode:#x}: old bytes came back");
        }
    }
}
