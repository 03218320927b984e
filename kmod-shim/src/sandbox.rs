//! Confining a process that serves an untrusted peer (a VM's guest kernel):
//! new namespaces (unshare(2)), its mounts made its own, a fresh `/proc`,
//! a bind mount pivoted to (pivot_root(2)) or chrooted into, capabilities
//! cut to a named set in every set the kernel keeps (effective,
//! permitted, inheritable, ambient, bounding) and `no_new_privs`.
//!
//! Each step is its own function so a caller can say which one failed; the
//! order that makes them work together is the caller's (see `xfused
//! virtiofs --sandbox`). None of them may run in a multi-threaded process
//! where noted: unshare(CLONE_NEWNS) refuses a process whose threads share
//! its filesystem context, and pivot_root/chroot move only the calling
//! process's threads that share it.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::mount::cstring;
use crate::{cvt, SyscallError};

/// A namespace [`unshare`] can give the process a new one of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Mounts (`CLONE_NEWNS`): mounts made afterwards are the process's own.
    Mount,
    /// Process ids (`CLONE_NEWPID`): the caller stays where it is; its next
    /// child is pid 1 of the new namespace and sees no process outside it.
    Pid,
    /// Network (`CLONE_NEWNET`): only a loopback device, down. Sockets
    /// already open keep working in the namespace they were made in.
    Net,
    /// System V IPC and POSIX message queues (`CLONE_NEWIPC`).
    Ipc,
    /// Host and domain names (`CLONE_NEWUTS`).
    Uts,
}

impl Namespace {
    fn clone_flag(self) -> libc::c_int {
        match self {
            Namespace::Mount => libc::CLONE_NEWNS,
            Namespace::Pid => libc::CLONE_NEWPID,
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Uts => libc::CLONE_NEWUTS,
        }
    }
}

/// Moves the calling process into new namespaces of each kind in
/// `namespaces` (unshare(2); needs CAP_SYS_ADMIN). A new mount namespace
/// needs a single-threaded process.
pub fn unshare(namespaces: &[Namespace]) -> Result<(), SyscallError> {
    let flags = namespaces.iter().fold(0, |f, ns| f | ns.clone_flag());
    // SAFETY: unshare takes its flags by value and touches no memory of the
    // caller.
    cvt("unshare(2)", unsafe { libc::unshare(flags) })?;
    Ok(())
}

