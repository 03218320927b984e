//! File attribute flags, as `chattr` and `lsattr` change and show them:
//! the inode flags word (`FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS`, the `FS_*_FL`
//! bits of `<linux/fs.h>`) and its extended form, `struct fsxattr`
//! (`FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR`, the `FS_XFLAG_*` bits), which
//! `xfs_io` and newer `chattr` use.
//!
//! The flags word is an `int` whatever the ioctl number says: the kernel
//! encodes `long` in `FS_IOC_GETFLAGS` but reads and writes 32 bits
//! (`ioctl_getflags`, `ioctl_setflags` in fs/file_attr.c), and the 32-bit
//! numbers (`FS_IOC32_*`, with `int`) mean the same request.

use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{cvt, ioc, SyscallError, IOC_READ, IOC_WRITE};

/// `FS_IOC_GETFLAGS`: `_IOR('f', 1, long)`.
pub const FS_IOC_GETFLAGS: u32 = ioc(IOC_READ, b'f' as u32, 1, size_of::<libc::c_long>());
/// `FS_IOC_SETFLAGS`: `_IOW('f', 2, long)`.
pub const FS_IOC_SETFLAGS: u32 = ioc(IOC_WRITE, b'f' as u32, 2, size_of::<libc::c_long>());
/// `FS_IOC32_GETFLAGS`: `_IOR('f', 1, int)`; `FS_IOC_GETFLAGS` of a 32-bit
/// kernel.
pub const FS_IOC32_GETFLAGS: u32 = ioc(IOC_READ, b'f' as u32, 1, size_of::<libc::c_int>());
/// `FS_IOC32_SETFLAGS`: `_IOW('f', 2, int)`.
pub const FS_IOC32_SETFLAGS: u32 = ioc(IOC_WRITE, b'f' as u32, 2, size_of::<libc::c_int>());
/// `FS_IOC_FSGETXATTR`: `_IOR('X', 31, struct fsxattr)`.
pub const FS_IOC_FSGETXATTR: u32 = ioc(IOC_READ, b'X' as u32, 31, size_of::<FsXattr>());
/// `FS_IOC_FSSETXATTR`: `_IOW('X', 32, struct fsxattr)`.
pub const FS_IOC_FSSETXATTR: u32 = ioc(IOC_WRITE, b'X' as u32, 32, size_of::<FsXattr>());

/// Bytes of the flags word the kernel moves for `FS_IOC_GETFLAGS` and
/// `FS_IOC_SETFLAGS` (an `int`).
pub const FLAGS_SIZE: usize = size_of::<u32>();

/// The `FS_*_FL` bits of the flags word (`chattr` letters in brackets).
pub mod flags {
    /// `FS_SYNC_FL` (`S`): writes are synchronous.
    pub const SYNC: u32 = 0x0000_0008;
    /// `FS_IMMUTABLE_FL` (`i`): no change at all, not even a new name.
    pub const IMMUTABLE: u32 = 0x0000_0010;
    /// `FS_APPEND_FL` (`a`): writes only at the end.
    pub const APPEND: u32 = 0x0000_0020;
    /// `FS_NODUMP_FL` (`d`): left out of backups by dump(8).
    pub const NODUMP: u32 = 0x0000_0040;
    /// `FS_NOATIME_FL` (`A`): the access time is not updated.
    pub const NOATIME: u32 = 0x0000_0080;
    /// The bits only a process with `CAP_LINUX_IMMUTABLE` may change
    /// (`fileattr_set_prepare` in fs/file_attr.c).
    pub const PROTECTED: u32 = IMMUTABLE | APPEND;
}

/// The `FS_XFLAG_*` bits of [`FsXattr::xflags`].
pub mod xflags {
    /// `FS_XFLAG_IMMUTABLE`.
    pub const IMMUTABLE: u32 = 0x0000_0008;
    /// `FS_XFLAG_APPEND`.
    pub const APPEND: u32 = 0x0000_0010;
    /// `FS_XFLAG_SYNC`.
    pub const SYNC: u32 = 0x0000_0020;
    /// `FS_XFLAG_NOATIME`.
    pub const NOATIME: u32 = 0x0000_0040;
    /// `FS_XFLAG_NODUMP`.
    pub const NODUMP: u32 = 0x0000_0080;
    /// The bits only a process with `CAP_LINUX_IMMUTABLE` may change.
    pub const PROTECTED: u32 = IMMUTABLE | APPEND;
}

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FsXattr {
    /// `fsx_xflags`: the `FS_XFLAG_*` bits ([`xflags`]).
    pub xflags: u32,
    /// `fsx_extsize`: the extent size hint.
    pub extsize: u32,
    /// `fsx_nextents`: extents in use (read only).
    pub nextents: u32,
    /// `fsx_projid`: the project id.
    pub projid: u32,
    /// `fsx_cowextsize`: the copy-on-write extent size hint.
    pub cowextsize: u32,
    /// `fsx_pad`.
    pub pad: [u8; 8],
}
const _: () = assert!(size_of::<FsXattr>() == 28);

/// The flags word of the file open at `fd` (`FS_IOC_GETFLAGS`). Filesystems
/// without flags answer `ENOTTY` (or `EOPNOTSUPP`).
pub fn get_flags(fd: BorrowedFd<'_>) -> Result<u32, SyscallError> {
    let mut value: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which
    // points at a live, writable local of that type.
    cvt("ioctl(FS_IOC_GETFLAGS)", unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFLAGS as _,
            &mut value as *mut libc::c_int,
        )
    })?;
    Ok(value as u32)
}

