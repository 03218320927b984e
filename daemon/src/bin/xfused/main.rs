//! `xfused`: the xfuse daemon's command line, one module per subcommand,
//! each a thin layer over the `xfused` library (`xfused::client` opens
//! namespaces, `xfused::serve` mounts and serves).
//!
//! Subcommands:
//! - `passthrough`: serve a local directory (fuse-backend-rs's PassthroughFs)
//!   through xfuse;
//! - `virtiofs`: serve a local directory, or the distributed filesystem, to
//!   a virtual machine (vhost-user-fs, xfuse's `virtio` transport), in place
//!   of virtiofsd;
//! - `stats`: a live view of one mount's kernel→daemon traffic, from BPF;
//! - `mount`: mount the distributed filesystem (namespace from a metadata
//!   engine or service, file data in a local chunk store);
//! - `meta`: run a metadata service for `xfused mount --meta tcp://…`;
//! - `storage`: run a storage service for the cluster's file data;
//! - `cluster`: look at the storage cluster (targets, chains);
//! - `credential`: make or narrow cluster credentials;
//! - `kernel`: show what the running kernel offers, or switch FUSE-over-io_uring on.
//!
//! Run as `mount.fuse.xfused` (a link to this binary; mount(8) runs it for
//! `mount -t fuse.xfused URL MOUNTPOINT -o OPTIONS`), it is `xfused mount
//! --background --meta URL -o OPTIONS MOUNTPOINT` (module `options`).

mod background;
mod backing;
mod cluster;
mod credential;
mod kernel;
mod meta;
mod mount;
mod options;
mod passthrough;
mod stats;
mod storage;
mod virtiofs;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Passthrough(passthrough::PassthroughArgs),
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
    /// engine or service, file data in the storage cluster (with --meta
    /// tcp:// and storage targets) or a local chunk store (in the
    /// foreground, or with --background).
    ///
    /// With no flags, everything runs in this process on the embedded
    /// metadata engine under /var/lib/xfused. SIGINT or SIGTERM unmounts and
    /// exits 0; so does an unmount from outside. `mount -t fuse.xfused URL
    /// MOUNTPOINT -o OPTIONS` (and fstab) run this with --background through
    /// the helper /sbin/mount.fuse.xfused, a link to xfused that
    /// scripts/setup.sh installs.
    Mount(mount::MountArgs),
    /// Run a metadata service: answer `xfused mount --meta tcp://HOST:PORT`
    /// clients from a metadata engine (in the foreground).
    ///
    /// Stateless: each request is one transaction on the engine, so a
    /// service can be restarted, or several run side by side, without
    /// clients losing anything.
    Meta(meta::MetaArgs),
    /// Run a storage service: keep file data for the mounts of a cluster
    /// in target directories, replicated along chains (in the foreground).
    ///
    /// Registers its targets with the metadata services named by --meta
    /// and renews their leases every second; a target silent for 4 s is
    /// taken out of its chains, and brought back (after copying what it
    /// missed) when it returns.
    Storage(storage::StorageArgs),
    /// Look at the storage cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Make or narrow cluster credentials (the files `xfused meta`, its
    /// mounts and its tools authenticate with).
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
    /// Inspect or configure the kernel's FUSE support.
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
}

fn main() -> ExitCode {
    let invocation = match options::command_line(std::env::args_os().collect(), &Cli::command()) {
        Ok(invocation) => invocation,
        Err(e) => {
            let program = std::env::args().next().unwrap_or_default();
            let program = std::path::Path::new(&program)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = match Cli::command()
        .try_get_matches_from(&invocation.args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        // mount(8) shows a helper's stderr as it is: say who speaks.
        Err(e) if invocation.program == options::HELPER_NAME && e.use_stderr() => {
            let text = e.render().to_string();
            eprintln!(
                "{}: {}",
                options::HELPER_NAME,
                text.trim_start_matches("error: ").trim_end()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    if invocation.fake {
        // mount -f: the options are checked; nothing is mounted.
        return ExitCode::SUCCESS;
    }
    // Before logging starts (no thread yet): --background forks here.
    let detached = match &cli.command {
        Command::Mount(args) if args.background => match background::detach(&invocation.program) {
            Ok(background::Side::Parent(exit)) => return exit,
            Ok(background::Side::Child(detached)) => {
                match detached.redirect_output(&args.log_destination()) {
                    Ok(log) => {
                        eprintln!(
                            "xfused: in the background (pid {}), logging to {log}",
                            std::process::id()
                        );
                        Some(detached)
                    }
                    Err(e) => {
                        detached.failed(&format!("{e:#}"));
                        return ExitCode::FAILURE;
                    }
                }
            }
            Err(e) => {
                eprintln!("{}: {e:#}", invocation.program);
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Data paths allocate a buffer of up to a frame (5 MiB) per request:
    // kept in the heap rather than mapped and faulted in each time (see
    // kmod_shim::malloc). Only speed depends on it.
    if let Err(e) = kmod_shim::malloc::keep_large_buffers(8 << 20, 32 << 20) {
        tracing::warn!("cannot tune the allocator ({e}): large buffers are mapped per request");
    }
    let result = match cli.command {
        Command::Passthrough(args) => passthrough::run(args),
        Command::Virtiofs(args) => virtiofs::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Mount(args) => mount::run(args, detached.as_ref()),
        Command::Meta(args) => meta::run(args),
        Command::Storage(args) => storage::run(args),
        Command::Cluster(command) => cluster::run(command),
        Command::Credential(command) => credential::run(command),
        Command::Kernel(command) => kernel::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            if let Some(detached) = &detached {
                detached.failed(&format!("{e:#}"));
            }
            ExitCode::FAILURE
        }
    }
}
