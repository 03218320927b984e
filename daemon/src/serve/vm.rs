//! Serving a filesystem to virtual machines, as `xfused virtiofs` does: a
//! vhost-user-fs backend (xfuse's `virtio` transport) on a socket, until
//! the last VMM leaves or a signal, with its counters reported.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use xfuse::idmap::{IdMapped, IdMaps};
use xfuse::transport::virtio::{VirtioConfig, VirtioFsBackend};
use xfuse::{InitConfig, Policy};

/// How to serve VMs.
#[derive(Debug, Clone, Copy)]
pub struct VmServing<'a> {
    /// The vhost-user socket to listen on (a stale one is replaced).
    pub socket: &'a Path,
    /// Request queues offered to the VMM, besides the high-priority queue.
    pub request_queues: u16,
    /// Largest virtqueue size accepted (a power of two).
    pub max_queue_size: u16,
    /// Threads that run requests (0: each queue runs its own requests).
    pub thread_pool: u16,
    /// Largest write request, in KiB.
    pub max_write_kib: u32,
    /// How long the guest may cache that a name does not exist, in
    /// milliseconds.
    pub negative_timeout_ms: u64,
    /// After the VMM disconnects, wait for the next one instead of returning.
    pub keep_listening: bool,
    /// Print request counters when each guest session ends, and chain
    /// counters at the end.
    pub stats: bool,
    /// The `--metrics` endpoint, if any: the backend's counters are added.
    pub metrics: Option<&'a crate::metrics::Endpoint>,
    /// User and group ids translated between the guest and the host
    /// (`xfuse::idmap`); none given: ids pass unchanged.
    pub ids: &'a IdMaps,
    /// The filesystem is fuse-backend-rs's PassthroughFs, whose listings
    /// the dispatcher corrects (`Policy::add_dot_entries`,
    /// `Policy::readdir_through_readdirplus`).
    pub passthrough_fs_listings: bool,
    /// The filesystem's `create` makes `O_TMPFILE` files
    /// (`Policy::tmpfile_through_create`): MetaFs.
    pub tmpfile_through_create: bool,
}

/// Serves `fs` to VMs on the socket, until the last VMM leaves or a signal.
///
/// Takes SIGINT and SIGTERM for the process: either removes the socket and
/// exits it with status 0.
pub fn serve_vm<F>(fs: F, args: &VmServing<'_>, what: &str) -> anyhow::Result<()>
where
    F: fuse_backend_rs::api::filesystem::FileSystem + Send + Sync + 'static,
{
    let listener = xfuse::transport::virtio::listen(args.socket)?;
    serve_vm_on(fs, listener, args, what, true)
}

/// Like [`serve_vm`] on a socket the caller made (with
/// [`xfuse::transport::virtio::listen`]); removes `args.socket` at the end
/// only if `remove_socket`. A server that confined itself in between
/// (pivot_root, chroot) passes false: the path now names a file of the
/// shared directory, or none, and the socket is its parent's to remove.
pub fn serve_vm_on<F>(
    fs: F,
    listener: UnixListener,
    args: &VmServing<'_>,
    what: &str,
    remove_socket: bool,
) -> anyhow::Result<()>
where
    F: fuse_backend_rs::api::filesystem::FileSystem + Send + Sync + 'static,
{
    if args.ids.is_identity() {
        serve_vm_as_is(fs, listener, args, what, remove_socket)
    } else {
        tracing::info!(
            "guest ids translated: uids {}, gids {}",
            args.ids.uid,
            args.ids.gid
        );
        serve_vm_as_is(
            IdMapped::new(fs, args.ids.clone()),
            listener,
            args,
            what,
            remove_socket,
        )
    }
}

fn serve_vm_as_is<F>(
    fs: F,
    listener: UnixListener,
    args: &VmServing<'_>,
    what: &str,
    remove_socket: bool,
) -> anyhow::Result<()>
where
    F: fuse_backend_rs::api::filesystem::FileSystem + Send + Sync + 'static,
{
    let socket = remove_socket.then_some(args.socket);
    let config = VirtioConfig {
        request_queues: usize::from(args.request_queues),
        max_queue_size: args.max_queue_size,
        thread_pool: usize::from(args.thread_pool),
        init: InitConfig {
            max_write: args.max_write_kib * 1024,
            ..Default::default()
        },
        policy: Policy {
            negative_timeout: Duration::from_millis(args.negative_timeout_ms),
            open_noflush: true,
            add_dot_entries: args.passthrough_fs_listings,
            readdir_through_readdirplus: args.passthrough_fs_listings,
            tmpfile_through_create: args.tmpfile_through_create,
            ..Default::default()
        },
        report_stats: args.stats,
        time_requests: args.metrics.is_some(),
    };
    let backend = VirtioFsBackend::new(fs, config)?;
    if let Some(endpoint) = args.metrics {
        endpoint.add(std::sync::Arc::new(crate::metrics::sources::Virtio::new(
            backend.clone(),
        )));
    }
    let report = {
        let backend = backend.clone();
        move || {
            let c = backend.counters();
            eprintln!(
                "xfused virtiofs: {} connections, {} INITs, {} chains, {} refused",
                c.connections.load(Ordering::Relaxed),
                c.inits.load(Ordering::Relaxed),
                c.chains.load(Ordering::Relaxed),
                c.bad_chains.load(Ordering::Relaxed),
            );
        }
    };
    stop_on_signals(
        socket.map(Path::to_path_buf),
        args.stats.then_some(report.clone()),
    )?;
    eprintln!(
        "xfused: serving {what} to a VM over vhost-user socket {}; Ctrl-C or SIGTERM stops",
        args.socket.display()
    );
    let result = backend.serve_listener(listener, args.keep_listening);
    if args.stats {
        report();
    }
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    result?;
    Ok(())
}

/// SIGINT/SIGTERM: what the guest was told is done is already on the host
/// (PassthroughFs writes through; the metadata engines acknowledge only what
/// survives a crash, and a --meta client's open-file sessions end with its
/// lease), so stopping is removing the socket and exiting.
fn stop_on_signals(
    socket: Option<PathBuf>,
    report: Option<impl Fn() + Send + 'static>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("xfused-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!("stopped by signal {sig}");
                if let Some(report) = &report {
                    report();
                }
                if let Some(socket) = &socket {
                    let _ = std::fs::remove_file(socket);
                }
                std::process::exit(0);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
