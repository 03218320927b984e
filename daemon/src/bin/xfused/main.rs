//! `xfused`: the xfuse daemon.
//!
//! Subcommands:
//! - `passthrough`: serve a local directory (fuse-backend-rs's PassthroughFs)
//!   through xfuse;
//! - `virtiofs`: serve a local directory to a virtual machine (vhost-user-fs,
//!   xfuse's `virtio` transport), in place of virtiofsd;
//! - `stats`: a live view of one mount's kernel→daemon traffic, from BPF;
//! - `mount`: mount the distributed filesystem (namespace from a metadata
//!   engine, file data in a local chunk store);
//! - `meta`: run a metadata service for `xfused mount --meta tcp://…`;
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
    /// Mount the distributed filesystem: the namespace from a metadata
    /// engine, file data in a local chunk store (in the foreground).
    ///
    /// With no flags, everything runs in this process on the embedded
    /// metadata engine under /var/lib/xfused. SIGINT or SIGTERM unmounts and
    /// exits 0; so does an unmount from outside.
    Mount(MountArgs),
    /// Run a metadata service: answer `xfused mount --meta tcp://HOST:PORT`
    /// clients from a metadata engine (in the foreground).
    ///
    /// Stateless: each request is one transaction on the engine, so a
    /// service can be restarted, or several run side by side, without
    /// clients losing anything.
    Meta(MetaArgs),
    /// Make or narrow cluster credentials (the files `xfused meta`, its
    /// mounts and its tools authenticate with).
    #[command(subcommand)]
    Credential(CredentialCommand),
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
#[derive(Debug, Args)]
struct ServeArgs {
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
    /// uring: microseconds the /dev/fuse worker beside the rings waits after
    /// a FORGET, so that the next ones arrive together as one BATCH_FORGET
    /// instead of one wake-up per unlinked file; an INTERRUPT may wait as
    /// long (0 reads each FORGET at once).
    #[arg(long, value_name = "US", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    forget_pause_us: u64,
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
    /// Send FLUSH to xfused on every close. Off by default: the filesystems
    /// xfused serves write data through and serve no POSIX locks
    /// themselves, so a close has nothing to flush.
    #[arg(long)]
    flush_on_close: bool,
    /// Largest write request, in KiB (4 to 16384).
    #[arg(long, value_name = "KIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(4..=16384))]
    max_write_kib: u32,
    /// Who checks permissions against file modes and owners.
    #[arg(long, value_enum, default_value_t = PermissionsArg::Kernel)]
    permissions: PermissionsArg,
    /// Only the mounting user may access the mount (by default every user
    /// may, subject to permissions).
    #[arg(long)]
    owner_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PermissionsArg {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    /// A metadata change is acknowledged once written to the operating
    /// system: a crash or kill -9 of xfused loses nothing; the journal is
    /// fsynced every --fsync-ms, so a power loss loses at most that window.
    Buffered,
    /// A metadata change is acknowledged only after an fdatasync; changes
    /// arriving during one sync share the next (group commit).
    Sync,
}

/// Options of an embedded metadata engine.
#[derive(Debug, Args)]
struct EngineArgs {
    /// When a metadata change counts as done (embedded engine).
    #[arg(long, value_enum, default_value = "buffered")]
    durability: DurabilityArg,
    /// With --durability buffered: how often the metadata journal is
    /// fsynced, in milliseconds (1 to 60000).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..=60000))]
    fsync_ms: u16,
}

#[derive(Debug, Args)]
struct MetaArgs {
    /// The engine holding the namespace: `embedded:PATH`, an embedded store
    /// in directory PATH (created if missing, made private: 0700; one
    /// process at a time), or
    /// `etcd://HOST:PORT[,HOST:PORT...]`, the client endpoints of an etcd
    /// cluster (keys under xfuse/; run etcd with --max-txn-ops 10000).
    #[arg(long, value_name = "ENGINE")]
    engine: String,
    /// Where to accept clients: HOST:PORT (e.g. 127.0.0.1:26000).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// Clients' lease, in milliseconds: a client that has not renewed it
    /// for this long is considered dead; its open files are closed (every
    /// third of this, the service reaps).
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    lease_ms: u64,
    #[command(flatten)]
    engine_args: EngineArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Where the cluster credential is, unless --credential says.
const DEFAULT_CREDENTIAL: &str = "/var/lib/xfused/cluster.pem";

/// How this process authenticates to the cluster's services.
#[derive(Debug, Args)]
struct AuthArgs {
    /// The cluster credential: a PEM file with the cluster's CA certificate
    /// and key (`xfused meta` makes one at the default path on first start;
    /// copy it to every machine of the cluster), or a narrower one from
    /// `xfused credential issue`. Must be private (mode 0600).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CREDENTIAL)]
    credential: PathBuf,
    /// Use no authentication: any process that can reach the service's port
    /// may act as any user, root included. Only for a network nobody else
    /// can reach; a service and its mounts must all say it.
    #[arg(long)]
    insecure_no_auth: bool,
}

impl AuthArgs {
    /// The credential, or `None` without authentication.
    fn load(&self) -> anyhow::Result<Option<xfused::rpc::auth::Credential>> {
        if self.insecure_no_auth {
            tracing::warn!("--insecure-no-auth: connections are neither authenticated nor encrypted");
            return Ok(None);
        }
        if !self.credential.exists() {
            bail!(
                "no cluster credential at {}: start `xfused meta` on this machine first (it makes one there), \
                 or copy the cluster's credential there, or pass --credential FILE",
                self.credential.display()
            );
        }
        Ok(Some(
            xfused::rpc::auth::Credential::load(&self.credential)
                .context("loading the cluster credential")?,
        ))
    }
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Make a new cluster: write a fresh cluster credential (CA certificate
    /// and key) to FILE, mode 0600. Refuses to overwrite.
    New {
        /// Where to write it.
        file: PathBuf,
    },
    /// Write a credential that can be one role and nothing else (no CA
    /// key): e.g. `--role mount` for a machine that should only mount.
    Issue {
        /// mount, service or admin.
        #[arg(long, value_parser = ["mount", "service", "admin"])]
        role: String,
        /// The cluster credential to issue from.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CREDENTIAL)]
        from: PathBuf,
        /// Where to write the new credential (mode 0600; refuses to overwrite).
        out: PathBuf,
    },
}

fn credential(command: CredentialCommand) -> anyhow::Result<()> {
    use xfused::rpc::auth::{Credential, Role};
    let (made, out) = match command {
        CredentialCommand::New { file } => (Credential::generate()?, file),
        CredentialCommand::Issue { role, from, out } => {
            let cluster = Credential::load(&from).context("loading the cluster credential")?;
            let role = Role::parse(&role).context("--role")?;
            (cluster.issue(role).context("issuing")?, out)
        }
    };
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(made.to_pem().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("xfused: wrote {}", out.display());
    Ok(())
}

#[derive(Debug, Args)]
struct MountArgs {
    /// Where to mount (an existing directory).
    mountpoint: PathBuf,
    /// Where the namespace lives: `embedded:PATH` (an embedded store in
    /// directory PATH, served inside this process; one process at a time),
    /// `etcd://HOST:PORT[,HOST:PORT...]` (an etcd cluster; the metadata layer
    /// runs in this process), or `tcp://HOST:PORT[,HOST:PORT...]` (running
    /// `xfused meta` services). With etcd or tcp, any number of mounts on
    /// any machines share the namespace. Default: embedded:DATA/meta.
    #[arg(long, value_name = "URL")]
    meta: Option<String>,
    /// Directory for this client's file data (the local chunk store, in
    /// DATA/chunks) and the default embedded metadata store. Created if
    /// missing; made private (0700, files 0600) to this user.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/xfused")]
    data: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
    /// Chunk size of new files, in KiB (4 to 65536).
    #[arg(long, value_name = "KIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(4..=65536))]
    chunk_size_kib: u32,
    /// This client's lease, in milliseconds: renewed every third of it; a
    /// client silent for longer is considered dead and its open files are
    /// closed by whoever reaps next. With tcp://, use the service's value.
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    lease_ms: u64,
    #[command(flatten)]
    serve: ServeArgs,
    /// With --meta tcp://.
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Debug, Args)]
struct PassthroughArgs {
    /// The directory to serve.
    source: PathBuf,
    /// Where to mount it (an existing directory).
    mountpoint: PathBuf,
    #[command(flatten)]
    serve: ServeArgs,
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
        Command::Mount(args) => mount(args),
        Command::Meta(args) => meta_service(args),
        Command::Credential(command) => credential(command),
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
        attr_timeout: Duration::from_millis(args.serve.attr_timeout_ms),
        entry_timeout: Duration::from_millis(args.serve.entry_timeout_ms),
        cache_policy: args.cache.into(),
        writeback: args.writeback_cache,
        xattr: !args.no_xattr,
        do_import: true,
        // Identify inodes by file handle, not by an open descriptor each:
        // the open-file limit (20,000 here) would otherwise cap live inodes.
        inode_file_handles: true,
        // Set-user-ID and set-group-ID bits are cleared by xfuse's
        // dispatcher (FUSE_HANDLE_KILLPRIV_V2, xfuse::killpriv), for every
        // filesystem, by the caller's groups. PassthroughFs's own clearing
        // drops CAP_FSETID and lets the host kernel decide by the daemon's
        // groups instead (too much, or too little): it must stay off. The
        // host kernel still removes security.capability on the writes,
        // truncates and chowns PassthroughFs makes.
        killpriv_v2: false,
        // Not use_host_ino: fuse-backend-rs 0.14 then loses inodes the
        // kernel still references (GETATTR answered EBADF) when the source
        // is not the root of its filesystem; seen under pjdfstest on ext4.
        ..Default::default()
    };
    if kernel.cap_sys_admin {
        // PassthroughFs creates files as the caller (switching the thread's
        // euid), and in file-handle mode reopens the parent directory with
        // open_by_handle_at inside that window, which needs
        // CAP_DAC_READ_SEARCH; the kernel clears effective capabilities on a
        // euid change unless told not to. Permissions are still enforced,
        // before the request reaches PassthroughFs: by the kernel
        // (`--permissions kernel`) or by xfuse::perm (`--permissions daemon`).
        kmod_shim::creds::keep_capabilities_across_setuid()
            .context("keeping capabilities across uid switches (prctl PR_SET_SECUREBITS)")?;
    }
    let fs = Arc::new(PassthroughFs::<()>::new(cfg).context("setting up PassthroughFs")?);
    let want_passthrough = args.passthrough;
    let backing_fs = fs.clone();
    serve(
        fs,
        Mounting {
            fsname: source_str,
            what: source.display().to_string(),
            mountpoint: &args.mountpoint,
            serve: &args.serve,
            writeback_cache: args.writeback_cache,
            passthrough: want_passthrough,
            kernel,
            signals,
        },
        |session| {
            if want_passthrough {
                if session.enable_passthrough(Box::new(backing::PassthroughBacking::new(backing_fs))) {
                    tracing::info!(
                        "FUSE passthrough on: open files are read and written by the kernel directly"
                    );
                } else {
                    tracing::warn!(
                        "the kernel did not offer FUSE_PASSTHROUGH in INIT (needs Linux 6.9+ with \
                         CONFIG_FUSE_PASSTHROUGH); serving file data through xfused"
                    );
                }
            }
        },
    )
}

/// Where `xfused mount` finds its namespace.
enum MetaUrl {
    Embedded(PathBuf),
    Etcd(Vec<String>),
    Tcp(String),
}

fn parse_meta_url(url: &str) -> anyhow::Result<MetaUrl> {
    if let Some(path) = url.strip_prefix("embedded:") {
        if path.is_empty() {
            bail!("--meta {url:?}: embedded: needs a directory, e.g. embedded:/var/lib/xfused/meta");
        }
        return Ok(MetaUrl::Embedded(PathBuf::from(path)));
    }
    if let Some(addr) = url.strip_prefix("tcp://") {
        if addr.is_empty() {
            bail!("--meta {url:?}: tcp:// needs HOST:PORT of an `xfused meta` service");
        }
        return Ok(MetaUrl::Tcp(addr.to_string()));
    }
    if let Some(list) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = list.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                bail!("{url:?}: etcd endpoint {e:?} is not HOST:PORT");
            }
        }
        return Ok(MetaUrl::Etcd(endpoints));
    }
    bail!("{url:?}: expected embedded:PATH, etcd://HOST:PORT[,HOST:PORT...] or tcp://HOST:PORT")
}

