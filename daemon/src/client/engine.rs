//! The metadata engines a process opens itself: the embedded store (its
//! options, shared by every subcommand that can open one) and etcd.

use std::path::Path;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::meta::embedded::{Durability, EmbeddedEngine};
use crate::meta::etcd::EtcdEngine;

/// How often a buffered embedded store fsyncs its journal unless told, in
/// milliseconds.
pub const FSYNC_MS_DEFAULT: u16 = 100;

/// When a metadata change counts as done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// A metadata change is acknowledged once written to the operating
    /// system: a crash or kill -9 of xfused loses nothing; the journal is
    /// fsynced every --fsync-ms, so a power loss loses at most that window.
    #[default]
    Buffered,
    /// A metadata change is acknowledged only after an fdatasync; changes
    /// arriving during one sync share the next (group commit).
    Sync,
}

/// Options of an embedded metadata engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// When a metadata change counts as done (embedded engine).
    #[arg(long, value_enum, default_value_t = DurabilityArg::default())]
    pub durability: DurabilityArg,
    /// With --durability buffered: how often the metadata journal is
    /// fsynced, in milliseconds (1 to 60000).
    #[arg(long, value_name = "MS", default_value_t = FSYNC_MS_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=60000))]
    pub fsync_ms: u16,
}

impl Default for EngineArgs {
    /// What the flags default to.
    fn default() -> EngineArgs {
        EngineArgs {
            durability: DurabilityArg::default(),
            fsync_ms: FSYNC_MS_DEFAULT,
        }
    }
}

/// Opens (creating it, private: 0700) the embedded store in `store`.
pub fn open_embedded(store: &Path, args: &EngineArgs) -> anyhow::Result<EmbeddedEngine> {
    let durability = match args.durability {
        DurabilityArg::Buffered => Durability::Buffered {
            fsync_ms: args.fsync_ms,
        },
        DurabilityArg::Sync => Durability::Sync,
    };
    // 0700: fjall makes its files 0644 under the usual umask; nobody else
    // may reach them (names, xattrs) through this directory.
    crate::private_state::ensure_dir(store)
        .with_context(|| format!("creating metadata directory {}", store.display()))?;
    let engine = EmbeddedEngine::open(store, durability)
        .with_context(|| format!("opening the embedded metadata store in {}", store.display()))?;
    tracing::info!("metadata: embedded store in {} ({durability:?})", store.display());
    Ok(engine)
}

/// Connects to the etcd cluster at `endpoints` (keys under `xfuse/`).
pub fn open_etcd(endpoints: &[String]) -> anyhow::Result<EtcdEngine> {
    let engine = EtcdEngine::connect(endpoints, b"xfuse/")
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    tracing::info!(
        "metadata: etcd cluster at {} (keys under xfuse/)",
        endpoints.join(",")
    );
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn default_is_what_the_flags_default_to() {
        let parsed = Cli::parse_from(["xfused"]).engine;
        let default = EngineArgs::default();
        assert_eq!(
            (parsed.durability, parsed.fsync_ms),
            (default.durability, default.fsync_ms)
        );
    }
}
