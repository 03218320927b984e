//! Harness for the integration tests that mount for real.
//!
//! [`Mount::start`] runs `xfused passthrough` on a fresh temporary SOURCE and
//! MOUNTPOINT and waits until the kernel lists the mount as `fuse.xfused`;
//! dropping the [`Mount`] stops the daemon with SIGTERM, checks that it exited
//! 0 and took its mount with it, and otherwise kills it and detaches the mount,
//! so no test leaves a mount behind, pass or fail.
//!
//! The transport under test comes from `XFUSE_TEST_TRANSPORT` (default `dev`),
//! so the same suite runs on every transport.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod fallocate;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// How long the daemon may take to show its mount after being spawned.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to exit after SIGTERM or SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The filesystem type the daemon's mounts carry in /proc/self/mountinfo.
pub const FSTYPE: &str = "fuse.xfused";
/// Environment variable naming the transport under test.
pub const TRANSPORT_ENV: &str = "XFUSE_TEST_TRANSPORT";
/// How many bytes of the daemon's log a failure message shows (the tail).
const LOG_TAIL_BYTES_MAX: usize = 16 * 1024;
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The transport the suite runs on: `$XFUSE_TEST_TRANSPORT`, or `dev`.
pub fn transport() -> String {
    std::env::var(TRANSPORT_ENV).unwrap_or_else(|_| "dev".to_owned())
}

/// Extra daemon flags for the whole suite: `$XFUSE_TEST_ARGS`, split on
/// spaces (e.g. `--passthrough`, to run every test on a passthrough mount).
pub const ARGS_ENV: &str = "XFUSE_TEST_ARGS";

