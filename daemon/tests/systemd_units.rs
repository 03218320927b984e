//! The systemd units of dist/systemd pass `systemd-analyze verify` (issue
//! 19), with nothing to warn about either.
//!
//! verify checks that each ExecStart binary exists, and the units name the
//! path scripts/setup.sh installs (/usr/local/bin/xfused), which a clean
//! clone lacks: the test verifies copies whose path is the binary under
//! test, and checks that setup.sh installs the path the units name.

mod common;

use std::path::Path;
use std::process::Command;

const UNITS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/systemd");
const SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/setup.sh");
/// Where the units expect xfused.
const INSTALLED_XFUSED: &str = "/usr/local/bin/xfused";

fn units() -> Vec<std::path::PathBuf> {
    let mut units: Vec<_> = std::fs::read_dir(UNITS_DIR)
        .unwrap_or_else(|e| panic!("reading {UNITS_DIR}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("service" | "mount")))
        .collect();
    units.sort();
    units
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        common::missing("systemd-analyze (Debian: systemd) is not installed");
        return;
    }
    let units = units();
    let names: Vec<_> = units
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "xfused-meta.service",
        "xfused-storage@.service",
        "mnt-xfused.mount",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {UNITS_DIR}: {names:?}"
        );
    }
    let copies = tempfile::tempdir().unwrap();
    let mut args = vec!["verify".to_owned()];
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        let copy = copies.path().join(unit.file_name().unwrap());
        std::fs::write(
            &copy,
            text.replace(INSTALLED_XFUSED, env!("CARGO_BIN_EXE_xfused")),
        )
        .unwrap();
        args.push(copy.display().to_string());
    }
    // An instance of the storage template too, as systemctl would start it.
    let instance = copies.path().join("xfused-storage@1.service");
    std::os::unix::fs::symlink("xfused-storage@.service", &instance).unwrap();
    args.push(instance.display().to_string());

    let out = Command::new("systemd-analyze")
        .args(&args)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("running systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze {args:?} failed:\n{stderr}");
    // Unknown keys and the like are only warnings: none wanted.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze {args:?} warned:\n{stderr}"
    );
}

#[test]
fn the_units_name_what_setup_installs_and_the_mount_type() {
    let setup = std::fs::read_to_string(SETUP).unwrap();
    assert!(
        setup.contains(INSTALLED_XFUSED),
        "scripts/setup.sh does not install {INSTALLED_XFUSED}, which the units run"
    );
    assert!(
        setup.contains("/sbin/mount.fuse.xfused"),
        "scripts/setup.sh does not install the mount helper"
    );
    for unit in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        for exec in text.lines().filter(|l| l.starts_with("ExecStart=")) {
            assert!(
                exec.starts_with(&format!("ExecStart={INSTALLED_XFUSED} ")),
                "{}: {exec}",
                unit.display()
            );
        }
        if unit.extension() == Some(std::ffi::OsStr::new("mount")) {
            let ty = format!("Type={}", common::FSTYPE);
            assert!(text.lines().any(|l| l == ty), "{}: no {ty}", unit.display());
        }
    }
    assert!(Path::new(UNITS_DIR).join("meta.env.example").exists());
}
