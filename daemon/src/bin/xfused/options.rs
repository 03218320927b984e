//! Mount options as mount(8) and fstab write them (`-o ro,transport=uring`),
//! turned into xfused's own flags before the command line is parsed, and
//! xfused run as mount(8)'s helper, `mount.fuse.xfused`.
//!
//! One translation for both: mount(8) runs `mount.fuse.xfused URL
//! MOUNTPOINT -o OPTIONS` (with `-n`, `-s`, `-v`, `-f` at times), which is
//! rewritten to `xfused mount --background --meta URL -o OPTIONS
//! MOUNTPOINT`; then every `-o` of `xfused mount` and `xfused passthrough`
//! becomes flags, one option at a time in its place, so clap checks the
//! values and a later option wins as in fstab. An option is a standard one
//! ([`STANDARD`]), one only mount(8) acts on ([`IGNORED`]), or a long flag of
//! the subcommand with `_` for `-` (`cache_policy=adaptive`, `stats`);
//! anything else is refused by name.

use std::ffi::OsString;

use clap::{ArgAction, Command};

/// The name mount(8) runs for `-t fuse.xfused` (found in /sbin).
pub const HELPER_NAME: &str = "mount.fuse.xfused";

/// The subcommands that take `-o`.
const MOUNTING_SUBCOMMANDS: [&str; 2] = ["mount", "passthrough"];

/// mount(8)'s standard options and the flags they are.
const STANDARD: &[(&str, &[&str])] = &[
    ("ro", &["--read-only"]),
    ("rw", &["--read-write"]),
    ("noatime", &["--atime", "noatime"]),
    ("relatime", &["--atime", "relatime"]),
    ("strictatime", &["--atime", "strictatime"]),
    // mount(8): "do not use noatime": the kernel's default, relatime.
    ("atime", &["--atime", "relatime"]),
    ("suid", &["--suid"]),
    ("nosuid", &["--nosuid"]),
    ("dev", &["--dev"]),
    ("nodev", &["--nodev"]),
    ("exec", &["--exec"]),
    ("noexec", &["--noexec"]),
    // Every user may access an xfused mount unless --owner-only.
    ("allow_other", &[]),
    ("default_permissions", &["--permissions", "kernel"]),
];

/// Options that mount(8), systemd or the fstab reader act on, passed to
/// helpers all the same; nothing for xfused to do (besides `x-*` and
/// `comment=*`).
const IGNORED: &[&str] = &[
    "defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser", "users", "owner", "group",
];

/// Long flags that are not options: what a command is, not how it mounts.
const NOT_OPTIONS: &[&str] = &["help", "version"];

/// A `-o` option xfused does not take, or one written wrong.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// No such option.
    #[error(
        "unknown mount option '{0}' (see xfused {1} --help: long flags without dashes, or a standard option)"
    )]
    Unknown(String, String),
    /// A flag that takes a value, without one.
    #[error("mount option '{0}' needs a value: {0}=VALUE")]
    NeedsValue(String),
    /// A flag that takes no value, with one.
    #[error("mount option '{0}' takes no value")]
    TakesNoValue(String),
    /// An option the helper sets itself.
    #[error("mount option '{0}' is not for the mount helper: {1}")]
    NotForHelper(String, &'static str),
    /// remount (mount -o remount).
    #[error(
        "mount option 'remount': an xfused mount cannot be changed in place; unmount it and mount again"
    )]
    Remount,
    /// `-o` as the last argument.
    #[error("-o needs an option list (-o OPT[,OPT...])")]
    MissingList,
    /// The helper's command line.
    #[error("usage: {HELPER_NAME} URL MOUNTPOINT [-o OPT[,OPT...]] [-fnsv] ({0})")]
    HelperUsage(String),
}

/// The command line to parse, and whether to stop after parsing it.
#[derive(Debug)]
pub struct Invocation {
    /// `xfused SUBCOMMAND ...` with every `-o` expanded.
    pub args: Vec<OsString>,
    /// mount(8)'s `-f` (fake): check everything, mount nothing.
    pub fake: bool,
    /// The name errors go under (`xfused`, or the helper's).
    pub program: String,
}

/// Rewrites this process's command line for the parser: the helper's form
/// into `xfused mount --background ...`, and every `-o` into flags of the
/// subcommand `cli` has.
pub fn command_line(argv: Vec<OsString>, cli: &Command) -> Result<Invocation, OptionError> {
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (args, fake, program) = if invoked_as == HELPER_NAME {
        let (args, fake) = helper_command_line(&argv[1..])?;
        (args, fake, HELPER_NAME.to_string())
    } else {
        (argv, false, "xfused".to_string())
    };
    Ok(Invocation {
        args: expand(args, cli, invoked_as == HELPER_NAME)?,
        fake,
        program,
    })
}

