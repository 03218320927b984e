//! Mounting a configuration over a fresh tmpfs, and tearing it down.
//!
//! Layout of one [`Mount`], under the temporary directory:
//!
//! ```text
//! xfuse-bench.<bench pid>.<n>/
//!     src/          a tmpfs of its own: the directory every configuration serves
//!     mnt/          the FUSE mount of src (not used by `native`)
//!     daemon.log    the daemon's stdout and stderr
//! ```
//!
//! Nothing is left mounted: [`Mount`]'s drop stops the daemon with SIGTERM
//! (SIGKILL after 10 s) and unmounts (lazily if busy); it runs when a bench
//! panics too. SIGINT/SIGTERM/SIGHUP of the bench process clean every live
//! mount before exiting, and [`Suite::new`] unmounts what runs killed with
//! SIGKILL left behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
use rustix::process::{kill_process, Pid, Signal};

use crate::config::Config;
use crate::procfs;
use crate::run::{Failures, Meter};
use crate::side::{self, SideFile, SideRecord};
use kmod_shim::mountinfo;

/// How long a daemon may take to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the per-mount directories under the temporary directory.
const DIR_PREFIX: &str = "xfuse-bench.";
/// What xfused logs once FUSE passthrough is on (it falls back to serving
/// data itself, with another line, where the kernel lacks it).
const PASSTHROUGH_ON: &str = "FUSE passthrough on";

/// Why a configuration could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The binary serving this configuration was not found.
    #[error("{config}: {what} not found ({hint})")]
    MissingBinary {
        /// The configuration.
        config: Config,
        /// Which binary.
        what: &'static str,
        /// How to get it.
        hint: String,
    },
    /// The daemon exited before the mount appeared: it refused the flags,
    /// or the kernel or machine lacks what the transport needs.
    #[error("{config}: `{command}` exited with {status} before mounting: {log}")]
    Refused {
        /// The configuration.
        config: Config,
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The first lines of its output.
        log: String,
    },
    /// xfused mounted, but not as this configuration asks (another
    /// transport, or passthrough not on): not benchmarked under this name.
    #[error("{config}: xfused mounted, but {what}: not benchmarked under this name")]
    NotAsAsked {
        /// The configuration.
        config: Config,
        /// What differs.
        what: String,
    },
    /// The mount did not appear in time.
    #[error("{config}: no mount at {mountpoint} after {MOUNT_TIMEOUT:?}: {log}")]
    Timeout {
        /// The configuration.
        config: Config,
        /// Where it should have appeared.
        mountpoint: String,
        /// The first lines of the daemon's output.
        log: String,
    },
    /// A setup step failed.
    #[error("{config}: {what}: {source}")]
    Setup {
        /// The configuration.
        config: Config,
        /// Which step, on what.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where the daemons are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// This crate's `stock-fuse` (serves `stock`).
    pub stock_fuse: Option<PathBuf>,
    /// `xfused` (serves the `xfuse-*` configurations).
    pub xfused: Option<PathBuf>,
    /// Extra arguments for every `xfused passthrough` (`$XFUSED_ARGS`,
    /// split at whitespace), e.g. `--flush-on-close --negative-timeout-ms 0`
    /// to switch off xfused's policies that stock lacks.
    pub xfused_args: Vec<String>,
}

impl Binaries {
    /// `stock_fuse` as given (a bench knows it as `CARGO_BIN_EXE_stock-fuse`);
    /// `xfused` from `$XFUSED`, else `target/release/xfused`; extra xfused
    /// arguments from `$XFUSED_ARGS`.
    pub fn find(stock_fuse: Option<PathBuf>) -> Binaries {
        let xfused = std::env::var_os("XFUSED")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::target_dir().join("release").join("xfused"));
        let xfused_args = std::env::var("XFUSED_ARGS")
            .map(|args| args.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        Binaries {
            stock_fuse: stock_fuse.filter(|p| p.is_file()),
            xfused: Some(xfused).filter(|p| p.is_file()),
            xfused_args,
        }
    }