/// A namespace opened for this process: the filesystem over it, and what to
/// close when serving ends.
struct OpenNamespace {
    fs: Arc<xfused::fs::MetaFs>,
    meta: Arc<dyn xfused::meta::Namespace>,
    url: String,
    data: PathBuf,
}

/// Where a namespace comes from and how this client holds it.
struct NamespaceSpec<'a> {
    meta: Option<String>,
    data: &'a std::path::Path,
    engine: &'a EngineArgs,
    chunk_size_kib: u32,
    lease_ms: u64,
    attr_timeout_ms: u64,
    entry_timeout_ms: u64,
    check_permissions: bool,
    /// How to authenticate to a tcp:// service.
    auth: &'a AuthArgs,
    /// Callers are this machine's processes (their pids name their
    /// groups); not so for a guest's.
    host_callers: bool,
}

/// Opens the namespace of `xfused mount` (and of `xfused virtiofs --meta`):
/// the engine or service named by the URL, the local chunk store, dead
/// clients' sessions reaped, and a thread renewing this client's lease.
fn open_namespace(spec: NamespaceSpec<'_>) -> anyhow::Result<OpenNamespace> {
    use xfused::chunk::ChunkStore;
    use xfused::fs::{MetaFs, MetaFsConfig};
    use xfused::meta::{Meta, MetaConfig, Namespace, SystemClock};

    xfused::private_state::ensure_dir(spec.data)
        .with_context(|| format!("creating data directory {}", spec.data.display()))?;
    let data = std::fs::canonicalize(spec.data)
        .with_context(|| format!("data directory {}", spec.data.display()))?;
    let url = spec
        .meta
        .clone()
        .unwrap_or_else(|| format!("embedded:{}", data.join("meta").display()));
    let config = MetaConfig {
        chunk_size_bytes: spec.chunk_size_kib * 1024,
        lease: Duration::from_millis(spec.lease_ms),
        ..MetaConfig::default()
    };
    let lease = config.lease;
    let mut caller_groups = false;
    let meta: Arc<dyn Namespace> = match parse_meta_url(&url)? {
        MetaUrl::Embedded(store) => {
            let engine = open_embedded(&store, spec.engine)?;
            Arc::new(
                Meta::connect(Arc::new(engine), config, Arc::new(SystemClock))
                    .context("opening the namespace")?,
            )
        }
        MetaUrl::Etcd(endpoints) => {
            let engine = open_etcd(&endpoints)?;
            Arc::new(
                Meta::connect(Arc::new(engine), config, Arc::new(SystemClock))
                    .context("opening the namespace")?,
            )
        }
        MetaUrl::Tcp(addr) => {
            if spec.chunk_size_kib != 1024 {
                tracing::warn!("--chunk-size-kib is the service's choice with tcp://; ignored");
            }
            let tls = match spec.auth.load()? {
                Some(cred) => Some(
                    cred.client_config(xfused::rpc::auth::Role::Mount)
                        .context("the cluster credential")?,
                ),
                None => None,
            };
            let remote = xfused::net::RemoteMeta::connect(&addr, tls)
                .with_context(|| format!("connecting to the metadata service at {addr}"))?;
            tracing::info!("metadata: service at {addr}");
            // The service checks every caller: it needs their groups.
            caller_groups = spec.host_callers;
            Arc::new(remote)
        }
    };
    tracing::info!("registered as metadata client {}", meta.client_id());
    let chunks =
        ChunkStore::open(&data).with_context(|| format!("opening the chunk store in {}", data.display()))?;
    let fs = Arc::new(MetaFs::new(
        meta.clone(),
        chunks,
        MetaFsConfig {
            attr_timeout: Duration::from_millis(spec.attr_timeout_ms),
            entry_timeout: Duration::from_millis(spec.entry_timeout_ms),
            check_permissions: spec.check_permissions,
            caller_groups,
        },
    ));
    // Sessions of clients that died without closing (a crash, kill -9):
    // their unlinked-but-open files are deleted now.
    match meta.reap_expired() {
        Ok(reclaimed) => {
            if !reclaimed.is_empty() {
                tracing::info!("reaped {} files left open by dead clients", reclaimed.len());
            }
            for r in reclaimed {
                fs.reclaim(Some(r));
            }
        }
        Err(e) => tracing::warn!("reaping dead clients' sessions: {e}"),
    }
    {
        let meta = meta.clone();
        std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || loop {
                std::thread::sleep(lease / 3);
                if let Err(e) = meta.heartbeat() {
                    tracing::warn!("renewing the metadata lease: {e}");
                }
            })
            .context("starting the lease thread")?;
    }
    Ok(OpenNamespace { fs, meta, url, data })
}

