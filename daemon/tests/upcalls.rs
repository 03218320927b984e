//! The BPF upcall counters (`xfuse-ebpf`) against known workloads on real
//! mounts: N distinct stats on a cold cache are at least N LOOKUPs charged to
//! exactly those inodes, the same stats on a hot cache are (almost) none, and
//! two mounts never see each other's requests.
//!
//! Needs root with BPF (CAP_BPF, CAP_PERFMON), kernel BTF and a kernel with the FUSE
//! tracepoints (checked on 6.18): the test command runs as root on such a kernel,
//! so a tracer that cannot load is a failure here, not a skip.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use common::Mount;
use xfuse_ebpf::{connection_of, InodeUpcalls, OpcodeStats, UpcallTracer};

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
/// Files stat'ed per workload.
const FILES: usize = 300;
/// Requests the kernel may send besides the workload's own (the mount's root,
/// a stray revalidation).
const SLACK: u64 = 10;

fn tracer() -> UpcallTracer {
    UpcallTracer::load().unwrap_or_else(|e| panic!("loading the BPF upcall counters: {e}"))
}

fn op(stats: &[OpcodeStats], opcode: u32) -> OpcodeStats {
    stats
        .iter()
        .find(|s| s.opcode == opcode)
        .cloned()
        .unwrap_or(OpcodeStats {
            opcode,
            sent: 0,
            ended: 0,
            errors: 0,
            latency_ns_sum: 0,
            latency_log2_hist: [0; xfuse_ebpf::LATENCY_BUCKETS],
        })
}

fn by_node(inodes: Vec<InodeUpcalls>) -> HashMap<u64, InodeUpcalls> {
    inodes.into_iter().map(|i| (i.nodeid, i)).collect()
}

/// Creates FILES files in the source directory (behind the mount, so the
/// kernel has cached none of them).
fn populate(m: &Mount) -> Vec<String> {
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:04}")).collect();
    for n in &names {
        fs::write(m.src().join(n), b"x").unwrap_or_else(|e| panic!("write {n}: {e}"));
    }
    names
}

#[test]
fn cold_stats_are_lookups_of_those_inodes_and_hot_stats_are_none() {
    let t = tracer();
    // Long TTLs, so the second round is served from the kernel's caches
    // however slow the machine.
    let m = Mount::start(&["--entry-timeout-ms", "600000", "--attr-timeout-ms", "600000"]);
    let conn = connection_of(m.mnt()).expect("the mount's FUSE connection");
    let names = populate(&m);
    let before = t.opcode_stats(conn).expect("reading OPCODES");
    // Counted from here: a mount of a test running beside this one may have
    // held the same connection number before this mount took it over, and
    // this tracer saw that mount's inodes (with the same node ids) too.
    let inodes_before = by_node(t.inode_upcalls(conn).expect("reading INODES"));

    // Cold: one LOOKUP per name, each charged to the inode it found.
    let mut inos = Vec::new();
    for n in &names {
        let md = fs::metadata(m.mnt().join(n)).unwrap_or_else(|e| panic!("stat {n}: {e}"));
        inos.push(md.ino());
    }
    let cold = t.opcode_stats(conn).expect("reading OPCODES");
    let lookups = op(&cold, LOOKUP).since(&op(&before, LOOKUP));
    assert!(
        lookups.sent >= FILES as u64 && lookups.sent <= FILES as u64 + SLACK,
        "{FILES} cold stats sent {} LOOKUPs",
        lookups.sent
    );
    assert_eq!(lookups.sent, lookups.ended, "every LOOKUP sent has ended");
    assert_eq!(lookups.errors, 0);
    assert_eq!(
        lookups.measured(),
        lookups.ended,
        "every LOOKUP's latency was measured"
    );
    assert!(lookups.latency_ns_sum > 0);
    let per_inode = by_node(t.inode_upcalls(conn).expect("reading INODES"));
    // PassthroughFs hands out its own node ids (not the source's inode
    // numbers), so count the inodes charged with exactly one lookup.
    let once = per_inode
        .values()
        .filter(|i| {
            i.lookups
                .saturating_sub(inodes_before.get(&i.nodeid).map_or(0, |b| b.lookups))
                == 1
        })
        .count();
    assert!(
        once >= FILES,
        "{once} inodes charged one LOOKUP, expected {FILES}"
    );

    // Hot: the same stats are answered by the kernel's dentry and attribute
    // caches.
    for n in &names {
        fs::metadata(m.mnt().join(n)).unwrap_or_else(|e| panic!("stat {n}: {e}"));
    }
    let hot = t.opcode_stats(conn).expect("reading OPCODES");
    let hot_lookups = op(&hot, LOOKUP).since(&op(&cold, LOOKUP)).sent;
    let hot_getattrs = op(&hot, GETATTR).since(&op(&cold, GETATTR)).sent;
    assert!(
        hot_lookups + hot_getattrs <= SLACK,
        "{FILES} hot stats sent {hot_lookups} LOOKUPs and {hot_getattrs} GETATTRs"
    );
    let after = by_node(t.inode_upcalls(conn).expect("reading INODES"));
    let grown = after
        .values()
        .filter(|i| per_inode.get(&i.nodeid).is_some_and(|b| b.total() != i.total()))
        .count() as u64;
    assert!(grown <= SLACK, "{grown} inodes got upcalls on a hot cache");
}

