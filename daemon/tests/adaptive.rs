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
use std::time::Duration;

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

fn upcalls(t: &UpcallTracer, conn: u32) -> u64 {
    t.opcode_stats(conn)
        .expect("reading OPCODES")
        .iter()
        .filter(|s| s.opcode == LOOKUP || s.opcode == GETATTR)
        .map(|s| s.sent)
        .sum()
}

/// LOOKUP+GETATTR upcalls of each round of `stat` over FILES files.
fn stat_rounds(extra: &[&str]) -> (Vec<u64>, String) {
    let t = UpcallTracer::load().unwrap_or_else(|e| panic!("loading the BPF upcall counters: {e}"));
    let short = SHORT_MS.to_string();
    let mut args = vec!["--entry-timeout-ms", &short, "--attr-timeout-ms", &short];
    args.extend_from_slice(extra);
    let m = Mount::start(&args);
    let conn = connection_of(m.mnt()).expect("the mount's FUSE connection");
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:04}")).collect();
    for n in &names {
        fs::write(m.src().join(n), b"x").unwrap();
    }
    let mut per_round = Vec::new();
    for _ in 0..ROUNDS {
        let before = upcalls(&t, conn);
        for n in &names {
            fs::metadata(m.mnt().join(n)).unwrap_or_else(|e| panic!("stat {n}: {e}"));
        }
        per_round.push(upcalls(&t, conn) - before);
        sleep(PAUSE);
    }
    (per_round, m.daemon_log())
}

#[test]
fn hot_inodes_stop_reaching_the_daemon_and_fixed_ones_do_not() {
    let (fixed, _) = stat_rounds(&["--cache-policy", "fixed"]);
    let (adaptive, log) = stat_rounds(&["--cache-policy", "adaptive", "--cache-refresh-ms", "50"]);
    eprintln!("LOOKUP+GETATTR upcalls per round of {FILES} stats: fixed {fixed:?}, adaptive {adaptive:?}");
    assert!(
        log.contains("cache policy adaptive on connection"),
        "the daemon did not turn the policy on:\n{log}"
    );
    // Fixed: every round finds every timeout expired.
    for (i, n) in fixed.iter().enumerate() {
        assert!(*n >= FILES as u64, "fixed, round {i}: {n} upcalls ({fixed:?})");
    }
    // Adaptive: round 1 is cold, round 2 makes the inodes hot (2 upcalls),
    // round 3 gets the long timeouts; from round 4 on the kernel answers.
    let late: u64 = adaptive[3..].iter().sum();
    assert!(
        late <= 10,
        "adaptive: {late} upcalls in rounds 4..{ROUNDS} ({adaptive:?}; fixed {fixed:?})"
    );
    let total_fixed: u64 = fixed.iter().sum();
    let total_adaptive: u64 = adaptive.iter().sum();
    assert!(
        total_adaptive * 2 < total_fixed,
        "adaptive {total_adaptive} vs fixed {total_fixed} upcalls"
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
    // Hot: several rounds of upcalls (timeouts of 50 ms expire between).
    for _ in 0..5 {
        for n in names {
            fs::metadata(mnt.join(n)).unwrap();
        }
        sleep(Duration::from_millis(120));
    }
    // Long timeouts now: well past the short ones, the kernel asks nothing.
    sleep(Duration::from_millis(120));
    let conn = connection_of(mnt).expect("the mount's FUSE connection");
    let before = upcalls(&t, conn);
    for n in names {
        fs::metadata(mnt.join(n)).unwrap();
    }
    assert_eq!(upcalls(&t, conn), before, "the inodes hold long timeouts");

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
