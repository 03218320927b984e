//! File attribute flags (`chattr`, `lsattr`, `xfs_io -c chattr`) served by
//! a hook beside the filesystem.
//!
//! The kernel turns `FS_IOC_GETFLAGS`, `FS_IOC_SETFLAGS`,
//! `FS_IOC_FSGETXATTR` and `FS_IOC_FSSETXATTR` on a FUSE file or directory
//! into its own `fileattr_get`/`fileattr_set` (fs/file_attr.c), which checks
//! ownership and `CAP_LINUX_IMMUTABLE`, reads the old flags, and asks the
//! daemon with an IOCTL request (fs/fuse/ioctl.c, `fuse_priv_ioctl`) on a
//! file it opens itself (an OPEN or OPENDIR with `O_RDONLY`, released
//! after): restricted (never `FUSE_IOCTL_UNRESTRICTED`), `FUSE_IOCTL_DIR`
//! for a directory, the 64-bit command number on a 64-bit kernel, and the
//! flags word as an `int` whatever the number encodes. The sizes are exact:
//!
//! | command | in | out |
//! |---|---|---|
//! | `FS_IOC_GETFLAGS` (or `FS_IOC32_GETFLAGS`) | 0 | 4 |
//! | `FS_IOC_SETFLAGS` (or `FS_IOC32_SETFLAGS`) | 4 | 0 |
//! | `FS_IOC_FSGETXATTR` | 0 | 28 |
//! | `FS_IOC_FSSETXATTR` | 28 | 0 |
//!
//! fuse-backend-rs's `FileSystem::ioctl` hands a filesystem raw bytes and
//! its PassthroughFs answers every command `ENOTTY`; a session that can do
//! better installs a [`FileAttrs`] hook
//! ([`crate::DispatcherBuilder::set_file_attrs`]), and the dispatcher
//! decodes these four commands ([`Request::decode`]) and calls it instead
//! of the filesystem's `ioctl`. Any other command, or every command
//! without a hook, still goes to `FileSystem::ioctl`.

use std::io;

use fuse_backend_rs::api::filesystem::Context;
use kmod_shim::fileattr::{
    flags, xflags, FsXattr, FLAGS_SIZE, FS_IOC32_GETFLAGS, FS_IOC32_SETFLAGS, FS_IOC_FSGETXATTR,
    FS_IOC_FSSETXATTR, FS_IOC_GETFLAGS, FS_IOC_SETFLAGS,
};
use zerocopy::{FromBytes, IntoBytes};

/// Serves the file attribute ioctls of a session's inodes. Errors go to the
/// caller as their errno: `ENOTTY` or `EOPNOTSUPP` where the inode keeps no
/// flags, `EPERM` for a change the caller may not make.
pub trait FileAttrs: Send + Sync + std::fmt::Debug {
    /// The flags word (`FS_*_FL`) of `inode`, open as `handle` (the handle
    /// of the kernel's own OPEN or OPENDIR).
    fn get_flags(&self, ctx: &Context, inode: u64, handle: u64) -> io::Result<u32>;
    /// Sets the flags word of `inode`, the whole word (the kernel has read
    /// the old one and kept the bits the caller did not name).
    fn set_flags(&self, ctx: &Context, inode: u64, handle: u64, flags: u32) -> io::Result<()>;
    /// The `struct fsxattr` of `inode`.
    fn get_fsxattr(&self, ctx: &Context, inode: u64, handle: u64) -> io::Result<FsXattr>;
    /// Sets the `struct fsxattr` of `inode`.
    fn set_fsxattr(&self, ctx: &Context, inode: u64, handle: u64, attr: &FsXattr) -> io::Result<()>;
}

/// One of the four file attribute requests, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `FS_IOC_GETFLAGS`.
    GetFlags,
    /// `FS_IOC_SETFLAGS` with the new flags word.
    SetFlags(u32),
    /// `FS_IOC_FSGETXATTR`.
    GetFsxattr,
    /// `FS_IOC_FSSETXATTR` with the new attributes.
    SetFsxattr(FsXattr),
}

