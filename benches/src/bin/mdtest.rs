//! An mdtest-shaped metadata benchmark: per thread a directory tree, then
//! phases (file create, file stat, file open+close, file remove, directory
//! create, directory stat, directory remove), each timed over all threads;
//! ops/s per phase for each target:
//!
//! - `native`: a private tmpfs, no FUSE;
//! - `passthrough`: `xfused passthrough` serving a tmpfs directory;
//! - `meta`: `xfused mount` (the distributed filesystem on its embedded
//!   metadata engine, in-process), its data directory on tmpfs (or on
//!   `--data-dir`, e.g. a disk);
//! - with `--service-port PORT`: `xfused mount --meta tcp://` through an
//!   `xfused meta` service (embedded store on tmpfs) on 127.0.0.1:PORT;
//! - with `--etcd ENDPOINTS`: `xfused mount --meta etcd://ENDPOINTS`, on a
//!   cluster you run.
//!
//! Both FUSE targets use the same transport (`--transport`, default `dev`)
//! and xfused's default cache timeouts (1 s). Run as root, after
//! `cargo build --release -p xfused`:
//!
//! ```sh
//! cargo run --release -p benches --bin mdtest -- [--files N] [--threads 1,2] [--transport dev|uring] [--data-dir DIR]
//! ```
//!
//! Prints a markdown table on stdout.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
use rustix::process::{kill_process, Pid, Signal};

/// Subdirectories of each thread's tree (files are spread over them).
const TREE_DIRS: usize = 10;

const PHASES: [&str; 7] = [
    "file create",
    "file stat",
    "file open+close",
    "file remove",
    "dir create",
    "dir stat",
    "dir remove",
];

/// An mdtest-shaped metadata benchmark: per thread a tree of files and
/// directories, phases timed over all threads, ops/s per phase on native
/// tmpfs, `xfused passthrough` and `xfused mount` (and optionally through an
/// `xfused meta` service and on etcd). Run as root after
/// `cargo build --release -p xfused`; prints a markdown table.
#[derive(Debug, clap::Parser)]
#[command(name = "mdtest")]
struct Args {
    /// Files per thread.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    files: usize,
    /// Thread counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_name = "N,..")]
    threads: Vec<usize>,
    /// xfused transport of both FUSE targets (dev or uring).
    #[arg(long, default_value = "dev")]
    transport: String,
    /// Data directory of `xfused mount` (e.g. on a disk; default: on tmpfs).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Attribute, entry and negative-entry cache timeouts of both xfused
    /// mounts (xfused's default; 0 sends every stat to the daemon).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    timeout_ms: u64,
    /// Also through an `xfused meta` service on 127.0.0.1:PORT (embedded
    /// store on tmpfs).
    #[arg(long, value_name = "PORT")]
    service_port: Option<u16>,
    /// Also on this etcd cluster (client endpoints; run etcd with
    /// --max-txn-ops 10000).
    #[arg(long, value_name = "HOST:PORT,..")]
    etcd: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let args = <Args as clap::Parser>::parse();
    if args.files == 0 || args.threads.contains(&0) {
        bail!("--files and --threads must be positive");
    }
    Ok(args)
}

/// A private tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn new(path: PathBuf) -> anyhow::Result<Tmpfs> {
        fs::create_dir_all(&path)?;
        mount("mdtest", &path, "tmpfs", MountFlags::empty(), c"mode=0755")
            .with_context(|| format!("mounting tmpfs at {}", path.display()))?;
        Ok(Tmpfs { path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = unmount(&self.path, UnmountFlags::DETACH);
    }
}

