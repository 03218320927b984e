//! `xfused passthrough --cache-policy adaptive` on a real mount: a repeated
//! stat workload stops reaching the daemon once its inodes are hot (counted
//! by our own BPF tracer, independent of the daemon's), while a fixed
//! timeout keeps sending them; and changes made through the mount are seen
//! at once through every other name, with long timeouts in the kernel.
//!
//! Needs root with BPF and kernel BTF, as the test command has (see
//! upcalls.rs).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::Mount;
use xfuse_ebpf::{connection_of, UpcallTracer};

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const FILES: usize = 200;
/// Short timeouts of the workload mounts, and the pause between rounds
/// (longer, so a fixed timeout has always expired).
const SHORT_MS: u64 = 150;
const PAUSE: Duration = Duration::from_millis(250);
const ROUNDS: usize = 8;
/// Upcalls a round may cost once the files' inodes hold long timeouts (the
/// root's own GETATTR may still expire).
const QUIET_ROUND_UPCALLS_MAX: u64 = 2;

fn upcalls(t: &UpcallTracer, conn: u32) -> u64 {
    t.opcode_stats(conn)
        .expect("reading OPCODES")
        .iter()
        .filter(|s| s.opcode == LOOKUP || s.opcode == GETATTR)
        .map(|s| s.sent)
        .sum()
}

/// A mount with short timeouts (`extra` adds flags) and FILES files, the
/// tracer and its connection.
struct Workload {
    tracer: UpcallTracer,
    mount: Mount,
    conn: u32,
    names: Vec<String>,
}

impl Workload {
    fn start(extra: &[&str]) -> Workload {
        let tracer = UpcallTracer::load().unwrap_or_else(|e| panic!("loading the BPF upcall counters: {e}"));
        let short = SHORT_MS.to_string();
        let mut args = vec!["--entry-timeout-ms", &short, "--attr-timeout-ms", &short];
        args.extend_from_slice(extra);
        let mount = Mount::start(&args);
        let conn = connection_of(mount.mnt()).expect("the mount's FUSE connection");
        let names: Vec<String> = (0..FILES).map(|i| format!("f{i:04}")).collect();
        for n in &names {
            fs::write(mount.src().join(n), b"x").unwrap();
        }
        Workload {
            tracer,
            mount,
            conn,
            names,
        }
    }

    /// LOOKUP+GETATTR upcalls of one round of `stat` over every file,
    /// made after a pause longer than the short timeouts. The pause is the
    /// behaviour under test (a short timeout has expired), not a wait for
    /// something to happen: a loaded machine only makes it longer.
    fn round(&self) -> u64 {
        sleep(PAUSE);
        let before = upcalls(&self.tracer, self.conn);
        for n in &self.names {
            fs::metadata(self.mount.mnt().join(n)).unwrap_or_else(|e| panic!("stat {n}: {e}"));
        }
        upcalls(&self.tracer, self.conn) - before
    }
}

#[test]
fn hot_inodes_stop_reaching_the_daemon_and_fixed_ones_do_not() {
    let fixed_mount = Workload::start(&["--cache-policy", "fixed"]);
    let fixed: Vec<u64> = (0..ROUNDS).map(|_| fixed_mount.round()).collect();
    drop(fixed_mount);
    eprintln!("LOOKUP+GETATTR upcalls per round of {FILES} stats, fixed: {fixed:?}");
    // Fixed: every round finds every timeout expired.
    for (i, n) in fixed.iter().enumerate() {
        assert!(*n >= FILES as u64, "fixed, round {i}: {n} upcalls ({fixed:?})");
    }

    // Adaptive: round 1 is cold, round 2 makes the inodes hot (2 upcalls),
    // the policy (every 50 ms) promotes them, the next round gets the long
    // timeouts; then the kernel answers. How many rounds that takes depends
    // on when the policy's thread runs: wait for a quiet round, bounded.
    let adaptive_mount = Workload::start(&["--cache-policy", "adaptive", "--cache-refresh-ms", "50"]);
    let mut adaptive = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while adaptive.last().is_none_or(|&n| n > QUIET_ROUND_UPCALLS_MAX) {
        assert!(
            Instant::now() < deadline,
            "adaptive: no round with at most {QUIET_ROUND_UPCALLS_MAX} upcalls in 60 s: {adaptive:?}\n{}",
            adaptive_mount.mount.daemon_log()
        );
        adaptive.push(adaptive_mount.round());
    }
    let quiet_from = adaptive.len();
    // And it stays quiet: the long timeouts hold.
    let later: Vec<u64> = (0..ROUNDS / 2).map(|_| adaptive_mount.round()).collect();
    let log = adaptive_mount.mount.daemon_log();
    eprintln!("adaptive: {adaptive:?}, then {later:?}");
    assert!(
        log.contains("cache policy adaptive on connection"),
        "the daemon did not turn the policy on:\n{log}"
    );
    assert!(
        quiet_from >= 3,
        "adaptive: quiet already in round {quiet_from}, before the inodes could be hot ({adaptive:?})"
    );
    let later_total: u64 = later.iter().sum();
    assert!(
        later_total <= QUIET_ROUND_UPCALLS_MAX * later.len() as u64,
        "adaptive: {later_total} upcalls in the {} rounds after the first quiet one ({adaptive:?}, then {later:?})",
        later.len()
    );
}

