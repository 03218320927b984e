//! Clearing the set-user-ID and set-group-ID bits of a modified file, for
//! sessions that negotiated `FUSE_HANDLE_KILLPRIV_V2`.
//!
//! With that feature the kernel leaves the clearing to the daemon and only
//! says when it is due. What arrives (seen on Linux 6.18, `dev` and `uring`
//! alike, logging every request of a mount while an unprivileged user and
//! root ran each operation on a `06666` file):
//!
//! | operation                 | unprivileged caller                          | caller with `CAP_FSETID` |
//! |---------------------------|----------------------------------------------|--------------------------|
//! | `write`, buffered         | bare SETATTR, then WRITE with `WRITE_KILL_SUIDGID` | WRITE, no flag     |
//! | `write`, `O_DIRECT`       | bare SETATTR, then WRITE with `WRITE_KILL_SUIDGID` | WRITE, no flag     |
//! | `truncate`/`ftruncate`    | SETATTR `SIZE` with `FATTR_KILL_SUIDGID`     | SETATTR `SIZE`           |
//! | `open(O_TRUNC)`           | OPEN without `O_TRUNC`, then SETATTR `SIZE` with `FATTR_KILL_SUIDGID` (no `FUSE_ATOMIC_O_TRUNC`); with it, OPEN with `FUSE_OPEN_KILL_SUIDGID` | no flag |
//! | `fallocate`, punch hole   | bare SETATTR, then FALLOCATE (which has no flag) | FALLOCATE          |
//! | `chown`                   | SETATTR `UID`/`GID` with `FATTR_KILL_SUIDGID`, whoever calls | same       |
//!
//! A *bare* SETATTR sets no attribute at all: it is `file_remove_privs()`
//! (called by the kernel before every write and, through
//! `file_modified()`, before FALLOCATE) reaching `fuse_setattr()`, which
//! drops `ATTR_KILL_SUID`/`ATTR_KILL_SGID`/`ATTR_MODE` when the daemon
//! handles the clearing and sends what is left. The kernel sends it only
//! when, by the mode it caches, the caller must lose a bit (its own check,
//! with the caller's capabilities and groups); it is the only notice a
//! FALLOCATE gets, and the only one that reaches the daemon at all for
//! writes of a FUSE-passthrough file, which the kernel does itself.
//!
//! The rule is Linux's (`setattr_should_drop_suidgid()` for a write,
//! truncate or fallocate; `chown_common()` for a change of owner), applied
//! to the mode the filesystem has now (not the kernel's cache):
//! - set-user-ID goes;
//! - set-group-ID with group-execute goes;
//! - set-group-ID without group-execute goes unless the caller is in the
//!   file's group (the protocol's header comment still describes the rule
//!   before Linux 6.2, which kept it always; xfstests generic/683 and
//!   generic/684 expect today's).
//!
//! The kernel's flags say the caller lacks `CAP_FSETID` (for writes and
//! truncates it sets them only then); for `chown` the flag is set for every
//! caller, so root (uid 0) is taken to have `CAP_FSETID` there, as
//! [`crate::perm`] takes root to pass every check. Group membership beyond
//! the caller's primary group comes from a [`GroupSource`]; unknown
//! membership counts as none (the bit goes: dropping it grants nothing).
//!
//! The clearing is a SETATTR of the mode as root, before the operation (as
//! the kernel's `file_remove_privs()` is), and the flags are taken off the
//! request the filesystem sees: the kernel's clearing is not the caller's
//! `chmod` (a writer need not own the file), and a filesystem that would
//! act on the flags itself (fuse-backend-rs's `PassthroughFs` drops
//! `CAP_FSETID` and lets the host kernel clear the bits by the daemon's own
//! groups) must not clear them a second time by another rule.
//! File capabilities (`security.capability`), which the feature also hands
//! over, are the filesystem's: they are xattrs it stores.
//!
//! Under `FUSE_ALLOW_IDMAP` ([`crate::InitConfig::allow_idmap`]) the
//! kernel sends these requests without a caller (uid and gid
//! [`INVALID_UIDGID`]): such a caller is in no group and not privileged,
//! so a set-group-ID bit without group-execute goes on every flagged
//! write, truncate and chown, also those by members of the file's group or
//! by root, where Linux would keep it. Dropping a bit grants nothing;
//! keeping it for a caller we cannot name would.

use std::io;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, SetattrValid};

use kmod_shim::abi::INVALID_UIDGID;

use crate::perm::GroupSource;

/// Which kernel path asks for the clearing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A write, truncate, fallocate or `open(O_TRUNC)` by a caller without
    /// `CAP_FSETID` (`setattr_should_drop_suidgid()`): regular files only.
    Modify,
    /// A change of owner or group (`chown_common()`): any non-directory;
    /// `privileged` callers keep a set-group-ID bit without group-execute.
    Chown {
        /// The caller has `CAP_FSETID`.
        privileged: bool,
    },
}

/// The bits of `mode` that `cause` clears; `in_group` tells whether the
/// caller is in the file's group, and is asked only when that decides.
pub fn bits_to_drop(mode: u32, cause: Cause, in_group: impl FnOnce() -> bool) -> u32 {
    let kind = mode & libc::S_IFMT;
    let applies = match cause {
        Cause::Modify => kind == libc::S_IFREG,
        Cause::Chown { .. } => kind != libc::S_IFDIR,
    };
    if !applies {
        return 0;
    }
    let mut drop = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 {
        let keeps = matches!(cause, Cause::Chown { privileged: true });
        if mode & libc::S_IXGRP != 0 || !(keeps || in_group()) {
            drop |= libc::S_ISGID;
        }
    }
    drop
}

