//! The stat-heavy bench of the adaptive cache policy: the same tree of
//! small files on tmpfs, reached natively and through `xfused passthrough`
//! with `--cache-policy fixed` (1 s timeouts) and `--cache-policy adaptive`,
//! under two workloads, each repeated in rounds with an untimed pause longer
//! than the fixed timeout between them (so every fixed round finds its
//! timeouts expired, like a tool re-scanning a tree every second or so):
//!
//! - `stat`: stat of every file by path;
//! - `walk`: a `find`-like walk: read every directory, lstat every entry.
//!
//! For each it reports the time of the rounds (pauses excluded) and the
//! LOOKUP and GETATTR upcalls counted by the BPF programs of `xfuse-ebpf`
//! (loaded by this bench, so the count does not trust the daemon), in total
//! and after the warm-up rounds.
//!
//! ```sh
//! cargo build --release -p xfused -p benches
//! target/release/stat-cache [--dirs 100] [--files-per-dir 100] [--rounds 30]
//!                           [--pause-ms 1100] [--transport dev|uring] [--workloads stat,walk]
//! ```
//! Needs root (tmpfs and FUSE mounts, BPF). Prints a markdown table on
//! stdout, progress on stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use benches::{Binaries, Config, Mount};
use xfuse_ebpf::{connection_of, UpcallTracer};

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
/// Rounds not counted in the steady state: a cold one, the one that makes
/// inodes hot (their second upcall), and the one answered with long timeouts.
const WARMUP_ROUNDS: usize = 3;

#[derive(Debug)]
struct Options {
    dirs: usize,
    files_per_dir: usize,
    rounds: usize,
    pause: Duration,
    transport: Config,
    workloads: Vec<String>,
}

/// The stat-heavy bench of the adaptive cache policy: repeated stats and
/// find-like walks of a tree of small files on tmpfs, natively and through
/// `xfused passthrough` with fixed (1 s) and adaptive timeouts, with an
/// untimed pause between rounds; reports the rounds' times and the LOOKUP
/// and GETATTR upcalls counted by BPF. Needs root (tmpfs and FUSE mounts,
/// BPF). Prints a markdown table on stdout, progress on stderr.
#[derive(Debug, clap::Parser)]
#[command(name = "stat-cache")]
struct Cli {
    /// Directories of the tree.
    #[arg(long, default_value_t = 100, value_name = "N")]
    dirs: usize,
    /// Files in each directory.
    #[arg(long, default_value_t = 100, value_name = "N")]
    files_per_dir: usize,
    /// Rounds of each workload (more than the 3 warm-up rounds).
    #[arg(long, default_value_t = 30, value_name = "N")]
    rounds: usize,
    /// Untimed pause between rounds (longer than the fixed 1 s timeout, so
    /// every fixed round finds its timeouts expired).
    #[arg(long, default_value_t = 1100, value_name = "MS")]
    pause_ms: u64,
    /// xfused transport: dev or uring.
    #[arg(long, default_value = "dev", value_parser = transport_named)]
    transport: Config,
    /// Workloads, comma-separated: stat (every file by path), walk (read
    /// every directory, lstat every entry).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stat,walk",
        value_name = "NAME,.."
    )]
    workloads: Vec<String>,
}

fn transport_named(name: &str) -> Result<Config, String> {
    match name {
        "dev" => Ok(Config::XfuseDev),
        "uring" => Ok(Config::XfuseUring),
        other => Err(format!("{other}: dev or uring")),
    }
}

fn options() -> anyhow::Result<Options> {
    let cli = <Cli as clap::Parser>::parse();
    let o = Options {
        dirs: cli.dirs,
        files_per_dir: cli.files_per_dir,
        rounds: cli.rounds,
        pause: Duration::from_millis(cli.pause_ms),
        transport: cli.transport,
        workloads: cli.workloads,
    };
    if o.rounds <= WARMUP_ROUNDS {
        bail!("--rounds must be more than {WARMUP_ROUNDS} (the warm-up)");
    }
    for w in &o.workloads {
        if w != "stat" && w != "walk" {
            bail!("unknown workload {w} (stat, walk)");
        }
    }
    Ok(o)
}

/// One configuration's results.
struct Run {
    name: String,
    round_times: Vec<Duration>,
    round_upcalls: Vec<u64>,
    round_all: Vec<u64>,
}

impl Run {
    fn total_time(&self) -> Duration {
        self.round_times.iter().sum()
    }
    fn steady_time(&self) -> Duration {
        self.round_times[WARMUP_ROUNDS..].iter().sum()
    }
    fn total_upcalls(&self) -> u64 {
        self.round_upcalls.iter().sum()
    }
    fn steady_upcalls(&self) -> u64 {
        self.round_upcalls[WARMUP_ROUNDS..].iter().sum()
    }
    fn total_all(&self) -> u64 {
        self.round_all.iter().sum()
    }
}

fn populate(root: &Path, o: &Options) -> std::io::Result<()> {
    for d in 0..o.dirs {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir(&dir)?;
        for f in 0..o.files_per_dir {
            std::fs::write(dir.join(format!("f{f:04}")), b"x")?;
        }
    }
    Ok(())
}

