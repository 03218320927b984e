//! `xfused virtiofs --translate-uid/--translate-gid`: a guest's ids are not
//! the host's. Requests are sent by the in-process vhost-user frontend
//! (vm_tests::frontend::Session) as the guest caller each case needs; what
//! the host got is read back with std::fs and xattrs, what the guest is
//! told from the replies.
//!
//! Needs root: xfused creates files as the (translated) caller, which
//! takes switching ids.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kmod_shim::abi::{fattr, EntryOut, Opcode, SetattrIn};
use vm_tests::frontend::fuse::{Caller, Request};
use vm_tests::frontend::{Backend, Session};

const XFUSED: &str = env!("CARGO_BIN_EXE_xfused");
const ROOT: u64 = kmod_shim::abi::ROOT_ID;
const REPLY_TIMEOUT_MS: i32 = 10_000;
const NOBODY: u32 = 65534;
const GUEST_ROOT: Caller = Caller::ROOT;

/// Guest root is host 1000, guest 1000 is host 2000; gid 0 is host 1000.
const MAPPED: [&str; 6] = [
    "--translate-uid",
    "map:0:1000:1",
    "--translate-uid",
    "map:1000:2000:1",
    "--translate-gid",
    "map:0:1000:1",
];

/// A temporary directory named with `prefix`, and a new directory `name`
/// in it (the share, or the store).
fn scratch(prefix: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    (root, dir)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn create(parent: u64, name: &str, mode: u32) -> Request {
    Request::create(
        parent,
        name,
        (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
        mode,
        0,
    )
}

fn setattr(nodeid: u64, valid: u32, f: impl FnOnce(&mut SetattrIn)) -> Request {
    let mut arg = SetattrIn {
        valid,
        ..Default::default()
    };
    f(&mut arg);
    Request::setattr(nodeid, &arg)
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

fn guest_ids(e: &EntryOut) -> (u32, u32) {
    (e.attr.uid, e.attr.gid)
}

/// Starts `backend` on `share`, connects a guest, runs `f`, ends the
/// session and checks xfused exited 0.
fn with_guest(backend: &Backend, share: &Path, scratch: &Path, f: impl FnOnce(&mut Session)) {
    let serving = backend
        .start(share, scratch)
        .unwrap_or_else(|e| panic!("starting {}: {e}", backend.name));
    let mut guest = Session::connect(serving.socket(), REPLY_TIMEOUT_MS)
        .unwrap_or_else(|e| panic!("connecting: {e}\n{}", serving.log_tail()));
    f(&mut guest);
    guest.destroy().expect("DESTROY");
    serving.finish().expect("xfused exits 0 after the guest left");
}

/// Checks a request failed with `errno`.
fn refused(guest: &mut Session, req: &Request, caller: Caller, errno: i32, what: &str) {
    let reply = guest.call(req, caller).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        reply.error,
        -errno,
        "{what}: expected {}, got {}",
        std::io::Error::from_raw_os_error(errno),
        std::io::Error::from_raw_os_error(-reply.error)
    );
}

/// Unconfined (`--sandbox none`), where xattrs are served, so ACLs too.
#[test]
fn guest_root_is_a_mapped_host_user_and_cannot_reach_unmapped_ids() {
    mapped_guest(&["--sandbox", "none"], true);
}

/// Under the default sandbox (no xattrs there): the same owners, refusals
/// and views.
#[test]
fn guest_ids_are_translated_in_the_default_sandbox() {
    mapped_guest(&[], false);
}

fn mapped_guest(extra: &[&str], xattrs: bool) {
    if !is_root() {
        common::missing("root (xfused switches to the callers' ids to create files)");
        return;
    }
    let (root, share) = scratch("xfuse-it-idmap.", "share");
    // Everybody may create in the share: the guest's callers are ordinary
    // host users now.
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    let host_owned = share.join("host-owned");
    std::fs::write(&host_owned, b"x").unwrap();
    rustix::fs::chown(
        &host_owned,
        Some(rustix::fs::Uid::from_raw(4242)),
        Some(rustix::fs::Gid::from_raw(4242)),
    )
    .unwrap();

    let args: Vec<&str> = MAPPED.iter().chain(extra).copied().collect();
    let backend = Backend::xfused(Path::new(XFUSED), &args);
    with_guest(&backend, &share, root.path(), |guest| {
        // Guest root creates a file: the host owner is the mapped user,
        // the guest sees root.
        let (entry, open) = guest
            .created(&create(ROOT, "f", libc::S_IFREG | 0o644), GUEST_ROOT)
            .unwrap();
        let f = share.join("f");
        assert_eq!(owner(&f), (1000, 1000), "host owner of a file guest root created");
        assert_eq!(guest_ids(&entry), (0, 0), "CREATE's entry in the guest");
        guest
            .ok(
                &Request::release(Opcode::Release, entry.nodeid, open.fh, libc::O_WRONLY as u32),
                GUEST_ROOT,
            )
            .unwrap();
        // A hard link of it (LINK is linkat(AT_EMPTY_PATH) on a descriptor
        // opened under the mapped user's credentials).
        let linked = guest
            .entry(&Request::link(entry.nodeid, ROOT, "f-link"), GUEST_ROOT)
            .unwrap_or_else(|e| panic!("LINK of guest root's file: {e:?}"));
        assert_eq!(linked.nodeid, entry.nodeid);
        assert_eq!(std::fs::metadata(share.join("f-link")).unwrap().nlink(), 2);

        // The set-user-ID case: chmod 04755 by guest root gives a program
        // that runs as host uid 1000, not root.
        let attr = guest
            .attr(
                &setattr(entry.nodeid, fattr::MODE, |a| a.mode = libc::S_IFREG | 0o4755),
                GUEST_ROOT,
            )
            .unwrap();
        assert_eq!((attr.attr.uid, attr.attr.mode & 0o7777), (0, 0o4755));
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (1000, 0o4755),
            "set-user-ID 1000 on the host"
        );

        // stat in the guest: guest ids.
        let attr = guest.attr(&Request::getattr(entry.nodeid), GUEST_ROOT).unwrap();
        assert_eq!((attr.attr.uid, attr.attr.gid), (0, 0));

        // chown to a uid (and a gid) the guest has no mapping for: refused,
        // the host file keeps its owner.
        for (valid, uid, gid) in [(fattr::UID, 5, 0), (fattr::UID, NOBODY, 0), (fattr::GID, 0, 7)] {
            let req = setattr(entry.nodeid, valid, |a| (a.uid, a.gid) = (uid, gid));
            refused(
                guest,
                &req,
                GUEST_ROOT,
                libc::EINVAL,
                &format!("chown to {uid}:{gid}"),
            );
            assert_eq!(owner(&f), (1000, 1000));
        }
        // A mapped one goes through, translated.
        let attr = guest
            .attr(&setattr(entry.nodeid, fattr::UID, |a| a.uid = 1000), GUEST_ROOT)
            .unwrap();
        assert_eq!(attr.attr.uid, 1000);
        assert_eq!(owner(&f).0, 2000, "guest uid 1000 is host uid 2000");

        // A host file of a user the guest has no mapping for: nobody.
        let e = guest
            .entry(&Request::lookup(ROOT, "host-owned"), GUEST_ROOT)
            .unwrap();
        assert_eq!(guest_ids(&e), (NOBODY, NOBODY));

        // A caller no rule names acts as nobody on the host.
        let stranger = Caller { uid: 7, gid: 7 };
        let e = guest
            .entry(&Request::mkdir(ROOT, "d", libc::S_IFDIR | 0o755, 0), stranger)
            .unwrap();
        assert_eq!(owner(&share.join("d")), (NOBODY, NOBODY));
        assert_eq!(guest_ids(&e), (NOBODY, NOBODY), "nobody is unmapped both ways");

        // Guest root is not host root: no device nodes.
        let dev = Request::mknod(ROOT, "sda", libc::S_IFBLK | 0o600, 0);
        refused(guest, &dev, GUEST_ROOT, libc::EPERM, "mknod of a block device");
        assert!(!share.join("sda").exists());

        if !xattrs {
            return;
        }
        // ACLs name host users: guest uid 1000 becomes host 2000; a user the
        // guest has no mapping for is refused.
        let acl = |user: u32| {
            let mut v = 2u32.to_le_bytes().to_vec();
            for (tag, perm, id) in [
                (1u16, 6u16, u32::MAX),
                (2, 4, user),
                (4, 4, u32::MAX),
                (0x10, 4, u32::MAX),
                (0x20, 4, u32::MAX),
            ] {
                v.extend_from_slice(&tag.to_le_bytes());
                v.extend_from_slice(&perm.to_le_bytes());
                v.extend_from_slice(&id.to_le_bytes());
            }
            v
        };
        guest
            .ok(
                &Request::setxattr(entry.nodeid, "system.posix_acl_access", &acl(1000), 0),
                GUEST_ROOT,
            )
            .unwrap();
        let mut host_acl = vec![0u8; 256];
        let n = rustix::fs::getxattr(&f, "system.posix_acl_access", &mut host_acl).unwrap();
        let named: Vec<u32> = host_acl[4..n]
            .chunks_exact(8)
            .filter(|e| e[0] == 2)
            .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
            .collect();
        assert_eq!(named, [2000], "the ACL's named user on the host");
        let back = guest
            .ok(
                &Request::getxattr(entry.nodeid, "system.posix_acl_access", 256),
                GUEST_ROOT,
            )
            .unwrap();
        assert_eq!(back.body, acl(1000), "the guest reads its own ids back");
        let req = Request::setxattr(entry.nodeid, "system.posix_acl_access", &acl(4242), 0);
        refused(
            guest,
            &req,
            GUEST_ROOT,
            libc::EINVAL,
            "an ACL naming an unmapped user",
        );
    });
}

#[test]
fn without_translation_guest_root_is_host_root() {
    // The other side of the test above: what the options change.
    if !is_root() {
        common::missing("root (xfused switches to the callers' ids to create files)");
        return;
    }
    let (root, share) = scratch("xfuse-it-idmap.", "share");
    let backend = Backend::xfused(Path::new(XFUSED), &[]);
    with_guest(&backend, &share, root.path(), |guest| {
        guest
            .ok(&create(ROOT, "f", libc::S_IFREG | 0o644), GUEST_ROOT)
            .unwrap();
        assert_eq!(owner(&share.join("f")), (0, 0));
        let user = Caller { uid: 1000, gid: 1000 };
        guest.ok(&create(ROOT, "g", libc::S_IFREG | 0o644), user).unwrap();
        assert_eq!(owner(&share.join("g")), (1000, 1000));
    });
}

#[test]
fn the_distributed_filesystem_is_translated_too() {
    if !is_root() {
        common::missing("root (xfused virtiofs --meta keeps its store under root's umask rules)");
        return;
    }
    let (root, store) = scratch("xfuse-it-idmap-meta.", "store");
    let mapped = Backend::xfused_meta(Path::new(XFUSED), &MAPPED);
    with_guest(&mapped, &store, root.path(), |guest| {
        let e = guest
            .entry(&Request::mkdir(ROOT, "d", libc::S_IFDIR | 0o777, 0), GUEST_ROOT)
            .unwrap();
        assert_eq!(guest_ids(&e), (0, 0));
        let req = setattr(e.nodeid, fattr::UID, |a| a.uid = 5);
        refused(guest, &req, GUEST_ROOT, libc::EINVAL, "chown to an unmapped uid");
    });
    // The same namespace served without translation shows the host ids
    // the mapped guest's root wrote.
    let plain = Backend::xfused_meta(Path::new(XFUSED), &[]);
    with_guest(&plain, &store, root.path(), |guest| {
        let e = guest.entry(&Request::lookup(ROOT, "d"), GUEST_ROOT).unwrap();
        assert_eq!(guest_ids(&e), (1000, 1000), "owner in the namespace");
    });
}
