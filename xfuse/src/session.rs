//! Sessions of a mount on this host: mount(2), INIT (answered through
//! [`crate::transport::dev::answer_init`]), the dispatcher's settings,
//! serving through a transport, teardown.
//!
//! ```text
//! Session::mount(fs, mountpoint, options)   mount(2) + INIT answered
//!        │
//!        ├── .notifier()                    cache invalidations
//!        ├── .set_policy() .set_adaptive_ttl() .enable_passthrough()
//!        │   .set_file_attrs()
//!        │                                  the dispatcher being built
//!        ▼
//! Session::serve(Transport::Dev{..})        dispatcher built, workers started
//!        │
//!        ▼
//! Running::wait() / run_until_signal()      returns once unmounted
//! ```
//!
//! Teardown is the same whoever starts it: the filesystem is unmounted (by
//! us on SIGINT/SIGTERM or drop, or by someone with `umount`), the kernel
//! aborts the connection, every worker's next read fails with `ENODEV`, the
//! workers end, and the filesystem's `destroy` runs once.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::{FuseDev, KernelInfo, MountOptions, UnmountMode};

use crate::cache::AdaptiveTtl;
use crate::dispatch::{Dispatcher, DispatcherBuilder, Policy, Stats};
use crate::fileattr::FileAttrs;
use crate::init::{self, InitConfig, Negotiated};
use crate::notify::Notifier;
use crate::passthrough::{BackingOpener, Passthrough};
use crate::perm::ProcGroups;
use crate::transport::uring::QueueCounters;
use crate::transport::{self, Transport};

pub use crate::transport::default_threads;

/// Errors of setting up or running a session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mountpoint is missing or not a directory.
    #[error("mountpoint {path}: {reason}")]
    Mountpoint {
        /// The mountpoint given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `/dev/fuse` could not be opened.
    #[error("cannot open /dev/fuse: {0} (is the fuse module loaded, and are you root?)")]
    OpenDevice(#[source] io::Error),
    /// mount(2) failed.
    #[error("mount of {path} failed: {source}")]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// INIT or the transport failed.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// [`InitConfig::allow_idmap`] on a mount without
    /// `default_permissions`: the kernel would fail the connection at
    /// INIT, since idmapped mounts need its permission checks.
    #[error(
        "idmapped mounts (FUSE_ALLOW_IDMAP) need the kernel's permission checks: \
         mount with default_permissions"
    )]
    IdmapNeedsDefaultPermissions,
    /// Installing SIGINT/SIGTERM handling failed.
    #[error("installing signal handlers failed: {0}")]
    Signals(#[source] io::Error),
}

/// The mount, shared by whoever may unmount it.
#[derive(Debug)]
struct MountState {
    mountpoint: PathBuf,
    mounted: Mutex<bool>,
    /// The connection's id under /sys/fs/fuse/connections.
    conn_id: Option<u32>,
}

/// Unmounts a session's filesystem; cheap to clone and send to other threads
/// (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct Unmounter {
    state: Arc<MountState>,
}

impl Unmounter {
    /// Unmounts, if still mounted. When files are still open on the mount,
    /// the mount is detached and the connection aborted, so the workers end
    /// and the process can exit; those files then fail with `ENOTCONN`.
    pub fn unmount(&self) {
        let mut mounted = self.state.mounted.lock().unwrap_or_else(|e| e.into_inner());
        if !*mounted {
            return;
        }
        *mounted = false;
        let mp = &self.state.mountpoint;
        match kmod_shim::umount(mp, UnmountMode::Normal) {
            Ok(()) => tracing::info!("unmounted {}", mp.display()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!("{} was already unmounted", mp.display());
            }
            Err(e) => {
                tracing::warn!(
                    "unmount of {} failed ({e}); detaching it and aborting the connection",
                    mp.display()
                );
                if let Err(e) = kmod_shim::umount(mp, UnmountMode::Lazy) {
                    tracing::warn!("lazy unmount of {} failed: {e}", mp.display());
                }
                if let Some(id) = self.state.conn_id {
                    if let Err(e) = kmod_shim::mount::abort_connection(id) {
                        tracing::warn!("aborting FUSE connection {id} failed: {e}");
                    }
                }
            }
        }
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.state.mountpoint
    }
}

