//! Permission checks in the daemon instead of the kernel.
//!
//! With `default_permissions` the kernel checks every access against the
//! mode it has cached, and to keep that mode fresh it refetches a
//! directory's attributes (one GETATTR round trip) before the first
//! permission check after every change to the directory: a create, close,
//! stat, unlink cycle costs two such GETATTRs on top of its four requests.
//! [`Checked`] wraps any [`FileSystem`] and makes the same POSIX checks in
//! the daemon, from attributes it reads from the filesystem (a directory's
//! kept for the filesystem's attribute timeout, as the kernel keeps them;
//! dropped on every change of mode or owner through the mount), so the
//! mount can go without `default_permissions` and those round trips.
//!
//! What the kernel still does without `default_permissions`, and is not
//! repeated here: `trusted.*` xattr rules, read-only mounts, immutable and
//! append-only inodes. What it does only with `default_permissions`, and
//! is done here: POSIX ACLs ([`crate::acl`]), read from
//! `system.posix_acl_access` where they decide (always for a directory,
//! whose ACL also decides whether its entries may be cached; for a file,
//! when the caller is neither root nor its owner), and set only by the
//! owner or root. What it leaves to the filesystem,
//! though its generic code seems to do it:
//! - the sticky-directory rule: the kernel drops S_ISVTX from the modes it
//!   keeps for a mount without `default_permissions`
//!   (`fuse_change_attributes_common`), so its `check_sticky` never fires;
//! - exec permission: `fuse_permission` asks only that a regular file have
//!   some exec bit, whoever runs it, and sends no ACCESS for an exec. The
//!   exec's own open comes as an OPEN whose flags carry `__FMODE_EXEC`
//!   ([`FMODE_EXEC`]; seen on Linux 6.18: flags 0x8020 for an `execve`,
//!   0x8000 for a `cat`), and that OPEN is where it is checked.
//!
//! `fs.protected_hardlinks`: the kernel's `may_linkat` asks the filesystem
//! for read and write permission, which FUSE grants without
//! `default_permissions`, so LINK applies Linux's `safe_hardlink_source`
//! here. The other `protected_*` sysctls cannot be applied here (their
//! checks need a sticky bit the kernel dropped, and facts the requests do
//! not carry: which directory a READLINK follows through, whether an OPEN
//! had O_CREAT).
//!
//! What this module checks: search permission on the parent for LOOKUP;
//! write and search permission on the parent(s) for every change of a
//! directory (CREATE, MKNOD, MKDIR, SYMLINK, LINK, UNLINK, RMDIR, RENAME,
//! and write permission on a directory moved to another parent); the
//! sticky-directory rule for UNLINK, RMDIR and RENAME (the entry moved
//! away, and the one replaced or exchanged with); read and write
//! permission for OPEN (and O_TRUNC), execute permission instead for the
//! OPEN of an exec; read permission for OPENDIR; `user.*` xattrs; ACCESS;
//! and the rules of `chmod`, `chown`, `truncate` and `utimes` for SETATTR,
//! as Linux's `setattr_prepare` has them.
//! Supplementary groups are read from `/proc/PID/status` of the caller, and
//! only when they decide the outcome (the caller is neither the owner nor
//! in the file's primary group, and the group and other bits differ).
//!
//! Cached directory entries: without `default_permissions` the kernel
//! follows a cached entry without asking anyone, so a name cached for one
//! user would let another walk through a directory they may not search.
//! Entries are therefore cached only in directories everybody may search
//! (mode `--x--x--x` all set); in any other directory every lookup comes
//! to the daemon and is checked. When a directory stops being searchable by
//! everybody (a `chmod`, or an entry renamed into such a directory from a
//! searchable one), every cached entry of the mount, negative ones too, is
//! dropped before the reply ([`EntryFlusher`], FUSE_NOTIFY_INC_EPOCH), so
//! no stale entry outlives the change.
//!
//! Root (uid 0) passes every check, as a process with `CAP_DAC_OVERRIDE`
//! and `CAP_FOWNER` does (exec still needs an exec bit, and is checked for
//! root too); a root process that dropped those capabilities is not told
//! apart.
//!
//! A caller the kernel did not name (uid or gid
//! [`kmod_shim::abi::INVALID_UIDGID`], which a session with
//! `FUSE_ALLOW_IDMAP` receives; xfused never puts this layer on such a
//! session, since the kernel allows idmapped mounts only with its own
//! checks) is nobody: it owns nothing (not even a file whose owner is
//! 4294967295), is in no group, and gets the "other" bits.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};
use libc::{stat64, statvfs64};

use kmod_shim::abi::INVALID_UIDGID;

use crate::acl::{self, Acl};

/// `access(2)` bits.
pub mod mask {
    /// Read.
    pub const R: u32 = 4;
    /// Write.
    pub const W: u32 = 2;
    /// Execute, or search for a directory.
    pub const X: u32 = 1;
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Where the supplementary groups of a caller come from.
pub trait GroupSource: Send + Sync + std::fmt::Debug {
    /// The supplementary groups of thread `pid`, or `None` if they cannot be
    /// known (the process is gone, or lives in another pid namespace).
    fn groups(&self, pid: u32) -> Option<Vec<u32>>;
}

/// Reads the `Groups:` line of `/proc/PID/status`.
#[derive(Debug, Default)]
pub struct ProcGroups;

impl GroupSource for ProcGroups {
    fn groups(&self, pid: u32) -> Option<Vec<u32>> {
        if pid == 0 {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        parse_groups(&status)
    }
}

/// The groups of a `/proc/PID/status` text; `None` without a well-formed
/// `Groups:` line.
pub fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Drops every directory entry the kernel caches for the mount.
pub trait EntryFlusher: Send + Sync + std::fmt::Debug {
    /// Must not block on kernel locks: it is called from request handlers.
    fn flush_entries(&self) -> io::Result<()>;
}

impl EntryFlusher for crate::Notifier {
    fn flush_entries(&self) -> io::Result<()> {
        self.inc_epoch()
    }
}

/// The caller of one request, with its supplementary groups read at most
/// once and only if a check needs them.
struct Caller<'a> {
    uid: u32,
    gid: u32,
    /// The kernel named the caller (neither id is `INVALID_UIDGID`).
    named: bool,
    pid: u32,
    source: &'a dyn GroupSource,
    groups: OnceLock<Option<Vec<u32>>>,
}

impl<'a> Caller<'a> {
    fn new(ctx: &Context, source: &'a dyn GroupSource) -> Self {
        Caller {
            uid: ctx.uid,
            gid: ctx.gid,
            named: ctx.uid != INVALID_UIDGID && ctx.gid != INVALID_UIDGID,
            pid: ctx.pid as u32,
            source,
            groups: OnceLock::new(),
        }
    }

