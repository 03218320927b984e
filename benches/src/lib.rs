//! Benchmark harness: the same `PassthroughFs` over a fresh tmpfs directory,
//! reached natively and through each FUSE server, so the benches compare
//! transports and nothing else.
//!
//! - [`Config`]: the ways a directory is mounted (`native`, `stock`,
//!   `xfuse-dev`, `xfuse-uring`, `xfuse-uring-pt`, `xfuse-uring-dp`).
//! - [`Mount`]: one configuration over its own tmpfs, torn down on drop
//!   (daemon stopped with SIGTERM, then unmounted, lazily if need be), even
//!   when a bench panics; [`Suite`] finds the binaries and probes which
//!   configurations the daemon accepts.
//! - [`procfs`]: the daemon's CPU time and RSS (from `vm_tests`, which
//!   reads a virtio-fs backend's the same way); mounts are read with
//!   `kmod_shim::mountinfo`.
//! - [`latency`]: per-operation latency distributions and their percentiles.
//! - [`run`]: iterations split over threads, with untimed pauses.
//! - [`side`]: the numbers criterion does not keep (daemon CPU per op, RSS),
//!   written to `target/xfuse-bench/side.json` for the report.
//! - [`report`]: criterion's estimates plus the side numbers as markdown.
//!
//! The virtiofs-replay bench drives `vm_tests::frontend`, the vhost-user-fs
//! frontend double that lives with the virtio-fs tests.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod latency;
pub mod mount;
pub mod plot;
pub mod report;
pub mod run;
pub mod side;

pub use config::Config;
pub use mount::{Binaries, Mount, MountError, Suite};
pub use run::{run_split, Failures, Meter, Worker};
pub use vm_tests::procfs;

use std::path::PathBuf;

/// The workspace's `target` directory: `CARGO_TARGET_DIR` if set (relative
/// paths are taken from the workspace root), else `target/` beside the
/// workspace's `Cargo.toml`.
pub fn target_dir() -> PathBuf {
    let workspace = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The workloads, in report order: `(name, what one operation is)`.
///
/// Bench groups are named `{name}_{threads}t` (e.g. `stat_cached_2t`) with
/// one function per [`Config`] (e.g. `stat_cached_2t/stock`).
pub const WORKLOADS: &[(&str, &str)] = &[
    (
        "stat_cached",
        "stat of one file, again and again (kernel attribute cache warm)",
    ),
    (
        "stat_uncached",
        "stat of a file whose cached entry expired (one LOOKUP to the daemon)",
    ),
    ("open_close", "open + close of an existing file"),
    ("create_unlink", "create + close + unlink of a new file"),
    (
        "randread_4k_direct",
        "4 KiB O_DIRECT pread at a random offset of a 64 MiB file",
    ),
    (
        "randwrite_4k_direct",
        "4 KiB O_DIRECT pwrite at a random offset of a 64 MiB file",
    ),
    ("seqread_128k", "128 KiB buffered read, streaming a 64 MiB file"),
    ("seqread_1m", "1 MiB buffered read, streaming a 64 MiB file"),
    ("readdir_10k", "list a directory of 10,000 entries"),
];

/// Splits a bench group name `stat_cached_2t` into `("stat_cached", 2)`.
pub fn split_group(group: &str) -> Option<(&str, usize)> {
    let (workload, threads) = group.rsplit_once('_')?;
    let threads = threads.strip_suffix('t')?.parse().ok()?;
    Some((workload, threads))
}

/// The bench group name of `workload` run by `threads` threads.
pub fn group_name(workload: &str, threads: usize) -> String {
    format!("{workload}_{threads}t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_round_trip() {
        assert_eq!(
            split_group(&group_name("stat_cached", 2)),
            Some(("stat_cached", 2))
        );
        assert_eq!(split_group("readdir_10k_1t"), Some(("readdir_10k", 1)));
        assert_eq!(split_group("readdir_10k"), None);
        assert_eq!(split_group("nothreads"), None);
    }
}