/// A mounted connection: its `/dev/fuse` descriptor, who unmounts it, and
/// what the kernel offers. Unmounts when dropped.
#[derive(Debug)]
struct Connection {
    dev: Arc<FuseDev>,
    unmounter: Unmounter,
    kernel: KernelInfo,
}

impl Connection {
    fn notifier(&self) -> Notifier {
        Notifier::new(self.dev.clone())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.unmounter.unmount();
    }
}

/// A mounted filesystem whose INIT has been answered, not yet served. Its
/// dispatcher is still being configured (policies, adaptive timeouts,
/// passthrough); [`Session::serve`] builds it and hands it to the workers.
/// Dropping a session unmounts it.
#[derive(Debug)]
pub struct Session<F: FileSystem + Send + Sync + 'static> {
    conn: Connection,
    dispatcher: DispatcherBuilder<F>,
}

impl<F: FileSystem + Send + Sync + 'static> Session<F> {
    /// Mounts `fs` at `mountpoint` and negotiates INIT with the kernel.
    /// Refuses [`InitConfig::allow_idmap`] without
    /// [`MountOptions::default_permissions`], before mounting.
    pub fn mount(
        fs: F,
        mountpoint: &Path,
        options: &MountOptions,
        config: &InitConfig,
    ) -> Result<Session<F>, Error> {
        check_idmap(options, config)?;
        let meta = std::fs::metadata(mountpoint).map_err(|e| Error::Mountpoint {
            path: mountpoint.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(Error::Mountpoint {
                path: mountpoint.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| Error::Mountpoint {
            path: mountpoint.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut kernel = kmod_shim::probe();
        let dev = FuseDev::open().map_err(|e| Error::OpenDevice(e.into()))?;
        kmod_shim::mount(&dev, &mountpoint, options).map_err(|source| Error::Mount {
            path: mountpoint.clone(),
            source: source.into(),
        })?;
        let state = Arc::new(MountState {
            conn_id: kmod_shim::mount::connection_id(&mountpoint),
            mountpoint,
            mounted: Mutex::new(true),
        });
        let unmounter = Unmounter { state };
        // From here on, any failure must unmount again.
        let negotiated = match transport::dev::answer_init(&dev, &fs, config) {
            Ok(n) => n,
            Err(e) => {
                unmounter.unmount();
                return Err(e.into());
            }
        };
        kernel.protocol_minor = Some(negotiated.minor);
        tracing::info!(
            "mounted {} (FUSE 7.{}, max_write {} KiB, features: {})",
            unmounter.mountpoint().display(),
            negotiated.minor,
            negotiated.max_write / 1024,
            init::flag_names(negotiated.flags).join(" ")
        );
        let mut dispatcher = DispatcherBuilder::new(fs, negotiated);
        // Callers of a /dev/fuse mount are processes of this host (pids as
        // the mounting process sees them).
        dispatcher.set_group_source(Box::new(ProcGroups));
        Ok(Session {
            conn: Connection {
                dev: Arc::new(dev),
                unmounter,
                kernel,
            },
            dispatcher,
        })
    }

    /// What INIT settled.
    pub fn negotiated(&self) -> &Negotiated {
        self.dispatcher.negotiated()
    }

    /// What the kernel offers, with the protocol minor filled in.
    pub fn kernel(&self) -> &KernelInfo {
        &self.conn.kernel
    }

    /// A handle to send cache invalidations.
    pub fn notifier(&self) -> Notifier {
        self.conn.notifier()
    }

    /// A handle to unmount from elsewhere.
    pub fn unmounter(&self) -> Unmounter {
        self.conn.unmounter.clone()
    }

    /// Sets the dispatcher's reply policies.
    pub fn set_policy(&mut self, policy: Policy) {
        self.dispatcher.set_policy(policy);
    }

    /// Times every request (see [`crate::DispatcherBuilder::time_requests`]).
    pub fn time_requests(&mut self, on: bool) {
        self.dispatcher.time_requests(on);
    }

    /// Gives entry and attribute timeouts per inode from `ttl`, with this
    /// session's notifier for its invalidations.
    pub fn set_adaptive_ttl(&mut self, ttl: Arc<AdaptiveTtl>) {
        ttl.set_notifier(self.notifier());
        self.dispatcher.set_adaptive_ttl(ttl);
    }

    /// Serves the file attribute ioctls (`chattr`, `lsattr`) with `hook`
    /// (see [`crate::DispatcherBuilder::set_file_attrs`]).
    pub fn set_file_attrs(&mut self, hook: Box<dyn FileAttrs>) {
        self.dispatcher.set_file_attrs(hook);
    }

    /// Serves regular files through FUSE passthrough, with backing files
    /// from `opener`. Returns false, and changes nothing, when the kernel
    /// did not agree to `FUSE_PASSTHROUGH` in INIT (ask for it with
    /// [`InitConfig::passthrough`]).
    pub fn enable_passthrough(&mut self, opener: Box<dyn BackingOpener>) -> bool {
        if !self.negotiated().has(kmod_shim::abi::init_flags::PASSTHROUGH) {
            return false;
        }
        let passthrough = Passthrough::new(self.conn.dev.clone(), opener);
        self.dispatcher.set_passthrough(passthrough);
        true
    }

    /// Builds the dispatcher and starts serving requests through
    /// `transport` (`dev` or `uring`; `virtio` serves a guest, not a
    /// mount, and is refused).
    pub fn serve(self, transport: Transport) -> Result<Running<F>, Error> {
        let Session { conn, dispatcher } = self;
        let dispatcher = Arc::new(dispatcher.build());
        let transport::Started { workers, queues } = transport::start(&transport, &conn.dev, &dispatcher)?;
        Ok(Running {
            conn,
            dispatcher,
            workers,
            transport,
            queues,
        })
    }
}

/// [`Session::mount`]'s refusal of an idmapped-mount config the kernel
/// would fail at INIT.
fn check_idmap(options: &MountOptions, config: &InitConfig) -> Result<(), Error> {
    if config.allow_idmap && !options.default_permissions {
        return Err(Error::IdmapNeedsDefaultPermissions);
    }
    Ok(())
}

/// Why serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT or SIGTERM arrived; we unmounted.
    Signal(i32),
    /// Someone else unmounted the filesystem (or the connection was aborted).
    Unmounted,
}

/// A session being served.
#[derive(Debug)]
pub struct Running<F: FileSystem + Send + Sync + 'static> {
    conn: Connection,
    dispatcher: Arc<Dispatcher<F>>,
    /// Emptied by `wait`.
    workers: Vec<JoinHandle<()>>,
    transport: Transport,
    queues: Option<Arc<QueueCounters>>,
}

impl<F: FileSystem + Send + Sync + 'static> Running<F> {
    /// A handle to unmount from elsewhere.
    pub fn unmounter(&self) -> Unmounter {
        self.conn.unmounter.clone()
    }

    /// A handle to send cache invalidations.
    pub fn notifier(&self) -> Notifier {
        self.conn.notifier()
    }

    /// Request counters.
    pub fn stats(&self) -> &Stats {
        self.dispatcher.stats()
    }

    /// The dispatcher (for its counters and the filesystem).
    pub fn dispatcher(&self) -> &Arc<Dispatcher<F>> {
        &self.dispatcher
    }

    /// Requests served per ring queue (`uring` only).
    pub fn queue_counters(&self) -> Option<Arc<QueueCounters>> {
        self.queues.clone()
    }

    /// The transport serving.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Blocks until every worker has ended (the filesystem was unmounted),
    /// then runs the filesystem's `destroy`. Returns the dispatcher, for
    /// its counters and the filesystem.
    pub fn wait(mut self) -> Arc<Dispatcher<F>> {
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                tracing::error!("a worker panicked");
            }
        }
        self.dispatcher.destroy();
        // Nothing is served any more; make sure nothing stays mounted.
        self.conn.unmounter.unmount();
        // Dropping `self` now finds nothing left to do.
        self.dispatcher.clone()
    }

    /// Serves until SIGINT/SIGTERM (then unmounts) or until unmounted from
    /// outside, and says which. `signals` must have been installed before
    /// mounting, so a signal that arrives while mounting is not lost.
    pub fn run_until_signal(self, signals: ShutdownSignals) -> Result<(Ended, Arc<Dispatcher<F>>), Error> {
        let ShutdownSignals {
            mut signals,
            on_report,
        } = signals;
        let handle = signals.handle();
        let unmounter = self.unmounter();
        let got = Arc::new(AtomicBool::new(false));
        let got_in_thread = got.clone();
        let watcher = std::thread::Builder::new()
            .name("xfuse-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == signal_hook::consts::SIGUSR1 {
                        if let Some(report) = &on_report {
                            report();
                        }
                        continue;
                    }
                    got_in_thread.store(true, Ordering::Release);
                    tracing::info!(
                        "received signal {sig}; unmounting {}",
                        unmounter.mountpoint().display()
                    );
                    unmounter.unmount();
                    return Some(sig);
                }
                None
            })
            .map_err(Error::Signals)?;
        let dispatcher = self.wait();
        handle.close();
        let sig = watcher.join().ok().flatten();
        let ended = match sig {
            Some(s) if got.load(Ordering::Acquire) => Ended::Signal(s),
            _ => Ended::Unmounted,
        };
        Ok((ended, dispatcher))
    }
}

