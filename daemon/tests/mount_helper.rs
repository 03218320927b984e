//! Deploying like other filesystems (issues 19 and 21): `mount -t
//! fuse.xfused URL MNT -o OPTIONS` through the helper /sbin/mount.fuse.xfused,
//! `umount MNT`, `xfused mount --background`, and the standard mount options
//! on `xfused passthrough` and `xfused mount`.
//!
//! The helper is the binary under test: each test that runs mount(8) links
//! /sbin/mount.fuse.xfused to it for its duration (one test at a time) and
//! puts back whatever was there before. The test process is a child
//! subreaper, so a daemon left in the background by the helper becomes its
//! child and its exit status can be checked after `umount`.

mod common;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, Once};

use rustix::process::{getpid, set_child_subreaper, waitpid, Pid, WaitOptions};

const HELPER: &str = "/sbin/mount.fuse.xfused";
const XFUSED: &str = env!("CARGO_BIN_EXE_xfused");

/// One mount(8) test at a time: they share the helper's path.
static HELPER_LOCK: Mutex<()> = Mutex::new(());

/// /sbin/mount.fuse.xfused pointing at the binary under test until dropped,
/// then whatever was there before (a link to an installed xfused, or
/// nothing).
struct Helper {
    saved: Option<PathBuf>,
    _lock: MutexGuard<'static, ()>,
}

impl Helper {
    fn install() -> Helper {
        let lock = HELPER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let saved = std::fs::symlink_metadata(HELPER).ok().map(|_| {
            let saved = PathBuf::from(format!(
                "/sbin/.mount.fuse.xfused.saved-by-test.{}",
                std::process::id()
            ));
            std::fs::rename(HELPER, &saved).unwrap_or_else(|e| panic!("moving {HELPER} aside: {e}"));
            saved
        });
        std::os::unix::fs::symlink(XFUSED, HELPER)
            .unwrap_or_else(|e| panic!("linking {HELPER} to {XFUSED}: {e}"));
        Helper { saved, _lock: lock }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(saved) = &self.saved {
            if let Err(e) = std::fs::rename(saved, HELPER) {
                eprintln!("putting {HELPER} back from {}: {e}", saved.display());
            }
        }
    }
}

/// Makes this process the reaper of its orphaned descendants (once).
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| set_child_subreaper(Some(getpid())).expect("prctl(PR_SET_CHILD_SUBREAPER)"));
}

/// The per-mount options and the source of the topmost mount at `mnt`,
/// from /proc/self/mountinfo.
fn mountinfo_at(mnt: &Path) -> Option<(Vec<String>, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    let mnt = mnt.to_str().expect("a UTF-8 mountpoint");
    text.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.get(4) != Some(&mnt) {
            return None;
        }
        let options = fields.get(5)?.split(',').map(str::to_owned).collect();
        let mut right = right.split(' ');
        let fs_type = right.next()?.to_owned();
        let source = right.next()?.to_owned();
        Some((options, fs_type, source))
    })
}

/// The process whose parent is this one and whose command line names
/// `mnt`: the daemon the helper left in the background.
fn daemon_of(mnt: &Path) -> Pid {
    let me = std::process::id().to_string();
    let mnt = mnt.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(str::trim);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if ppid == Some(me.as_str()) && cmdline.contains(mnt) {
            return Pid::from_raw(pid).unwrap();
        }
    }
    panic!("no child of this process serves {mnt}: the daemon was not reparented here");
}

/// Waits for the daemon `pid` (our child) to exit; its exit code.
fn wait_daemon_exit(pid: Pid, log: &Path) -> i32 {
    let status = common::wait_for(
        "the daemon to exit after umount",
        common::STOP_TIMEOUT,
        || match waitpid(Some(pid), WaitOptions::NOHANG).expect("waitpid") {
            Some((_, status)) => Ok(status),
            None => Err(format!("pid {pid:?} still runs; log:\n{}", read_log(log))),
        },
    );
    status.exit_status().unwrap_or_else(|| {
        panic!(
            "the daemon was killed by signal {:?}\n{}",
            status.terminating_signal(),
            read_log(log)
        )
    })
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_else(|e| format!("(no log at {}: {e})", log.display()))
}

fn mount_cmd(url: &str, mnt: &Path, options: &str) -> Output {
    Command::new("mount")
        .args(["-t", "fuse.xfused", url])
        .arg(mnt)
        .args(["-o", options])
        .stdin(Stdio::null())
        .output()
        .expect("running mount(8)")
}

/// `mount -t fuse.xfused URL MNT -o OPTIONS`, which must succeed.
#[track_caller]
fn mount_ok(url: &str, mnt: &Path, options: &str, log: &Path) {
    let out = mount_cmd(url, mnt, options);
    assert!(
        out.status.success(),
        "mount -t fuse.xfused {url} -o {options}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        read_log(log)
    );
}

