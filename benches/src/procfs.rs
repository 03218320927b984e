//! What the benches read from /proc: mount points (`/proc/self/mountinfo`),
//! and a daemon's CPU time (`/proc/PID/stat`) and memory (`/proc/PID/status`)
//! from [`vm_tests::procfs`], where the virtio-fs frontend reads them too.

use std::io;
use std::path::{Path, PathBuf};

pub use vm_tests::procfs::{
    clock_ticks_per_second, cpu_time_ns, loadavg_1m, parse_sched_runtime_ns, parse_stat_cpu_ticks,
    parse_status_kib, Usage,
};

/// One line of `/proc/self/mountinfo`, the fields the harness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: PathBuf,
    /// The filesystem type (`tmpfs`, `fuse.xfuse`, …).
    pub fs_type: String,
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The filesystem type of the topmost mount at exactly `path`, if any.
pub fn mounted_at(path: &Path) -> io::Result<Option<String>> {
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.fs_type))
}

/// Decodes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 0:50 / /tmp/a\\040b rw,relatime shared:2 - tmpfs tmpfs rw\n\
                    91 90 0:51 / /tmp/mnt rw,nosuid,nodev shared:3 - fuse.xfuse /tmp/src rw,user_id=0\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fs_type, "tmpfs");
        assert_eq!(m[2].mount_point, PathBuf::from("/tmp/mnt"));
        assert_eq!(m[2].fs_type, "fuse.xfuse");
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_octal("\\999"), "\\999");
    }
}