#[test]
fn getattrs_are_charged_to_their_inode() {
    let t = tracer();
    // Attributes expire at once but names stay: every stat is a GETATTR of
    // the inode, not a LOOKUP.
    let m = Mount::start(&["--entry-timeout-ms", "600000", "--attr-timeout-ms", "0"]);
    let conn = connection_of(m.mnt()).expect("the mount's FUSE connection");
    fs::write(m.src().join("g"), b"x").expect("write g");
    let path = m.mnt().join("g");
    fs::metadata(&path).expect("first stat");
    let before = by_node(t.inode_upcalls(conn).expect("reading INODES"));
    const STATS: u64 = 50;
    for _ in 0..STATS {
        fs::metadata(&path).expect("stat");
    }
    let after = by_node(t.inode_upcalls(conn).expect("reading INODES"));
    let busiest = after
        .values()
        .map(|i| {
            let b = before.get(&i.nodeid).map_or(0, |b| b.getattrs);
            (i.getattrs - b, i.nodeid)
        })
        .max()
        .expect("some inode was counted");
    assert!(
        busiest.0 >= STATS && busiest.0 <= STATS + SLACK,
        "{STATS} stats with attributes uncached: busiest inode {} got {} GETATTRs",
        busiest.1,
        busiest.0
    );
}

#[test]
fn two_mounts_do_not_mix() {
    let t = tracer();
    let a = Mount::start(&[]);
    let b = Mount::start(&[]);
    let (ca, cb) = (
        connection_of(a.mnt()).expect("connection of a"),
        connection_of(b.mnt()).expect("connection of b"),
    );
    assert_ne!(ca, cb);
    let b_before = op(&t.opcode_stats(cb).expect("OPCODES"), LOOKUP).sent;
    let a_before = op(&t.opcode_stats(ca).expect("OPCODES"), LOOKUP).sent;
    for n in populate(&a) {
        fs::metadata(a.mnt().join(&n)).unwrap_or_else(|e| panic!("stat {n}: {e}"));
    }
    let a_after = op(&t.opcode_stats(ca).expect("OPCODES"), LOOKUP).sent;
    let b_after = op(&t.opcode_stats(cb).expect("OPCODES"), LOOKUP).sent;
    assert!(
        a_after - a_before >= FILES as u64,
        "mount a: {} LOOKUPs",
        a_after - a_before
    );
    assert_eq!(b_after, b_before, "mount b saw LOOKUPs it never got");
}
