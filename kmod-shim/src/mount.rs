//! mount(2) and umount2(2) for FUSE filesystems.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::dev::FuseDev;
use crate::{cvt, SyscallError};

/// The options of a FUSE mount, as the kernel's `fuse` filesystem parses them.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the source in /proc/mounts (e.g. the directory served).
    pub fsname: String,
    /// Shown after `fuse.` as the filesystem type (e.g. `xfuse`).
    pub subtype: String,
    /// Mode of the root inode; only its file-type bits matter (a directory).
    pub rootmode: u32,
    /// The uid that owns the mount (`user_id=`).
    pub user_id: u32,
    /// The gid that owns the mount (`group_id=`).
    pub group_id: u32,
    /// Let users other than the owner access the mount.
    pub allow_other: bool,
    /// Let the kernel check permissions from the file mode before asking the daemon.
    pub default_permissions: bool,
    /// Largest read request, in bytes (`max_read=`); `None` leaves the kernel's default.
    pub max_read: Option<u32>,
    /// Mount read-only (`MS_RDONLY`): writes fail with `EROFS`.
    pub read_only: bool,
    /// Ignore set-user-ID and set-group-ID bits and file capabilities on
    /// exec (`MS_NOSUID`). On unless asked: a FUSE daemon decides every
    /// file's mode, so honouring them trusts the daemon with root.
    pub nosuid: bool,
    /// Refuse to open device files (`MS_NODEV`). On unless asked, for the
    /// same reason as `nosuid`.
    pub nodev: bool,
    /// Refuse to execute files (`MS_NOEXEC`).
    pub noexec: bool,
    /// How access times are updated.
    pub atime: Atime,
}

/// How the kernel updates access times on a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Atime {
    /// Only when the access time is older than the modification or change
    /// time, or a day old (`MS_RELATIME`, the kernel's default).
    #[default]
    Relatime,
    /// Never (`MS_NOATIME`).
    Noatime,
    /// On every access (`MS_STRICTATIME`).
    Strictatime,
}

impl MountOptions {
    /// Options for a mount owned by the calling user.
    pub fn new(fsname: impl Into<String>, subtype: impl Into<String>) -> MountOptions {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        MountOptions {
            fsname: fsname.into(),
            subtype: subtype.into(),
            rootmode: libc::S_IFDIR,
            user_id: uid,
            group_id: gid,
            allow_other: false,
            default_permissions: false,
            max_read: None,
            read_only: false,
            nosuid: true,
            nodev: true,
            noexec: false,
            atime: Atime::default(),
        }
    }

    /// The `mountflags` argument of mount(2) for these options.
    pub fn ms_flags(&self) -> libc::c_ulong {
        let mut flags = match self.atime {
            Atime::Relatime => libc::MS_RELATIME,
            Atime::Noatime => libc::MS_NOATIME,
            Atime::Strictatime => libc::MS_STRICTATIME,
        };
        for (set, flag) in [
            (self.read_only, libc::MS_RDONLY),
            (self.nosuid, libc::MS_NOSUID),
            (self.nodev, libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
        ] {
            if set {
                flags |= flag;
            }
        }
        flags
    }

    /// The `data` string passed to mount(2) for a session on `dev_fd`.
    pub fn data_string(&self, dev_fd: i32) -> String {
        let mut s = format!(
            "fd={dev_fd},rootmode={:o},user_id={},group_id={}",
            self.rootmode, self.user_id, self.group_id
        );
        if self.allow_other {
            s.push_str(",allow_other");
        }
        if self.default_permissions {
            s.push_str(",default_permissions");
        }
        if let Some(max_read) = self.max_read {
            s.push_str(&format!(",max_read={max_read}"));
        }
        if !self.subtype.is_empty() {
            s.push_str(&format!(",subtype={}", self.subtype));
        }
        s
    }
}

pub(crate) fn cstring(call: &'static str, what: &str, bytes: &[u8]) -> Result<CString, SyscallError> {
    CString::new(bytes).map_err(|_| SyscallError::invalid(call, format!("{what} contains a NUL byte")))
}

/// Mounts the FUSE connection of `dev` at `mountpoint` (mount(2), needs
/// CAP_SYS_ADMIN). The kernel then sends INIT on `dev`.
pub fn mount(dev: &FuseDev, mountpoint: &Path, opts: &MountOptions) -> Result<(), SyscallError> {
    // The subtype travels in the comma-separated data string; the fsname
    // is mount(2)'s own `source` argument and may hold commas (a URL with
    // several hosts).
    if opts.subtype.contains(',') {
        return Err(SyscallError::invalid("mount(2)", "subtype must not contain ','"));
    }
    let source = cstring("mount(2)", "fsname", opts.fsname.as_bytes())?;
    let target = cstring("mount(2)", "mountpoint", mountpoint.as_os_str().as_bytes())?;
    let fstype = cstring("mount(2)", "fstype", b"fuse")?;
    let data = cstring("mount(2)", "options", opts.data_string(dev.raw_fd()).as_bytes())?;
    let flags = opts.ms_flags();
    // SAFETY: all four pointers are valid NUL-terminated strings that outlive
    // the call; the kernel copies them and keeps no reference.
    cvt("mount(2)", unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })?;
    Ok(())
}

