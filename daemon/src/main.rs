//! `xfused`: the xfuse daemon.
//!
//! Subcommands:
//! - `passthrough`: serve a local directory (fuse-backend-rs's PassthroughFs)
//!   through xfuse;
//! - `virtiofs`: serve a local directory to a virtual machine (vhost-user-fs,
//!   xfuse's `virtio` transport), in place of virtiofsd;
//! - `stats`: a live view of one mount's kernel→daemon traffic, from BPF;
//! - `kernel`: show what the running kernel offers, or switch FUSE-over-io_uring on.

mod adaptive;
mod backing;
mod stats;
mod virtiofs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use xfuse::transport::uring::UringConfig;
use xfuse::{Ended, InitConfig, MountOptions, Policy, Session, ShutdownSignals, Transport};

/// xfused serves filesystems to the Linux kernel through xfuse, a FUSE
/// protocol layer of our own (kernel protocol 7.45) with fast transports.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more detail.
#[derive(Debug, Parser)]
#[command(name = "xfused", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a local directory at a mountpoint (fuse-backend-rs's
    /// PassthroughFs through xfuse), in the foreground.
    ///
    /// SIGINT or SIGTERM unmounts and exits 0. If the mountpoint is unmounted
    /// from outside (umount MOUNTPOINT), xfused exits 0 by itself.
    Passthrough(PassthroughArgs),
    /// Serve a local directory to a virtual machine through virtio-fs: a
    /// vhost-user-fs backend for QEMU, in place of virtiofsd, in the
    /// foreground.
    ///
    /// The guest mounts it with `mount -t virtiofs TAG DIR`, TAG being the
    /// QEMU device's tag. SIGINT or SIGTERM stops serving and exits 0.
    Virtiofs(virtiofs::VirtiofsArgs),
    /// Watch the requests the kernel sends to the daemon of a FUSE mount,
    /// live: requests/s and latency percentiles per opcode, and the inodes
    /// that get the most LOOKUP/GETATTR upcalls.
    ///
    /// Counts with BPF programs on the fuse:fuse_request_send/end
    /// tracepoints, loaded by this command (root, kernel BTF, a kernel with those tracepoints: checked on 6.18);
    /// works for any FUSE mount, counting from the moment it starts. Ctrl-C
    /// stops it.
    Stats(stats::StatsArgs),
    /// Inspect or configure the kernel's FUSE support.
    #[command(subcommand)]
    Kernel(KernelCommand),
}

