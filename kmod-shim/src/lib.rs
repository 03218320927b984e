//! The kernel boundary of xfuse, and nothing else.
//!
//! - [`abi`]: the FUSE uAPI of protocol 7.45 as zerocopy types with size checks;
//! - [`buf`]: page-aligned buffers for the file data the kernel copies;
//! - [`dev`]: `/dev/fuse` file descriptors, their reads and writes, and the
//!   `FUSE_DEV_IOC_*` ioctls (clone, passthrough backing files);
//! - [`idmap`]: idmapped mounts (a user namespace with given maps,
//!   open_tree(2), mount_setattr(2) `MOUNT_ATTR_IDMAP`, move_mount(2));
//! - [`malloc`]: how the C allocator keeps large buffers (mallopt(3));
//! - [`mount`]: mount(2) and umount2(2) for FUSE, with typed options;
//! - [`mountinfo`]: what is mounted where (`/proc/self/mountinfo`), and a
//!   FUSE mount's connection id;
//! - [`fileattr`]: the file attribute flags of `chattr`/`lsattr`
//!   (`FS_IOC_GETFLAGS`/`SETFLAGS`, `FS_IOC_FSGETXATTR`/`FSSETXATTR`);
//! - [`creds`]: process credentials (capabilities across uid switches) and
//!   the umask;
//! - [`uring`]: FUSE-over-io_uring ring entries and the io_uring carrying them;
//! - [`probe`]: what the running kernel offers (version, io_uring switch,
//!   passthrough);
//! - [`process`]: going to the background (fork, setsid, the standard
//!   descriptors), waiting for a child and signalling it;
//! - [`sandbox`]: confining a server of an untrusted guest (namespaces,
//!   pivot_root or chroot, capabilities, `no_new_privs`);
//! - `verbs` (feature `rdma`): RDMA devices through libibverbs: registered
//!   memory, reliable-connected queue pairs, RDMA READ and WRITE.
//!
//! Every `unsafe` syscall of the project lives in this crate, behind safe
//! functions whose arguments make misuse impossible (owned or borrowed file
//! descriptors, slices with their lengths). Each `unsafe` block states the
//! invariant it relies on in a `// SAFETY:` comment.
//!
//! A failed call is a [`SyscallError`]: which call, and the errno the kernel
//! gave (modelled on aya's `SyscallError { call, io_error }`).
#![warn(missing_docs)]

pub mod abi;
pub mod buf;
pub mod creds;
pub mod dev;
pub mod fileattr;
pub mod handle;
pub mod idmap;
pub mod malloc;
pub mod mount;
pub mod mountinfo;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod sched;
pub mod uring;
#[cfg(feature = "rdma")]
pub mod verbs;

pub use dev::FuseDev;
pub use mount::{mount, umount, Atime, MountOptions, UnmountMode};
pub use probe::{probe, KernelInfo};

/// A system call that failed: which one, and what the kernel answered.
///
/// Display reads `mount(2) failed: Operation not permitted`. Callers that
/// decide on the errno ask [`SyscallError::raw_os_error`], or convert into
/// the [`std::io::Error`] the kernel gave (`?` in an `io::Result` function
/// does so), which carries the errno but no longer the call.
#[derive(Debug)]
pub struct SyscallError {
    /// The call, as a man page names it (`mount(2)`,
    /// `ioctl(FUSE_DEV_IOC_CLONE)`).
    pub call: &'static str,
    /// The error: the thread's errno, or why the wrapper refused the
    /// arguments before making the call.
    pub io_error: std::io::Error,
}

impl SyscallError {
    /// The errno, if the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.io_error.raw_os_error()
    }

    /// The kind of the error.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.io_error.kind()
    }

    /// `call` failed with the calling thread's errno.
    fn last(call: &'static str) -> SyscallError {
        SyscallError {
            call,
            io_error: std::io::Error::last_os_error(),
        }
    }

    /// The wrapper of `call` refused its arguments with `errno` (what the
    /// kernel would answer).
    fn refused(call: &'static str, errno: i32) -> SyscallError {
        SyscallError {
            call,
            io_error: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// The wrapper of `call` refused its arguments: `why`.
    fn invalid(call: &'static str, why: impl Into<String>) -> SyscallError {
        SyscallError {
            call,
            io_error: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.into()),
        }
    }
}

impl std::fmt::Display for SyscallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.io_error.to_string();
        // io::Error says "Operation not permitted (os error 1)": the call's
        // name is the context here, the errno's text is enough.
        let text = match self.io_error.raw_os_error() {
            Some(errno) => text
                .strip_suffix(&format!(" (os error {errno})"))
                .unwrap_or(&text),
            None => &text,
        };
        write!(f, "{} failed: {text}", self.call)
    }
}

impl std::error::Error for SyscallError {}

impl From<SyscallError> for std::io::Error {
    fn from(e: SyscallError) -> std::io::Error {
        e.io_error
    }
}

/// `_IOC(dir, type, nr, size)` of `<asm-generic/ioctl.h>`, as the x86/arm
/// layout defines it (dir in bits 30-31, size in 16-29, type in 8-15, nr in
/// 0-7): the number of an ioctl, for every module that issues one.
pub(crate) const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
/// `_IOC_WRITE`: the ioctl reads its argument from the caller.
pub(crate) const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the ioctl writes its argument for the caller.
pub(crate) const IOC_READ: u32 = 2;

/// Converts a -1 return of `call` into the thread's `errno`.
fn cvt(call: &'static str, ret: libc::c_int) -> Result<libc::c_int, SyscallError> {
    if ret < 0 {
        Err(SyscallError::last(call))
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] for calls that return `ssize_t`.
fn cvt_size(call: &'static str, ret: libc::ssize_t) -> Result<usize, SyscallError> {
    if ret < 0 {
        Err(SyscallError::last(call))
    } else {
        // A non-negative ssize_t always fits in usize.
        Ok(ret as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syscall_error_names_the_call_and_keeps_the_errno() {
        let e = SyscallError::refused("mount(2)", libc::EPERM);
        assert_eq!(e.to_string(), "mount(2) failed: Operation not permitted");
        let refused = SyscallError::invalid("writev(2)", "too many reply parts");
        assert_eq!(refused.to_string(), "writev(2) failed: too many reply parts");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let io: std::io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(libc::EPERM));
    }
}
