//! What the dispatcher adds to the filesystem's answers, beyond the
//! protocol: the session's [`Policy`] (negative entries, `FOPEN_NOFLUSH`),
//! passthrough backing ids on opened files ([`crate::passthrough`]) and the
//! clearing of set-user-ID and set-group-ID bits ([`crate::killpriv`]).
//! Adaptive timeouts are not here: they are a `FileSystem` layer,
//! [`crate::cache::AdaptiveFs`], which the dispatcher puts on the
//! filesystem it serves.

use std::time::Duration;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply, SetattrValid};
use kmod_shim::abi::{self, fattr, fopen, req_flags, OpenOut};

use super::{Dispatcher, Failure};
use crate::killpriv::{self, Cause};

/// Reply policies a filesystem written against fuse-backend-rs's trait
/// cannot express itself, chosen per session by whoever knows the
/// filesystem's semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Answer a LOOKUP that fails with `ENOENT` with a negative entry the
    /// kernel may cache this long, so repeated lookups of a missing name
    /// (every create of a new file starts with one) stay in the kernel.
    /// Zero: plain `ENOENT`, nothing cached.
    pub negative_timeout: Duration,
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
    /// With `FUSE_DONT_MASK` (the kernel leaves the umask to the
    /// filesystem, as it must under `FUSE_POSIX_ACL` for default ACLs to
    /// work): before a CREATE, MKNOD or MKDIR, ask the filesystem whether
    /// the parent directory has a default ACL (`system.posix_acl_default`)
    /// and, if it has, hand it a zero umask, since Linux ignores the umask
    /// where a default ACL applies (`posix_acl_create`). For filesystems
    /// that apply the umask they are given but leave default ACLs to
    /// another kernel (fuse-backend-rs's PassthroughFs: the host applies
    /// the parent's default ACL to the mode it gets). Costs a GETXATTR per
    /// creation.
    pub umask_yields_to_default_acl: bool,
    /// List "." and ".." first in every directory, for filesystems that
    /// leave them out (fuse-backend-rs's PassthroughFs): `readdir(3)` on
    /// Linux returns them, and programs count on it. Their offsets are 1
    /// and 2; the filesystem's own offsets are moved up by 2 (so they stay
    /// stable, and seekable with `telldir`/`seekdir`).
    pub add_dot_entries: bool,
    /// Serve READDIR through the filesystem's READDIRPLUS, dropping the
    /// entries (and the lookup each took): for filesystems whose READDIR
    /// reports other inode numbers than their READDIRPLUS, GETATTR and
    /// LOOKUP do (fuse-backend-rs 0.14's PassthroughFs gives its node ids
    /// there, the host's inode numbers everywhere else, so `d_ino` changed
    /// with the kernel's choice of request: xfstests generic/257, 637). It
    /// costs what that READDIR cost: a lookup per entry.
    pub readdir_through_readdirplus: bool,
    /// Serve TMPFILE (`O_TMPFILE`) as a CREATE with `O_TMPFILE` in its
    /// flags and an empty name, for filesystems whose `create` makes, for
    /// such flags, an opened regular file with no links that a later LINK
    /// may name (the first time only). Off: TMPFILE is `ENOSYS`. Never for
    /// a filesystem that would take the flags for an ordinary create.
    pub tmpfile_through_create: bool,
}

impl<F: FileSystem + Sync> Dispatcher<F> {
    /// The umask to hand the filesystem for a creation in `parent` (see
    /// [`Policy::umask_yields_to_default_acl`]).
    pub(super) fn creation_umask(&self, ctx: &Context, parent: u64, umask: u32) -> u32 {
        if umask & 0o777 == 0
            || !self.policy.umask_yields_to_default_acl
            || !self.negotiated.has(abi::init_flags::DONT_MASK)
        {
            return umask;
        }
        match self
            .fs
            .getxattr(ctx, parent.into(), c"system.posix_acl_default", 0)
        {
            Ok(GetxattrReply::Count(n)) if n > 0 => 0,
            Ok(GetxattrReply::Value(v)) if !v.is_empty() => 0,
            // None (ENODATA), or xattrs not kept at all.
            _ => umask,
        }
    }
}

impl<F: FileSystem + Sync> Dispatcher<F> {
    /// Turns an OPEN/CREATE reply into a passthrough one when a backing file
    /// can be registered for it.
    pub(super) fn attach_backing(&self, out: &mut OpenOut, inode: u64, fh: Option<u64>, flags: u32) {
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
    pub(super) fn kills_privileges(&self) -> bool {
        self.negotiated.has(abi::init_flags::HANDLE_KILLPRIV_V2)
    }

    /// Clears the bits a SETATTR asks to clear: one with
    /// `FATTR_KILL_SUIDGID` (a truncate by a caller without `CAP_FSETID`, or
    /// any change of owner), or a bare one (no attribute to set: the
    /// kernel's `file_remove_privs()` before a write or fallocate). Returns
    /// `valid` without the kill bit, for the filesystem.
    pub(super) fn kill_on_setattr(
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
            killpriv::drop_privileges(self.fs.inner(), ctx, ino, cause, &*self.groups)?;
        }
        Ok(valid - SetattrValid::KILL_SUIDGID)
    }

    /// Clears the bits of a file an OPEN truncates for a caller without
    /// `CAP_FSETID` (`FUSE_OPEN_KILL_SUIDGID`, sent with
    /// `FUSE_ATOMIC_O_TRUNC`); returns the open flags for the filesystem.
    pub(super) fn kill_on_open(
        &self,
        ctx: &Context,
        ino: u64,
        flags: u32,
        open_flags: u32,
    ) -> Result<u32, Failure> {
        if !self.kills_privileges()
            || open_flags & req_flags::OPEN_KILL_SUIDGID == 0
            || flags as i32 & libc::O_TRUNC == 0
        {
            return Ok(open_flags);
        }
        killpriv::drop_privileges(self.fs.inner(), ctx, ino, Cause::Modify, &*self.groups)?;
        Ok(open_flags & !req_flags::OPEN_KILL_SUIDGID)
    }

    /// `FOPEN_*` flags the session's policy adds to every opened file.
    pub(super) fn file_open_flags(&self) -> u32 {
        if self.policy.open_noflush {
            fopen::NOFLUSH
        } else {
            0
        }
    }
}