/// What a served [`Request`] answers: the bytes after `fuse_ioctl_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The flags word (4 bytes).
    Flags(u32),
    /// The attributes (28 bytes).
    Fsxattr(FsXattr),
    /// Nothing (a set).
    Done,
}

impl Answer {
    /// The reply data, exactly as many bytes as the request's `out_size`.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Answer::Flags(f) => f.as_bytes(),
            Answer::Fsxattr(x) => x.as_bytes(),
            Answer::Done => &[],
        }
    }
}

impl Request {
    /// Decodes the IOCTL command `cmd` with its input bytes and the reply
    /// size the kernel expects. `None`: not a file attribute command (the
    /// filesystem's `ioctl` gets it). `Some(Err(errno))`: one of them, with
    /// sizes other than the kernel's (`EINVAL`).
    pub fn decode(cmd: u32, input: &[u8], out_size: u32) -> Option<Result<Request, i32>> {
        let out_size = out_size as usize;
        let (want_in, want_out) = match cmd {
            FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => (0, FLAGS_SIZE),
            FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS => (FLAGS_SIZE, 0),
            FS_IOC_FSGETXATTR => (0, size_of::<FsXattr>()),
            FS_IOC_FSSETXATTR => (size_of::<FsXattr>(), 0),
            _ => return None,
        };
        if input.len() != want_in || out_size != want_out {
            return Some(Err(libc::EINVAL));
        }
        let request = match cmd {
            FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => Request::GetFlags,
            FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS => match u32::read_from_bytes(input) {
                Ok(flags) => Request::SetFlags(flags),
                Err(_) => return Some(Err(libc::EINVAL)),
            },
            FS_IOC_FSGETXATTR => Request::GetFsxattr,
            _ => match FsXattr::read_from_bytes(input) {
                Ok(attr) => Request::SetFsxattr(attr),
                Err(_) => return Some(Err(libc::EINVAL)),
            },
        };
        Some(Ok(request))
    }

    /// Serves the request with `hook`.
    pub fn serve(self, hook: &dyn FileAttrs, ctx: &Context, inode: u64, handle: u64) -> io::Result<Answer> {
        Ok(match self {
            Request::GetFlags => Answer::Flags(hook.get_flags(ctx, inode, handle)?),
            Request::SetFlags(f) => {
                hook.set_flags(ctx, inode, handle, f)?;
                Answer::Done
            }
            Request::GetFsxattr => Answer::Fsxattr(hook.get_fsxattr(ctx, inode, handle)?),
            Request::SetFsxattr(x) => {
                hook.set_fsxattr(ctx, inode, handle, &x)?;
                Answer::Done
            }
        })
    }
}

