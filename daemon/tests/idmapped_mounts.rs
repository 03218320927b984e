//! Idmapped mounts of `xfused passthrough --allow-idmap` (Linux 6.12+,
//! FUSE_ALLOW_IDMAP), on the transport under test (`XFUSE_TEST_TRANSPORT`).
//!
//! The idmap: a user namespace mapping ids 0..65536 inside to
//! 100000..165536 outside, the map container runtimes give a container.
//! Through the idmapped mount an id `n` stored in SOURCE shows as
//! `100000 + n`, and a caller with filesystem ids `100000 + n` creates
//! files owned by `n`; a caller outside 100000..165536 (root, here) may
//! look but not create. The idmapped mount is a detached clone
//! (kmod_shim::idmap), reached through its descriptor
//! (`/proc/self/fd/N/...`), gone when the test drops it: nothing to
//! unmount, and nothing other tests on the machine can see.
//!
//! Needs root (mount_setattr(2) and the user namespace's maps).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{chown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assert_errno, Mount};
use kmod_shim::creds::with_fs_ids;
use kmod_shim::idmap::{IdRange, IdmappedMount, UserNamespace};

/// Where the idmap puts id 0 of SOURCE.
const SHIFT: u32 = 100_000;
/// Ids the idmap maps.
const RANGE: u32 = 65_536;
/// An owner in SOURCE, and how the idmapped mount shows it.
const OWNER: u32 = 1000;
const OWNER_SEEN: u32 = SHIFT + OWNER;
/// Another user in SOURCE, as seen through the idmapped mount.
const OTHER_SEEN: u32 = SHIFT + 2000;
/// A user the idmap does not map.
const UNMAPPED: u32 = 5000;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Returns once the mount has answered a request, so its INIT has been
/// answered and taken by the kernel: the mount is listed as soon as
/// mount(2) returns, but whether it may be idmapped is settled by the
/// INIT reply (before it, mount_setattr(2) fails with EINVAL).
fn wait_for_init(m: &Mount) {
    fs::read_dir(m.mnt())
        .unwrap_or_else(|e| panic!("listing {}: {e}\n{}", m.mnt().display(), m.describe()))
        .for_each(drop);
}

fn shifted_namespace() -> UserNamespace {
    let map = [IdRange {
        inside: 0,
        outside: SHIFT,
        count: RANGE,
    }];
    UserNamespace::with_maps(&map, &map).expect("creating a user namespace with a shifted map")
}

/// `(uid, gid)` of `path`, not following a final symlink.
fn owner(path: &Path) -> (u32, u32) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    (md.uid(), md.gid())
}