    /// The command serving `config` from `source` at `mountpoint`.
    fn command(&self, config: Config, source: &Path, mountpoint: &Path) -> Result<Command, MountError> {
        let missing = |what, hint: &str| MountError::MissingBinary {
            config,
            what,
            hint: hint.to_string(),
        };
        let mut cmd = match config {
            Config::Native => unreachable!("native has no daemon"),
            Config::Stock => Command::new(
                self.stock_fuse
                    .as_ref()
                    .ok_or_else(|| missing("stock-fuse", "cargo build --release -p benches"))?,
            ),
            _ => {
                let xfused = self.xfused.as_ref().ok_or_else(|| {
                    missing(
                        "xfused",
                        "cargo build --release -p xfused, or set XFUSED=/path/to/xfused",
                    )
                })?;
                let mut cmd = Command::new(xfused);
                cmd.arg("passthrough")
                    .args(config.xfused_flags().unwrap_or_default())
                    .args(&self.xfused_args);
                cmd
            }
        };
        cmd.arg(source).arg(mountpoint);
        Ok(cmd)
    }
}

/// One configuration serving a fresh tmpfs. Dropping it stops the daemon
/// and unmounts everything.
#[derive(Debug)]
pub struct Mount {
    config: Config,
    base: PathBuf,
    source: PathBuf,
    mountpoint: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
    registry_id: u64,
}

impl Mount {
    /// Mounts a fresh tmpfs, lets `populate` fill it (natively, before any
    /// daemon sees it), then serves it through `config` and waits until the
    /// mount is listed in `/proc/self/mountinfo` and answers.
    pub fn new(
        config: Config,
        binaries: &Binaries,
        populate: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<Mount, MountError> {
        let setup = |what: String| move |source| MountError::Setup { config, what, source };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("{DIR_PREFIX}{}.{n}", std::process::id()));
        let source = base.join("src");
        let mountpoint = base.join("mnt");
        for dir in [&base, &source, &mountpoint] {
            std::fs::create_dir_all(dir).map_err(setup(format!("creating {}", dir.display())))?;
        }
        mount("xfuse-bench", &source, "tmpfs", MountFlags::empty(), c"mode=0755")
            .map_err(|e| setup(format!("mounting tmpfs at {}", source.display()))(e.into()))?;
        let registry_id = registry_add(Active {
            daemon: None,
            fuse: None,
            tmpfs: source.clone(),
        });
        // From here on, dropping `mount` undoes everything.
        let mut mount = Mount {
            config,
            log: base.join("daemon.log"),
            base,
            source,
            mountpoint,
            daemon: None,
            registry_id,
        };
        populate(&mount.source).map_err(setup(format!("populating {}", mount.source.display())))?;
        if config.is_fuse() {
            mount.start_daemon(binaries)?;
        }
        Ok(mount)
    }