    fn is_root(&self) -> bool {
        self.named && self.uid == 0
    }

    /// Whether the caller is user `uid` (an owner).
    fn is(&self, uid: u32) -> bool {
        self.named && self.uid == uid
    }

    /// Whether the caller is in group `gid`; `None` if unknown.
    fn in_group(&self, gid: u32) -> Option<bool> {
        if !self.named {
            return Some(false);
        }
        if gid == self.gid {
            return Some(true);
        }
        self.groups
            .get_or_init(|| self.source.groups(self.pid))
            .as_ref()
            .map(|g| g.contains(&gid))
    }
}

/// May `caller` access an inode with attributes `st` and access ACL `acl`
/// for `want` ([`mask`] bits)? Linux's `generic_permission`: with an ACL,
/// [`Acl::permits`]; without, the owner's bits for the owner, else the
/// group's for a member of the file's group, else the others'.
fn may(caller: &Caller<'_>, st: &stat64, acl: Option<&Acl>, want: u32) -> io::Result<()> {
    let want = want & 7;
    if want == 0 {
        return Ok(());
    }
    let mode = st.st_mode;
    let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
    if caller.is_root() {
        if want & mask::X != 0 && !is_dir && mode & 0o111 == 0 {
            return Err(err(libc::EACCES));
        }
        return Ok(());
    }
    if !caller.named {
        // Nobody: the other class, which an ACL's ACL_OTHER entry and the
        // mode's bits agree on.
        return if mode & want == want {
            Ok(())
        } else {
            Err(err(libc::EACCES))
        };
    }
    if let Some(acl) = acl {
        return match acl.permits(st.st_uid, caller.uid, |g| caller.in_group(g), want, st.st_gid) {
            Some(true) => Ok(()),
            // Refused, or decided by a membership that cannot be known.
            _ => Err(err(libc::EACCES)),
        };
    }
    let allowed = if caller.is(st.st_uid) {
        (mode >> 6) & want == want
    } else {
        let group = (mode >> 3) & want == want;
        let other = mode & want == want;
        if group == other {
            group
        } else {
            match caller.in_group(st.st_gid) {
                Some(true) => group,
                Some(false) => other,
                // Unknown membership: allow only what both would allow.
                None => false,
            }
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(err(libc::EACCES))
    }
}

/// Whether the sticky-directory rule binds `caller` in a directory with
/// attributes `dir`: then only an entry's owner may remove or replace it.
/// Linux's `check_sticky` (fs/namei.c, from `may_delete`): in a directory
/// with the sticky bit, the entry's owner, the directory's owner and a
/// process with `CAP_FOWNER` (root, here) may; anybody else gets EPERM,
/// whatever the directory's write permission.
fn sticky_binds(caller: &Caller<'_>, dir: &stat64) -> bool {
    dir.st_mode & libc::S_ISVTX != 0 && !caller.is_root() && !caller.is(dir.st_uid)
}

/// Checks a SETATTR of an inode with attributes `st` as Linux's
/// `setattr_prepare` and `may_setattr` do, and returns `attr` with the
/// set-group-ID bit cleared where a `chmod` may not set it.
/// `writable_handle`: the request names a handle opened for writing.
fn check_setattr(
    caller: &Caller<'_>,
    st: &stat64,
    acl: Option<&Acl>,
    mut attr: stat64,
    valid: SetattrValid,
    writable_handle: bool,
) -> io::Result<stat64> {
    let owner = caller.is_root() || caller.is(st.st_uid);
    if valid.contains(SetattrValid::SIZE) && !writable_handle {
        may(caller, st, acl, mask::W)?;
    }
    if valid.contains(SetattrValid::UID)
        && !caller.is_root()
        && !(caller.is(st.st_uid) && attr.st_uid == st.st_uid)
    {
        return Err(err(libc::EPERM));
    }
    if valid.contains(SetattrValid::GID)
        && !caller.is_root()
        && !(caller.is(st.st_uid) && (attr.st_gid == st.st_gid || caller.in_group(attr.st_gid) == Some(true)))
    {
        return Err(err(libc::EPERM));
    }
    if valid.contains(SetattrValid::MODE) {
        if !owner {
            return Err(err(libc::EPERM));
        }
        let gid = if valid.contains(SetattrValid::GID) {
            attr.st_gid
        } else {
            st.st_gid
        };
        if !caller.is_root() && caller.in_group(gid) != Some(true) {
            attr.st_mode &= !libc::S_ISGID;
        }
    }
    let atime_set = valid.contains(SetattrValid::ATIME) && !valid.contains(SetattrValid::ATIME_NOW);
    let mtime_set = valid.contains(SetattrValid::MTIME) && !valid.contains(SetattrValid::MTIME_NOW);
    let touch = valid.contains(SetattrValid::ATIME_NOW) && valid.contains(SetattrValid::MTIME_NOW);
    if (atime_set || mtime_set) && !owner {
        return Err(err(libc::EPERM));
    }
    if touch && !owner {
        may(caller, st, acl, mask::W)?;
    }
    Ok(attr)
}

/// `__FMODE_EXEC` (include/linux/fs.h), in OPEN's flags when the kernel
/// opens a file to execute it: `execve` and `execveat` (the program, or a
/// script), the ELF or script interpreter it loads, `uselib`. A process
/// cannot set it with `open(2)`, which drops flags outside
/// `VALID_OPEN_FLAGS`, and no `O_*` flag shares its bit (`fcntl_init`
/// asserts so at build time).
pub const FMODE_EXEC: u32 = 0x20;

/// What an open with `flags` needs: execute permission for an exec (the
/// kernel's `do_open_execat` asks `MAY_EXEC | MAY_OPEN`, not read: a
/// program of mode 0711 runs for anybody); otherwise read and/or write,
/// and write for O_TRUNC.
fn open_mask(flags: u32) -> u32 {
    if flags & FMODE_EXEC != 0 {
        return mask::X;
    }
    let flags = flags as i32;
    let mut want = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => mask::R,
        libc::O_WRONLY => mask::W,
        _ => mask::R | mask::W,
    };
    if flags & libc::O_TRUNC != 0 {
        want |= mask::W;
    }
    want
}

fn writes(flags: u32) -> bool {
    matches!(flags as i32 & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
}

/// Whether the kernel may cache entries of a directory with `mode`: only
/// if everybody may search it (see the module docs).
pub fn entries_cacheable(mode: u32) -> bool {
    mode & 0o111 == 0o111
}

/// A [`FileSystem`] whose requests are checked against the caller's
/// permissions before they reach `F` (see the module docs). Mount it
/// without `default_permissions`, give it an [`EntryFlusher`] (the
/// session's notifier) before serving, and with adaptive timeouts set
/// [`crate::Policy::zero_entry_timeout_stands`]: a zero entry timeout from
/// it means "never cache this name".
#[derive(Debug)]
pub struct Checked<F> {
    fs: F,
    groups: Box<dyn GroupSource>,
    flusher: OnceLock<Box<dyn EntryFlusher>>,
    /// Handles opened for writing: a truncate through one needs no write
    /// permission (`ftruncate` on a descriptor opened before a `chmod`).
    writable: Mutex<HashSet<u64>>,
    /// Attributes of directories, kept for the attribute timeout the
    /// filesystem gave with them (see [`DirAttrs`]).
    dirs: DirAttrs,
    /// The filesystem keeps no xattrs (it answered ENOTSUP or ENOSYS), so
    /// no ACLs: they are not asked for again.
    no_acls: AtomicBool,
}

/// An inode's attributes and access ACL, as the checks read them.
#[derive(Debug, Clone)]
struct Node {
    st: stat64,
    /// The access ACL. Always read for a directory (it decides whether
    /// the kernel may cache entries); for anything else only where a
    /// check needs it ([`Checked::node_for`]).
    acl: Option<Arc<Acl>>,
}

impl Node {
    fn acl(&self) -> Option<&Acl> {
        self.acl.as_deref()
    }

    fn is_dir(&self) -> bool {
        self.st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Whether everybody may search this directory, so the kernel may
    /// cache its entries: the mode says so and no ACL names anyone (an
    /// ACL may refuse a named user what the mode's bits show).
    fn open_to_all(&self) -> bool {
        entries_cacheable(self.st.st_mode) && self.acl.is_none()
    }
}

/// Directory attributes read for checks, kept as long as the filesystem
/// said they may be cached (its attribute timeout): the same freshness the
/// kernel's own checks have with `default_permissions`, which use the
/// attributes the kernel caches for that long. A directory's mode and
/// owners change only through SETATTR, which drops its copy; FORGET drops
/// the copy of each node id it names (once the kernel lets go of a node
/// id, the filesystem may give it to another inode). Without this every
/// LOOKUP would read its parent's attributes again.
#[derive(Debug, Default)]
struct DirAttrs {
    map: Mutex<HashMap<u64, (Node, Instant)>>,
}

impl DirAttrs {
    /// At most this many directories; a full map is emptied.
    const MAX: usize = 4096;

    fn get(&self, ino: u64, now: Instant) -> Option<Node> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ino)
            .filter(|(_, until)| now < *until)
            .map(|(node, _)| node.clone())
    }

    fn put(&self, ino: u64, node: Node, until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(ino, (node, until));
    }

    fn forget(&self, ino: u64) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&ino);
    }

    fn forget_all(&self, inos: impl Iterator<Item = u64>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for ino in inos {
            map.remove(&ino);
        }
    }
}