/// Waits for the backgrounded daemon `pid` and checks it exited 0.
#[track_caller]
fn assert_exits_0(pid: Pid, log: &Path) {
    assert_eq!(wait_daemon_exit(pid, log), 0, "daemon exit\n{}", read_log(log));
}

fn umount_cmd(mnt: &Path) {
    let out = Command::new("umount")
        .arg(mnt)
        .output()
        .expect("running umount(8)");
    assert!(
        out.status.success(),
        "umount {}: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temporary DATA directory, mountpoint and log file, with the mount
/// detached on drop should a test fail while mounted.
struct Place {
    root: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        let root = tempfile::Builder::new()
            .prefix("xfuse-mount-helper.")
            .tempdir()
            .unwrap();
        std::fs::create_dir(root.path().join("data")).unwrap();
        std::fs::create_dir(root.path().join("mnt")).unwrap();
        Place { root }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.path().canonicalize().unwrap().join(name)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mnt = self.path("mnt");
        if mountinfo_at(&mnt).is_some() {
            let _ = kmod_shim::umount(&mnt, kmod_shim::UnmountMode::Lazy);
        }
    }
}

fn have_mount_tools() -> bool {
    for tool in ["mount", "umount"] {
        if Command::new(tool).arg("--version").output().is_err() {
            common::missing(&format!("{tool} (util-linux) is not installed"));
            return false;
        }
    }
    true
}

fn assert_has(options: &[String], wanted: &[&str], absent: &[&str]) {
    for w in wanted {
        assert!(
            options.iter().any(|o| o == w),
            "mount options {options:?} lack {w}"
        );
    }
    for a in absent {
        assert!(
            !options.iter().any(|o| o == a),
            "mount options {options:?} have {a}"
        );
    }
}

/// Runs `path` and returns how exec went.
fn exec(path: &Path) -> std::io::Result<std::process::ExitStatus> {
    Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
}

#[test]
fn mount_t_fuse_xfused_takes_fstab_options_and_umount_stops_the_daemon() {
    if !have_mount_tools() {
        return;
    }
    become_subreaper();
    let place = Place::new();
    let (data, mnt, log) = (place.path("data"), place.path("mnt"), place.path("daemon.log"));
    let url = format!("embedded:{}", data.join("meta").display());
    let _helper = Helper::install();

    // As an fstab line would have it: standard options, options only
    // mount(8) reads, and long flags of `xfused mount`.
    let options = format!(
        "rw,noatime,noexec,nosuid,nodev,_netdev,nofail,x-systemd.device-timeout=5,transport=dev,\
         attr_timeout_ms=500,data={},log_file={}",
        data.display(),
        log.display()
    );
    mount_ok(&url, &mnt, &options, &log);
    // Ready when mount(8) returns: no waiting.
    let (mount_options, fs_type, source) = mountinfo_at(&mnt).expect("mounted when mount(8) returned");
    assert_eq!(fs_type, common::FSTYPE);
    assert_eq!(source, url);
    assert_has(
        &mount_options,
        &["rw", "noatime", "noexec", "nosuid", "nodev"],
        &["relatime"],
    );
    let daemon = daemon_of(&mnt);
    assert!(
        read_log(&log).contains("(transport dev)"),
        "transport=dev not taken:\n{}",
        read_log(&log)
    );
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600,
        "the log file is private"
    );

    // noexec: a script with every execute bit is refused.
    let script = mnt.join("script");
    {
        let mut f = std::fs::File::create(&script).unwrap();
        f.write_all(b"#!/bin/sh\nexit 0\n").unwrap();
    }
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = exec(&script).expect_err("exec on a noexec mount");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EACCES),
        "exec on a noexec mount: {e}"
    );

    umount_cmd(&mnt);
    assert!(mountinfo_at(&mnt).is_none(), "still mounted after umount");
    assert_exits_0(daemon, &log);

    // Again, read-only with strict atime, on the same namespace: the
    // script is there, may run (exec), and nothing may be written.
    let options = format!(
        "ro,strictatime,exec,data={},log_file={}",
        data.display(),
        log.display()
    );
    mount_ok(&url, &mnt, &options, &log);
    let (mount_options, _, _) = mountinfo_at(&mnt).expect("mounted");
    assert_has(&mount_options, &["ro"], &["noatime", "relatime", "noexec", "rw"]);
    let daemon = daemon_of(&mnt);
    assert!(exec(&script).expect("exec on an exec mount").success());
    common::assert_errno(
        std::fs::File::create(mnt.join("new")),
        libc::EROFS,
        "create on ro",
    );
    common::assert_errno(
        std::fs::OpenOptions::new().append(true).open(&script),
        libc::EROFS,
        "open for writing on ro",
    );
    umount_cmd(&mnt);
    assert_exits_0(daemon, &log);
}

