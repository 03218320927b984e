//! vm-tests: boot a real guest against a virtio-fs backend and check what
//! crosses it.
//!
//! The guest is made from registry packages only: Debian's
//! `linux-image-amd64` kernel (virtio, FUSE and virtio-fs are modules
//! there) and `busybox-static` for an initramfs whose /init loads the
//! modules, mounts the virtio-fs tag, runs [`GUEST_WORKLOAD`] and prints
//! `VMTEST_` lines on the serial console. QEMU runs it under TCG (KVM is
//! not usable on our machines), as a `microvm` booting the uncompressed
//! kernel through its PVH entry: about 2.5 s to a shell.
//!
//! - [`Assets::prepare`] fetches and unpacks the kernel once into a cache
//!   directory;
//! - [`Assets::initramfs`] builds the initramfs;
//! - [`boot`] runs QEMU against a vhost-user socket and returns what the
//!   guest printed ([`GuestOutput`]);
//! - [`workload`] writes the host's side of the workload and checks the
//!   guest's side afterwards;
//! - [`procfs`] reads a backend's CPU time and memory;
//! - `frontend` (feature `frontend`): the same virtio-fs conversation
//!   without a VM — a vhost-user frontend in this process, replaying the
//!   workload's metadata operations, as the test double of the layer.

#![forbid(unsafe_code)]

pub mod cpio;
#[cfg(feature = "frontend")]
pub mod frontend;
pub mod procfs;
pub mod workload;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The guest's /init.
pub const GUEST_INIT: &str = include_str!("../guest/init.sh");
/// The workload /init runs on the mount.
pub const GUEST_WORKLOAD: &str = include_str!("../guest/workload.sh");

/// Modules /init loads, in dependency order (read off the `depends=` of
/// Debian 6.1's .ko files).
const MODULES: [&str; 8] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "drivers/virtio/virtio_mmio",
    "fs/fuse/fuse",
    "fs/fuse/virtiofs",
];

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// busybox-static's binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Where [`Assets::prepare`] keeps the kernel: `$XFUSE_VM_CACHE`, or
/// /var/cache/xfuse/vm.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XFUSE_VM_CACHE").map_or_else(|| PathBuf::from("/var/cache/xfuse/vm"), PathBuf::from)
}

/// What is missing on this host to boot a guest, if anything.
pub fn missing_tools() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (tool, package) in [
        (QEMU, "qemu-system-x86"),
        ("xz", "xz-utils"),
        ("dpkg-deb", "dpkg"),
    ] {
        if !on_path(tool) {
            missing.push(package);
        }
    }
    if !Path::new(BUSYBOX).exists() {
        missing.push("busybox-static");
    }
    missing
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// A guest kernel and its modules, unpacked.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Kernel release, e.g. 6.1.0-56-amd64.
    pub release: String,
    /// The uncompressed kernel (an ELF with a PVH entry note).
    pub vmlinux: PathBuf,
    /// lib/modules/RELEASE/kernel of the unpacked package.
    pub modules: PathBuf,
}