    fn start_daemon(&mut self, binaries: &Binaries) -> Result<(), MountError> {
        let config = self.config;
        let setup = |what: String| move |source| MountError::Setup { config, what, source };
        let mut cmd = binaries.command(config, &self.source, &self.mountpoint)?;
        let command = format!("{cmd:?}").replace('"', "");
        let log = File::create(&self.log).map_err(setup(format!("creating {}", self.log.display())))?;
        let log_err = log
            .try_clone()
            .map_err(setup("duplicating the log descriptor".into()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(setup(format!("starting {command}")))?;
        registry_update(self.registry_id, |a| {
            a.daemon = Some(child.id());
            a.fuse = Some(self.mountpoint.clone());
        });
        let child = self.daemon.insert(child);

        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            let fs_type =
                mountinfo::fs_type_at(&self.mountpoint).map_err(setup("reading mountinfo".into()))?;
            if fs_type.is_some_and(|t| t.starts_with("fuse")) {
                break;
            }
            if let Some(status) = child
                .try_wait()
                .map_err(setup(format!("waiting for {command}")))?
            {
                // Reaped: teardown has no daemon left to stop.
                self.daemon = None;
                return Err(MountError::Refused {
                    config,
                    command,
                    status,
                    log: log_head(&self.log),
                });
            }
            if Instant::now() > deadline {
                let mountpoint = self.mountpoint.display().to_string();
                return Err(MountError::Timeout {
                    config,
                    mountpoint,
                    log: log_head(&self.log),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The first access waits for the daemon's INIT reply.
        std::fs::metadata(&self.mountpoint).map_err(setup(format!(
            "stat of {} after mounting",
            self.mountpoint.display()
        )))?;
        if let Some(expected) = config.xfused_transport() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            match announced_transport(&log) {
                Some(announced) if announced != expected => {
                    let what = format!("with transport `{announced}`, not `{expected}`");
                    return Err(MountError::NotAsAsked { config, what });
                }
                Some(_) => {}
                None => println!(
                    "xfuse-bench: note: {config}: could not confirm from xfused's log that it uses transport `{expected}`"
                ),
            }
            if config == Config::XfuseUringPassthrough && !log.contains(PASSTHROUGH_ON) {
                let what = format!(
                    "its log lacks \"{PASSTHROUGH_ON}\" (passthrough fell back?): {}",
                    log_head(&self.log)
                );
                return Err(MountError::NotAsAsked { config, what });
            }
        }
        Ok(())
    }

    /// The configuration served.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Where the workload runs: the FUSE mount, or the tmpfs itself for `native`.
    pub fn root(&self) -> &Path {
        if self.config.is_fuse() {
            &self.mountpoint
        } else {
            &self.source
        }
    }

    /// The tmpfs directory behind the mount (reaching it bypasses FUSE).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The daemon's process id (`None` for `native`).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The daemon's CPU time and memory now (`None` for `native`).
    pub fn daemon_usage(&self) -> Option<procfs::Usage> {
        procfs::Usage::of(self.daemon_pid()?).ok()
    }

    fn teardown(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            stop_daemon(&mut child, &self.log, self.config);
        }
        if self.config.is_fuse() {
            unmount_all(&self.mountpoint);
        }
        unmount_all(&self.source);
        let _ = std::fs::remove_file(&self.log);
        for dir in [&self.mountpoint, &self.source, &self.base] {
            let _ = std::fs::remove_dir(dir);
        }
        registry_remove(self.registry_id);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// SIGTERM, wait, SIGKILL if need be; says so when the daemon misbehaved.
fn stop_daemon(child: &mut Child, log: &Path, config: Config) {
    let pid = Pid::from_child(child);
    match child.try_wait() {
        Ok(Some(status)) => {
            eprintln!(
                "xfuse-bench: warning: {config} daemon had exited ({status}): {}",
                log_head(log)
            );
            return;
        }
        Ok(None) => {}
        Err(e) => eprintln!("xfuse-bench: warning: waiting for the {config} daemon: {e}"),
    }
    let _ = kill_process(pid, Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                eprintln!(
                    "xfuse-bench: warning: {config} daemon exited with {status}: {}",
                    log_head(log)
                );
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break,
        }
    }
    eprintln!("xfuse-bench: warning: {config} daemon ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Unmounts everything mounted at `path`: plainly, else lazily (busy).
fn unmount_all(path: &Path) {
    // Bounded: a mount point holds at most a few stacked mounts.
    for _ in 0..8 {
        match mountinfo::fs_type_at(path) {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                eprintln!("xfuse-bench: warning: reading mountinfo: {e}");
                return;
            }
        }
        if unmount(path, UnmountFlags::empty()).is_err() {
            if let Err(e) = unmount(path, UnmountFlags::DETACH) {
                eprintln!("xfuse-bench: warning: could not unmount {}: {e}", path.display());
                return;
            }
        }
    }
}

/// The first lines of a daemon's log, on one line, for error messages.
fn log_head(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(4)
        .collect();
    if lines.is_empty() {
        "(no output)".to_string()
    } else {
        lines.join(" | ")
    }
}

/// The transport in xfused's `xfused: serving … (transport NAME)` line.
fn announced_transport(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let rest = line.split_once("(transport ")?.1;
        let name = rest.split([')', ',', ' ']).next()?;
        Some(name.to_string())
    })
}

/// Which configurations the daemons accept on this machine, the binaries
/// that serve them, and where side numbers go.
#[derive(Debug)]
pub struct Suite {
    binaries: Binaries,
    available: Vec<Config>,
    side_path: PathBuf,
}

impl Suite {
    /// Unmounts what earlier killed runs left, installs the signal cleanup,
    /// and probes every configuration once with a real mount: those whose
    /// daemon is missing or refuses (e.g. `--transport uring` before xfused
    /// has it) are skipped, with a printed note and an entry in the side file.
    pub fn new(binaries: Binaries) -> Suite {
        clean_stale();
        install_interrupt_cleanup();
        let side_path = side::default_path();
        let mut available = Vec::new();
        let mut skipped = BTreeMap::new();
        for config in Config::ALL {
            if !config.is_fuse() {
                available.push(config);
                continue;
            }
            match Mount::new(config, &binaries, |_| Ok(())) {
                Ok(probe) => {
                    drop(probe);
                    available.push(config);
                }
                Err(e) => {
                    println!("xfuse-bench: note: skipping {e}");
                    skipped.insert(config.name().to_string(), e.to_string());
                }
            }
        }
        let names: Vec<&str> = available.iter().map(|c| c.name()).collect();
        println!("xfuse-bench: configurations: {}", names.join(", "));
        if !binaries.xfused_args.is_empty() {
            println!(
                "xfuse-bench: extra xfused arguments: {}",
                binaries.xfused_args.join(" ")
            );
        }
        let result = SideFile::update(&side_path, |side| {
            for config in &available {
                side.skipped.remove(config.name());
            }
            // Results of a configuration that no longer mounts belong to
            // another binary: they would mislead the report.
            side.benches
                .retain(|_, record| !skipped.contains_key(&record.config));
            side.skipped.extend(skipped);
        });
        if let Err(e) = result {
            eprintln!("xfuse-bench: warning: writing {}: {e}", side_path.display());
        }
        Suite {
            binaries,
            available,
            side_path,
        }
    }

    /// The configurations to bench, in column order.
    pub fn configs(&self) -> &[Config] {
        &self.available
    }

    /// Mounts `config` (see [`Mount::new`]); panics if a configuration that
    /// probed fine cannot be mounted now.
    pub fn mount(&self, config: Config, populate: impl FnOnce(&Path) -> io::Result<()>) -> Mount {
        Mount::new(config, &self.binaries, populate).unwrap_or_else(|e| panic!("mounting {e}"))
    }

    /// Thread counts to run each workload with: 1 and one per CPU, or the
    /// comma-separated list in `XFUSE_BENCH_THREADS`.
    pub fn thread_counts(&self) -> Vec<usize> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut counts: Vec<usize> = match std::env::var("XFUSE_BENCH_THREADS") {
            Ok(list) => list
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .filter(|&n| n > 0)
                .collect(),
            Err(_) => vec![1, cpus],
        };
        counts.sort_unstable();
        counts.dedup();
        counts
    }

    /// Records what criterion does not: the daemon CPU per operation and
    /// memory of bench `group/config`, its failed operations, and notes on
    /// what it measured.
    pub fn record(
        &self,
        workload: &str,
        threads: usize,
        mount: &Mount,
        meter: &Meter,
        failures: &Failures,
        mut notes: Vec<String>,
    ) {
        if mount.config().xfused_flags().is_some() && !self.binaries.xfused_args.is_empty() {
            notes.push(format!(
                "xfused ran with extra arguments `{}`",
                self.binaries.xfused_args.join(" ")
            ));
        }
        let usage = meter.last_usage().or_else(|| mount.daemon_usage());
        let record = SideRecord {
            workload: workload.to_string(),
            threads,
            config: mount.config().name().to_string(),
            ops: meter.ops(),
            daemon_cpu_s: meter.cpu_seconds(),
            daemon_cpu_us_per_op: meter.cpu_us_per_op(),
            daemon_rss_kib: usage.map(|u| u.rss_kib),
            daemon_hwm_kib: usage.map(|u| u.hwm_kib),
            notes,
            failed_ops: failures.count(),
            first_failure: failures.first(),
            loadavg_1m: procfs::loadavg_1m(),
            recorded_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let id = format!(
            "{}/{}",
            crate::group_name(workload, threads),
            mount.config().name()
        );
        if let Err(e) = SideFile::update(&self.side_path, |side| {
            side.benches.insert(id, record);
        }) {
            eprintln!("xfuse-bench: warning: writing {}: {e}", self.side_path.display());
        }
    }
}

/// What the signal cleanup must undo for one live [`Mount`].
#[derive(Debug)]
struct Active {
    daemon: Option<u32>,
    fuse: Option<PathBuf>,
    tmpfs: PathBuf,
}

static ACTIVE: Mutex<BTreeMap<u64, Active>> = Mutex::new(BTreeMap::new());

fn registry<T>(f: impl FnOnce(&mut BTreeMap<u64, Active>) -> T) -> T {
    let mut guard = ACTIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut guard)
}

fn registry_add(active: Active) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registry(|r| r.insert(id, active));
    id
}

fn registry_update(id: u64, f: impl FnOnce(&mut Active)) {
    registry(|r| r.get_mut(&id).map(f));
}

fn registry_remove(id: u64) {
    registry(|r| r.remove(&id));
}

/// For a tool that mounts without a [`Suite`]: unmounts what killed runs
/// left and installs the cleanup on SIGINT, SIGTERM and SIGHUP.
pub fn prepare_standalone() {
    clean_stale();
    install_interrupt_cleanup();
}

/// On SIGINT, SIGTERM or SIGHUP: stop every daemon, lazily unmount every
/// mount of this process, and exit with 128 + signal.
fn install_interrupt_cleanup() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("xfuse-bench: warning: no cleanup on signals: {e}");
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                registry(|r| {
                    for active in r.values() {
                        if let Some(pid) = active.daemon.and_then(|p| Pid::from_raw(p as i32)) {
                            let _ = kill_process(pid, Signal::TERM);
                        }
                        if let Some(fuse) = &active.fuse {
                            let _ = unmount(fuse, UnmountFlags::DETACH);
                        }
                        let _ = unmount(&active.tmpfs, UnmountFlags::DETACH);
                        if let Some(base) = active.tmpfs.parent() {
                            remove_mount_dirs(base);
                        }
                    }
                });
                std::process::exit(128 + signal);
            }
        });
    });
}

