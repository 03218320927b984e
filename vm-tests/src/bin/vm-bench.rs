//! vm-bench: the guest workload against two virtio-fs backends, `xfused
//! virtiofs` and virtiofsd, in alternating order, and a table of median
//! phase times.
//!
//! Each round boots a fresh guest against each backend, on a fresh shared
//! directory, and checks the result from both sides exactly as the tests do:
//! a run whose files differ from the expected tree is an error, not a number.
//!
//! `vm-bench --help` lists the options (scripts/vm-bench.sh builds and
//! installs both backends and runs this).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vm_tests::{workload, Assets, GuestOutput, VmConfig};

/// Phases that are metadata operations only (guest/workload.sh): `create`
/// also writes 1 MiB per worker, `readback` and `listing` read file data.
const METADATA_PHASES: [&str; 4] = ["lookup", "rename", "link", "unlink"];

/// The guest workload against `xfused virtiofs` and virtiofsd: boots a
/// QEMU guest (TCG) per round and backend, runs vm-tests/guest/workload.sh
/// on the virtio-fs mount, checks the result from both sides, and prints
/// median seconds per phase.
#[derive(Debug, clap::Parser)]
#[command(name = "vm-bench")]
struct Opts {
    /// xfused binary.
    #[arg(long, value_name = "PATH")]
    xfused: PathBuf,
    /// virtiofsd binary.
    #[arg(long, value_name = "PATH")]
    virtiofsd: PathBuf,
    /// Rounds; each boots one guest per backend.
    #[arg(long, default_value_t = 5, value_name = "N")]
    rounds: u32,
    /// Files per worker.
    #[arg(long, default_value_t = 300, value_name = "N")]
    files: u32,
    /// Workers in the guest (1 to 64).
    #[arg(long, default_value_t = 4, value_name = "N")]
    workers: u32,
    /// An extra flag for `xfused virtiofs` (e.g. --inode-fds); repeatable.
    #[arg(long = "xfused-arg", value_name = "FLAG", allow_hyphen_values = true)]
    xfused_args: Vec<String>,
}

