//! Notifications reach the kernel: entries and attributes cached with long
//! timeouts are dropped by `inval_entry` / `inval_inode`, so the very next
//! stat sees a change made behind the kernel's back.
//!
//! Mounts for real through the library (root needed, as in CI).

use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use xfuse::{InitConfig, MountOptions, Session, Transport};

fn mount_long_ttl(src: &Path, mnt: &Path) -> xfuse::Running<PassthroughFs> {
    let cfg = Config {
        root_dir: src.to_str().unwrap().to_string(),
        attr_timeout: Duration::from_secs(600),
        entry_timeout: Duration::from_secs(600),
        inode_file_handles: true,
        ..Default::default()
    };
    let fs = PassthroughFs::<()>::new(cfg).unwrap();
    let opts = MountOptions::new("notify-test", "xfuse");
    let session = Session::mount(fs, mnt, &opts, &InitConfig::default())
        .expect("mount (these tests need root and /dev/fuse)");
    session.serve(Transport::Dev { threads: 2 }).unwrap()
}

#[test]
fn inval_inode_drops_cached_attributes() {
    let src = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), b"1234").unwrap();
    let running = mount_long_ttl(src.path(), mnt.path());
    let notifier = running.notifier();
    let through = mnt.path().join("f");

    assert_eq!(std::fs::metadata(&through).unwrap().len(), 4);
    std::fs::write(src.path().join("f"), b"123456789").unwrap();
    assert_eq!(
        std::fs::metadata(&through).unwrap().len(),
        4,
        "attributes are cached for 600 s"
    );

    // PassthroughFs hands out node ids in lookup order from the root (1):
    // "f", the only name looked up, is node 2.
    notifier.inval_inode(2, -1, 0).unwrap();
    assert_eq!(
        std::fs::metadata(&through).unwrap().len(),
        9,
        "stale size after invalidation"
    );
    drop(running);
}

#[test]
fn inval_entry_drops_cached_names() {
    let src = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a"), b"x").unwrap();
    let running = mount_long_ttl(src.path(), mnt.path());
    let notifier = running.notifier();

    assert!(mnt.path().join("a").exists());
    std::fs::rename(src.path().join("a"), src.path().join("b")).unwrap();
    assert!(mnt.path().join("a").exists(), "the entry is cached for 600 s");

    notifier.inval_entry(1, b"a").unwrap();
    assert!(!mnt.path().join("a").exists(), "stale name after invalidation");
    assert!(mnt.path().join("b").exists());
    // Invalidating what the kernel does not cache is not an error.
    notifier.inval_entry(1, b"never-looked-up").unwrap();
    assert!(notifier.inval_entry(1, b"").is_err());
    drop(running);
}
