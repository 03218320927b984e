//! Set-user-ID and set-group-ID bits after a file is modified, one test per
//! xfstests case that found xfused wrong: generic/193 (truncate and write
//! by a non-owner), generic/355 (`O_DIRECT` write), generic/683
//! (`fallocate`) and generic/684 (punch hole).
//!
//! Nothing is hard-coded: every case runs twice, by the same user with the
//! same groups, on a file prepared the same way — once in a directory of
//! the native filesystem the tests run on, once on the mount — and the mode
//! `stat` shows afterwards must be the same. The native run is the kernel's
//! own rule (Linux's `setattr_should_drop_suidgid()`), whatever its version.
//!
//! The mode is read with coreutils `stat`, as xfstests does: it asks the
//! kernel for the mode only, so a mode the kernel still caches from before
//! the operation shows too.
//!
//! Users are switched with `setpriv`, as in `permissions.rs`: besides the
//! uid and gid it sets supplementary groups, which decide whether a
//! set-group-ID bit without group-execute stays.
//!
//! `xfused mount` serves FALLOCATE, so its generic/683 and generic/684
//! cases must run: an unsupported mode there fails the test. On a
//! passthrough mount the source directory's filesystem decides, and one
//! without fallocate records a skip.

mod common;

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::Mount;

/// An unprivileged user (`nobody`).
const USER: u32 = 65534;
/// A group the user is in only as a supplementary group.
const CREW: u32 = 4300;
/// A group the user is not in.
const OTHERS: u32 = 4301;

/// Who runs an operation.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// Root, with every capability (`CAP_FSETID` among them).
    Root,
    /// [`USER`] with primary group [`USER`] and supplementary group [`CREW`].
    User,
}

impl Who {
    fn command(self, script: &str) -> Command {
        let mut cmd = match self {
            Who::Root => Command::new("sh"),
            Who::User => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={USER}"),
                    &format!("--regid={USER}"),
                    &format!("--groups={CREW}"),
                    "sh",
                ]);
                c
            }
        };
        cmd.args(["-c", script])
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null());
        cmd
    }
}

/// What is done to the file `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A buffered write of one byte, in place.
    Write,
    /// `truncate(1)`: open and ftruncate.
    Truncate,
    /// `open(O_TRUNC)` by the shell's `>`.
    OpenTrunc,
    /// A 4 KiB `O_DIRECT` write, in place.
    DirectWrite,
    /// `fallocate` past the end.
    Fallocate,
    /// `fallocate --punch-hole` of the first 4 KiB.
    PunchHole,
}

impl Op {
    fn script(self) -> &'static str {
        match self {
            Op::Write => "printf x | dd of=f bs=1 seek=10 conv=notrunc status=none",
            Op::Truncate => "truncate -s 100 f",
            Op::OpenTrunc => ": > f",
            Op::DirectWrite => "dd if=/dev/zero of=f bs=4096 count=1 oflag=direct conv=notrunc status=none",
            Op::Fallocate => "fallocate -l 65536 f",
            Op::PunchHole => "fallocate --punch-hole --offset 0 --length 4096 f",
        }
    }
}

/// One run: `who` does `op` to a 16 KiB file `owner:group` with `mode`.
#[derive(Debug, Clone, Copy)]
struct Case {
    op: Op,
    who: Who,
    owner: u32,
    group: u32,
    mode: u32,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} by {:?} of a {:04o} file {}:{}",
            self.op, self.who, self.mode, self.owner, self.group
        )
    }
}