/// SOURCE: `home/` of OWNER (0755) with `secret` (0600, OWNER's) and
/// `open` (0644), and `shared/` of root (01777, as /tmp).
fn populate(src: &Path) {
    let home = src.join("home");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(home.join("secret"), b"for the owner").unwrap();
    fs::set_permissions(home.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(home.join("open"), b"for all").unwrap();
    fs::set_permissions(home.join("open"), fs::Permissions::from_mode(0o644)).unwrap();
    for p in [&home, &home.join("secret"), &home.join("open")] {
        chown(p, Some(OWNER), Some(OWNER)).unwrap();
    }
    let shared = src.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
}

#[test]
fn idmapped_mount_maps_owners_creations_chown_and_permissions() {
    if !is_root() {
        common::skip("needs root: idmapped mounts and user namespace maps");
        return;
    }
    let m = Mount::start(&["--allow-idmap"]);
    populate(m.src());
    wait_for_init(&m);
    let ns = shifted_namespace();
    let idm = IdmappedMount::new(m.mnt(), &ns)
        .unwrap_or_else(|e| panic!("idmapped mount of {}: {e}\n{}", m.mnt().display(), m.describe()));
    drop(ns);

    // Owners are shown through the map; the plain mount is unchanged.
    assert_eq!(owner(&idm.path("")), (SHIFT, SHIFT), "root of SOURCE");
    assert_eq!(owner(&idm.path("home")), (OWNER_SEEN, OWNER_SEEN));
    assert_eq!(owner(&idm.path("home/secret")), (OWNER_SEEN, OWNER_SEEN));
    assert_eq!(owner(&m.mnt().join("home/secret")), (OWNER, OWNER));

    // A mapped caller creates as the unmapped ids: every kind of creation.
    with_fs_ids(OWNER_SEEN, OWNER_SEEN, || {
        fs::write(idm.path("home/new"), b"made through the idmap").expect("create as the mapped owner");
        fs::create_dir(idm.path("home/dir")).expect("mkdir as the mapped owner");
        std::os::unix::fs::symlink("new", idm.path("home/link")).expect("symlink as the mapped owner");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            idm.path("home/fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo as the mapped owner");
        // O_TMPFILE, named by linkat through the same mount.
        let tmp = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o640)
            .custom_flags(libc::O_TMPFILE)
            .open(idm.path("home"))
            .expect("O_TMPFILE as the mapped owner");
        rustix::fs::linkat(
            &tmp,
            "",
            rustix::fs::CWD,
            idm.path("home/was_tmp").as_path(),
            rustix::fs::AtFlags::EMPTY_PATH,
        )
        .or_else(|_| {
            let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&tmp));
            rustix::fs::linkat(
                rustix::fs::CWD,
                proc_path.as_str(),
                rustix::fs::CWD,
                idm.path("home/was_tmp").as_path(),
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
        })
        .expect("naming the O_TMPFILE file");
    });
    for name in ["new", "dir", "link", "fifo", "was_tmp"] {
        assert_eq!(
            owner(&m.src().join("home").join(name)),
            (OWNER, OWNER),
            "{name} in SOURCE: owned by the unmapped ids"
        );
        assert_eq!(
            owner(&idm.path("home").join(name)),
            (OWNER_SEEN, OWNER_SEEN),
            "{name} through the idmapped mount"
        );
    }
    assert_eq!(
        fs::read(m.src().join("home/new")).unwrap(),
        b"made through the idmap",
        "the data arrived"
    );
    // The plain mount still owns creations by the caller's own ids.
    with_fs_ids(3000, 3000, || {
        fs::write(m.mnt().join("shared/plain"), b"x").expect("create on the plain mount as 3000");
    });
    assert_eq!(owner(&m.src().join("shared/plain")), (3000, 3000));

    // chown through the idmapped mount stores the unmapped ids.
    chown(idm.path("home/new"), Some(OTHER_SEEN), Some(OTHER_SEEN + 500)).expect("chown through the idmap");
    assert_eq!(owner(&m.src().join("home/new")), (2000, 2500));
    assert_eq!(owner(&idm.path("home/new")), (OTHER_SEEN, OTHER_SEEN + 500));
    // An owner the idmap cannot express is refused (the kernel's EOVERFLOW
    // for a target with no mapping: vfsuid invalid in the filesystem).
    let r = chown(idm.path("home/new"), Some(UNMAPPED), None);
    assert!(r.is_err(), "chown to an unmapped uid succeeded");
    assert_eq!(owner(&m.src().join("home/new")), (2000, 2500), "unchanged");

    // Callers the idmap does not map may look, not create.
    for (uid, who) in [(0, "root"), (UNMAPPED, "an unmapped user")] {
        with_fs_ids(uid, uid, || {
            assert_errno(
                fs::write(idm.path("shared/nope"), b"x"),
                libc::EOVERFLOW,
                &format!("create as {who} through the idmap"),
            );
            assert_errno(
                fs::create_dir(idm.path("shared/nope")),
                libc::EOVERFLOW,
                &format!("mkdir as {who} through the idmap"),
            );
            assert!(idm.path("home/open").exists(), "{who} may look");
        });
    }
    assert!(!m.src().join("shared/nope").exists());

    // Permission checks follow the mapped ids.
    with_fs_ids(OWNER_SEEN, OWNER_SEEN, || {
        let mut text = String::new();
        fs::File::open(idm.path("home/secret"))
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("the mapped owner reads its 0600 file");
        assert_eq!(text, "for the owner");
    });
    with_fs_ids(OTHER_SEEN, OTHER_SEEN, || {
        assert_errno(
            fs::File::open(idm.path("home/secret")),
            libc::EACCES,
            "a mapped non-owner opens a 0600 file",
        );
        assert_errno(
            fs::write(idm.path("home/theirs"), b"x"),
            libc::EACCES,
            "a mapped non-owner creates in a 0755 directory",
        );
        fs::read(idm.path("home/open")).expect("a mapped non-owner reads a 0644 file");
        // The sticky directory protects root's... nothing here; its own
        // file it may remove.
        fs::write(idm.path("shared/mine"), b"x").expect("create in the sticky directory");
    });
    assert_eq!(owner(&m.src().join("shared/mine")), (2000, 2000));
    with_fs_ids(OWNER_SEEN, OWNER_SEEN, || {
        assert_errno(
            fs::remove_file(idm.path("shared/mine")),
            libc::EPERM,
            "removing another user's file from a sticky directory",
        );
    });
    // The owner of a file, by its mapped id, may chmod it; another may not.
    with_fs_ids(OTHER_SEEN, OTHER_SEEN, || {
        assert_errno(
            fs::set_permissions(idm.path("home/secret"), fs::Permissions::from_mode(0o644)),
            libc::EPERM,
            "chmod by a mapped non-owner",
        );
    });
    with_fs_ids(OWNER_SEEN, OWNER_SEEN, || {
        fs::set_permissions(idm.path("home/secret"), fs::Permissions::from_mode(0o640))
            .expect("chmod by the mapped owner");
    });
    assert_eq!(
        fs::metadata(m.src().join("home/secret")).unwrap().mode() & 0o7777,
        0o640
    );

    // The idmapped mount goes before the daemon is stopped.
    drop(idm);
    m.stop();
}

