//! The dispatcher: one code path from a parsed request to a
//! `fuse_backend_rs::api::filesystem::FileSystem` call and back to a reply
//! body, for every transport.
//!
//! It never learns which transport carried a request: it gets the header,
//! the [`Args`] and a buffer to write the reply body into, and returns a
//! [`Reply`] (or nothing, for FORGET, BATCH_FORGET and INTERRUPT). Errors of
//! every kind — parse failures, filesystem errors, replies that do not fit —
//! are a `Failure`, and a failure becomes an errno in exactly one place,
//! `Failure::errno`, used by [`Dispatcher::dispatch`] and, for requests
//! too malformed to reach it, by [`Reply::malformed`].
//!
//! One function per opcode, grouped by what the request is about:
//!
//! - `entries`: names and inodes (LOOKUP, FORGET, GETATTR, SETATTR,
//!   MKNOD, MKDIR, SYMLINK, LINK, UNLINK, RMDIR, RENAME, ACCESS, …);
//! - `files`: open files (OPEN, CREATE, TMPFILE, READ, WRITE, RELEASE, FSYNC,
//!   FLUSH, locks, FALLOCATE, LSEEK, IOCTL — the file attribute commands
//!   through a [`FileAttrs`] hook where one is set —, POLL, BMAP);
//! - `directories`: open directories (OPENDIR, READDIR, READDIRPLUS, …);
//! - `xattrs`: extended attributes;
//! - `control`: the connection itself (INIT, DESTROY, INTERRUPT,
//!   NOTIFY_REPLY, STATFS) and the opcodes answered `ENOSYS`;
//! - `policy`: what the dispatcher adds to the filesystem's answers
//!   ([`Policy`], passthrough backing ids, set-user-ID clearing); `stats`:
//!   request counters.
//!
//! Adaptive timeouts are a `FileSystem` layer ([`crate::cache::AdaptiveFs`])
//! the dispatcher builds around the filesystem it serves; set-user-ID
//! clearing calls the filesystem underneath, so its own changes are not
//! reported as a request's.
//!
//! Lookup counts: every reply that hands the kernel a new reference to an
//! inode (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE; READDIRPLUS entries
//! are the filesystem's business) records it in [`Reply::lookup`]; a
//! transport that fails to deliver such a reply calls
//! [`Dispatcher::reply_lost`], which gives the reference back with
//! `forget(ino, 1)`, as the trait documents for lookups the kernel never saw.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, ZeroCopyReader, ZeroCopyWriter};
use kmod_shim::abi::{InHeader, Opcode};

use crate::cache::{AdaptiveFs, AdaptiveTtl};
use crate::fileattr::FileAttrs;
use crate::init::Negotiated;
use crate::killpriv::UnknownGroups;
use crate::passthrough::Passthrough;
use crate::perm::GroupSource;
use crate::reply::{entry_out, BodyWriter, Overflow};
use crate::request::{Args, ParseError};

/// Where the file data of a READ or a WRITE is, for a transport that keeps
/// it out of the buffers it lends the dispatcher: virtio leaves it in the
/// guest's own buffers, which the filesystem then reads and writes directly
/// (`preadv`/`pwritev` on guest memory for a file-backed filesystem)
/// instead of through a copy.
pub enum Data<'a> {
    /// In the request's arguments and the reply buffer, as `dispatch` has it.
    Inline,
    /// A WRITE whose arguments end with `fuse_write_in`: its data, exactly
    /// `len` bytes, comes from `reader`. A `len` other than the request's
    /// `size` is a malformed request.
    Write {
        /// The data, read at most once.
        reader: &'a mut dyn ZeroCopyReader,
        /// Bytes `reader` holds.
        len: usize,
    },
    /// A READ whose data goes to `writer`, never into the reply buffer;
    /// the reply body is what `writer` took (the dispatcher caps it at the
    /// request's `size`), and the transport frames it. `writer` must not
    /// offer more than the guest's reply room.
    Read(&'a mut dyn ZeroCopyWriter),
}

impl std::fmt::Debug for Data<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Inline => f.write_str("Inline"),
            Data::Write { len, .. } => write!(f, "Write {{ len: {len} }}"),
            Data::Read(w) => write!(f, "Read {{ room: {} }}", w.available_bytes()),
        }
    }
}

mod control;
mod directories;
mod entries;
mod files;
mod policy;
mod stats;
mod xattrs;

pub use policy::Policy;
pub use stats::{Latency, Stats, LATENCY_BUCKETS_NS};

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

impl Reply {
    /// The error reply to request `unique`, which could not be parsed far
    /// enough to reach a dispatcher (a transport's framing, or a request
    /// before INIT).
    pub fn malformed(unique: u64, error: ParseError) -> Reply {
        Reply::failed(unique, &Failure::Parse(error))
    }

    fn failed(unique: u64, failure: &Failure) -> Reply {
        Reply {
            unique,
            error: -failure.errno(),
            body_len: 0,
            lookup: None,
        }
    }
}