/// Clears what `cause` clears on inode `ino` of `fs`, for the caller of
/// `ctx`. Returns the attributes after the change, or `None` when nothing
/// had to go.
pub(crate) fn drop_privileges<F: FileSystem>(
    fs: &F,
    ctx: &Context,
    ino: u64,
    cause: Cause,
    groups: &dyn GroupSource,
) -> io::Result<Option<(libc::stat64, Duration)>> {
    // The kernel's clearing, not a chmod by the caller: as root, which
    // every filesystem lets change a mode.
    let root = Context::default();
    let (st, _) = fs.getattr(&root, ino.into(), None)?;
    let drop = bits_to_drop(st.st_mode, cause, || in_group(ctx, st.st_gid, groups));
    if drop == 0 {
        return Ok(None);
    }
    let mut attr = st;
    attr.st_mode = st.st_mode & !drop;
    tracing::debug!(
        ino,
        uid = ctx.uid,
        "clearing {:o} of mode {:o} ({cause:?})",
        drop,
        st.st_mode
    );
    fs.setattr(&root, ino.into(), attr, None, SetattrValid::MODE)
        .map(Some)
}

/// Whether the caller of `ctx` is in group `gid`: by its primary group,
/// else its supplementary groups from `groups`. A caller the kernel did not
/// name (uid or gid [`INVALID_UIDGID`], as under `FUSE_ALLOW_IDMAP`) is in
/// no group: its pid's groups are those of the host, which an idmapped
/// mount does not use.
fn in_group(ctx: &Context, gid: u32, groups: &dyn GroupSource) -> bool {
    if ctx.uid == INVALID_UIDGID || ctx.gid == INVALID_UIDGID {
        return false;
    }
    ctx.gid == gid || groups.groups(ctx.pid as u32).is_some_and(|g| g.contains(&gid))
}

/// A [`GroupSource`] that knows nobody's groups: for callers whose pid
/// means nothing here (a virtio-fs guest's).
#[derive(Debug, Default)]
pub struct UnknownGroups;

impl GroupSource for UnknownGroups {
    fn groups(&self, _pid: u32) -> Option<Vec<u32>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: u32 = libc::S_IFREG;

    fn modify(mode: u32, in_group: bool) -> u32 {
        bits_to_drop(REG | mode, Cause::Modify, || in_group)
    }

    #[test]
    fn a_write_drops_setuid_and_real_setgid() {
        assert_eq!(modify(0o4755, false), libc::S_ISUID);
        assert_eq!(modify(0o4755, true), libc::S_ISUID);
        assert_eq!(
            modify(0o2775, true),
            libc::S_ISGID,
            "group-execute: a real setgid"
        );
        assert_eq!(modify(0o6777, true), libc::S_ISUID | libc::S_ISGID);
        assert_eq!(modify(0o0777, false), 0);
    }

    #[test]
    fn setgid_without_group_execute_stays_for_group_members_only() {
        assert_eq!(modify(0o2666, true), 0);
        assert_eq!(modify(0o2666, false), libc::S_ISGID);
        assert_eq!(modify(0o6666, true), libc::S_ISUID);
        assert_eq!(modify(0o6666, false), libc::S_ISUID | libc::S_ISGID);
    }

    #[test]
    fn membership_is_asked_only_when_it_decides() {
        for mode in [0o4755, 0o2775, 0o0644] {
            bits_to_drop(REG | mode, Cause::Modify, || panic!("asked for {mode:o}"));
        }
    }

    #[test]
    fn only_regular_files_lose_bits_on_write_and_non_directories_on_chown() {
        assert_eq!(bits_to_drop(libc::S_IFDIR | 0o6777, Cause::Modify, || false), 0);
        assert_eq!(bits_to_drop(libc::S_IFIFO | 0o6777, Cause::Modify, || false), 0);
        let chown = Cause::Chown { privileged: false };
        assert_eq!(bits_to_drop(libc::S_IFDIR | 0o6777, chown, || false), 0);
        assert_eq!(
            bits_to_drop(libc::S_IFIFO | 0o6777, chown, || false),
            libc::S_ISUID | libc::S_ISGID
        );
    }

    /// Everybody is in every group.
    #[derive(Debug)]
    struct AllGroups;

    impl GroupSource for AllGroups {
        fn groups(&self, _pid: u32) -> Option<Vec<u32>> {
            Some((0..10).chain([INVALID_UIDGID]).collect())
        }
    }

    #[test]
    fn a_caller_the_kernel_did_not_name_is_in_no_group() {
        let named = Context {
            uid: 1000,
            gid: 5,
            pid: 42,
        };
        assert!(in_group(&named, 5, &AllGroups));
        assert!(in_group(&named, 7, &AllGroups));
        let anonymous = Context {
            uid: INVALID_UIDGID,
            gid: INVALID_UIDGID,
            pid: 42,
        };
        for gid in [0, 5, INVALID_UIDGID] {
            assert!(!in_group(&anonymous, gid, &AllGroups), "gid {gid}");
        }
        let half = Context {
            uid: INVALID_UIDGID,
            gid: 5,
            pid: 42,
        };
        assert!(!in_group(&half, 5, &AllGroups));
    }

    #[test]
    fn chown_by_root_keeps_setgid_without_group_execute() {
        let root = Cause::Chown { privileged: true };
        assert_eq!(bits_to_drop(REG | 0o6666, root, || false), libc::S_ISUID);
        assert_eq!(
            bits_to_drop(REG | 0o6776, root, || true),
            libc::S_ISUID | libc::S_ISGID
        );
        let user = Cause::Chown { privileged: false };
        assert_eq!(bits_to_drop(REG | 0o2666, user, || true), 0);
        assert_eq!(bits_to_drop(REG | 0o2666, user, || false), libc::S_ISGID);
    }
}
