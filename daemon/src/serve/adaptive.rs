//! `--cache-policy adaptive`: the BPF upcall counters of this mount feed
//! xfuse's adaptive timeouts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xfuse::{AdaptiveConfig, AdaptiveTtl, Refresher, Session, UpcallSource, Upcalls};
use xfuse_ebpf::UpcallTracer;

use super::ServeArgs;

/// The per-inode LOOKUP/GETATTR counters of one connection, from BPF.
struct BpfUpcalls {
    tracer: UpcallTracer,
    connection: u32,
}

impl UpcallSource for BpfUpcalls {
    fn read(&mut self) -> std::io::Result<Vec<Upcalls>> {
        let inodes = self
            .tracer
            .inode_upcalls(self.connection)
            .map_err(std::io::Error::other)?;
        Ok(inodes
            .into_iter()
            .map(|i| Upcalls {
                nodeid: i.nodeid,
                total: i.total(),
            })
            .collect())
    }
}

/// The policy, installed in the session, waiting for the counters to be
/// attached to it.
pub struct Adaptive {
    ttl: Arc<AdaptiveTtl>,
    source: BpfUpcalls,
    interval: Duration,
}

/// Loads the BPF counters, before mounting so that they see the mount's
/// first request. Where they cannot be loaded, says so once and returns
/// `None`: the mount then keeps the fixed timeouts.
pub fn load(args: &ServeArgs) -> Option<UpcallTracer> {
    match UpcallTracer::load() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(
                "cache policy adaptive: the BPF upcall counters could not be loaded ({e}); \
                 they need root, kernel BTF and a kernel with the fuse_request_send/end tracepoints \
                 (checked on 6.18); using fixed timeouts ({})",
                fixed(args)
            );
            None
        }
    }
}

fn fixed(args: &ServeArgs) -> String {
    format!(
        "attribute timeout {} ms, entry timeout {} ms",
        args.attr_timeout_ms, args.entry_timeout_ms
    )
}

/// Installs the adaptive policy, fed by `tracer`, in the mounted `session`.
/// Returns `None`, with a warning, if the mount's FUSE connection cannot be
/// found (the session keeps the fixed timeouts).
pub fn install<F>(
    args: &ServeArgs,
    mountpoint: &std::path::Path,
    tracer: UpcallTracer,
    session: &mut Session<F>,
) -> Option<Adaptive>
where
    F: fuse_backend_rs::api::filesystem::FileSystem + Sync + Send + 'static,
{
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| PathBuf::from(mountpoint));
    let Some(connection) = kmod_shim::mount::connection_id(&mountpoint) else {
        tracing::warn!(
            "cache policy adaptive: no FUSE connection found for {} in /proc/self/mountinfo; \
             using fixed timeouts ({})",
            mountpoint.display(),
            fixed(args)
        );
        return None;
    };
    let ttl = Arc::new(AdaptiveTtl::new(AdaptiveConfig {
        short_entry_ttl: Duration::from_millis(args.entry_timeout_ms),
        short_attr_ttl: Duration::from_millis(args.attr_timeout_ms),
        long_ttl: Duration::from_millis(args.long_ttl_ms),
        long_inodes_max: usize::try_from(args.long_inodes_max).unwrap_or(usize::MAX),
        ..Default::default()
    }));
    session.set_adaptive_ttl(ttl.clone());
    let c = ttl.config();
    tracing::info!(
        "cache policy adaptive on connection {connection}: {} by default; {} ms for up to {} inodes \
         with {}+ LOOKUP/GETATTR upcalls within {:?} and no change for {:?}",
        fixed(args),
        c.long_ttl.as_millis(),
        c.long_inodes_max,
        c.hot_upcalls_min,
        c.hot_window,
        c.quiet_after_change
    );
    Some(Adaptive {
        ttl,
        source: BpfUpcalls { tracer, connection },
        interval: Duration::from_millis(args.cache_refresh_ms),
    })
}

impl Adaptive {
    /// Starts reading the counters every refresh interval.
    pub fn refresh(self) -> std::io::Result<Refresher> {
        Refresher::spawn(self.ttl, Box::new(self.source), self.interval)
    }
}