impl<F> Checked<F>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    /// Checks in front of `fs`, with supplementary groups from `/proc`.
    pub fn new(fs: F) -> Self {
        Self::with_groups(fs, Box::new(ProcGroups))
    }

    /// Checks in front of `fs`, with supplementary groups from `groups`.
    pub fn with_groups(fs: F, groups: Box<dyn GroupSource>) -> Self {
        Checked {
            fs,
            groups,
            flusher: OnceLock::new(),
            writable: Mutex::new(HashSet::new()),
            dirs: DirAttrs::default(),
            no_acls: AtomicBool::new(false),
        }
    }

    /// Sets how cached entries are dropped (once; later calls are ignored).
    pub fn set_flusher(&self, flusher: Box<dyn EntryFlusher>) {
        let _ = self.flusher.set(flusher);
    }

    /// The wrapped filesystem.
    pub fn inner(&self) -> &F {
        &self.fs
    }

    fn caller<'a>(&'a self, ctx: &Context) -> Caller<'a> {
        Caller::new(ctx, self.groups.as_ref())
    }

    /// The attributes of `ino`, a directory's from [`DirAttrs`] while
    /// fresh.
    fn node(&self, ctx: &Context, ino: u64) -> io::Result<Node> {
        if let Some(node) = self.dirs.get(ino, Instant::now()) {
            return Ok(node);
        }
        self.fresh_node(ctx, ino)
    }

    /// The attributes of `ino` read now (and kept, for a directory, with
    /// its ACL).
    fn fresh_node(&self, ctx: &Context, ino: u64) -> io::Result<Node> {
        let now = Instant::now();
        let (st, timeout) = self.fs.getattr(ctx, ino, None)?;
        let mut node = Node { st, acl: None };
        if node.is_dir() {
            node.acl = self.read_acl(ctx, ino)?;
            if !timeout.is_zero() {
                self.dirs.put(ino, node.clone(), now + timeout);
            }
        }
        Ok(node)
    }

    /// [`Checked::node`], with the ACL read if `caller`'s access depends
    /// on it: not root, not the owner (whose access the owner's bits say
    /// alone, an ACL's owner entry being those bits).
    fn node_for(&self, ctx: &Context, caller: &Caller<'_>, ino: u64) -> io::Result<Node> {
        let node = self.node(ctx, ino)?;
        self.with_acl(ctx, caller, ino, node)
    }

    /// `node` of `ino`, with its ACL read if `caller`'s access depends on
    /// it (see [`Checked::node_for`]).
    fn with_acl(&self, ctx: &Context, caller: &Caller<'_>, ino: u64, mut node: Node) -> io::Result<Node> {
        if !node.is_dir() && !caller.is_root() && !caller.is(node.st.st_uid) {
            node.acl = self.read_acl(ctx, ino)?;
        }
        Ok(node)
    }

    /// The access ACL of `ino`, if it has one.
    fn read_acl(&self, ctx: &Context, ino: u64) -> io::Result<Option<Arc<Acl>>> {
        if self.no_acls.load(Ordering::Relaxed) {
            return Ok(None);
        }
        const NAME: &CStr = c"system.posix_acl_access";
        debug_assert_eq!(NAME.to_bytes(), acl::ACCESS_XATTR.as_bytes());
        let value = match self.fs.getxattr(ctx, ino, NAME, XATTR_SIZE_MAX) {
            Ok(GetxattrReply::Value(v)) => v,
            Ok(GetxattrReply::Count(_)) => return Ok(None),
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENODATA) => Ok(None),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS) => {
                        self.no_acls.store(true, Ordering::Relaxed);
                        Ok(None)
                    }
                    _ => Err(e),
                };
            }
        };
        match Acl::parse(&value) {
            Ok(acl) => Ok(acl.map(Arc::new)),
            Err(_) => {
                // Not one Linux would have stored: refuse rather than guess.
                tracing::warn!(
                    ino,
                    "malformed {} ({} bytes): access refused",
                    acl::ACCESS_XATTR,
                    value.len()
                );
                Err(err(libc::EIO))
            }
        }
    }

    /// Drops every cached entry; a failure is logged and answered EIO, so
    /// the change is reported failed rather than left with stale entries.
    fn flush_entries(&self) -> io::Result<()> {
        match self.flusher.get() {
            Some(f) => f.flush_entries().map_err(|e| {
                tracing::error!("dropping cached directory entries failed: {e}");
                err(libc::EIO)
            }),
            None => {
                tracing::error!("no entry flusher set: cached directory entries cannot be dropped");
                Err(err(libc::EIO))
            }
        }
    }

    /// Checks write and search permission on `parent` and returns its
    /// attributes.
    fn changing_dir(&self, ctx: &Context, parent: u64) -> io::Result<Node> {
        let dir = self.node(ctx, parent)?;
        may(&self.caller(ctx), &dir.st, dir.acl(), mask::W | mask::X)?;
        Ok(dir)
    }

    /// Applies the sticky-directory rule ([`sticky_binds`]) to entry `name`
    /// of `dir`, whose attributes are `dir_st`: EPERM unless `caller` may
    /// remove or replace it. The entry is looked up only when its owner
    /// decides. A missing entry passes: the operation itself answers.
    fn check_sticky(
        &self,
        ctx: &Context,
        caller: &Caller<'_>,
        dir: u64,
        dir_st: &stat64,
        name: &CStr,
    ) -> io::Result<()> {
        if !sticky_binds(caller, dir_st) {
            return Ok(());
        }
        let entry = match self.fs.lookup(ctx, dir, name) {
            Ok(entry) if entry.inode != 0 => entry,
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let owner = entry.attr.st_uid;
        self.fs.forget(ctx, entry.inode, 1);
        if caller.is(owner) {
            Ok(())
        } else {
            Err(err(libc::EPERM))
        }
    }

    fn entry_in(parent: &Node, mut entry: Entry) -> Entry {
        if !parent.open_to_all() {
            entry.entry_timeout = Duration::ZERO;
        }
        entry
    }

    fn note_open(&self, handle: Option<u64>, flags: u32) {
        if let (Some(h), true) = (handle, writes(flags)) {
            self.writable.lock().unwrap_or_else(|p| p.into_inner()).insert(h);
        }
    }
}

