//! Serving a filesystem at a mountpoint, as `xfused passthrough` and
//! `xfused mount` do: the options they share (a `clap::Args` group both
//! flatten), the transport chosen (dev or uring, from the kernel's offer),
//! the permission layer, adaptive timeouts, the session run until a signal
//! or an unmount, and the request counters printed; [`vm`] serves virtual
//! machines instead, confined by [`sandbox`].

mod adaptive;
pub mod fileattrs;
mod mount_flags;
mod report;
pub mod sandbox;
pub mod source;
pub mod tmpfiles;
pub mod vm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use fuse_backend_rs::passthrough::CachePolicy;
use xfuse::transport::uring::UringConfig;
use xfuse::{Ended, InitConfig, MountOptions, Policy, Session, ShutdownSignals, Transport};

pub use mount_flags::{AtimeArg, MountFlagArgs};

/// The FUSE subtype of every xfused mount: the kernel lists it as
/// `fuse.xfused`, the type mount(8) takes (`mount -t fuse.xfused`, with the
/// helper `mount.fuse.xfused`) and fstab names.
pub const SUBTYPE: &str = "xfused";

/// Largest write request unless told, in KiB.
pub const MAX_WRITE_KIB_DEFAULT: u32 = 1024;

/// `--transport`: how requests travel between the kernel and xfused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// uring where the kernel offers it (enable_uring on), else dev.
    Auto,
    /// Classic /dev/fuse, one cloned descriptor and thread per worker.
    Dev,
    /// FUSE-over-io_uring: one ring queue per CPU in shared memory
    /// (Linux 6.14+, with enable_uring on: see `xfused kernel enable-uring`).
    Uring,
}

/// `--cache-policy`: how entry and attribute timeouts are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CachePolicyArg {
    /// Every inode gets --attr-timeout-ms and --entry-timeout-ms.
    Fixed,
    /// Those timeouts by default; --long-ttl-ms for inodes the kernel keeps
    /// asking about (counted by BPF programs on the FUSE tracepoints) that
    /// did not change recently, kept coherent by invalidations on every
    /// change made through the mount. Needs root and kernel BTF; without
    /// them xfused says so and uses fixed timeouts. Changes made to SOURCE
    /// directly (not through the mount) are not seen for up to --long-ttl-ms.
    Adaptive,
}

/// `--cache`: kernel data caching of regular files (PassthroughFs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// No data caching in the kernel: every read goes to the daemon.
    Never,
    /// Cache data while a file is open; revalidate on open.
    Auto,
    /// Keep cached data across opens.
    Always,
}

impl From<CacheArg> for CachePolicy {
    fn from(cache: CacheArg) -> CachePolicy {
        match cache {
            CacheArg::Never => CachePolicy::Never,
            CacheArg::Auto => CachePolicy::Auto,
            CacheArg::Always => CachePolicy::Always,
        }
    }
}