/// Sets the flags word of the file open at `fd` (`FS_IOC_SETFLAGS`); the
/// whole word, so callers read it first and change the bits they mean to.
/// The descriptor may be read-only: the kernel asks for a writable mount,
/// ownership (or `CAP_FOWNER`), and `CAP_LINUX_IMMUTABLE` to change
/// [`flags::PROTECTED`] bits.
pub fn set_flags(fd: BorrowedFd<'_>, flags: u32) -> Result<(), SyscallError> {
    let value = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which
    // points at a live, initialised local of that type.
    cvt("ioctl(FS_IOC_SETFLAGS)", unsafe {
        libc::ioctl(fd.as_raw_fd(), FS_IOC_SETFLAGS as _, &value as *const libc::c_int)
    })?;
    Ok(())
}

/// The extended attributes (`struct fsxattr`) of the file open at `fd`
/// (`FS_IOC_FSGETXATTR`).
pub fn get_fsxattr(fd: BorrowedFd<'_>) -> Result<FsXattr, SyscallError> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one struct fsxattr through the
    // pointer, which points at a live, writable local of that layout
    // (28 bytes, checked above).
    cvt("ioctl(FS_IOC_FSGETXATTR)", unsafe {
        libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR as _, &mut attr as *mut FsXattr)
    })?;
    Ok(attr)
}

/// Sets the extended attributes of the file open at `fd`
/// (`FS_IOC_FSSETXATTR`), with the rules of [`set_flags`].
pub fn set_fsxattr(fd: BorrowedFd<'_>, attr: &FsXattr) -> Result<(), SyscallError> {
    // SAFETY: FS_IOC_FSSETXATTR reads one struct fsxattr through the
    // pointer, which points at a live, initialised value of that layout.
    cvt("ioctl(FS_IOC_FSSETXATTR)", unsafe {
        libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR as _, attr as *const FsXattr)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsFd;

    #[test]
    fn ioctl_numbers_match_the_header() {
        // libc's ioctl number type differs between C libraries.
        fn wide<T: TryInto<u64>>(number: T) -> Option<u64> {
            number.try_into().ok()
        }
        assert_eq!(wide(FS_IOC_GETFLAGS), wide(libc::FS_IOC_GETFLAGS));
        assert_eq!(wide(FS_IOC_SETFLAGS), wide(libc::FS_IOC_SETFLAGS));
        assert_eq!(wide(FS_IOC32_GETFLAGS), wide(libc::FS_IOC32_GETFLAGS));
        assert_eq!(wide(FS_IOC32_SETFLAGS), wide(libc::FS_IOC32_SETFLAGS));
        // Values printed by a C program including <linux/fs.h> on x86_64.
        assert_eq!(FS_IOC_GETFLAGS, 0x8008_6601);
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
    }

    /// Whether the test directory's filesystem keeps flags; the reason to
    /// skip otherwise.
    fn flags_kept(file: &File) -> Result<u32, String> {
        match get_flags(file.as_fd()) {
            Ok(flags) => Ok(flags),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EOPNOTSUPP)) => Err(format!(
                "the temporary directory's filesystem keeps no inode flags ({e})"
            )),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn flags_and_fsxattr_round_trip_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        // Read-only is enough to set flags, as chattr does.
        let file = File::open(&path).unwrap();
        let before = match flags_kept(&file) {
            Ok(flags) => flags,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        match set_flags(file.as_fd(), before | flags::NODUMP) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("skipped: the temporary directory's filesystem refuses nodump ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(get_flags(file.as_fd()).unwrap() & flags::NODUMP, flags::NODUMP);
        let x = get_fsxattr(file.as_fd()).unwrap();
        assert_eq!(x.xflags & xflags::NODUMP, xflags::NODUMP, "{x:?}");
        set_fsxattr(
            file.as_fd(),
            &FsXattr {
                xflags: x.xflags & !xflags::NODUMP,
                ..x
            },
        )
        .unwrap();
        assert_eq!(get_flags(file.as_fd()).unwrap() & flags::NODUMP, 0);
    }

    #[test]
    fn append_only_refuses_truncation_until_cleared() {
        if crate::creds::effective_uid() != 0 {
            eprintln!("skipped: setting append-only needs CAP_LINUX_IMMUTABLE (root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let file = File::open(&path).unwrap();
        let before = match flags_kept(&file) {
            Ok(flags) => flags,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        set_flags(file.as_fd(), before | flags::APPEND).unwrap();
        let truncating = OpenOptions::new().write(true).truncate(true).open(&path);
        // Cleared before asserting, so the directory can be removed.
        set_flags(file.as_fd(), before).unwrap();
        assert_eq!(
            truncating.map(|_| ()).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert_eq!(get_flags(file.as_fd()).unwrap(), before);
    }

    #[test]
    fn a_descriptor_without_flags_gets_the_kernels_error() {
        // A pipe has no inode flags: the call reaches the kernel and fails,
        // named.
        let (r, _w) = std::io::pipe().unwrap();
        let e = get_flags(r.as_fd()).unwrap_err();
        assert!(e.to_string().starts_with("ioctl(FS_IOC_GETFLAGS) failed"), "{e}");
        assert!(e.raw_os_error().is_some());
    }
}