impl OpenNamespace {
    /// Closes this client's sessions: the kernel (or guest) has released
    /// every open file by now; anything left is closed so no session
    /// outlives this client.
    fn close(&self) {
        match self.meta.close_client() {
            Ok(reclaimed) => {
                for r in reclaimed {
                    self.fs.reclaim(Some(r));
                }
            }
            Err(e) => tracing::warn!("closing the metadata client: {e}"),
        }
    }
}

/// Private state on disk: the only files `xfused mount` and `xfused meta`
/// create are their own (chunks, the embedded store's journal and tables),
/// so a umask of 077 makes those the embedded engine creates 0600 too (the
/// chunk store sets its modes itself). Not for `xfused virtiofs`, whose
/// vhost-user socket must stay reachable by QEMU; its store is private by
/// its 0700 directory.
fn private_umask() {
    let old = kmod_shim::creds::set_umask(0o077);
    tracing::debug!("umask {old:03o} -> 077: state files are private");
}

fn mount(args: MountArgs) -> anyhow::Result<()> {
    private_umask();
    let signals = ShutdownSignals::install()?;
    let ns = open_namespace(NamespaceSpec {
        meta: args.meta.clone(),
        data: &args.data,
        engine: &args.engine,
        chunk_size_kib: args.chunk_size_kib,
        lease_ms: args.lease_ms,
        attr_timeout_ms: args.serve.attr_timeout_ms,
        entry_timeout_ms: args.serve.entry_timeout_ms,
        // Checked in front of MetaFs (xfuse::perm) with --permissions daemon.
        check_permissions: false,
        auth: &args.auth,
        host_callers: true,
    })?;
    let kernel = kmod_shim::probe();
    tracing::info!("{kernel}");
    let result = serve(
        ns.fs.clone(),
        Mounting {
            fsname: "xfused".to_string(),
            what: format!("namespace {} with data in {}", ns.url, ns.data.display()),
            mountpoint: &args.mountpoint,
            serve: &args.serve,
            writeback_cache: false,
            passthrough: false,
            kernel,
            signals,
        },
        |_| {},
    );
    ns.close();
    result
}