/// Makes every mount of the process's mount namespace a slave, recursively
/// (mount(2) with `MS_SLAVE | MS_REC` on `/`): unmounts and mounts on the
/// host still reach it, nothing it mounts or unmounts reaches the host.
/// Call right after [`unshare`] of [`Namespace::Mount`].
pub fn make_mounts_slave() -> Result<(), SyscallError> {
    let root = cstring("mount(2) MS_SLAVE", "path", b"/")?;
    // SAFETY: `root` is a valid NUL-terminated string that outlives the
    // call; a propagation change takes no source, type or data (null).
    cvt("mount(2) MS_SLAVE", unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Mounts a new procfs at `at` (nosuid, nodev, noexec, `subset=pid`: only
/// the process directories of the caller's pid namespace and `self`, no
/// /proc/sys, /proc/sysrq-trigger or other system-wide files; Linux 5.8+).
/// A descriptor kept into it cannot climb to what is not there.
pub fn mount_proc(at: &Path) -> Result<(), SyscallError> {
    let source = cstring("mount(2) proc", "source", b"proc")?;
    let target = cstring("mount(2) proc", "path", at.as_os_str().as_bytes())?;
    let data = cstring("mount(2) proc", "options", b"subset=pid")?;
    // SAFETY: all four strings are valid, NUL-terminated and outlive the
    // call; the kernel copies them.
    cvt("mount(2) proc", unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// Bind-mounts `dir` onto itself with its submounts (`MS_BIND | MS_REC`),
/// so it is a mount point [`pivot_root_into`] can take.
pub fn bind_onto_itself(dir: &Path) -> Result<(), SyscallError> {
    let path = cstring("mount(2) MS_BIND", "path", dir.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the
    // call (source and target); a bind mount takes no type or data (null).
    cvt("mount(2) MS_BIND", unsafe {
        libc::mount(
            path.as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Changes directory (chdir(2)).
pub fn change_dir(dir: &Path) -> Result<(), SyscallError> {
    let path = cstring("chdir(2)", "path", dir.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    cvt("chdir(2)", unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

/// Makes the mount point `dir` the root of the process's mount namespace
/// and detaches the old root (pivot_root(2) of "." onto ".", then
/// umount2(2) of the old root with `MNT_DETACH`), leaving the process at
/// `/`: nothing outside `dir` can be reached by any path. The old root's
/// mounts stay alive only for descriptors opened into them before.
///
/// `dir` must be a mount point in a mount namespace of the caller's own
/// whose mounts are not shared (see [`make_mounts_slave`] and
/// [`bind_onto_itself`]). Every thread of the namespace whose root was the
/// old one moves too.
pub fn pivot_root_into(dir: &Path) -> Result<(), SyscallError> {
    change_dir(dir)?;
    let dot = cstring("pivot_root(2)", "path", b".")?;
    // SAFETY: `dot` is a valid NUL-terminated string that outlives the
    // call; pivot_root has no libc wrapper, and takes two paths.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    cvt("pivot_root(2)", ret as libc::c_int)?;
    // The old root is now stacked on top of the new one at ".".
    // SAFETY: as above; umount2 takes the path and flags by value.
    cvt("umount2(2) of the old root", unsafe {
        libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
    })?;
    change_dir(Path::new("/"))
}

/// Makes `dir` the process's root directory (chdir(2) into it, then
/// chroot(2)), leaving the process at `/`. Unlike [`pivot_root_into`] the
/// old root stays mounted: a process that keeps CAP_SYS_CHROOT, or holds a
/// descriptor of a directory outside, can leave.
pub fn chroot_into(dir: &Path) -> Result<(), SyscallError> {
    change_dir(dir)?;
    let dot = cstring("chroot(2)", "path", b".")?;
    // SAFETY: `dot` is a valid NUL-terminated string that outlives the call.
    cvt("chroot(2)", unsafe { libc::chroot(dot.as_ptr()) })?;
    change_dir(Path::new("/"))
}

/// Sets `no_new_privs` (prctl(2) `PR_SET_NO_NEW_PRIVS`): execve can no
/// longer grant privileges (set-user-ID bits, file capabilities). Kept
/// across fork and execve, and cannot be unset.
pub fn set_no_new_privs() -> Result<(), SyscallError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes its arguments by value; no memory
    // is passed.
    cvt("prctl(PR_SET_NO_NEW_PRIVS)", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    Ok(())
}

/// Raises the soft limit on open files to the hard one (setrlimit(2)
/// `RLIMIT_NOFILE`) and returns it: a server that holds a descriptor per
/// inode its client knows runs out at the soft limit otherwise.
pub fn raise_open_file_limit() -> Result<u64, SyscallError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit the kernel writes into; it lives
    // for the call.
    cvt("getrlimit(RLIMIT_NOFILE)", unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit)
    })?;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit the kernel reads; it lives for the
    // call.
    cvt("setrlimit(RLIMIT_NOFILE)", unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
    })?;
    Ok(limit.rlim_cur)
}

/// A capability (numbers of `<linux/capability.h>`): the ones a file
/// server may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Capability {
    /// Change a file's owner and group.
    Chown = 0,
    /// Bypass file read, write and execute permission checks.
    DacOverride = 1,
    /// Bypass read and search checks; open_by_handle_at(2).
    DacReadSearch = 2,
    /// Bypass checks that need the file's owner (chmod, utimes, xattrs).
    Fowner = 3,
    /// Keep set-user-ID/set-group-ID bits when changing a file.
    Fsetid = 4,
    /// Set group ids (the guest caller's gid around a create).
    Setgid = 6,
    /// Set user ids (the guest caller's uid around a create).
    Setuid = 7,
    /// Change securebits and the bounding set (only while confining).
    Setpcap = 8,
    /// Create device nodes.
    Mknod = 27,
    /// Set file capabilities (`security.capability`).
    Setfcap = 31,
}

impl Capability {
    fn bit(self) -> u64 {
        1 << self as u32
    }
}

/// Removes every capability the kernel knows but those in `keep` from the
/// bounding set (prctl(2) `PR_CAPBSET_DROP`; needs CAP_SETPCAP): neither
/// this process nor anything it runs can gain them again. The kernel's
/// capabilities are numbered from 0 without gaps; the first number
/// `PR_CAPBSET_READ` refuses ends them (no /proc needed).
pub fn drop_bounding_set_except(keep: &[Capability]) -> Result<(), SyscallError> {
    let kept = keep.iter().fold(0u64, |m, c| m | c.bit());
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ takes the capability number by value; no
        // memory is passed.
        let known = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if known < 0 {
            break;
        }
        if kept & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes the capability number by value; no
        // memory is passed.
        cvt("prctl(PR_CAPBSET_DROP)", unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
        })?;
    }
    Ok(())
}

/// `struct __user_cap_header_struct` of `<linux/capability.h>`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two (bits 0-31, 32-63).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective and permitted capabilities to
/// `keep` and its inheritable and ambient ones to none (capset(2),
/// prctl(2) `PR_CAP_AMBIENT_CLEAR_ALL`). Permitted capabilities given up
/// cannot come back. Per thread: call it before starting threads, which
/// inherit the sets.
pub fn limit_capabilities(keep: &[Capability]) -> Result<(), SyscallError> {
    // SAFETY: PR_CAP_AMBIENT with CLEAR_ALL takes no pointers.
    cvt("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    let mask = keep.iter().fold(0u64, |m, c| m | c.bit());
    let (low, high) = (mask as u32, (mask >> 32) as u32);
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: `header` and the two-element `data` array are the version-3
    // layout the kernel reads (it may write the preferred version back into
    // `header`, which is mutable and lives for the call).
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    cvt("capset(2)", ret as libc::c_int)?;
    Ok(())
}

/// The calling thread's effective capabilities as a bit mask (capget(2)).
pub fn effective_capabilities() -> Result<u64, SyscallError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and the two-element `data` array are the version-3
    // layout; the kernel writes at most two `CapData` into `data`, which
    // lives for the call.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    cvt("capget(2)", ret as libc::c_int)?;
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// The mask of `caps`, as `/proc/PID/status` shows `CapEff`.
pub fn capability_mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_numbers_are_the_kernels() {
        // <linux/capability.h>: CAP_SETPCAP 8, CAP_MKNOD 27, CAP_SETFCAP 31.
        assert_eq!(capability_mask(&[Capability::Chown]), 1);
        assert_eq!(capability_mask(&[Capability::Setpcap]), 1 << 8);
        assert_eq!(
            capability_mask(&[Capability::Mknod, Capability::Setfcap]),
            (1 << 27) | (1 << 31)
        );
    }

    #[test]
    fn capabilities_are_read_as_proc_shows_them() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let shown = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(effective_capabilities().unwrap(), shown);
    }
}
