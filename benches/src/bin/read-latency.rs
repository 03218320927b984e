//! read-latency: the latency distribution of single 4 KiB O_DIRECT reads,
//! one thread, through each configuration of the transport benches.
//!
//! Criterion's `randread_4k_direct` reports the median of per-sample mean
//! times; issue 3's latency target is about single reads, so this tool
//! times every read on its own and reports percentiles. Configurations are
//! mounted fresh in every round, in an order that rotates per round, and
//! the ratios to stock are taken within a round (the machine is shared and
//! its load drifts).

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

use anyhow::{bail, Context as _};
use benches::latency::Latencies;
use benches::{Binaries, Config, Mount};

const FILE_BYTES: usize = 64 << 20;
const BLOCK: usize = 4096;
const WARM_UP: usize = 1000;

/// A 4 KiB block aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// The latency distribution of single 4 KiB O_DIRECT reads, one thread,
/// through each configuration of the transport benches.
///
/// Mounts a fresh tmpfs holding one 64 MiB file through each configuration,
/// reads 1000 random 4 KiB blocks with O_DIRECT to warm up, then times
/// `--reads` more one by one (Instant before and after each pread). Prints
/// per configuration the median over rounds of each round's p50, p90 and
/// p99, and the median over rounds of p50 / stock's p50 of the same round.
///
/// Needs root (mounts). xfused is target/release/xfused or $XFUSED,
/// stock-fuse target/release/stock-fuse; $XFUSED_ARGS adds arguments to
/// every xfused.
#[derive(Debug, clap::Parser)]
#[command(name = "read-latency")]
struct Opts {
    /// Rounds; configurations are mounted fresh in each, in an order that
    /// rotates per round (1 to 1000).
    #[arg(long, default_value_t = 5, value_name = "N")]
    rounds: usize,
    /// Timed reads per configuration and round (100 to 10,000,000).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    reads: usize,
    /// Configurations, comma-separated; must include stock (ratios are taken
    /// to it). Also available: native, xfuse-uring-pt.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = config_named,
        default_value = "stock,xfuse-dev,xfuse-uring,xfuse-uring-dp",
        value_name = "NAME,.."
    )]
    configs: Vec<Config>,
    /// Also draw the percentiles (medians over rounds) as an SVG chart.
    #[arg(long, value_name = "FILE")]
    svg: Option<std::path::PathBuf>,
}

fn config_named(name: &str) -> Result<Config, String> {
    Config::from_name(name.trim()).ok_or_else(|| format!("no configuration {name:?}"))
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut opts = <Opts as clap::Parser>::parse();
    opts.rounds = opts.rounds.clamp(1, 1000);
    opts.reads = opts.reads.clamp(100, 10_000_000);
    if !opts.configs.contains(&Config::Stock) {
        bail!("--configs must include stock: ratios are taken to it");
    }
    Ok(opts)
}

/// A small xorshift generator: the offsets need no quality, only spread.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The distribution of the timed reads' latencies.
fn measure(mount: &Mount, reads: usize, seed: u64) -> anyhow::Result<Latencies> {
    let path = mount.root().join("data");
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .with_context(|| format!("{}: open {} with O_DIRECT", mount.config(), path.display()))?;
    let mut block = Box::new(Block([0; BLOCK]));
    let blocks = (FILE_BYTES / BLOCK) as u64;
    let mut rng = seed | 1;
    let mut read_one = |block: &mut Block| -> anyhow::Result<u64> {
        let offset = (next(&mut rng) % blocks) * BLOCK as u64;
        let start = Instant::now();
        let n = file.read_at(&mut block.0, offset)?;
        let ns = start.elapsed().as_nanos() as u64;
        if n != BLOCK {
            bail!("{}: short read of {n} bytes at {offset}", mount.config());
        }
        Ok(ns)
    };
    for _ in 0..WARM_UP {
        read_one(&mut block)?;
    }
    let mut lat = Latencies::new();
    for _ in 0..reads {
        lat.record(read_one(&mut block)?);
    }
    Ok(lat)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn populate(src: &std::path::Path) -> std::io::Result<()> {
    let mut data = vec![0u8; FILE_BYTES];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        chunk.copy_from_slice(&next(&mut rng).to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(src.join("data"), data)
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    benches::mount::prepare_standalone();
    let binaries = Binaries::find(Some(benches::target_dir().join("release").join("stock-fuse")));
    // Per configuration: (p50, p90, p99) of each round, in µs.
    let mut rounds: Vec<Vec<(Config, [f64; 3])>> = Vec::new();
    for round in 0..opts.rounds {
        let mut this = Vec::new();
        let n = opts.configs.len();
        for i in 0..n {
            let config = opts.configs[(i + round) % n];
            let mount =
                Mount::new(config, &binaries, populate).map_err(|e| anyhow::anyhow!("mounting {e}"))?;
            let lat = measure(&mount, opts.reads, 0x5eed + round as u64)?;
            drop(mount);
            let us = |p| lat.percentile_ns(p).unwrap_or(0) as f64 / 1000.0;
            let row = [us(50.0), us(90.0), us(99.0)];
            eprintln!(
                "round {}: {config}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
                round + 1,
                row[0],
                row[1],
                row[2]
            );
            this.push((config, row));
        }
        rounds.push(this);
    }
    let of = |round: &[(Config, [f64; 3])], config: Config| {
        round
            .iter()
            .find(|(c, _)| *c == config)
            .map(|(_, r)| *r)
            .expect("every configuration runs in every round")
    };
    println!(
        "4 KiB O_DIRECT reads at random offsets of a 64 MiB file on tmpfs, one thread, {} reads per configuration and round, {} rounds.",
        opts.reads, opts.rounds
    );
    println!();
    println!("| configuration | p50 | p90 | p99 | p50 / stock's p50 (paired) |");
    println!("|---|---:|---:|---:|---:|");
    let col = |config: Config, k: usize| median(rounds.iter().map(|r| of(r, config)[k]).collect());
    for &config in &opts.configs {
        let col = |k: usize| col(config, k);
        let ratio = median(
            rounds
                .iter()
                .map(|r| of(r, config)[0] / of(r, Config::Stock)[0])
                .collect(),
        );
        println!(
            "| {config} | {:.1} µs | {:.1} µs | {:.1} µs | {ratio:.2} |",
            col(0),
            col(1),
            col(2)
        );
    }
    if let Some(path) = &opts.svg {
        let chart = benches::plot::Bars {
            title: format!(
                "4 KiB O_DIRECT random reads, one thread: latency percentiles (medians of {} rounds; lower is better)",
                opts.rounds
            ),
            value_label: "µs".to_string(),
            groups: opts.configs.iter().map(|c| c.name().to_string()).collect(),
            series: ["p50", "p90", "p99"]
                .iter()
                .enumerate()
                .map(|(k, name)| benches::plot::Series {
                    name: name.to_string(),
                    values: opts.configs.iter().map(|&c| Some(col(c, k))).collect(),
                })
                .collect(),
            log: false,
            reference: None,
        };
        benches::plot::write(path, &chart.svg()?)?;
        eprintln!("read-latency: wrote {}", path.display());
    }
    Ok(())
}
