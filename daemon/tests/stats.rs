//! `xfused stats MOUNTPOINT --json` against a known workload on a real mount,
//! and its errors for bad input. Needs root with BPF (see upcalls.rs).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::Mount;

const FILES: u64 = 100;

#[test]
fn json_report_counts_a_known_workload() {
    let m = Mount::start(&[]);
    for i in 0..FILES {
        fs::write(m.src().join(format!("s{i}")), b"x").unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_xfused"))
        .args(["stats", "--json", "--interval-ms", "3000", "--count", "1"])
        .arg(m.mnt())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning xfused stats");
    // The programs count from the moment this line is logged.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = stderr.read_line(&mut line).expect("reading xfused stats' log");
        assert!(n > 0, "xfused stats exited before counting");
        if line.contains("counting requests of connection") {
            break;
        }
    }
    for i in 0..FILES {
        fs::metadata(m.mnt().join(format!("s{i}"))).unwrap();
    }
    let out = child.wait_with_output().expect("waiting for xfused stats");
    assert!(out.status.success(), "xfused stats failed: {:?}", out.status);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.stdout));
    let lookup = report["opcodes"]
        .as_array()
        .expect("opcodes")
        .iter()
        .find(|o| o["name"] == "LOOKUP")
        .unwrap_or_else(|| panic!("no LOOKUP in {report}"));
    let sent = lookup["sent"].as_u64().unwrap();
    assert!(
        (FILES..=FILES + 5).contains(&sent),
        "{FILES} cold stats, {sent} LOOKUPs reported"
    );
    assert_eq!(lookup["errors"], 0);
    assert!(lookup["latency_p50_ns"].as_u64().unwrap() > 0);
    let hot = report["hottest_inodes"].as_array().expect("hottest_inodes");
    assert_eq!(hot.len(), 10, "the default top 10");
    // Each file was looked up once; the root may be among them with a GETATTR.
    let looked_up = hot.iter().filter(|i| i["lookups"].as_u64() == Some(1)).count();
    assert!(
        looked_up >= 9,
        "{looked_up} of the top 10 had one LOOKUP: {hot:?}"
    );
    assert_eq!(report["mountpoint"].as_str().unwrap(), m.mnt().to_str().unwrap());
}

#[test]
fn bad_mountpoints_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (path, reason) in [
        (dir.path().to_path_buf(), "is not a FUSE mount"),
        (dir.path().join("missing"), "No such file or directory"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_xfused"))
            .args(["stats", "--count", "1"])
            .arg(&path)
            .output()
            .expect("running xfused stats");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: exit 0", path.display());
        assert!(err.contains(reason), "{}: {err}", path.display());
    }
}
