//! `stock-fuse SOURCE MOUNTPOINT`: the baseline of the benches.
//!
//! Serves SOURCE at MOUNTPOINT with fuse-backend-rs 0.14 as its users run
//! it today: its own transport (`FuseSession` mounts and hands out a
//! `FuseChannel` on /dev/fuse) and its own protocol server (`Server`),
//! serving its `PassthroughFs` on ONE channel and thread. Nothing of xfuse
//! is involved. The `PassthroughFs` configuration is xfused's
//! (`xfused passthrough` defaults): inode file handles, xattrs, 1 s
//! attribute and entry timeouts, cache policy `auto`, import at INIT; the
//! mount has `allow_other` and `default_permissions`.
//!
//! What fuse-backend-rs negotiates differs from xfuse, and is part of what
//! "stock" means: `Server` enables only the INIT flags `PassthroughFs::init`
//! asks for (READDIRPLUS and READDIRPLUS_AUTO), so the kernel runs with
//! protocol 7.33, 4 KiB `max_write` (no BIG_WRITES), 32-page requests (no
//! MAX_PAGES), no PARALLEL_DIROPS and no ASYNC_READ; `FuseSession` mounts
//! with `noatime`.
//!
//! Runs in the foreground, logs to stderr. SIGTERM or SIGINT unmounts and
//! exits 0; an unmount from outside ends it too.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{FuseChannel, FuseSession};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Why the server loop ended.
#[derive(Debug)]
enum Ended {
    Signal(i32),
    Served(anyhow::Result<()>),
}

/// The baseline of the benches: serves SOURCE at MOUNTPOINT with
/// fuse-backend-rs 0.14's own transport and server (one channel, one
/// thread) and its PassthroughFs configured as `xfused passthrough`'s
/// defaults. Runs in the foreground, logs to stderr; SIGTERM or SIGINT
/// unmounts and exits 0.
#[derive(Debug, clap::Parser)]
#[command(name = "stock-fuse")]
struct Args {
    /// The directory served.
    source: PathBuf,
    /// Where it is mounted.
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    let Args { source, mountpoint } = <Args as clap::Parser>::parse();
    let (source, mountpoint) = (&source, &mountpoint);
    match run(source, mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stock-fuse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(source: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let source = std::fs::canonicalize(source).with_context(|| format!("source {}", source.display()))?;
    if !source.is_dir() {
        bail!("source {} is not a directory", source.display());
    }
    let source_str = source
        .to_str()
        .with_context(|| format!("source {} is not UTF-8", source.display()))?
        .to_string();

    if rustix::process::geteuid().is_root() {
        // As xfused does: PassthroughFs switches the thread's euid to the
        // caller's around creates and, in file-handle mode, reopens the parent
        // with open_by_handle_at (CAP_DAC_READ_SEARCH) inside that window; keep
        // capabilities across the switch so non-root creates work. (No effect
        // on the benches, whose callers are root: no switch happens.)
        use rustix::thread::{
            capabilities_secure_bits, set_capabilities_secure_bits, CapabilitiesSecureBits,
        };
        let bits = capabilities_secure_bits().context("reading securebits")?;
        set_capabilities_secure_bits(bits | CapabilitiesSecureBits::NO_SETUID_FIXUP)
            .context("keeping capabilities across uid switches (PR_SET_SECUREBITS)")?;
    }

    let fs = PassthroughFs::<()>::new(Config {
        root_dir: source_str.clone(),
        attr_timeout: Duration::from_secs(1),
        entry_timeout: Duration::from_secs(1),
        cache_policy: CachePolicy::Auto,
        writeback: false,
        xattr: true,
        do_import: true,
        inode_file_handles: true,
        ..Default::default()
    })
    .context("setting up PassthroughFs")?;
    let server = Server::new(fs);

    let mut session = FuseSession::new(mountpoint, &source_str, "stock-fuse", false)
        .with_context(|| format!("session at {}", mountpoint.display()))?;
    session.set_allow_other(true);
    session
        .mount()
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    let channel = session.new_channel().context("opening the channel")?;

    let (tx, rx) = mpsc::channel();
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let signals_handle = signals.handle();
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = signal_tx.send(Ended::Signal(signal));
        }
    });
    eprintln!(
        "stock-fuse: serving {} at {} (fuse-backend-rs, one channel); SIGTERM unmounts",
        source.display(),
        mountpoint.display()
    );

    std::thread::scope(|scope| {
        let server = &server;
        let worker = std::thread::Builder::new()
            .name("fuse-server".into())
            .spawn_scoped(scope, move || {
                let _ = tx.send(Ended::Served(serve(server, channel)));
            })
            .context("starting the server thread")?;
        let ended = rx.recv().context("waiting for a signal or the server's end")?;
        // Detach the mount (a no-op if it is gone already), then wake the
        // channel so the server thread returns.
        let unmounted = session.umount().context("unmounting");
        let woken = session.wake().context("waking the server thread");
        signals_handle.close();
        let _ = worker.join();
        match ended {
            Ended::Signal(signal) => {
                eprintln!("stock-fuse: stopped by signal {signal}");
                unmounted.and(woken)
            }
            Ended::Served(result) => result.and(unmounted),
        }
    })
}

/// The fuse-backend-rs server loop, as its README shows, ending when the
/// channel reports the unmount or is woken, or when the device is gone.
fn serve(server: &Server<PassthroughFs>, mut channel: FuseChannel) -> anyhow::Result<()> {
    let gone = [
        rustix::io::Errno::BADF.raw_os_error(),
        rustix::io::Errno::NODEV.raw_os_error(),
    ];
    loop {
        match channel.get_request() {
            Ok(Some((reader, writer))) => {
                if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
                    match e {
                        fuse_backend_rs::Error::EncodeMessage(io)
                            if io.raw_os_error().is_some_and(|errno| gone.contains(&errno)) =>
                        {
                            return Ok(());
                        }
                        // E.g. a reply to an interrupted request (ENOENT): keep serving.
                        e => eprintln!("stock-fuse: handling a request: {e}"),
                    }
                }
            }
            Ok(None) => return Ok(()),
            // How FuseChannel reports EPOLLERR on the device: the kernel ended
            // the connection (unmounted from outside, or aborted).
            Err(fuse_backend_rs::transport::Error::SessionFailure(msg)) if msg == "epoll error" => {
                return Ok(())
            }
            Err(e) => bail!("reading /dev/fuse: {e}"),
        }
    }
}