fn open_embedded(
    store: &std::path::Path,
    args: &EngineArgs,
) -> anyhow::Result<xfused::meta::embedded::EmbeddedEngine> {
    use xfused::meta::embedded::{Durability, EmbeddedEngine};
    let durability = match args.durability {
        DurabilityArg::Buffered => Durability::Buffered {
            fsync_ms: args.fsync_ms,
        },
        DurabilityArg::Sync => Durability::Sync,
    };
    // 0700: fjall makes its files 0644 under the usual umask; nobody else
    // may reach them (names, xattrs) through this directory.
    xfused::private_state::ensure_dir(store)
        .with_context(|| format!("creating metadata directory {}", store.display()))?;
    let engine = EmbeddedEngine::open(store, durability)
        .with_context(|| format!("opening the embedded metadata store in {}", store.display()))?;
    tracing::info!("metadata: embedded store in {} ({durability:?})", store.display());
    Ok(engine)
}

fn open_etcd(endpoints: &[String]) -> anyhow::Result<xfused::meta::etcd::EtcdEngine> {
    let engine = xfused::meta::etcd::EtcdEngine::connect(endpoints, b"xfuse/")
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    tracing::info!(
        "metadata: etcd cluster at {} (keys under xfuse/)",
        endpoints.join(",")
    );
    Ok(engine)
}

