//! The standard mount options (read-only, access times, set-user-ID,
//! devices, exec) as flags of every mounting subcommand, and the mount(2)
//! flags they make.
//!
//! Each `-o` option of mount(8) has a flag of its own (`ro` is
//! `--read-only`, `nosuid` is `--nosuid`), and the flags of a pair override
//! each other, so that a later one wins as in an fstab option string
//! (`ro,rw` mounts read-write).

use anyhow::bail;
use clap::{Args, ValueEnum};
use kmod_shim::{Atime, MountOptions};

/// Where --help lists these flags.
const HEADING: &str = "Mount options";

/// `--atime`: how access times are updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AtimeArg {
    /// When the access time is older than the modification or change time,
    /// or a day old (the kernel's default; `-o relatime`, `-o atime`).
    Relatime,
    /// Never (`-o noatime`).
    Noatime,
    /// On every access (`-o strictatime`).
    Strictatime,
}

impl From<AtimeArg> for Atime {
    fn from(atime: AtimeArg) -> Atime {
        match atime {
            AtimeArg::Relatime => Atime::Relatime,
            AtimeArg::Noatime => Atime::Noatime,
            AtimeArg::Strictatime => Atime::Strictatime,
        }
    }
}

/// The standard mount options. The defaults are the safe ones: read-write,
/// relatime, nosuid, nodev, exec.
#[derive(Debug, Clone, Args)]
pub struct MountFlagArgs {
    /// Mount options as mount(8) takes them, comma-separated: the standard
    /// ones (ro, rw, noatime, relatime, strictatime, atime, suid, nosuid,
    /// dev, nodev, exec, noexec, allow_other, default_permissions) and any
    /// long flag of this command without its dashes (transport=uring,
    /// cache_policy=adaptive, stats). Each becomes its flag where it
    /// stands, so a later option wins; an unknown one is refused by name.
    /// Options that only mount(8) acts on (_netdev, nofail, noauto, user,
    /// x-*) are accepted and ignored.
    #[arg(short = 'o', value_name = "OPT[,OPT...]", help_heading = HEADING)]
    pub options: Vec<String>,
    /// Mount read-only: writes fail with EROFS (-o ro).
    #[arg(long, help_heading = HEADING, visible_alias = "ro", overrides_with = "read_write")]
    pub read_only: bool,
    /// Mount read-write (the default; -o rw): undoes an earlier --read-only.
    #[arg(long, help_heading = HEADING, visible_alias = "rw", overrides_with = "read_only")]
    pub read_write: bool,
    /// How access times are updated (-o relatime|noatime|strictatime).
    #[arg(long, help_heading = HEADING, value_enum, default_value = "relatime")]
    pub atime: AtimeArg,
    /// Honour set-user-ID and set-group-ID bits and file capabilities when
    /// files of the mount are executed (-o suid). Off by default (nosuid):
    /// whoever can write the filesystem's metadata could otherwise make
    /// root programs. Root only.
    #[arg(long, help_heading = HEADING, overrides_with = "nosuid")]
    pub suid: bool,
    /// Ignore set-user-ID and set-group-ID bits (the default; -o nosuid).
    #[arg(long, help_heading = HEADING, overrides_with = "suid")]
    pub nosuid: bool,
    /// Allow opening device files of the mount (-o dev). Off by default
    /// (nodev), for the same reason as --suid. Root only.
    #[arg(long, help_heading = HEADING, overrides_with = "nodev")]
    pub dev: bool,
    /// Refuse to open device files (the default; -o nodev).
    #[arg(long, help_heading = HEADING, overrides_with = "dev")]
    pub nodev: bool,
    /// Refuse to execute files of the mount (-o noexec).
    #[arg(long, help_heading = HEADING, overrides_with = "exec")]
    pub noexec: bool,
    /// Allow executing files (the default; -o exec).
    #[arg(long, help_heading = HEADING, overrides_with = "noexec")]
    pub exec: bool,
}

impl MountFlagArgs {
    /// When the filesystem should update access times: as asked, and never
    /// on a read-only mount (the kernel refuses every change there).
    pub fn effective_atime(&self) -> Atime {
        if self.read_only {
            Atime::Noatime
        } else {
            self.atime.into()
        }
    }

    /// Sets the flags of `options` from these, refusing `--suid` and
    /// `--dev` to a caller other than root (whose mount would otherwise let
    /// its files act with privileges the caller does not have).
    pub fn apply(&self, options: &mut MountOptions) -> anyhow::Result<()> {
        self.apply_as(kmod_shim::creds::effective_uid(), options)
    }

    fn apply_as(&self, euid: u32, options: &mut MountOptions) -> anyhow::Result<()> {
        for (asked, name) in [(self.suid, "--suid (-o suid)"), (self.dev, "--dev (-o dev)")] {
            if asked && euid != 0 {
                bail!("{name} needs root (effective uid 0; this is uid {euid})");
            }
        }
        options.read_only = self.read_only;
        options.nosuid = !self.suid;
        options.nodev = !self.dev;
        options.noexec = self.noexec;
        options.atime = self.atime.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// As the subcommands that flatten the group are.
    #[derive(Debug, Parser)]
    #[command(args_override_self = true)]
    struct Cli {
        #[command(flatten)]
        flags: MountFlagArgs,
    }

    fn options(args: &[&str], euid: u32) -> anyhow::Result<MountOptions> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?;
        let mut options = MountOptions::new("src", "xfused");
        cli.flags.apply_as(euid, &mut options)?;
        Ok(options)
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let o = options(&[], 1000).unwrap();
        assert!(!o.read_only && o.nosuid && o.nodev && !o.noexec);
        assert_eq!(o.atime, Atime::Relatime);
    }

    #[test]
    fn the_later_of_a_pair_wins() {
        let o = options(&["--ro", "--rw", "--suid", "--nosuid", "--noexec"], 0).unwrap();
        assert!(!o.read_only && o.nosuid && o.noexec);
        let o = options(
            &["--rw", "--read-only", "--nodev", "--dev", "--noexec", "--exec"],
            0,
        )
        .unwrap();
        assert!(o.read_only && !o.nodev && !o.noexec);
        let o = options(&["--atime", "noatime", "--atime", "strictatime"], 0).unwrap();
        assert_eq!(o.atime, Atime::Strictatime);
    }

    #[test]
    fn suid_and_dev_are_for_root_only() {
        let e = options(&["--suid"], 1000).unwrap_err().to_string();
        assert!(e.contains("--suid") && e.contains("root"), "{e}");
        let e = options(&["--dev"], 1000).unwrap_err().to_string();
        assert!(e.contains("--dev"), "{e}");
        let o = options(&["--suid", "--dev"], 0).unwrap();
        assert!(!o.nosuid && !o.nodev);
        // Asking for the safe side needs nothing.
        assert!(options(&["--nosuid", "--nodev"], 1000).is_ok());
    }
}
