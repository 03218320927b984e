//! The virtio transport without a VM: `xfused virtiofs` served to an
//! in-process vhost-user frontend (vm_tests::frontend, the part QEMU and the
//! guest kernel play) that replays the VM workload's metadata operations —
//! INIT, LOOKUP, CREATE/RELEASE, MKNOD, GETATTR, READDIRPLUS, RENAME, LINK,
//! UNLINK, FORGET on the high-priority queue, DESTROY — with every reply
//! checked against a model of the tree. Then the host looks at the
//! directory itself.
//!
//! Runs as any user who may create Unix sockets; no mount, no QEMU.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vm_tests::frontend::replay::{self, expected_tree, linked, renamed, unlinked};
use vm_tests::frontend::{Backend, ReplayReport};

const XFUSED: &str = env!("CARGO_BIN_EXE_xfused");

fn run(args: &[&str], files: u32, depth: u32) -> (tempfile::TempDir, ReplayReport) {
    let root = tempfile::Builder::new()
        .prefix("xfuse-it-replay.")
        .tempdir()
        .expect("temporary directory");
    let share = root.path().join("share");
    std::fs::create_dir(&share).expect("mkdir share");
    let backend = Backend::xfused(Path::new(XFUSED), args);
    let report = backend
        .run_on(&share, root.path(), files, depth)
        .unwrap_or_else(|e| panic!("xfused virtiofs {args:?}, {files} files x {depth}: {e}"));
    (root, report)
}

fn count(report: &ReplayReport, op: &str) -> usize {
    report.latencies_ns.get(op).map_or(0, Vec::len)
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every operation of the workload reached the host: renamed files moved,
/// hard links share their inode, unlinked names are gone.
fn check_host(share: &Path, files: u32, depth: u32) {
    let base = share.join("from-guest");
    assert_eq!(names(&base), (0..depth).map(|k| format!("w{k}")).collect());
    let (top, sub) = expected_tree(files);
    for k in 0..depth {
        let dir = base.join(format!("w{k}"));
        assert_eq!(names(&dir), top, "w{k}");
        assert_eq!(names(&dir.join("sub")), sub, "w{k}/sub");
        // Spot checks written out, independent of the rules' helpers:
        // f0 went to sub/r0; f1 is linked as sub/l1; f3 was unlinked.
        assert!(!dir.join("f0").exists() && dir.join("sub/r0").is_file());
        let (f1, l1) = (
            dir.join("f1").metadata().unwrap(),
            dir.join("sub/l1").metadata().unwrap(),
        );
        assert_eq!(
            (f1.ino(), f1.nlink()),
            (l1.ino(), 2),
            "w{k}/sub/l1 is a hard link of f1"
        );
        assert!(!dir.join("f3").exists());
        assert_eq!(dir.join("f2").metadata().unwrap().mode() & 0o7777, 0o644);
    }
    // The library's own full check agrees.
    assert_eq!(
        replay::check_host_tree(share, depth, files).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn a_replayed_guest_workload_reaches_the_host_through_the_virtio_transport() {
    let configs: [(&[&str], u32, u32); 4] = [
        (&[], 200, 1),
        (&["--inode-fds"], 200, 1),
        // Eight requests in flight on the one request queue, run inline and
        // by a thread pool.
        (&[], 60, 8),
        (&["--thread-pool", "2"], 60, 8),
    ];
    for (args, files, depth) in configs {
        let (root, report) = run(args, files, depth);
        check_host(&root.path().join("share"), files, depth);

        // Every request of the plan was answered as the model expected.
        let per = |f: fn(u32) -> bool| (0..files).filter(|&i| f(i)).count() * depth as usize;
        let n = files as usize * depth as usize;
        assert_eq!(count(&report, "LOOKUP (ENOENT)"), n);
        assert_eq!(count(&report, "LOOKUP"), n);
        assert_eq!(count(&report, "GETATTR"), n);
        assert_eq!(count(&report, "CREATE") + count(&report, "MKNOD"), n);
        assert_eq!(count(&report, "RELEASE"), count(&report, "CREATE"));
        // xfused answers opens with FOPEN_NOFLUSH (Policy::open_noflush).
        assert_eq!(count(&report, "FLUSH"), 0);
        assert_eq!(count(&report, "RENAME"), per(renamed));
        assert_eq!(count(&report, "LINK"), per(linked));
        assert_eq!(count(&report, "UNLINK"), per(unlinked));
        assert_eq!(count(&report, "OPENDIR"), 3 * depth as usize);
        // A FORGET for every inode the guest learnt (files, w/K, sub).
        assert_eq!(count(&report, "FORGET"), n + 2 * depth as usize);
        assert_eq!((report.init.major, report.init.minor), (7, 38));
        assert!(report.requests > 0 && report.backend_cpu_ns.is_some());
    }
}

#[test]
fn file_data_written_and_read_through_the_virtio_transport_arrives_intact() {
    // The guest's layout of READ and WRITE (a descriptor per page), which
    // xfused moves between the file and guest memory without copying it
    // itself: every chunk read back is compared, and the host file too.
    use vm_tests::frontend::data::{self, DataConfig};
    use vm_tests::frontend::Session;

    let root = tempfile::Builder::new()
        .prefix("xfuse-it-data.")
        .tempdir()
        .expect("temporary directory");
    let share = root.path().join("share");
    std::fs::create_dir(&share).expect("mkdir share");
    for chunk_kib in [4u32, 128, 1020] {
        let name = format!("data-{chunk_kib}");
        let serving = Backend::xfused(Path::new(XFUSED), &[])
            .start(&share, root.path())
            .expect("starting xfused");
        let config = DataConfig {
            file_bytes: u64::from(chunk_kib) * 1024 * 9,
            chunk_bytes: chunk_kib * 1024,
            backend_pid: None,
        };
        let mut guest = Session::connect(serving.socket(), 10_000).expect("connecting");
        let report = data::run(&mut guest, &name, &config, 10_000)
            .unwrap_or_else(|e| panic!("{chunk_kib} KiB chunks: {e}\n{}", serving.log_tail()));
        assert_eq!(
            (
                report.write.requests,
                report.rewrite.requests,
                report.read.requests
            ),
            (9, 9, 9)
        );
        guest.destroy().expect("DESTROY");
        serving.finish().expect("xfused exits 0");
        let host = std::fs::read(share.join(&name)).expect("the host file");
        assert_eq!(host.len() as u64, config.file_bytes);
        let chunk = chunk_kib as usize * 1024;
        assert!(
            host.chunks(chunk).all(|c| c == &host[..chunk]),
            "every chunk holds what the guest wrote"
        );
        assert!(host[..chunk].iter().any(|&b| b != 0), "not a hole");
    }
}
