//! Long timeouts never serve stale metadata: changes made through the
//! filesystem API ([`xfuse::Changes`], what a daemon does when it applies a
//! change the kernel did not send, e.g. another client's) are seen by the
//! very next stat through the mount, for every invalidating operation:
//! setattr, a write that changes size and mtime, rename, unlink.
//!
//! Each test first makes the same kind of change with invalidations switched
//! off (a test-only knob) and checks the mount still shows the old values:
//! that proves the kernel really holds a long timeout, so the check after
//! the second change (invalidations on) can only pass because of them. The
//! short timeouts are 0, so anything not in the long set is refetched.
//!
//! Mounts for real through the library (root needed, as in CI).

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::api::filesystem::SetattrValid;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use xfuse::{AdaptiveConfig, AdaptiveTtl, Changes, InitConfig, MountOptions, Session, Transport, Upcalls};

struct Fixture {
    src: tempfile::TempDir,
    mnt: tempfile::TempDir,
    ttl: Arc<AdaptiveTtl>,
    fs: Arc<PassthroughFs>,
    running: Option<xfuse::Running<Arc<PassthroughFs>>>,
}

impl Fixture {
    fn new() -> Fixture {
        let src = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let cfg = Config {
            root_dir: src.path().to_str().unwrap().to_string(),
            inode_file_handles: true,
            ..Default::default()
        };
        let fs = Arc::new(PassthroughFs::<()>::new(cfg).unwrap());
        let opts = MountOptions::new("coherence-test", "xfuse");
        let mut session = Session::mount(fs.clone(), mnt.path(), &opts, &InitConfig::default())
            .expect("mount (these tests need root and /dev/fuse)");
        let ttl = Arc::new(AdaptiveTtl::new(AdaptiveConfig {
            short_entry_ttl: Duration::ZERO,
            short_attr_ttl: Duration::ZERO,
            long_ttl: Duration::from_secs(600),
            hot_upcalls_min: 1,
            quiet_after_change: Duration::ZERO,
            ..Default::default()
        }));
        session.set_adaptive_ttl(ttl.clone());
        let running = session.serve(Transport::Dev { threads: 2 }).unwrap();
        Fixture {
            src,
            mnt,
            ttl,
            fs,
            running: Some(running),
        }
    }

    fn fs(&self) -> &PassthroughFs {
        &self.fs
    }

    fn changes(&self) -> Changes<'_, PassthroughFs> {
        Changes::new(self.fs(), &self.ttl)
    }

    /// READDIR and READDIRPLUS requests the daemon got so far.
    fn dir_reads(&self) -> u64 {
        use kmod_shim::abi::Opcode;
        let stats = self.running.as_ref().unwrap().stats();
        stats.requests(Opcode::Readdir) + stats.requests(Opcode::Readdirplus)
    }

    /// The names in the mount's root, sorted.
    fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.mnt.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.mnt.path().join(name)
    }

    /// The node id of `name` in the root (PassthroughFs reports the source's
    /// inode numbers in st_ino, not node ids; a lookup gives the same node
    /// id the kernel got, and the reference is given back).
    fn nodeid(&self, name: &str) -> u64 {
        use fuse_backend_rs::api::filesystem::{Context, FileSystem};
        let ctx = Context::default();
        let e = self.fs.lookup(&ctx, 1, &cstr(name)).unwrap();
        self.fs.forget(&ctx, e.inode, 1);
        e.inode
    }

    /// Makes the kernel cache `names` with the long timeout: a first stat
    /// makes the kernel look them up, the policy promotes their inodes, and
    /// a second stat (the short timeout of 0 has expired) is answered with
    /// the long one.
    fn cache_long(&self, names: &[&str]) -> Vec<u64> {
        for n in names {
            stat(&self.path(n));
        }
        let inos: Vec<u64> = names.iter().map(|n| self.nodeid(n)).collect();
        let counts: Vec<Upcalls> = inos
            .iter()
            .chain(&[1])
            .map(|&nodeid| Upcalls { nodeid, total: 1 })
            .collect();
        self.ttl.refresh(Instant::now(), &counts);
        for (n, ino) in names.iter().zip(&inos) {
            assert!(self.ttl.is_long(*ino), "{n} promoted");
            stat(&self.path(n));
        }
        inos
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Unmounts and stops the workers before the directories go.
        drop(self.running.take());
    }
}