impl Assets {
    /// Fetches (`apt-get download`, once) and unpacks the kernel that
    /// Debian's `linux-image-amd64` depends on, under `cache`. Safe to call
    /// from several processes at once (a lock file serializes them).
    pub fn prepare(cache: &Path) -> anyhow::Result<Assets> {
        fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        let lock = fs::File::create(cache.join(".lock")).context("creating the cache lock")?;
        lock.lock().context("locking the cache")?;

        let package = kernel_package(cache)?;
        let unpacked = cache.join(&package);
        let stamp = unpacked.join(".unpacked");
        if !stamp.exists() {
            let deb = find_deb(cache, &package)?;
            let deb = match deb {
                Some(deb) => deb,
                None => {
                    run(Command::new("apt-get")
                        .args(["download", &package])
                        .current_dir(cache))
                    .with_context(|| format!("downloading {package} (apt-get download)"))?;
                    find_deb(cache, &package)?
                        .with_context(|| format!("apt-get download left no {package}_*.deb"))?
                }
            };
            if unpacked.exists() {
                fs::remove_dir_all(&unpacked)?;
            }
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))
                .with_context(|| format!("unpacking {}", deb.display()))?;
            fs::write(&stamp, b"")?;
        }
        let release = package.trim_start_matches("linux-image-").to_string();
        let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{release}"));
        let vmlinux = cache.join(format!("vmlinux-{release}"));
        if !vmlinux.exists() {
            extract_vmlinux(&vmlinuz, &vmlinux)?;
        }
        let modules = unpacked.join("lib/modules").join(&release).join("kernel");
        if !modules.is_dir() {
            bail!("{} has no modules at {}", package, modules.display());
        }
        Ok(Assets {
            release,
            vmlinux,
            modules,
        })
    }

    /// Writes the initramfs: busybox, the modules, /init and /workload.sh.
    pub fn initramfs(&self, out: &Path) -> anyhow::Result<()> {
        let mut a = cpio::Archive::new();
        for dir in ["bin", "lib", "lib/modules", "proc", "sys", "dev", "mnt", "tmp"] {
            a.dir(dir)?;
        }
        let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (busybox-static)"))?;
        a.file("bin/busybox", 0o755, &busybox)?;
        for module in MODULES {
            let name = Path::new(module)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(module);
            let plain = self.modules.join(format!("{module}.ko"));
            let bytes = if plain.exists() {
                fs::read(&plain)?
            } else {
                let xz = self.modules.join(format!("{module}.ko.xz"));
                let out = Command::new("xz")
                    .arg("-dc")
                    .arg(&xz)
                    .output()
                    .with_context(|| format!("running xz on {}", xz.display()))?;
                if !out.status.success() {
                    bail!(
                        "module {module} not found as .ko or .ko.xz under {}",
                        self.modules.display()
                    );
                }
                out.stdout
            };
            a.file(&format!("lib/modules/{name}.ko"), 0o644, &bytes)?;
        }
        a.file("init", 0o755, GUEST_INIT.as_bytes())?;
        a.file("workload.sh", 0o755, GUEST_WORKLOAD.as_bytes())?;
        fs::write(out, a.finish()?).with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }
}

/// The kernel package `linux-image-amd64` depends on (e.g.
/// `linux-image-6.1.0-56-amd64`), or the one already in `cache` when apt
/// cannot say.
fn kernel_package(cache: &Path) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        let found = text.lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends: ")?;
            dep.strip_prefix("linux-image-")
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                .map(|_| dep.to_string())
        });
        if let Some(package) = found {
            return Ok(package);
        }
    }
    // Offline: whatever was unpacked before.
    for entry in fs::read_dir(cache)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("linux-image-") && cache.join(&name).join(".unpacked").exists() {
            return Ok(name);
        }
    }
    bail!("cannot tell which kernel linux-image-amd64 depends on (apt-cache depends failed; run apt-get update)")
}

fn find_deb(cache: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in fs::read_dir(cache)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The bzImage carries the kernel as an xz stream; QEMU boots the
/// decompressed ELF through PVH without running the (slow under TCG)
/// decompressor.
fn extract_vmlinux(vmlinuz: &Path, vmlinux: &Path) -> anyhow::Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let magic = b"\xfd7zXZ\x00";
    let at = image
        .windows(magic.len())
        .position(|w| w == magic)
        .with_context(|| format!("{} holds no xz stream", vmlinuz.display()))?;
    let tmp = vmlinux.with_extension("tmp");
    let out = fs::File::create(&tmp)?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running xz (xz-utils)")?;
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let feed = image[at..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&feed));
    let status = xz.wait()?;
    // xz stops reading after the stream: a broken pipe here is expected.
    let _ = writer.join();
    if !status.success() {
        bail!("xz failed to decompress the kernel in {}", vmlinuz.display());
    }
    fs::rename(&tmp, vmlinux)?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One guest boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// The virtio-fs tag.
    pub tag: String,
    /// Files per worker in the workload.
    pub files: u32,
    /// Worker processes in the workload.
    pub workers: u32,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Killed after this long.
    pub timeout: Duration,
    /// Killed as soon as the guest prints a result line starting with this
    /// (`VMTEST_TIME create`: mid-workload), to test a guest that vanishes.
    pub kill_on_result: Option<String>,
}