#[test]
fn bad_options_and_failed_mounts_are_refused_with_the_reason() {
    if !have_mount_tools() {
        return;
    }
    become_subreaper();
    let place = Place::new();
    let (data, mnt, log) = (place.path("data"), place.path("mnt"), place.path("daemon.log"));
    let url = format!("embedded:{}", data.join("meta").display());
    let _helper = Helper::install();
    let data_opt = format!("data={}", data.display());

    for (options, named) in [
        (format!("rw,bogus_opt,{data_opt}"), "bogus_opt"),
        (format!("transport=sideways,{data_opt}"), "transport"),
        (format!("attr_timeout_ms,{data_opt}"), "attr_timeout_ms"),
        (format!("meta=tcp://127.0.0.1:1,{data_opt}"), "meta"),
    ] {
        let out = mount_cmd(&url, &mnt, &options);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "mount -o {options} succeeded");
        assert!(
            stderr.contains(named),
            "mount -o {options}: the message does not name {named}: {stderr}"
        );
        assert!(mountinfo_at(&mnt).is_none(), "mount -o {options} left a mount");
    }

    // A mount that fails in the daemon: its error comes back through the
    // helper, which exits non-zero.
    let out = mount_cmd(
        "nosuchscheme://x",
        &mnt,
        &format!("{data_opt},log_file={}", log.display()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mount of nosuchscheme:// succeeded");
    assert!(
        stderr.contains("nosuchscheme"),
        "the daemon's error is not shown: {stderr}"
    );
    assert!(mountinfo_at(&mnt).is_none());
}

#[test]
fn xfused_mount_background_returns_once_serving() {
    become_subreaper();
    let place = Place::new();
    let (data, mnt, log) = (place.path("data"), place.path("mnt"), place.path("daemon.log"));
    let out = Command::new(XFUSED)
        .args([
            "mount",
            "--background",
            "--transport",
            &common::transport(),
            "--data",
        ])
        .arg(&data)
        .arg("--log-file")
        .arg(&log)
        .args(["-o", "noatime", "--noexec"])
        .arg(&mnt)
        .stdin(Stdio::null())
        .output()
        .expect("running xfused mount --background");
    assert!(
        out.status.success(),
        "xfused mount --background: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        read_log(&log)
    );
    let (options, fs_type, _) = mountinfo_at(&mnt).expect("mounted when the command returned");
    assert_eq!(fs_type, common::FSTYPE);
    assert_has(&options, &["noatime", "noexec", "nosuid", "nodev"], &[]);
    std::fs::write(mnt.join("f"), b"served").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"served");
    let daemon = daemon_of(&mnt);
    kmod_shim::umount(&mnt, kmod_shim::UnmountMode::Normal).expect("umount2");
    assert_exits_0(daemon, &log);
    assert!(
        read_log(&log).contains("was unmounted; exiting"),
        "{}",
        read_log(&log)
    );
}

#[test]
fn passthrough_honours_the_standard_options() {
    // Read-only: writes fail with EROFS.
    let m = common::Mount::start(&["--read-only"]);
    std::fs::write(m.src().join("f"), b"x").unwrap();
    let (options, _, _) = mountinfo_at(m.mnt()).unwrap();
    assert_has(&options, &["ro", "nosuid", "nodev", "relatime"], &["rw"]);
    assert_eq!(std::fs::read(m.mnt().join("f")).unwrap(), b"x");
    common::assert_errno(
        std::fs::write(m.mnt().join("f"), b"y"),
        libc::EROFS,
        "write on ro",
    );
    common::assert_errno(std::fs::create_dir(m.mnt().join("d")), libc::EROFS, "mkdir on ro");
    assert!(m.stop().success());

    // -o noexec (and the options after it win over the ones before).
    let m = common::Mount::start(&["-o", "exec,noexec,ro,rw,strictatime"]);
    let script = m.src().join("script");
    std::fs::write(&script, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (options, _, _) = mountinfo_at(m.mnt()).unwrap();
    assert_has(&options, &["rw", "noexec"], &["relatime", "noatime"]);
    assert!(
        exec(&script).unwrap().success(),
        "the script runs from the source"
    );
    let e = exec(&m.mnt().join("script")).expect_err("exec on noexec");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "exec on noexec: {e}");
    assert!(m.stop().success());

    // suid and dev, for root, drop the safe defaults.
    if kmod_shim::creds::effective_uid() == 0 {
        let m = common::Mount::start(&["--suid", "-o", "dev"]);
        let (options, _, _) = mountinfo_at(m.mnt()).unwrap();
        assert_has(&options, &[], &["nosuid", "nodev"]);
        assert!(m.stop().success());
    }
}
