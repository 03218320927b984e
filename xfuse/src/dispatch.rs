//! The dispatcher: one code path from a parsed request to a
//! `fuse_backend_rs::api::filesystem::FileSystem` call and back to a reply
//! body, for every transport.
//!
//! It never learns which transport carried a request: it gets the header,
//! the [`Args`] and a buffer to write the reply body into, and returns a
//! [`Reply`] (or nothing, for FORGET, BATCH_FORGET and INTERRUPT). Errors of
//! every kind — parse failures, filesystem errors, replies that do not fit —
//! become an errno in exactly one place, [`Dispatcher::dispatch`].
//!
//! Lookup counts: every reply that hands the kernel a new reference to an
//! inode (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE; READDIRPLUS entries
//! are the filesystem's business) records it in [`Reply::lookup`]; a
//! transport that fails to deliver such a reply calls
//! [`Dispatcher::reply_lost`], which gives the reference back with
//! `forget(ino, 1)`, as the trait documents for lookups the kernel never saw.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::CreateIn as FsCreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock as FsFileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    SetattrValid,
};
use kmod_shim::abi::{
    self, fattr, fopen, req_flags, AccessIn, BatchForgetIn, BmapIn, BmapOut, CreateIn, Dirent, DirentPlus,
    FallocateIn, FlushIn, ForgetIn, ForgetOne, FsyncIn, GetattrIn, GetxattrIn, GetxattrOut, InHeader,
    IoctlIn, IoctlOut, LinkIn, LkIn, LkOut, LseekIn, LseekOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut,
    PollIn, PollOut, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn, StatfsOut, WriteIn,
    WriteOut, COMPAT_SETXATTR_IN_SIZE,
};

use crate::cache::AdaptiveTtl;
use crate::init::Negotiated;
use crate::killpriv::{self, Cause, UnknownGroups};
use crate::passthrough::Passthrough;
use crate::perm::GroupSource;
use crate::reply::{attr_out, entry_out, kstatfs, BodyWriter, DataReader, Overflow};
use crate::request::{Args, ParseError};

/// What the dispatcher asks the transport to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The request this answers.
    pub unique: u64,
    /// 0, or a negative errno (then the body is empty).
    pub error: i32,
    /// Bytes of the body written at the start of the transport's buffer.
    pub body_len: usize,
    /// An inode whose lookup count this reply carries to the kernel.
    pub lookup: Option<u64>,
}

/// Request counters, per opcode; shared by all workers of a session.
#[derive(Debug)]
pub struct Stats {
    requests: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    unknown: AtomicU64,
    malformed: AtomicU64,
    forgotten_inodes: AtomicU64,
}

const OPCODE_SLOTS: usize = 64;

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: (0..OPCODE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            errors: (0..OPCODE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            unknown: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            forgotten_inodes: AtomicU64::new(0),
        }
    }
}

impl Stats {
    fn slot(op: Opcode) -> usize {
        (op as usize).min(OPCODE_SLOTS - 1)
    }

    /// Requests seen with this opcode.
    pub fn requests(&self, op: Opcode) -> u64 {
        self.requests[Self::slot(op)].load(Ordering::Relaxed)
    }

    /// Requests with this opcode answered with an error.
    pub fn errors(&self, op: Opcode) -> u64 {
        self.errors[Self::slot(op)].load(Ordering::Relaxed)
    }

    /// Requests with an opcode the protocol does not define.
    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Requests that failed to parse.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Inodes the kernel has forgotten: one per FORGET, one per entry of a
    /// BATCH_FORGET (the kernel gathers them while the daemon is busy, so
    /// this is what shows every forget arrived, not the request counts).
    pub fn forgotten_inodes(&self) -> u64 {
        self.forgotten_inodes.load(Ordering::Relaxed)
    }

    /// (opcode, requests, errors) for every opcode seen at least once.
    pub fn snapshot(&self) -> Vec<(Opcode, u64, u64)> {
        Opcode::ALL
            .iter()
            .map(|&op| (op, self.requests(op), self.errors(op)))
            .filter(|(_, n, _)| *n > 0)
            .collect()
    }

    /// A multi-line table for logs and `--stats`.
    pub fn render(&self) -> String {
        let mut s = format!("{:<20} {:>12} {:>10}\n", "opcode", "requests", "errors");
        for (op, n, e) in self.snapshot() {
            s.push_str(&format!("{:<20} {:>12} {:>10}\n", op.name(), n, e));
        }
        s.push_str(&format!(
            "{:<20} {:>12}\n{:<20} {:>12}\n{:<20} {:>12}\n",
            "unknown",
            self.unknown(),
            "malformed",
            self.malformed(),
            "forgotten inodes",
            self.forgotten_inodes()
        ));
        s
    }
}

/// Why a request failed; turned into an errno by [`Failure::errno`].
#[derive(Debug)]
enum Failure {
    Parse(ParseError),
    Fs(io::Error),
    Errno(i32),
}

impl From<ParseError> for Failure {
    fn from(e: ParseError) -> Self {
        Failure::Parse(e)
    }
}
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Fs(e)
    }
}
impl From<Overflow> for Failure {
    fn from(_: Overflow) -> Self {
        // A reply larger than the size the kernel asked for: ERANGE is what
        // the kernel itself uses for too-small xattr and ioctl buffers.
        Failure::Errno(libc::ERANGE)
    }
}

impl Failure {
    fn errno(&self) -> i32 {
        match self {
            Failure::Parse(e) => e.errno(),
            Failure::Fs(e) => match e.raw_os_error() {
                Some(n) if n > 0 && n < 4096 => n,
                _ => libc::EIO,
            },
            Failure::Errno(n) => *n,
        }
    }
}

/// What a handler produced.
enum Done {
    /// Send the body written so far.
    Reply,
    /// Send the body; it carries a new lookup reference to this inode.
    ReplyLookup(u64),
    /// Send nothing (FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY).
    NoReply,
}

type Handled = Result<Done, Failure>;

/// Reply policies a filesystem written against fuse-backend-rs's trait
/// cannot express itself, chosen per session by whoever knows the
/// filesystem's semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Answer a LOOKUP that fails with `ENOENT` with a negative entry the
    /// kernel may cache this long, so repeated lookups of a missing name
    /// (every create of a new file starts with one) stay in the kernel.
    /// Zero: plain `ENOENT`, nothing cached.
    pub negative_timeout: std::time::Duration,
    /// Set `FOPEN_NOFLUSH` on opened files: the kernel then sends no FLUSH on
    /// close. Only for filesystems whose flush does nothing a close needs
    /// (no POSIX locks served by the filesystem, data written through).
    pub open_noflush: bool,
    /// An entry the filesystem returns with a zero entry timeout stays
    /// uncached even when adaptive timeouts are set (which otherwise
    /// replace the filesystem's timeouts): for filesystems that use zero to
    /// say "never cache this name", like [`crate::perm::Checked`] in a
    /// directory not everybody may search.
    pub zero_entry_timeout_stands: bool,
}

/// Everything a [`Dispatcher`] is built from. [`DispatcherBuilder::build`]
/// consumes it before the dispatcher can be shared, so every setting
/// reaches the dispatcher: none can arrive once workers serve.
#[derive(Debug)]
pub struct DispatcherBuilder<F> {
    fs: F,
    negotiated: Negotiated,
    policy: Policy,
    passthrough: Option<Passthrough>,
    ttl: Option<Arc<AdaptiveTtl>>,
    groups: Box<dyn GroupSource>,
}

impl<F: FileSystem + Sync> DispatcherBuilder<F> {
    /// A dispatcher for a session whose INIT produced `negotiated`, with the
    /// default policies, no adaptive timeouts, no passthrough and nobody's
    /// groups known.
    pub fn new(fs: F, negotiated: Negotiated) -> DispatcherBuilder<F> {
        DispatcherBuilder {
            fs,
            negotiated,
            policy: Policy::default(),
            passthrough: None,
            ttl: None,
            groups: Box::new(UnknownGroups),
        }
    }

