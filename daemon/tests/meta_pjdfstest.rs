//! pjdfstest, the POSIX conformance suite, against `xfused mount` (the
//! distributed filesystem on its embedded metadata engine) on the transport
//! under test, through `scripts/pjdfstest.sh` with the config and
//! exclusions in `tests/pjdfstest/`.

mod common;

use common::Mount;

#[test]
fn pjdfstest_passes_on_xfused_mount() {
    run_pjdfstest(&[]);
}

/// Permissions checked by xfused (xfuse::perm in front of MetaFs) instead
/// of the kernel.
#[test]
fn pjdfstest_passes_on_xfused_mount_with_daemon_permissions() {
    run_pjdfstest(&["--permissions", "daemon"]);
}

fn run_pjdfstest(args: &[&str]) {
    let mount = Mount::start_meta(args);
    let run = mount.run_pjdfstest();
    eprintln!("{} with {args:?}: {}", mount.describe(), run.summary);
    assert!(
        run.status.success(),
        "pjdfstest failed ({}):\n{}\n{}\ndaemon log:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        mount.daemon_log()
    );
}