impl VmConfig {
    /// Defaults for a socket: tag `xfuse`, 100 files × 4 workers, 512 MiB,
    /// one CPU, 180 s.
    pub fn new(socket: &Path) -> VmConfig {
        VmConfig {
            socket: socket.to_owned(),
            tag: "xfuse".into(),
            files: 100,
            workers: 4,
            memory_mib: 512,
            cpus: 1,
            timeout: Duration::from_secs(180),
            kill_on_result: None,
        }
    }
}

/// What the guest printed.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Every console line.
    pub lines: Vec<String>,
    /// Wall time from starting QEMU to its exit.
    pub wall: Duration,
    /// QEMU was killed at the timeout.
    pub timed_out: bool,
    /// QEMU was killed on [`VmConfig::kill_on_result`].
    pub killed_on_result: bool,
}

impl GuestOutput {
    /// The `VMTEST_` lines.
    pub fn results(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter_map(|l| l.find("VMTEST_").map(|at| &l[at..]))
    }

    /// The guest ran the workload to its end and unmounted.
    pub fn done(&self) -> bool {
        self.results().any(|l| l == "VMTEST_DONE")
    }

    /// Failures the guest reported.
    pub fn failures(&self) -> Vec<&str> {
        self.results().filter(|l| l.starts_with("VMTEST_FAIL")).collect()
    }

    /// Seconds per workload phase, in order.
    pub fn times(&self) -> Vec<(String, f64)> {
        self.results()
            .filter_map(|l| {
                let mut it = l.strip_prefix("VMTEST_TIME ")?.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.parse().ok()?))
            })
            .collect()
    }

    /// `(worker, top, sub)` entry counts the guest listed.
    pub fn counts(&self) -> Vec<(u32, usize, usize)> {
        self.results()
            .filter_map(|l| {
                let mut it = l.strip_prefix("VMTEST_COUNT w")?.split_whitespace();
                let worker = it.next()?.parse().ok()?;
                let top = it.next()?.strip_prefix("top=")?.parse().ok()?;
                let sub = it.next()?.strip_prefix("sub=")?.parse().ok()?;
                Some((worker, top, sub))
            })
            .collect()
    }

    /// The console, for a failure message.
    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }
}

/// The host's TSC rate in kHz. A microvm has no HPET or PM timer, and under
/// TCG on a loaded host the kernel's PIT calibration of the TSC fails now
/// and then, after which it hangs; `tsc_early_khz` skips the calibration.
fn tsc_khz() -> Option<u64> {
    let parse_mhz = |s: &str| -> Option<u64> {
        let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), "0"));
        let frac = format!("{frac:0<3}");
        Some(int.parse::<u64>().ok()? * 1000 + frac[..3].parse::<u64>().ok()?)
    };
    if let Ok(out) = Command::new("dmesg").output() {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(khz) = text.lines().find_map(|l| {
            l.split("tsc: Detected ")
                .nth(1)?
                .split(" MHz")
                .next()
                .and_then(parse_mhz)
        }) {
            return Some(khz);
        }
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1).and_then(parse_mhz))
}

