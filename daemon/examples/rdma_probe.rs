//! rdma_probe: RDMA READ and WRITE through the service layer's `Fabric`
//! and `QueuePair` traits on real devices (feature `rdma`).
//!
//! ```text
//! rdma_probe [DEV_A] [DEV_B] [THREADS]      (default: rxe0 rxe0 4)
//! ```
//!
//! Opens both devices, makes a queue pair on each and connects them; then,
//! from A's queue pair, with every byte checked:
//!
//! 1. one RDMA WRITE and one RDMA READ of 1 MiB;
//! 2. THREADS threads, each doing 200 RDMA WRITEs and READs (alternating)
//!    of 64 KiB to 1 MiB at random offsets; then the same threads moving
//!    1 MiB at a time unchecked, for bandwidth;
//! 3. the bytes counted by `moved()` against what the threads moved;
//! 4. the error paths: a READ with a wrong rkey fails (and does not hang)
//!    and breaks the queue pair, after which a call fails at once; a WRITE
//!    to a queue pair that does not exist overstays a short deadline:
//!    `TimedOut`, broken.
//!
//! The last line is `rdma_probe: ok` (exit 0) or `rdma_probe: FAILED
//! <why>` (exit 1). scripts/rdma-guest/run-probe.sh runs it on soft-RoCE
//! in a QEMU guest.

use std::io;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use xfused::rpc::rdma::verbs::{self, VerbsFabric};
use xfused::rpc::rdma::{Fabric, Moved, QueuePair, DEFAULT_WINDOW};

const MIB: usize = 1 << 20;
const MIN_OP: usize = 64 << 10;
const OPS_PER_THREAD: usize = 200;
const BW_OPS_PER_THREAD: usize = 50;
/// Generous: QEMU without KVM runs soft-RoCE at tens of MB/s.
const OP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the devices' GIDs may take to appear after `rdma link add`.
const OPEN_DEADLINE: Duration = Duration::from_secs(20);

fn say(line: impl std::fmt::Display) {
    println!("rdma_probe: {line}");
}

fn soon() -> Instant {
    Instant::now() + OP_DEADLINE
}

/// A small deterministic generator (xorshift64*), for sizes, offsets and
/// data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len.next_multiple_of(8)];
        for word in out.chunks_exact_mut(8) {
            word.copy_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Opens `name`, waiting (up to [`OPEN_DEADLINE`]) for it, its port and
/// its RoCE v2 GID to come up.
fn open(name: &str) -> anyhow::Result<VerbsFabric> {
    let start = Instant::now();
    let deadline = start + OPEN_DEADLINE;
    loop {
        match VerbsFabric::open(Some(name)) {
            Ok(fabric) => return Ok(fabric),
            // Not there yet, its port not up yet, or no GID yet.
            Err(e)
                if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NetworkDown)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "opening {name} (after {:.1?}; devices: {:?})",
                        start.elapsed(),
                        verbs::available()
                    )
                })
            }
        }
    }
}

fn ipv4_of(gid: [u8; 16]) -> String {
    std::net::Ipv6Addr::from(gid)
        .to_ipv4_mapped()
        .map_or_else(|| std::net::Ipv6Addr::from(gid).to_string(), |a| a.to_string())
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-9) / 1e6
}

fn check(what: &str, got: &[u8], want: &[u8]) -> anyhow::Result<()> {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        bail!(
            "{what}: data differs from byte {first} of {} (got {:#04x}, want {:#04x})",
            want.len(),
            got[first],
            want[first]
        );
    }
    Ok(())
}

