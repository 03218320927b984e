//! Idmapped mounts (Linux 5.12+; FUSE since 6.12, when the daemon asks
//! `FUSE_ALLOW_IDMAP`): a user namespace whose uid and gid maps say how
//! the ids of a filesystem appear through one mount, a clone of a mounted
//! tree (open_tree(2) `OPEN_TREE_CLONE`), the namespace's maps attached to
//! that clone (mount_setattr(2) `MOUNT_ATTR_IDMAP`) and, if wanted, the
//! clone attached somewhere (move_mount(2)).
//!
//! Direction, as the kernel has it: an id `n` stored in the filesystem is
//! an id *inside* the namespace, and the mount shows the *outside* id the
//! map gives it. With a map `0 100000 65536`, a file owned by 1000 is
//! shown as owned by 101000, and a caller whose filesystem uid is 101000
//! creates files owned by 1000; a caller with no mapping (root, here) may
//! read but not create (`EOVERFLOW`).
//!
//! A detached clone (an [`IdmappedMount`] never attached) is reachable
//! only through its descriptor (`/proc/self/fd/N/...`, or `*at` calls) and
//! goes away when the descriptor is closed: nothing to unmount.

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::mount::cstring;
use crate::{cvt, SyscallError};

/// One line of a `uid_map` or `gid_map`: ids `inside..inside+count` of the
/// namespace are ids `outside..outside+count` of the caller's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the namespace (for an idmapped mount: as stored in
    /// the filesystem).
    pub inside: u32,
    /// First id outside (for an idmapped mount: as shown through it).
    pub outside: u32,
    /// Ids in the range.
    pub count: u32,
}

/// The text the kernel takes in `/proc/PID/uid_map` (one write).
fn map_text(call: &'static str, ranges: &[IdRange]) -> Result<String, SyscallError> {
    if ranges.is_empty() {
        return Err(SyscallError::invalid(call, "an id map needs at least one range"));
    }
    let mut text = String::new();
    for r in ranges {
        let fits = |first: u32| u64::from(first) + u64::from(r.count) <= u64::from(u32::MAX);
        if r.count == 0 || !fits(r.inside) || !fits(r.outside) {
            return Err(SyscallError::invalid(
                call,
                format!(
                    "range {} {} {} is empty or reaches id 4294967295",
                    r.inside, r.outside, r.count
                ),
            ));
        }
        // Writing into a String cannot fail.
        let _ = writeln!(text, "{} {} {}", r.inside, r.outside, r.count);
    }
    Ok(text)
}

/// A user namespace held by a descriptor of it (`/proc/PID/ns/user`); no
/// process lives in it.
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
}

impl AsFd for UserNamespace {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl UserNamespace {
    /// A new user namespace with these maps. A child process is forked to
    /// unshare(2) `CLONE_NEWUSER` (a multi-threaded process cannot enter a
    /// new user namespace itself); its maps are written from here, which
    /// takes `CAP_SETUID` and `CAP_SETGID` for maps other than the caller's
    /// own ids; the namespace is kept by a descriptor and the child killed
    /// and reaped before this returns.
    pub fn with_maps(uid_map: &[IdRange], gid_map: &[IdRange]) -> Result<UserNamespace, SyscallError> {
        let uid_text = map_text("write(/proc/PID/uid_map)", uid_map)?;
        let gid_text = map_text("write(/proc/PID/gid_map)", gid_map)?;
        let (ready_read, ready_write) = pipe()?;
        // SAFETY: fork(2) takes no arguments. The child only makes raw
        // async-signal-safe system calls (unshare, write, pause, _exit) on
        // values prepared before the fork, so it is sound in a
        // multi-threaded parent; it never returns from this block.
        let pid = cvt("fork(2)", unsafe { libc::fork() })?;
        if pid == 0 {
            // SAFETY: see the fork above; `ready_write` is a descriptor this
            // (child) process owns a copy of; the byte lives on the stack for
            // the call.
            unsafe {
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(ready_write.as_raw_fd(), (&ok as *const u8).cast(), 1);
                loop {
                    // Until the parent's SIGKILL.
                    libc::pause();
                }
            }
        }
        drop(ready_write);
        let child = Child(pid);
        let mut ok = 0u8;
        let n = loop {
            // SAFETY: `ok` is one writable byte that outlives the call.
            let n = unsafe { libc::read(ready_read.as_raw_fd(), (&mut ok as *mut u8).cast(), 1) };
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break n;
            }
        };
        if n != 1 || ok != 1 {
            return Err(SyscallError::invalid(
                "unshare(CLONE_NEWUSER)",
                "the child could not enter a new user namespace",
            ));
        }
        let proc = format!("/proc/{pid}");
        let write = |call: &'static str, file: &str, text: &str| {
            std::fs::write(format!("{proc}/{file}"), text).map_err(|io_error| SyscallError { call, io_error })
        };
        write("write(/proc/PID/uid_map)", "uid_map", &uid_text)?;
        write("write(/proc/PID/gid_map)", "gid_map", &gid_text)?;
        let ns = std::fs::File::open(format!("{proc}/ns/user")).map_err(|io_error| SyscallError {
            call: "open(/proc/PID/ns/user)",
            io_error,
        })?;
        drop(child);
        Ok(UserNamespace { fd: ns.into() })
    }
}