/// Options every mounting subcommand shares: transport, threads, caching
/// timeouts, permissions.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// How requests travel between the kernel and xfused (given twice, the
    /// last one wins).
    #[arg(long, value_enum, default_value = "auto", overrides_with = "transport")]
    pub transport: TransportArg,
    /// Worker threads (default: one per CPU). With uring, ring queues (one
    /// per possible CPU) are spread over this many threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// uring: ring entries per queue, i.e. requests one CPU's queue holds at
    /// once (default: 8, fewer on hosts with more than 32 CPUs, at least 2).
    /// Each entry has a payload buffer of max-write size.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub queue_depth: Option<u16>,
    /// uring: microseconds a worker spins on its ring before sleeping
    /// (hybrid polling; 0 sleeps at once).
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub spin_us: u64,
    /// uring: microseconds the /dev/fuse worker beside the rings waits after
    /// a FORGET, so that the next ones arrive together as one BATCH_FORGET
    /// instead of one wake-up per unlinked file; an INTERRUPT may wait as
    /// long (0 reads each FORGET at once).
    #[arg(long, value_name = "US", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub forget_pause_us: u64,
    /// Print request counters (per opcode, per ring queue) at exit. They are
    /// printed on demand too, without this flag: kill -USR1 <pid>.
    #[arg(long)]
    pub stats: bool,
    /// How long the kernel may cache attributes, in milliseconds. With
    /// `xfused mount`, also how long a file's record (its size) serves
    /// reads without asking the metadata layer again: another client's
    /// change shows within this time, or at the next open; this mount's
    /// own at once. With `mount --meta tcp://`, also how long the
    /// directory records this mount's own changes return stay good for the
    /// kernel's next request for those directories' attributes (0: never
    /// used).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub attr_timeout_ms: u64,
    /// How long the kernel may cache directory entries (and negative
    /// lookups), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub entry_timeout_ms: u64,
    /// How long the kernel may cache that a name does not exist, in
    /// milliseconds (0: never cache it).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub negative_timeout_ms: u64,
    /// How entry and attribute timeouts are chosen.
    #[arg(long, value_enum, default_value = "fixed")]
    pub cache_policy: CachePolicyArg,
    /// --cache-policy adaptive: the timeout of hot, unchanged inodes, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub long_ttl_ms: u64,
    /// --cache-policy adaptive: most inodes with the long timeout at once.
    #[arg(long, value_name = "N", default_value_t = 32_768,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub long_inodes_max: u64,
    /// --cache-policy adaptive: how often the upcall counters are read and
    /// the long set updated, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub cache_refresh_ms: u64,
    /// Send FLUSH to xfused on every close. Off by default: the filesystems
    /// xfused serves write data through and serve no POSIX locks
    /// themselves, so a close has nothing to flush.
    #[arg(long)]
    pub flush_on_close: bool,
    /// Largest write request, in KiB (4 to 16384).
    #[arg(long, value_name = "KIB", default_value_t = MAX_WRITE_KIB_DEFAULT,
          value_parser = clap::value_parser!(u32).range(4..=16384))]
    pub max_write_kib: u32,
    /// Who checks permissions against file modes and owners.
    #[arg(long, value_enum, default_value_t = PermissionsArg::Kernel)]
    pub permissions: PermissionsArg,
    /// The standard mount options (read-only, atime, suid, dev, exec, -o).
    #[command(flatten)]
    pub mount_flags: MountFlagArgs,
    /// Only the mounting user may access the mount (by default every user
    /// may, subject to permissions).
    #[arg(long)]
    pub owner_only: bool,
    /// `--metrics HOST:PORT`.
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsArgs,
}

/// `--permissions`: who checks permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermissionsArg {
    /// The kernel, from the modes it caches (`default_permissions`). It
    /// refetches a directory's attributes (a GETATTR round trip) before the
    /// first check after each change to that directory.
    Kernel,
    /// xfused, from the filesystem's attributes (a directory's kept for the
    /// attribute timeout, as the kernel keeps them) and the caller's
    /// supplementary groups: no refetching round trips (a create, stat,
    /// unlink cycle costs 4 requests instead of 6). Directory entries are
    /// then cached only in directories everybody may search. Needs Linux
    /// 6.16+ (FUSE_NOTIFY_INC_EPOCH).
    Daemon,
}

/// What [`serve`] needs besides the filesystem.
pub struct Mounting<'a> {
    /// The mount's source field (as `mount` shows it).
    pub fsname: String,
    /// What is served, for the log line.
    pub what: String,
    /// Where to mount.
    pub mountpoint: &'a std::path::Path,
    /// The options shared by every mounting subcommand.
    pub serve: &'a ServeArgs,
    /// Ask the kernel for its writeback cache.
    pub writeback_cache: bool,
    /// Ask the kernel for FUSE passthrough.
    pub passthrough: bool,
    /// Ask the kernel for `FUSE_ALLOW_IDMAP` (idmapped mounts of this
    /// mount), and fail if it does not agree. Only with
    /// `--permissions kernel`, and only for a filesystem that needs its
    /// callers for nothing but the owners of new inodes
    /// ([`InitConfig::allow_idmap`]).
    pub allow_idmap: bool,
    /// The filesystem applies the umask it is given even where a default
    /// ACL should replace it: the dispatcher then zeroes the umask there
    /// ([`Policy::umask_yields_to_default_acl`]). False for a filesystem
    /// that keeps the rule itself.
    pub umask_yields_to_default_acl: bool,
    /// The filesystem is fuse-backend-rs's PassthroughFs, whose listings
    /// the dispatcher corrects: it adds "." and ".."
    /// ([`Policy::add_dot_entries`]) and serves READDIR through
    /// READDIRPLUS, for the inode numbers ([`Policy::readdir_through_readdirplus`]).
    pub passthrough_fs_listings: bool,
    /// The filesystem's `create` makes `O_TMPFILE` files
    /// ([`Policy::tmpfile_through_create`]): MetaFs.
    pub tmpfile_through_create: bool,
    /// What the running kernel offers.
    pub kernel: kmod_shim::probe::KernelInfo,
    /// Installed before mounting, so that a signal from then on unmounts.
    pub signals: ShutdownSignals,
    /// Called once the mount answers requests (mounted, INIT agreed, the
    /// transport's workers running): `xfused mount --background` tells
    /// the waiting parent here.
    pub on_serving: Option<Box<dyn FnOnce() + 'a>>,
    /// More counters for the `--metrics` endpoint, beside the mount's own
    /// (e.g. the file data a mount moved to storage services).
    pub metric_sources: Vec<Arc<dyn crate::metrics::Collect>>,
}

