//! virtiofs-replay: the metadata operations of the VM workload, replayed
//! by an in-process vhost-user frontend against `xfused virtiofs` (default
//! and `--inode-fds`) and virtiofsd, without a guest: per-operation latency
//! and backend CPU per request, as a Markdown table.
//!
//! scripts/virtiofs-replay.sh builds xfused, installs virtiofsd and runs this.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use benches::latency::Latencies;
use vm_tests::frontend::{replay, Backend, ReplayReport};

/// What `--help` says beyond the options.
const ABOUT: &str = "\
The metadata operations of the VM workload, replayed by an in-process
vhost-user frontend against virtio-fs backends, without a guest.

Plays the VMM and the guest kernel's FUSE client itself: builds split
virtqueues in memfd guest memory, connects to a virtio-fs backend's
vhost-user socket, sends FUSE_INIT as a Linux 6.1 guest does, then replays
the metadata operations of vm-tests/guest/workload.sh (per file: LOOKUP of
the missing name, CREATE+RELEASE (+FLUSH if the backend wants it) or MKNOD,
LOOKUP, GETATTR, READDIRPLUS of the directory, RENAME into sub/, LINK,
UNLINK, FORGETs on the high-priority queue). Every reply is parsed and
checked against a model of the tree, and the directory is checked from the
host after each run: a wrong reply is an error, not a number.

Backends, each on a fresh empty directory per round, in an order that
rotates per round: xfused virtiofs (defaults), xfused virtiofs --inode-fds,
and virtiofsd --sandbox none --seccomp none --cache auto.

Measured: latency per operation (chain published in the available ring to
its used-ring entry seen, after the eventfd call), median/p90/p99 per round
and the median of those over rounds; wall time per request; the backend's
CPU time (all threads) per request. Ratios are xfused/virtiofsd, below 1 =
xfused faster; 'paired' is the median over rounds of the ratio within a round.

Not measured: a guest kernel (every operation reaches the backend, no dentry
or attribute caches) and QEMU (eventfd writes and reads instead of VM exits
and interrupts).";

#[derive(Debug, clap::Parser)]
#[command(name = "virtiofs-replay", about = ABOUT.lines().next(), long_about = ABOUT)]
struct Args {
    /// Rounds; each runs every backend once.
    #[arg(long, default_value_t = 5, value_name = "N")]
    rounds: u32,
    /// Files per worker (1 to 1,000,000).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    files: u32,
    /// Workers, each in its own directory with one request in flight: K
    /// requests in flight (1 to 32).
    #[arg(long, default_value_t = 1, value_name = "K")]
    depth: u32,
    /// xfused binary (default target/release/xfused).
    #[arg(long, value_name = "PATH")]
    xfused: Option<PathBuf>,
    /// virtiofsd binary.
    #[arg(
        long,
        default_value = "/var/cache/xfuse/virtiofsd/bin/virtiofsd",
        value_name = "PATH"
    )]
    virtiofsd: PathBuf,
    /// Skip the xfused --inode-fds configuration.
    #[arg(long)]
    no_inode_fds: bool,
    /// Where the served directories and sockets go, one fresh temporary
    /// directory per run (default $TMPDIR or /tmp); its filesystem's own
    /// cost is in every number (e.g. /dev/shm for tmpfs, to see the
    /// backends alone).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Debug)]
