//! The backends under test, as processes: each round starts one on a fresh
//! empty directory with its own socket (all under one temporary directory),
//! replays the workload through [`super::Device`], waits for the backend to
//! exit after the frontend leaves, and checks the directory from the host.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::replay::{self, ReplayConfig, ReplayReport};
use super::{Device, GuestRam, ReplayError};

/// Guest memory of a replay: the rings and a 16 KiB slot per request in
/// flight need about 1 MiB; the rest stays untouched (the memfd is sparse).
pub const GUEST_MEMORY_BYTES: u64 = 64 << 20;
/// Entries per virtqueue (QEMU's `queue-size` for vhost-user-fs is 128 by
/// default; more leaves room for direct chains at depth 32).
pub const QUEUE_SIZE: u16 = 256;
/// How long a backend may take to create its socket, and to exit after the
/// frontend disconnected.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes of a backend's log quoted in an error.
const LOG_TAIL_BYTES_MAX: usize = 4096;

/// Which program serves the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `xfused virtiofs --socket S --source DIR`.
    Xfused,
    /// `virtiofsd --socket-path S --shared-dir DIR`.
    Virtiofsd,
    /// `xfused virtiofs --socket S --meta embedded:DIR/meta --data
    /// DIR/data`: the distributed filesystem, its embedded store and chunk
    /// store kept in DIR (which a later backend on DIR finds again).
    XfusedMeta,
}

/// A backend configuration: a program, its kind and extra flags.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Name in reports (`xfused`, `xfused --inode-fds`, `virtiofsd`).
    pub name: String,
    /// Which command line it takes.
    pub kind: BackendKind,
    /// The executable.
    pub program: PathBuf,
    /// Flags after the socket and directory.
    pub args: Vec<String>,
}

/// What one round of one backend gave.
#[derive(Debug, Clone)]
pub struct RoundResult {
    /// The replay's measurements.
    pub report: ReplayReport,
}