#[test]
fn without_allow_idmap_the_kernel_refuses_the_idmap() {
    if !is_root() {
        common::skip("needs root: idmapped mounts and user namespace maps");
        return;
    }
    let m = Mount::start(&[]);
    wait_for_init(&m);
    let ns = shifted_namespace();
    match IdmappedMount::new(m.mnt(), &ns) {
        Ok(_) => panic!("the kernel idmapped a mount whose daemon did not ask FUSE_ALLOW_IDMAP"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "{e}: the kernel refuses MOUNT_ATTR_IDMAP on a FUSE mount without it"
        ),
    }
    m.stop();
}

#[test]
fn allow_idmap_with_daemon_permission_checks_is_refused_at_startup() {
    let root = tempfile::Builder::new()
        .prefix("xfuse-it-idmap.")
        .tempdir()
        .unwrap();
    let (src, mnt) = (root.path().join("src"), root.path().join("mnt"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xfused"))
        .args(["passthrough", "--allow-idmap", "--permissions", "daemon"])
        .arg(&src)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning xfused");
    // Refused before mounting: it exits on its own.
    let status = common::wait_for("xfused to exit", Duration::from_secs(30), || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !status.success(),
        "xfused accepted --allow-idmap --permissions daemon"
    );
    assert!(
        stderr.contains("--allow-idmap needs --permissions kernel"),
        "unclear refusal: {stderr}"
    );
    assert_eq!(common::mount_fstype(&mnt), None, "nothing was mounted");
}

/// The cost of `--allow-idmap`: the kernel names no caller in a WRITE or a
/// SETATTR, so xfused cannot tell a member of the file's group or root,
/// and clears a set-group-ID bit without group-execute that Linux (and
/// xfused without the flag) keeps for them. Seen on the plain mount: the flag changes
/// what every request carries, idmapped or not.
#[test]
fn allow_idmap_clears_setgid_without_group_execute_for_group_members_and_root_too() {
    if !is_root() {
        common::skip("needs root: files of other users");
        return;
    }
    const WRITER: u32 = 3000;
    for (flags, kept) in [(&[][..], 0o2666), (&["--allow-idmap"][..], 0o0666)] {
        let m = Mount::start(flags);
        let src = m.src().join("f");
        fs::write(&src, b"x").unwrap();
        chown(&src, Some(4000), Some(WRITER)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o6666)).unwrap();
        with_fs_ids(WRITER, WRITER, || {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(m.mnt().join("f"))
                .expect("open for writing as a member of the file's group");
            std::io::Write::write_all(&mut f, b"y").expect("write as a group member");
        });
        let mode = fs::metadata(&src).unwrap().mode() & 0o7777;
        assert_eq!(
            mode, kept,
            "{flags:?}: mode {mode:o} after a group member's write to a 06666 file, {kept:o} expected"
        );
        // A chown by root (CAP_FSETID) keeps such a bit in Linux.
        let g = m.src().join("g");
        fs::write(&g, b"x").unwrap();
        fs::set_permissions(&g, fs::Permissions::from_mode(0o2666)).unwrap();
        chown(m.mnt().join("g"), Some(4000), None).expect("chown by root");
        let mode = fs::metadata(&g).unwrap().mode() & 0o7777;
        let kept = kept & 0o2777;
        assert_eq!(
            mode, kept,
            "{flags:?}: mode {mode:o} after root's chown of a 02666 file"
        );
        m.stop();
    }
}
