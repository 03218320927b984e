//! `xfused virtiofs`: serve a filesystem to a virtual machine as a
//! vhost-user-fs backend (xfuse's `virtio` transport), in place of virtiofsd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use fuse_backend_rs::passthrough::{Config as PassthroughConfig, PassthroughFs};
use xfuse::idmap::{IdMap, IdMaps, IdRule};
use xfused::client::{
    open_namespace, AuthArgs, EngineArgs, NamespaceSpec, CHUNK_SIZE_KIB_DEFAULT, DATA_DIR_DEFAULT,
    LEASE_MS_DEFAULT,
};
use xfused::metrics::{self, Endpoint, MetricsArgs};
use xfused::serve::sandbox::{self, Isolated, SandboxArg, SandboxArgs, Served};
use xfused::serve::vm::{serve_vm_on, VmServing};
use xfused::serve::{CacheArg, MAX_WRITE_KIB_DEFAULT};

#[derive(Debug, Args)]
pub struct VirtiofsArgs {
    /// The vhost-user socket to listen on; QEMU connects to it
    /// (-chardev socket,path=PATH -device vhost-user-fs-pci,chardev=...).
    /// A stale socket at PATH is replaced; any other file there is an error.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The directory to serve to the guest (PassthroughFs).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "meta",
        conflicts_with = "meta"
    )]
    source: Option<PathBuf>,
    /// Serve the distributed filesystem instead, as `xfused mount --meta
    /// URL` would mount it: `embedded:PATH`, `etcd://HOST:PORT[,...]` or
    /// `tcp://HOST:PORT` of an `xfused meta` service. The guest is then one
    /// more client of that namespace.
    #[arg(long, value_name = "URL")]
    meta: Option<String>,
    /// With --meta: this client's data directory (the local chunk store).
    /// Default: /var/lib/xfused; given, file data stays there even when
    /// the cluster has storage targets.
    #[arg(long, value_name = "DIR", requires = "meta")]
    data: Option<PathBuf>,
    /// Threads that run requests (0: each request queue runs its own, one at
    /// a time, on the queue's thread).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    thread_pool: u16,
    /// Request queues offered to the VMM, on top of the high-priority queue
    /// (match QEMU's num-request-queues).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=63))]
    queues: u16,
    /// Largest virtqueue size accepted (match QEMU's queue-size, a power of two).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    queue_size: u16,
    /// After the VMM disconnects, wait for the next one instead of exiting.
    #[arg(long)]
    keep_listening: bool,
    /// Kernel data caching policy for regular files in the guest.
    #[arg(long, value_enum, default_value = "auto")]
    cache: CacheArg,
    /// How long the guest may cache attributes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    attr_timeout_ms: u64,
    /// How long the guest may cache directory entries (and negative
    /// lookups), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    entry_timeout_ms: u64,
    /// Largest write request, in KiB (4 to 16384); the guest also caps it
    /// by its queue size.
    #[arg(long, value_name = "KIB", default_value_t = MAX_WRITE_KIB_DEFAULT,
          value_parser = clap::value_parser!(u32).range(4..=16384))]
    max_write_kib: u32,
    /// Hold an O_PATH descriptor per inode the guest knows, as virtiofsd
    /// does by default, instead of a file handle reopened per operation:
    /// saves an open and a close on each operation on a known inode, but
    /// caps the inodes a guest can hold at the open-file limit (EMFILE past
    /// it). Always so under --sandbox namespace or chroot, with the limit
    /// raised to its maximum.
    #[arg(long)]
    inode_fds: bool,
    /// Serve extended attributes (on by default with --sandbox none; this
    /// turns them off). Under --sandbox namespace or chroot they are never
    /// served (PassthroughFs reaches them through /proc, which the sandbox
    /// removes).
    #[arg(long)]
    no_xattr: bool,
    /// Print request counters (per opcode) when each guest session ends, and
    /// chain counters at exit.
    #[arg(long)]
    stats: bool,
    /// Translate the guest's user ids (repeatable; without it uids pass
    /// unchanged and guest root is host root). RULE is
    /// `map:GUEST:HOST:COUNT` (guest uids GUEST.. are host uids HOST..,
    /// COUNT of them, both ways) or `squash-guest:GUEST:COUNT:HOST` (COUNT
    /// guest uids from GUEST all act as host uid HOST); no two rules may
    /// claim the same guest uid, nor two maps the same host uid. Once
    /// given: a guest caller no rule names acts as uid 65534 (nobody, as
    /// NFS's root_squash; refusing it would also refuse the guest kernel's
    /// own requests, which carry uid 0); host uids no map names show as
    /// 65534 in the guest; a chown to a uid no rule names is refused
    /// (EINVAL); device nodes can be made only by a caller that is host
    /// root; POSIX ACLs and file capabilities are translated too. Example,
    /// guest root as host uid 1000 and nobody else: --translate-uid
    /// map:0:1000:1
    #[arg(long, value_name = "RULE")]
    translate_uid: Vec<IdRule>,
    /// Translate the guest's group ids (repeatable), as --translate-uid
    /// does user ids: `map:GUEST:HOST:COUNT` or
    /// `squash-guest:GUEST:COUNT:HOST`; unmapped callers act as gid 65534,
    /// unmapped host gids show as 65534, a chgrp to an unmapped gid is
    /// refused (EINVAL).
    #[arg(long, value_name = "RULE")]
    translate_gid: Vec<IdRule>,
    /// With --meta tcp://.
    #[command(flatten)]
    auth: AuthArgs,
    /// With a storage cluster.
    #[command(flatten)]
    data_transport: xfused::storage::transport::DataTransportArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub fn run(args: VirtiofsArgs) -> anyhow::Result<()> {
    if !args.queue_size.is_power_of_two() {
        bail!("--queue-size {} is not a power of two", args.queue_size);
    }
    let ids = IdMaps {
        uid: IdMap::new(args.translate_uid.clone()).context("--translate-uid")?,
        gid: IdMap::new(args.translate_gid.clone()).context("--translate-gid")?,
    };
    // The sockets before the sandbox (xfused::serve::sandbox): the
    // vhost-user socket in the host's file tree, metrics in its network.
    let metrics_bound = metrics::Bound::bind(&args.metrics)?;
    let source = match &args.source {
        Some(source) => Some(shared_dir(source)?),
        None => None,
    };
    let served = source.as_deref().map_or(Served::Distributed, Served::Directory);
    let mode = args.sandbox.sandbox;
    let listener = xfuse::transport::virtio::listen(&args.socket)?;
    if let Isolated::Waited(exit) = sandbox::isolate(mode, served)? {
        drop(listener);
        let _ = std::fs::remove_file(&args.socket);
        std::process::exit(sandbox::exit_code(exit));
    }
    let seccomp = args.sandbox.seccomp_action(served);
    let remove_socket = mode == SandboxArg::None;
    let Some(source) = &source else {
        // --meta: the distributed filesystem (clap requires one of the two).
        // `xfused mount`'s defaults: virtiofs has no flags for these.
        let ns = open_namespace(NamespaceSpec {
            meta: args.meta.clone(),
            data: args
                .data
                .as_deref()
                .unwrap_or(std::path::Path::new(DATA_DIR_DEFAULT)),
            engine: &EngineArgs::default(),
            chunk_size_kib: CHUNK_SIZE_KIB_DEFAULT,
            lease_ms: LEASE_MS_DEFAULT,
            attr_timeout_ms: args.attr_timeout_ms,
            entry_timeout_ms: args.entry_timeout_ms,
            // The guest kernel checks permissions (virtio-fs mounts use
            // default_permissions).
            check_permissions: false,
            auth: &args.auth,
            data_transport: &args.data_transport,
            // A guest's pids are not this machine's: its callers' groups
            // cannot be read here, and a service checks with the primary
            // group only.
            host_callers: false,
            // The guest mounts with its own options and does not say which:
            // the relatime rule, as Linux by default.
            atime: kmod_shim::Atime::Relatime,
            local_data: args.data.is_some(),
        })?;
        sandbox::confine(&sandbox::capabilities_for(served), false, seccomp, served)?;
        let metrics = metrics_bound.map(metrics::Bound::serve).transpose()?;
        if let Some(endpoint) = &metrics {
            for source in ns.metric_sources() {
                endpoint.add(source);
            }
        }
        let what = format!("namespace {} with file data in {}", ns.url, ns.file_data);
        let result = serve_vm_on(
            ns.fs.clone(),
            listener,
            &vm(&args, metrics.as_ref(), &ids, false),
            &what,
            remove_socket,
        );
        ns.close();
        return result;
    };
    let source_str = source
        .to_str()
        .with_context(|| format!("source path {} is not UTF-8", source.display()))?
        .to_string();
    // Confined, the shared directory is the root by the time the guest's
    // INIT opens it, and /proc is gone. What PassthroughFs (0.14) does
    // through /proc paths cannot work there, so confined it runs as
    // virtiofsd does by default: inodes as O_PATH descriptors (a file
    // handle is reopened through the mount found by path in
    // /proc/self/mountinfo, which is read relative to the root it was
    // opened under) with the open-file limit raised, and no xattrs (read
    // and written through "/proc/self/fd/N" paths).
    let confined = mode != SandboxArg::None;
    let file_handles = !args.inode_fds && !confined;
    if confined {
        let limit = kmod_shim::sandbox::raise_open_file_limit().context("raising the open-file limit")?;
        tracing::info!("--sandbox: inodes held as O_PATH descriptors, at most {limit} (the open-file limit)");
        if !args.no_xattr {
            tracing::info!(
                "--sandbox: extended attributes are not served (answered ENOSYS); --sandbox none serves them"
            );
        }
    }
    let cfg = PassthroughConfig {
        root_dir: if mode == SandboxArg::None {
            source_str
        } else {
            "/".to_owned()
        },
        attr_timeout: Duration::from_millis(args.attr_timeout_ms),
        entry_timeout: Duration::from_millis(args.entry_timeout_ms),
        cache_policy: args.cache.into(),
        xattr: !args.no_xattr && !confined,
        do_import: true,
        // As for `passthrough`: inodes by file handle unless asked otherwise
        // (the open-file limit does not cap live inodes), set-user-ID bits
        // cleared by xfuse's dispatcher rather than PassthroughFs, and no
        // use_host_ino (fuse-backend-rs 0.14 loses inodes).
        inode_file_handles: file_handles,
        killpriv_v2: false,
        ..Default::default()
    };
    // Opens /proc/self/fd and /proc/self/mountinfo: the sandbox's /proc.
    let fs = PassthroughFs::<()>::new(cfg).context("setting up PassthroughFs")?;
    sandbox::enter_share(mode, source)?;
    // PassthroughFs switches to the guest caller's uid to create files; the
    // reduced capability set is kept across that switch (see
    // sandbox::confine: the guest kernel has checked permissions with
    // groups PassthroughFs does not switch to).
    sandbox::confine(&sandbox::capabilities_for(served), file_handles, seccomp, served)?;
    let metrics = metrics_bound.map(metrics::Bound::serve).transpose()?;
    serve_vm_on(
        fs,
        listener,
        // PassthroughFs: its listings need the dispatcher's corrections.
        &vm(&args, metrics.as_ref(), &ids, true),
        &source.display().to_string(),
        remove_socket,
    )
}

/// The shared directory, absolute and checked.
fn shared_dir(source: &Path) -> anyhow::Result<PathBuf> {
    let dir =
        std::fs::canonicalize(source).with_context(|| format!("source directory {}", source.display()))?;
    if !dir.is_dir() {
        bail!("source {} is not a directory", dir.display());
    }
    Ok(dir)
}

/// What serving to VMs takes from the flags.
fn vm<'a>(
    args: &'a VirtiofsArgs,
    metrics: Option<&'a Endpoint>,
    ids: &'a IdMaps,
    passthrough_fs_listings: bool,
) -> VmServing<'a> {
    VmServing {
        socket: &args.socket,
        request_queues: args.queues,
        max_queue_size: args.queue_size,
        thread_pool: args.thread_pool,
        max_write_kib: args.max_write_kib,
        negative_timeout_ms: args.entry_timeout_ms,
        keep_listening: args.keep_listening,
        stats: args.stats,
        metrics,
        ids,
        passthrough_fs_listings,
        // The filesystem is PassthroughFs (see `passthrough`) or MetaFs,
        // which makes O_TMPFILE files.
        tmpfile_through_create: !passthrough_fs_listings,
    }
}