/// The flags of [`ARGS_ENV`].
pub fn suite_args() -> Vec<String> {
    std::env::var(ARGS_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Set to `1` by the test command (scripts/test.sh), which installed every
/// tool the suite uses: a missing tool is then a failure, not a skip.
pub const STRICT_ENV: &str = "XFUSE_TEST_STRICT";
/// A file where skipped tests are recorded, one line each (`test\treason`),
/// so the test command's closing line counts them as skipped, not passed
/// (libtest has no runtime skip: a test that returns early shows as passed).
pub const SKIP_LOG_ENV: &str = "XFUSE_SKIP_LOG";

/// Records that the calling test did not run, and why. The test must return
/// right after. The test's name is its thread's (libtest names it so).
pub fn skip(reason: &str) {
    let name = thread::current().name().unwrap_or("(unnamed test)").to_owned();
    eprintln!("skipped: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        let line = format!("{name}\t{}\n", reason.replace(['\n', '\t'], " "));
        // One write of the whole line, O_APPEND: lines from tests running
        // in parallel do not interleave.
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("recording a skip in {}: {e}", Path::new(&path).display()));
    }
}

/// The calling test cannot run here because `what` is missing: a failure
/// under [`STRICT_ENV`], a recorded [`skip`] otherwise. The test must
/// return right after.
pub fn missing(what: &str) {
    if std::env::var(STRICT_ENV).as_deref() == Ok("1") {
        panic!("{STRICT_ENV}=1 and this test cannot run: {what}");
    }
    skip(what);
}

/// Which filesystem a [`Mount`] runs.
#[derive(Debug, Clone)]
enum Kind {
    /// `xfused passthrough SRC MNT`.
    Passthrough,
    /// `xfused mount --data SRC MNT` (or another DATA).
    Meta(Option<PathBuf>),
    /// `xfused mount MNT` (no --data: file data in the storage cluster).
    Cluster,
}

/// A running `xfused passthrough` (or `xfused mount`) daemon and its mount.
#[derive(Debug)]
pub struct Mount {
    /// `None` once the daemon has been reaped.
    child: Option<Child>,
    pid: Pid,
    /// The test killed the daemon with SIGKILL on purpose: a mount left
    /// behind is then expected, not a bug.
    killed_on_purpose: bool,
    /// The exit status, once reaped.
    exit: Option<ExitStatus>,
    src: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    /// Holds `src/`, `mnt/` and `daemon.log`; removed last (fields drop
    /// after `Drop::drop` has unmounted).
    _root: TempDir,
}

impl Mount {
    /// Spawns `xfused passthrough --transport $XFUSE_TEST_TRANSPORT
    /// EXTRA_ARGS.. SOURCE MOUNTPOINT` on fresh temporary directories and
    /// waits until the mount is listed as `fuse.xfused`. If `extra_args` name
    /// a `--transport` themselves, that one is used instead.
    ///
    /// Panics, with the daemon's log, if the daemon exits first or the mount
    /// does not appear within [`MOUNT_TIMEOUT`].
    pub fn start(extra_args: &[&str]) -> Mount {
        Mount::spawn(Kind::Passthrough, extra_args)
    }

    /// Spawns `xfused mount --transport $XFUSE_TEST_TRANSPORT --data DATA
    /// EXTRA_ARGS.. MOUNTPOINT`: the distributed filesystem on its embedded
    /// metadata engine, data and metadata in a fresh DATA directory (what
    /// [`Mount::src`] returns). `$XFUSE_TEST_ARGS` does not apply (its flags
    /// are passthrough's).
    pub fn start_meta(extra_args: &[&str]) -> Mount {
        Mount::spawn(Kind::Meta(None), extra_args)
    }

    /// Spawns `xfused mount --transport $XFUSE_TEST_TRANSPORT
    /// EXTRA_ARGS.. MOUNTPOINT` without `--data`: with `--meta tcp://` in
    /// EXTRA_ARGS and storage targets registered, file data goes to the
    /// cluster.
    pub fn start_cluster(extra_args: &[&str]) -> Mount {
        Mount::spawn(Kind::Cluster, extra_args)
    }

    /// Like [`Mount::start_meta`] on an existing DATA directory (to mount a
    /// namespace again after a previous mount of it ended).
    pub fn start_meta_on(data: &Path, extra_args: &[&str]) -> Mount {
        Mount::spawn(Kind::Meta(Some(data.to_path_buf())), extra_args)
    }

    fn spawn(kind: Kind, extra_args: &[&str]) -> Mount {
        let root = tempfile::Builder::new()
            .prefix("xfuse-it.")
            .tempdir()
            .expect("creating the test's temporary directory");
        let root_path = root
            .path()
            .canonicalize()
            .expect("canonicalizing the temporary directory");
        let src = root_path.join("src");
        let mnt = root_path.join("mnt");
        let log = root_path.join("daemon.log");
        for dir in [&src, &mnt] {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let log_file = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let log_file_for_stdout = log_file.try_clone().expect("dup of the log file");

        let mut args: Vec<String> = vec![match kind {
            Kind::Passthrough => "passthrough".into(),
            Kind::Meta(_) | Kind::Cluster => "mount".into(),
        }];
        // A test that names its transport keeps it; the others run on the
        // suite's (xfused takes `--transport` once).
        let pins_transport = extra_args
            .iter()
            .any(|a| *a == "--transport" || a.starts_with("--transport="));
        if !pins_transport {
            args.extend(["--transport".to_owned(), transport()]);
        }
        match kind {
            Kind::Passthrough => {
                args.extend(suite_args());
                args.extend(extra_args.iter().map(|a| (*a).to_owned()));
                args.push(src.display().to_string());
            }
            Kind::Meta(ref data) => {
                let data = data.as_deref().unwrap_or(&src);
                args.extend(["--data".to_owned(), data.display().to_string()]);
                args.extend(extra_args.iter().map(|a| (*a).to_owned()));
            }
            Kind::Cluster => args.extend(extra_args.iter().map(|a| (*a).to_owned())),
        }
        args.push(mnt.display().to_string());

        let child = Command::new(env!("CARGO_BIN_EXE_xfused"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file_for_stdout))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", env!("CARGO_BIN_EXE_xfused")));
        let pid = Pid::from_child(&child);
        let mut mount = Mount {
            child: Some(child),
            pid,
            killed_on_purpose: false,
            exit: None,
            src,
            mnt,
            log,
            args,
            _root: root,
        };
        mount.wait_for_mount();
        mount
    }

    fn wait_for_mount(&mut self) {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(fstype) = mount_fstype(&self.mnt) {
                if fstype == FSTYPE {
                    return;
                }
                // Another filesystem here means the daemon mounted the wrong
                // thing; leave it for Drop to clean up and report.
                panic!(
                    "{} is mounted with type {fstype:?}, expected {FSTYPE:?}\n{}",
                    self.mnt.display(),
                    self.describe()
                );
            }
            if let Some(status) = self.try_reap() {
                panic!(
                    "xfused exited with {status} before its mount appeared at {}\n{}",
                    self.mnt.display(),
                    self.describe()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {FSTYPE} mount at {} after {MOUNT_TIMEOUT:?}\n{}",
                    self.mnt.display(),
                    self.describe()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The directory the daemon serves.
    pub fn src(&self) -> &Path {
        &self.src
    }

    /// Where it is mounted.
    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Whether a filesystem is mounted at [`Mount::mnt`] (from
    /// /proc/self/mountinfo; never touches the mount, so it cannot hang).
    pub fn is_mounted(&self) -> bool {
        mount_fstype(&self.mnt).is_some()
    }

    /// Sends `signal` to the daemon (which must not have been reaped yet).
    pub fn signal(&self, signal: Signal) {
        assert!(
            self.child.is_some(),
            "signal {signal:?} to a daemon already reaped"
        );
        kill_process(self.pid, signal).unwrap_or_else(|e| panic!("kill({}, {signal:?}): {e}", self.pid()));
    }

    /// Waits up to `timeout` for the daemon to exit; its status, or `None`
    /// if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the daemon with SIGKILL and reaps it. Its mount stays (the
    /// kernel aborts the connection); the test must unmount it, or Drop will.
    pub fn kill(&mut self) {
        self.killed_on_purpose = true;
        self.signal(Signal::KILL);
        if self.wait_exit(STOP_TIMEOUT).is_none() {
            panic!(
                "xfused (pid {}) still alive {STOP_TIMEOUT:?} after SIGKILL",
                self.pid()
            );
        }
    }

    /// Stops the daemon with SIGTERM and returns its exit status; panics if
    /// it does not exit within [`STOP_TIMEOUT`]. Dropping the returned-from
    /// `Mount` then checks that the mount is gone.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_with(Signal::TERM)
    }

    /// Like [`Mount::stop`] with another signal (e.g. SIGINT).
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        self.signal(signal);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let description = self.describe();
                self.force_cleanup();
                panic!("xfused did not exit within {STOP_TIMEOUT:?} of {signal:?}\n{description}");
            }
        }
    }

    /// The daemon's log (stdout and stderr) so far.
    /// Runs scripts/pjdfstest.sh on this mount (opening the mount's
    /// directories to the unprivileged users pjdfstest switches to). Returns
    /// the script's exit status, its output, and its closing summary line.
    pub fn run_pjdfstest(&self) -> PjdfstestRun {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.src(), self.mnt().parent().unwrap()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pjdfstest.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(self.mnt())
            .output()
            .expect("running scripts/pjdfstest.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary = stdout
            .lines()
            .chain(stderr.lines())
            .rfind(|l| l.starts_with("pjdfstest: "))
            .unwrap_or("(no summary)")
            .to_owned();
        PjdfstestRun {
            status: out.status,
            stdout,
            stderr,
            summary,
        }
    }

    pub fn daemon_log(&self) -> String {
        let mut text = String::new();
        if let Err(e) = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text)) {
            return format!("(cannot read {}: {e})", self.log.display());
        }
        text
    }

    /// How many file descriptors the daemon holds open now.
    pub fn daemon_fd_count(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {dir}: {e}"))
            .count()
    }

    /// The command line, the exit status if any, and the tail of the log:
    /// what a failure message needs.
    pub fn describe(&self) -> String {
        let log = self.daemon_log();
        let tail = if log.len() > LOG_TAIL_BYTES_MAX {
            let mut start = log.len() - LOG_TAIL_BYTES_MAX;
            while !log.is_char_boundary(start) {
                start += 1;
            }
            format!("[... {start} bytes cut ...]\n{}", &log[start..])
        } else {
            log
        };
        let exit = match self.exit {
            Some(status) => format!("exited with {status}"),
            None => "running".to_owned(),
        };
        format!(
            "--- xfused {:?} (pid {}, {exit}); log {}:\n{tail}--- end of xfused log",
            self.args,
            self.pid(),
            self.log.display()
        )
    }

    fn try_reap(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("waitpid({}): {e}", self.pid()),
        }
    }

    /// SIGKILL the daemon if alive, then detach whatever is still mounted.
    fn force_cleanup(&mut self) {
        if self.child.is_some() {
            let _ = kill_process(self.pid, Signal::KILL);
            let _ = self.wait_exit(STOP_TIMEOUT);
        }
        // A mount stacked on another (a daemon that mounted twice) needs
        // one detach per layer.
        for _ in 0..4 {
            if !self.is_mounted() {
                break;
            }
            if let Err(e) = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH) {
                eprintln!("umount -l {}: {e}", self.mnt.display());
                break;
            }
        }
    }
}