impl<F> FileSystem for Checked<F>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.fs.init(capable)
    }

    fn destroy(&self) {
        self.fs.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if name.to_bytes() == b"." {
            // Path walks never send it: the kernel decodes a file handle
            // with it (open_by_handle_at needs CAP_DAC_READ_SEARCH), and
            // the node may be a file, which has no search permission.
            return self.fs.lookup(ctx, parent, name);
        }
        let dir = self.node(ctx, parent)?;
        may(&self.caller(ctx), &dir.st, dir.acl(), mask::X)?;
        match self.fs.lookup(ctx, parent, name) {
            Ok(entry) => Ok(Self::entry_in(&dir, entry)),
            // A missing name in a directory not everybody may search: a
            // negative entry that is not cached (instead of ENOENT, which the
            // dispatcher may turn into a cached one).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !dir.open_to_all() => Ok(Entry {
                inode: 0,
                entry_timeout: Duration::ZERO,
                ..Default::default()
            }),
            Err(e) => Err(e),
        }
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.dirs.forget(inode);
        self.fs.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.dirs.forget_all(requests.iter().map(|&(ino, _)| ino));
        self.fs.batch_forget(ctx, requests)
    }

    fn getattr(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.fs.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let caller = self.caller(ctx);
        let mode_change = valid.contains(SetattrValid::MODE);
        if caller.is_root() && !mode_change {
            let reply = self.fs.setattr(ctx, inode, attr, handle, valid);
            self.dirs.forget(inode);
            return reply;
        }
        let node = self.fresh_node(ctx, inode)?;
        let node = self.with_acl(ctx, &caller, inode, node)?;
        let st = node.st;
        let writable = handle.is_some_and(|h| {
            self.writable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&h)
        });
        let attr = check_setattr(&caller, &st, node.acl(), attr, valid, writable)?;
        let reply = self.fs.setattr(ctx, inode, attr, handle, valid);
        self.dirs.forget(inode);
        let reply = reply?;
        if mode_change && node.is_dir() && node.open_to_all() && !entries_cacheable(attr.st_mode) {
            self.flush_entries()?;
        }
        Ok(reply)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.fs.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        let st = self.changing_dir(ctx, parent)?;
        self.fs
            .symlink(ctx, linkname, parent, name)
            .map(|e| Self::entry_in(&st, e))
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
        let st = self.changing_dir(ctx, parent)?;
        self.fs
            .mknod(ctx, parent, name, mode, rdev, umask)
            .map(|e| Self::entry_in(&st, e))
    }

    fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        let st = self.changing_dir(ctx, parent)?;
        self.fs
            .mkdir(ctx, parent, name, mode, umask)
            .map(|e| Self::entry_in(&st, e))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let caller = self.caller(ctx);
        if !caller.is_root() {
            let dir = self.changing_dir(ctx, parent)?;
            self.check_sticky(ctx, &caller, parent, &dir.st, name)?;
        }
        self.fs.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let caller = self.caller(ctx);
        if !caller.is_root() {
            let dir = self.changing_dir(ctx, parent)?;
            self.check_sticky(ctx, &caller, parent, &dir.st, name)?;
        }
        self.fs.rmdir(ctx, parent, name)
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
        let caller = self.caller(ctx);
        // Read now: they decide whether cached entries must be dropped.
        let old = self.fresh_node(ctx, olddir)?;
        let new = if newdir == olddir {
            old.clone()
        } else {
            self.fresh_node(ctx, newdir)?
        };
        // In the order of Linux's `vfs_rename`: the entry moved away, then
        // the one it replaces or is exchanged with. RENAME_NOREPLACE
        // replaces nothing: an existing target is EEXIST, which the kernel
        // answers before these checks.
        may(&caller, &old.st, old.acl(), mask::W | mask::X)?;
        self.check_sticky(ctx, &caller, olddir, &old.st, oldname)?;
        may(&caller, &new.st, new.acl(), mask::W | mask::X)?;
        if flags & libc::RENAME_NOREPLACE == 0 {
            self.check_sticky(ctx, &caller, newdir, &new.st, newname)?;
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if newdir != olddir && !caller.is_root() {
            // A directory moved to another parent gets a new "..": that
            // needs write permission on the directory itself (both ways for
            // an exchange).
            let mut moved = vec![(olddir, oldname)];
            if exchange {
                moved.push((newdir, newname));
            }
            for (dir, name) in moved {
                let entry = self.fs.lookup(ctx, dir, name)?;
                let moved = Node {
                    st: entry.attr,
                    acl: None,
                };
                let result = if moved.is_dir() {
                    self.read_acl(ctx, entry.inode)
                        .and_then(|acl| may(&caller, &moved.st, acl.as_deref(), mask::W))
                } else {
                    Ok(())
                };
                self.fs.forget(ctx, entry.inode, 1);
                result?;
            }
        }
        self.fs.rename(ctx, olddir, oldname, newdir, newname, flags)?;
        // An entry the kernel may have cached in a searchable directory now
        // sits in one not everybody may search.
        let into_closed = old.open_to_all() && !new.open_to_all();
        let back_closed = exchange && new.open_to_all() && !old.open_to_all();
        if into_closed || back_closed {
            self.flush_entries()?;
        }
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let caller = self.caller(ctx);
        if !caller.is_root() && protected_hardlinks() {
            let source = self.node_for(ctx, &caller, inode)?;
            if !caller.is(source.st.st_uid) && !safe_hardlink_source(&caller, &source) {
                return Err(err(libc::EPERM));
            }
        }
        let st = self.changing_dir(ctx, newparent)?;
        self.fs
            .link(ctx, inode, newparent, newname)
            .map(|e| Self::entry_in(&st, e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let caller = self.caller(ctx);
        // Root too for an exec: it needs an exec bit (see [`may`]).
        if !caller.is_root() || flags & FMODE_EXEC != 0 {
            let node = self.node_for(ctx, &caller, inode)?;
            may(&caller, &node.st, node.acl(), open_mask(flags))?;
        }
        let opened = self.fs.open(ctx, inode, flags, fuse_flags)?;
        self.note_open(opened.0, flags);
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let st = self.changing_dir(ctx, parent)?;
        let exclusive = args.flags as i32 & libc::O_EXCL != 0;
        let first = CreateIn {
            flags: (args.flags as i32 | libc::O_EXCL) as u32,
            ..args
        };
        let created = match self.fs.create(ctx, parent, name, first) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !exclusive => {
                // The name exists after all (the kernel's negative entry was
                // stale): this is an open of that file, checked as one.
                let entry = self.fs.lookup(ctx, parent, name)?;
                let caller = self.caller(ctx);
                let node = Node {
                    st: entry.attr,
                    acl: None,
                };
                let opened = self
                    .with_acl(ctx, &caller, entry.inode, node)
                    .and_then(|node| may(&caller, &node.st, node.acl(), open_mask(args.flags)))
                    .and_then(|()| self.fs.open(ctx, entry.inode, args.flags, args.fuse_flags));
                match opened {
                    Ok((handle, options, passthrough)) => (entry, handle, options, passthrough),
                    Err(e) => {
                        self.fs.forget(ctx, entry.inode, 1);
                        return Err(e);
                    }
                }
            }
            other => other?,
        };
        self.note_open(created.1, args.flags);
        Ok((Self::entry_in(&st, created.0), created.1, created.2, created.3))
    }

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
        self.fs
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
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
        self.fs.write(
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
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.fs.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fs.fsync(ctx, inode, datasync, handle)
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
        self.fs.fallocate(ctx, inode, handle, mode, offset, length)
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
        if writes(flags) {
            self.writable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&handle);
        }
        self.fs
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.fs.statfs(ctx, inode)
    }

    fn setxattr(&self, ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.check_xattr(ctx, inode, name, mask::W)?;
        self.fs.setxattr(ctx, inode, name, value, flags)?;
        self.xattr_changed(ctx, inode, name)
    }

    fn getxattr(&self, ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.check_xattr(ctx, inode, name, mask::R)?;
        self.fs.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.fs.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.check_xattr(ctx, inode, name, mask::W)?;
        self.fs.removexattr(ctx, inode, name)?;
        self.xattr_changed(ctx, inode, name)
    }

    fn opendir(&self, ctx: &Context, inode: u64, flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let caller = self.caller(ctx);
        if !caller.is_root() {
            let dir = self.node(ctx, inode)?;
            may(&caller, &dir.st, dir.acl(), mask::R)?;
        }
        self.fs.opendir(ctx, inode, flags)
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
        self.fs.readdir(ctx, inode, handle, size, offset, add_entry)
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
        let dir = self.node(ctx, inode)?;
        if dir.open_to_all() {
            return self.fs.readdirplus(ctx, inode, handle, size, offset, add_entry);
        }
        self.fs
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                add_entry(d, Self::entry_in(&dir, e))
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fs.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.fs.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, want: u32) -> io::Result<()> {
        let caller = self.caller(ctx);
        let node = self.node_for(ctx, &caller, inode)?;
        may(&caller, &node.st, node.acl(), want)
    }

    fn lseek(&self, ctx: &Context, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64> {
        self.fs.lseek(ctx, inode, handle, offset, whence)
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
        self.fs.getlk(ctx, inode, handle, owner, lock, flags)
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
        self.fs.setlk(ctx, inode, handle, owner, lock, flags)
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
        self.fs.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: fuse_backend_rs::api::filesystem::IoctlData,
        out_size: u32,
    ) -> io::Result<fuse_backend_rs::api::filesystem::IoctlData<'_>> {
        self.fs.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.fs.bmap(ctx, inode, block, blocksize)
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
        self.fs.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.fs.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.fs.id_remap(ctx)
    }
}