/// A forked child, killed and reaped when dropped.
struct Child(libc::pid_t);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: kill and waitpid take the pid by value (this process's own
        // child, not yet reaped) and a null status pointer waitpid accepts.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            while libc::waitpid(self.0, std::ptr::null_mut(), 0) < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SyscallError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt("pipe2(2)", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: both descriptors were just returned by the kernel and are
    // owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A detached clone of a mounted tree whose ids are mapped by a user
/// namespace; see the module docs.
#[derive(Debug)]
pub struct IdmappedMount {
    fd: OwnedFd,
}

impl AsFd for IdmappedMount {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl IdmappedMount {
    /// Clones the mount at `path` (open_tree(2) `OPEN_TREE_CLONE`, not
    /// recursive; needs `CAP_SYS_ADMIN`) and maps its ids by `userns`
    /// (mount_setattr(2) `MOUNT_ATTR_IDMAP`). The kernel refuses the
    /// mapping (`EINVAL`) for a filesystem that does not allow it: a FUSE
    /// mount allows it once its daemon's INIT reply, agreeing to
    /// `FUSE_ALLOW_IDMAP`, has been taken. A FUSE mount is visible before
    /// that: make one request through it first (a `stat` or a listing,
    /// which waits for INIT).
    pub fn new(path: &Path, userns: &UserNamespace) -> Result<IdmappedMount, SyscallError> {
        let c_path = cstring("open_tree(2)", "path", path.as_os_str().as_bytes())?;
        // SAFETY: `c_path` is a NUL-terminated string that outlives the
        // call; the flags are by value; the result is a new descriptor.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
            )
        };
        let fd = cvt("open_tree(2)", fd as libc::c_int)?;
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut attr: libc::mount_attr = {
            // SAFETY: mount_attr is four u64s, for which all zeroes is valid.
            unsafe { std::mem::zeroed() }
        };
        attr.attr_set = libc::MOUNT_ATTR_IDMAP;
        attr.userns_fd = userns.as_fd().as_raw_fd() as u64;
        let empty = c"";
        // SAFETY: `empty` is a NUL-terminated string and `attr` a valid
        // mount_attr of the size passed; both outlive the call, which reads
        // them only. `fd` and the namespace descriptor are open.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        cvt("mount_setattr(MOUNT_ATTR_IDMAP)", ret as libc::c_int)?;
        Ok(IdmappedMount { fd })
    }

    /// The path of `rel` inside the mount, through this process's
    /// descriptor of it (`/proc/self/fd/N/REL`): for callers that use
    /// path-based calls on a detached mount.
    pub fn path(&self, rel: impl AsRef<Path>) -> std::path::PathBuf {
        Path::new(&format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(rel)
    }

    /// Attaches the mount at `target` (move_mount(2)); from then on it is
    /// an ordinary mount there, unmounted with [`crate::umount`].
    pub fn attach(self, target: &Path) -> Result<(), SyscallError> {
        let c_target = cstring("move_mount(2)", "target", target.as_os_str().as_bytes())?;
        let empty = c"";
        // SAFETY: both strings are NUL-terminated and outlive the call; the
        // descriptors and flags are by value.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                c_target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
            )
        };
        cvt("move_mount(2)", ret as libc::c_int)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_written_one_range_a_line_and_checked() {
        let text = map_text(
            "t",
            &[
                IdRange {
                    inside: 0,
                    outside: 100_000,
                    count: 65_536,
                },
                IdRange {
                    inside: 70_000,
                    outside: 5,
                    count: 1,
                },
            ],
        )
        .unwrap();
        assert_eq!(text, "0 100000 65536\n70000 5 1\n");
        assert!(map_text("t", &[]).is_err());
        assert!(map_text(
            "t",
            &[IdRange {
                inside: 0,
                outside: 0,
                count: 0
            }]
        )
        .is_err());
        let to_the_end = IdRange {
            inside: 1,
            outside: 0,
            count: u32::MAX,
        };
        assert!(map_text("t", &[to_the_end]).is_err(), "would reach 4294967295");
    }

    #[test]
    fn a_namespace_with_maps_is_made_as_root() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = UserNamespace::with_maps(
            &[IdRange {
                inside: 0,
                outside: 100_000,
                count: 10,
            }],
            &[IdRange {
                inside: 0,
                outside: 100_000,
                count: 10,
            }],
        )
        .unwrap();
        let target = std::fs::read_link(format!("/proc/self/fd/{}", ns.as_fd().as_raw_fd())).unwrap();
        let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
        assert!(target.to_string_lossy().starts_with("user:["), "{target:?}");
        assert_ne!(target, ours, "a new namespace, not ours");
    }
}
