//! What the running kernel offers a FUSE server.

use std::fmt;
use std::path::Path;

/// `CAP_SYS_ADMIN` of `<linux/capability.h>`.
const CAP_SYS_ADMIN: u32 = 21;

/// Where the FUSE-over-io_uring switch lives (Linux >= 6.14).
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Facts about the running kernel, gathered without side effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// `uname -r`.
    pub release: String,
    /// (major, minor, patch) parsed from the release; zeros where unparsable.
    pub version: (u32, u32, u32),
    /// `/dev/fuse` exists.
    pub fuse_device: bool,
    /// The FUSE protocol minor the kernel speaks; known only after INIT, so
    /// `None` here and filled in by a session.
    pub protocol_minor: Option<u32>,
    /// `Some(on)` when the `enable_uring` parameter exists, `None` when the
    /// kernel has no FUSE-over-io_uring.
    pub uring_enabled: Option<bool>,
    /// The kernel is new enough for FUSE passthrough (6.9+); whether this
    /// connection may use it is settled by INIT (`FUSE_PASSTHROUGH`) and
    /// [`KernelInfo::cap_sys_admin`].
    pub passthrough_kernel: bool,
    /// The process holds CAP_SYS_ADMIN (needed to mount and for passthrough).
    pub cap_sys_admin: bool,
}

impl fmt::Display for KernelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uring = match self.uring_enabled {
            None => "absent".to_string(),
            Some(true) => "on".to_string(),
            Some(false) => format!("off ({ENABLE_URING_PARAM} = N)"),
        };
        write!(
            f,
            "kernel {} (/dev/fuse {}, protocol 7.{}, fuse-over-io_uring {}, passthrough {}, CAP_SYS_ADMIN {})",
            self.release,
            if self.fuse_device { "present" } else { "missing" },
            self.protocol_minor.map_or("?".to_string(), |m| m.to_string()),
            uring,
            if self.passthrough_kernel { "supported" } else { "unsupported" },
            if self.cap_sys_admin { "yes" } else { "no" },
        )
    }
}

/// Reads what the running kernel offers.
pub fn probe() -> KernelInfo {
    let release = uname_release();
    let version = parse_release(&release);
    KernelInfo {
        release,
        version,
        fuse_device: Path::new("/dev/fuse").exists(),
        protocol_minor: None,
        uring_enabled: read_bool_param(Path::new(ENABLE_URING_PARAM)),
        passthrough_kernel: version >= (6, 9, 0),
        cap_sys_admin: has_capability(CAP_SYS_ADMIN),
    }
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Parses "6.18.44-fc-v769" into (6, 18, 44).
pub fn parse_release(release: &str) -> (u32, u32, u32) {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
        nums.next().unwrap_or(0),
    )
}

fn read_bool_param(path: &Path) -> Option<bool> {
    let s = std::fs::read_to_string(path).ok()?;
    Some(matches!(s.trim(), "Y" | "y" | "1"))
}

fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|eff| eff & (1u64 << cap) != 0)
}

/// Turns FUSE-over-io_uring on for this boot (writes `Y` to the module
/// parameter). Root only; the daemon calls it only when asked to.
pub fn enable_uring() -> std::io::Result<()> {
    std::fs::write(ENABLE_URING_PARAM, "Y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases() {
        assert_eq!(parse_release("6.18.44-fc-v769"), (6, 18, 44));
        assert_eq!(parse_release("6.1.0-27-amd64"), (6, 1, 0));
        assert_eq!(parse_release("garbage"), (0, 0, 0));
        assert_eq!(parse_release(""), (0, 0, 0));
    }

    #[test]
    fn probe_reads_this_machine() {
        let info = probe();
        assert!(info.version.0 >= 3, "release {:?}", info.release);
        assert!(info.to_string().contains(&info.release));
    }
}