impl<F> Checked<F>
where
    F: FileSystem<Inode = u64, Handle = u64>,
{
    /// `user.*` xattrs need read (get) or write (set, remove) permission on
    /// the inode; ACLs may be read by anybody and set or removed by the
    /// owner only (`vfs_set_acl`'s `inode_owner_or_capable`); the kernel
    /// checks the other namespaces itself.
    fn check_xattr(&self, ctx: &Context, inode: u64, name: &CStr, want: u32) -> io::Result<()> {
        let caller = self.caller(ctx);
        if caller.is_root() {
            return Ok(());
        }
        if is_acl(name) {
            if want & mask::W == 0 {
                return Ok(());
            }
            let node = self.node(ctx, inode)?;
            return if caller.is(node.st.st_uid) {
                Ok(())
            } else {
                Err(err(libc::EPERM))
            };
        }
        if !name.to_bytes().starts_with(b"user.") {
            return Ok(());
        }
        let node = self.node_for(ctx, &caller, inode)?;
        may(&caller, &node.st, node.acl(), want)
    }

    /// After a change of xattr `name` of `inode`: a new access ACL changes
    /// who may do what, and a directory's may close it to some (so cached
    /// entries go, as for a `chmod`).
    fn xattr_changed(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if name.to_bytes() != acl::ACCESS_XATTR.as_bytes() {
            return Ok(());
        }
        self.dirs.forget(inode);
        let (st, _) = self.fs.getattr(ctx, inode, None)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            self.flush_entries()?;
        }
        Ok(())
    }
}