/// `URL MOUNTPOINT [-o OPTS] [-f] [-n] [-s] [-v] [-t TYPE]`, in any order
/// (mount(8) puts the flags after the two operands).
fn helper_command_line(args: &[OsString]) -> Result<(Vec<OsString>, bool), OptionError> {
    let mut operands = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        match arg.as_ref() {
            "-o" => {
                options.push(args.get(i + 1).ok_or(OptionError::MissingList)?.clone());
                i += 1;
            }
            // The type mount(8) was given: fuse.xfused, or we would not run.
            "-t" => i += 1,
            "-f" => fake = true,
            // No /etc/mtab to write, sloppy and verbose: nothing to do.
            "-n" | "-s" | "-v" => {}
            _ if arg.starts_with("-o") => options.push(OsString::from(&arg[2..])),
            _ if arg.starts_with('-') && arg.len() > 1 => {
                return Err(OptionError::HelperUsage(format!("unknown flag {arg}")))
            }
            _ => operands.push(args[i].clone()),
        }
        i += 1;
    }
    let [url, mountpoint] = <[OsString; 2]>::try_from(operands).map_err(|o| {
        OptionError::HelperUsage(format!("expected URL and MOUNTPOINT, got {} operands", o.len()))
    })?;
    let mut out: Vec<OsString> = ["xfused", "mount", "--background", "--meta"]
        .into_iter()
        .map(OsString::from)
        .collect();
    out.push(url);
    for list in options {
        out.push("-o".into());
        out.push(list);
    }
    out.push("--".into());
    out.push(mountpoint);
    Ok((out, fake))
}

/// Replaces each `-o LIST` / `-oLIST` after a mounting subcommand's name
/// with the flags of LIST, up to a `--`.
fn expand(args: Vec<OsString>, cli: &Command, helper: bool) -> Result<Vec<OsString>, OptionError> {
    let Some(sub_at) = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|p| p + 1)
    else {
        return Ok(args);
    };
    let sub_name = args[sub_at].to_string_lossy().into_owned();
    let Some(sub) = MOUNTING_SUBCOMMANDS
        .contains(&sub_name.as_str())
        .then(|| cli.find_subcommand(&sub_name))
        .flatten()
    else {
        return Ok(args);
    };
    let mut out: Vec<OsString> = args[..=sub_at].to_vec();
    let mut rest = args[sub_at + 1..].iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        let list = if text == "--" {
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        } else if text == "-o" {
            rest.next()
                .ok_or(OptionError::MissingList)?
                .to_string_lossy()
                .into_owned()
        } else if let Some(list) = text.strip_prefix("-o") {
            list.to_string()
        } else {
            out.push(arg.clone());
            continue;
        };
        for option in list.split(',').filter(|o| !o.is_empty()) {
            out.extend(flags_of(option, sub, helper)?.into_iter().map(OsString::from));
        }
    }
    Ok(out)
}

