//! `xfused mount --background` (and mount(8)'s helper): the command returns
//! once the mount is serving, the daemon carries on in the background.
//!
//! Why fork and not a re-exec of the binary: `main` detaches right after
//! parsing the command line, before the tracing subscriber, the signal
//! thread or any worker exists, so the process has one thread and the
//! child may run on (`kmod_shim::process::fork_single_threaded` checks
//! it and refuses otherwise). A re-exec would have to hand the parsed
//! command line (with `-o` expanded) and the readiness pipe across exec
//! for nothing gained.
//!
//! Readiness: the parent holds the read end of a pipe and the child the
//! write end. The child writes `ready` once the kernel has the mount and
//! the transport's workers answer requests (`Mounting::on_serving`), or its
//! error if mounting failed, and closes it; the parent exits 0 on `ready`,
//! else non-zero with the child's message. A child that dies without a
//! word closes the pipe by dying, and the parent reports how it ended.
//!
//! The working directory is kept, so relative paths on the command line
//! (`--data ./d`) keep their meaning; mount(8) and systemd start it in `/`.

use std::fs::{File, OpenOptions};
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context as _;
use kmod_shim::process::{fork_single_threaded, new_session, replace_stdio, wait_child, Forked};

/// What the child writes when the mount is serving.
const READY: &str = "ready\n";
/// Where journald accepts log streams (sd_journal_stream_fd(3)).
const JOURNAL_STREAM_SOCKET: &str = "/run/systemd/journal/stdout";
/// The directory of the default log files.
const LOG_DIR_DEFAULT: &str = "/var/log/xfused";
/// The identifier of the daemon's journal entries (`journalctl -t xfused`).
const JOURNAL_IDENTIFIER: &str = "xfused";

/// Where a background daemon's log (stdout and stderr) goes.
#[derive(Debug, Clone)]
pub enum LogDestination {
    /// Appended to this file.
    File(PathBuf),
    /// The journal when journald listens, else
    /// `/var/log/xfused/mount-MOUNTPOINT.log`.
    JournalOrDefault {
        /// The mount's mountpoint, which names the default file.
        mountpoint: PathBuf,
    },
}

/// The side of [`detach`] the caller is on.
#[derive(Debug)]
pub enum Side {
    /// The command's process: it has waited for the child and must exit
    /// with this.
    Parent(ExitCode),
    /// The background daemon.
    Child(Detached),
}

/// The background daemon's line to the parent waiting for it.
#[derive(Debug)]
pub struct Detached {
    /// `None` once ready or failed was said.
    to_parent: Mutex<Option<PipeWriter>>,
}

/// Forks; the parent waits until the child says the mount is serving (or
/// why it is not) and returns [`Side::Parent`] with the exit code, the
/// child starts a new session and returns [`Side::Child`]. `program` names
/// the command in the parent's error message. Call while the process has
/// one thread (before logging is set up).
pub fn detach(program: &str) -> anyhow::Result<Side> {
    let (from_child, to_parent) = std::io::pipe().context("pipe for the daemon's readiness")?;
    match fork_single_threaded().context("going to the background")? {
        Forked::Parent { child } => {
            drop(to_parent);
            Ok(Side::Parent(wait_for_readiness(program, child, from_child)))
        }
        Forked::Child => {
            drop(from_child);
            new_session()?;
            Ok(Side::Child(Detached {
                to_parent: Mutex::new(Some(to_parent)),
            }))
        }
    }
}

fn wait_for_readiness(program: &str, child: i32, mut from_child: PipeReader) -> ExitCode {
    let mut said = String::new();
    // A read error leaves what was read; the child's exit status still says
    // how it went.
    let _ = from_child.read_to_string(&mut said);
    if said == READY {
        return ExitCode::SUCCESS;
    }
    let ended = wait_child(child);
    let said = said.trim_end();
    if said.is_empty() {
        match ended {
            Ok(how) => eprintln!("{program}: the daemon ended ({how}) before the mount was ready"),
            Err(e) => eprintln!("{program}: the daemon ended before the mount was ready ({e})"),
        }
    } else {
        eprintln!("{program}: {said}");
    }
    ExitCode::FAILURE
}