/// Changes through the mount, with every inode involved holding a long
/// timeout, are seen at once through other names. The kernel updates its own
/// caches for requests it sends (the reply's attributes, d_move, d_delete,
/// and it drops the attributes of a rename's or unlink's victim); the
/// dispatcher additionally demotes and invalidates the changed inodes from
/// inside the handlers. This test guards that the two together stay
/// coherent and that those in-handler invalidations do not deadlock on any
/// transport.
#[test]
fn changes_through_the_mount_are_seen_through_other_names() {
    let t = UpcallTracer::load().unwrap_or_else(|e| panic!("loading the BPF upcall counters: {e}"));
    let m = Mount::start(&[
        "--cache-policy",
        "adaptive",
        "--cache-refresh-ms",
        "50",
        "--long-ttl-ms",
        "600000",
        "--entry-timeout-ms",
        "50",
        "--attr-timeout-ms",
        "50",
    ]);
    let src = m.src();
    let mnt = m.mnt();
    fs::write(src.join("a"), b"0123456789").unwrap();
    fs::hard_link(src.join("a"), src.join("a2")).unwrap();
    fs::write(src.join("b"), b"bb").unwrap();
    fs::hard_link(src.join("b"), src.join("b2")).unwrap();
    fs::write(src.join("c"), b"c").unwrap();
    fs::hard_link(src.join("c"), src.join("c2")).unwrap();
    fs::create_dir(src.join("d")).unwrap();
    let names = ["a", "a2", "b", "b2", "c", "c2", "d"];
    // Rounds of stats, each after the short timeouts (50 ms) expired, until
    // one costs no upcall: the inodes are hot and hold long timeouts. (The
    // pause is the expiry under test, not a wait for the policy.)
    let conn = connection_of(mnt).expect("the mount's FUSE connection");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = Vec::new();
    loop {
        sleep(Duration::from_millis(120));
        let before = upcalls(&t, conn);
        for n in names {
            fs::metadata(mnt.join(n)).unwrap();
        }
        rounds.push(upcalls(&t, conn) - before);
        if rounds.last() == Some(&0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the inodes never got long timeouts; upcalls per round: {rounds:?}\n{}",
            m.daemon_log()
        );
    }
    assert!(
        rounds.len() >= 3,
        "no upcall in round {} already: the inodes cannot be hot yet ({rounds:?})",
        rounds.len()
    );

    fs::set_permissions(mnt.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(mnt.join("a2")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("a"))
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(fs::metadata(mnt.join("a2")).unwrap().len(), 3, "truncate");
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("a"))
        .unwrap()
        .write_all_at_end(b"45678");
    assert_eq!(fs::metadata(mnt.join("a2")).unwrap().len(), 8, "append");
    // Rename over b: b2 is now the only name of the old b.
    fs::rename(mnt.join("c"), mnt.join("b")).unwrap();
    assert_eq!(fs::metadata(mnt.join("b2")).unwrap().nlink(), 1, "replaced inode");
    assert_eq!(fs::metadata(mnt.join("c2")).unwrap().nlink(), 2, "moved inode");
    assert!(!mnt.join("c").exists());
    fs::remove_file(mnt.join("a")).unwrap();
    assert_eq!(fs::metadata(mnt.join("a2")).unwrap().nlink(), 1, "unlinked name");
    assert!(!mnt.join("a").exists());
    fs::rename(mnt.join("c2"), mnt.join("d/c3")).unwrap();
    assert_eq!(fs::read(mnt.join("d/c3")).unwrap(), b"c");
    assert!(!mnt.join("c2").exists());
    // The root is hot: its listing is kept across opens, and every change
    // through the mount shows in the next one.
    let list = || {
        let mut v: Vec<String> = fs::read_dir(mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(), ["a2", "b", "b2", "d"]);
    fs::write(mnt.join("new"), b"n").unwrap();
    assert_eq!(list(), ["a2", "b", "b2", "d", "new"], "created");
    fs::rename(mnt.join("new"), mnt.join("d/new")).unwrap();
    fs::remove_file(mnt.join("b2")).unwrap();
    assert_eq!(list(), ["a2", "b", "d"], "moved away and unlinked");
    // Behind the mount, the source agrees.
    assert_eq!(fs::metadata(src.join("a2")).unwrap().len(), 8);
}

trait AppendAll {
    fn write_all_at_end(self, data: &[u8]);
}

impl AppendAll for fs::File {
    fn write_all_at_end(mut self, data: &[u8]) {
        use std::io::Write;
        self.write_all(data).unwrap();
    }
}
