//! The same fuse-backend-rs `PassthroughFs` over a fresh tmpfs, reached
//! natively (`native`, the physical limit), through fuse-backend-rs's own
//! server on one /dev/fuse queue (`stock`), and through xfused's transports
//! (`xfuse-dev`, `xfuse-uring`, `xfuse-uring-pt`, and `xfuse-uring-dp` with
//! `--permissions daemon`; those xfused refuses are
//! skipped with a note). Each workload runs with 1 thread and with one
//! thread per CPU: groups `{workload}_{threads}t`, functions per
//! configuration, e.g. `stat_cached_2t/stock`.
//!
//! With several threads, criterion's iterations are split evenly across
//! them, started together; the time reported for the batch is the longest
//! thread's, so time per operation is the inverse of aggregate throughput.
//!
//! Every bench of a FUSE configuration gets a fresh tmpfs and daemon; the
//! daemon's CPU time per operation and RSS go to the side file for the
//! report (`cargo run -p benches --bin report`).
//!
//! Short by default (warm-up 1 s, measurement 3 s, 20 samples); criterion's
//! flags override, and filters work as usual:
//! `cargo bench -p benches -- stat_cached`.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benches::{run_split, Binaries, Failures, Meter, Mount, Suite, Worker};
use criterion::{Criterion, Throughput};
use rustix::fs::{Mode, OFlags};

/// Attribute and entry timeouts of every FUSE configuration (xfused's default).
const TTL: Duration = Duration::from_secs(1);
/// `stat_uncached` revisits a file no sooner than this: TTL plus a margin
/// for a cycle that runs faster than the previous one.
const REVISIT_AFTER: Duration = Duration::from_millis(1500);
const _: () = assert!(REVISIT_AFTER.as_millis() > TTL.as_millis());
/// Files `stat_uncached` cycles over (split between threads).
const POOL_FILES: usize = 50_000;
/// Size of the files read and written.
const FILE_BYTES: u64 = 64 << 20;
/// Size of an O_DIRECT block.
const BLOCK_BYTES: usize = 4096;
/// Entries of the `readdir_10k` directory.
const DIR_ENTRIES: usize = 10_000;

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .without_plots()
        .configure_from_args();
    let suite = Suite::new(Binaries::find(Some(PathBuf::from(env!(
        "CARGO_BIN_EXE_stock-fuse"
    )))));
    let threads = suite.thread_counts();
    for &t in &threads {
        stat_cached(&mut criterion, &suite, t);
    }
    for &t in &threads {
        stat_uncached(&mut criterion, &suite, t);
    }
    for &t in &threads {
        open_close(&mut criterion, &suite, t);
    }
    for &t in &threads {
        create_unlink(&mut criterion, &suite, t);
    }
    for &t in &threads {
        direct_4k(&mut criterion, &suite, t, Direction::Read);
    }
    for &t in &threads {
        direct_4k(&mut criterion, &suite, t, Direction::Write);
    }
    for &t in &threads {
        seqread(&mut criterion, &suite, t, 128 << 10);
    }
    for &t in &threads {
        seqread(&mut criterion, &suite, t, 1 << 20);
    }
    for &t in &threads {
        readdir(&mut criterion, &suite, t);
    }
    criterion.final_summary();
}

/// A configuration's mount with its workers and meter, kept across
/// criterion's calls of one bench. Workers drop first (they hold files
/// in the mount), then the mount.
struct Prepared<W> {
    workers: Vec<W>,
    meter: Meter,
    failures: Failures,
    notes: Vec<String>,
    mount: Mount,
}