/// What `stat` shows of the file's mode after the case ran in `dir`, or
/// the operation's error.
fn mode_after(dir: &Path, case: &Case) -> Result<u32, String> {
    let f = dir.join("f");
    let _ = std::fs::remove_file(&f);
    std::fs::write(&f, vec![7u8; 16 << 10]).unwrap_or_else(|e| panic!("writing {}: {e}", f.display()));
    chown(&f, Some(case.owner), Some(case.group)).unwrap_or_else(|e| panic!("chown {}: {e}", f.display()));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(case.mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", f.display()));
    let out = case
        .who
        .command(case.op.script())
        .current_dir(dir)
        .output()
        .expect("running the operation");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let stat = common::run(Command::new("stat").args(["-c", "%a"]).arg(&f));
    let text = String::from_utf8_lossy(&stat.stdout);
    u32::from_str_radix(text.trim(), 8).map_err(|e| format!("stat printed {text:?}: {e}"))
}

/// A native directory everybody may enter, as a reference.
fn native_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("xfuse-suid-native.")
        .tempdir()
        .expect("creating the reference directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Lets the unprivileged user reach the mount's root.
fn open_up(mount: &Mount) {
    for dir in [mount.mnt().parent().unwrap(), mount.mnt()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    }
}

/// How a set of cases went on the mount.
enum Outcome {
    /// Every case gave the native mode.
    Same,
    /// The mount refused the operation as unsupported (no FALLOCATE).
    Unsupported(String),
}

/// Runs every case natively and on `mount`; panics with a table of the
/// cases whose mode differs. At least one case must change a mode natively
/// (else the test could not fail).
fn compare(mount: &Mount, cases: &[Case]) -> Outcome {
    open_up(mount);
    let native = native_dir();
    let mut differing = Vec::new();
    let mut changed_natively = 0;
    for case in cases {
        let want = mode_after(native.path(), case)
            .unwrap_or_else(|e| panic!("{case} failed on the native filesystem: {e}"));
        if want != case.mode {
            changed_natively += 1;
        }
        match mode_after(mount.mnt(), case) {
            Ok(got) if got == want => {}
            Ok(got) => differing.push(format!("{case}: native {want:04o}, mount {got:04o}")),
            // util-linux words EOPNOTSUPP either way, by mode.
            Err(e) if e.contains("not supported") || e.contains("unsupported") => {
                return Outcome::Unsupported(e)
            }
            Err(e) => differing.push(format!("{case}: native {want:04o}, mount failed: {e}")),
        }
    }
    assert!(
        changed_natively > 0,
        "no case changes a mode natively: they test nothing"
    );
    assert!(
        differing.is_empty(),
        "modes differ from the native filesystem's:\n{}\n{}",
        differing.join("\n"),
        mount.describe()
    );
    Outcome::Same
}

/// Every combination of `ops`, `whos`, `modes` and the file's group being
/// the user's primary group, a supplementary one, or neither; the file is
/// `owner`'s.
fn cases(ops: &[Op], whos: &[Who], owner: u32, modes: &[u32]) -> Vec<Case> {
    let mut v = Vec::new();
    for &op in ops {
        for &who in whos {
            for &group in &[USER, CREW, OTHERS] {
                for &mode in modes {
                    v.push(Case {
                        op,
                        who,
                        owner,
                        group,
                        mode,
                    });
                }
            }
        }
    }
    v
}

/// generic/193: a non-owner's truncate or write clears set-user-ID, and
/// set-group-ID with group-execute; without group-execute, set-group-ID
/// stays for a member of the file's group and goes for anybody else.
fn generic_193(mount: &Mount) {
    let cases = cases(
        &[Op::Truncate, Op::OpenTrunc, Op::Write],
        &[Who::User, Who::Root],
        0,
        &[0o6666, 0o2666, 0o4666, 0o6676, 0o2676],
    );
    assert!(matches!(compare(mount, &cases), Outcome::Same));
}

/// generic/355: an `O_DIRECT` write by the owner (the file 0644 plus
/// set-user-ID and set-group-ID, group- and user-execute each way).
fn generic_355(mount: &Mount) {
    let cases = cases(
        &[Op::DirectWrite],
        &[Who::User],
        USER,
        &[0o6644, 0o6744, 0o6654, 0o6754],
    );
    assert!(matches!(compare(mount, &cases), Outcome::Same));
}

/// generic/683 and generic/684: `fallocate` and punch hole by whoever may
/// write the file. `must_support`: an unsupported operation fails the
/// test rather than skipping it.
fn generic_683_684(mount: &Mount, op: Op, must_support: bool) {
    let cases = cases(
        &[op],
        &[Who::User, Who::Root],
        0,
        &[0o6666, 0o2666, 0o4666, 0o6676, 0o2676],
    );
    if let Outcome::Unsupported(e) = compare(mount, &cases) {
        assert!(!must_support, "the mount does not support {op:?}: {e}");
        common::skip(&format!("the mount does not support {op:?}: {e}"));
    }
}

#[test]
fn generic_193_truncate_and_write_by_non_owner() {
    generic_193(&Mount::start(&[]));
}

#[test]
fn generic_193_truncate_and_write_by_non_owner_meta() {
    generic_193(&Mount::start_meta(&[]));
}

#[test]
fn generic_355_direct_write() {
    generic_355(&Mount::start(&[]));
}

#[test]
fn generic_355_direct_write_meta() {
    generic_355(&Mount::start_meta(&[]));
}

#[test]
fn generic_683_fallocate() {
    generic_683_684(&Mount::start(&[]), Op::Fallocate, false);
}

#[test]
fn generic_683_fallocate_meta() {
    generic_683_684(&Mount::start_meta(&[]), Op::Fallocate, true);
}

#[test]
fn generic_684_punch_hole() {
    generic_683_684(&Mount::start(&[]), Op::PunchHole, false);
}

#[test]
fn generic_684_punch_hole_meta() {
    generic_683_684(&Mount::start_meta(&[]), Op::PunchHole, true);
}