impl std::fmt::Debug for Mounting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounting")
            .field("fsname", &self.fsname)
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Mounts `fs`, serves it on the chosen transport until a signal or an
/// unmount, and prints the counters if asked.
pub fn serve<F>(
    fs: Arc<F>,
    m: Mounting<'_>,
    after_mount: impl FnOnce(&mut dyn MountHooks),
) -> anyhow::Result<()>
where
    F: fuse_backend_rs::api::filesystem::FileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static,
{
    if m.allow_idmap && m.serve.permissions != PermissionsArg::Kernel {
        bail!(
            "--allow-idmap needs --permissions kernel: the kernel allows idmapped mounts only \
             where it checks permissions itself (default_permissions), and sends xfused no \
             caller to check against"
        );
    }
    match m.serve.permissions {
        PermissionsArg::Kernel => serve_checked_by(fs, m, after_mount, |_| Ok(())),
        PermissionsArg::Daemon => {
            let checked = Arc::new(xfuse::perm::Checked::new(fs));
            let arm = checked.clone();
            serve_checked_by(checked, m, after_mount, move |notifier| {
                // Probe now, on an empty cache: a kernel without the
                // notification would leave stale entries after a chmod.
                notifier.inc_epoch().context(
                    "--permissions daemon needs FUSE_NOTIFY_INC_EPOCH (Linux 6.16+) to drop cached \
                     entries when a directory closes; use --permissions kernel on this kernel",
                )?;
                arm.set_flusher(Box::new(notifier));
                tracing::info!(
                    "permissions checked by xfused (no default_permissions); entries cached only \
                     in directories everybody may search"
                );
                Ok(())
            })
        }
    }
}

/// What a subcommand may do to its session between mount and serving,
/// whatever filesystem type the session ended up with.
pub trait MountHooks {
    /// See [`Session::enable_passthrough`].
    fn enable_passthrough(&mut self, opener: Box<dyn xfuse::passthrough::BackingOpener>) -> bool;
    /// See [`Session::set_file_attrs`].
    fn set_file_attrs(&mut self, hook: Box<dyn xfuse::fileattr::FileAttrs>);
}

impl<F> MountHooks for Session<F>
where
    F: fuse_backend_rs::api::filesystem::FileSystem + Send + Sync + 'static,
{
    fn enable_passthrough(&mut self, opener: Box<dyn xfuse::passthrough::BackingOpener>) -> bool {
        Session::enable_passthrough(self, opener)
    }

    fn set_file_attrs(&mut self, hook: Box<dyn xfuse::fileattr::FileAttrs>) {
        Session::set_file_attrs(self, hook)
    }
}