/// The flags of one option of subcommand `sub`.
fn flags_of(option: &str, sub: &Command, helper: bool) -> Result<Vec<String>, OptionError> {
    let (name, value) = match option.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    if name == "remount" {
        return Err(OptionError::Remount);
    }
    if IGNORED.contains(&name) || name.starts_with("x-") || name == "comment" {
        return Ok(Vec::new());
    }
    if let Some((_, flags)) = STANDARD.iter().find(|(n, _)| *n == name) {
        if value.is_some() {
            return Err(OptionError::TakesNoValue(name.to_string()));
        }
        return Ok(flags.iter().map(|f| (*f).to_string()).collect());
    }
    let long = name.replace('_', "-");
    if helper {
        match long.as_str() {
            "meta" => {
                return Err(OptionError::NotForHelper(
                    name.to_string(),
                    "the URL is mount's first operand (mount -t fuse.xfused URL MOUNTPOINT)",
                ))
            }
            "background" => {
                return Err(OptionError::NotForHelper(
                    name.to_string(),
                    "mount(8) always returns once the mount is ready",
                ))
            }
            _ => {}
        }
    }
    let unknown = || OptionError::Unknown(name.to_string(), sub.get_name().to_string());
    if NOT_OPTIONS.contains(&long.as_str()) {
        return Err(unknown());
    }
    let arg = sub
        .get_arguments()
        .find(|a| {
            a.get_long() == Some(long.as_str())
                || a.get_all_aliases()
                    .is_some_and(|aliases| aliases.contains(&long.as_str()))
        })
        .ok_or_else(unknown)?;
    let primary = format!("--{}", arg.get_long().unwrap_or(&long));
    let takes_value = !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
    );
    match (takes_value, value) {
        (true, Some(value)) => Ok(vec![primary, value.to_string()]),
        (true, None) => Err(OptionError::NeedsValue(name.to_string())),
        (false, None) => Ok(vec![primary]),
        (false, Some(_)) => Err(OptionError::TakesNoValue(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::Cli;

    fn line(args: &[&str]) -> Result<Vec<String>, OptionError> {
        let cli = Cli::command();
        let inv = command_line(args.iter().map(OsString::from).collect(), &cli)?;

        Ok(inv.args.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn options_become_flags_in_place() {
        assert_eq!(
            line(&[
                "xfused",
                "mount",
                "-o",
                "ro,transport=uring,noatime",
                "--stats",
                "-orw,stats",
                "/m"
            ])
            .unwrap(),
            [
                "xfused",
                "mount",
                "--read-only",
                "--transport",
                "uring",
                "--atime",
                "noatime",
                "--stats",
                "--read-write",
                "--stats",
                "/m"
            ]
        );
        assert_eq!(
            line(&[
                "xfused",
                "passthrough",
                "-o",
                "nosuid,nodev,noexec,cache_policy=adaptive,_netdev",
                "/s",
                "/m"
            ])
            .unwrap(),
            [
                "xfused",
                "passthrough",
                "--nosuid",
                "--nodev",
                "--noexec",
                "--cache-policy",
                "adaptive",
                "/s",
                "/m"
            ]
        );
        // Other subcommands, and whatever follows `--`, are left alone.
        assert_eq!(
            line(&["xfused", "stats", "-o", "x"]).unwrap(),
            ["xfused", "stats", "-o", "x"]
        );
        assert_eq!(
            line(&["xfused", "mount", "--", "-o"]).unwrap(),
            ["xfused", "mount", "--", "-o"]
        );
    }

    #[test]
    fn the_helper_mounts_in_the_background_with_the_url_as_meta() {
        let inv = command_line(
            [
                "/sbin/mount.fuse.xfused",
                "tcp://127.0.0.1:26000",
                "/mnt/x",
                "-o",
                "rw,nosuid,nodev,x-systemd.automount,log_file=/tmp/l",
                "-n",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
            &Cli::command(),
        )
        .unwrap();
        assert_eq!(inv.program, HELPER_NAME);
        assert!(!inv.fake);
        let args: Vec<_> = inv.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "xfused",
                "mount",
                "--background",
                "--meta",
                "tcp://127.0.0.1:26000",
                "--read-write",
                "--nosuid",
                "--nodev",
                "--log-file",
                "/tmp/l",
                "--",
                "/mnt/x"
            ]
        );
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        for (args, named) in [
            (
                &["xfused", "mount", "-o", "ro,bogus_opt", "/m"][..],
                "'bogus_opt'",
            ),
            (
                &["xfused", "mount", "-o", "transport", "/m"][..],
                "'transport' needs a value",
            ),
            (
                &["xfused", "mount", "-o", "stats=1", "/m"][..],
                "'stats' takes no value",
            ),
            (
                &["xfused", "mount", "-o", "ro=1", "/m"][..],
                "'ro' takes no value",
            ),
            (&["xfused", "mount", "-o", "help", "/m"][..], "'help'"),
            (&["xfused", "mount", "-o", "remount,ro", "/m"][..], "'remount'"),
            (
                &["mount.fuse.xfused", "u", "/m", "-o", "meta=tcp://x:1"][..],
                "'meta'",
            ),
            (&["mount.fuse.xfused", "u"][..], "URL and MOUNTPOINT"),
            (&["xfused", "mount", "/m", "-o"][..], "-o needs"),
        ] {
            let e = line(args).unwrap_err().to_string();
            assert!(e.contains(named), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_later_option_wins_over_an_earlier_one() {
        let args = line(&[
            "xfused",
            "mount",
            "-o",
            "noatime,transport=dev,ro",
            "-o",
            "strictatime,transport=uring,rw",
            "/m",
        ])
        .unwrap();
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let crate::Command::Mount(mount) = cli.command else {
            panic!("not a mount: {args:?}")
        };
        let debug = format!("{mount:?}");
        for wanted in ["atime: Strictatime", "transport: Uring", "read_only: false"] {
            assert!(debug.contains(wanted), "{wanted} not in {debug}");
        }
    }

    #[test]
    fn fake_mounts_check_and_stop() {
        let inv = command_line(
            ["mount.fuse.xfused", "embedded:/x", "/m", "-f"]
                .iter()
                .map(OsString::from)
                .collect(),
            &Cli::command(),
        )
        .unwrap();
        assert!(inv.fake);
    }
}