impl Detached {
    /// Points stdin at /dev/null and stdout and stderr at `log`; returns
    /// where they go, for the log's first line.
    pub fn redirect_output(&self, log: &LogDestination) -> anyhow::Result<String> {
        let null = File::open("/dev/null").context("opening /dev/null")?;
        let (output, described): (std::os::fd::OwnedFd, String) = match log {
            LogDestination::File(path) => (open_log_file(path)?.into(), path.display().to_string()),
            LogDestination::JournalOrDefault { mountpoint } => {
                match journal_stream(Path::new(JOURNAL_STREAM_SOCKET)) {
                    Some(stream) => (
                        stream.into(),
                        format!("the journal (identifier {JOURNAL_IDENTIFIER})"),
                    ),
                    None => {
                        let path = default_log_file(mountpoint);
                        std::fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o700)
                            .create(LOG_DIR_DEFAULT)
                            .with_context(|| format!("creating {LOG_DIR_DEFAULT}"))?;
                        (open_log_file(&path)?.into(), path.display().to_string())
                    }
                }
            }
        };
        replace_stdio(&null, &output)?;
        Ok(described)
    }

    /// Tells the parent the mount is serving; it exits 0.
    pub fn ready(&self) {
        self.say(READY);
    }

    /// Tells the parent why the mount failed; it prints it and exits
    /// non-zero. Nothing happens if ready was said already.
    pub fn failed(&self, why: &str) {
        self.say(&format!("{why}\n"));
    }

    fn say(&self, what: &str) {
        let writer = self.to_parent.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut writer) = writer {
            // A parent killed meanwhile has nobody to tell: EPIPE is fine.
            let _ = writer.write_all(what.as_bytes());
        }
    }
}

/// Opens `path` for appending, creating it private (0600), and makes an
/// existing one private too: the log names files and users.
fn open_log_file(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the log file {} private (0600)", path.display()))?;
    Ok(file)
}

/// `/var/log/xfused/mount-MOUNTPOINT.log`, the mountpoint's '/' made '-'.
fn default_log_file(mountpoint: &Path) -> PathBuf {
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let name: String = absolute
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '-' } else { c })
        .collect();
    let name = if name.is_empty() { "root".to_string() } else { name };
    Path::new(LOG_DIR_DEFAULT).join(format!("mount-{name}.log"))
}

/// A stream into the journal, if journald listens: the header of its
/// stream protocol (what sd_journal_stream_fd(3) sends) is written, so
/// each line that follows is one entry at priority info.
fn journal_stream(socket: &Path) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(socket).ok()?;
    // identifier, unit id (none), priority 6 (info), no level prefixes, no
    // forwarding to syslog, kmsg or the console.
    let header = format!("{JOURNAL_IDENTIFIER}\n\n6\n0\n0\n0\n0\n");
    stream.write_all(header.as_bytes()).ok()?;
    stream.shutdown(std::net::Shutdown::Read).ok()?;
    Some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_log_files_are_named_by_mountpoint() {
        assert_eq!(
            default_log_file(Path::new("/mnt/x/")),
            Path::new("/var/log/xfused/mount-mnt-x.log")
        );
        assert_eq!(
            default_log_file(Path::new("/")),
            Path::new("/var/log/xfused/mount-root.log")
        );
    }

    /// journald's side of the stream protocol: the header, then lines.
    #[test]
    fn the_journal_stream_starts_with_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stdout");
        assert!(journal_stream(&socket).is_none(), "no journald, no stream");
        let journald = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mut stream = journal_stream(&socket).expect("a stream");
        stream.write_all(b"a log line\n").unwrap();
        drop(stream);
        let (mut accepted, _) = journald.accept().unwrap();
        let mut got = String::new();
        accepted.read_to_string(&mut got).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines, ["xfused", "", "6", "0", "0", "0", "0", "a log line"]);
    }
}
