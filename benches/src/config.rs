//! The ways the benches reach the same tmpfs directory.

use std::fmt;

/// How a configuration serves the source directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Config {
    /// The tmpfs directory itself, no FUSE: the physical limit.
    Native,
    /// fuse-backend-rs 0.14's own server (`FuseSession`/`FuseChannel` +
    /// `Server`) serving its `PassthroughFs` on one /dev/fuse queue and
    /// thread: the `stock-fuse` binary of this crate.
    Stock,
    /// `xfused passthrough --transport dev` (one worker per CPU).
    XfuseDev,
    /// `xfused passthrough --transport uring`.
    XfuseUring,
    /// `xfused passthrough --transport uring --passthrough`.
    XfuseUringPassthrough,
    /// `xfused passthrough --transport uring --permissions daemon`: no
    /// `default_permissions`, permissions checked by xfused.
    XfuseUringDaemonPerms,
}

impl Config {
    /// Every configuration, in report column order.
    pub const ALL: [Config; 6] = [
        Config::Native,
        Config::Stock,
        Config::XfuseDev,
        Config::XfuseUring,
        Config::XfuseUringPassthrough,
        Config::XfuseUringDaemonPerms,
    ];

    /// The name used in bench ids and report columns.
    pub fn name(self) -> &'static str {
        match self {
            Config::Native => "native",
            Config::Stock => "stock",
            Config::XfuseDev => "xfuse-dev",
            Config::XfuseUring => "xfuse-uring",
            Config::XfuseUringPassthrough => "xfuse-uring-pt",
            Config::XfuseUringDaemonPerms => "xfuse-uring-dp",
        }
    }

    /// The configuration called `name`.
    pub fn from_name(name: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether requests go through a FUSE daemon (everything but `native`).
    pub fn is_fuse(self) -> bool {
        self != Config::Native
    }

    /// The xfused flags selecting this configuration's transport, after
    /// `xfused passthrough` (`None` for configurations xfused does not serve).
    pub fn xfused_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Native | Config::Stock => None,
            Config::XfuseDev => Some(&["--transport", "dev"]),
            Config::XfuseUring => Some(&["--transport", "uring"]),
            Config::XfuseUringPassthrough => Some(&["--transport", "uring", "--passthrough"]),
            Config::XfuseUringDaemonPerms => Some(&["--transport", "uring", "--permissions", "daemon"]),
        }
    }

    /// The transport name xfused announces for this configuration
    /// (`xfused: serving … (transport NAME)`).
    pub fn xfused_transport(self) -> Option<&'static str> {
        match self {
            Config::Native | Config::Stock => None,
            Config::XfuseDev => Some("dev"),
            Config::XfuseUring | Config::XfuseUringPassthrough | Config::XfuseUringDaemonPerms => {
                Some("uring")
            }
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Config::ALL {
            assert_eq!(Config::from_name(c.name()), Some(c));
        }
        assert_eq!(Config::from_name("nope"), None);
    }
}