fn meta_service(args: MetaArgs) -> anyhow::Result<()> {
    use xfused::meta::kv::KvEngine;
    use xfused::meta::{MetaConfig, SystemClock};
    use xfused::net::service::TokenKey;
    use xfused::net::MetaService;
    use xfused::rpc::auth::Credential;
    use xfused::rpc::server::{Limits, Server};
    private_umask();
    let addr: std::net::SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {:?}: expected HOST:PORT, e.g. 127.0.0.1:26000",
            args.listen
        )
    })?;
    let (engine, place): (Arc<dyn KvEngine>, String) = match parse_meta_url(&args.engine)? {
        MetaUrl::Embedded(store) => (
            Arc::new(open_embedded(&store, &args.engine_args)?),
            store.display().to_string(),
        ),
        MetaUrl::Etcd(endpoints) => (
            Arc::new(open_etcd(&endpoints)?),
            format!("etcd {}", endpoints.join(",")),
        ),
        MetaUrl::Tcp(_) => bail!(
            "--engine {:?}: a service needs an engine (embedded:PATH or etcd://...), not another service",
            args.engine
        ),
    };
    let config = MetaConfig {
        lease: Duration::from_millis(args.lease_ms),
        ..MetaConfig::default()
    };
    let reap_every = config.lease / 3;
    let (tls, tokens) = if args.auth.insecure_no_auth {
        tracing::warn!("--insecure-no-auth: anyone who can reach {addr} may act as any user, root included");
        (None, TokenKey::insecure())
    } else {
        let cred = Credential::load_or_create(&args.auth.credential).context("the cluster credential")?;
        if !cred.is_cluster() {
            bail!(
                "{}: a service needs the cluster credential (with the CA key), not one issued for a role",
                args.auth.credential.display()
            );
        }
        (
            Some(cred.server_config().context("the cluster credential")?),
            TokenKey::of(&cred)?,
        )
    };
    let service = Arc::new(
        MetaService::new(engine, config, Arc::new(SystemClock), tokens).context("opening the namespace")?,
    );
    service.start_reaper(reap_every).context("starting the reaper")?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    // The bound address, so `--listen HOST:0` says which port it got.
    let bound = listener.local_addr().context("reading the listening address")?;
    let auth = match &tls {
        Some(_) => format!(
            "mutual TLS with the credential in {}",
            args.auth.credential.display()
        ),
        None => "NO authentication".to_string(),
    };
    eprintln!("xfused: metadata service on {bound}, namespace in {place}, {auth}");
    let server = Server::new(service, tls, Limits::default());
    server.serve(listener).context("serving")?;
    Ok(())
}

