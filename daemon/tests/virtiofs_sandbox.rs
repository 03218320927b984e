//! `xfused virtiofs` confined, seen from the host while it serves the
//! in-process vhost-user frontend (vm_tests::frontend, no VM): the server
//! is pid 1 of its own namespaces, its only file tree is the shared
//! directory, its capabilities are the file server's set in every set,
//! seccomp filters it and no_new_privs is on; and a guest that floods it
//! with malformed descriptor chains gets a bounded number of log lines.
//!
//! Root only (namespaces, and reading another process's /proc/PID/root).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vm_tests::frontend::backend::{GUEST_MEMORY_BYTES, QUEUE_SIZE};
use vm_tests::frontend::device::REQUEST;
use vm_tests::frontend::replay::{self, ReplayConfig};
use vm_tests::frontend::{Device, GuestRam};
use vm_tests::procfs;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER,
/// CAP_FSETID, CAP_SETGID, CAP_SETUID, CAP_MKNOD, CAP_SETFCAP
/// (<linux/capability.h>: bits 0 to 4, 6, 7, 27, 31): virtiofsd's set and
/// CAP_DAC_READ_SEARCH, which LINK's `linkat(AT_EMPTY_PATH)` needs for a
/// file a guest user created (the seccomp filter still refuses
/// open_by_handle_at when inodes are O_PATH descriptors).
const FILE_SERVER_CAPS: u64 = 0x8800_00df;

fn able() -> bool {
    if !rustix::process::geteuid().is_root() {
        common::missing("root (namespaces, and /proc/PID/root of the server)");
        return false;
    }
    true
}

/// `xfused virtiofs --socket ROOT/vfs.sock --source ROOT/share ARGS`, with
/// `ROOT/outside` beside the share.
struct Server {
    child: Option<Child>,
    share: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    root: TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let root = tempfile::Builder::new()
            .prefix("xfuse-it-sandbox.")
            .tempdir()
            .expect("temporary directory");
        let share = root.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("inside"), b"in the share").unwrap();
        std::fs::write(root.path().join("outside"), b"beside the share").unwrap();
        let socket = root.path().join("vfs.sock");
        let log = root.path().join("xfused.log");
        let mut argv: Vec<String> = vec![
            "virtiofs".into(),
            "--socket".into(),
            socket.display().to_string(),
            "--source".into(),
            share.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let child = common::spawn_xfused(&argv, &log);
        let mut server = Server {
            child: Some(child),
            share,
            socket,
            log,
            root,
        };
        common::wait_for("the vhost-user socket", START_TIMEOUT, || {
            if let Ok(Some(status)) = server.child.as_mut().unwrap().try_wait() {
                panic!("xfused exited with {status} before listening:\n{}", server.log());
            }
            if server.socket.exists() {
                Ok(())
            } else {
                Err(format!("no {} yet", server.socket.display()))
            }
        });
        server
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn connect(&self) -> Device {
        let ram = GuestRam::new(GUEST_MEMORY_BYTES).expect("guest memory");
        Device::connect(&self.socket, ram, QUEUE_SIZE)
            .unwrap_or_else(|e| panic!("connecting to xfused: {e}\n{}", self.log()))
    }

    /// The sandboxed server: the only child of the process started (which
    /// waits for it), there once the vhost-user handshake was answered.
    fn server_pid(&self) -> u32 {
        match procfs::children(self.pid()) {
            Ok(children) if children.len() == 1 => children[0],
            other => panic!(
                "xfused (pid {}) should have one child, the server: {other:?}\n{}",
                self.pid(),
                self.log()
            ),
        }
    }

    /// After the frontend left: the command exits 0 by itself and removes
    /// its socket.
    fn wait_exit(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let status = common::wait_for("xfused to exit after the frontend left", EXIT_TIMEOUT, || {
            child
                .try_wait()
                .unwrap()
                .ok_or_else(|| "still running".to_string())
        });
        let log = self.log();
        assert!(status.success(), "xfused exited with {status}:\n{log}");
        assert!(!self.socket.exists(), "the socket outlived the server:\n{log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The server dies with it (PR_SET_PDEATHSIG).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `Key:\tvalue` of /proc/PID/status.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
        .trim()
        .to_owned()
}

fn caps(status: &str, key: &str) -> u64 {
    u64::from_str_radix(&status_field(status, key), 16).unwrap()
}

/// Replays a small guest workload (INIT to DESTROY, every reply checked).
fn replay_some(device: &mut Device, server: &Server) {
    let config = ReplayConfig {
        files: 20,
        depth: 1,
        reply_timeout_ms: 10_000,
        backend_pid: None,
    };
    replay::run(device, &config).unwrap_or_else(|e| panic!("replay: {e}\n{}", server.log()));
}

#[test]
fn the_server_runs_as_pid_1_of_its_namespaces_with_reduced_capabilities_and_seccomp() {
    if !able() {
        return;
    }
    let server = Server::start(&[]);
    let mut device = server.connect();
    replay_some(&mut device, &server);
    let pid = server.server_pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();

    // Seccomp filter mode, no_new_privs.
    assert_eq!(status_field(&status, "Seccomp"), "2", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
    // The file server's capabilities in every set, nothing to inherit,
    // and a bounding set nothing can be regained from.
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(caps(&status, set), FILE_SERVER_CAPS, "{set}:\n{status}");
    }
    assert_eq!(caps(&status, "CapInh"), 0, "{status}");
    assert_eq!(caps(&status, "CapAmb"), 0, "{status}");
    // pid 1 of a pid namespace of its own: NSpid lists the host's pid,
    // then 1.
    let nspid = status_field(&status, "NSpid");
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        [pid.to_string().as_str(), "1"],
        "NSpid"
    );
    // New mount, pid, network, IPC and UTS namespaces.
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the server shares our {ns} namespace");
    }
    // Its root is the shared directory itself.
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let share = std::fs::metadata(&server.share).unwrap();
    assert_eq!((root.dev(), root.ino()), (share.dev(), share.ino()));

    drop(device);
    let log = server.wait_exit();
    assert!(!log.contains("WARN"), "warnings from a well-formed guest:\n{log}");
}

