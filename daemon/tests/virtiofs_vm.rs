//! `xfused virtiofs` serving a real guest: QEMU (TCG) boots Debian's kernel
//! with a busybox initramfs (crate vm-tests), mounts virtio-fs from us and
//! runs the workload of vm-tests/guest/workload.sh from several processes;
//! the guest checks what the host wrote, the host checks what the guest
//! wrote.
//!
//! Needs root (PassthroughFs opens inodes by file handle), qemu-system-x86,
//! busybox-static, xz-utils and network access to Debian's mirror once (the
//! kernel package is cached); scripts/setup.sh --tests installs them. Where
//! they are missing the tests are recorded as skipped (see
//! `common::missing`), unless XFUSE_TEST_STRICT=1 (the test command sets
//! it), where that is a failure.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;
use vm_tests::{workload, Assets, GuestOutput, VmConfig};

const XFUSED: &str = env!("CARGO_BIN_EXE_xfused");

/// Whether this host can run the guest; if not, the test is recorded as
/// skipped (or fails, where the tools must be there) and must return.
fn able() -> bool {
    if std::env::var_os("XFUSE_TEST_TRANSPORT").is_some() {
        // Not a limitation: virtio does not use the host's FUSE transport,
        // so the suite's reruns on other transports would repeat these
        // tests unchanged. They run in the default pass.
        common::skip("virtio-fs does not depend on XFUSE_TEST_TRANSPORT; runs in the default pass");
        return false;
    }
    let why = if !rustix::process::geteuid().is_root() {
        Some("root (PassthroughFs opens inodes by file handle)".to_string())
    } else {
        let missing = vm_tests::missing_tools();
        (!missing.is_empty()).then(|| format!("{} (scripts/setup.sh --tests)", missing.join(", ")))
    };
    match why {
        Some(why) => {
            common::missing(&why);
            false
        }
        None => true,
    }
}

struct Backend {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Backend {
    fn start(dir: &Path, share: &Path, extra: &[&str]) -> Backend {
        let mut args: Vec<std::ffi::OsString> = vec!["--source".into(), share.into()];
        args.extend(extra.iter().map(Into::into));
        Backend::start_with(dir, &args)
    }