/// A running xfused and its mount; stopped with SIGTERM on drop.
struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Daemon {
    fn start(args: &[String], mnt: &Path, log: &Path) -> anyhow::Result<Daemon> {
        let bin = xfused_binary()?;
        let log_file = File::create(log)?;
        let child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut daemon = Daemon {
            child,
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if kmod_shim::mountinfo::fs_type_at(mnt)?.as_deref() == Some("fuse.xfused") {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("xfused {args:?} exited with {status}: see {}", log.display());
            }
            if Instant::now() > deadline {
                bail!("no mount at {} after 10 s: see {}", mnt.display(), log.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = Pid::from_child(&self.child);
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = kill_process(pid, Signal::KILL);
        let _ = self.child.wait();
        let _ = unmount(&self.mnt, UnmountFlags::DETACH);
    }
}

fn xfused_binary() -> anyhow::Result<PathBuf> {
    let bin = benches::target_dir().join("release/xfused");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p xfused` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `op(thread, i)` for `i` in `0..per_thread` on `threads` threads
/// released together; returns ops/s over all of them.
fn phase(threads: usize, per_thread: usize, op: impl Fn(usize, usize) + Send + Sync + 'static) -> f64 {
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_thread {
                    op(t, i);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("a benchmark thread panicked");
    }
    (threads * per_thread) as f64 / start.elapsed().as_secs_f64()
}

/// All phases in `root` with `threads` threads; ops/s per phase.
fn workload(root: &Path, threads: usize, files: usize) -> anyhow::Result<Vec<f64>> {
    let per_thread = files / threads;
    let run = root.join(format!("run.{threads}"));
    for t in 0..threads {
        for d in 0..TREE_DIRS {
            fs::create_dir_all(run.join(format!("t{t}/d{d}")))?;
        }
    }
    let file = {
        let run = run.clone();
        Arc::new(move |t: usize, i: usize| run.join(format!("t{t}/d{}/file.{i}", i % TREE_DIRS)))
    };
    let dir = {
        let run = run.clone();
        Arc::new(move |t: usize, i: usize| run.join(format!("t{t}/d{}/dir.{i}", i % TREE_DIRS)))
    };
    let mut rates = Vec::new();
    let f = file.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        File::create(f(t, i)).expect("create");
    }));
    let f = file.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        fs::metadata(f(t, i)).expect("stat");
    }));
    let f = file.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        drop(File::open(f(t, i)).expect("open"));
    }));
    let f = file.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        fs::remove_file(f(t, i)).expect("unlink");
    }));
    let d = dir.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        fs::create_dir(d(t, i)).expect("mkdir");
    }));
    let d = dir.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        fs::metadata(d(t, i)).expect("stat dir");
    }));
    let d = dir.clone();
    rates.push(phase(threads, per_thread, move |t, i| {
        fs::remove_dir(d(t, i)).expect("rmdir");
    }));
    fs::remove_dir_all(&run)?;
    Ok(rates)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let scratch = tempfile_dir()?;
    let mut columns: Vec<(String, Vec<Vec<f64>>)> = Vec::new();

    // native tmpfs
    {
        let tmpfs = Tmpfs::new(scratch.join("native"))?;
        let rates = args
            .threads
            .iter()
            .map(|t| workload(&tmpfs.path, *t, args.files))
            .collect::<anyhow::Result<Vec<_>>>()?;
        columns.push(("native tmpfs".into(), rates));
    }
    // xfused passthrough over tmpfs
    {
        let tmpfs = Tmpfs::new(scratch.join("pt-src"))?;
        let mnt = scratch.join("pt-mnt");
        fs::create_dir_all(&mnt)?;
        let mut daemon_args: Vec<String> =
            vec!["passthrough".into(), "--transport".into(), args.transport.clone()];
        daemon_args.extend(timeouts(args.timeout_ms));
        daemon_args.extend([tmpfs.path.display().to_string(), mnt.display().to_string()]);
        let daemon = Daemon::start(&daemon_args, &mnt, &scratch.join("passthrough.log"))?;
        let rates = args
            .threads
            .iter()
            .map(|t| workload(&mnt, *t, args.files))
            .collect::<anyhow::Result<Vec<_>>>()?;
        drop(daemon);
        columns.push((format!("xfused passthrough ({})", args.transport), rates));
    }
    // xfused mount, embedded engine
    {
        let tmpfs = Tmpfs::new(scratch.join("meta-data"))?;
        let data = match &args.data_dir {
            Some(dir) => {
                let d = dir.join(format!("mdtest-{}", std::process::id()));
                fs::create_dir_all(&d)?;
                d
            }
            None => tmpfs.path.clone(),
        };
        let mnt = scratch.join("meta-mnt");
        fs::create_dir_all(&mnt)?;
        let mut daemon_args: Vec<String> = vec!["mount".into(), "--transport".into(), args.transport.clone()];
        daemon_args.extend(timeouts(args.timeout_ms));
        daemon_args.extend([
            "--data".into(),
            data.display().to_string(),
            mnt.display().to_string(),
        ]);
        let daemon = Daemon::start(&daemon_args, &mnt, &scratch.join("mount.log"))?;
        let rates = args
            .threads
            .iter()
            .map(|t| workload(&mnt, *t, args.files))
            .collect::<anyhow::Result<Vec<_>>>()?;
        drop(daemon);
        if args.data_dir.is_some() {
            fs::remove_dir_all(&data)?;
        }
        let place = if args.data_dir.is_some() {
            "data on disk"
        } else {
            "data on tmpfs"
        };
        columns.push((
            format!("xfused mount, embedded ({}, {place})", args.transport),
            rates,
        ));
    }
    // xfused mount through an `xfused meta` service (embedded store on tmpfs)
    if args.service_port.is_some() {
        let port = args.service_port.unwrap_or_default();
        let tmpfs = Tmpfs::new(scratch.join("svc-data"))?;
        let addr = format!("127.0.0.1:{port}");
        let service_args: Vec<String> = vec![
            "meta".into(),
            "--engine".into(),
            format!("embedded:{}", tmpfs.path.join("meta").display()),
            "--listen".into(),
            addr.clone(),
        ];
        let service = Service::start(&service_args, &addr, &scratch.join("service.log"))?;
        let rates = meta_mount_rates(&args, &scratch, "svc", &format!("tcp://{addr}"), &tmpfs.path)?;
        drop(service);
        columns.push((
            format!("xfused mount via xfused meta ({})", args.transport),
            rates,
        ));
    }
    // xfused mount on an etcd cluster
    if let Some(endpoints) = &args.etcd {
        let tmpfs = Tmpfs::new(scratch.join("etcd-data"))?;
        let rates = meta_mount_rates(
            &args,
            &scratch,
            "etcd",
            &format!("etcd://{endpoints}"),
            &tmpfs.path,
        )?;
        columns.push((format!("xfused mount, etcd ({})", args.transport), rates));
    }
    let _ = fs::remove_dir_all(&scratch);

    println!(
        "{} files and {} directories per run, {} tree directories per thread; xfused cache timeouts {} ms; \
         ops/s (higher is better); last column: xfused mount / xfused passthrough",
        args.files, args.files, TREE_DIRS, args.timeout_ms
    );
    println!();
    print!("| phase | threads |");
    for (name, _) in &columns {
        print!(" {name} |");
    }
    println!(" mount/passthrough |");
    print!("|---|---:|");
    for _ in 0..=columns.len() {
        print!("---:|");
    }
    println!();
    for (p, phase_name) in PHASES.iter().enumerate() {
        for (ti, threads) in args.threads.iter().enumerate() {
            print!("| {phase_name} | {threads} |");
            for (_, rates) in &columns {
                print!(" {:.0} |", rates[ti][p]);
            }
            let ratio = columns[2].1[ti][p] / columns[1].1[ti][p];
            println!(" {ratio:.2}x |");
        }
    }
    Ok(())
}

/// Runs the workload on `xfused mount --meta URL --data DATA`.
fn meta_mount_rates(
    args: &Args,
    scratch: &Path,
    tag: &str,
    url: &str,
    data: &Path,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mnt = scratch.join(format!("{tag}-mnt"));
    fs::create_dir_all(&mnt)?;
    let mut daemon_args: Vec<String> = vec!["mount".into(), "--transport".into(), args.transport.clone()];
    daemon_args.extend(timeouts(args.timeout_ms));
    daemon_args.extend([
        "--meta".into(),
        url.to_string(),
        "--data".into(),
        data.display().to_string(),
        mnt.display().to_string(),
    ]);
    let daemon = Daemon::start(&daemon_args, &mnt, &scratch.join(format!("{tag}.log")))?;
    // Each run gets its own directory, so a namespace shared with earlier
    // runs (etcd) does not collide.
    let root = mnt.join(format!("mdtest.{}", std::process::id()));
    fs::create_dir_all(&root)?;
    let rates = args
        .threads
        .iter()
        .map(|t| workload(&root, *t, args.files))
        .collect::<anyhow::Result<Vec<_>>>()?;
    fs::remove_dir(&root)?;
    drop(daemon);
    Ok(rates)
}

/// A running `xfused meta`; killed on drop.
struct Service {
    child: Child,
}

impl Service {
    fn start(args: &[String], addr: &str, log: &Path) -> anyhow::Result<Service> {
        let bin = xfused_binary()?;
        let log_file = File::create(log)?;
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("xfused meta exited with {status}: see {}", log.display());
            }
            if Instant::now() > deadline {
                let _ = kill_process(Pid::from_child(&child), Signal::KILL);
                let _ = child.wait();
                bail!(
                    "xfused meta not listening on {addr} after 10 s: see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Service { child })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let _ = self.child.wait();
    }
}

/// The cache-timeout flags of both xfused subcommands.
fn timeouts(ms: u64) -> Vec<String> {
    ["--attr-timeout-ms", "--entry-timeout-ms", "--negative-timeout-ms"]
        .iter()
        .flat_map(|flag| [flag.to_string(), ms.to_string()])
        .collect()
}

/// A fresh scratch directory under /tmp (the tmpfs mounts go inside it).
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xfuse-mdtest.{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
