//! The kernel boundary of xfuse, and nothing else.
//!
//! - [`abi`]: the FUSE uAPI of protocol 7.45 as zerocopy types with size checks;
//! - [`buf`]: page-aligned buffers for the file data the kernel copies;
//! - [`dev`]: `/dev/fuse` file descriptors, their reads and writes, and the
//!   `FUSE_DEV_IOC_*` ioctls (clone, passthrough backing files);
//! - [`mount`]: mount(2) and umount2(2) for FUSE, with typed options;
//! - [`mountinfo`]: what is mounted where (`/proc/self/mountinfo`), and a
//!   FUSE mount's connection id;
//! - [`creds`]: process credentials (capabilities across uid switches) and
//!   the umask;
//! - [`uring`]: FUSE-over-io_uring ring entries and the io_uring carrying them;
//! - [`probe`]: what the running kernel offers (version, io_uring switch,
//!   passthrough).
//!
//! Every `unsafe` syscall of the project lives in this crate, behind safe
//! functions whose arguments make misuse impossible (owned or borrowed file
//! descriptors, slices with their lengths). Each `unsafe` block states the
//! invariant it relies on in a `// SAFETY:` comment.
#![warn(missing_docs)]

pub mod abi;
pub mod buf;
pub mod creds;
pub mod dev;
pub mod mount;
pub mod mountinfo;
pub mod probe;
pub mod sched;
pub mod uring;

pub use dev::FuseDev;
pub use mount::{mount, umount, MountOptions, UnmountMode};
pub use probe::{probe, KernelInfo};

/// Converts a -1 return of a libc call into the thread's `errno`.
fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] for calls that return `ssize_t`.
fn cvt_size(ret: libc::ssize_t) -> std::io::Result<usize> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // A non-negative ssize_t always fits in usize.
        Ok(ret as usize)
    }
}