/// 1. One WRITE and one READ of 1 MiB.
fn single(fa: &VerbsFabric, fb: &VerbsFabric, qa: &dyn QueuePair) -> anyhow::Result<Moved> {
    let mine = fa.register(MIB, false)?;
    let theirs = fb.register(MIB, true)?;
    ensure!(
        mine.remote(0, MIB).is_none(),
        "a local-only region offers remote access"
    );
    let remote = theirs
        .remote(0, MIB)
        .context("remote region has no remote span")?;
    let mut rng = Rng::new(1);
    let mut got = vec![0u8; MIB];

    let data = rng.bytes(MIB);
    mine.write(0, &data);
    let t = Instant::now();
    qa.write(mine.as_ref(), 0, remote, soon())
        .context("RDMA WRITE of 1 MiB")?;
    let write_took = t.elapsed();
    theirs.read(0, &mut got);
    check("RDMA WRITE of 1 MiB", &got, &data)?;

    let data = rng.bytes(MIB);
    theirs.write(0, &data);
    let t = Instant::now();
    qa.read(mine.as_ref(), 0, remote, soon())
        .context("RDMA READ of 1 MiB")?;
    let read_took = t.elapsed();
    mine.read(0, &mut got);
    check("RDMA READ of 1 MiB", &got, &data)?;
    say(format_args!(
        "1 MiB WRITE {:.1} ms, READ {:.1} ms, both verified",
        write_took.as_secs_f64() * 1e3,
        read_took.as_secs_f64() * 1e3
    ));
    Ok(Moved {
        read: MIB as u64,
        written: MIB as u64,
    })
}

/// One thread of phase 2: `ops` operations of 64 KiB to 1 MiB, each
/// checked; what it moved.
fn worker(
    seed: u64,
    ops: usize,
    fa: &VerbsFabric,
    fb: &VerbsFabric,
    qa: &dyn QueuePair,
) -> anyhow::Result<Moved> {
    let mine = fa.register(MIB, false)?;
    let theirs = fb.register(MIB, true)?;
    let mut rng = Rng::new(seed);
    // Each operation's data is a window of this, at a random start.
    let noise = rng.bytes(2 * MIB);
    let zeros = vec![0u8; MIB];
    let mut got = vec![0u8; MIB];
    let mut moved = Moved::default();
    for i in 0..ops {
        let len = MIN_OP + rng.below(MIB - MIN_OP + 1);
        let (local_at, remote_at) = (rng.below(MIB - len + 1), rng.below(MIB - len + 1));
        let start = rng.below(MIB);
        let data = &noise[start..start + len];
        let remote = theirs.remote(remote_at, len).context("remote span")?;
        let got = &mut got[..len];
        if i % 2 == 0 {
            mine.write(local_at, data);
            theirs.write(remote_at, &zeros[..len]);
            qa.write(mine.as_ref(), local_at, remote, soon())
                .with_context(|| format!("thread {seed} op {i}: RDMA WRITE of {len} bytes"))?;
            theirs.read(remote_at, got);
            check(
                &format!("thread {seed} op {i}: RDMA WRITE of {len} bytes"),
                got,
                data,
            )?;
            moved.written += len as u64;
        } else {
            theirs.write(remote_at, data);
            mine.write(local_at, &zeros[..len]);
            qa.read(mine.as_ref(), local_at, remote, soon())
                .with_context(|| format!("thread {seed} op {i}: RDMA READ of {len} bytes"))?;
            mine.read(local_at, got);
            check(
                &format!("thread {seed} op {i}: RDMA READ of {len} bytes"),
                got,
                data,
            )?;
            moved.read += len as u64;
        }
    }
    Ok(moved)
}

/// Runs `job` on `threads` threads at once; the sum of what they moved,
/// and how long they took.
fn on_threads(
    threads: usize,
    job: impl Fn(u64) -> anyhow::Result<Moved> + Sync,
) -> anyhow::Result<(Moved, Duration)> {
    let job = &job;
    let t = Instant::now();
    let results: Vec<anyhow::Result<Moved>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| s.spawn(move || job(i as u64 + 100)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
            })
            .collect()
    });
    let took = t.elapsed();
    let mut sum = Moved::default();
    for r in results {
        let m = r?;
        sum.read += m.read;
        sum.written += m.written;
    }
    Ok((sum, took))
}

