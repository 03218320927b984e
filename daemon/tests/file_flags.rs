//! `chattr`/`lsattr` flags through a real `xfused passthrough` mount, on the
//! transport under test (`XFUSE_TEST_TRANSPORT`, flags from
//! `XFUSE_TEST_ARGS`): the e2fsprogs tools and the ioctls themselves
//! (`FS_IOC_GETFLAGS`/`SETFLAGS`, `FS_IOC_FSGETXATTR`/`FSSETXATTR`, as the
//! kernel turns them into IOCTL requests), on files and directories. The
//! flags are the source file's, so their effects are real: append-only
//! refuses a truncating or overwriting open, immutable refuses writes,
//! unlinks and renames. Who may change them is Linux's rule, checked the
//! same way on a native directory next to the mount.
//!
//! `xfused mount` keeps no flags: ENOTTY.
//!
//! The source directory's filesystem decides which flags exist; a test
//! whose flag it refuses records a skip with the reason. Every test clears
//! immutable and append-only on the source before it ends (pass or fail),
//! so the temporary directories can be removed.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{chown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_errno, Mount};
use kmod_shim::creds::with_fs_ids;
use kmod_shim::fileattr::{self, flags, xflags, FsXattr};

/// A user the tests act as (filesystem ids of one thread).
const ALICE: u32 = 4111;
/// Another user.
const BOB: u32 = 4112;

/// Clears immutable and append-only on these source paths when dropped,
/// so a failed test leaves nothing the temporary directory's removal
/// would trip on. Declared after the [`Mount`], so it runs first.
struct Unflag(Vec<PathBuf>);

impl Drop for Unflag {
    fn drop(&mut self) {
        for path in &self.0 {
            let Ok(file) = open_for_flags(path) else {
                continue;
            };
            if let Ok(now) = fileattr::get_flags(file.as_fd()) {
                if now & flags::PROTECTED != 0 {
                    if let Err(e) = fileattr::set_flags(file.as_fd(), now & !flags::PROTECTED) {
                        eprintln!("clearing the flags of {}: {e}", path.display());
                    }
                }
            }
        }
    }
}