struct Opts {
    rounds: u32,
    files: u32,
    depth: u32,
    xfused: PathBuf,
    virtiofsd: PathBuf,
    inode_fds: bool,
    work_dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Opts> {
    let args = <Args as clap::Parser>::parse();
    if !(1..=replay::DEPTH_MAX).contains(&args.depth) {
        bail!("--depth {} is not 1..={}", args.depth, replay::DEPTH_MAX);
    }
    let opts = Opts {
        rounds: args.rounds.max(1),
        files: args.files.clamp(1, 1_000_000),
        depth: args.depth,
        xfused: args
            .xfused
            .unwrap_or_else(|| benches::target_dir().join("release").join("xfused")),
        virtiofsd: args.virtiofsd,
        inode_fds: !args.no_inode_fds,
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
    };
    for (what, path) in [("--xfused", &opts.xfused), ("--virtiofsd", &opts.virtiofsd)] {
        if !path.is_file() {
            bail!(
                "{what} {}: no such file (scripts/virtiofs-replay.sh builds and installs both)",
                path.display()
            );
        }
    }
    Ok(opts)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One operation's statistics in one round, in microseconds.
#[derive(Debug, Clone, Copy)]
struct OpRound {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn op_round(report: &ReplayReport, op: &str) -> Option<OpRound> {
    let v = report.latencies_ns.get(op)?;
    let latencies: Latencies = v.iter().copied().collect();
    let us = |p| {
        latencies
            .percentile_ns(p)
            .map_or(f64::NAN, |ns| ns as f64 / 1000.0)
    };
    Some(OpRound {
        count: v.len(),
        p50: us(50.0),
        p90: us(90.0),
        p99: us(99.0),
    })
}

fn wall_us_per_request(r: &ReplayReport) -> f64 {
    r.elapsed.as_secs_f64() * 1e6 / r.requests.max(1) as f64
}

fn cpu_us_per_request(r: &ReplayReport) -> f64 {
    r.backend_cpu_ns
        .map_or(f64::NAN, |ns| ns as f64 / 1000.0 / r.requests.max(1) as f64)
}

fn fmt(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "–".into()
    }
}

/// The filesystem type of the mount holding `dir` (longest mount-point prefix).
fn fs_type_of(dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    kmod_shim::mountinfo::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| dir.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map_or_else(|| "?".into(), |m| m.fs_type)
}

/// `xfused virtiofs ARGS` unconfined (`--sandbox none --seccomp none`), as
/// `Backend::virtiofsd` is: the request path is measured, not the sandbox.
/// Named `name` in the tables.
fn unconfined(program: &std::path::Path, name: &str, args: &[&str]) -> Backend {
    let mut all = vec!["--sandbox", "none", "--seccomp", "none"];
    all.extend_from_slice(args);
    let mut backend = Backend::xfused(program, &all);
    backend.name = name.to_owned();
    backend
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args()?;
    let mut backends = vec![
        Backend::virtiofsd(&opts.virtiofsd),
        unconfined(&opts.xfused, "xfused", &[]),
    ];
    if opts.inode_fds {
        backends.push(unconfined(&opts.xfused, "xfused --inode-fds", &["--inode-fds"]));
    }
    let load_before = benches::procfs::loadavg_1m();
    let fs_type = fs_type_of(&opts.work_dir);
    eprintln!(
        "virtiofs-replay: {} rounds, {} files x {} workers (depth {}), directories in {} ({fs_type}), \
         load average {}",
        opts.rounds,
        opts.files,
        opts.depth,
        opts.depth,
        opts.work_dir.display(),
        load_before.map_or("?".into(), |l| format!("{l:.2}"))
    );
    let mut runs: Vec<Vec<ReplayReport>> = vec![Vec::new(); backends.len()];
    for round in 0..opts.rounds {
        // Rotate who goes first, so drift on a noisy host favours nobody.
        let n = backends.len();
        for j in 0..n {
            let b = (j + round as usize) % n;
            let result = backends[b]
                .run_round(&opts.work_dir, opts.files, opts.depth)
                .with_context(|| format!("round {round}, {}", backends[b].name))?;
            let r = result.report;
            eprintln!(
                "round {round}: {:<20} {} requests in {:.3} s, {} us wall and {} us backend CPU per request",
                backends[b].name,
                r.requests,
                r.elapsed.as_secs_f64(),
                fmt(wall_us_per_request(&r), 1),
                fmt(cpu_us_per_request(&r), 1),
            );
            runs[b].push(r);
        }
    }
    let load_after = benches::procfs::loadavg_1m();

    let ops: BTreeSet<&'static str> = runs
        .iter()
        .flatten()
        .flat_map(|r| r.latencies_ns.keys().copied())
        .collect();
    // Table order: the workload's order, anything else after.
    const ORDER: [&str; 15] = [
        "LOOKUP (ENOENT)",
        "CREATE",
        "FLUSH",
        "RELEASE",
        "MKNOD",
        "LOOKUP",
        "GETATTR",
        "OPENDIR",
        "READDIRPLUS",
        "RELEASEDIR",
        "RENAME",
        "LINK",
        "UNLINK",
        "FORGET",
        "MKDIR",
    ];
    let mut ordered: Vec<&str> = ORDER.iter().copied().filter(|o| ops.contains(o)).collect();
    ordered.extend(ops.iter().copied().filter(|o| !ORDER.contains(o)));

    let stat_med = |b: usize, op: &str, f: &dyn Fn(&OpRound) -> f64| {
        median(
            runs[b]
                .iter()
                .filter_map(|r| op_round(r, op))
                .map(|s| f(&s))
                .collect(),
        )
    };
    let paired = |b: usize, per_round: &dyn Fn(&ReplayReport) -> Option<f64>| {
        median(
            runs[b]
                .iter()
                .zip(&runs[0])
                .filter_map(|(x, v)| Some(per_round(x)? / per_round(v)?))
                .collect(),
        )
    };

    // Table 1: medians and ratios.
    let mut head = "| operation | n per round | virtiofsd (µs) |".to_string();
    let mut rule = "|---|---:|---:|".to_string();
    for b in &backends[1..] {
        head.push_str(&format!(" {} (µs) | ratio | paired |", b.name));
        rule.push_str("---:|---:|---:|");
    }
    println!("{head}\n{rule}");
    for op in &ordered {
        let counts: BTreeSet<usize> = (0..backends.len())
            .map(|b| {
                runs[b]
                    .first()
                    .and_then(|r| op_round(r, op))
                    .map_or(0, |s| s.count)
            })
            .collect();
        let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
        let v = stat_med(0, op, &|s| s.p50);
        let mut line = format!("| {op} | {} | {} |", counts.join(" / "), fmt(v, 1));
        for b in 1..backends.len() {
            let x = stat_med(b, op, &|s| s.p50);
            let pr = paired(b, &|r| op_round(r, op).map(|s| s.p50));
            line.push_str(&format!(" {} | {} | {} |", fmt(x, 1), fmt(x / v, 2), fmt(pr, 2)));
        }
        println!("{line}");
    }
    let summary = |name: &str, f: &dyn Fn(&ReplayReport) -> f64, decimals: usize| {
        let v = median(runs[0].iter().map(f).collect());
        let mut line = format!("| {name} | | {} |", fmt(v, decimals));
        for (b, run) in runs.iter().enumerate().skip(1) {
            let x = median(run.iter().map(f).collect());
            let pr = paired(b, &|r| Some(f(r)));
            line.push_str(&format!(
                " {} | {} | {} |",
                fmt(x, decimals),
                fmt(x / v, 2),
                fmt(pr, 2)
            ));
        }
        println!("{line}");
    };
    summary("**whole mix**, wall µs per request", &wall_us_per_request, 1);
    summary("**whole mix**, ops/s", &|r| 1e6 / wall_us_per_request(r), 0);
    summary(
        "**backend CPU** per request (µs, user+sys)",
        &cpu_us_per_request,
        1,
    );

    // Table 2: tails.
    println!();
    let mut head = "| operation |".to_string();
    let mut rule = "|---|".to_string();
    for b in &backends {
        head.push_str(&format!(" {} p50 / p90 / p99 (µs) |", b.name));
        rule.push_str("---:|");
    }
    println!("{head}\n{rule}");
    for op in &ordered {
        let mut line = format!("| {op} |");
        for b in 0..backends.len() {
            let cell = [
                stat_med(b, op, &|s| s.p50),
                stat_med(b, op, &|s| s.p90),
                stat_med(b, op, &|s| s.p99),
            ]
            .map(|x| fmt(x, 1))
            .join(" / ");
            line.push_str(&format!(" {cell} |"));
        }
        println!("{line}");
    }
    let requests: Vec<String> = backends
        .iter()
        .zip(&runs)
        .map(|(b, r)| format!("{} {}", b.name, r.first().map_or(0, |r| r.requests)))
        .collect();
    let init: Vec<String> = backends
        .iter()
        .zip(&runs)
        .filter_map(|(b, r)| r.first().map(|r| format!("{} 7.{}", b.name, r.init.minor)))
        .collect();
    println!(
        "\nMedians over {} rounds of per-round statistics; {} files x {} workers ({} in flight), \
         served from {} ({fs_type}); \
         requests per round: {}; protocol agreed: {}. Ratios: xfused/virtiofsd, below 1 = xfused faster; \
         paired = median over rounds of the ratio within a round. Load average (1 min) {} before, {} after.",
        opts.rounds,
        opts.files,
        opts.depth,
        opts.depth,
        opts.work_dir.display(),
        requests.join(", "),
        init.join(", "),
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        load_after.map_or("?".into(), |l| format!("{l:.2}")),
    );
    Ok(())
}