/// What [`serve`] needs besides the filesystem.
struct Mounting<'a> {
    /// The mount's source field (as `mount` shows it).
    fsname: String,
    /// What is served, for the log line.
    what: String,
    mountpoint: &'a std::path::Path,
    serve: &'a ServeArgs,
    writeback_cache: bool,
    passthrough: bool,
    kernel: kmod_shim::probe::KernelInfo,
    signals: ShutdownSignals,
}

/// Mounts `fs`, serves it on the chosen transport until a signal or an
/// unmount, and prints the counters if asked.
fn serve<F>(fs: Arc<F>, m: Mounting<'_>, after_mount: impl FnOnce(&mut dyn MountHooks)) -> anyhow::Result<()>
where
    F: fuse_backend_rs::api::filesystem::FileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static,
{
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
trait MountHooks {
    /// See [`Session::enable_passthrough`].
    fn enable_passthrough(&mut self, opener: Box<dyn xfuse::passthrough::BackingOpener>) -> bool;
}

impl<F> MountHooks for Session<F>
where
    F: fuse_backend_rs::api::filesystem::FileSystem + Send + Sync + 'static,
{
    fn enable_passthrough(&mut self, opener: Box<dyn xfuse::passthrough::BackingOpener>) -> bool {
        Session::enable_passthrough(self, opener)
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
    let mut options = MountOptions::new(m.fsname, "xfuse");
    options.default_permissions = args.permissions == PermissionsArg::Kernel;
    options.allow_other = !args.owner_only;
    let init = InitConfig {
        max_write: args.max_write_kib * 1024,
        writeback_cache: m.writeback_cache,
        passthrough: m.passthrough,
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

    // Loaded before mounting, so the counters see the mount's first request.
    let tracer = match args.cache_policy {
        CachePolicyArg::Fixed => None,
        CachePolicyArg::Adaptive => adaptive::load(args),
    };
    let mut session = Session::mount(fs, m.mountpoint, &options, &init)?;
    arm_checks(session.notifier())?;
    after_mount(&mut session);
    session.set_policy(Policy {
        negative_timeout: Duration::from_millis(args.negative_timeout_ms),
        open_noflush: !args.flush_on_close,
        // xfuse::perm::Checked marks names in directories not everybody may
        // search with a zero entry timeout; adaptive timeouts must keep it.
        zero_entry_timeout_stands: args.permissions == PermissionsArg::Daemon,
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
    let running = session.serve(transport)?;
    let dispatcher = running.dispatcher().clone();
    // Started once serving: the first read of the counters may follow.
    let _refresher = match adaptive {
        Some(a) => Some(a.refresh()?),
        None => None,
    };
    let queues = running.queue_counters();
    let mut signals = m.signals;
    {
        let (dispatcher, queues) = (dispatcher.clone(), queues.clone());
        signals.on_report(move || eprintln!("{}", stats_report(&dispatcher, queues.as_deref())));
    }
    let (ended, _session) = running.run_until_signal(signals)?;
    match ended {
        Ended::Signal(sig) => tracing::info!("stopped by signal {sig}"),
        Ended::Unmounted => tracing::info!("{} was unmounted; exiting", m.mountpoint.display()),
    }
    if args.stats {
        eprintln!("{}", stats_report(&dispatcher, queues.as_deref()));
    }
    Ok(())
}
