//! Process credentials.

use crate::{cvt, SyscallError};

/// `SECBIT_NO_SETUID_FIXUP` of `<linux/securebits.h>`.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;

/// Keeps the process's effective capabilities when a thread switches its
/// effective uid away from 0 (sets `SECBIT_NO_SETUID_FIXUP` for the calling
/// thread and the threads it creates afterwards).
///
/// Filesystems that create files under the caller's uid (switching the
/// thread's euid around `mkdirat`) and that reopen inodes from file handles
/// (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH) inside that window
/// otherwise fail with `EPERM` for every non-root caller. Needs CAP_SETPCAP.
pub fn keep_capabilities_across_setuid() -> Result<(), SyscallError> {
    // SAFETY: PR_GET_SECUREBITS takes no pointer arguments and only reads
    // the calling thread's credentials.
    let bits = cvt("prctl(PR_GET_SECUREBITS)", unsafe {
        libc::prctl(libc::PR_GET_SECUREBITS)
    })?;
    let bits = bits as libc::c_ulong | SECBIT_NO_SETUID_FIXUP;
    // SAFETY: PR_SET_SECUREBITS takes the new bits by value; no memory is passed.
    cvt("prctl(PR_SET_SECUREBITS)", unsafe {
        libc::prctl(libc::PR_SET_SECUREBITS, bits)
    })?;
    Ok(())
}

/// Sets the process's file mode creation mask (umask(2)) to `mask` (only
/// its permission bits count) and returns the previous one. Process-wide:
/// every thread's later creations are masked by it.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask takes its argument by value, touches no memory of the
    // caller and cannot fail.
    unsafe { libc::umask((mask & 0o777) as libc::mode_t) as u32 }
}

/// The process's effective user id (geteuid(2)).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs `f` on the calling thread with filesystem user and group ids `uid`
/// and `gid` (setfsuid(2)/setfsgid(2), which change only the calling
/// thread's: the kernel checks and owns files by them, and FUSE reports
/// them as the caller), then restores the thread's previous ones, also if
/// `f` panics. For tests and tools that act as another user from one
/// thread of a root process; the thread's capabilities follow the Linux
/// rules for a filesystem id change.
pub fn with_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    /// The ids to put back, on the thread that changed them.
    struct Restore {
        uid: libc::uid_t,
        gid: libc::gid_t,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: setfsuid/setfsgid take ids by value, touch no memory
            // and change only the calling thread's ids: these are the ones
            // saved on this thread before the change.
            unsafe {
                libc::setfsuid(self.uid);
                libc::setfsgid(self.gid);
            }
        }
    }
    // SAFETY: as in `Restore::drop`; each call returns the previous id.
    let gid_before = unsafe { libc::setfsgid(gid) } as libc::gid_t;
    // SAFETY: as above.
    let uid_before = unsafe { libc::setfsuid(uid) } as libc::uid_t;
    let _restore = Restore {
        uid: uid_before,
        gid: gid_before,
    };
    f()
}
