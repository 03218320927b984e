//! pjdfstest, the POSIX conformance suite, against `xfused mount` (the
//! distributed filesystem on its embedded metadata engine) on the transport
//! under test, through `scripts/pjdfstest.sh` with the config and
//! exclusions in `tests/pjdfstest/`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Mount;

#[test]
fn pjdfstest_passes_on_xfused_mount() {
    let mount = Mount::start_meta(&[]);
    // pjdfstest switches to unprivileged users, who must reach the mount.
    for dir in [mount.src(), mount.mnt().parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pjdfstest.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(mount.mnt())
        .output()
        .expect("running scripts/pjdfstest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .chain(stderr.lines())
        .rfind(|l| l.starts_with("pjdfstest: "));
    eprintln!("{}: {}", mount.describe(), summary.unwrap_or("(no summary)"));
    assert!(
        out.status.success(),
        "pjdfstest failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        mount.daemon_log()
    );
}