/// Linux's rule for a change of flags (`vfs_fileattr_set` and
/// `fileattr_set_prepare`), for a hook that checks permissions itself (a
/// mount without `default_permissions` gets them checked by the kernel
/// too, but a hook must not count on its caller): only the owner may
/// change flags, and only a process with `CAP_LINUX_IMMUTABLE` may change
/// the immutable or append-only bit. Root (uid 0) counts as having
/// `CAP_FOWNER` and `CAP_LINUX_IMMUTABLE`, as in [`crate::perm`]: the
/// request carries ids, not capabilities. `protected_changed`: whether the
/// change turns immutable or append-only on or off ([`flags_protected_changed`],
/// [`xflags_protected_changed`]).
pub fn may_change(caller_uid: u32, owner_uid: u32, protected_changed: bool) -> io::Result<()> {
    if caller_uid == 0 {
        return Ok(());
    }
    if caller_uid != owner_uid || protected_changed {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Whether going from flags word `old` to `new` changes immutable or
/// append-only.
pub fn flags_protected_changed(old: u32, new: u32) -> bool {
    (old ^ new) & flags::PROTECTED != 0
}

/// Whether going from `fsx_xflags` `old` to `new` changes immutable or
/// append-only.
pub fn xflags_protected_changed(old: u32, new: u32) -> bool {
    (old ^ new) & xflags::PROTECTED != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_commands_decode_with_exact_sizes_only() {
        assert_eq!(
            Request::decode(FS_IOC_GETFLAGS, &[], 4),
            Some(Ok(Request::GetFlags))
        );
        assert_eq!(
            Request::decode(FS_IOC32_GETFLAGS, &[], 4),
            Some(Ok(Request::GetFlags))
        );
        let word = 0x30u32.to_ne_bytes();
        assert_eq!(
            Request::decode(FS_IOC_SETFLAGS, &word, 0),
            Some(Ok(Request::SetFlags(0x30)))
        );
        assert_eq!(
            Request::decode(FS_IOC32_SETFLAGS, &word, 0),
            Some(Ok(Request::SetFlags(0x30)))
        );
        assert_eq!(
            Request::decode(FS_IOC_FSGETXATTR, &[], 28),
            Some(Ok(Request::GetFsxattr))
        );
        let x = FsXattr {
            xflags: xflags::NODUMP,
            projid: 7,
            ..Default::default()
        };
        assert_eq!(
            Request::decode(FS_IOC_FSSETXATTR, x.as_bytes(), 0),
            Some(Ok(Request::SetFsxattr(x)))
        );
        // The size a long would have (what a kernel without fileattr sent
        // through the generic path), short words, trailing bytes, a reply
        // asked of a set.
        for (cmd, input, out) in [
            (FS_IOC_GETFLAGS, &[][..], 8),
            (FS_IOC_GETFLAGS, &[][..], 0),
            (FS_IOC_GETFLAGS, &word[..], 4),
            (FS_IOC_SETFLAGS, &[0u8; 8][..], 0),
            (FS_IOC_SETFLAGS, &word[..3], 0),
            (FS_IOC_SETFLAGS, &word[..], 4),
            (FS_IOC_FSGETXATTR, &[][..], 27),
            (FS_IOC_FSSETXATTR, &[0u8; 27][..], 0),
            (FS_IOC_FSSETXATTR, &[0u8; 28][..], 28),
        ] {
            assert_eq!(
                Request::decode(cmd, input, out),
                Some(Err(libc::EINVAL)),
                "{cmd:#x} in {} out {out}",
                input.len()
            );
        }
        assert_eq!(Request::decode(0x5401, &[], 0), None, "TCGETS is not ours");
    }

    #[test]
    fn answers_are_the_bytes_the_kernel_expects() {
        assert_eq!(Answer::Flags(0x10).as_bytes(), &0x10u32.to_ne_bytes());
        assert_eq!(Answer::Fsxattr(FsXattr::default()).as_bytes().len(), 28);
        assert!(Answer::Done.as_bytes().is_empty());
    }

    #[test]
    fn only_the_owner_changes_flags_and_only_root_the_protected_ones() {
        assert!(may_change(0, 1000, true).is_ok(), "root");
        assert!(may_change(1000, 1000, false).is_ok(), "owner, nodump");
        for (caller, owner, protected) in [(1000, 1000, true), (1001, 1000, false), (1001, 1000, true)] {
            assert_eq!(
                may_change(caller, owner, protected).unwrap_err().raw_os_error(),
                Some(libc::EPERM),
                "uid {caller} on a file of {owner}, protected {protected}"
            );
        }
        assert!(flags_protected_changed(0, flags::APPEND));
        assert!(flags_protected_changed(flags::IMMUTABLE, 0));
        assert!(!flags_protected_changed(
            flags::APPEND,
            flags::APPEND | flags::NODUMP
        ));
        assert!(xflags_protected_changed(xflags::NODUMP, xflags::IMMUTABLE));
        assert!(!xflags_protected_changed(0, xflags::NOATIME));
    }
}
