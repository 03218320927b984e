//! Coverage-guided fuzz targets for the bytes xfuse takes from outside,
//! and the replay of their corpora.
//!
//! Each target is a function of one byte slice that panics when a
//! property of the code under test breaks; what each checks is on its
//! module:
//!
//! - [`request`]: kernel requests (`/dev/fuse` layout) through the
//!   dispatcher on a filesystem double, and `request::Args` against a model;
//! - [`ring`]: FUSE-over-io_uring ring entries through a ring worker;
//! - [`virtio`]: virtqueue descriptor chains through `ChainLayout`;
//! - [`service`]: the service protocol's frames and messages;
//! - [`records`]: the record layer under them.
//!
//! Two halves, so the workspace builds and tests without a fuzzer: this
//! crate (a workspace member) holds the targets, the seed inputs and a
//! test replaying every committed corpus file and crash regression through
//! its target (part of `cargo test --workspace`); `fuzz/afl/` (outside the
//! workspace) wraps each target for AFL++ and is built only by
//! `scripts/fuzz.sh`, with `cargo afl`. Why AFL++ through `cargo afl`: it
//! runs on the stable toolchain (libFuzzer through `cargo fuzz` needs
//! nightly's `-Zsanitizer`), and a target here is a plain function, so a
//! crash it finds replays under `cargo test` with no fuzzer at all.
#![warn(missing_docs)]

pub mod alloc;
pub mod fs;
#[cfg(feature = "service")]
pub mod records;
pub mod request;
pub mod ring;
pub mod seeds;
#[cfg(feature = "service")]
pub mod service;
pub mod virtio;

/// Counts allocations per thread for [`alloc::peak_during`]; it is the
/// allocator of every binary that links this crate (its tests and the
/// AFL harnesses).
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// A fuzz target: panics when a checked property breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and harness carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("request", request::request),
    ("ring", ring::ring),
    ("virtio", virtio::virtio),
    #[cfg(feature = "service")]
    ("service", service::service),
    #[cfg(feature = "service")]
    ("records", records::records),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn dir(kind: &str, target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target)
    }

    /// The files of `dir`, sorted; none if it does not exist.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    }

    fn replay(target: &str, run: Target, path: &Path) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "target {target} fails on {} (replay: cargo test -p xfuse-fuzz)",
            path.display()
        );
    }

    /// Every corpus file and crash regression, through its target: a crash
    /// found once stays fixed. A target without a corpus fails the test.
    #[test]
    fn committed_corpora_and_regressions_replay_clean() {
        for &(name, run) in TARGETS {
            let corpus = files(&dir("corpus", name));
            assert!(
                corpus.len() >= 4,
                "fuzz/corpus/{name} is missing or nearly empty ({} files): run scripts/fuzz.sh {name} SECONDS",
                corpus.len()
            );
            for path in corpus.iter().chain(&files(&dir("regressions", name))) {
                replay(name, run, path);
            }
        }
    }

    /// The seeds the corpora started from (real requests, chains and
    /// frames, built in code) still pass their targets.
    #[test]
    fn seeds_replay_clean() {
        for &(name, run) in TARGETS {
            let seeds = seeds::seeds(name);
            assert!(!seeds.is_empty(), "no seeds for {name}");
            for (file, data) in seeds {
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "target {name} fails on seed {file}");
            }
        }
    }

    #[test]
    fn the_counting_allocator_counts() {
        let (v, peak) = alloc::peak_during(|| vec![1u8; 10_000]);
        assert!(peak >= 10_000, "peak {peak} after allocating {}", v.len());
    }

    /// The harnesses in fuzz/afl are the targets listed here, one each.
    #[test]
    fn every_target_has_a_harness() {
        for &(name, _) in TARGETS {
            let harness = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("afl/src/bin")
                .join(format!("{name}.rs"));
            let text =
                std::fs::read_to_string(&harness).unwrap_or_else(|e| panic!("{}: {e}", harness.display()));
            assert!(
                text.contains(&format!("xfuse_fuzz::{name}::{name}")),
                "{}",
                harness.display()
            );
        }
    }
}