impl Backend {
    /// `xfused virtiofs` with `args` added (e.g. `--inode-fds`).
    pub fn xfused(program: &Path, args: &[&str]) -> Backend {
        let mut name = "xfused".to_string();
        for a in args {
            name.push(' ');
            name.push_str(a);
        }
        Backend {
            name,
            kind: BackendKind::Xfused,
            program: program.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// `xfused virtiofs --meta` on an embedded store (see
    /// [`BackendKind::XfusedMeta`]) with `args` added.
    pub fn xfused_meta(program: &Path, args: &[&str]) -> Backend {
        Backend {
            kind: BackendKind::XfusedMeta,
            name: format!("xfused --meta {}", args.join(" ")),
            ..Backend::xfused(program, args)
        }
    }

    /// virtiofsd without sandbox or seccomp filter (like xfused: the
    /// request path is measured, not isolation), `--cache auto`.
    pub fn virtiofsd(program: &Path) -> Backend {
        Backend {
            name: "virtiofsd".into(),
            kind: BackendKind::Virtiofsd,
            program: program.to_owned(),
            args: ["--sandbox", "none", "--seccomp", "none", "--cache", "auto"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn command(&self, socket: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.program);
        match self.kind {
            BackendKind::Xfused => {
                cmd.arg("virtiofs")
                    .arg("--socket")
                    .arg(socket)
                    .arg("--source")
                    .arg(dir);
            }
            BackendKind::Virtiofsd => {
                cmd.arg("--socket-path").arg(socket).arg("--shared-dir").arg(dir);
            }
            BackendKind::XfusedMeta => {
                let mut meta = std::ffi::OsString::from("embedded:");
                meta.push(dir.join("meta"));
                cmd.arg("virtiofs")
                    .arg("--socket")
                    .arg(socket)
                    .arg("--meta")
                    .arg(meta)
                    .arg("--data")
                    .arg(dir.join("data"));
            }
        }
        cmd.args(&self.args);
        cmd
    }

    fn fail(&self, reason: impl Into<String>) -> ReplayError {
        ReplayError::Backend {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// One round: a fresh directory under `work_dir`, the backend on it,
    /// the replay, the backend's exit, and the host's view of the directory
    /// checked.
    pub fn run_round(&self, work_dir: &Path, files: u32, depth: u32) -> Result<RoundResult, ReplayError> {
        let root = tempfile::Builder::new()
            .prefix("xfuse-replay.")
            .tempdir_in(work_dir)
            .map_err(|e| ReplayError::Setup(format!("temporary directory: {e}")))?;
        let share = root.path().join("share");
        std::fs::create_dir(&share)
            .map_err(|e| ReplayError::Setup(format!("mkdir {}: {e}", share.display())))?;
        let report = self.run_on(&share, root.path(), files, depth)?;
        let problems = replay::check_host_tree(&share, depth, files)
            .map_err(|e| self.fail(format!("reading the shared directory: {e}")))?;
        if !problems.is_empty() {
            return Err(self.fail(format!(
                "the host sees another tree than the replay made:\n{}",
                problems.join("\n")
            )));
        }
        Ok(RoundResult { report })
    }

    /// Serves `share` (an empty directory) with this backend, its socket
    /// and log in `scratch`, replays `depth` x `files`, and waits for the
    /// backend to exit 0 after the frontend left. The caller checks `share`.
    pub fn run_on(
        &self,
        share: &Path,
        scratch: &Path,
        files: u32,
        depth: u32,
    ) -> Result<ReplayReport, ReplayError> {
        let socket = scratch.join("vfs.sock");
        let log = scratch.join("backend.log");
        let mut running = Running::start(self, &socket, share, &log)?;
        let result = (|| {
            let ram = GuestRam::new(GUEST_MEMORY_BYTES)?;
            let mut device = Device::connect(&socket, ram, QUEUE_SIZE)?;
            // The handshake was answered: a sandboxed backend has forked
            // the server, whose CPU time is the one to measure.
            let config = ReplayConfig {
                files,
                depth,
                reply_timeout_ms: 10_000,
                backend_pid: Some(crate::procfs::server_pid(running.child.id())),
            };
            replay::run(&mut device, &config)
            // Dropping the device closes the socket: the VMM has left.
        })();
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                running.kill();
                return Err(match e {
                    ReplayError::Backend { .. } => e,
                    e => self.fail(format!("{e}\nbackend log:\n{}", log_tail(&log))),
                });
            }
        };
        match running.wait_exit(EXIT_TIMEOUT) {
            Some(s) if s.success() => Ok(report),
            Some(s) => Err(self.fail(format!("exited with {s}\n{}", log_tail(&log)))),
            None => {
                running.kill();
                Err(self.fail(format!(
                    "still running {} s after the frontend left\n{}",
                    EXIT_TIMEOUT.as_secs(),
                    log_tail(&log)
                )))
            }
        }
    }
}

/// A backend serving a directory, for a caller that drives its own
/// requests ([`super::Session`]); killed on drop unless it exited.
#[derive(Debug)]
pub struct Serving {
    backend: Backend,
    running: Running,
    socket: PathBuf,
    log: PathBuf,
}

impl Backend {
    /// Starts this backend on `share` with its socket and log in
    /// `scratch`; returns once it listens.
    pub fn start(&self, share: &Path, scratch: &Path) -> Result<Serving, ReplayError> {
        let socket = scratch.join("vfs.sock");
        let log = scratch.join("backend.log");
        let running = Running::start(self, &socket, share, &log)?;
        Ok(Serving {
            backend: self.clone(),
            running,
            socket,
            log,
        })
    }
}

impl Serving {
    /// The vhost-user socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.running.child.id()
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Waits for the backend to exit after the frontend left; an error
    /// (with its log) unless it exited 0.
    pub fn finish(mut self) -> Result<(), ReplayError> {
        match self.running.wait_exit(EXIT_TIMEOUT) {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(self.backend.fail(format!("exited with {s}\n{}", self.log_tail()))),
            None => {
                self.running.kill();
                Err(self.backend.fail(format!(
                    "still running {} s after the frontend left\n{}",
                    EXIT_TIMEOUT.as_secs(),
                    self.log_tail()
                )))
            }
        }
    }
}

/// A started backend; killed on drop unless it exited.
#[derive(Debug)]
struct Running {
    child: Child,
    exited: bool,
}

impl Running {
    fn start(backend: &Backend, socket: &Path, dir: &Path, log: &Path) -> Result<Running, ReplayError> {
        let file =
            File::create(log).map_err(|e| ReplayError::Setup(format!("creating {}: {e}", log.display())))?;
        let child = backend
            .command(socket, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| backend.fail(format!("starting {}: {e}", backend.program.display())))?;
        let mut running = Running { child, exited: false };
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Ok(Some(status)) = running.child.try_wait() {
                running.exited = true;
                return Err(backend.fail(format!(
                    "exited with {status} before listening\n{}",
                    log_tail(log)
                )));
            }
            if Instant::now() > deadline {
                return Err(backend.fail(format!(
                    "no socket after {} s\n{}",
                    START_TIMEOUT.as_secs(),
                    log_tail(log)
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(running)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = true;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                _ => return None,
            }
        }
    }

    fn kill(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.exited = true;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES_MAX);
    String::from_utf8_lossy(&text[start..]).into_owned()
}