/// One run of scripts/pjdfstest.sh ([`Mount::run_pjdfstest`]).
#[derive(Debug)]
pub struct PjdfstestRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// `pjdfstest: N passed, M failed, K skipped`, or `(no summary)`.
    pub summary: String,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mut problems: Vec<String> = Vec::new();
        if self.child.is_some() {
            let _ = kill_process(self.pid, Signal::TERM);
            match self.wait_exit(STOP_TIMEOUT) {
                Some(status) if status.success() => {}
                Some(status) => {
                    problems.push(format!("xfused exited with {status} after SIGTERM, expected 0"))
                }
                None => problems.push(format!("xfused did not exit within {STOP_TIMEOUT:?} of SIGTERM")),
            }
        }
        if self.is_mounted() && !self.killed_on_purpose {
            problems.push(format!(
                "{} still mounted after xfused exited",
                self.mnt.display()
            ));
        }
        let description = self.describe();
        self.force_cleanup();
        if self.is_mounted() {
            problems.push(format!(
                "{} could not be unmounted by the harness",
                self.mnt.display()
            ));
        }
        if problems.is_empty() {
            if thread::panicking() {
                eprintln!("{description}");
            }
            return;
        }
        let message = format!("{}\n{description}", problems.join("\n"));
        if thread::panicking() {
            eprintln!("while unwinding: {message}");
        } else {
            panic!("{message}");
        }
    }
}

