//! The numbers criterion does not keep: daemon CPU time per operation and
//! RSS per bench, configurations skipped and why, and notes on what a bench
//! really measured. Stored as JSON under `target/xfuse-bench/side.json`;
//! every bench run merges its entries in, and the report reads them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The side file's contents.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct SideFile {
    /// Per bench id (`stat_cached_1t/stock`).
    #[serde(default)]
    pub benches: BTreeMap<String, SideRecord>,
    /// Configurations skipped in the last run that probed them, and why.
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
}

/// What one bench recorded besides criterion's timings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SideRecord {
    /// Workload name (see [`crate::WORKLOADS`]).
    pub workload: String,
    /// Threads issuing operations.
    pub threads: usize,
    /// Configuration name.
    pub config: String,
    /// Operations metered (warm-up and samples).
    pub ops: u64,
    /// Daemon CPU seconds (user + system) over those operations.
    pub daemon_cpu_s: Option<f64>,
    /// Daemon CPU microseconds per operation.
    pub daemon_cpu_us_per_op: Option<f64>,
    /// Daemon `VmRSS` at the end, in KiB.
    pub daemon_rss_kib: Option<u64>,
    /// Daemon `VmHWM` (peak RSS) at the end, in KiB.
    pub daemon_hwm_kib: Option<u64>,
    /// What this bench really measured, where it differs from the others.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Operations that failed or returned something other than the workload
    /// expects: any makes the bench's numbers invalid.
    #[serde(default)]
    pub failed_ops: u64,
    /// The first failure's message.
    #[serde(default)]
    pub first_failure: Option<String>,
    /// The machine's 1-minute load average when the bench ended (the
    /// machine may be shared: this says how busy it was).
    #[serde(default)]
    pub loadavg_1m: Option<f64>,
    /// When it was recorded (seconds since the Unix epoch).
    pub recorded_unix_s: u64,
}

/// Where the side file lives.
pub fn default_path() -> PathBuf {
    crate::target_dir().join("xfuse-bench").join("side.json")
}

impl SideFile {
    /// Reads `path`; a missing or unreadable file is an empty one (a fresh run).
    pub fn load(path: &Path) -> SideFile {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes `path` atomically (temporary file, then rename).
    pub fn store(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, path)
    }

    /// Merges `f`'s changes into the file at `path` (read, change, write), so
    /// runs of filtered subsets accumulate.
    pub fn update(path: &Path, f: impl FnOnce(&mut SideFile)) -> io::Result<()> {
        let mut side = SideFile::load(path);
        f(&mut side);
        side.store(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SideRecord {
        SideRecord {
            workload: "stat_cached".into(),
            threads: 1,
            config: "stock".into(),
            ops: 1000,
            daemon_cpu_s: Some(0.01),
            daemon_cpu_us_per_op: Some(10.0),
            daemon_rss_kib: Some(4096),
            daemon_hwm_kib: Some(5000),
            notes: vec![],
            failed_ops: 0,
            first_failure: None,
            loadavg_1m: None,
            recorded_unix_s: 1,
        }
    }

    #[test]
    fn store_load_update() {
        let dir = std::env::temp_dir().join(format!("xfuse-bench-side-test.{}", std::process::id()));
        let path = dir.join("side.json");
        assert_eq!(SideFile::load(&path), SideFile::default());
        SideFile::update(&path, |s| {
            s.benches.insert("stat_cached_1t/stock".into(), record());
        })
        .unwrap();
        SideFile::update(&path, |s| {
            s.skipped.insert("xfuse-uring".into(), "refused".into());
        })
        .unwrap();
        let side = SideFile::load(&path);
        assert_eq!(side.benches["stat_cached_1t/stock"], record());
        assert_eq!(side.skipped["xfuse-uring"], "refused");
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(SideFile::load(&path), SideFile::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