/// Whether `fs.protected_hardlinks` is on (Linux's default; read at each
/// LINK, so a change of the sysctl holds at once). Without
/// `default_permissions` the kernel's own check (`may_linkat`) asks the
/// filesystem for read and write permission and FUSE answers yes, so the
/// rule is applied here.
fn protected_hardlinks() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").map_or(true, |v| v.trim() != "0")
}

/// Linux's `safe_hardlink_source`: a regular file, not set-user-ID, not
/// set-group-ID with group execute, that `caller` may read and write.
fn safe_hardlink_source(caller: &Caller<'_>, source: &Node) -> bool {
    let mode = source.st.st_mode;
    mode & libc::S_IFMT == libc::S_IFREG
        && mode & libc::S_ISUID == 0
        && mode & (libc::S_ISGID | libc::S_IXGRP) != (libc::S_ISGID | libc::S_IXGRP)
        && may(caller, &source.st, source.acl(), mask::R | mask::W).is_ok()
}

/// Whether xattr `name` is an ACL.
fn is_acl(name: &CStr) -> bool {
    let name = name.to_bytes();
    name == acl::ACCESS_XATTR.as_bytes() || name == acl::DEFAULT_XATTR.as_bytes()
}

/// The largest xattr value Linux allows (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: u32 = 65536;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Option<Vec<u32>>);

    impl GroupSource for Fixed {
        fn groups(&self, _pid: u32) -> Option<Vec<u32>> {
            self.0.clone()
        }
    }

    fn st(mode: u32, uid: u32, gid: u32) -> stat64 {
        let mut s = Entry::default().attr;
        s.st_mode = mode;
        s.st_uid = uid;
        s.st_gid = gid;
        s
    }

    fn caller<'a>(uid: u32, gid: u32, groups: &'a Fixed) -> Caller<'a> {
        Caller::new(&Context { uid, gid, pid: 42 }, groups)
    }

    fn code(r: io::Result<impl Sized>) -> i32 {
        match r {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        }
    }

    const FILE: u32 = libc::S_IFREG;
    const DIR: u32 = libc::S_IFDIR;

    #[test]
    fn a_caller_the_kernel_did_not_name_is_nobody() {
        const NONE: u32 = INVALID_UIDGID;
        let all = Fixed(Some(vec![0, 100, NONE]));
        let nobody = caller(NONE, NONE, &all);
        assert!(!nobody.is_root());
        assert!(!nobody.is(NONE), "owns nothing, not even files of 4294967295");
        assert_eq!(nobody.in_group(NONE), Some(false));
        assert_eq!(nobody.in_group(100), Some(false), "its pid's groups do not count");
        // A file 'owned' by 4294967295:4294967295, closed to others.
        let f = st(FILE | 0o660, NONE, NONE);
        assert_eq!(code(may(&nobody, &f, None, mask::R)), libc::EACCES);
        let f = st(FILE | 0o664, 1000, 100);
        assert_eq!(code(may(&nobody, &f, None, mask::R)), 0, "the other bits");
        assert_eq!(code(may(&nobody, &f, None, mask::W)), libc::EACCES);
        // Half-named callers are nobody too.
        assert!(!caller(0, NONE, &all).is_root());
        assert!(!caller(NONE, 0, &all).is(NONE));
        // Not the owner: no chmod, no chown, no utimes.
        let mut attr = f;
        attr.st_mode = FILE | 0o777;
        let f = st(FILE | 0o666, NONE, NONE);
        let r = check_setattr(&nobody, &f, None, attr, SetattrValid::MODE, false);
        assert_eq!(code(r), libc::EPERM);
    }

    #[test]
    fn owner_group_and_other_bits_each_decide_alone() {
        let none = Fixed(Some(vec![]));
        // 0640 owned by 1000:100.
        let f = st(FILE | 0o640, 1000, 100);
        assert_eq!(
            code(may(&caller(1000, 1000, &none), &f, None, mask::R | mask::W)),
            0
        );
        assert_eq!(code(may(&caller(1001, 100, &none), &f, None, mask::R)), 0);
        assert_eq!(
            code(may(&caller(1001, 100, &none), &f, None, mask::W)),
            libc::EACCES
        );
        assert_eq!(
            code(may(&caller(1002, 200, &none), &f, None, mask::R)),
            libc::EACCES
        );
        // The owner gets the owner's bits only, even if others get more.
        let odd = st(FILE | 0o047, 1000, 100);
        assert_eq!(
            code(may(&caller(1000, 1000, &none), &odd, None, mask::R)),
            libc::EACCES
        );
        assert_eq!(code(may(&caller(1002, 200, &none), &odd, None, mask::R)), 0);
    }

    #[test]
    fn supplementary_groups_are_read_only_when_they_decide() {
        let f = st(FILE | 0o640, 1000, 100);
        let member = Fixed(Some(vec![5, 100]));
        let stranger = Fixed(Some(vec![5]));
        let unknown = Fixed(None);
        assert_eq!(code(may(&caller(1001, 7, &member), &f, None, mask::R)), 0);
        assert_eq!(
            code(may(&caller(1001, 7, &stranger), &f, None, mask::R)),
            libc::EACCES
        );
        // Unknown groups: allow only what both group and others allow.
        assert_eq!(
            code(may(&caller(1001, 7, &unknown), &f, None, mask::R)),
            libc::EACCES
        );
        let open = st(FILE | 0o644, 1000, 100);
        assert_eq!(code(may(&caller(1001, 7, &unknown), &open, None, mask::R)), 0);
        // Group bits that deny what others may: a member is denied.
        let neg = st(FILE | 0o604, 1000, 100);
        assert_eq!(
            code(may(&caller(1001, 7, &member), &neg, None, mask::R)),
            libc::EACCES
        );
        assert_eq!(
            code(may(&caller(1001, 7, &unknown), &neg, None, mask::R)),
            libc::EACCES
        );
        assert_eq!(code(may(&caller(1001, 7, &stranger), &neg, None, mask::R)), 0);
    }

    #[test]
    fn root_passes_everything_but_exec_without_exec_bits() {
        let g = Fixed(None);
        let root = caller(0, 0, &g);
        assert_eq!(code(may(&root, &st(FILE, 1000, 100), None, mask::R | mask::W)), 0);
        assert_eq!(
            code(may(&root, &st(FILE | 0o644, 1000, 100), None, mask::X)),
            libc::EACCES
        );
        assert_eq!(code(may(&root, &st(FILE | 0o100, 1000, 100), None, mask::X)), 0);
        assert_eq!(code(may(&root, &st(DIR, 1000, 100), None, mask::X | mask::W)), 0);
    }

    #[test]
    fn sticky_directories_bind_all_but_their_owner_and_root() {
        let g = Fixed(None);
        let tmp = st(DIR | 0o1777, 1000, 100);
        assert!(sticky_binds(&caller(1001, 1001, &g), &tmp));
        assert!(
            !sticky_binds(&caller(1000, 1001, &g), &tmp),
            "the directory's owner"
        );
        assert!(!sticky_binds(&caller(0, 0, &g), &tmp), "root (CAP_FOWNER)");
        // Group membership of the directory does not count.
        assert!(sticky_binds(&caller(1001, 100, &g), &tmp));
        assert!(!sticky_binds(
            &caller(1001, 1001, &g),
            &st(DIR | 0o777, 1000, 100)
        ));
    }

    #[test]
    fn chmod_chown_truncate_and_utimes_follow_setattr_prepare() {
        let g = Fixed(Some(vec![300]));
        let f = st(FILE | 0o664, 1000, 100);
        let owner = caller(1000, 1000, &g);
        let other = caller(1001, 100, &g);
        let mut want = f;
        want.st_mode = FILE | 0o2755;
        // chmod: owner only; set-group-ID dropped if not in the file's group.
        assert_eq!(
            code(check_setattr(&other, &f, None, want, SetattrValid::MODE, false)),
            libc::EPERM
        );
        let got = check_setattr(&owner, &f, None, want, SetattrValid::MODE, false).unwrap();
        assert_eq!(got.st_mode, FILE | 0o755);
        let in_group = st(FILE | 0o664, 1000, 300);
        let got = check_setattr(&owner, &in_group, None, want, SetattrValid::MODE, false).unwrap();
        assert_eq!(got.st_mode, FILE | 0o2755);
        // chown: root only, but the owner may "change" to the same uid.
        let mut to = f;
        to.st_uid = 1001;
        assert_eq!(
            code(check_setattr(&owner, &f, None, to, SetattrValid::UID, false)),
            libc::EPERM
        );
        assert_eq!(
            code(check_setattr(&owner, &f, None, f, SetattrValid::UID, false)),
            0
        );
        assert_eq!(
            code(check_setattr(
                &caller(0, 0, &g),
                &f,
                None,
                to,
                SetattrValid::UID,
                false
            )),
            0
        );
        // chgrp: the owner, to a group they are in.
        let mut grp = f;
        grp.st_gid = 300;
        assert_eq!(
            code(check_setattr(&owner, &f, None, grp, SetattrValid::GID, false)),
            0
        );
        grp.st_gid = 301;
        assert_eq!(
            code(check_setattr(&owner, &f, None, grp, SetattrValid::GID, false)),
            libc::EPERM
        );
        assert_eq!(
            code(check_setattr(&other, &f, None, f, SetattrValid::GID, false)),
            libc::EPERM
        );
        // truncate: write permission, unless through a handle opened for writing.
        let ro = st(FILE | 0o644, 1000, 100);
        assert_eq!(
            code(check_setattr(&other, &ro, None, ro, SetattrValid::SIZE, false)),
            libc::EACCES
        );
        assert_eq!(
            code(check_setattr(&other, &ro, None, ro, SetattrValid::SIZE, true)),
            0
        );
        assert_eq!(
            code(check_setattr(&other, &f, None, f, SetattrValid::SIZE, false)),
            0
        );
        // utimes: explicit times need the owner; "now" needs owner or write.
        let explicit = SetattrValid::ATIME | SetattrValid::MTIME;
        let now = explicit | SetattrValid::ATIME_NOW | SetattrValid::MTIME_NOW;
        assert_eq!(
            code(check_setattr(&other, &f, None, f, explicit, false)),
            libc::EPERM
        );
        assert_eq!(code(check_setattr(&other, &f, None, f, now, false)), 0);
        assert_eq!(
            code(check_setattr(&other, &ro, None, ro, now, false)),
            libc::EACCES
        );
        assert_eq!(code(check_setattr(&owner, &ro, None, ro, explicit, false)), 0);
    }

    #[test]
    fn open_needs_what_its_flags_ask_for() {
        assert_eq!(open_mask(libc::O_RDONLY as u32), mask::R);
        assert_eq!(open_mask(libc::O_WRONLY as u32), mask::W);
        assert_eq!(open_mask(libc::O_RDWR as u32), mask::R | mask::W);
        assert_eq!(
            open_mask((libc::O_RDONLY | libc::O_TRUNC) as u32),
            mask::R | mask::W
        );
        // An exec, with the flags an execve sent on x86-64 (the kernel's
        // O_LARGEFILE, 0o100000, and __FMODE_EXEC): execute, not read.
        assert_eq!(open_mask(0o100000 | FMODE_EXEC), mask::X);
    }

    #[test]
    fn exec_takes_the_callers_class_bit_alone() {
        let none = Fixed(Some(vec![]));
        let crew = Fixed(Some(vec![100]));
        let owner = caller(1000, 1000, &none);
        let member = caller(1001, 1001, &crew);
        let other = caller(1002, 1002, &none);
        let root = caller(0, 0, &none);
        let run = |who: &Caller<'_>, mode: u32| {
            code(may(who, &st(FILE | mode, 1000, 100), None, open_mask(FMODE_EXEC)))
        };
        // (mode, owner, group member, other, root): 0 allowed, else EACCES.
        let table = [
            (0o744, true, false, false, true),
            (0o711, true, true, true, true),
            (0o001, false, false, true, true),
            (0o010, false, true, false, true),
            (0o100, true, false, false, true),
            (0o644, false, false, false, false),
        ];
        for (mode, o, g, x, r) in table {
            for (who, name, allowed) in [
                (&owner, "owner", o),
                (&member, "group", g),
                (&other, "other", x),
                (&root, "root", r),
            ] {
                let want = if allowed { 0 } else { libc::EACCES };
                assert_eq!(run(who, mode), want, "{name} executing a {mode:04o} file");
            }
        }
    }

    #[test]
    fn groups_come_from_the_status_line() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 100 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_groups(status), Some(vec![4, 24, 100]));
        assert_eq!(parse_groups("Groups:\n"), Some(vec![]));
        assert_eq!(parse_groups("Groups:\t4 x\n"), None);
        assert_eq!(parse_groups("Name:\tsh\n"), None);
        let me = ProcGroups.groups(std::process::id()).expect("own groups");
        assert!(me.len() < 65537);
    }

    #[test]
    fn directory_attributes_are_kept_until_their_timeout_or_a_forget() {
        let dirs = DirAttrs::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let node = |st| Node { st, acl: None };
        dirs.put(7, node(st(DIR | 0o755, 1, 1)), later);
        dirs.put(8, node(st(DIR | 0o700, 1, 1)), later);
        dirs.put(9, node(st(DIR | 0o711, 1, 1)), later);
        assert_eq!(dirs.get(7, now).map(|n| n.st.st_mode), Some(DIR | 0o755));
        assert!(dirs.get(7, later).is_none(), "expired at its timeout");
        dirs.forget(7);
        assert!(dirs.get(7, now).is_none());
        dirs.forget_all([8, 9].into_iter());
        assert!(dirs.get(8, now).is_none() && dirs.get(9, now).is_none());
        for ino in 0..DirAttrs::MAX as u64 + 1 {
            dirs.put(ino, node(st(DIR, 0, 0)), later);
        }
        assert!(dirs.map.lock().unwrap().len() <= DirAttrs::MAX, "bounded");
    }

    #[test]
    fn hard_link_sources_are_safe_as_linux_says() {
        let none = Fixed(Some(vec![]));
        let bob = caller(1001, 1001, &none);
        let node = |mode| Node {
            st: st(mode, 1000, 100),
            acl: None,
        };
        assert!(safe_hardlink_source(&bob, &node(FILE | 0o666)));
        // Not both readable and writable by him; not a regular file.
        assert!(!safe_hardlink_source(&bob, &node(FILE | 0o644)));
        assert!(!safe_hardlink_source(&bob, &node(libc::S_IFIFO | 0o666)));
        // Set-user-ID, or set-group-ID with group execute.
        assert!(!safe_hardlink_source(&bob, &node(FILE | libc::S_ISUID | 0o666)));
        assert!(!safe_hardlink_source(&bob, &node(FILE | libc::S_ISGID | 0o676)));
        assert!(safe_hardlink_source(&bob, &node(FILE | libc::S_ISGID | 0o666)));
    }

    #[test]
    fn entries_are_cached_only_where_everybody_may_search() {
        assert!(entries_cacheable(DIR | 0o755));
        assert!(entries_cacheable(DIR | 0o711));
        assert!(!entries_cacheable(DIR | 0o750));
        assert!(!entries_cacheable(DIR | 0o700));
        assert!(!entries_cacheable(DIR | 0o677));
    }

    /// A tree of three inodes: the root (0755), file 2 (0644, owner 100)
    /// and directory 3 (0755, owner 100), both with an ACL refusing user
    /// 7 everything (`u:7:---`).
    #[derive(Debug, Default)]
    struct AclTree {
        set: Mutex<Vec<(u64, Vec<u8>)>>,
    }

    fn refusing_7() -> Acl {
        use crate::acl::{tag, AclEntry};
        let e = |tag, perm, id| AclEntry { tag, perm, id };
        Acl::new(vec![
            e(tag::USER_OBJ, 7, 0),
            e(tag::USER, 0, 7),
            e(tag::GROUP_OBJ, 5, 0),
            e(tag::MASK, 5, 0),
            e(tag::OTHER, 5, 0),
        ])
        .unwrap()
    }

    impl FileSystem for AclTree {
        type Inode = u64;
        type Handle = u64;

        fn getattr(&self, _: &Context, inode: u64, _: Option<u64>) -> io::Result<(stat64, Duration)> {
            let st = match inode {
                1 => st(DIR | 0o755, 0, 0),
                2 => st(FILE | 0o654, 100, 100),
                3 => st(DIR | 0o755, 100, 100),
                _ => return Err(err(libc::ENOENT)),
            };
            Ok((st, Duration::from_secs(1)))
        }

        fn getxattr(&self, _: &Context, inode: u64, name: &CStr, _: u32) -> io::Result<GetxattrReply> {
            match (inode, name.to_bytes()) {
                (2 | 3, b"system.posix_acl_access") => Ok(GetxattrReply::Value(refusing_7().to_xattr())),
                _ => Err(err(libc::ENODATA)),
            }
        }

        fn setxattr(&self, _: &Context, inode: u64, _: &CStr, value: &[u8], _: u32) -> io::Result<()> {
            self.set.lock().unwrap().push((inode, value.to_vec()));
            Ok(())
        }

        fn lookup(&self, ctx: &Context, _: u64, _: &CStr) -> io::Result<Entry> {
            let (attr, _) = self.getattr(ctx, 2, None)?;
            Ok(Entry {
                inode: 2,
                attr,
                entry_timeout: Duration::from_secs(1),
                ..Default::default()
            })
        }

        fn open(
            &self,
            _: &Context,
            _: u64,
            _: u32,
            _: u32,
        ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
            Ok((Some(1), OpenOptions::empty(), None))
        }
    }

    fn ctx(uid: u32) -> Context {
        Context {
            uid,
            gid: uid,
            pid: 0,
        }
    }

    #[test]
    fn acls_decide_opens_lookups_and_access() {
        let fs = Checked::with_groups(AclTree::default(), Box::new(Fixed(Some(vec![]))));
        let open = |uid| code(fs.open(&ctx(uid), 2, libc::O_RDONLY as u32, 0));
        // The mode lets everybody read; the ACL refuses user 7.
        assert_eq!(open(7), libc::EACCES);
        assert_eq!(open(8), 0);
        assert_eq!(open(100), 0);
        assert_eq!(code(fs.access(&ctx(7), 2, mask::R)), libc::EACCES);
        assert_eq!(code(fs.access(&ctx(8), 2, mask::R)), 0);
        // Directory 3's ACL refuses 7 the search its mode shows...
        assert_eq!(code(fs.lookup(&ctx(7), 3, c"f")), libc::EACCES);
        // ...so nobody's lookup there may be cached by the kernel.
        let entry = fs.lookup(&ctx(8), 3, c"f").unwrap();
        assert_eq!(entry.entry_timeout, Duration::ZERO);
        let entry = fs.lookup(&ctx(8), 1, c"f").unwrap();
        assert_eq!(entry.entry_timeout, Duration::from_secs(1), "no ACL on the root");
    }

    #[test]
    fn only_the_owner_and_root_set_acls() {
        let fs = Checked::with_groups(AclTree::default(), Box::new(Fixed(Some(vec![]))));
        let value = refusing_7().to_xattr();
        let set = |uid, name: &CStr| code(fs.setxattr(&ctx(uid), 2, name, &value, 0));
        assert_eq!(set(8, c"system.posix_acl_access"), libc::EPERM);
        assert_eq!(set(8, c"system.posix_acl_default"), libc::EPERM);
        assert_eq!(set(100, c"system.posix_acl_access"), 0);
        assert_eq!(set(0, c"system.posix_acl_access"), 0);
        assert_eq!(fs.inner().set.lock().unwrap().len(), 2);
        // Reading one is for anybody.
        assert_eq!(code(fs.getxattr(&ctx(7), 2, c"system.posix_acl_access", 100)), 0);
    }
}
