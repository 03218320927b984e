//! `xfused mount`: mount the distributed filesystem (a namespace opened by
//! `xfused::client`, served by `xfused::serve`).

use std::path::PathBuf;

use clap::Args;
use xfuse::ShutdownSignals;
use xfused::client::{
    open_namespace, AuthArgs, EngineArgs, NamespaceSpec, CHUNK_SIZE_KIB_DEFAULT, DATA_DIR_DEFAULT,
    LEASE_MS_DEFAULT,
};
use xfused::serve::{serve, Mounting, ServeArgs};

use crate::background::{Detached, LogDestination};

#[derive(Debug, Args)]
// A flag given twice takes the later value, as in an fstab option list
// (`-o noatime,strictatime`).
#[command(args_override_self = true)]
pub struct MountArgs {
    /// Where to mount (an existing directory).
    mountpoint: PathBuf,
    /// Where the namespace lives: `embedded:PATH` (an embedded store in
    /// directory PATH, served inside this process; one process at a time),
    /// `etcd://HOST:PORT[,HOST:PORT...]` (an etcd cluster; the metadata layer
    /// runs in this process; `etcd+tls://` with --etcd-ca for TLS), or
    /// `tcp://HOST:PORT[,HOST:PORT...]` (running
    /// `xfused meta` services). With etcd or tcp, any number of mounts on
    /// any machines share the namespace. Default: embedded:DATA/meta.
    #[arg(long, value_name = "URL")]
    meta: Option<String>,
    /// Directory for this client's file data (the local chunk store, in
    /// DATA/chunks) and the default embedded metadata store (default
    /// /var/lib/xfused). With --meta tcp:// or etcd://, file data goes to the
    /// cluster's storage targets when it has some at mount time, unless
    /// --data is given. Created if missing; made private (0700, files 0600)
    /// to this user.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Chunk size of new files, in KiB (4 to 65536).
    #[arg(long, value_name = "KIB", default_value_t = CHUNK_SIZE_KIB_DEFAULT,
          value_parser = clap::value_parser!(u32).range(4..=65536))]
    chunk_size_kib: u32,
    /// This client's lease, in milliseconds: renewed every third of it; a
    /// client silent for longer is considered dead and its open files are
    /// closed by whoever reaps next. With tcp://, use the service's value.
    #[arg(long, value_name = "MS", default_value_t = LEASE_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    lease_ms: u64,
    #[command(flatten)]
    serve: ServeArgs,
    /// With --meta tcp://, and with etcd:// when the cluster has storage
    /// targets (the mount reaches them with the cluster credential).
    #[command(flatten)]
    auth: AuthArgs,
    /// With a storage cluster.
    #[command(flatten)]
    data_transport: xfused::storage::transport::DataTransportArgs,
    /// Return once the mount is serving, leaving xfused in the background
    /// (its own session, stdin from /dev/null) until the filesystem is
    /// unmounted (`umount MOUNTPOINT`, exit 0) or it gets SIGTERM. Exits
    /// non-zero, with the daemon's error, if the mount cannot be made.
    /// mount(8)'s helper, mount.fuse.xfused, always does this. The log goes
    /// to --log-file if given; else to the journal when journald runs
    /// (/run/systemd/journal/stdout, identifier xfused); else to
    /// /var/log/xfused/mount-MOUNTPOINT.log (MOUNTPOINT with '/' as '-').
    #[arg(long)]
    pub background: bool,
    /// --background: append the log to this file (created 0600; its
    /// directory must exist).
    #[arg(long, value_name = "PATH", requires = "background")]
    log_file: Option<PathBuf>,
}

impl MountArgs {
    /// Where the log of `--background` goes.
    pub fn log_destination(&self) -> LogDestination {
        match &self.log_file {
            Some(path) => LogDestination::File(path.clone()),
            None => LogDestination::JournalOrDefault {
                mountpoint: self.mountpoint.clone(),
            },
        }
    }
}

/// Mounts and serves until unmounted or signalled; `detached`, with
/// `--background`, hears when the mount is serving.
pub fn run(args: MountArgs, detached: Option<&Detached>) -> anyhow::Result<()> {
    xfused::private_state::private_umask();
    let signals = ShutdownSignals::install()?;
    let ns = open_namespace(NamespaceSpec {
        meta: args.meta.clone(),
        data: args
            .data
            .as_deref()
            .unwrap_or(std::path::Path::new(DATA_DIR_DEFAULT)),
        engine: &args.engine,
        chunk_size_kib: args.chunk_size_kib,
        lease_ms: args.lease_ms,
        attr_timeout_ms: args.serve.attr_timeout_ms,
        entry_timeout_ms: args.serve.entry_timeout_ms,
        // Checked in front of MetaFs (xfuse::perm) with --permissions daemon.
        check_permissions: false,
        auth: &args.auth,
        data_transport: &args.data_transport,
        host_callers: true,
        atime: args.serve.mount_flags.effective_atime(),
        local_data: args.data.is_some(),
    })?;
    let kernel = kmod_shim::probe();
    tracing::info!("{kernel}");
    let result = serve(
        ns.fs.clone(),
        Mounting {
            // What mount(8) and mountinfo show as the source: the URL an
            // fstab line names.
            fsname: ns.url.clone(),
            what: format!("namespace {} with file data in {}", ns.url, ns.file_data),
            mountpoint: &args.mountpoint,
            serve: &args.serve,
            writeback_cache: false,
            passthrough: false,
            // Not offered here: the metadata service checks calls against
            // their caller (a shared service checks every call), and under
            // FUSE_ALLOW_IDMAP the kernel names the caller only in
            // creations.
            allow_idmap: false,
            // MetaFs applies the umask itself, unless a default ACL applies.
            umask_yields_to_default_acl: false,
            passthrough_fs_listings: false,
            tmpfile_through_create: true,
            kernel,
            signals,
            on_serving: detached.map(|d| Box::new(move || d.ready()) as Box<dyn FnOnce()>),
            metric_sources: ns.metric_sources(),
        },
        |_| {},
    );
    ns.close();
    result
}