/// SIGINT and SIGTERM (and SIGUSR1, for a report on demand), caught from
/// the moment this is installed: install it before [`Session::mount`], so
/// that a signal arriving while mounting is held and handled (by
/// unmounting) once serving starts, instead of killing the process with the
/// filesystem still mounted.
pub struct ShutdownSignals {
    signals: signal_hook::iterator::Signals,
    on_report: Option<Box<dyn Fn() + Send>>,
}

impl std::fmt::Debug for ShutdownSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownSignals")
            .field("on_report", &self.on_report.is_some())
            .finish()
    }
}

impl ShutdownSignals {
    /// Starts catching SIGINT, SIGTERM and SIGUSR1.
    pub fn install() -> Result<ShutdownSignals, Error> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        let signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1]).map_err(Error::Signals)?;
        Ok(ShutdownSignals {
            signals,
            on_report: None,
        })
    }

    /// Runs `report` on every SIGUSR1 while serving (e.g. print counters).
    pub fn on_report(&mut self, report: impl Fn() + Send + 'static) {
        self.on_report = Some(Box::new(report));
    }
}

impl<F: FileSystem + Send + Sync + 'static> Drop for Running<F> {
    fn drop(&mut self) {
        self.conn.unmounter.unmount();
        // Give workers a moment to see ENODEV; a worker stuck in the
        // filesystem is left behind rather than hanging the caller.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for w in self.workers.drain(..) {
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        self.dispatcher.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filesystem with the trait's defaults only.
    #[derive(Debug)]
    struct NoFs;

    impl FileSystem for NoFs {
        type Inode = u64;
        type Handle = u64;
    }

    #[test]
    fn allow_idmap_needs_default_permissions() {
        let mut options = MountOptions::new("src", "test");
        let idmap = InitConfig {
            allow_idmap: true,
            ..Default::default()
        };
        options.default_permissions = false;
        assert!(matches!(
            check_idmap(&options, &idmap),
            Err(Error::IdmapNeedsDefaultPermissions)
        ));
        assert!(check_idmap(&options, &InitConfig::default()).is_ok());
        options.default_permissions = true;
        assert!(check_idmap(&options, &idmap).is_ok());
    }

    #[test]
    fn mount_refuses_allow_idmap_without_default_permissions_before_mounting() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = MountOptions::new("src", "test");
        options.default_permissions = false;
        let idmap = InitConfig {
            allow_idmap: true,
            ..Default::default()
        };
        // Refused before /dev/fuse is opened or anything mounted: no root needed.
        let fs = NoFs;
        let err = Session::mount(fs, dir.path(), &options, &idmap).unwrap_err();
        assert!(matches!(err, Error::IdmapNeedsDefaultPermissions), "{err}");
        assert!(err.to_string().contains("default_permissions"), "{err}");
    }
}