/// Why a request failed; turned into an errno by [`Failure::errno`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request is malformed.
    Parse(ParseError),
    /// The filesystem (or a call made for it) failed.
    Fs(io::Error),
    /// The protocol's own answer.
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
    /// The errno the kernel gets: the one place any error becomes one.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            Failure::Parse(ParseError::NameTooLong(_)) => libc::ENAMETOOLONG,
            Failure::Parse(_) => libc::EINVAL,
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

/// What every opcode's function returns.
type Handled = Result<Done, Failure>;

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
    file_attrs: Option<Box<dyn FileAttrs>>,
    time_requests: bool,
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
            file_attrs: None,
            time_requests: false,
        }
    }

    /// Times every request, for the latency histograms and in-flight count
    /// of [`Stats`] (off by default: see [`Stats`] for the cost).
    pub fn time_requests(&mut self, on: bool) -> &mut Self {
        self.time_requests = on;
        self
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

    /// Serves the file attribute ioctls (`chattr`, `lsattr`) with `hook`
    /// instead of the filesystem's `ioctl` ([`crate::fileattr`]); by
    /// default they go to the filesystem like every other command.
    pub fn set_file_attrs(&mut self, hook: Box<dyn FileAttrs>) -> &mut Self {
        self.file_attrs = Some(hook);
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
            fs: AdaptiveFs::new(self.fs, self.ttl, self.policy.zero_entry_timeout_stands),
            negotiated: self.negotiated,
            policy: self.policy,
            passthrough: self.passthrough,
            groups: self.groups,
            file_attrs: self.file_attrs,
            stats: Stats::new(self.time_requests),
            destroyed: AtomicBool::new(false),
        }
    }
}