    /// The session's negotiated parameters.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Sets the reply policies.
    pub fn set_policy(&mut self, policy: Policy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Sets entry and attribute timeouts per inode from `ttl` (overriding
    /// the filesystem's), and reports the changes requests make to it before
    /// replying (see [`crate::cache`]).
    pub fn set_adaptive_ttl(&mut self, ttl: Arc<AdaptiveTtl>) -> &mut Self {
        self.ttl = Some(ttl);
        self
    }

    /// Where callers' supplementary groups come from, for clearing a
    /// set-group-ID bit ([`crate::killpriv`]); by default nobody's are known.
    /// Only for callers whose pid is a process of this host.
    pub fn set_group_source(&mut self, groups: Box<dyn GroupSource>) -> &mut Self {
        self.groups = groups;
        self
    }

    /// Serves regular files through backing files (FUSE passthrough). The
    /// session must have negotiated `FUSE_PASSTHROUGH`.
    pub(crate) fn set_passthrough(&mut self, passthrough: Passthrough) -> &mut Self {
        self.passthrough = Some(passthrough);
        self
    }

    /// The dispatcher, ready to be shared by the workers.
    pub fn build(self) -> Dispatcher<F> {
        Dispatcher {
            fs: self.fs,
            negotiated: self.negotiated,
            policy: self.policy,
            passthrough: self.passthrough,
            ttl: self.ttl,
            groups: self.groups,
            stats: Stats::default(),
            destroyed: AtomicBool::new(false),
        }
    }
}

/// Decodes requests and calls a [`FileSystem`]. Shared by every worker of a
/// session (it is `Sync` when the filesystem is); its settings are fixed by
/// the [`DispatcherBuilder`] it was built from.
#[derive(Debug)]
pub struct Dispatcher<F> {
    fs: F,
    negotiated: Negotiated,
    policy: Policy,
    passthrough: Option<Passthrough>,
    ttl: Option<Arc<AdaptiveTtl>>,
    groups: Box<dyn GroupSource>,
    stats: Stats,
    destroyed: AtomicBool,
}

impl<F: FileSystem + Sync> Dispatcher<F> {
    /// A dispatcher with the defaults of [`DispatcherBuilder::new`].
    pub fn new(fs: F, negotiated: Negotiated) -> Dispatcher<F> {
        DispatcherBuilder::new(fs, negotiated).build()
    }

    /// The adaptive timeouts, if set.
    pub fn adaptive_ttl(&self) -> Option<&Arc<AdaptiveTtl>> {
        self.ttl.as_ref()
    }

    /// `entry` with the adaptive timeouts of its inode (unchanged without a
    /// policy, or for a negative entry).
    fn with_ttl(&self, entry: &Entry) -> Entry {
        let mut e = *entry;
        if let (Some(ttl), true) = (&self.ttl, e.inode != 0) {
            let (entry, attr) = ttl.ttl(e.inode);
            e.entry_timeout = self.entry_ttl(e.entry_timeout, entry);
            e.attr_timeout = attr;
        }
        e
    }

    /// The adaptive entry timeout, or the filesystem's zero where
    /// [`Policy::zero_entry_timeout_stands`].
    fn entry_ttl(&self, from_fs: std::time::Duration, adaptive: std::time::Duration) -> std::time::Duration {
        if self.policy.zero_entry_timeout_stands && from_fs.is_zero() {
            from_fs
        } else {
            adaptive
        }
    }

    /// `entry`, listed by READDIRPLUS of `dir`, with adaptive timeouts
    /// ([`AdaptiveTtl::ttl_listed`]).
    fn with_listed_ttl(&self, dir: u64, entry: &Entry) -> Entry {
        let mut e = *entry;
        if let (Some(ttl), true) = (&self.ttl, e.inode != 0) {
            let (entry, attr) = ttl.ttl_listed(dir, e.inode);
            e.entry_timeout = self.entry_ttl(e.entry_timeout, entry);
            e.attr_timeout = attr;
        }
        e
    }

    /// The attribute timeout for `ino`: the adaptive one, or `fs_timeout`.
    fn attr_ttl(&self, ino: u64, fs_timeout: std::time::Duration) -> std::time::Duration {
        self.ttl.as_ref().map_or(fs_timeout, |t| t.ttl(ino).1)
    }

    /// A request changed `ino`: the adaptive policy demotes it and drops the
    /// kernel's long-cached attributes before the reply goes out.
    fn changed(&self, ino: u64) {
        if let Some(t) = &self.ttl {
            t.changed_by_request(ino);
        }
    }

    /// Files opened in passthrough mode so far.
    pub fn passthrough_opens(&self) -> u64 {
        self.passthrough.as_ref().map_or(0, |p| p.opened())
    }

    /// The filesystem served.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// The session's negotiated parameters.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Request counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Handles one request whose reply body goes into `out` (which must hold
    /// [`Negotiated::max_reply_bytes`]). Returns the reply to send, or `None`
    /// for requests that take none.
    pub fn dispatch(&self, header: &InHeader, args: Args<'_>, out: &mut [u8]) -> Option<Reply> {
        let mut w = BodyWriter::new(out);
        let Some(op) = Opcode::from_raw(header.opcode) else {
            self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(opcode = header.opcode, "unknown opcode: ENOSYS");
            return Some(Reply {
                unique: header.unique,
                error: -libc::ENOSYS,
                body_len: 0,
                lookup: None,
            });
        };
        self.stats.requests[Stats::slot(op)].fetch_add(1, Ordering::Relaxed);
        let outcome = self.handle(op, header, args, &mut w);
        let (error, lookup) = match outcome {
            Ok(Done::NoReply) => return None,
            Ok(Done::Reply) => (0, None),
            Ok(Done::ReplyLookup(ino)) => (0, Some(ino)),
            Err(failure) => {
                self.stats.errors[Stats::slot(op)].fetch_add(1, Ordering::Relaxed);
                if let Failure::Parse(e) = &failure {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(op = op.name(), unique = header.unique, "malformed request: {e}");
                }
                if matches!(op, Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt) {
                    // The kernel takes no reply to these, not even an error.
                    return None;
                }
                w.clear();
                (-failure.errno(), None)
            }
        };
        Some(Reply {
            unique: header.unique,
            error,
            body_len: w.len(),
            lookup,
        })
    }

    /// Gives back the lookup reference of a reply the kernel never received.
    pub fn reply_lost(&self, reply: &Reply) {
        if let Some(ino) = reply.lookup {
            self.fs.forget(&Context::default(), ino.into(), 1);
        }
    }

    /// Calls the filesystem's `destroy` once (on DESTROY, or at session end).
    pub fn destroy(&self) {
        if !self.destroyed.swap(true, Ordering::AcqRel) {
            self.fs.destroy();
        }
    }

    fn handle(&self, op: Opcode, h: &InHeader, mut a: Args<'_>, w: &mut BodyWriter<'_>) -> Handled {
        let mut ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid as libc::pid_t,
        };
        self.fs.id_remap(&mut ctx)?;
        let ino = h.nodeid;
        let fs = &self.fs;
        match op {
            Opcode::Lookup => {
                a.no_fixed();
                let name = a.name()?;
                a.finish()?;
                match fs.lookup(&ctx, ino.into(), name) {
                    Ok(entry) => self.entry_reply(w, &entry),
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOENT)
                            && !self.policy.negative_timeout.is_zero() =>
                    {
                        let negative = Entry {
                            inode: 0,
                            entry_timeout: self.policy.negative_timeout,
                            ..Default::default()
                        };
                        w.push(&entry_out(&negative))?;
                        Ok(Done::Reply)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Opcode::Forget => {
                let f: ForgetIn = a.fixed()?;
                a.finish()?;
                self.stats.forgotten_inodes.fetch_add(1, Ordering::Relaxed);
                fs.forget(&ctx, ino.into(), f.nlookup);
                Ok(Done::NoReply)
            }
            Opcode::BatchForget => {
                let b: BatchForgetIn = a.fixed()?;
                let count = b.count as usize;
                if count * std::mem::size_of::<ForgetOne>() > a.remaining() {
                    return Err(ParseError::BadCount(u64::from(b.count)).into());
                }
                let items: Vec<ForgetOne> = a.array(count)?;
                a.finish()?;
                self.stats
                    .forgotten_inodes
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                fs.batch_forget(&ctx, items.iter().map(|f| (f.nodeid.into(), f.nlookup)).collect());
                Ok(Done::NoReply)
            }
            Opcode::Getattr => {
                let g: GetattrIn = a.fixed()?;
                a.finish()?;
                let fh = (g.getattr_flags & req_flags::GETATTR_FH != 0).then(|| g.fh.into());
                let (st, timeout) = fs.getattr(&ctx, ino.into(), fh)?;
                w.push(&attr_out(&st, self.attr_ttl(ino, timeout)))?;
                Ok(Done::Reply)
            }
            Opcode::Setattr => {
                let s: SetattrIn = a.fixed()?;
                a.finish()?;
                let (st, valid, fh) = setattr_args(&s);
                let valid = self.kill_on_setattr(&ctx, ino, s.valid, valid)?;
                let (st, timeout) = fs.setattr(&ctx, ino.into(), st, fh.map(Into::into), valid)?;
                self.changed(ino);
                w.push(&attr_out(&st, self.attr_ttl(ino, timeout)))?;
                Ok(Done::Reply)
            }
            Opcode::Readlink => {
                a.no_fixed();
                a.finish()?;
                let target = fs.readlink(&ctx, ino.into())?;
                w.push_bytes(&target)?;
                Ok(Done::Reply)
            }
            Opcode::Symlink => {
                a.no_fixed();
                let name = a.name()?;
                let target = a.name()?;
                a.finish()?;
                let entry = fs.symlink(&ctx, target, ino.into(), name)?;
                self.changed(ino);
                self.entry_reply(w, &entry)
            }
            Opcode::Mknod => {
                let m: MknodIn = a.fixed()?;
                let name = a.name()?;
                a.finish()?;
                let entry = fs.mknod(&ctx, ino.into(), name, m.mode, m.rdev, m.umask)?;
                self.changed(ino);
                self.entry_reply(w, &entry)
            }
            Opcode::Mkdir => {
                let m: MkdirIn = a.fixed()?;
                let name = a.name()?;
                a.finish()?;
                let entry = fs.mkdir(&ctx, ino.into(), name, m.mode, m.umask)?;
                self.changed(ino);
                self.entry_reply(w, &entry)
            }
            Opcode::Unlink | Opcode::Rmdir => {
                a.no_fixed();
                let name = a.name()?;
                a.finish()?;
                if op == Opcode::Unlink {
                    fs.unlink(&ctx, ino.into(), name)?;
                } else {
                    fs.rmdir(&ctx, ino.into(), name)?;
                }
                self.changed(ino);
                Ok(Done::Reply)
            }
            Opcode::Rename => {
                let r: RenameIn = a.fixed()?;
                self.rename(&ctx, ino, r.newdir, 0, &mut a)
            }
            Opcode::Rename2 => {
                let r: Rename2In = a.fixed()?;
                self.rename(&ctx, ino, r.newdir, r.flags, &mut a)
            }
            Opcode::Link => {
                let l: LinkIn = a.fixed()?;
                let name = a.name()?;
                a.finish()?;
                let entry = fs.link(&ctx, l.oldnodeid.into(), ino.into(), name)?;
                self.changed(ino);
                self.changed(l.oldnodeid);
                self.entry_reply(w, &entry)
            }
            Opcode::Open => {
                let o: OpenIn = a.fixed()?;
                a.finish()?;
                let open_flags = self.kill_on_open(&ctx, ino, o.flags, o.open_flags)?;
                let (fh, opts, _passthrough) = fs.open(&ctx, ino.into(), o.flags, open_flags)?;
                let fh: Option<u64> = fh.map(Into::into);
                let mut out = open_out(fh, opts.bits() | self.file_open_flags());
                self.attach_backing(&mut out, ino, fh, o.flags);
                if let Err(e) = w.push(&out) {
                    if let (Some(p), Some(fh)) = (&self.passthrough, fh) {
                        p.release(fh);
                    }
                    return Err(e.into());
                }
                Ok(Done::Reply)
            }
            Opcode::Opendir => {
                let o: OpenIn = a.fixed()?;
                a.finish()?;
                let (fh, opts) = fs.opendir(&ctx, ino.into(), o.flags)?;
                let mut flags = opts.bits();
                if self.ttl.as_ref().is_some_and(|t| t.is_long(ino)) {
                    // A hot, unchanged directory: the kernel keeps its
                    // listing across opens. Changes through the mount reset
                    // that cache in the kernel (the directory's i_version)
                    // and demote it here; outside changes invalidate it
                    // (cache::AdaptiveTtl::entry_changed, inode_changed).
                    flags |= fopen::CACHE_DIR | fopen::KEEP_CACHE;
                }
                w.push(&open_out(fh.map(Into::into), flags))?;
                Ok(Done::Reply)
            }
            Opcode::Create => {
                let c: CreateIn = a.fixed()?;
                let name = a.name()?;
                a.finish()?;
                // An existing file opened with O_TRUNC (the kernel creates
                // only names it found missing, but another client may have
                // made it since) loses its bits like on OPEN; which inode it
                // is, the reply tells, so the clearing follows.
                let kill = self.kills_privileges()
                    && c.open_flags & req_flags::OPEN_KILL_SUIDGID != 0
                    && c.flags as i32 & libc::O_TRUNC != 0;
                let args = FsCreateIn {
                    flags: c.flags,
                    mode: c.mode,
                    umask: c.umask,
                    fuse_flags: if kill {
                        c.open_flags & !req_flags::OPEN_KILL_SUIDGID
                    } else {
                        c.open_flags
                    },
                };
                let (mut entry, fh, opts, _passthrough) = fs.create(&ctx, ino.into(), name, args)?;
                self.changed(ino);
                let fh: Option<u64> = fh.map(Into::into);
                if kill {
                    match killpriv::drop_privileges(fs, &ctx, entry.inode, Cause::Modify, &*self.groups) {
                        Ok(Some((st, _))) => entry.attr = st,
                        Ok(None) => {}
                        Err(e) => {
                            self.undo_create(&ctx, &entry, fh, c.flags);
                            return Err(e.into());
                        }
                    }
                }
                let entry = self.with_ttl(&entry);
                let mut out = open_out(fh, opts.bits() | self.file_open_flags());
                self.attach_backing(&mut out, entry.inode, fh, c.flags);
                if let Err(e) = w.push(&entry_out(&entry)).and_then(|_| w.push(&out)) {
                    if let (Some(p), Some(fh)) = (&self.passthrough, fh) {
                        p.release(fh);
                    }
                    self.undo_create(&ctx, &entry, fh, c.flags);
                    return Err(e.into());
                }
                Ok(Done::ReplyLookup(entry.inode))
            }
            Opcode::Read => {
                let r: ReadIn = a.fixed()?;
                a.finish()?;
                let size = r.size as usize;
                if size > self.negotiated.max_reply_bytes() || size > w.room() {
                    return Err(ParseError::BadCount(u64::from(r.size)).into());
                }
                w.limit_to(size);
                let owner = (r.read_flags & req_flags::READ_LOCKOWNER != 0).then_some(r.lock_owner);
                fs.read(&ctx, ino.into(), r.fh.into(), w, r.size, r.offset, owner, r.flags)?;
                Ok(Done::Reply)
            }
            Opcode::Write => {
                let wi: WriteIn = a.fixed()?;
                let size = wi.size as usize;
                if size > self.negotiated.max_write as usize {
                    return Err(ParseError::BadCount(u64::from(wi.size)).into());
                }
                let data = a.bytes(size)?;
                a.finish()?;
                let mut reader = DataReader::new(data);
                let owner = (wi.write_flags & req_flags::WRITE_LOCKOWNER != 0).then_some(wi.lock_owner);
                let delayed = wi.write_flags & req_flags::WRITE_CACHE != 0;
                let mut write_flags = wi.write_flags;
                if self.kills_privileges() && write_flags & req_flags::WRITE_KILL_SUIDGID != 0 {
                    // Usually a bare SETATTR just before has cleared them
                    // already; this catches a mode the kernel's cache missed.
                    killpriv::drop_privileges(fs, &ctx, ino, Cause::Modify, &*self.groups)?;
                    write_flags &= !req_flags::WRITE_KILL_SUIDGID;
                }
                let written = fs.write(
                    &ctx,
                    ino.into(),
                    wi.fh.into(),
                    &mut reader,
                    wi.size,
                    wi.offset,
                    owner,
                    delayed,
                    wi.flags,
                    write_flags,
                )?;
                // Size and mtime changed.
                self.changed(ino);
                let written = u32::try_from(written).unwrap_or(u32::MAX).min(wi.size);
                w.push(&WriteOut {
                    size: written,
                    padding: 0,
                })?;
                Ok(Done::Reply)
            }
            Opcode::Statfs => {
                a.no_fixed();
                a.finish()?;
                let st = fs.statfs(&ctx, ino.into())?;
                w.push(&StatfsOut { st: kstatfs(&st) })?;
                Ok(Done::Reply)
            }
            Opcode::Release => {
                let r: ReleaseIn = a.fixed()?;
                a.finish()?;
                let flush = r.release_flags & req_flags::RELEASE_FLUSH != 0;
                let flock = r.release_flags & req_flags::RELEASE_FLOCK_UNLOCK != 0;
                let owner = (flush || flock).then_some(r.lock_owner);
                if let Some(p) = &self.passthrough {
                    p.release(r.fh);
                }
                fs.release(&ctx, ino.into(), r.flags, r.fh.into(), flush, flock, owner)?;
                Ok(Done::Reply)
            }
            Opcode::Releasedir => {
                let r: ReleaseIn = a.fixed()?;
                a.finish()?;
                fs.releasedir(&ctx, ino.into(), r.flags, r.fh.into())?;
                Ok(Done::Reply)
            }
            Opcode::Fsync | Opcode::Fsyncdir => {
                let s: FsyncIn = a.fixed()?;
                a.finish()?;
                let datasync = s.fsync_flags & req_flags::FSYNC_FDATASYNC != 0;
                if op == Opcode::Fsync {
                    fs.fsync(&ctx, ino.into(), datasync, s.fh.into())?;
                } else {
                    fs.fsyncdir(&ctx, ino.into(), datasync, s.fh.into())?;
                }
                Ok(Done::Reply)
            }
            Opcode::Setxattr => {
                // We never negotiate FUSE_SETXATTR_EXT, so the kernel sends the
                // 8-byte compat struct.
                let s: SetxattrIn = if self.negotiated.has(abi::init_flags::SETXATTR_EXT) {
                    a.fixed()?
                } else {
                    a.fixed_prefix(COMPAT_SETXATTR_IN_SIZE)?
                };
                let name = a.name()?;
                let value = a.bytes(s.size as usize)?;
                a.finish()?;
                fs.setxattr(&ctx, ino.into(), name, value, s.flags)?;
                self.changed(ino);
                Ok(Done::Reply)
            }
            Opcode::Getxattr => {
                let g: GetxattrIn = a.fixed()?;
                let name = a.name()?;
                a.finish()?;
                match fs.getxattr(&ctx, ino.into(), name, g.size)? {
                    GetxattrReply::Value(v) => xattr_value(w, g.size, &v)?,
                    GetxattrReply::Count(n) => w.push(&GetxattrOut { size: n, padding: 0 })?,
                }
                Ok(Done::Reply)
            }
            Opcode::Listxattr => {
                let g: GetxattrIn = a.fixed()?;
                a.finish()?;
                match fs.listxattr(&ctx, ino.into(), g.size)? {
                    ListxattrReply::Names(v) => xattr_value(w, g.size, &v)?,
                    ListxattrReply::Count(n) => w.push(&GetxattrOut { size: n, padding: 0 })?,
                }
                Ok(Done::Reply)
            }
            Opcode::Removexattr => {
                a.no_fixed();
                let name = a.name()?;
                a.finish()?;
                fs.removexattr(&ctx, ino.into(), name)?;
                self.changed(ino);
                Ok(Done::Reply)
            }
            Opcode::Flush => {
                let f: FlushIn = a.fixed()?;
                a.finish()?;
                fs.flush(&ctx, ino.into(), f.fh.into(), f.lock_owner)?;
                Ok(Done::Reply)
            }
            Opcode::Init => {
                // INIT is answered by the session before the dispatcher exists.
                Err(Failure::Errno(libc::EPROTO))
            }
            Opcode::Readdir => {
                let r: ReadIn = a.fixed()?;
                a.finish()?;
                self.readdir(&ctx, ino, &r, w, false)
            }
            Opcode::Readdirplus => {
                let r: ReadIn = a.fixed()?;
                a.finish()?;
                self.readdir(&ctx, ino, &r, w, true)
            }
            Opcode::Getlk => {
                let l: LkIn = a.fixed()?;
                a.finish()?;
                let lock = fs.getlk(
                    &ctx,
                    ino.into(),
                    l.fh.into(),
                    l.owner,
                    file_lock(&l.lk),
                    l.lk_flags,
                )?;
                let lk = abi::FileLock {
                    start: lock.start,
                    end: lock.end,
                    type_: lock.lock_type,
                    pid: lock.pid,
                };
                w.push(&LkOut { lk })?;
                Ok(Done::Reply)
            }
            Opcode::Setlk | Opcode::Setlkw => {
                let l: LkIn = a.fixed()?;
                a.finish()?;
                let lock = file_lock(&l.lk);
                if op == Opcode::Setlk {
                    fs.setlk(&ctx, ino.into(), l.fh.into(), l.owner, lock, l.lk_flags)?;
                } else {
                    fs.setlkw(&ctx, ino.into(), l.fh.into(), l.owner, lock, l.lk_flags)?;
                }
                Ok(Done::Reply)
            }
            Opcode::Access => {
                let acc: AccessIn = a.fixed()?;
                a.finish()?;
                fs.access(&ctx, ino.into(), acc.mask)?;
                Ok(Done::Reply)
            }
            Opcode::Interrupt => {
                // Requests run to completion on the worker that took them;
                // there is nothing to cancel, and INTERRUPT takes no reply.
                let _: abi::InterruptIn = a.fixed()?;
                Ok(Done::NoReply)
            }
            Opcode::Bmap => {
                let b: BmapIn = a.fixed()?;
                a.finish()?;
                let block = fs.bmap(&ctx, ino.into(), b.block, b.blocksize)?;
                w.push(&BmapOut { block })?;
                Ok(Done::Reply)
            }
            Opcode::Destroy => {
                a.no_fixed();
                self.destroy();
                Ok(Done::Reply)
            }
            Opcode::Ioctl => {
                let io: IoctlIn = a.fixed()?;
                if io.flags & req_flags::IOCTL_UNRESTRICTED != 0 {
                    // Unrestricted ioctls need the retry protocol (CUSE only).
                    return Err(Failure::Errno(libc::ENOSYS));
                }
                let input = a.bytes(io.in_size as usize)?;
                a.finish()?;
                if io.out_size as usize > self.negotiated.max_reply_bytes() {
                    return Err(ParseError::BadCount(u64::from(io.out_size)).into());
                }
                let data = IoctlData {
                    result: 0,
                    data: Some(&*input),
                };
                let res = fs.ioctl(
                    &ctx,
                    ino.into(),
                    io.fh.into(),
                    io.flags,
                    io.cmd,
                    data,
                    io.out_size,
                )?;
                let out_data = res.data.unwrap_or(&[]);
                if out_data.len() > io.out_size as usize {
                    return Err(Failure::Errno(libc::EINVAL));
                }
                w.push(&IoctlOut {
                    result: res.result,
                    flags: 0,
                    in_iovs: 0,
                    out_iovs: 0,
                })?;
                w.push_bytes(out_data)?;
                Ok(Done::Reply)
            }
            Opcode::Poll => {
                let p: PollIn = a.fixed()?;
                a.finish()?;
                let revents = fs.poll(&ctx, ino.into(), p.fh.into(), p.kh.into(), p.flags, p.events)?;
                w.push(&PollOut { revents, padding: 0 })?;
                Ok(Done::Reply)
            }
            Opcode::NotifyReply => {
                // The answer to a NOTIFY_RETRIEVE; it takes no reply.
                if let Err(e) = fs.notify_reply() {
                    tracing::debug!("notify_reply: {e}");
                }
                Ok(Done::NoReply)
            }
            Opcode::Fallocate => {
                let f: FallocateIn = a.fixed()?;
                a.finish()?;
                fs.fallocate(&ctx, ino.into(), f.fh.into(), f.mode, f.offset, f.length)?;
                self.changed(ino);
                Ok(Done::Reply)
            }
            Opcode::Lseek => {
                let l: LseekIn = a.fixed()?;
                a.finish()?;
                let offset = fs.lseek(&ctx, ino.into(), l.fh.into(), l.offset, l.whence)?;
                w.push(&LseekOut { offset })?;
                Ok(Done::Reply)
            }
            // The FileSystem trait has no method for these: ENOSYS tells the
            // kernel to stop asking and use its generic fallback (a read/write
            // copy, no syncfs, no O_TMPFILE, GETATTR instead of STATX).
            // SETUPMAPPING/REMOVEMAPPING are virtio-fs DAX only.
            Opcode::CopyFileRange
            | Opcode::CopyFileRange64
            | Opcode::Syncfs
            | Opcode::Tmpfile
            | Opcode::Statx
            | Opcode::Setupmapping
            | Opcode::Removemapping
            | Opcode::CuseInit => Err(Failure::Errno(libc::ENOSYS)),
        }
    }

    /// Turns an OPEN/CREATE reply into a passthrough one when a backing file
    /// can be registered for it.
    fn attach_backing(&self, out: &mut OpenOut, inode: u64, fh: Option<u64>, flags: u32) {
        let (Some(p), Some(fh)) = (&self.passthrough, fh) else {
            return;
        };
        if let Some(id) = p.open(inode, fh, flags) {
            // The kernel serves the data: page-cache and direct-I/O hints no
            // longer apply.
            out.open_flags &= !(fopen::DIRECT_IO | fopen::KEEP_CACHE);
            out.open_flags |= fopen::PASSTHROUGH;
            out.backing_id = id as i32;
        }
    }

    /// Whether this session clears set-user-ID and set-group-ID bits
    /// itself ([`crate::killpriv`]).
    fn kills_privileges(&self) -> bool {
        self.negotiated.has(abi::init_flags::HANDLE_KILLPRIV_V2)
    }

    /// Clears the bits a SETATTR asks to clear: one with
    /// `FATTR_KILL_SUIDGID` (a truncate by a caller without `CAP_FSETID`, or
    /// any change of owner), or a bare one (no attribute to set: the
    /// kernel's `file_remove_privs()` before a write or fallocate). Returns
    /// `valid` without the kill bit, for the filesystem.
    fn kill_on_setattr(
        &self,
        ctx: &Context,
        ino: u64,
        raw_valid: u32,
        valid: SetattrValid,
    ) -> Result<SetattrValid, Failure> {
        if !self.kills_privileges() {
            return Ok(valid);
        }
        let kill = raw_valid & fattr::KILL_SUIDGID != 0;
        let attrs = raw_valid & !(fattr::FH | fattr::LOCKOWNER | fattr::KILL_SUIDGID);
        let cause = if attrs & (fattr::UID | fattr::GID) != 0 {
            // The kernel flags every chown, privileged or not.
            kill.then_some(Cause::Chown {
                privileged: ctx.uid == 0,
            })
        } else {
            (kill || attrs == 0).then_some(Cause::Modify)
        };
        if let Some(cause) = cause {
            killpriv::drop_privileges(&self.fs, ctx, ino, cause, &*self.groups)?;
        }
        Ok(valid - SetattrValid::KILL_SUIDGID)
    }

    /// Clears the bits of a file an OPEN truncates for a caller without
    /// `CAP_FSETID` (`FUSE_OPEN_KILL_SUIDGID`, sent with
    /// `FUSE_ATOMIC_O_TRUNC`); returns the open flags for the filesystem.
    fn kill_on_open(&self, ctx: &Context, ino: u64, flags: u32, open_flags: u32) -> Result<u32, Failure> {
        if !self.kills_privileges()
            || open_flags & req_flags::OPEN_KILL_SUIDGID == 0
            || flags as i32 & libc::O_TRUNC == 0
        {
            return Ok(open_flags);
        }
        killpriv::drop_privileges(&self.fs, ctx, ino, Cause::Modify, &*self.groups)?;
        Ok(open_flags & !req_flags::OPEN_KILL_SUIDGID)
    }

    /// `FOPEN_*` flags the session's policy adds to every opened file.
    fn file_open_flags(&self) -> u32 {
        if self.policy.open_noflush {
            fopen::NOFLUSH
        } else {
            0
        }
    }

    fn entry_reply(&self, w: &mut BodyWriter<'_>, entry: &Entry) -> Handled {
        let entry = &self.with_ttl(entry);
        if entry.inode == 0 {
            // A negative entry (cached "does not exist"): no reference taken.
            w.push(&entry_out(entry))?;
            return Ok(Done::Reply);
        }
        if let Err(e) = w.push(&entry_out(entry)) {
            self.fs.forget(&Context::default(), entry.inode.into(), 1);
            return Err(e.into());
        }
        Ok(Done::ReplyLookup(entry.inode))
    }

    /// Undoes a CREATE whose reply cannot be built: the kernel will never
    /// know the handle or the reference.
    fn undo_create(&self, ctx: &Context, entry: &Entry, fh: Option<u64>, flags: u32) {
        if let Some(fh) = fh {
            let _ = self
                .fs
                .release(ctx, entry.inode.into(), flags, fh.into(), false, false, None);
        }
        self.fs.forget(ctx, entry.inode.into(), 1);
    }

    fn rename(&self, ctx: &Context, olddir: u64, newdir: u64, flags: u32, a: &mut Args<'_>) -> Handled {
        let old = a.name()?;
        let new = a.name()?;
        a.finish()?;
        self.fs
            .rename(ctx, olddir.into(), old, newdir.into(), new, flags)?;
        self.changed(olddir);
        self.changed(newdir);
        Ok(Done::Reply)
    }

    fn readdir(&self, ctx: &Context, ino: u64, r: &ReadIn, w: &mut BodyWriter<'_>, plus: bool) -> Handled {
        let size = r.size as usize;
        if size > self.negotiated.max_reply_bytes() || size > w.room() {
            return Err(ParseError::BadCount(u64::from(r.size)).into());
        }
        w.limit_to(size);
        if plus {
            self.fs
                .readdirplus(ctx, ino.into(), r.fh.into(), r.size, r.offset, &mut |d, e| {
                    Ok(push_dirent(w, &d, Some(&self.with_listed_ttl(ino, &e))))
                })?;
        } else {
            self.fs
                .readdir(ctx, ino.into(), r.fh.into(), r.size, r.offset, &mut |d| {
                    Ok(push_dirent(w, &d, None))
                })?;
        }
        Ok(Done::Reply)
    }
}

/// Appends one directory record; returns its size, or 0 when it does not fit
/// (the filesystem then stops and resumes from that entry's offset next time).
fn push_dirent(w: &mut BodyWriter<'_>, d: &DirEntry<'_>, entry: Option<&Entry>) -> usize {
    let namelen = d.name.len();
    let fixed = if entry.is_some() {
        std::mem::size_of::<DirentPlus>()
    } else {
        std::mem::size_of::<Dirent>()
    };
    let record = abi::dirent_align(fixed + namelen);
    if record > w.room() || namelen > u32::MAX as usize {
        return 0;
    }
    let dirent = Dirent {
        ino: d.ino,
        off: d.offset,
        namelen: namelen as u32,
        type_: d.type_,
    };
    let pushed = match entry {
        Some(e) => w.push(&DirentPlus {
            entry_out: entry_out(e),
            dirent,
        }),
        None => w.push(&dirent),
    };
    if pushed
        .and_then(|_| w.push_bytes(d.name))
        .and_then(|_| w.push_zeros(record - fixed - namelen))
        .is_err()
    {
        return 0;
    }
    record
}

fn open_out(fh: Option<u64>, open_flags: u32) -> OpenOut {
    // The filesystem's passthrough (third return value) is fuse-backend-rs's
    // own scheme, not the kernel's backing ids; never forward its bit.
    OpenOut {
        fh: fh.unwrap_or(0),
        open_flags: open_flags & !fopen::PASSTHROUGH,
        backing_id: 0,
    }
}

fn file_lock(l: &abi::FileLock) -> FsFileLock {
    FsFileLock {
        start: l.start,
        end: l.end,
        lock_type: l.type_,
        pid: l.pid,
    }
}

fn xattr_value(w: &mut BodyWriter<'_>, size: u32, value: &[u8]) -> Result<(), Failure> {
    if size == 0 {
        // The caller asked for the size only.
        let n = u32::try_from(value.len()).map_err(|_| Failure::Errno(libc::E2BIG))?;
        w.push(&GetxattrOut { size: n, padding: 0 })?;
    } else if value.len() > size as usize {
        return Err(Failure::Errno(libc::ERANGE));
    } else {
        w.push_bytes(value)?;
    }
    Ok(())
}

/// Turns `fuse_setattr_in` into the trait's (stat64, valid, handle).
fn setattr_args(s: &SetattrIn) -> (libc::stat64, SetattrValid, Option<u64>) {
    let mut st: libc::stat64 = zeroed_stat();
    st.st_mode = s.mode;
    st.st_uid = s.uid;
    st.st_gid = s.gid;
    st.st_size = s.size as i64;
    st.st_atime = s.atime as i64;
    st.st_atime_nsec = i64::from(s.atimensec);
    st.st_mtime = s.mtime as i64;
    st.st_mtime_nsec = i64::from(s.mtimensec);
    st.st_ctime = s.ctime as i64;
    st.st_ctime_nsec = i64::from(s.ctimensec);
    let valid = SetattrValid::from_bits_truncate(s.valid & !(fattr::FH | fattr::LOCKOWNER));
    let fh = (s.valid & fattr::FH != 0).then_some(s.fh);
    (st, valid, fh)
}

fn zeroed_stat() -> libc::stat64 {
    let st: Entry = Entry::default();
    // `Entry::default()` holds a zeroed stat64; reuse it rather than zeroing
    // memory ourselves.
    st.attr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::split_contiguous;
    use fuse_backend_rs::api::filesystem::ZeroCopyWriter;
    use kmod_shim::abi::init_flags;
    use kmod_shim::abi::{AttrOut, EntryOut};
    use std::ffi::CStr;
    use std::time::Duration;
    use zerocopy::{FromBytes, IntoBytes};

    /// A filesystem double: one directory (1) holding one file "f" (2) with
    /// eight bytes of data; it counts lookups and forgets.
    #[derive(Default)]
    struct TinyFs {
        lookups: AtomicU64,
        forgets: AtomicU64,
    }

    fn stat(ino: u64) -> libc::stat64 {
        let mut st = zeroed_stat();
        st.st_ino = ino;
        st.st_mode = if ino == 1 {
            libc::S_IFDIR | 0o755
        } else {
            libc::S_IFREG | 0o644
        };
        st.st_size = 8;
        st.st_nlink = 1;
        st
    }

    impl FileSystem for TinyFs {
        type Inode = u64;
        type Handle = u64;

        fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
            if parent != 1 || name.to_bytes() != b"f" {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            self.lookups.fetch_add(1, Ordering::Relaxed);
            Ok(Entry {
                inode: 2,
                attr: stat(2),
                ..Default::default()
            })
        }

        fn forget(&self, _: &Context, _: u64, count: u64) {
            self.forgets.fetch_add(count, Ordering::Relaxed);
        }

        fn getattr(&self, _: &Context, ino: u64, _: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
            Ok((stat(ino), Duration::from_secs(1)))
        }

        fn setattr(
            &self,
            _: &Context,
            ino: u64,
            _: libc::stat64,
            _: Option<u64>,
            _: SetattrValid,
        ) -> io::Result<(libc::stat64, Duration)> {
            Ok((stat(ino), Duration::from_secs(1)))
        }

        fn read(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            w: &mut dyn ZeroCopyWriter,
            size: u32,
            offset: u64,
            _: Option<u64>,
            _: u32,
        ) -> io::Result<usize> {
            let data = b"01234567";
            let start = (offset as usize).min(data.len());
            let end = (start + size as usize).min(data.len());
            w.write(&data[start..end])
        }

        fn readdir(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            _: u32,
            offset: u64,
            add: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
        ) -> io::Result<()> {
            for i in offset..100 {
                let name = format!("entry-{i}");
                let n = add(DirEntry {
                    ino: 10 + i,
                    offset: i + 1,
                    type_: 8,
                    name: name.as_bytes(),
                })?;
                if n == 0 {
                    break;
                }
            }
            Ok(())
        }
    }

    fn negotiated() -> Negotiated {
        Negotiated {
            minor: 45,
            offered: 0,
            flags: init_flags::MAX_PAGES,
            max_write: 128 * 1024,
            max_pages: 32,
            max_readahead: 0,
        }
    }

    fn message(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode,
            unique: 42,
            nodeid,
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn run(d: &Dispatcher<TinyFs>, mut msg: Vec<u8>, out: &mut [u8]) -> Option<Reply> {
        match split_contiguous(&mut msg) {
            Ok((h, body)) => d.dispatch(&h, Args::contiguous(body), out),
            Err(bad) => bad.unique.map(|unique| Reply {
                unique,
                error: -bad.error.errno(),
                body_len: 0,
                lookup: None,
            }),
        }
    }

    #[test]
    fn lookup_returns_entry_and_carries_its_reference() {
        let d = Dispatcher::new(TinyFs::default(), negotiated());
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let r = run(&d, message(Opcode::Lookup as u32, 1, b"f\0"), &mut out).unwrap();
        assert_eq!((r.error, r.body_len, r.lookup), (0, 128, Some(2)));
        let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
        assert_eq!((e.nodeid, e.attr.size), (2, 8));
        d.reply_lost(&r);
        assert_eq!(
            d.fs().forgets.load(Ordering::Relaxed),
            1,
            "a lost reply gives its lookup back"
        );
        let r = run(&d, message(Opcode::Lookup as u32, 1, b"nope\0"), &mut out).unwrap();
        assert_eq!(r.error, -libc::ENOENT);
        assert_eq!(d.stats().requests(Opcode::Lookup), 2);
        assert_eq!(d.stats().errors(Opcode::Lookup), 1);
    }

    #[test]
    fn policy_caches_negative_lookups_and_skips_flush() {
        let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
        b.set_policy(Policy {
            negative_timeout: Duration::from_millis(1500),
            open_noflush: true,
            ..Default::default()
        });
        let d = b.build();
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let r = run(&d, message(Opcode::Lookup as u32, 1, b"nope\0"), &mut out).unwrap();
        assert_eq!((r.error, r.body_len, r.lookup), (0, 128, None));
        let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
        assert_eq!((e.nodeid, e.entry_valid, e.entry_valid_nsec), (0, 1, 500_000_000));
        let open = OpenIn::default().as_bytes().to_vec();
        let r = run(&d, message(Opcode::Open as u32, 2, &open), &mut out).unwrap();
        assert_eq!(r.error, 0);
        let o = OpenOut::read_from_bytes(&out[..16]).unwrap();
        assert_eq!(o.open_flags & fopen::NOFLUSH, fopen::NOFLUSH);
    }

    #[derive(Debug, Default)]
    struct NoInval;

    impl crate::cache::Invalidator for NoInval {
        fn inval_inode(&self, _: u64, _: i64, _: i64) -> io::Result<()> {
            Ok(())
        }
        fn inval_entry(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn adaptive_ttl_sets_timeouts_per_inode_and_changes_demote() {
        use crate::cache::{AdaptiveConfig, Upcalls};
        let ttl = Arc::new(AdaptiveTtl::new(AdaptiveConfig {
            short_entry_ttl: Duration::from_secs(1),
            short_attr_ttl: Duration::from_secs(2),
            long_ttl: Duration::from_secs(77),
            ..Default::default()
        }));
        ttl.set_invalidator(Box::new(NoInval));
        let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
        b.set_adaptive_ttl(ttl.clone());
        let d = b.build();
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let lookup = |d: &Dispatcher<TinyFs>, out: &mut [u8]| {
            let r = run(d, message(Opcode::Lookup as u32, 1, b"f\0"), out).unwrap();
            assert_eq!(r.error, 0);
            let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
            (e.entry_valid, e.attr_valid)
        };
        assert_eq!(lookup(&d, &mut out), (1, 2), "short by default");
        ttl.refresh(std::time::Instant::now(), &[Upcalls { nodeid: 2, total: 5 }]);
        assert_eq!(lookup(&d, &mut out), (77, 77), "long once hot");
        let getattr = GetattrIn::default().as_bytes().to_vec();
        let r = run(&d, message(Opcode::Getattr as u32, 2, &getattr), &mut out).unwrap();
        assert_eq!(
            (r.error, AttrOut::read_from_bytes(&out[..104]).unwrap().attr_valid),
            (0, 77)
        );
        // A SETATTR through the mount demotes it before replying.
        let setattr = SetattrIn::default().as_bytes().to_vec();
        let r = run(&d, message(Opcode::Setattr as u32, 2, &setattr), &mut out).unwrap();
        assert_eq!(r.error, 0);
        assert!(!ttl.is_long(2));
        assert_eq!(lookup(&d, &mut out), (1, 2));
        // TinyFs answers with zero timeouts: with zero_entry_timeout_stands
        // that zero is the filesystem saying "never cache this name"; the
        // attribute timeout stays adaptive.
        let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
        b.set_adaptive_ttl(ttl.clone()).set_policy(Policy {
            zero_entry_timeout_stands: true,
            ..Default::default()
        });
        let d = b.build();
        assert_eq!(lookup(&d, &mut out), (0, 2));
    }

    #[test]
    fn unknown_and_unimplemented_opcodes_get_enosys() {
        let d = Dispatcher::new(TinyFs::default(), negotiated());
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        for opcode in [
            7u32,
            54,
            999,
            u32::MAX,
            Opcode::Statx as u32,
            Opcode::Tmpfile as u32,
        ] {
            let r = run(&d, message(opcode, 1, &[0; 24]), &mut out).unwrap();
            assert_eq!(r.error, -libc::ENOSYS, "opcode {opcode}");
        }
        // Trait methods the double does not override answer ENOSYS too.
        let r = run(&d, message(Opcode::Unlink as u32, 1, b"f\0"), &mut out).unwrap();
        assert_eq!(r.error, -libc::ENOSYS);
    }

    #[test]
    fn malformed_requests_get_einval_and_forget_gets_no_reply() {
        let d = Dispatcher::new(TinyFs::default(), negotiated());
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        // Name without NUL, struct too short, trailing junk.
        for (op, body) in [
            (Opcode::Lookup, b"f".to_vec()),
            (Opcode::Getattr, vec![0; 3]),
            (Opcode::Getattr, vec![0; 17]),
            (Opcode::Mkdir, vec![0; 8]),
        ] {
            let r = run(&d, message(op as u32, 1, &body), &mut out).unwrap();
            assert_eq!(r.error, -libc::EINVAL, "{op:?}");
        }
        assert!(run(&d, message(Opcode::Forget as u32, 2, &[0; 3]), &mut out).is_none());
        assert!(run(
            &d,
            message(Opcode::Forget as u32, 2, &5u64.to_ne_bytes()),
            &mut out
        )
        .is_none());
        assert_eq!(d.fs().forgets.load(Ordering::Relaxed), 5);
        // BATCH_FORGET whose count claims more entries than the request holds.
        let mut b = BatchForgetIn {
            count: 1000,
            dummy: 0,
        }
        .as_bytes()
        .to_vec();
        b.extend_from_slice(
            ForgetOne {
                nodeid: 2,
                nlookup: 1,
            }
            .as_bytes(),
        );
        assert!(run(&d, message(Opcode::BatchForget as u32, 0, &b), &mut out).is_none());
        assert_eq!(
            d.fs().forgets.load(Ordering::Relaxed),
            5,
            "nothing forgotten from a bad batch"
        );
        assert_eq!(d.stats().forgotten_inodes(), 1, "one well-formed FORGET");
        // A good batch of two counts two inodes.
        let mut b = BatchForgetIn { count: 2, dummy: 0 }.as_bytes().to_vec();
        for nodeid in [2, 3] {
            b.extend_from_slice(ForgetOne { nodeid, nlookup: 1 }.as_bytes());
        }
        assert!(run(&d, message(Opcode::BatchForget as u32, 0, &b), &mut out).is_none());
        assert_eq!(d.stats().forgotten_inodes(), 3);
    }

    #[test]
    fn oversized_read_and_readdir_are_refused() {
        let d = Dispatcher::new(TinyFs::default(), negotiated());
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let read = |size| {
            ReadIn {
                size,
                ..Default::default()
            }
            .as_bytes()
            .to_vec()
        };
        let r = run(&d, message(Opcode::Read as u32, 2, &read(u32::MAX)), &mut out).unwrap();
        assert_eq!(r.error, -libc::EINVAL);
        let r = run(&d, message(Opcode::Read as u32, 2, &read(4)), &mut out).unwrap();
        assert_eq!((r.error, &out[..r.body_len]), (0, &b"0123"[..]));
        let r = run(&d, message(Opcode::Readdir as u32, 1, &read(1 << 30)), &mut out).unwrap();
        assert_eq!(r.error, -libc::EINVAL);
    }

    #[test]
    fn readdir_fills_exactly_the_size_asked() {
        let d = Dispatcher::new(TinyFs::default(), negotiated());
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let read = ReadIn {
            size: 100,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        let r = run(&d, message(Opcode::Readdir as u32, 1, &read), &mut out).unwrap();
        // Each record: 24-byte header + "entry-N" (7 bytes) padded to 32.
        assert_eq!((r.error, r.body_len), (0, 96));
        let first = Dirent::read_from_prefix(&out).unwrap().0;
        assert_eq!((first.ino, first.off, first.namelen), (10, 1, 7));
        assert_eq!(&out[24..31], b"entry-0");
    }

    #[test]
    fn garbage_never_panics() {
        let d = Dispatcher::new(TinyFs::default(), negotiated());
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 4 == 0 {
                // Plausible names make handlers go deeper.
                body.extend_from_slice(b"f\0");
            }
            let opcode = (next() % 60) as u32;
            let mut msg = message(opcode, next() % 4, &body);
            if next() % 8 == 0 {
                // Lie about the length or the extensions.
                let k = (next() % 40) as usize;
                msg[k] = next() as u8;
            }
            if let Some(r) = run(&d, msg, &mut out) {
                assert!(r.error <= 0);
                assert!(r.body_len <= out.len());
                if r.error != 0 {
                    assert_eq!(r.body_len, 0);
                }
            }
        }
    }

    /// A filesystem double for privilege clearing: one regular file (2)
    /// owned by root, group 0; it records the flags its calls receive.
    #[derive(Default)]
    struct ModeFs {
        mode: std::sync::Mutex<u32>,
        /// `SetattrValid` bits of every setattr, in order.
        setattrs: std::sync::Mutex<Vec<u32>>,
        write_flags: std::sync::Mutex<Vec<u32>>,
        open_flags: std::sync::Mutex<Vec<u32>>,
    }

    impl ModeFs {
        fn with_mode(mode: u32) -> ModeFs {
            let fs = ModeFs::default();
            *fs.mode.lock().unwrap() = libc::S_IFREG | mode;
            fs
        }

        fn mode(&self) -> u32 {
            *self.mode.lock().unwrap() & 0o7777
        }

        fn stat(&self) -> libc::stat64 {
            let mut st = zeroed_stat();
            st.st_ino = 2;
            st.st_mode = *self.mode.lock().unwrap();
            st.st_nlink = 1;
            st
        }
    }

    impl FileSystem for ModeFs {
        type Inode = u64;
        type Handle = u64;

        fn getattr(&self, _: &Context, _: u64, _: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
            Ok((self.stat(), Duration::from_secs(1)))
        }

        fn setattr(
            &self,
            ctx: &Context,
            _: u64,
            attr: libc::stat64,
            _: Option<u64>,
            valid: SetattrValid,
        ) -> io::Result<(libc::stat64, Duration)> {
            self.setattrs.lock().unwrap().push(valid.bits());
            if valid.contains(SetattrValid::MODE) {
                // Only root may: the clearing must not be the caller's chmod.
                assert_eq!(ctx.uid, 0, "mode changed as uid {}", ctx.uid);
                *self.mode.lock().unwrap() = libc::S_IFREG | (attr.st_mode & 0o7777);
            }
            Ok((self.stat(), Duration::from_secs(1)))
        }

        fn open(
            &self,
            _: &Context,
            _: u64,
            _: u32,
            fuse_flags: u32,
        ) -> io::Result<(
            Option<u64>,
            fuse_backend_rs::api::filesystem::OpenOptions,
            Option<u32>,
        )> {
            self.open_flags.lock().unwrap().push(fuse_flags);
            Ok((
                Some(7),
                fuse_backend_rs::api::filesystem::OpenOptions::empty(),
                None,
            ))
        }

        fn write(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            r: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyReader,
            size: u32,
            _: u64,
            _: Option<u64>,
            _: bool,
            _: u32,
            fuse_flags: u32,
        ) -> io::Result<usize> {
            self.write_flags.lock().unwrap().push(fuse_flags);
            let mut sink = vec![0u8; size as usize];
            r.read_exact(&mut sink)?;
            Ok(sink.len())
        }
    }

    fn killing_builder(mode: u32) -> DispatcherBuilder<ModeFs> {
        let mut n = negotiated();
        n.flags |= init_flags::HANDLE_KILLPRIV_V2;
        DispatcherBuilder::new(ModeFs::with_mode(mode), n)
    }

    fn killing(mode: u32) -> Dispatcher<ModeFs> {
        killing_builder(mode).build()
    }

    fn request_as(uid: u32, gid: u32, opcode: Opcode, body: &[u8]) -> Vec<u8> {
        let h = InHeader {
            len: (40 + body.len()) as u32,
            opcode: opcode as u32,
            unique: 42,
            nodeid: 2,
            uid,
            gid,
            pid: 4242,
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn send<F: FileSystem<Inode = u64, Handle = u64> + Sync>(d: &Dispatcher<F>, mut msg: Vec<u8>) -> Reply {
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let (h, body) = split_contiguous(&mut msg).unwrap();
        d.dispatch(&h, Args::contiguous(body), &mut out).unwrap()
    }

    fn write_body(write_flags: u32) -> Vec<u8> {
        let mut b = WriteIn {
            size: 3,
            write_flags,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        b.extend_from_slice(b"abc");
        b
    }

    fn setattr_body(valid: u32) -> Vec<u8> {
        SetattrIn {
            valid,
            size: 1,
            uid: 5,
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn a_flagged_write_clears_the_bits_and_the_filesystem_never_sees_the_flag() {
        let d = killing(0o6666);
        let r = send(
            &d,
            request_as(
                1000,
                1000,
                Opcode::Write,
                &write_body(req_flags::WRITE_KILL_SUIDGID),
            ),
        );
        assert_eq!(r.error, 0);
        assert_eq!(d.fs().mode(), 0o0666, "not in group 0: both bits go");
        assert_eq!(*d.fs().write_flags.lock().unwrap(), vec![0]);
        // Root's writes (no flag) leave the bits alone.
        let d = killing(0o6666);
        send(&d, request_as(0, 0, Opcode::Write, &write_body(0)));
        assert_eq!(d.fs().mode(), 0o6666);
    }

    #[test]
    fn a_bare_setattr_is_the_kernels_file_remove_privs() {
        let d = killing(0o6755);
        let r = send(&d, request_as(1000, 1000, Opcode::Setattr, &setattr_body(0)));
        assert_eq!(r.error, 0);
        assert_eq!(d.fs().mode(), 0o0755);
        let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
        let mut msg = request_as(1000, 1000, Opcode::Setattr, &setattr_body(0));
        let (h, body) = split_contiguous(&mut msg).unwrap();
        d.dispatch(&h, Args::contiguous(body), &mut out).unwrap();
        let reply = AttrOut::read_from_bytes(&out[..104]).unwrap();
        assert_eq!(reply.attr.mode & 0o7777, 0o0755, "the reply carries the new mode");
    }

    #[test]
    fn a_truncate_keeps_setgid_without_group_execute_for_group_members() {
        let truncate = fattr::SIZE | fattr::KILL_SUIDGID;
        // Primary group.
        let d = killing(0o6666);
        send(&d, request_as(1000, 0, Opcode::Setattr, &setattr_body(truncate)));
        assert_eq!(d.fs().mode(), 0o2666);
        let seen = d.fs().setattrs.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![SetattrValid::MODE.bits(), SetattrValid::SIZE.bits()],
            "cleared first, then truncated without the kill bit"
        );
        // Group 0 as a supplementary group, known from the group source.
        let mut b = killing_builder(0o2666);
        b.set_group_source(Box::new(GroupsZero));
        let d = b.build();
        send(
            &d,
            request_as(1000, 1000, Opcode::Setattr, &setattr_body(truncate)),
        );
        assert_eq!(d.fs().mode(), 0o2666);
        // Unknown groups: not a member.
        let d = killing(0o2666);
        send(
            &d,
            request_as(1000, 1000, Opcode::Setattr, &setattr_body(truncate)),
        );
        assert_eq!(d.fs().mode(), 0o0666);
        // Group-execute: a real setgid goes even for members.
        let d = killing(0o2676);
        send(&d, request_as(1000, 0, Opcode::Setattr, &setattr_body(truncate)));
        assert_eq!(d.fs().mode(), 0o0676);
    }

    /// Caller in group 0 through its supplementary groups.
    #[derive(Debug)]
    struct GroupsZero;

    impl GroupSource for GroupsZero {
        fn groups(&self, _pid: u32) -> Option<Vec<u32>> {
            Some(vec![1000, 0])
        }
    }

    #[test]
    fn chown_clears_setuid_for_everyone_and_setgid_by_privilege() {
        let chown = fattr::UID | fattr::KILL_SUIDGID;
        let d = killing(0o6666);
        send(&d, request_as(0, 0, Opcode::Setattr, &setattr_body(chown)));
        assert_eq!(d.fs().mode(), 0o2666, "root keeps setgid without group-execute");
        let d = killing(0o6666);
        send(&d, request_as(1000, 1000, Opcode::Setattr, &setattr_body(chown)));
        assert_eq!(d.fs().mode(), 0o0666);
        // A chmod or utimes is not a clearing.
        let d = killing(0o6666);
        send(
            &d,
            request_as(1000, 1000, Opcode::Setattr, &setattr_body(fattr::MTIME_NOW)),
        );
        assert_eq!(d.fs().mode(), 0o6666);
    }

    #[test]
    fn open_with_o_trunc_and_the_flag_clears() {
        let d = killing(0o4755);
        let open = |flags: i32, open_flags| {
            OpenIn {
                flags: flags as u32,
                open_flags,
            }
            .as_bytes()
            .to_vec()
        };
        send(
            &d,
            request_as(
                1000,
                1000,
                Opcode::Open,
                &open(libc::O_WRONLY, req_flags::OPEN_KILL_SUIDGID),
            ),
        );
        assert_eq!(d.fs().mode(), 0o4755, "no O_TRUNC: nothing to clear");
        send(
            &d,
            request_as(
                1000,
                1000,
                Opcode::Open,
                &open(libc::O_WRONLY | libc::O_TRUNC, req_flags::OPEN_KILL_SUIDGID),
            ),
        );
        assert_eq!(d.fs().mode(), 0o0755);
        assert_eq!(
            *d.fs().open_flags.lock().unwrap(),
            vec![req_flags::OPEN_KILL_SUIDGID, 0]
        );
    }

    #[test]
    fn without_the_feature_the_kernel_clears_and_flags_pass_through() {
        let d = Dispatcher::new(ModeFs::with_mode(0o6666), negotiated());
        send(
            &d,
            request_as(
                1000,
                1000,
                Opcode::Write,
                &write_body(req_flags::WRITE_KILL_SUIDGID),
            ),
        );
        send(&d, request_as(1000, 1000, Opcode::Setattr, &setattr_body(0)));
        assert_eq!(d.fs().mode(), 0o6666);
        assert_eq!(
            *d.fs().write_flags.lock().unwrap(),
            vec![req_flags::WRITE_KILL_SUIDGID]
        );
    }
}