#[derive(Debug, Subcommand)]
enum KernelCommand {
    /// Print what the running kernel offers a FUSE server.
    Probe,
    /// Switch FUSE-over-io_uring on for this boot
    /// (writes Y to /sys/module/fuse/parameters/enable_uring; root only).
    EnableUring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    /// uring where the kernel offers it (enable_uring on), else dev.
    Auto,
    /// Classic /dev/fuse, one cloned descriptor and thread per worker.
    Dev,
    /// FUSE-over-io_uring: one ring queue per CPU in shared memory
    /// (Linux 6.14+, with enable_uring on: see `xfused kernel enable-uring`).
    Uring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CachePolicyArg {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CacheArg {
    /// No data caching in the kernel: every read goes to the daemon.
    Never,
    /// Cache data while a file is open; revalidate on open.
    Auto,
    /// Keep cached data across opens.
    Always,
}

#[derive(Debug, Args)]
struct PassthroughArgs {
    /// The directory to serve.
    source: PathBuf,
    /// Where to mount it (an existing directory).
    mountpoint: PathBuf,
    /// How requests travel between the kernel and xfused (given twice, the
    /// last one wins).
    #[arg(long, value_enum, default_value = "auto", overrides_with = "transport")]
    transport: TransportArg,
    /// Worker threads (default: one per CPU). With uring, ring queues (one
    /// per possible CPU) are spread over this many threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// uring: ring entries per queue, i.e. requests one CPU's queue holds at
    /// once (default: 8, fewer on hosts with more than 32 CPUs, at least 2).
    /// Each entry has a payload buffer of max-write size.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    queue_depth: Option<u16>,
    /// uring: microseconds a worker spins on its ring before sleeping
    /// (hybrid polling; 0 sleeps at once).
    #[arg(long, value_name = "US", default_value_t = 0)]
    spin_us: u64,
    /// Print request counters (per opcode, per ring queue) at exit. They are
    /// printed on demand too, without this flag: kill -USR1 <pid>.
    #[arg(long)]
    stats: bool,
    /// How long the kernel may cache attributes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    attr_timeout_ms: u64,
    /// How long the kernel may cache directory entries (and negative
    /// lookups), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    entry_timeout_ms: u64,
    /// How long the kernel may cache that a name does not exist, in
    /// milliseconds (0: never cache it).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    negative_timeout_ms: u64,
    /// How entry and attribute timeouts are chosen.
    #[arg(long, value_enum, default_value = "fixed")]
    cache_policy: CachePolicyArg,
    /// --cache-policy adaptive: the timeout of hot, unchanged inodes, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    long_ttl_ms: u64,
    /// --cache-policy adaptive: most inodes with the long timeout at once.
    #[arg(long, value_name = "N", default_value_t = 32_768,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    long_inodes_max: u64,
    /// --cache-policy adaptive: how often the upcall counters are read and
    /// the long set updated, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    cache_refresh_ms: u64,
    /// Send FLUSH to xfused on every close. Off by default: PassthroughFs
    /// writes data through and serves no POSIX locks itself, so a close has
    /// nothing to flush.
    #[arg(long)]
    flush_on_close: bool,
    /// Kernel data caching policy for regular files.
    #[arg(long, value_enum, default_value = "auto")]
    cache: CacheArg,
    /// Buffer writes in the kernel's page cache (FUSE writeback cache).
    /// Not together with --passthrough.
    #[arg(long, conflicts_with = "passthrough")]
    writeback_cache: bool,
    /// FUSE passthrough (Linux 6.9+, root): reads, writes and mmaps of open
    /// files go from the kernel straight to the source file, never through
    /// xfused. Falls back to serving data through xfused, with a log line,
    /// where the kernel or the privileges lack it.
    #[arg(long)]
    passthrough: bool,
    /// Largest write request, in KiB (4 to 16384).
    #[arg(long, value_name = "KIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(4..=16384))]
    max_write_kib: u32,
    /// Do not let the kernel check permissions from file modes
    /// (by default it does, so only the owner's rights apply, as on a local
    /// filesystem).
    #[arg(long)]
    no_default_permissions: bool,
    /// Only the mounting user may access the mount (by default every user
    /// may, subject to permissions).
    #[arg(long)]
    owner_only: bool,
    /// Serve extended attributes (on by default; this turns them off).
    #[arg(long)]
    no_xattr: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Passthrough(args) => passthrough(args),
        Command::Virtiofs(args) => virtiofs::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Kernel(KernelCommand::Probe) => {
            println!("{}", kmod_shim::probe());
            Ok(())
        }
        Command::Kernel(KernelCommand::EnableUring) => enable_uring(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The request counters: per opcode, passthrough opens, per ring queue.
fn stats_report<F: fuse_backend_rs::api::filesystem::FileSystem + Sync>(
    dispatcher: &xfuse::Dispatcher<F>,
    queues: Option<&xfuse::transport::uring::QueueCounters>,
) -> String {
    let mut report = dispatcher.stats().render();
    report.push_str(&format!(
        "passthrough opens    {:>12}\n",
        dispatcher.passthrough_opens()
    ));
    if let Some(queues) = queues {
        for (qid, n) in queues.snapshot().iter().enumerate() {
            report.push_str(&format!("ring queue {qid:<9} {n:>12}\n"));
        }
    }
    if let Some(ttl) = dispatcher.adaptive_ttl() {
        let s = ttl.stats();
        report.push_str(&format!(
            "long-ttl inodes      {:>12}\npromoted             {:>12}\ndemoted by change    {:>12}\n\
             demoted idle         {:>12}\ninvalidations        {:>12}\ninvalidation errors  {:>12}\n",
            s.long_inodes,
            s.promoted,
            s.demoted_by_change,
            s.demoted_idle,
            s.invalidations,
            s.invalidation_errors
        ));
    }
    report
}

fn enable_uring() -> anyhow::Result<()> {
    let info = kmod_shim::probe();
    match info.uring_enabled {
        None => bail!(
            "kernel {} has no FUSE-over-io_uring ({} is missing; it needs Linux 6.14+ with CONFIG_FUSE_IO_URING)",
            info.release,
            kmod_shim::probe::ENABLE_URING_PARAM
        ),
        Some(true) => {
            println!("FUSE-over-io_uring is already on");
            Ok(())
        }
        Some(false) => {
            kmod_shim::probe::enable_uring()
                .with_context(|| format!("writing Y to {}", kmod_shim::probe::ENABLE_URING_PARAM))?;
            println!("FUSE-over-io_uring switched on for this boot");
            Ok(())
        }
    }
}

fn passthrough(args: PassthroughArgs) -> anyhow::Result<()> {
    // Before anything is mounted: a SIGTERM from here on unmounts cleanly.
    let signals = ShutdownSignals::install()?;
    let source = std::fs::canonicalize(&args.source)
        .with_context(|| format!("source directory {}", args.source.display()))?;
    if !source.is_dir() {
        bail!("source {} is not a directory", source.display());
    }
    let source_str = source
        .to_str()
        .with_context(|| format!("source path {} is not UTF-8", source.display()))?
        .to_string();
    let kernel = kmod_shim::probe();
    tracing::info!("{kernel}");

    let cfg = PassthroughConfig {
        root_dir: source_str.clone(),
        attr_timeout: Duration::from_millis(args.attr_timeout_ms),
        entry_timeout: Duration::from_millis(args.entry_timeout_ms),
        cache_policy: match args.cache {
            CacheArg::Never => CachePolicy::Never,
            CacheArg::Auto => CachePolicy::Auto,
            CacheArg::Always => CachePolicy::Always,
        },
        writeback: args.writeback_cache,
        xattr: !args.no_xattr,
        do_import: true,
        // Identify inodes by file handle, not by an open descriptor each:
        // the open-file limit (20,000 here) would otherwise cap live inodes.
        inode_file_handles: true,
        // The filesystem clears set-user-ID bits on write/truncate/chown
        // (FUSE_HANDLE_KILLPRIV_V2), which spares the kernel a GETXATTR of
        // security.capability before every write. Not with passthrough: those
        // writes never reach PassthroughFs, so the kernel must do it.
        killpriv_v2: !args.passthrough,
        // Not use_host_ino: fuse-backend-rs 0.14 then loses inodes the
        // kernel still references (GETATTR answered EBADF) when the source
        // is not the root of its filesystem; seen under pjdfstest on ext4.
        ..Default::default()
    };
    if kernel.cap_sys_admin && !args.no_default_permissions {
        // PassthroughFs creates files as the caller (switching the thread's
        // euid), and in file-handle mode reopens the parent directory with
        // open_by_handle_at inside that window, which needs
        // CAP_DAC_READ_SEARCH; the kernel clears effective capabilities on a
        // euid change unless told not to. Permissions are still enforced: the
        // kernel checks them before sending the request (default_permissions);
        // without default_permissions the backing filesystem must check them,
        // so capabilities are dropped as usual and non-root creates may fail.
        kmod_shim::creds::keep_capabilities_across_setuid()
            .context("keeping capabilities across uid switches (prctl PR_SET_SECUREBITS)")?;
    }
    let fs = Arc::new(PassthroughFs::<()>::new(cfg).context("setting up PassthroughFs")?);

    let mut options = MountOptions::new(source_str, "xfuse");
    options.default_permissions = !args.no_default_permissions;
    options.allow_other = !args.owner_only;
    let init = InitConfig {
        max_write: args.max_write_kib * 1024,
        writeback_cache: args.writeback_cache,
        passthrough: args.passthrough,
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

    let tracer = match args.cache_policy {
        CachePolicyArg::Fixed => None,
        CachePolicyArg::Adaptive => adaptive::load(&args),
    };
    let mut session = Session::mount(fs.clone(), &args.mountpoint, &options, &init)?;
    if args.passthrough {
        if session.enable_passthrough(Box::new(backing::PassthroughBacking::new(fs))) {
            tracing::info!("FUSE passthrough on: open files are read and written by the kernel directly");
        } else {
            tracing::warn!(
                "the kernel did not offer FUSE_PASSTHROUGH in INIT (needs Linux 6.9+ with \
                 CONFIG_FUSE_PASSTHROUGH); serving file data through xfused"
            );
        }
    }
    session.set_policy(Policy {
        negative_timeout: Duration::from_millis(args.negative_timeout_ms),
        open_noflush: !args.flush_on_close,
    });
    let adaptive = tracer.and_then(|t| adaptive::install(&args, t, &mut session));
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
        })
    } else {
        Transport::Dev { threads }
    };
    eprintln!(
        "xfused: serving {} at {} (transport {}); Ctrl-C or SIGTERM unmounts",
        source.display(),
        args.mountpoint.display(),
        transport.name()
    );
    let dispatcher = session.dispatcher().clone();
    let running = session.serve(transport)?;
    // Started once serving: the first read of the counters may follow.
    let _refresher = match adaptive {
        Some(a) => Some(a.refresh()?),
        None => None,
    };
    let queues = running.queue_counters();
    let mut signals = signals;
    {
        let (dispatcher, queues) = (dispatcher.clone(), queues.clone());
        signals.on_report(move || eprintln!("{}", stats_report(&dispatcher, queues.as_deref())));
    }
    let (ended, _session) = running.run_until_signal(signals)?;
    match ended {
        Ended::Signal(sig) => tracing::info!("stopped by signal {sig}"),
        Ended::Unmounted => tracing::info!("{} was unmounted; exiting", args.mountpoint.display()),
    }
    if args.stats {
        eprintln!("{}", stats_report(&dispatcher, queues.as_deref()));
    }
    Ok(())
}