fn paths(root: &Path, o: &Options) -> Vec<PathBuf> {
    (0..o.dirs)
        .flat_map(|d| (0..o.files_per_dir).map(move |f| root.join(format!("d{d:03}/f{f:04}"))))
        .collect()
}

fn walk(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let md = std::fs::symlink_metadata(entry.path())?;
        n += 1;
        if md.is_dir() {
            n += walk(&entry.path())?;
        }
    }
    Ok(n)
}

/// (LOOKUP+GETATTR, every opcode) requests sent so far on `conn`.
fn upcalls(t: &UpcallTracer, conn: Option<u32>) -> anyhow::Result<(u64, u64)> {
    let Some(conn) = conn else { return Ok((0, 0)) };
    let stats = t.opcode_stats(conn)?;
    let attr = stats
        .iter()
        .filter(|s| s.opcode == LOOKUP || s.opcode == GETATTR)
        .map(|s| s.sent)
        .sum();
    Ok((attr, stats.iter().map(|s| s.sent).sum()))
}

fn run(
    name: &str,
    config: Config,
    extra: &[&str],
    workload: &str,
    o: &Options,
    t: &UpcallTracer,
) -> anyhow::Result<Run> {
    let mut binaries = Binaries::find(None);
    binaries.xfused_args.extend(extra.iter().map(|s| s.to_string()));
    let mount =
        Mount::new(config, &binaries, |root| populate(root, o)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = mount.root().to_path_buf();
    let conn = if config.is_fuse() {
        Some(connection_of(&root).context("the mount's FUSE connection")?)
    } else {
        None
    };
    let files = paths(&root, o);
    let expected = (o.dirs * (o.files_per_dir + 1)) as u64;
    let mut r = Run {
        name: name.to_owned(),
        round_times: Vec::new(),
        round_upcalls: Vec::new(),
        round_all: Vec::new(),
    };
    for round in 0..o.rounds {
        let before = upcalls(t, conn)?;
        let start = Instant::now();
        match workload {
            "stat" => {
                for p in &files {
                    std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
                }
            }
            _ => {
                let n = walk(&root).context("walking the tree")?;
                if n != expected {
                    bail!("walk found {n} entries, expected {expected}");
                }
            }
        }
        r.round_times.push(start.elapsed());
        let after = upcalls(t, conn)?;
        r.round_upcalls.push(after.0 - before.0);
        r.round_all.push(after.1 - before.1);
        eprintln!(
            "stat-cache: {workload} {name} round {round}: {:?}, {} LOOKUP+GETATTR, {} requests in all",
            r.round_times[round], r.round_upcalls[round], r.round_all[round]
        );
        std::thread::sleep(o.pause);
    }
    Ok(r)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let tracer = UpcallTracer::load().context("loading the BPF upcall counters (root, kernel BTF)")?;
    let transport = match o.transport {
        Config::XfuseUring => "uring",
        _ => "dev",
    };
    println!(
        "{} files in {} directories, {} rounds, {} ms untimed pause between rounds, transport {transport}; \
         steady state = rounds {}..{} (after {WARMUP_ROUNDS} warm-up rounds).\n",
        o.dirs * o.files_per_dir,
        o.dirs,
        o.rounds,
        o.pause.as_millis(),
        WARMUP_ROUNDS + 1,
        o.rounds
    );
    println!(
        "| workload | configuration | time, all rounds | time, steady rounds | vs native (steady) | \
         LOOKUP+GETATTR, all rounds | LOOKUP+GETATTR, steady rounds | requests of any kind, all rounds |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for workload in &o.workloads {
        let runs = [
            run("native", Config::Native, &[], workload, &o, &tracer)?,
            run(
                "fixed 1 s",
                o.transport,
                &["--cache-policy", "fixed"],
                workload,
                &o,
                &tracer,
            )?,
            run(
                "adaptive",
                o.transport,
                &["--cache-policy", "adaptive"],
                workload,
                &o,
                &tracer,
            )?,
        ];
        let native = runs[0].steady_time().as_secs_f64();
        for r in &runs {
            println!(
                "| {workload} | {} | {} | {} | {:.2}× | {} | {} | {} |",
                r.name,
                ms(r.total_time()),
                ms(r.steady_time()),
                r.steady_time().as_secs_f64() / native,
                r.total_upcalls(),
                r.steady_upcalls(),
                r.total_all()
            );
        }
        let (fixed, adaptive) = (&runs[1], &runs[2]);
        println!(
            "| {workload} | fixed ÷ adaptive | {:.2}× | {:.2}× | | {:.1}× | {} | |",
            fixed.total_time().as_secs_f64() / adaptive.total_time().as_secs_f64(),
            fixed.steady_time().as_secs_f64() / adaptive.steady_time().as_secs_f64(),
            fixed.total_upcalls() as f64 / adaptive.total_upcalls().max(1) as f64,
            if adaptive.steady_upcalls() == 0 {
                "∞ (adaptive: 0)".to_owned()
            } else {
                format!(
                    "{:.1}×",
                    fixed.steady_upcalls() as f64 / adaptive.steady_upcalls() as f64
                )
            }
        );
    }
    Ok(())
}