fn serve_checked_by<F>(
    fs: Arc<F>,
    m: Mounting<'_>,
    after_mount: impl FnOnce(&mut dyn MountHooks),
    arm_checks: impl FnOnce(xfuse::Notifier) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    F: fuse_backend_rs::api::filesystem::FileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static,
{
    let args = m.serve;
    let kernel = m.kernel;
    let mut options = MountOptions::new(m.fsname, SUBTYPE);
    options.default_permissions = args.permissions == PermissionsArg::Kernel;
    options.allow_other = !args.owner_only;
    args.mount_flags.apply(&mut options)?;
    let init = InitConfig {
        max_write: args.max_write_kib * 1024,
        writeback_cache: m.writeback_cache,
        passthrough: m.passthrough,
        // With the kernel's checks, its ACL checks too. Without them
        // xfuse::perm reads ACLs itself (FUSE_POSIX_ACL would turn
        // default_permissions on).
        posix_acl: args.permissions == PermissionsArg::Kernel,
        // With it, the umask is the filesystem's to apply (both kinds
        // served here apply it), or a default ACL could not replace it.
        dont_mask: args.permissions == PermissionsArg::Kernel,
        allow_idmap: m.allow_idmap,
        ..Default::default()
    };
    let threads = args.threads.map_or_else(xfuse::default_threads, usize::from);
    let want_uring = match args.transport {
        TransportArg::Uring => true,
        TransportArg::Dev => false,
        TransportArg::Auto => {
            let (uring, why) = match kernel.uring_enabled {
                Some(true) => (true, "FUSE-over-io_uring is on".to_string()),
                Some(false) => (
                    false,
                    format!(
                        "FUSE-over-io_uring is off ({} = N; `xfused kernel enable-uring` turns it on)",
                        kmod_shim::probe::ENABLE_URING_PARAM
                    ),
                ),
                None => (
                    false,
                    format!("kernel {} has no FUSE-over-io_uring", kernel.release),
                ),
            };
            tracing::info!(
                "transport auto: {} because {why}",
                if uring { "uring" } else { "dev" }
            );
            uring
        }
    };
    let init = InitConfig {
        over_io_uring: want_uring,
        ..init
    };

    // Bound before mounting: an address in use fails the command, not the mount.
    let metrics = crate::metrics::Endpoint::start(&args.metrics)?;
    // Loaded before mounting, so the counters see the mount's first request.
    let tracer = match args.cache_policy {
        CachePolicyArg::Fixed => None,
        CachePolicyArg::Adaptive => adaptive::load(args),
    };
    let mut session = Session::mount(fs, m.mountpoint, &options, &init)?;
    if m.allow_idmap {
        if !session.negotiated().has(kmod_shim::abi::init_flags::ALLOW_IDMAP) {
            // Dropping the session unmounts.
            bail!(
                "--allow-idmap: the kernel did not offer FUSE_ALLOW_IDMAP in INIT (needs Linux 6.12+; \
                 kernel {})",
                kernel.release
            );
        }
        tracing::info!(
            "idmapped mounts allowed (FUSE_ALLOW_IDMAP): requests other than creations carry no caller"
        );
    }
    arm_checks(session.notifier())?;
    session.time_requests(metrics.is_some());
    after_mount(&mut session);
    session.set_policy(Policy {
        negative_timeout: Duration::from_millis(args.negative_timeout_ms),
        open_noflush: !args.flush_on_close,
        // xfuse::perm::Checked marks names in directories not everybody may
        // search with a zero entry timeout; adaptive timeouts must keep it.
        zero_entry_timeout_stands: args.permissions == PermissionsArg::Daemon,
        umask_yields_to_default_acl: m.umask_yields_to_default_acl,
        add_dot_entries: m.passthrough_fs_listings,
        readdir_through_readdirplus: m.passthrough_fs_listings,
        tmpfile_through_create: m.tmpfile_through_create,
    });
    let adaptive = tracer.and_then(|t| adaptive::install(args, m.mountpoint, t, &mut session));
    let agreed = session
        .negotiated()
        .has(kmod_shim::abi::init_flags::OVER_IO_URING);
    let transport = if want_uring && !agreed {
        if args.transport == TransportArg::Uring {
            bail!("--transport uring: the kernel did not offer FUSE_OVER_IO_URING in INIT");
        }
        tracing::warn!("transport auto: the kernel did not offer FUSE_OVER_IO_URING in INIT; using dev");
        Transport::Dev { threads }
    } else if want_uring {
        Transport::Uring(UringConfig {
            queue_depth: args.queue_depth.map_or(0, usize::from),
            threads,
            spin: Duration::from_micros(args.spin_us),
            forget_pause: Duration::from_micros(args.forget_pause_us),
        })
    } else {
        Transport::Dev { threads }
    };
    eprintln!(
        "xfused: serving {} at {} (transport {}); Ctrl-C or SIGTERM unmounts",
        m.what,
        m.mountpoint.display(),
        transport.name()
    );
    let transport_name = transport.name();
    let running = session.serve(transport)?;
    let dispatcher = running.dispatcher().clone();
    // Started once serving: the first read of the counters may follow.
    let _refresher = match adaptive {
        Some(a) => Some(a.refresh()?),
        None => None,
    };
    if let Some(on_serving) = m.on_serving {
        on_serving();
    }
    let queues = running.queue_counters();
    if let Some(endpoint) = &metrics {
        endpoint.add(Arc::new(crate::metrics::sources::Mount::new(
            dispatcher.clone(),
            queues.clone(),
            transport_name,
            threads,
        )));
        for source in m.metric_sources {
            endpoint.add(source);
        }
    }
    let mut signals = m.signals;
    {
        let (dispatcher, queues) = (dispatcher.clone(), queues.clone());
        signals.on_report(move || eprintln!("{}", report::stats_report(&dispatcher, queues.as_deref())));
    }
    let (ended, _session) = running.run_until_signal(signals)?;
    match ended {
        Ended::Signal(sig) => tracing::info!("stopped by signal {sig}"),
        Ended::Unmounted => tracing::info!("{} was unmounted; exiting", m.mountpoint.display()),
    }
    if args.stats {
        eprintln!("{}", report::stats_report(&dispatcher, queues.as_deref()));
    }
    Ok(())
}