/// How to unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountMode {
    /// Fail with `EBUSY` while files are open.
    Normal,
    /// Detach now, finish when the last user is gone (`MNT_DETACH`).
    Lazy,
}

/// Unmounts `mountpoint` (umount2(2)).
pub fn umount(mountpoint: &Path, mode: UnmountMode) -> Result<(), SyscallError> {
    let target = cstring("umount2(2)", "mountpoint", mountpoint.as_os_str().as_bytes())?;
    let flags = match mode {
        UnmountMode::Normal => 0,
        UnmountMode::Lazy => libc::MNT_DETACH,
    };
    // SAFETY: `target` is a valid NUL-terminated string that outlives the call.
    cvt("umount2(2)", unsafe { libc::umount2(target.as_ptr(), flags) })?;
    Ok(())
}

/// The FUSE connection id of the filesystem mounted at `mountpoint` (its
/// directory name under `/sys/fs/fuse/connections`), read from
/// `/proc/self/mountinfo` so the mount itself is never touched: a stat of
/// the mountpoint would be a request to the very daemon asking.
pub fn connection_id(mountpoint: &Path) -> Option<u32> {
    let mounts = crate::mountinfo::mounts().ok()?;
    // The topmost FUSE mount there: the last such line.
    mounts
        .iter()
        .rev()
        .filter(|m| m.mount_point == mountpoint)
        .find_map(crate::mountinfo::MountEntry::fuse_connection_id)
}

const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

/// Aborts a FUSE connection through the fusectl filesystem, mounting it at
/// its usual place first if nobody has. Every pending and future request of
/// the connection fails; its daemon's reads return `ENODEV`.
pub fn abort_connection(conn_id: u32) -> io::Result<()> {
    let abort = Path::new(FUSECTL_DIR).join(conn_id.to_string()).join("abort");
    if !abort.exists() {
        let target = cstring("mount(2) of fusectl", "fusectl dir", FUSECTL_DIR.as_bytes())?;
        let fstype = cstring("mount(2) of fusectl", "fstype", b"fusectl")?;
        // SAFETY: the pointers are valid NUL-terminated strings (or null
        // for data) that outlive the call.
        let mounted = cvt("mount(2) of fusectl", unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        });
        if let Err(e) = mounted {
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e.into());
            }
        }
    }
    std::fs::write(abort, "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_string_has_every_option() {
        let mut o = MountOptions::new("src", "xfuse");
        o.user_id = 0;
        o.group_id = 0;
        o.allow_other = true;
        o.default_permissions = true;
        o.max_read = Some(131072);
        assert_eq!(
            o.data_string(7),
            "fd=7,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read=131072,subtype=xfuse"
        );
    }

    #[test]
    fn flags_default_to_nosuid_nodev_relatime_and_follow_each_option() {
        let mut o = MountOptions::new("src", "xfused");
        assert_eq!(o.ms_flags(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RELATIME);
        o.nosuid = false;
        o.nodev = false;
        o.read_only = true;
        o.noexec = true;
        o.atime = Atime::Noatime;
        assert_eq!(o.ms_flags(), libc::MS_RDONLY | libc::MS_NOEXEC | libc::MS_NOATIME);
        o.atime = Atime::Strictatime;
        assert_eq!(o.ms_flags() & (libc::MS_NOATIME | libc::MS_RELATIME), 0);
        assert_ne!(o.ms_flags() & libc::MS_STRICTATIME, 0);
    }
}
