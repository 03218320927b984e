//! virtiofs-data: file data through virtio-fs backends without a guest: a
//! file written in large WRITEs and read back in READs by the in-process
//! vhost-user frontend (`vm_tests::frontend::data`), every reply checked.
//! Compares xfused binaries (e.g. before and after a change) and,
//! optionally, virtiofsd, run in alternating order per round.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use vm_tests::frontend::data::{self, DataConfig, DataReport};
use vm_tests::frontend::{Backend, Session};

const ABOUT: &str = "\
File data through virtio-fs backends, replayed without a guest.

Plays the VMM and the guest's FUSE client (as virtiofs-replay does), creates
one file and writes it front to back in WRITEs of --chunk-kib, one request in
flight, laid out as a Linux guest lays them out (headers, then one
descriptor per 4 KiB page, in an indirect table); writes it again over the
same blocks (no allocation: data movement alone); then reads it back in
READs of the same size and checks every byte. Each round starts every
backend on a fresh directory, in an order that rotates per round.

Measured per phase: throughput (MiB/s, wall time from the first request to
the last reply) and the backend's CPU time per MiB (all threads). Ratios are
against the first backend named; 'paired' is the median over rounds of the
ratio within a round.";

#[derive(Debug, clap::Parser)]
#[command(name = "virtiofs-data", about = ABOUT.lines().next(), long_about = ABOUT)]
struct Args {
    /// An xfused binary to measure, as NAME=PATH (repeatable; the first
    /// is the reference of the ratios).
    #[arg(long = "xfused", value_name = "NAME=PATH", required = true)]
    xfused: Vec<String>,
    /// Also measure virtiofsd (this binary).
    #[arg(long, value_name = "PATH")]
    virtiofsd: Option<PathBuf>,
    /// Rounds; each runs every backend once.
    #[arg(long, default_value_t = 7, value_name = "N")]
    rounds: u32,
    /// File size in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    file_mib: u64,
    /// Bytes per WRITE and READ, in KiB (4 to 1024; a Linux guest sends
    /// up to its queue size minus a few pages).
    #[arg(long, default_value_t = 128, value_name = "KIB")]
    chunk_kib: u32,
    /// Where the served directories go (default $TMPDIR or /tmp); its
    /// filesystem's cost is in every number (/dev/shm: tmpfs).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
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

/// MiB/s and backend CPU ms per MiB of one phase.
fn rates(phase: &data::Phase, mib: f64) -> (f64, f64) {
    let mibs = mib / phase.elapsed.as_secs_f64();
    let cpu = phase.backend_cpu_ns.map_or(f64::NAN, |ns| ns as f64 / 1e6 / mib);
    (mibs, cpu)
}

fn one_round(
    backend: &Backend,
    work_dir: &std::path::Path,
    config: &DataConfig,
) -> anyhow::Result<DataReport> {
    let root = tempfile::Builder::new()
        .prefix("xfuse-data.")
        .tempdir_in(work_dir)
        .context("temporary directory")?;
    let share = root.path().join("share");
    std::fs::create_dir(&share)?;
    let serving = backend.start(&share, root.path())?;
    let config = DataConfig {
        backend_pid: Some(serving.pid()),
        ..config.clone()
    };
    let result = (|| {
        let mut session = Session::connect(serving.socket(), 30_000)?;
        let report = data::run(&mut session, "data", &config, 30_000)?;
        session.destroy()?;
        Ok::<_, vm_tests::frontend::ReplayError>(report)
    })();
    let report = result.with_context(|| format!("{}: {}", backend.name, serving.log_tail()))?;
    serving.finish()?;
    let len = std::fs::metadata(share.join("data"))?.len();
    if len != config.file_bytes {
        bail!(
            "{}: the host file has {len} bytes, not {}",
            backend.name,
            config.file_bytes
        );
    }
    Ok(report)
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let mut backends = Vec::new();
    for spec in &args.xfused {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--xfused {spec}: expected NAME=PATH");
        };
        let mut b = Backend::xfused(std::path::Path::new(path), &[]);
        b.name = name.to_string();
        backends.push(b);
    }
    if let Some(path) = &args.virtiofsd {
        backends.push(Backend::virtiofsd(path));
    }
    let chunk_bytes = args.chunk_kib.clamp(4, 1024) * 1024;
    let config = DataConfig {
        file_bytes: args.file_mib.max(1) << 20,
        chunk_bytes,
        backend_pid: None,
    };
    let mib = config.file_bytes as f64 / f64::from(1 << 20);
    let work_dir = args.work_dir.unwrap_or_else(std::env::temp_dir);
    eprintln!(
        "virtiofs-data: {} rounds, {} MiB in {} KiB requests, directories in {}, load average {}",
        args.rounds,
        args.file_mib,
        chunk_bytes / 1024,
        work_dir.display(),
        benches::procfs::loadavg_1m().map_or("?".into(), |l| format!("{l:.2}"))
    );
    // results[backend][round] = MiB/s and CPU ms/MiB of write, rewrite, read.
    let mut results: Vec<Vec<[f64; 6]>> = vec![Vec::new(); backends.len()];
    for round in 0..args.rounds as usize {
        for k in 0..backends.len() {
            let i = (k + round) % backends.len();
            let r = one_round(&backends[i], &work_dir, &config)?;
            let (wm, wc) = rates(&r.write, mib);
            let (om, oc) = rates(&r.rewrite, mib);
            let (rm, rc) = rates(&r.read, mib);
            eprintln!(
                "round {round} {:>12}: write {wm:8.1} MiB/s {wc:6.2} ms CPU/MiB, rewrite {om:8.1} MiB/s {oc:6.2}, \
                 read {rm:8.1} MiB/s {rc:6.2}",
                backends[i].name
            );
            results[i].push([wm, wc, om, oc, rm, rc]);
        }
    }
    let med = |i: usize, col: usize| median(results[i].iter().map(|r| r[col]).collect());
    let columns = "| write MiB/s | write CPU ms/MiB | rewrite MiB/s | rewrite CPU ms/MiB | read MiB/s | read CPU ms/MiB |";
    println!("| backend {columns}\n|---|---:|---:|---:|---:|---:|---:|");
    for (i, b) in backends.iter().enumerate() {
        let cells: Vec<String> = (0..6).map(|c| format!("{:.2}", med(i, c))).collect();
        println!("| {} | {} |", b.name, cells.join(" | "));
    }
    if backends.len() > 1 {
        println!(
            "\nRatios against {} (ratio of medians / median of paired ratios):\n\n| backend {columns}\n|---|---:|---:|---:|---:|---:|---:|",
            backends[0].name
        );
        for i in 1..backends.len() {
            let cell = |col: usize| {
                let paired = median(
                    (0..results[i].len())
                        .map(|r| results[i][r][col] / results[0][r][col])
                        .collect(),
                );
                format!("{:.2} / {:.2}", med(i, col) / med(0, col), paired)
            };
            let cells: Vec<String> = (0..6).map(cell).collect();
            println!("| {} | {} |", backends[i].name, cells.join(" | "));
        }
    }
    Ok(())
}
