//! `open(2)` with `O_TMPFILE` through a real mount, on `xfused passthrough`
//! (PassthroughFs with xfused's `serve::tmpfiles` layer) and `xfused mount`,
//! under both permission modes, on the transport under test
//! (`XFUSE_TEST_TRANSPORT`): a file with no name, named later by `linkat`
//! unless opened `O_EXCL`, gone at its last close if never named, owned by
//! its creator.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{assert_errno, assert_rustix_errno, pattern, Mount};
use kmod_shim::creds::with_fs_ids;

/// A user the tests act as (filesystem ids of one thread).
const ALICE: u32 = 4101;
/// A group Alice is not in.
const CREW: u32 = 4200;

/// `open(DIR, O_TMPFILE | extra | O_RDWR, 0o640)`.
fn open_tmpfile(dir: &Path, extra: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o640)
        .custom_flags(libc::O_TMPFILE | extra)
        .open(dir)
}

/// `linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, to, AT_SYMLINK_FOLLOW)`:
/// how a program names an `O_TMPFILE` file without CAP_DAC_READ_SEARCH.
fn link_open_file(file: &File, to: &Path) -> rustix::io::Result<()> {
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        to,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
}

/// Fails naming the first differing byte (not printing megabytes).
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, {} wanted, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// What nameless files hold in the daemon, for the check that one never
/// named is let go: on passthrough the daemon's descriptors of host files
/// without a name (the layer holds the host's O_TMPFILE file), on
/// `xfused mount` the inodes in use.
fn held(m: &Mount, passthrough: bool) -> u64 {
    if passthrough {
        let dir = format!("/proc/{}/fd", m.pid());
        fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {dir}: {e}"))
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().ends_with(" (deleted)"))
            .count() as u64
    } else {
        let st = rustix::fs::statvfs(m.mnt()).expect("statvfs");
        st.f_files - st.f_ffree
    }
}

fn tmpfiles_on(m: &Mount, passthrough: bool) {
    let dir = m.mnt().join("d");
    fs::create_dir(&dir).expect("mkdir d");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let data = pattern(200_000, 7);
    let base = held(m, passthrough);

    let mut file = open_tmpfile(&dir, 0).expect("open O_TMPFILE");
    file.write_all(&data).expect("write the tmpfile");
    let meta = file.metadata().expect("fstat the tmpfile");
    assert_eq!(meta.nlink(), 0, "no name yet");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.len(), data.len() as u64);
    assert!(meta.is_file());
    assert!(names(&dir).is_empty(), "nothing in the directory");
    if passthrough {
        assert!(names(&m.src().join("d")).is_empty(), "nothing in the source");
    }
    // Opened a second time through /proc, as Linux allows.
    let again =
        fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("reopen through /proc/self/fd");
    same(&again, &data, "read through /proc");
    file.set_len(150_000).expect("ftruncate the tmpfile");

    let named = dir.join("named");
    link_open_file(&file, &named).expect("linkat the tmpfile");
    assert_eq!(fs::metadata(&named).unwrap().nlink(), 1);
    same(
        &fs::read(&named).unwrap(),
        &data[..150_000],
        "the name reads what was written",
    );
    file.write_all_at(b"more", 150_000).expect("write after naming");
    drop(file);
    let mut want = data[..150_000].to_vec();
    want.extend_from_slice(b"more");
    same(&fs::read(&named).unwrap(), &want, "and keeps it after the close");
    if passthrough {
        same(
            &fs::read(m.src().join("d/named")).unwrap(),
            &want,
            "in the source too",
        );
    }

    // O_EXCL: never linkable (the kernel refuses), gone at close.
    let excl = open_tmpfile(&dir, libc::O_EXCL).expect("open O_TMPFILE|O_EXCL");
    assert_rustix_errno(
        link_open_file(&excl, &dir.join("excl")),
        libc::ENOENT,
        "linkat O_EXCL",
    );
    drop(excl);

    // Never named: let go at its last close (as the O_EXCL one was).
    let before = base + u64::from(!passthrough);
    let settled = |what: &str| {
        common::wait_for(what, Duration::from_secs(30), || match held(m, passthrough) {
            n if n == before => Ok(()),
            n => Err(format!("{n} held, {before} wanted")),
        })
    };
    settled("the O_EXCL file to be let go");
    let mut lost = open_tmpfile(&dir, 0).expect("open another O_TMPFILE");
    lost.write_all(&data).expect("write");
    lost.sync_all().expect("fsync");
    assert_eq!(held(m, passthrough), before + 1, "the daemon holds it while open");
    drop(lost);
    settled("the unnamed file to be let go");
    assert_eq!(names(&dir), ["named"]);

    // Made by another user: owned by that user, and by the group of a
    // set-group-ID directory.
    let crew = dir.join("crew");
    fs::create_dir(&crew).unwrap();
    std::os::unix::fs::chown(&crew, None, Some(CREW)).unwrap();
    fs::set_permissions(&crew, fs::Permissions::from_mode(0o2777)).unwrap();
    for (parent, gid) in [(&dir, ALICE), (&crew, CREW)] {
        let name = parent.join("alices");
        with_fs_ids(ALICE, ALICE, || {
            let file = open_tmpfile(parent, 0).expect("O_TMPFILE as Alice");
            link_open_file(&file, &name).expect("linkat as Alice");
        });
        let st = fs::metadata(&name).unwrap();
        assert_eq!((st.uid(), st.gid()), (ALICE, gid), "{}", name.display());
    }

    // The kernel checks the directory like any creation.
    assert_errno(open_tmpfile(&named, 0), libc::ENOTDIR, "O_TMPFILE on a file");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    with_fs_ids(ALICE, ALICE, || {
        assert_errno(
            open_tmpfile(&dir, 0),
            libc::EACCES,
            "O_TMPFILE as Alice in root's 0755",
        );
    });
}

#[test]
fn o_tmpfile_on_passthrough() {
    for permissions in ["kernel", "daemon"] {
        let m = Mount::start(&["--permissions", permissions]);
        tmpfiles_on(&m, true);
    }
}

#[test]
fn o_tmpfile_on_xfused_mount() {
    for permissions in ["kernel", "daemon"] {
        let m = Mount::start_meta(&["--chunk-size-kib", "4", "--permissions", permissions]);
        tmpfiles_on(&m, false);
    }
}