/// The filesystem type of the topmost mount at `path` in
/// /proc/self/mountinfo, if anything is mounted exactly there.
pub fn mount_fstype(path: &Path) -> Option<String> {
    kmod_shim::mountinfo::fs_type_at(path).expect("reading /proc/self/mountinfo")
}

/// The errno of an I/O error, or a panic naming `what` if it has none.
pub fn errno(err: &io::Error, what: &str) -> i32 {
    err.raw_os_error()
        .unwrap_or_else(|| panic!("{what}: error without errno: {err}"))
}

/// Asserts that `result` failed with `expected` (an errno), naming `what`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(result: io::Result<T>, expected: i32, what: &str) {
    match result {
        Ok(value) => panic!(
            "{what}: succeeded with {value:?}, expected {}",
            io::Error::from_raw_os_error(expected)
        ),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(expected),
            "{what}: failed with {e}, expected {}",
            io::Error::from_raw_os_error(expected)
        ),
    }
}

/// Like [`assert_errno`] for a rustix result.
#[track_caller]
pub fn assert_rustix_errno<T: std::fmt::Debug>(result: rustix::io::Result<T>, expected: i32, what: &str) {
    assert_errno(result.map_err(io::Error::from), expected, what);
}

/// `len` reproducible pseudo-random bytes for `seed` (xorshift64*), so that
/// misplaced blocks do not compare equal the way a constant fill would.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Length and SHA-256 (hex) of the file at `path`, read in 128 KiB chunks.
pub fn file_digest(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `check` until it returns `Ok`, for at most `timeout`: the way a
/// test waits for something that happens asynchronously (a release, a
/// report, another mount's view). `check` says what it saw with `Err`; on
/// timeout the test fails with that last observation.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {seen}")
            }
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Runs `f` on a helper thread and waits up to `timeout` for it; `None` if
/// it is still running then (it is left blocked, e.g. in a hung syscall, so
/// the test can fail instead of hanging).
pub fn with_timeout<T, F>(timeout: Duration, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

/// Creates (or empties) the file at `path`, open for reading and writing.
#[track_caller]
pub fn create_rw(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Spawns `xfused ARGS` (the binary under test), its stdout and stderr
/// going to the file `log`.
pub fn spawn_xfused(args: &[String], log: &Path) -> Child {
    let file = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    Command::new(env!("CARGO_BIN_EXE_xfused"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("dup of the log file")))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning xfused {args:?}: {e}"))
}

/// Runs a command to completion, panicking with its output if it fails.
#[track_caller]
pub fn run(cmd: &mut Command) -> std::process::Output {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