/// Phase 2's bandwidth part: 1 MiB operations, unchecked, all WRITEs
/// (`write`) or all READs.
fn bandwidth(
    threads: usize,
    write: bool,
    fa: &VerbsFabric,
    fb: &VerbsFabric,
    qa: &dyn QueuePair,
) -> anyhow::Result<(Moved, Duration)> {
    on_threads(threads, |_| {
        let mine = fa.register(MIB, false)?;
        let theirs = fb.register(MIB, true)?;
        let remote = theirs.remote(0, MIB).context("remote span")?;
        let mut moved = Moved::default();
        for _ in 0..BW_OPS_PER_THREAD {
            if write {
                qa.write(mine.as_ref(), 0, remote, soon())
                    .context("bandwidth RDMA WRITE")?;
                moved.written += MIB as u64;
            } else {
                qa.read(mine.as_ref(), 0, remote, soon())
                    .context("bandwidth RDMA READ")?;
                moved.read += MIB as u64;
            }
        }
        Ok(moved)
    })
}

/// 4a. A READ with a wrong rkey fails, and breaks the queue pair.
fn wrong_key(fa: &VerbsFabric, fb: &VerbsFabric, qa: &dyn QueuePair) -> anyhow::Result<()> {
    let mine = fa.register(4096, false)?;
    let theirs = fb.register(4096, true)?;
    let good = theirs.remote(0, 4096).context("remote span")?;
    let mut bad = good;
    bad.rkey ^= 0x00ff_ff00;
    let t = Instant::now();
    let result = qa.read(mine.as_ref(), 0, bad, soon());
    let took = t.elapsed();
    let Err(e) = result else {
        bail!("a READ with a wrong rkey succeeded");
    };
    ensure!(
        e.kind() != io::ErrorKind::TimedOut,
        "a READ with a wrong rkey hung until its deadline: {e}"
    );
    ensure!(qa.is_broken(), "a failed READ left the queue pair unbroken");
    say(format_args!(
        "wrong rkey: READ failed in {:.1} ms ({:?}: {e}); queue pair broken",
        took.as_secs_f64() * 1e3,
        e.kind()
    ));
    let t = Instant::now();
    let later = qa.read(mine.as_ref(), 0, good, soon());
    let took = t.elapsed();
    let Err(e) = later else {
        bail!("a READ on a broken queue pair succeeded");
    };
    ensure!(
        took < Duration::from_secs(1),
        "a call on a broken queue pair took {took:?}"
    );
    say(format_args!(
        "after it: READ with the right key fails in {:.3} ms ({e})",
        took.as_secs_f64() * 1e3
    ));
    Ok(())
}

/// 4b. A WRITE to a queue pair that does not exist never completes in
/// time: `TimedOut`, broken; dropping it with the request in flight is
/// safe.
fn deadline(fa: &VerbsFabric, fb: &VerbsFabric) -> anyhow::Result<()> {
    let qc = fa.queue_pair(4)?;
    let nobody = fb.queue_pair(4)?;
    let mut peer = nobody.endpoint();
    // Not a queue pair of fb's (numbers are 24 bits, and small ones are
    // taken first).
    peer.qpn = 0x00ff_fff0;
    qc.connect(&peer)?;
    let mine = fa.register(4096, false)?;
    let theirs = fb.register(4096, true)?;
    let remote = theirs.remote(0, 4096).context("remote span")?;
    let t = Instant::now();
    let result = qc.write(
        mine.as_ref(),
        0,
        remote,
        Instant::now() + Duration::from_millis(20),
    );
    let took = t.elapsed();
    let Err(e) = result else {
        bail!("a WRITE to a queue pair that does not exist succeeded");
    };
    ensure!(
        e.kind() == io::ErrorKind::TimedOut,
        "expected TimedOut, got {:?}: {e}",
        e.kind()
    );
    ensure!(qc.is_broken(), "a timed-out WRITE left the queue pair unbroken");
    say(format_args!(
        "deadline: WRITE to no one timed out after {:.1} ms; queue pair broken",
        took.as_secs_f64() * 1e3
    ));
    // The queue pair, then the regions, go with the request possibly still
    // in flight.
    drop(qc);
    drop(mine);
    Ok(())
}