/// Removes a [`Mount`]'s directories and log, if nothing is left in them.
fn remove_mount_dirs(base: &Path) {
    let _ = std::fs::remove_file(base.join("daemon.log"));
    for dir in [base.join("mnt"), base.join("src"), base.to_path_buf()] {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Whether `path` is (under) a [`Mount`] directory of a bench process that
/// no longer exists; returns that directory.
fn stale_base(path: &Path) -> Option<PathBuf> {
    let tmp = std::env::temp_dir();
    let first = path.strip_prefix(&tmp).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?.strip_prefix(DIR_PREFIX)?;
    let pid: u32 = name.split('.').next()?.parse().ok()?;
    let dead = pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
    dead.then(|| tmp.join(first))
}

/// Unmounts (lazily) what bench processes that no longer exist left under
/// the temporary directory, FUSE mounts before the tmpfs under them (their
/// daemons then exit by themselves), and removes their directories.
fn clean_stale() {
    let Ok(mounts) = mountinfo::mounts() else { return };
    let mut stale: Vec<(bool, PathBuf)> = mounts
        .into_iter()
        .filter(|m| stale_base(&m.mount_point).is_some())
        .map(|m| (!m.fs_type.starts_with("fuse"), m.mount_point))
        .collect();
    // FUSE mounts first (their daemons exit), then the tmpfs they served.
    stale.sort();
    stale.dedup();
    for (_, path) in &stale {
        println!(
            "xfuse-bench: note: unmounting {} left by an earlier run",
            path.display()
        );
        unmount_all(path);
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(base) = stale_base(&entry.path()) {
            remove_mount_dirs(&base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_line() {
        let log = "INFO kernel 6.18\nxfused: serving /s at /m (transport dev); Ctrl-C or SIGTERM unmounts\n";
        assert_eq!(announced_transport(log).as_deref(), Some("dev"));
        assert_eq!(
            announced_transport("xfused: serving /s at /m (transport uring, passthrough)").as_deref(),
            Some("uring")
        );
        assert_eq!(announced_transport("nothing here"), None);
    }

    #[test]
    fn xfused_commands() {
        let b = Binaries {
            stock_fuse: Some("/bin/stock-fuse".into()),
            xfused: Some("/bin/xfused".into()),
            xfused_args: vec!["--flush-on-close".into()],
        };
        let cmd = b
            .command(Config::XfuseUringPassthrough, Path::new("/s"), Path::new("/m"))
            .unwrap();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "passthrough",
                "--transport",
                "uring",
                "--passthrough",
                "--flush-on-close",
                "/s",
                "/m"
            ]
        );
        let none = Binaries {
            stock_fuse: None,
            xfused: None,
            xfused_args: vec![],
        };
        assert!(matches!(
            none.command(Config::XfuseDev, Path::new("/s"), Path::new("/m")),
            Err(MountError::MissingBinary { .. })
        ));
    }
}