/// Decodes requests and calls a [`FileSystem`]. Shared by every worker of a
/// session (it is `Sync` when the filesystem is); its settings are fixed by
/// the [`DispatcherBuilder`] it was built from.
#[derive(Debug)]
pub struct Dispatcher<F> {
    /// The session's filesystem, with the adaptive timeouts (if any) as a
    /// layer on top.
    fs: AdaptiveFs<F>,
    negotiated: Negotiated,
    policy: Policy,
    passthrough: Option<Passthrough>,
    groups: Box<dyn GroupSource>,
    /// Serves the file attribute ioctls, if set.
    file_attrs: Option<Box<dyn FileAttrs>>,
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
        self.fs.ttl()
    }

    /// Files opened in passthrough mode so far.
    pub fn passthrough_opens(&self) -> u64 {
        self.passthrough.as_ref().map_or(0, |p| p.opened())
    }

    /// The filesystem served.
    pub fn fs(&self) -> &F {
        self.fs.inner()
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
        self.dispatch_with(header, args, out, Data::Inline)
    }

    /// [`Dispatcher::dispatch`] of a READ or WRITE whose file data the
    /// transport keeps where it is ([`Data`]). `data` must match the
    /// header's opcode: [`Data::Read`] for a READ, [`Data::Write`] for a
    /// WRITE; for any other request it is ignored.
    pub fn dispatch_with(
        &self,
        header: &InHeader,
        args: Args<'_>,
        out: &mut [u8],
        data: Data<'_>,
    ) -> Option<Reply> {
        let mut w = BodyWriter::new(out);
        let Some(op) = Opcode::from_raw(header.opcode) else {
            self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(opcode = header.opcode, "unknown opcode: ENOSYS");
            return Some(Reply::failed(header.unique, &Failure::Errno(libc::ENOSYS)));
        };
        self.stats.requests[Stats::slot(op)].fetch_add(1, Ordering::Relaxed);
        let started = self.stats.timed.then(std::time::Instant::now);
        let outcome = self.handle(op, header, args, &mut w, data);
        if let Some(started) = started {
            self.stats.end(op, started.elapsed());
        }
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
                return Some(Reply::failed(header.unique, &failure));
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

    /// Routes a request to its opcode's function, as the caller the
    /// filesystem sees (after its `id_remap`).
    fn handle(
        &self,
        op: Opcode,
        h: &InHeader,
        a: Args<'_>,
        w: &mut BodyWriter<'_>,
        data: Data<'_>,
    ) -> Handled {
        if creates_inode(op) {
            owner_named(h.uid, h.gid)?;
        }
        let mut ctx = Context {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid as libc::pid_t,
        };
        self.fs.id_remap(&mut ctx)?;
        let (ctx, ino) = (&ctx, h.nodeid);
        match op {
            Opcode::Lookup => entries::lookup(self, ctx, ino, a, w),
            Opcode::Forget => entries::forget(self, ctx, ino, a, w),
            Opcode::BatchForget => entries::batch_forget(self, ctx, ino, a, w),
            Opcode::Getattr => entries::getattr(self, ctx, ino, a, w),
            Opcode::Setattr => entries::setattr(self, ctx, ino, a, w),
            Opcode::Readlink => entries::readlink(self, ctx, ino, a, w),
            Opcode::Symlink => entries::symlink(self, ctx, ino, a, w),
            Opcode::Mknod => entries::mknod(self, ctx, ino, a, w),
            Opcode::Mkdir => entries::mkdir(self, ctx, ino, a, w),
            Opcode::Unlink => entries::unlink(self, ctx, ino, a, w),
            Opcode::Rmdir => entries::rmdir(self, ctx, ino, a, w),
            Opcode::Rename => entries::rename(self, ctx, ino, a, w),
            Opcode::Rename2 => entries::rename2(self, ctx, ino, a, w),
            Opcode::Link => entries::link(self, ctx, ino, a, w),
            Opcode::Access => entries::access(self, ctx, ino, a, w),
            Opcode::Open => files::open(self, ctx, ino, a, w),
            Opcode::Create => files::create(self, ctx, ino, a, w),
            Opcode::Read => files::read(self, ctx, ino, a, w, data),
            Opcode::Write => files::write(self, ctx, ino, a, w, data),
            Opcode::Release => files::release(self, ctx, ino, a, w),
            Opcode::Fsync => files::fsync(self, ctx, ino, a, w),
            Opcode::Flush => files::flush(self, ctx, ino, a, w),
            Opcode::Getlk => files::getlk(self, ctx, ino, a, w),
            Opcode::Setlk => files::setlk(self, ctx, ino, a, w),
            Opcode::Setlkw => files::setlkw(self, ctx, ino, a, w),
            Opcode::Fallocate => files::fallocate(self, ctx, ino, a, w),
            Opcode::Lseek => files::lseek(self, ctx, ino, a, w),
            Opcode::Ioctl => files::ioctl(self, ctx, ino, a, w),
            Opcode::Poll => files::poll(self, ctx, ino, a, w),
            Opcode::Bmap => files::bmap(self, ctx, ino, a, w),
            Opcode::Opendir => directories::opendir(self, ctx, ino, a, w),
            Opcode::Readdir => directories::readdir(self, ctx, ino, a, w),
            Opcode::Readdirplus => directories::readdirplus(self, ctx, ino, a, w),
            Opcode::Releasedir => directories::releasedir(self, ctx, ino, a, w),
            Opcode::Fsyncdir => directories::fsyncdir(self, ctx, ino, a, w),
            Opcode::Setxattr => xattrs::setxattr(self, ctx, ino, a, w),
            Opcode::Getxattr => xattrs::getxattr(self, ctx, ino, a, w),
            Opcode::Listxattr => xattrs::listxattr(self, ctx, ino, a, w),
            Opcode::Removexattr => xattrs::removexattr(self, ctx, ino, a, w),
            Opcode::Init => control::init(self, ctx, ino, a, w),
            Opcode::Destroy => control::destroy(self, ctx, ino, a, w),
            Opcode::Interrupt => control::interrupt(self, ctx, ino, a, w),
            Opcode::NotifyReply => control::notify_reply(self, ctx, ino, a, w),
            Opcode::Statfs => control::statfs(self, ctx, ino, a, w),
            Opcode::CopyFileRange => files::copy_file_range(self, ctx, ino, a, w, false),
            Opcode::CopyFileRange64 => files::copy_file_range(self, ctx, ino, a, w, true),
            Opcode::Tmpfile => files::tmpfile(self, ctx, ino, a, w),
            Opcode::Syncfs
            | Opcode::Statx
            | Opcode::Setupmapping
            | Opcode::Removemapping
            | Opcode::CuseInit => control::unsupported(self, ctx, ino, a, w),
        }
    }

    /// Writes an entry reply and records the lookup reference it carries;
    /// a reply that cannot be built gives the reference back at once.
    fn entry_reply(&self, w: &mut BodyWriter<'_>, entry: &Entry) -> Handled {
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
}

/// Requests whose caller owns the inode they create: the ones the kernel
/// sends with the caller's ids, mapped through the mount's idmap, under
/// `FUSE_ALLOW_IDMAP` (RENAME2 with `RENAME_WHITEOUT` too, checked where
/// its flags are read). LINK is not one: it makes no inode, and the
/// kernel sends it without a caller.
fn creates_inode(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::Mknod | Opcode::Mkdir | Opcode::Symlink | Opcode::Create | Opcode::Tmpfile
    )
}

/// Refuses to create an inode for a caller the kernel could not name: uid
/// or gid [`kmod_shim::abi::INVALID_UIDGID`], sent under
/// `FUSE_ALLOW_IDMAP` for a caller with no mapping in the mount's idmap
/// (the kernel's own checks normally stop such a caller first). It would
/// otherwise own the inode as id 4294967295, or, with a filesystem that
/// switches to the caller's ids (PassthroughFs: setresuid with -1 leaves
/// the id alone), as the daemon. `EOVERFLOW`, as the kernel answers for
/// an unmapped caller.
fn owner_named(uid: u32, gid: u32) -> Result<(), Failure> {
    use kmod_shim::abi::INVALID_UIDGID;
    if uid == INVALID_UIDGID || gid == INVALID_UIDGID {
        return Err(Failure::Errno(libc::EOVERFLOW));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