fn probe(dev_a: &str, dev_b: &str, threads: usize) -> anyhow::Result<()> {
    say(format_args!("devices: {:?}", verbs::available()));
    let fa = open(dev_a)?;
    let fb = open(dev_b)?;
    let qa = fa.queue_pair(DEFAULT_WINDOW)?;
    let qb = fb.queue_pair(DEFAULT_WINDOW)?;
    qa.connect(&qb.endpoint()).context("connecting A to B")?;
    qb.connect(&qa.endpoint()).context("connecting B to A")?;
    say(format_args!(
        "{dev_a} ({}, qpn {}) <-> {dev_b} ({}, qpn {}), window {DEFAULT_WINDOW}",
        ipv4_of(fa.gid()),
        qa.endpoint().qpn,
        ipv4_of(fb.gid()),
        qb.endpoint().qpn
    ));

    let mut expected = single(&fa, &fb, qa.as_ref())?;

    let (moved, took) = on_threads(threads, |seed| {
        worker(seed, OPS_PER_THREAD, &fa, &fb, qa.as_ref())
    })?;
    let bytes = moved.read + moved.written;
    say(format_args!(
        "{threads} threads x {OPS_PER_THREAD} ops (64 KiB-1 MiB, WRITE/READ alternating, every byte checked): \
         {:.1} MiB in {:.2} s = {:.1} MB/s",
        bytes as f64 / MIB as f64,
        took.as_secs_f64(),
        mb_per_s(bytes, took)
    ));
    expected.read += moved.read;
    expected.written += moved.written;

    let (w, took) = bandwidth(threads, true, &fa, &fb, qa.as_ref())?;
    say(format_args!(
        "bandwidth WRITE: {threads} threads x {BW_OPS_PER_THREAD} x 1 MiB in {:.2} s = {:.1} MB/s",
        took.as_secs_f64(),
        mb_per_s(w.written, took)
    ));
    let (r, took) = bandwidth(threads, false, &fa, &fb, qa.as_ref())?;
    say(format_args!(
        "bandwidth READ: {threads} threads x {BW_OPS_PER_THREAD} x 1 MiB in {:.2} s = {:.1} MB/s",
        took.as_secs_f64(),
        mb_per_s(r.read, took)
    ));
    expected.read += r.read;
    expected.written += w.written;

    let moved = qa.moved();
    say(format_args!(
        "moved: read {} B, written {} B (expected {} / {})",
        moved.read, moved.written, expected.read, expected.written
    ));
    ensure!(
        moved == expected,
        "moved() {moved:?} is not what was moved, {expected:?}"
    );
    ensure!(!qa.is_broken(), "queue pair broken after successful work");

    wrong_key(&fa, &fb, qa.as_ref())?;
    deadline(&fa, &fb)?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dev_a = args.first().map_or("rxe0", String::as_str);
    let dev_b = args.get(1).map_or(dev_a, String::as_str);
    let threads = match args.get(2).map(|t| t.parse::<usize>()) {
        None => 4,
        Some(Ok(n)) if (1..=64).contains(&n) => n,
        Some(_) => {
            say("FAILED usage: rdma_probe [DEV_A] [DEV_B] [THREADS 1-64]");
            std::process::exit(2);
        }
    };
    match probe(dev_a, dev_b, threads) {
        Ok(()) => say("ok"),
        Err(e) => {
            say(format_args!("FAILED {e:#}"));
            std::process::exit(1);
        }
    }
}