#[test]
fn nothing_outside_the_share_is_in_the_servers_reach() {
    if !able() {
        return;
    }
    let server = Server::start(&[]);
    let mut device = server.connect();
    replay_some(&mut device, &server);
    let pid = server.server_pid();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    // The server's whole file tree is the share: what the guest made, the
    // host's file in it, and no /proc, /etc or the share's siblings.
    let expected = names(&server.share);
    assert!(expected.contains("inside") && expected.contains("from-guest"));
    assert_eq!(names(&root), expected);
    // ".." at its root is its root, as for every path it resolves.
    assert_eq!(names(&root.join("..")), expected);
    assert_eq!(names(&root.join("../../..")), expected);
    assert!(server.root.path().join("outside").exists());
    for outside in ["../outside", "proc/self", "etc/passwd", "../share/inside"] {
        let path = root.join(outside);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "{} is reachable by the server",
            path.display()
        );
    }
    assert_eq!(std::fs::read(root.join("inside")).unwrap(), b"in the share");
    drop(device);
    server.wait_exit();
}

#[test]
fn chroot_confines_the_file_tree_without_namespaces() {
    if !able() {
        return;
    }
    let server = Server::start(&["--sandbox", "chroot"]);
    let mut device = server.connect();
    replay_some(&mut device, &server);
    // No fork: the process started serves.
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(status_field(&status, "Seccomp"), "2", "{status}");
    assert_eq!(caps(&status, "CapBnd"), FILE_SERVER_CAPS, "{status}");
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let share = std::fs::metadata(&server.share).unwrap();
    assert_eq!((root.dev(), root.ino()), (share.dev(), share.ino()));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    drop(device);
    // The chrooted server cannot remove its socket (the path is outside
    // its root now); it exits cleanly all the same.
    let mut server = server;
    let mut process = server.child.take().unwrap();
    let exit = common::wait_for("xfused to exit", EXIT_TIMEOUT, || {
        process.try_wait().unwrap().ok_or_else(|| "running".to_string())
    });
    assert!(exit.success(), "{exit}\n{}", server.log());
}

#[test]
fn a_flood_of_malformed_descriptor_chains_logs_a_bounded_number_of_lines() {
    if !able() {
        return;
    }
    const CHAINS: u64 = 2000;
    const BURST: u64 = xfuse::ratelimit::LOG_BURST as u64;
    let server = Server::start(&[]);
    let mut device = server.connect();
    // One descriptor past the end of guest memory: refused by the backend
    // before a byte is read, answered with an empty used entry.
    let bad = vm_memory::GuestAddress(GUEST_MEMORY_BYTES + 0x1000);
    let table = device.desc_table(REQUEST);
    let started = Instant::now();
    for i in 0..CHAINS {
        device.write_chain(table, 0, &[(bad, 64, 0)]).unwrap();
        device.submit(REQUEST, 0).unwrap();
        let used = loop {
            if let Some(used) = device.pop_used(REQUEST).unwrap() {
                break used;
            }
            device
                .wait(10_000)
                .unwrap_or_else(|e| panic!("chain {i}: {e}\n{}", server.log()));
        };
        assert_eq!((used.id, used.len), (0, 0), "chain {i}");
    }
    let windows = started.elapsed().as_secs() / xfuse::ratelimit::LOG_INTERVAL.as_secs() + 1;
    drop(device);
    let log = server.wait_exit();

    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refusing a descriptor chain"))
        .collect();
    assert!(!refusals.is_empty(), "no refusal logged:\n{log}");
    assert!(
        refusals.len() as u64 <= BURST * windows,
        "{} refusals logged for {CHAINS} chains in {windows} windows of {BURST}",
        refusals.len()
    );
    // Nothing lost without a word: the lines logged and the counts of the
    // suppressed ones (carried by later lines and the summary at the end
    // of the connection) add up to the flood.
    let suppressed = |line: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("suppressed="))
            .map_or(0, |n| n.parse().unwrap())
    };
    let summary: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("more messages about refused descriptor chains"))
        .collect();
    assert_eq!(summary.len(), 1, "one summary at the end:\n{log}");
    let accounted =
        refusals.len() as u64 + refusals.iter().map(|l| suppressed(l)).sum::<u64>() + suppressed(summary[0]);
    assert_eq!(accounted, CHAINS, "log:\n{log}");
    assert!(
        log.lines().count() < 100,
        "{} log lines for a flood of {CHAINS}",
        log.lines().count()
    );
}

#[test]
fn a_sandbox_that_cannot_be_had_is_an_error_not_a_weaker_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("xfused.log");
    let args: Vec<String> = [
        "virtiofs",
        "--socket",
        &dir.path().join("vfs.sock").display().to_string(),
        "--meta",
        &format!("embedded:{}", dir.path().join("meta").display()),
        "--data",
        &dir.path().join("data").display().to_string(),
        "--sandbox",
        "chroot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = common::spawn_xfused(&args, &log);
    let status = common::wait_for("xfused to refuse", EXIT_TIMEOUT, || {
        child.try_wait().unwrap().ok_or_else(|| "running".to_string())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("--sandbox chroot"), "{text}");
    assert!(text.contains("--sandbox namespace or none"), "{text}");
}