/// Opens a file or directory read-only, as chattr(1) does, for its flags.
fn open_for_flags(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

fn flags_of(path: &Path) -> u32 {
    let file = open_for_flags(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    fileattr::get_flags(file.as_fd()).unwrap_or_else(|e| panic!("flags of {}: {e}", path.display()))
}

fn set_flags_of(path: &Path, value: u32) -> io::Result<()> {
    let file = open_for_flags(path)?;
    Ok(fileattr::set_flags(file.as_fd(), value)?)
}

/// Whether the source directory's filesystem keeps all of `wanted` (tried
/// on a scratch file in `dir`, as root); the reason if not.
fn source_keeps(dir: &Path, wanted: u32) -> Result<(), String> {
    let probe = dir.join(".flags-probe");
    File::create(&probe).unwrap();
    let _clear = Unflag(vec![probe.clone()]);
    let result = (|| {
        for bit in [flags::NODUMP, flags::NOATIME, flags::APPEND, flags::IMMUTABLE] {
            if wanted & bit == 0 {
                continue;
            }
            let file = open_for_flags(&probe).map_err(|e| e.to_string())?;
            let before = fileattr::get_flags(file.as_fd())
                .map_err(|e| format!("the source's filesystem keeps no flags ({e})"))?;
            fileattr::set_flags(file.as_fd(), before | bit)
                .map_err(|e| format!("the source's filesystem refuses flag {bit:#x} ({e})"))?;
            fileattr::set_flags(file.as_fd(), before).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    drop(_clear);
    fs::remove_file(&probe).unwrap();
    result
}

/// Starts a mount (suite flags plus `args`) whose source keeps `wanted`, or
/// records a skip and returns `None`.
fn mount_keeping(wanted: u32, args: &[&str]) -> Option<Mount> {
    let m = Mount::start(args);
    match source_keeps(m.src(), wanted) {
        Ok(()) => Some(m),
        Err(why) => {
            common::skip(&why);
            None
        }
    }
}

/// The flag letters `lsattr` (or `lsattr -d`) prints for `path`.
fn lsattr(path: &Path) -> String {
    let mut cmd = Command::new("lsattr");
    if path.is_dir() {
        cmd.arg("-d");
    }
    let out = common::run(cmd.arg(path));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("lsattr {}: no output", path.display()))
        .to_owned()
}

fn chattr(change: &str, path: &Path) {
    common::run(Command::new("chattr").arg(change).arg(path));
}

/// Whether the tools are here; records why not otherwise.
fn have_tools() -> bool {
    // `-V` prints the version; a tool that cannot be spawned is missing.
    let found = ["lsattr", "chattr"]
        .iter()
        .all(|tool| Command::new(tool).arg("-V").output().is_ok());
    if !found {
        common::missing("lsattr and chattr (Debian package e2fsprogs)");
    }
    found
}

#[test]
fn chattr_and_lsattr_round_trip_with_real_effects() {
    if !have_tools() {
        return;
    }
    let Some(m) = mount_keeping(flags::NODUMP | flags::APPEND | flags::IMMUTABLE, &[]) else {
        return;
    };
    let (file, src_file) = (m.mnt().join("log"), m.src().join("log"));
    let (dir, src_dir) = (m.mnt().join("d"), m.src().join("d"));
    let _unflag = Unflag(vec![src_file.clone(), src_dir.clone()]);
    fs::write(&file, b"first\n").unwrap();
    fs::create_dir(&dir).unwrap();

    chattr("+d", &file);
    assert!(
        lsattr(&file).contains('d'),
        "lsattr on the mount: {}",
        lsattr(&file)
    );
    assert!(
        lsattr(&src_file).contains('d'),
        "on the source: {}",
        lsattr(&src_file)
    );
    chattr("-d", &file);
    assert!(!lsattr(&file).contains('d'));

    // Append-only: appending works; truncating or overwriting does not.
    chattr("+a", &file);
    assert!(lsattr(&file).contains('a'), "{}", lsattr(&file));
    assert!(lsattr(&src_file).contains('a'), "{}", lsattr(&src_file));
    OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(b"second\n"))
        .expect("appending to an append-only file");
    assert_errno(
        OpenOptions::new().write(true).truncate(true).open(&file),
        libc::EPERM,
        "truncating open of an append-only file",
    );
    assert_errno(
        OpenOptions::new().write(true).open(&file),
        libc::EPERM,
        "open for overwriting of an append-only file",
    );
    assert_eq!(fs::read(&file).unwrap(), b"first\nsecond\n");
    chattr("-a", &file);

    // Immutable: no write, no unlink, no rename, no new name.
    chattr("+i", &file);
    assert!(lsattr(&file).contains('i'), "{}", lsattr(&file));
    assert_errno(
        OpenOptions::new().append(true).open(&file),
        libc::EPERM,
        "open for writing of an immutable file",
    );
    assert_errno(fs::remove_file(&file), libc::EPERM, "unlink of an immutable file");
    assert_errno(
        fs::rename(&file, m.mnt().join("moved")),
        libc::EPERM,
        "rename of an immutable file",
    );
    assert_errno(
        fs::hard_link(&file, m.mnt().join("linked")),
        libc::EPERM,
        "link to an immutable file",
    );
    assert_eq!(fs::read(&file).unwrap(), b"first\nsecond\n", "still readable");
    chattr("-i", &file);
    assert_eq!(lsattr(&file), lsattr(&src_file));

    // A directory's flags (lsattr -d): an immutable one takes no entries.
    chattr("+i", &dir);
    assert!(lsattr(&dir).contains('i'), "{}", lsattr(&dir));
    assert!(lsattr(&src_dir).contains('i'), "{}", lsattr(&src_dir));
    assert_errno(
        File::create(dir.join("new")),
        libc::EPERM,
        "creating in an immutable directory",
    );
    chattr("-i", &dir);
    File::create(dir.join("new")).expect("creating once the flag is off");
    fs::remove_file(&file).expect("unlink once the flags are off");
}

#[test]
fn flag_ioctls_on_files_and_directories() {
    let Some(m) = mount_keeping(flags::NODUMP | flags::NOATIME, &[]) else {
        return;
    };
    let (file, src_file) = (m.mnt().join("f"), m.src().join("f"));
    let (dir, src_dir) = (m.mnt().join("d"), m.src().join("d"));
    let _unflag = Unflag(vec![src_file.clone(), src_dir.clone()]);
    fs::write(&file, b"data").unwrap();
    fs::create_dir(&dir).unwrap();

    for (on_mount, on_source) in [(&file, &src_file), (&dir, &src_dir)] {
        let what = on_mount.display();
        let f = open_for_flags(on_mount).unwrap();
        let before = fileattr::get_flags(f.as_fd()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(before, flags_of(on_source), "{what}: the source's flags");
        fileattr::set_flags(f.as_fd(), before | flags::NODUMP).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(fileattr::get_flags(f.as_fd()).unwrap(), before | flags::NODUMP);
        assert_eq!(
            flags_of(on_source),
            before | flags::NODUMP,
            "{what}: on the source"
        );

        // The extended form sees the same, and changes the same.
        let x = fileattr::get_fsxattr(f.as_fd()).unwrap_or_else(|e| panic!("{what}: FSGETXATTR: {e}"));
        assert_eq!(x.xflags & xflags::NODUMP, xflags::NODUMP, "{what}: {x:?}");
        let src_x = fileattr::get_fsxattr(open_for_flags(on_source).unwrap().as_fd()).unwrap();
        assert_eq!(x, src_x, "{what}: fsxattr as the source has it");
        fileattr::set_fsxattr(
            f.as_fd(),
            &FsXattr {
                xflags: (x.xflags & !xflags::NODUMP) | xflags::NOATIME,
                ..x
            },
        )
        .unwrap_or_else(|e| panic!("{what}: FSSETXATTR: {e}"));
        assert_eq!(
            flags_of(on_source) & (flags::NODUMP | flags::NOATIME),
            flags::NOATIME,
            "{what}: FSSETXATTR reached the source"
        );
        fileattr::set_flags(f.as_fd(), before).unwrap();
        assert_eq!(flags_of(on_source), before);
    }

    // Flags of a file with no name (O_TMPFILE, held by the daemon).
    let tmp = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(m.mnt())
        .expect("O_TMPFILE on the mount");
    let before = fileattr::get_flags(tmp.as_fd()).expect("flags of a nameless file");
    fileattr::set_flags(tmp.as_fd(), before | flags::NODUMP).unwrap();
    assert_eq!(fileattr::get_flags(tmp.as_fd()).unwrap(), before | flags::NODUMP);
}

/// The errno of setting `value` on `path` as `uid` (0: success).
fn set_as(uid: u32, path: &Path, value: u32) -> i32 {
    with_fs_ids(uid, uid, || match set_flags_of(path, value) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or_else(|| panic!("{e}")),
    })
}

#[test]
fn only_the_owner_changes_flags_and_protected_ones_as_natively() {
    for permissions in ["kernel", "daemon"] {
        let Some(m) = mount_keeping(flags::NODUMP | flags::APPEND, &["--permissions", permissions]) else {
            return;
        };
        // The same file natively, beside the mount: the kernel's own answer.
        let native_dir = tempfile::tempdir().unwrap();
        // Open to the users the test acts as.
        for dir in [native_dir.path(), m.mnt().parent().unwrap(), m.mnt()] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let native = native_dir.path().join("f");
        let (file, src_file) = (m.mnt().join("f"), m.src().join("f"));
        let _unflag = Unflag(vec![src_file.clone(), native.clone()]);
        for path in [&native, &file] {
            fs::write(path, b"x").unwrap();
            chown(path, Some(ALICE), Some(ALICE)).unwrap();
        }
        assert_eq!(fs::metadata(&src_file).unwrap().uid(), ALICE);
        let base = flags_of(&src_file);
        let native_base = flags_of(&native);
        for (uid, change, what) in [
            (ALICE, flags::NODUMP, "the owner sets nodump"),
            (BOB, 0, "another user clears nodump"),
            (BOB, flags::NODUMP, "another user sets nodump"),
            (ALICE, flags::APPEND, "the owner sets append-only"),
            (0, flags::APPEND, "root sets append-only"),
            (ALICE, 0, "the owner clears append-only"),
            (0, 0, "root clears everything"),
        ] {
            let expected = set_as(uid, &native, native_base | change);
            let got = set_as(uid, &file, base | change);
            assert_eq!(
                got,
                expected,
                "{what} (--permissions {permissions}): {} on the mount, {} natively",
                io::Error::from_raw_os_error(got),
                io::Error::from_raw_os_error(expected)
            );
            assert_eq!(
                flags_of(&src_file) & (flags::NODUMP | flags::APPEND),
                flags_of(&native) & (flags::NODUMP | flags::APPEND),
                "{what} (--permissions {permissions}): flags afterwards"
            );
        }
        // Whoever may read a file may read its flags.
        let seen = with_fs_ids(BOB, BOB, || {
            fileattr::get_flags(open_for_flags(&file).unwrap().as_fd()).map_err(io::Error::from)
        });
        assert_eq!(seen.expect("another user reads the flags"), flags_of(&src_file));
        // Something must have been refused, or the comparison proved nothing.
        assert_eq!(set_as(BOB, &file, base | flags::NODUMP), libc::EPERM);
    }
}

#[test]
fn the_distributed_filesystem_keeps_no_flags() {
    // MetaFs has no flags to keep: the ioctls answer ENOTTY, as lsattr on
    // any filesystem without them, and nothing is pretended.
    let m = Mount::start_meta(&[]);
    let file = m.mnt().join("f");
    fs::write(&file, b"x").unwrap();
    let f = open_for_flags(&file).unwrap();
    assert_errno(
        fileattr::get_flags(f.as_fd()).map_err(io::Error::from),
        libc::ENOTTY,
        "FS_IOC_GETFLAGS on xfused mount",
    );
    assert_errno(
        fileattr::set_flags(f.as_fd(), flags::NODUMP).map_err(io::Error::from),
        libc::ENOTTY,
        "FS_IOC_SETFLAGS on xfused mount",
    );
}