/// Boots the guest with `initrd` against the backend listening on
/// `config.socket`, and waits for it to power off (or the timeout).
pub fn boot(assets: &Assets, initrd: &Path, config: &VmConfig) -> anyhow::Result<GuestOutput> {
    let mem = format!("{}M", config.memory_mib);
    let mut append = format!(
        "console=ttyS0 panic=-1 loglevel=4 reboot=t vmtest.tag={} vmtest.n={} vmtest.workers={}",
        config.tag, config.files, config.workers
    );
    if let Some(khz) = tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-accel",
        "tcg",
        "-machine",
        "microvm",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
    ])
    .args(["-serial", "stdio"])
    .args(["-m", &mem, "-smp", &config.cpus.to_string()])
    .args([
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-numa",
        "node,memdev=mem",
    ])
    .arg("-chardev")
    .arg(format!("socket,id=vfs,path={}", config.socket.display()))
    .args([
        "-device",
        &format!("vhost-user-fs-device,chardev=vfs,tag={}", config.tag),
    ])
    .arg("-kernel")
    .arg(&assets.vmlinux)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &append])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {QEMU} (qemu-system-x86)"))?;
    // Set by the console reader when the guest prints the kill marker.
    let marker_seen = Arc::new(AtomicBool::new(false));
    let collect = |pipe: Box<dyn Read + Send>, marker: Option<String>| {
        let seen = marker_seen.clone();
        std::thread::spawn(move || {
            BufReader::new(pipe)
                .split(b'\n')
                .map_while(Result::ok)
                .map(|l| String::from_utf8_lossy(&l).trim_end_matches('\r').to_string())
                .inspect(|l| {
                    let result = l.find("VMTEST_").map(|at| &l[at..]);
                    if let (Some(m), Some(r)) = (&marker, result) {
                        if r.starts_with(m.as_str()) {
                            seen.store(true, Ordering::SeqCst);
                        }
                    }
                })
                .collect::<Vec<_>>()
        })
    };
    let stdout = collect(
        Box::new(child.stdout.take().context("qemu stdout")?),
        config.kill_on_result.clone(),
    );
    let stderr = collect(Box::new(child.stderr.take().context("qemu stderr")?), None);
    let mut timed_out = false;
    let mut killed_on_result = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if marker_seen.load(Ordering::SeqCst) {
            killed_on_result = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if start.elapsed() > config.timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed();
    let mut lines = stdout.join().unwrap_or_default();
    lines.extend(
        stderr
            .join()
            .unwrap_or_default()
            .into_iter()
            .map(|l| format!("qemu: {l}")),
    );
    Ok(GuestOutput {
        lines,
        wall,
        timed_out,
        killed_on_result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(lines: &[&str]) -> GuestOutput {
        GuestOutput {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            wall: Duration::ZERO,
            timed_out: false,
            killed_on_result: false,
        }
    }

    #[test]
    fn guest_lines_are_parsed() {
        let out = output(&[
            "[    1.2] noise",
            "VMTEST_MOUNTED xfuse",
            "VMTEST_TIME create 1.250",
            "VMTEST_COUNT w2 top=75 sub=40",
            "VMTEST_FAIL lookup /mnt/x",
            "VMTEST_TIME bad",
            "VMTEST_DONE",
        ]);
        assert!(out.done());
        assert_eq!(out.failures(), vec!["VMTEST_FAIL lookup /mnt/x"]);
        assert_eq!(out.times(), vec![("create".to_string(), 1.25)]);
        assert_eq!(out.counts(), vec![(2, 75, 40)]);
        assert!(!output(&["VMTEST_DONE_NOT"]).done());
    }

    #[test]
    fn guest_scripts_are_posix_shell() {
        // busybox sh is what runs them; `sh -n` catches syntax errors here.
        for (name, script) in [("init.sh", GUEST_INIT), ("workload.sh", GUEST_WORKLOAD)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(name);
            fs::write(&path, script).unwrap();
            let status = Command::new("sh").arg("-n").arg(&path).status().unwrap();
            assert!(status.success(), "{name} has syntax errors");
        }
    }
}