/// Benches `workload` with `threads` threads on every configuration.
///
/// `populate` fills the fresh tmpfs natively before the daemon starts;
/// `worker(mount, i)` prepares thread `i` (untimed) and may return notes on
/// what it really measures. Both run only if the filter selects the bench.
/// Failed operations do not stop the suite: the bench is reported invalid.
fn bench<W: Worker>(
    c: &mut Criterion,
    suite: &Suite,
    workload: &str,
    threads: usize,
    throughput: Option<Throughput>,
    populate: impl Fn(&Path) -> io::Result<()>,
    worker: impl Fn(&Mount, usize) -> (W, Vec<String>),
) {
    let mut group = c.benchmark_group(benches::group_name(workload, threads));
    if let Some(throughput) = throughput {
        group.throughput(throughput);
    }
    for &config in suite.configs() {
        let mut prepared: Option<Prepared<W>> = None;
        group.bench_function(config.name(), |b| {
            let Prepared {
                workers,
                meter,
                failures,
                ..
            } = prepared.get_or_insert_with(|| {
                let mount = suite.mount(config, &populate);
                let mut notes = Vec::new();
                let workers = (0..threads)
                    .map(|i| {
                        let (w, n) = worker(&mount, i);
                        notes.extend(n);
                        w
                    })
                    .collect();
                notes.dedup();
                Prepared {
                    workers,
                    meter: Meter::new(mount.daemon_pid()),
                    failures: Failures::default(),
                    notes,
                    mount,
                }
            });
            b.iter_custom(|iters| meter.measure(iters, || run_split(workers, iters, failures)));
        });
        if let Some(Prepared {
            workers,
            meter,
            failures,
            notes,
            mount,
        }) = prepared.take()
        {
            drop(workers);
            if failures.count() > 0 {
                println!(
                    "xfuse-bench: INVALID {}/{config}: {} of {} operations failed; first: {}",
                    benches::group_name(workload, threads),
                    failures.count(),
                    meter.ops().max(failures.count()),
                    failures.first().unwrap_or_default()
                );
            }
            suite.record(workload, threads, &mount, &meter, &failures, notes);
        }
    }
    group.finish();
}

