//! The RDMA data path on a real (soft-RoCE) device: scripts/rdma-test.sh
//! boots Debian's kernel under QEMU with rdma_rxe on a veth pair, and runs
//! a metadata service, three storage services and a mount there, all with
//! `--data-transport rdma`, with this build's xfused: files written and
//! read back, the RDMA counters of the services and the devices, fsx, and
//! a storage service killed mid-stream (scripts/rdma-guest/cluster.sh).
//!
//! Needs root, the cargo feature `rdma` (the test command builds with it),
//! QEMU and what scripts/rdma-guest/host-packages.sh lists, fsx, and
//! Debian's mirror once (the kernel and rdma-core packages are cached
//! under /var/tmp/xfuse-rdma-guest). Where something is missing the test
//! is recorded as skipped, or fails under XFUSE_TEST_STRICT=1.

mod common;

use std::path::Path;
use std::process::Command;

const XFUSED: &str = env!("CARGO_BIN_EXE_xfused");

#[test]
fn a_cluster_moves_file_data_by_rdma_on_soft_roce_in_a_guest() {
    if std::env::var_os("XFUSE_TEST_TRANSPORT").is_some() {
        // Not a limitation: the guest mounts with its own kernel's FUSE,
        // so reruns on the host's other transports would repeat it.
        common::skip("the RDMA guest does not use XFUSE_TEST_TRANSPORT; runs in the default pass");
        return;
    }
    if !cfg!(feature = "rdma") {
        common::missing("an xfused built with the cargo feature rdma (cargo test --features xfused/rdma)");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        common::missing("root (the guest's kernel and rdma-core are fetched with apt-get)");
        return;
    }
    let missing = vm_tests::missing_tools();
    if !missing.is_empty() {
        common::missing(&format!("{} (scripts/setup.sh --tests)", missing.join(", ")));
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rdma-test.sh");
    // The script bounds the guest by its --timeout (QEMU is killed after
    // it); under TCG on a loaded 2-CPU machine the run takes 1-3 minutes.
    let out = Command::new(&script)
        .args(["--xfused", XFUSED, "--timeout", "900"])
        .output()
        .expect("running scripts/rdma-test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdict = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("rdma: "))
        .unwrap_or("no verdict");
    eprintln!("{verdict}");
    assert!(
        out.status.success() && verdict.ends_with(" 0 failed") && !verdict.starts_with("rdma: 0 passed"),
        "{verdict} (exit {:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.code()
    );
}
