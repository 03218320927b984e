//! `xfused passthrough`: serve a local directory (fuse-backend-rs's
//! PassthroughFs) at a mountpoint, with FUSE passthrough where asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use fuse_backend_rs::passthrough::{Config as PassthroughConfig, PassthroughFs};
use xfuse::ShutdownSignals;
use xfused::serve::fileattrs::SourceFileAttrs;
use xfused::serve::tmpfiles::Tmpfiles;
use xfused::serve::{serve, CacheArg, Mounting, PermissionsArg, ServeArgs};

use crate::backing;

#[derive(Debug, Args)]
// A flag given twice takes the later value, as in an fstab option list
// (`-o noatime,strictatime`).
#[command(args_override_self = true)]
pub struct PassthroughArgs {
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
    /// Allow idmapped mounts of this mount (Linux 6.12+, FUSE_ALLOW_IDMAP):
    /// `mount_setattr(2)` with `MOUNT_ATTR_IDMAP` on a clone of it then
    /// shows owners, and owns new files, through a user namespace's id
    /// maps. Needs `--permissions kernel` (the default); xfused exits if
    /// the kernel does not offer it. Cost: the kernel then names no caller
    /// in requests other than creations, so a set-group-ID bit without
    /// group-execute is cleared on every chown, and on a write or truncate
    /// that clears set-user-ID, also for members of the file's group and
    /// for root, where Linux would keep it.
    #[arg(long)]
    allow_idmap: bool,
}

pub fn run(args: PassthroughArgs) -> anyhow::Result<()> {
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
    // O_TMPFILE files, which PassthroughFs cannot hold, held beside it.
    let tmpfiles = Arc::new(Tmpfiles::new(
        fs,
        Duration::from_millis(args.serve.attr_timeout_ms),
    ));
    // chattr/lsattr flags: the source file's own, through the same layer
    // (its nameless files have flags too).
    let file_attrs = SourceFileAttrs::new(tmpfiles.clone(), args.serve.permissions == PermissionsArg::Daemon);
    serve(
        tmpfiles,
        Mounting {
            fsname: source_str,
            what: source.display().to_string(),
            mountpoint: &args.mountpoint,
            serve: &args.serve,
            writeback_cache: args.writeback_cache,
            passthrough: want_passthrough,
            allow_idmap: args.allow_idmap,
            // PassthroughFs masks with the umask it gets; the host kernel
            // then applies the parent's default ACL.
            umask_yields_to_default_acl: true,
            // PassthroughFs skips "." and ".." and gives its node ids as
            // READDIR's d_ino.
            passthrough_fs_listings: true,
            // Tmpfiles makes them.
            tmpfile_through_create: true,
            kernel,
            signals,
            on_serving: None,
            metric_sources: Vec::new(),
        },
        |session| {
            session.set_file_attrs(Box::new(file_attrs));
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
