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

#[derive(Debug, Args)]
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
    /// /var/lib/xfused). With --meta tcp://, file data goes to the cluster's
    /// storage targets when it has some, unless --data is given. Created if
    /// missing; made private (0700, files 0600) to this user.
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
    /// With --meta tcp://.
    #[command(flatten)]
    auth: AuthArgs,
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
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
        host_callers: true,
        local_data: args.data.is_some(),
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