fn parse_args() -> Opts {
    let mut opts = <Opts as clap::Parser>::parse();
    opts.rounds = opts.rounds.max(1);
    opts.files = opts.files.max(1);
    opts.workers = opts.workers.clamp(1, 64);
    opts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Xfused,
    Virtiofsd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Xfused => "xfused virtiofs",
            Backend::Virtiofsd => "virtiofsd",
        }
    }

    fn start(self, opts: &Opts, socket: &Path, share: &Path, log: &Path) -> anyhow::Result<Child> {
        let mut cmd = match self {
            Backend::Xfused => {
                let mut c = Command::new(&opts.xfused);
                c.arg("virtiofs")
                    .arg("--socket")
                    .arg(socket)
                    .arg("--source")
                    .arg(share);
                // No sandbox, as virtiofsd below: the request path is
                // measured, not confinement (which also changes inodes to
                // O_PATH descriptors and drops xattrs).
                c.args(["--cache", "auto", "--sandbox", "none", "--seccomp", "none"])
                    .args(&opts.xfused_args);
                c
            }
            Backend::Virtiofsd => {
                let mut c = Command::new(&opts.virtiofsd);
                c.arg("--socket-path").arg(socket).arg("--shared-dir").arg(share);
                // No sandbox, as xfused above: measure the request path,
                // not namespace set-up.
                c.args(["--cache", "auto", "--sandbox", "none", "--seccomp", "none"]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.name()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("{} made no socket in 10 s", self.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }
}

/// User+system CPU seconds of a process so far (from /proc/PID/stat).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct Run {
    times: Vec<(String, f64)>,
    cpu: Option<f64>,
}

fn run_once(opts: &Opts, backend: Backend, assets: &Assets, initrd: &Path) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let share = dir.path().join("share");
    std::fs::create_dir(&share)?;
    workload::write_host_files(&share)?;
    let socket = dir.path().join("vfs.sock");
    let log = dir.path().join("backend.log");
    let mut child = backend.start(opts, &socket, &share, &log)?;
    let mut config = VmConfig::new(&socket);
    config.files = opts.files;
    config.workers = opts.workers;
    config.timeout = Duration::from_secs(600);
    let out = vm_tests::boot(assets, initrd, &config);
    // The backend has seen the whole session once QEMU is gone.
    let cpu = cpu_seconds(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let out = out?;
    check(&out, &share, &config).with_context(|| {
        format!(
            "{}: the run is wrong\nguest:\n{}\nbackend log:\n{}",
            backend.name(),
            out.transcript(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    Ok(Run {
        times: out.times(),
        cpu,
    })
}

fn check(out: &GuestOutput, share: &Path, config: &VmConfig) -> anyhow::Result<()> {
    if out.timed_out || !out.done() {
        bail!("the guest did not finish");
    }
    if !out.failures().is_empty() {
        bail!("guest failures: {:?}", out.failures());
    }
    if !out.results().any(|l| l == "VMTEST_CHECK host-files ok") {
        bail!("the guest did not confirm the host's files");
    }
    let (top, sub) = workload::expected_counts(config.files);
    if out.counts().iter().any(|&(_, t, s)| (t, s) != (top, sub))
        || out.counts().len() != config.workers as usize
    {
        bail!("the guest listed other entries than it made: {:?}", out.counts());
    }
    let problems = workload::check_guest_files(share, config.files, config.workers)?;
    if !problems.is_empty() {
        bail!(
            "the host sees other files than the guest wrote:\n{}",
            problems.join("\n")
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let opts = parse_args();
    let missing = vm_tests::missing_tools();
    if !missing.is_empty() {
        bail!("missing {} (scripts/setup.sh --tests)", missing.join(", "));
    }
    let assets = Assets::prepare(&vm_tests::default_cache_dir())?;
    let work = tempfile::tempdir()?;
    let initrd = work.path().join("initrd.cpio");
    assets.initramfs(&initrd)?;
    eprintln!(
        "vm-bench: {} rounds, {} files x {} workers, guest kernel {}",
        opts.rounds, opts.files, opts.workers, assets.release
    );
    let backends = [Backend::Xfused, Backend::Virtiofsd];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    for round in 0..opts.rounds {
        // Alternate which backend goes first, so drift on a noisy host
        // does not favour one.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for b in order {
            let run = run_once(&opts, backends[b], &assets, &initrd)?;
            let total: f64 = run.times.iter().map(|(_, t)| t).sum();
            eprintln!("round {round}: {:<16} total {total:.2} s", backends[b].name());
            runs[b].push(run);
        }
    }
    let phases: Vec<String> = runs[0][0].times.iter().map(|(p, _)| p.clone()).collect();
    let med = |b: usize, phase: &str| {
        median(
            runs[b]
                .iter()
                .filter_map(|r| r.times.iter().find(|(p, _)| p == phase).map(|(_, t)| *t))
                .collect(),
        )
    };
    let sum_med = |b: usize, filter: &dyn Fn(&str) -> bool| {
        median(
            runs[b]
                .iter()
                .map(|r| r.times.iter().filter(|(p, _)| filter(p)).map(|(_, t)| t).sum())
                .collect(),
        )
    };
    // The two runs of a round are neighbours in time: the median of their
    // ratios is less exposed to a noisy host than the ratio of medians.
    let paired = |filter: &dyn Fn(&str) -> bool| {
        let sum = |r: &Run| {
            r.times
                .iter()
                .filter(|(p, _)| filter(p))
                .map(|(_, t)| t)
                .sum::<f64>()
        };
        median(
            runs[0]
                .iter()
                .zip(&runs[1])
                .map(|(x, v)| sum(x) / sum(v))
                .collect(),
        )
    };
    println!("| phase | xfused virtiofs (s) | virtiofsd (s) | ratio of medians | median of paired ratios |");
    println!("|---|---:|---:|---:|---:|");
    for phase in &phases {
        let (x, v) = (med(0, phase), med(1, phase));
        let pr = paired(&|p| p == phase.as_str());
        println!("| {phase} | {x:.3} | {v:.3} | {:.2} | {pr:.2} |", x / v);
    }
    let is_meta = |p: &str| METADATA_PHASES.contains(&p);
    let (xm, vm) = (sum_med(0, &is_meta), sum_med(1, &is_meta));
    println!(
        "| **metadata** ({}) | {xm:.3} | {vm:.3} | {:.2} | {:.2} |",
        METADATA_PHASES.join("+"),
        xm / vm,
        paired(&is_meta)
    );
    let (xt, vt) = (sum_med(0, &|_| true), sum_med(1, &|_| true));
    println!(
        "| **all phases** | {xt:.3} | {vt:.3} | {:.2} | {:.2} |",
        xt / vt,
        paired(&|_| true)
    );
    let cpu = |b: usize| median(runs[b].iter().filter_map(|r| r.cpu).collect());
    let cpu_paired = median(
        runs[0]
            .iter()
            .zip(&runs[1])
            .filter_map(|(x, v)| Some(x.cpu? / v.cpu?))
            .collect(),
    );
    println!(
        "| backend CPU, user+sys (s) | {:.2} | {:.2} | {:.2} | {cpu_paired:.2} |",
        cpu(0),
        cpu(1),
        cpu(0) / cpu(1)
    );
    println!(
        "\nMedians of {} rounds; {} files x {} workers; ratios below 1: xfused faster. Every run was\n\
         checked against the expected tree from both sides (guest and host).",
        opts.rounds, opts.files, opts.workers
    );
    Ok(())
}
