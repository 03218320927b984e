//! `/proc/self/mountinfo`: what is mounted where, read without touching the
//! mounts themselves (a stat of a FUSE mountpoint would be a request to its
//! daemon, which may be the very process asking).
//!
//! One parser for every reader: the FUSE connection id of a mount (for
//! fusectl and the BPF counters), and the filesystem type at a path (the
//! benches and tests waiting for a mount to appear or go).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One line of a mountinfo file: the fields xfuse reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device of the filesystem (`major:minor`, field 3).
    pub major: u32,
    /// See `major`.
    pub minor: u32,
    /// Where it is mounted (field 5, octal escapes decoded).
    pub mount_point: PathBuf,
    /// The filesystem type (first field after ` - `: `tmpfs`, `fuse.xfused`, …).
    pub fs_type: String,
}

impl MountEntry {
    /// Whether this is a FUSE mount (`fuse`, `fuse.SUBTYPE`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fs_type.starts_with("fuse")
    }

    /// The FUSE connection id, the name of its directory under
    /// `/sys/fs/fuse/connections`: the kernel names connections by the
    /// internal dev_t of the mount (`major << 20 | minor`).
    pub fn fuse_connection_id(&self) -> Option<u32> {
        self.is_fuse().then_some((self.major << 20) | self.minor)
    }
}

/// Parses the text of a mountinfo file, in its order (a later line is
/// mounted on top of an earlier one at the same place). Malformed lines are
/// skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw":
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
    let (left, right) = line.split_once(" - ")?;
    let mut fields = left.split(' ');
    let (major, minor) = fields.nth(2)?.split_once(':')?;
    let mount_point = fields.nth(1)?;
    let fs_type = right.split(' ').next()?;
    Some(MountEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point: PathBuf::from(OsStr::from_bytes(&unescape(mount_point))),
        fs_type: fs_type.to_string(),
    })
}

/// The mounts of this process's mount namespace, in mount order.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> io::Result<Option<MountEntry>> {
    Ok(topmost_at(mounts()?, path))
}

/// The filesystem type of the topmost mount at exactly `path`, if any.
pub fn fs_type_at(path: &Path) -> io::Result<Option<String>> {
    Ok(mount_at(path)?.map(|m| m.fs_type))
}

/// The topmost of `mounts` (in mount order) at exactly `path`.
pub fn topmost_at(mounts: Vec<MountEntry>, path: &Path) -> Option<MountEntry> {
    mounts.into_iter().rev().find(|m| m.mount_point == path)
}

/// Decodes mountinfo's `\NNN` octal escapes (the kernel writes space, tab,
/// newline and backslash so); anything else, including a `\` not followed
/// by three octal digits of a byte's value, stays as it is.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|digits| {
                let value = digits.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 0:50 / /tmp/a\\040b rw,relatime shared:2 - tmpfs tmpfs rw\n\
                    91 90 0:51 / /tmp/mnt rw,nosuid,nodev shared:3 - fuse.xfuse /tmp/src rw,user_id=0\n\
                    garbage\n";
        let m = parse(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fs_type, "tmpfs");
        assert_eq!(m[1].fuse_connection_id(), None);
        assert_eq!(m[2].mount_point, PathBuf::from("/tmp/mnt"));
        assert_eq!(m[2].fs_type, "fuse.xfuse");
        assert_eq!((m[2].major, m[2].minor), (0, 51));
        assert_eq!(m[2].fuse_connection_id(), Some(51));
    }

    #[test]
    fn the_topmost_mount_wins() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 22 0:45 / /mnt/a\\040b rw,nosuid - fuse.xfuse src rw,user_id=0\n\
                    41 40 0:46 / /mnt/a\\040b rw,nosuid - fuse.xfuse src rw,user_id=0\n";
        let at = |p: &str| topmost_at(parse(text), Path::new(p));
        assert_eq!(at("/mnt/a b").and_then(|m| m.fuse_connection_id()), Some(46));
        assert_eq!(at("/proc").and_then(|m| m.fuse_connection_id()), None);
        assert_eq!(at("/mnt"), None);
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), b"a b\tc\\d");
        assert_eq!(unescape("trailing\\04"), b"trailing\\04");
        assert_eq!(unescape("\\999"), b"\\999");
        assert_eq!(unescape("\\777"), b"\\777");
    }

    #[test]
    fn this_process_has_a_root() {
        let root = mount_at(Path::new("/")).unwrap();
        assert!(root.is_some());
    }
}
