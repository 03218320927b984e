//! `/dev/fuse`: opening, cloning, reading requests, writing replies, and the
//! passthrough backing-file ioctls.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::abi::BackingMap;
use crate::{cvt, cvt_size, ioc, SyscallError, IOC_READ, IOC_WRITE};

const FUSE_DEV_PATH: &CStr = c"/dev/fuse";

const FUSE_DEV_IOC_MAGIC: u32 = 229;
/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
pub const FUSE_DEV_IOC_CLONE: u32 = ioc(IOC_READ, FUSE_DEV_IOC_MAGIC, 0, 4);
/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)`.
pub const FUSE_DEV_IOC_BACKING_OPEN: u32 = ioc(
    IOC_WRITE,
    FUSE_DEV_IOC_MAGIC,
    1,
    std::mem::size_of::<BackingMap>(),
);
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
pub const FUSE_DEV_IOC_BACKING_CLOSE: u32 = ioc(IOC_WRITE, FUSE_DEV_IOC_MAGIC, 2, 4);

/// An open `/dev/fuse` file descriptor: the session's own, or a clone of it.
///
/// Requests read from one descriptor must be answered on the same descriptor;
/// the kernel keeps a per-descriptor list of requests being processed.
#[derive(Debug)]
pub struct FuseDev {
    fd: OwnedFd,
}

impl FuseDev {
    /// Opens `/dev/fuse` (close-on-exec, blocking reads).
    pub fn open() -> Result<FuseDev, SyscallError> {
        // SAFETY: the path is a valid NUL-terminated string; `open` has no
        // other memory effects. The returned descriptor is checked by `cvt`.
        let fd = cvt("open(/dev/fuse)", unsafe {
            libc::open(FUSE_DEV_PATH.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC)
        })?;
        // SAFETY: `fd` was just returned by open(2), is valid and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(FuseDev { fd })
    }

    /// Opens a new `/dev/fuse` descriptor attached to the same connection
    /// (`FUSE_DEV_IOC_CLONE`), so a worker can read and reply on its own.
    pub fn try_clone_channel(&self) -> Result<FuseDev, SyscallError> {
        let clone = FuseDev::open()?;
        let session_fd: u32 = self.fd.as_raw_fd() as u32;
        // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the session's descriptor)
        // through the pointer, which points at a live local of that type.
        cvt("ioctl(FUSE_DEV_IOC_CLONE)", unsafe {
            libc::ioctl(
                clone.fd.as_raw_fd(),
                FUSE_DEV_IOC_CLONE as _,
                &session_fd as *const u32,
            )
        })?;
        Ok(clone)
    }

    /// Reads one request into `buf`, which must hold at least
    /// [`crate::abi::MIN_READ_BUFFER`] bytes and max_write plus headers.
    ///
    /// Errors are the kernel's: `ENODEV` once the filesystem is unmounted or
    /// the connection aborted; `ENOENT` when the request was interrupted before
    /// it could be read (just read again); `EINTR`.
    pub fn read_request(&self, buf: &mut [u8]) -> Result<usize, SyscallError> {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the
        // duration of the call; the kernel writes at most that many.
        cvt_size("read(/dev/fuse)", unsafe {
            libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        })
    }

    /// Writes one reply or notification, gathered from `parts` in one
    /// `writev(2)`, as the kernel requires (the first part starts with a
    /// `fuse_out_header` whose `len` covers all parts).
    pub fn write_message(&self, parts: &[&[u8]]) -> Result<usize, SyscallError> {
        const MAX_PARTS: usize = 8;
        if parts.len() > MAX_PARTS {
            return Err(SyscallError::invalid("writev(/dev/fuse)", "too many reply parts"));
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS];
        for (slot, part) in iov.iter_mut().zip(parts) {
            *slot = libc::iovec {
                iov_base: part.as_ptr() as *mut _,
                iov_len: part.len(),
            };
        }
        // SAFETY: the first `parts.len()` iovecs point at live byte slices of
        // their stated lengths, which outlive the call; writev only reads them.
        cvt_size("writev(/dev/fuse)", unsafe {
            libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), parts.len() as libc::c_int)
        })
    }

    /// Registers `file` as a passthrough backing file (`FUSE_DEV_IOC_BACKING_OPEN`)
    /// and returns its backing id, for `FOPEN_PASSTHROUGH` replies.
    ///
    /// Needs CAP_SYS_ADMIN and a connection that negotiated `FUSE_PASSTHROUGH`;
    /// the kernel answers `EPERM` otherwise.
    pub fn backing_open(&self, file: BorrowedFd<'_>) -> Result<u32, SyscallError> {
        let map = BackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: the ioctl reads one `struct fuse_backing_map` through the
        // pointer, which points at a live, initialised local of that layout.
        let id = cvt("ioctl(FUSE_DEV_IOC_BACKING_OPEN)", unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_OPEN as _,
                &map as *const BackingMap,
            )
        })?;
        Ok(id as u32)
    }

    /// Releases a backing id from [`FuseDev::backing_open`].
    pub fn backing_close(&self, backing_id: u32) -> Result<(), SyscallError> {
        // SAFETY: the ioctl reads one u32 through the pointer, which points at a live local.
        cvt("ioctl(FUSE_DEV_IOC_BACKING_CLOSE)", unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE as _,
                &backing_id as *const u32,
            )
        })?;
        Ok(())
    }

    /// The raw descriptor, for the `fd=` mount option and for io_uring.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for FuseDev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_header() {
        // Values printed by a C program including <linux/fuse.h> on x86_64.
        assert_eq!(FUSE_DEV_IOC_CLONE, 0x8004_e500);
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }
}
