//! `xfused storage`: a storage service (`xfused::storage::service`) for
//! its target directories, registered with the metadata services.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use xfused::client::AuthArgs;
use xfused::storage::transport::DataTransportArgs;

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// The metadata services: tcp://HOST:PORT[,HOST:PORT...] (the cluster's
    /// chain table and targets live in their engine).
    #[arg(long, value_name = "URL")]
    meta: String,
    /// Where to accept mounts and other storage services: HOST:PORT. The
    /// address is registered as the targets' address, so give one the
    /// others can reach (not 0.0.0.0); port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// A target: a directory (one per disk) holding chunks. Made private
    /// (0700) if missing; its identity is kept in DIR/TARGET, so it stays
    /// the same target across restarts and address changes. Repeat for
    /// more.
    #[arg(long = "target", value_name = "DIR", required = true)]
    targets: Vec<PathBuf>,
    /// Most MiB of file data the service holds in memory at once, over all
    /// connections: writes being received and run, and read replies.
    /// Mounts past it wait (their connections are not read until data is
    /// freed). At least 5, for one whole write.
    #[arg(long, value_name = "MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(5..=1 << 20))]
    held_max_mib: u64,
    /// Scrub the targets: read every chunk whole, at most this many MiB/s
    /// in all, a pass every 10 s after the last ended, checking every
    /// block against its checksum (reads check only the blocks they
    /// touch) and replacing a chunk that fails with another member's good
    /// copy. Each pass is logged. 0 (the default): no scrubbing.
    #[arg(long, value_name = "MIB", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    scrub_mib_per_sec: u64,
    #[command(flatten)]
    data: DataTransportArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    metrics: xfused::metrics::MetricsArgs,
}

/// Chunks whose files a target keeps open at most.
const OPEN_CHUNKS_MAX: usize = 1024;

/// How many chunks each of `targets` targets keeps open: a quarter of the
/// open-file limit (raised to its hard limit first) shared among them,
/// two descriptors a chunk, at most [`OPEN_CHUNKS_MAX`]; the rest of the
/// limit is for connections and the files a call opens for a moment.
fn open_chunks_per_target(targets: usize) -> usize {
    let limit = match kmod_shim::sandbox::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("keeping the open-file limit as it is: {e}");
            1024
        }
    };
    let per_target = usize::try_from(limit / 4).unwrap_or(usize::MAX) / targets.max(1) / 2;
    let n = per_target.min(OPEN_CHUNKS_MAX);
    tracing::info!("open-file limit {limit}: each target keeps the files of up to {n} chunks open");
    n
}

pub fn run(args: StorageArgs) -> anyhow::Result<()> {
    use xfused::cluster::client::ClusterClient;
    use xfused::rpc::auth::Role;
    use xfused::rpc::frame::BULK_LEN_MAX;
    use xfused::rpc::server::{Limits, Server};
    use xfused::storage::service::StorageService;
    use xfused::storage::transport::ServiceTransport;
    xfused::private_state::private_umask();
    let meta = match xfused::client::parse_meta_url(&args.meta)? {
        xfused::client::MetaUrl::Tcp(addr) => addr,
        _ => bail!(
            "--meta {:?}: a storage service needs tcp://HOST:PORT of metadata services",
            args.meta
        ),
    };
    let addr: std::net::SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {:?}: expected HOST:PORT, e.g. 127.0.0.1:27000",
            args.listen
        )
    })?;
    if addr.ip().is_unspecified() {
        bail!("--listen {addr}: the address is given to mounts and other targets; name one they can reach");
    }
    let (server_tls, client_tls) = match args.auth.load()? {
        None => (None, None),
        Some(cred) => {
            if !cred.is_cluster() {
                bail!(
                    "{}: a service needs the cluster credential (with the CA key), not one issued for a role",
                    args.auth.credential.display()
                );
            }
            (
                Some(cred.server_config().context("the cluster credential")?),
                Some(
                    cred.client_config(Role::Service)
                        .context("the cluster credential")?,
                ),
            )
        }
    };
    let metrics = xfused::metrics::Endpoint::start(&args.metrics)?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("reading the listening address")?;
    let cluster = ClusterClient::new(&meta, client_tls.clone()).context("--meta")?;
    let rdma = args.data.choose("storage service")?;
    // Forwards along chains and copies go the same way as mounts' data.
    let transport = Arc::new(ServiceTransport::new(client_tls, args.data.path(&rdma)));
    let open_chunks = open_chunks_per_target(args.targets.len());
    let service = StorageService::start(&args.targets, open_chunks, bound, cluster, transport)?;
    service.start_heartbeats().context("starting heartbeats")?;
    if args.scrub_mib_per_sec > 0 {
        service
            .start_scrubbing(args.scrub_mib_per_sec << 20)
            .context("starting the scrubber")?;
    }
    let mut ids: Vec<u32> = service.targets().keys().copied().collect();
    ids.sort_unstable();
    eprintln!(
        "xfused: storage service on {bound}, targets {ids:?}, metadata at {meta}, {}",
        if server_tls.is_some() {
            "mutual TLS"
        } else {
            "NO authentication"
        }
    );
    let limits = Limits {
        bulk_max: BULK_LEN_MAX,
        held_max: usize::try_from(args.held_max_mib << 20).context("--held-max-mib")?,
        ..Limits::default()
    };
    let server = Server::new(service.clone(), server_tls, limits);
    if let Some(fabric) = rdma {
        // Mounts' payloads are pulled into, and replies pushed from,
        // buffers of the service's own (registered for local access only).
        server.offer_rdma(fabric, args.data.pool_bytes());
    }
    if let Some(endpoint) = &metrics {
        endpoint.add(Arc::new(xfused::metrics::sources::RpcServer::new(
            server.clone(),
            "storage",
        )));
        endpoint.add(Arc::new(xfused::metrics::sources::Storage::new(service)));
    }
    server.serve(listener).context("serving")?;
    Ok(())
}