fn stat(p: &Path) -> fs::Metadata {
    fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn mode_attr(mode: u32) -> libc::stat64 {
    let mut st = fuse_backend_rs::api::filesystem::Entry::default().attr;
    st.st_mode = mode;
    st
}

fn size_attr(size: i64) -> libc::stat64 {
    let mut st = fuse_backend_rs::api::filesystem::Entry::default().attr;
    st.st_size = size;
    st
}

#[test]
fn setattr_is_seen_by_the_next_stat() {
    let f = Fixture::new();
    fs::write(f.src.path().join("f"), b"0123456789").unwrap();
    fs::set_permissions(f.src.path().join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    let ino = f.cache_long(&["f"])[0];
    let c = f.changes();

    f.ttl.set_invalidation_for_tests(false);
    c.setattr(ino, mode_attr(0o600), SetattrValid::MODE).unwrap();
    assert_eq!(
        stat(&f.path("f")).permissions().mode() & 0o777,
        0o644,
        "without invalidation the kernel serves its long-cached mode"
    );

    f.ttl.set_invalidation_for_tests(true);
    c.setattr(ino, mode_attr(0o640), SetattrValid::MODE).unwrap();
    assert_eq!(stat(&f.path("f")).permissions().mode() & 0o777, 0o640);
    c.setattr(ino, size_attr(3), SetattrValid::SIZE).unwrap();
    assert_eq!(stat(&f.path("f")).len(), 3, "truncate seen at once");
    assert_eq!(fs::read(f.path("f")).unwrap(), b"012", "and the data too");
}

#[test]
fn a_write_changing_size_and_mtime_is_seen_by_the_next_stat() {
    let f = Fixture::new();
    fs::write(f.src.path().join("w"), b"abc").unwrap();
    // An mtime well in the past, so the writes below move it whatever the
    // clock's granularity.
    fs::File::options()
        .write(true)
        .open(f.src.path().join("w"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let ino = f.cache_long(&["w"])[0];
    let before = stat(&f.path("w"));
    let c = f.changes();

    f.ttl.set_invalidation_for_tests(false);
    c.write(ino, 3, b"def").unwrap();
    assert_eq!(stat(&f.path("w")).len(), 3, "without invalidation: stale size");

    f.ttl.set_invalidation_for_tests(true);
    c.write(ino, 6, b"ghij").unwrap();
    let after = stat(&f.path("w"));
    assert_eq!(after.len(), 10);
    assert!(
        (after.mtime(), after.mtime_nsec()) > (before.mtime(), before.mtime_nsec()),
        "mtime moved"
    );
    assert_eq!(fs::read(f.path("w")).unwrap(), b"abcdefghij");
}

#[test]
fn rename_is_seen_by_the_next_lookup() {
    let f = Fixture::new();
    fs::write(f.src.path().join("a"), b"1").unwrap();
    fs::write(f.src.path().join("x"), b"2").unwrap();
    f.cache_long(&["a", "x"]);
    // The root is hot too: its listing is cached across opens (the second
    // listing reads no directory through the daemon).
    assert_eq!(f.list(), ["a", "x"]);
    let reads = f.dir_reads();
    assert_eq!(f.list(), ["a", "x"]);
    assert_eq!(f.dir_reads(), reads, "the listing came from the kernel's cache");
    let c = f.changes();

    f.ttl.set_invalidation_for_tests(false);
    c.rename(1, &cstr("x"), 1, &cstr("y")).unwrap();
    assert!(
        f.path("x").exists(),
        "without invalidation the old name is still cached"
    );
    // (No stale listing here: the change demoted the root, so its next
    // OPENDIR reply no longer keeps the cached listing.)

    f.ttl.set_invalidation_for_tests(true);
    c.rename(1, &cstr("a"), 1, &cstr("b")).unwrap();
    assert!(!f.path("a").exists(), "the old name is gone at once");
    assert_eq!(fs::read(f.path("b")).unwrap(), b"1");
    assert_eq!(f.list(), ["b", "y"], "the listing too");
}

#[test]
fn rename_over_a_file_drops_the_replaced_inode() {
    let f = Fixture::new();
    // Two sets of: a file, the file it replaces, and a second name of the
    // replaced one (after the rename, its only name, with one link).
    for i in 1..=2 {
        fs::write(f.src.path().join(format!("new{i}")), b"new").unwrap();
        fs::write(f.src.path().join(format!("old{i}")), b"old!").unwrap();
        fs::hard_link(
            f.src.path().join(format!("old{i}")),
            f.src.path().join(format!("keep{i}")),
        )
        .unwrap();
    }
    f.cache_long(&["new1", "old1", "keep1", "new2", "old2", "keep2"]);
    assert_eq!(stat(&f.path("keep1")).nlink(), 2);
    let c = f.changes();

    f.ttl.set_invalidation_for_tests(false);
    c.rename(1, &cstr("new1"), 1, &cstr("old1")).unwrap();
    assert_eq!(
        stat(&f.path("keep1")).nlink(),
        2,
        "without invalidation: stale link count"
    );

    f.ttl.set_invalidation_for_tests(true);
    c.rename(1, &cstr("new2"), 1, &cstr("old2")).unwrap();
    assert_eq!(fs::read(f.path("old2")).unwrap(), b"new");
    assert!(!f.path("new2").exists());
    assert_eq!(
        stat(&f.path("keep2")).nlink(),
        1,
        "the replaced inode lost a link"
    );
}

#[test]
fn unlink_is_seen_through_the_name_and_through_a_hard_link() {
    let f = Fixture::new();
    fs::write(f.src.path().join("h1"), b"x").unwrap();
    fs::hard_link(f.src.path().join("h1"), f.src.path().join("h2")).unwrap();
    fs::hard_link(f.src.path().join("h1"), f.src.path().join("h3")).unwrap();
    f.cache_long(&["h1", "h2", "h3"]);
    assert_eq!(stat(&f.path("h3")).nlink(), 3);
    let c = f.changes();

    f.ttl.set_invalidation_for_tests(false);
    c.unlink(1, &cstr("h1")).unwrap();
    assert!(
        f.path("h1").exists(),
        "without invalidation the name is still cached"
    );
    assert_eq!(stat(&f.path("h3")).nlink(), 3, "and so is the link count");

    f.ttl.set_invalidation_for_tests(true);
    c.unlink(1, &cstr("h2")).unwrap();
    assert!(!f.path("h2").exists(), "the name is gone at once");
    assert_eq!(f.list(), ["h3"], "and from the listing");
    assert_eq!(
        stat(&f.path("h3")).nlink(),
        1,
        "the link count seen through another name"
    );
}
