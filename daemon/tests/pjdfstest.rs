//! pjdfstest, the POSIX conformance suite, against a mount of
//! `xfused passthrough` on the transport under test
//! (`XFUSE_TEST_TRANSPORT`, default `dev`), through `scripts/pjdfstest.sh`
//! with the config and exclusions in `tests/pjdfstest/`.

mod common;

use common::Mount;

fn run_pjdfstest(extra_args: &[&str]) {
    let mount = Mount::start(extra_args);
    let run = mount.run_pjdfstest();
    eprintln!("{} with {extra_args:?}: {}", mount.describe(), run.summary);
    assert!(
        run.status.success(),
        "pjdfstest failed ({}):\n{}\n{}\ndaemon log:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        mount.daemon_log()
    );
}

/// The transport and flags come from the suite's environment
/// (`XFUSE_TEST_TRANSPORT`, `XFUSE_TEST_ARGS`); scripts/test.sh runs the
/// suite on dev, uring and uring with passthrough.
#[test]
fn pjdfstest_passes() {
    run_pjdfstest(&[]);
}

/// With permissions checked by xfused instead of the kernel
/// (`--permissions daemon`, no `default_permissions`): the suite's
/// permission cases (open, chmod, chown with supplementary groups, utimensat,
/// rename of directories...) are then decided by xfuse::perm alone.
#[test]
fn pjdfstest_passes_with_daemon_permissions() {
    run_pjdfstest(&["--permissions", "daemon"]);
}