/// The message of a failed operation.
fn failed(what: &str, path: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Creates `path` with `bytes` bytes of a non-zero pattern.
fn write_file(path: &Path, bytes: u64) -> io::Result<()> {
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect();
    let mut file = File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Creates `count` empty files `f-NNNNN` in a new directory `dir`.
fn create_files(dir: &Path, count: usize) -> io::Result<()> {
    std::fs::create_dir(dir)?;
    for i in 0..count {
        File::create(dir.join(format!("f-{i:05}")))?;
    }
    Ok(())
}

/// stat(2) of a path.
struct Stat {
    path: PathBuf,
}

impl Worker for Stat {
    fn op(&mut self) -> Result<(), String> {
        black_box(std::fs::metadata(&self.path).map_err(|e| failed("stat", &self.path, e))?);
        Ok(())
    }
}

/// `stat_cached`: stat of the same file again and again, from every thread.
///
/// Through FUSE the kernel answers from its dentry and attribute caches;
/// the daemon sees about one LOOKUP/GETATTR per second (1 s TTLs). This
/// measures the kernel's FUSE fast path, not the transport: expect every
/// FUSE configuration close to each other, and the daemon nearly idle.
fn stat_cached(c: &mut Criterion, suite: &Suite, threads: usize) {
    bench(
        c,
        suite,
        "stat_cached",
        threads,
        None,
        |src| write_file(&src.join("cached-file"), 4096),
        |mount, _| {
            (
                Stat {
                    path: mount.root().join("cached-file"),
                },
                vec![],
            )
        },
    );
}

/// stat(2) over a pool of files, waiting (untimed) at the end of a cycle
/// until the cycle's first file may be visited again.
struct StatPool {
    paths: Vec<PathBuf>,
    cursor: usize,
    revisit_after: Option<Duration>,
    cycle_start: Option<Instant>,
}

impl Worker for StatPool {
    fn op(&mut self) -> Result<(), String> {
        let path = &self.paths[self.cursor];
        self.cursor = (self.cursor + 1) % self.paths.len();
        black_box(std::fs::metadata(path).map_err(|e| failed("stat", path, e))?);
        Ok(())
    }

    fn pause(&mut self) {
        let Some(revisit_after) = self.revisit_after else {
            return;
        };
        if self.cursor != 0 {
            return;
        }
        let now = Instant::now();
        if let Some(since) = self.cycle_start.map(|start| now - start) {
            if since < revisit_after {
                std::thread::sleep(revisit_after - since);
            }
        }
        self.cycle_start = Some(Instant::now());
    }
}

/// `stat_uncached`: stat of a file whose cached entry has expired, so that
/// every stat costs one FUSE round trip.
///
/// 50,000 files in one directory; each thread cycles over its own share
/// and, through FUSE, never stats a file again within 1.5 s of its
/// previous stat (the wait is not timed). Entry and attribute TTLs are 1 s,
/// so the kernel's dentry has always expired: it revalidates it with one
/// LOOKUP to the daemon, whose reply also refreshes the attributes (no
/// GETATTR follows). Every file is looked up once before measuring
/// (untimed): this measures revalidating inodes the kernel and the daemon
/// already know, not first lookups that create them. No cache is dropped
/// (`drop_caches` is machine-wide).
///
/// `native`: tmpfs has no TTL, every stat is a dcache hit (over a larger
/// working set than `stat_cached`).
fn stat_uncached(c: &mut Criterion, suite: &Suite, threads: usize) {
    bench(
        c,
        suite,
        "stat_uncached",
        threads,
        None,
        |src| create_files(&src.join("pool"), POOL_FILES),
        |mount, i| {
            let paths: Vec<PathBuf> = (i..POOL_FILES)
                .step_by(threads)
                .map(|f| mount.root().join(format!("pool/f-{f:05}")))
                .collect();
            let fuse = mount.config().is_fuse();
            let primed = Instant::now();
            if fuse {
                for path in &paths {
                    std::fs::metadata(path).expect("priming stat");
                }
            }
            let worker = StatPool {
                paths,
                cursor: 0,
                revisit_after: fuse.then_some(REVISIT_AFTER),
                cycle_start: fuse.then_some(primed),
            };
            let notes = if fuse {
                vec![]
            } else {
                vec!["tmpfs has no TTL: every stat is a dcache hit".to_string()]
            };
            (worker, notes)
        },
    );
}

/// open(2) + close(2) of an existing file.
struct OpenClose {
    path: PathBuf,
}

impl Worker for OpenClose {
    fn op(&mut self) -> Result<(), String> {
        drop(black_box(
            File::open(&self.path).map_err(|e| failed("open", &self.path, e))?,
        ));
        Ok(())
    }
}

/// `open_close`: open (read-only) and close of one existing 4 KiB file,
/// from every thread. Through FUSE: OPEN, then FLUSH and RELEASE (the
/// kernel sends RELEASE without waiting for it; the daemon's CPU time per
/// operation counts it). xfused answers OPEN with FOPEN_NOFLUSH by default
/// (no FLUSH on close), which stock cannot: part of the difference is that
/// policy, not the transport (`XFUSED_ARGS=--flush-on-close` removes it).
fn open_close(c: &mut Criterion, suite: &Suite, threads: usize) {
    bench(
        c,
        suite,
        "open_close",
        threads,
        None,
        |src| write_file(&src.join("existing"), 4096),
        |mount, _| {
            (
                OpenClose {
                    path: mount.root().join("existing"),
                },
                vec![],
            )
        },
    );
}

/// create + close + unlink of one name.
struct CreateUnlink {
    path: PathBuf,
}

impl Worker for CreateUnlink {
    fn op(&mut self) -> Result<(), String> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
            .map_err(|e| failed("create", &self.path, e))?;
        drop(black_box(file));
        std::fs::remove_file(&self.path).map_err(|e| failed("unlink", &self.path, e))
    }
}

/// `create_unlink`: create (O_CREAT|O_EXCL), close and unlink a new file,
/// each thread its own name in one shared directory. Through FUSE: LOOKUP
/// of the new name (unless a negative entry is cached), CREATE, FLUSH,
/// RELEASE, UNLINK. xfused by default caches negative lookups for 1 s and
/// skips FLUSH (FOPEN_NOFLUSH), stock does neither: part of the difference
/// is policy (`XFUSED_ARGS="--flush-on-close --negative-timeout-ms 0"`
/// removes it).
fn create_unlink(c: &mut Criterion, suite: &Suite, threads: usize) {
    bench(
        c,
        suite,
        "create_unlink",
        threads,
        None,
        |src| std::fs::create_dir(src.join("scratch")),
        |mount, i| {
            (
                CreateUnlink {
                    path: mount.root().join(format!("scratch/new-{i}")),
                },
                vec![],
            )
        },
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// A 4 KiB block aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Block([u8; BLOCK_BYTES]);

/// 4 KiB positioned reads or writes at random block offsets.
struct Direct {
    file: File,
    block: Box<Block>,
    rng: u64,
    blocks: u64,
    direction: Direction,
}

impl Direct {
    /// xorshift64*: enough to spread offsets, deterministic per thread.
    fn next_offset(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.blocks) * BLOCK_BYTES as u64
    }
}

impl Worker for Direct {
    fn op(&mut self) -> Result<(), String> {
        let offset = self.next_offset();
        match self.direction {
            Direction::Read => self.file.read_exact_at(&mut self.block.0, offset),
            Direction::Write => self.file.write_all_at(&self.block.0, offset),
        }
        .map_err(|e| format!("{:?} of 4 KiB at {offset}: {e}", self.direction))
    }
}

/// `randread_4k_direct` / `randwrite_4k_direct`: 4 KiB pread/pwrite with
/// O_DIRECT at random aligned offsets of one 64 MiB file (each thread its
/// own descriptor and offsets). Through FUSE, O_DIRECT bypasses the page
/// cache: each operation is one READ or WRITE to the daemon, which does
/// the same O_DIRECT pread/pwrite on tmpfs (`xfuse-uring-pt`: the kernel
/// does it on the tmpfs file itself, FUSE passthrough). Before each write the kernel
/// also asks for the file's `security.capability` xattr (GETXATTR, to
/// drop privileges on write; xattrs are on), so a FUSE write is two round
/// trips, even with passthrough (whose data itself bypasses the daemon).
///
/// `native`: tmpfs accepts O_DIRECT (Linux 6.6+) and serves it from its
/// page cache, which is where its data lives; should a kernel refuse it,
/// native falls back to buffered I/O and says so in a note.
fn direct_4k(c: &mut Criterion, suite: &Suite, threads: usize, direction: Direction) {
    let workload = match direction {
        Direction::Read => "randread_4k_direct",
        Direction::Write => "randwrite_4k_direct",
    };
    bench(
        c,
        suite,
        workload,
        threads,
        Some(Throughput::Bytes(BLOCK_BYTES as u64)),
        |src| write_file(&src.join("data"), FILE_BYTES),
        |mount, i| {
            let path = mount.root().join("data");
            let access = match direction {
                Direction::Read => OFlags::RDONLY,
                Direction::Write => OFlags::WRONLY,
            };
            let flags = access | OFlags::CLOEXEC;
            let mut notes = Vec::new();
            let fd = match rustix::fs::open(&path, flags | OFlags::DIRECT, Mode::empty()) {
                Ok(fd) => {
                    if !mount.config().is_fuse() {
                        notes.push("tmpfs accepts O_DIRECT but serves it from its page cache".to_string());
                    }
                    fd
                }
                Err(rustix::io::Errno::INVAL) if !mount.config().is_fuse() => {
                    notes.push("tmpfs refused O_DIRECT: buffered I/O".to_string());
                    rustix::fs::open(&path, flags, Mode::empty()).expect("open")
                }
                Err(e) => panic!("open {} with O_DIRECT: {e}", path.display()),
            };
            let worker = Direct {
                file: File::from(fd),
                block: Box::new(Block([0xa5; BLOCK_BYTES])),
                rng: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                blocks: FILE_BYTES / BLOCK_BYTES as u64,
                direction,
            };
            (worker, notes)
        },
    );
}

/// Streams one file with read(2) of `buf.len()` bytes, reopening it at EOF.
struct SeqRead {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    buf: Vec<u8>,
    drop_cache: bool,
}

impl Worker for SeqRead {
    fn op(&mut self) -> Result<(), String> {
        if self.offset >= FILE_BYTES {
            self.file = None;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = File::open(&self.path).map_err(|e| failed("open", &self.path, e))?;
                if self.drop_cache {
                    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
                        .map_err(|e| failed("fadvise DONTNEED", &self.path, e.into()))?;
                }
                self.offset = 0;
                self.file.insert(file)
            }
        };
        let read = file.read_exact(&mut self.buf);
        self.offset += self.buf.len() as u64;
        read.map_err(|e| {
            failed(
                &format!("read at {}", self.offset - self.buf.len() as u64),
                &self.path,
                e,
            )
        })
    }
}

/// `seqread_128k` / `seqread_1m`: read(2) of 128 KiB (1 MiB) streaming a
/// 64 MiB file from start to end, reopening it at EOF; each thread its own
/// file. Throughput counts the bytes read.
///
/// Buffered, so kernel readahead shapes the READ requests (their size is
/// capped by what the server negotiated). Through FUSE, cache policy
/// `auto` drops the page cache at every open (no FOPEN_KEEP_CACHE), and
/// each reopen also drops it with POSIX_FADV_DONTNEED: every pass's data
/// comes from the daemon. `native`: the tmpfs page cache is the file.
fn seqread(c: &mut Criterion, suite: &Suite, threads: usize, chunk_bytes: usize) {
    let workload = if chunk_bytes >= 1 << 20 {
        format!("seqread_{}m", chunk_bytes >> 20)
    } else {
        format!("seqread_{}k", chunk_bytes >> 10)
    };
    bench(
        c,
        suite,
        &workload,
        threads,
        Some(Throughput::Bytes(chunk_bytes as u64)),
        |src| (0..threads).try_for_each(|i| write_file(&src.join(format!("seq-{i}")), FILE_BYTES)),
        |mount, i| {
            let worker = SeqRead {
                path: mount.root().join(format!("seq-{i}")),
                file: None,
                offset: 0,
                buf: vec![0; chunk_bytes],
                drop_cache: mount.config().is_fuse(),
            };
            (worker, vec![])
        },
    );
}

/// Lists one directory to the end.
struct Readdir {
    dir: PathBuf,
}

impl Worker for Readdir {
    fn op(&mut self) -> Result<(), String> {
        let mut entries = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| failed("opendir", &self.dir, e))? {
            black_box(entry.map_err(|e| failed("readdir", &self.dir, e))?);
            entries += 1;
        }
        if entries != DIR_ENTRIES {
            return Err(format!(
                "listed {entries} entries of {}, not {DIR_ENTRIES}",
                self.dir.display()
            ));
        }
        Ok(())
    }
}

/// `readdir_10k`: open a directory of 10,000 empty files, read every entry
/// (std's `read_dir`, getdents64 underneath), close. Through FUSE:
/// OPENDIR, READDIR or READDIRPLUS (the kernel's choice: both servers offer
/// READDIRPLUS_AUTO, and READDIRPLUS makes the daemon look every entry up),
/// RELEASEDIR; the kernel does not cache directory contents here (no
/// FOPEN_CACHE_DIR under cache policy `auto`).
fn readdir(c: &mut Criterion, suite: &Suite, threads: usize) {
    bench(
        c,
        suite,
        "readdir_10k",
        threads,
        None,
        |src| create_files(&src.join("dir10k"), DIR_ENTRIES),
        |mount, _| {
            (
                Readdir {
                    dir: mount.root().join("dir10k"),
                },
                vec![],
            )
        },
    );
}