    /// `xfused virtiofs --socket DIR/vfs.sock --stats ARGS`.
    fn start_with(dir: &Path, args: &[std::ffi::OsString]) -> Backend {
        let socket = dir.join("vfs.sock");
        let log = dir.join("xfused.log");
        let child = Command::new(XFUSED)
            .arg("virtiofs")
            .arg("--socket")
            .arg(&socket)
            .args(["--stats"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting xfused virtiofs");
        let mut backend = Backend { child, log, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !backend.socket.exists() {
            if let Some(status) = backend.child.try_wait().unwrap() {
                panic!("xfused exited ({status}) before listening:\n{}", backend.log());
            }
            assert!(
                Instant::now() < deadline,
                "no socket after 10 s:\n{}",
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit by itself; its exit status must be 0.
    fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "xfused exited with {status}:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "xfused still running:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, Signal::TERM).unwrap();
        self.wait_exit();
        assert!(!self.socket.exists(), "the socket outlived SIGTERM");
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn guest(dir: &Path) -> (Assets, PathBuf) {
    let assets = Assets::prepare(&vm_tests::default_cache_dir()).expect("preparing the guest kernel");
    let initrd = dir.join("initrd.cpio");
    assets.initramfs(&initrd).expect("building the initramfs");
    (assets, initrd)
}

fn assert_workload_passed(out: &GuestOutput, share: &Path, config: &VmConfig, backend: &Backend) {
    let context = || {
        format!(
            "guest console:\n{}\n\nxfused log:\n{}",
            out.transcript(),
            backend.log()
        )
    };
    assert!(
        !out.timed_out,
        "the guest did not finish in {:?}\n{}",
        config.timeout,
        context()
    );
    assert!(
        out.failures().is_empty(),
        "the guest reported failures\n{}",
        context()
    );
    assert!(
        out.results().any(|l| l == "VMTEST_CHECK host-files ok"),
        "{}",
        context()
    );
    assert!(
        out.done(),
        "the guest did not reach the end of its workload\n{}",
        context()
    );
    let (top, sub) = workload::expected_counts(config.files);
    let counts = out.counts();
    assert_eq!(counts.len(), config.workers as usize, "{}", context());
    for (worker, t, s) in counts {
        assert_eq!(
            (t, s),
            (top, sub),
            "worker {worker} listed other entries than it made\n{}",
            context()
        );
    }
    let problems = workload::check_guest_files(share, config.files, config.workers).unwrap();
    assert!(
        problems.is_empty(),
        "the host sees other files than the guest wrote:\n{}\n{}",
        problems.join("\n"),
        context()
    );
}

/// A work directory with the guest's initramfs, and a shared directory
/// holding the host's files.
struct Scene {
    dir: TempDir,
    share: TempDir,
    assets: Assets,
    initrd: PathBuf,
}

impl Scene {
    /// `None`, after saying why, where this host cannot run the guest.
    fn set_up() -> Option<Scene> {
        if !able() {
            return None;
        }
        let dir = TempDir::new().unwrap();
        let share = TempDir::new().unwrap();
        let (assets, initrd) = guest(dir.path());
        workload::write_host_files(share.path()).unwrap();
        Some(Scene {
            dir,
            share,
            assets,
            initrd,
        })
    }
}

#[test]
fn vm_guest_workload_through_xfused_virtiofs() {
    let Some(Scene {
        dir,
        share,
        assets,
        initrd,
    }) = Scene::set_up()
    else {
        return;
    };
    let mut backend = Backend::start(dir.path(), share.path(), &[]);
    let config = VmConfig::new(&backend.socket);
    let out = vm_tests::boot(&assets, &initrd, &config).unwrap();
    assert_workload_passed(&out, share.path(), &config, &backend);
    for (phase, secs) in out.times() {
        eprintln!("guest {phase}: {secs:.3} s");
    }
    // Without --keep-listening the daemon exits once the VM is gone.
    backend.wait_exit();
    let log = backend.log();
    assert!(log.contains("guest FUSE session started"), "{log}");
    assert!(
        log.contains("(DESTROY)"),
        "the guest's unmount did not reach us:\n{log}"
    );
    assert!(
        log.contains("0 refused"),
        "a well-behaved guest had chains refused:\n{log}"
    );
}

#[test]
fn vm_guest_root_mapped_to_an_ordinary_host_user() {
    // The whole workload from a real guest kernel (its RELEASEs and
    // FORGETs, its own SETATTRs) with guest root translated to host uid
    // and gid 1000: it must run as before, and leave nothing owned by
    // anybody but 1000 on the host.
    let Some(Scene {
        dir,
        share,
        assets,
        initrd,
    }) = Scene::set_up()
    else {
        return;
    };
    let mut backend = Backend::start(
        dir.path(),
        share.path(),
        &[
            "--translate-uid",
            "map:0:1000:1",
            "--translate-gid",
            "map:0:1000:1",
        ],
    );
    let config = VmConfig::new(&backend.socket);
    let out = vm_tests::boot(&assets, &initrd, &config).unwrap();
    assert_workload_passed(&out, share.path(), &config, &backend);
    backend.wait_exit();
    let mut stack = vec![share.path().join("from-guest")];
    let mut seen = 0;
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (1000, 1000),
            "{} on the host",
            path.display()
        );
        seen += 1;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    assert!(seen > config.files as usize, "only {seen} entries checked");
}

#[test]
fn vm_killed_mid_workload_leaves_the_backend_serving_the_next_one() {
    let Some(Scene {
        dir,
        share,
        assets,
        initrd,
    }) = Scene::set_up()
    else {
        return;
    };
    // With a thread pool, so requests run off the queue thread.
    let mut backend = Backend::start(
        dir.path(),
        share.path(),
        &["--keep-listening", "--thread-pool", "2"],
    );

    // First VM: killed (QEMU gone, socket dropped) during its workload,
    // once the guest reports its create phase done.
    let mut config = VmConfig::new(&backend.socket);
    config.files = 300;
    config.kill_on_result = Some("VMTEST_TIME create".into());
    let out = vm_tests::boot(&assets, &initrd, &config).unwrap();
    assert!(
        out.killed_on_result && !out.done(),
        "the first VM was meant to be killed mid-workload:\n{}",
        out.transcript()
    );
    assert!(
        backend.child.try_wait().unwrap().is_none(),
        "xfused died with the VM:\n{}",
        backend.log()
    );

    // Second VM, same socket: a full (small) workload on a clean tree.
    std::fs::remove_dir_all(share.path().join("from-guest")).ok();
    let mut config = VmConfig::new(&backend.socket);
    config.files = 20;
    config.workers = 2;
    let out = vm_tests::boot(&assets, &initrd, &config).unwrap();
    assert_workload_passed(&out, share.path(), &config, &backend);
    assert!(
        backend.child.try_wait().unwrap().is_none(),
        "--keep-listening: xfused exited:\n{}",
        backend.log()
    );
    backend.terminate();
    let log = backend.log();
    assert!(log.contains("2 connections"), "{log}");
}

/// `xfused mount` of the embedded namespace in `meta_dir`, data in `data`,
/// at `mountpoint`, until `stop`.
struct HostMount {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl HostMount {
    fn start(meta_dir: &Path, data: &Path, mountpoint: &Path, log: PathBuf) -> HostMount {
        let child = Command::new(XFUSED)
            .arg("mount")
            .arg("--meta")
            .arg(format!("embedded:{}", meta_dir.display()))
            .arg("--data")
            .arg(data)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting xfused mount");
        let mut m = HostMount {
            child,
            mountpoint: mountpoint.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let fs_type = common::mount_fstype(mountpoint);
            if fs_type.as_deref() == Some("fuse.xfused") {
                return m;
            }
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!(
                    "xfused mount exited ({status}):\n{}",
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no mount after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        kill_process(Pid::from_child(&self.child), Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "xfused mount of {} exited {status}:\n{}",
            self.mountpoint.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

#[test]
fn vm_guest_workload_on_the_distributed_filesystem() {
    if !able() {
        return;
    }
    // One namespace (embedded engine) and one data directory, used in turn
    // by a host mount, the VM, and the host mount again: the host writes
    // through FUSE, the guest reads and writes through virtio-fs, the host
    // checks through FUSE. (The embedded engine takes one process at a time.)
    let dir = TempDir::new().unwrap();
    let store = TempDir::new().unwrap();
    let (meta_dir, data) = (store.path().join("meta"), store.path().join("data"));
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let (assets, initrd) = guest(dir.path());

    let host = HostMount::start(&meta_dir, &data, &mountpoint, dir.path().join("mount1.log"));
    workload::write_host_files(&mountpoint).unwrap();
    host.stop();

    let meta = format!("embedded:{}", meta_dir.display());
    let mut backend = Backend::start_with(
        dir.path(),
        &["--meta".into(), meta.into(), "--data".into(), data.clone().into()],
    );
    let config = VmConfig::new(&backend.socket);
    let out = vm_tests::boot(&assets, &initrd, &config).unwrap();
    backend.wait_exit();

    let host = HostMount::start(&meta_dir, &data, &mountpoint, dir.path().join("mount2.log"));
    assert_workload_passed(&out, &mountpoint, &config, &backend);
    host.stop();
}
