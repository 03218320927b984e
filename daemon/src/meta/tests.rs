//! The operation suite, run on every engine that lives in this process
//! (the in-memory one and the embedded one), and the conflict-and-retry
//! paths on the in-memory engine.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::check::check_namespace;
use super::embedded::{Durability, EmbeddedEngine};
use super::kv::{KvEngine, KvError, RetryPolicy, Txn};
use super::mem::MemEngine;
use super::schema::ROOT_INO;
use super::*;

const ROOT: Caller = Caller::ROOT;
const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
    groups: Vec::new(),
    check: true,
    umask: 0,
};
const BOB: Caller = Caller {
    uid: 1001,
    gid: 1001,
    groups: Vec::new(),
    check: true,
    umask: 0,
};

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        sleep: false,
        ..RetryPolicy::default()
    }
}

fn meta_on(engine: Arc<dyn KvEngine>) -> Meta {
    meta_with(engine, false)
}

/// A client, keeping its sessions in the process if `local_sessions`.
fn meta_with(engine: Arc<dyn KvEngine>, local_sessions: bool) -> Meta {
    let config = MetaConfig {
        retry: quick_retry(),
        local_sessions,
        ..MetaConfig::default()
    };
    Meta::connect(engine, config, Arc::new(SystemClock)).unwrap()
}

fn assert_sound(meta: &Meta) {
    let problems = check_namespace(meta.engine().as_ref()).unwrap();
    assert!(
        problems.is_empty(),
        "namespace inconsistent:\n{}",
        problems.join("\n")
    );
}

fn err<T: std::fmt::Debug>(r: Result<T, MetaError>) -> i32 {
    match r {
        Ok(v) => panic!("succeeded with {v:?}, expected an error"),
        Err(e) => e.errno(),
    }
}

fn names(meta: &Meta, dir: u64) -> Vec<String> {
    let mut out: Vec<String> = meta
        .readdir(dir, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| String::from_utf8(i.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    out.sort();
    out
}

fn file(meta: &Meta, dir: u64, name: &str) -> u64 {
    meta.mknod(&ROOT, dir, name.as_bytes(), libc::S_IFREG | 0o644, 0, &[], false)
        .unwrap()
        .0
}

fn dir(meta: &Meta, parent: u64, name: &str) -> u64 {
    meta.mkdir(&ROOT, parent, name.as_bytes(), 0o755).unwrap().0
}

fn create_lookup_getattr(meta: &Meta) {
    let f = file(meta, ROOT_INO, "a");
    let (ino, rec) = meta.lookup(&ROOT, ROOT_INO, b"a").unwrap();
    assert_eq!(ino, f);
    assert_eq!(rec.mode, libc::S_IFREG | 0o644);
    assert_eq!(rec.nlink, 1);
    assert_eq!(meta.getattr(f).unwrap(), rec);
    assert_eq!(err(meta.lookup(&ROOT, ROOT_INO, b"missing")), libc::ENOENT);
    assert_eq!(
        err(meta.mknod(&ROOT, ROOT_INO, b"a", libc::S_IFREG | 0o644, 0, &[], false)),
        libc::EEXIST
    );
    assert_eq!(
        err(meta.mknod(&ROOT, f, b"x", libc::S_IFREG, 0, &[], false)),
        libc::ENOTDIR
    );
    let long = vec![b'n'; 256];
    assert_eq!(
        err(meta.mknod(&ROOT, ROOT_INO, &long, libc::S_IFREG, 0, &[], false)),
        libc::ENAMETOOLONG
    );
    assert_eq!(err(meta.lookup(&ROOT, ROOT_INO, &long)), libc::ENAMETOOLONG);
    assert_eq!(
        err(meta.mknod(&ROOT, ROOT_INO, b"a/b", libc::S_IFREG, 0, &[], false)),
        libc::EINVAL
    );
    let (fifo, rec, _) = meta
        .mknod(&ROOT, ROOT_INO, b"fifo", libc::S_IFIFO | 0o600, 0, &[], false)
        .unwrap();
    assert_eq!(rec.kind(), libc::S_IFIFO);
    assert_eq!(meta.lookup(&ROOT, ROOT_INO, b"fifo").unwrap().0, fifo);
    let root = meta.getattr(ROOT_INO).unwrap();
    assert_eq!(root.entries, 2);
    assert_sound(meta);
}

fn mkdir_rmdir_nlink(meta: &Meta) {
    let d = dir(meta, ROOT_INO, "d");
    assert_eq!(meta.getattr(ROOT_INO).unwrap().nlink, 3);
    let sub = dir(meta, d, "sub");
    assert_eq!(meta.getattr(d).unwrap().nlink, 3);
    assert_eq!(meta.lookup(&ROOT, sub, b"..").unwrap().0, d);
    assert_eq!(err(meta.rmdir(&ROOT, ROOT_INO, b"d")), libc::ENOTEMPTY);
    file(meta, sub, "f");
    assert_eq!(err(meta.rmdir(&ROOT, sub, b"f")), libc::ENOTDIR);
    assert_eq!(err(meta.unlink(&ROOT, d, b"sub")), libc::EISDIR);
    meta.unlink(&ROOT, sub, b"f").unwrap();
    meta.rmdir(&ROOT, d, b"sub").unwrap();
    assert_eq!(meta.getattr(d).unwrap().nlink, 2);
    meta.rmdir(&ROOT, ROOT_INO, b"d").unwrap();
    assert_eq!(meta.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(err(meta.getattr(d)), libc::ENOENT);
    assert_sound(meta);
}

fn hard_links(meta: &Meta) {
    let f = file(meta, ROOT_INO, "f");
    let d = dir(meta, ROOT_INO, "d");
    assert_eq!(meta.link(&ROOT, f, d, b"g").unwrap().nlink, 2);
    assert_eq!(err(meta.link(&ROOT, d, ROOT_INO, b"dlink")), libc::EPERM);
    assert_eq!(err(meta.link(&ROOT, f, d, b"g")), libc::EEXIST);
    assert!(
        meta.unlink(&ROOT, ROOT_INO, b"f").unwrap().is_none(),
        "one link is left"
    );
    assert_eq!(meta.getattr(f).unwrap().nlink, 1);
    assert_sound(meta);
    let reclaim = meta
        .unlink(&ROOT, d, b"g")
        .unwrap()
        .expect("last link: data to delete");
    assert_eq!(reclaim.ino, f);
    assert_eq!(err(meta.getattr(f)), libc::ENOENT);
    assert_sound(meta);
}

fn rename_basic_and_replace(meta: &Meta) {
    let a = dir(meta, ROOT_INO, "a");
    let b = dir(meta, ROOT_INO, "b");
    let f = file(meta, a, "f");
    meta.rename(&ROOT, a, b"f", b, b"g", 0).unwrap();
    assert_eq!(names(meta, a), Vec::<String>::new());
    assert_eq!(names(meta, b), vec!["g"]);
    assert_eq!(meta.lookup(&ROOT, b, b"g").unwrap().0, f);
    // Over an existing file: the old one loses its last link.
    let h = file(meta, b, "h");
    let reclaim = meta
        .rename(&ROOT, b, b"g", b, b"h", 0)
        .unwrap()
        .expect("replaced file is gone");
    assert_eq!(reclaim.ino, h);
    assert_eq!(meta.lookup(&ROOT, b, b"h").unwrap().0, f);
    assert_eq!(names(meta, b), vec!["h"]);
    // A directory across directories: nlink of both parents.
    let sub = dir(meta, a, "sub");
    meta.rename(&ROOT, a, b"sub", b, b"sub2", 0).unwrap();
    assert_eq!(meta.getattr(a).unwrap().nlink, 2);
    assert_eq!(meta.getattr(b).unwrap().nlink, 3);
    assert_eq!(meta.lookup(&ROOT, sub, b"..").unwrap().0, b);
    // Directory over an empty directory, over a non-empty one, over a file.
    dir(meta, a, "empty");
    meta.rename(&ROOT, b, b"sub2", a, b"empty", 0).unwrap();
    assert_eq!(meta.getattr(a).unwrap().nlink, 3);
    assert_eq!(meta.getattr(b).unwrap().nlink, 2);
    let full = dir(meta, b, "full");
    file(meta, full, "x");
    assert_eq!(
        err(meta.rename(&ROOT, a, b"empty", b, b"full", 0)),
        libc::ENOTEMPTY
    );
    assert_eq!(err(meta.rename(&ROOT, a, b"empty", b, b"h", 0)), libc::ENOTDIR);
    assert_eq!(err(meta.rename(&ROOT, b, b"h", a, b"empty", 0)), libc::EISDIR);
    assert_eq!(err(meta.rename(&ROOT, b, b"nope", a, b"x", 0)), libc::ENOENT);
    // Two links of one inode: nothing happens.
    meta.link(&ROOT, f, a, b"f2").unwrap();
    meta.rename(&ROOT, a, b"f2", b, b"h", 0).unwrap();
    assert_eq!(meta.getattr(f).unwrap().nlink, 2);
    assert_sound(meta);
}

fn rename_noreplace_exchange_subtree(meta: &Meta) {
    let a = dir(meta, ROOT_INO, "a");
    let b = dir(meta, a, "b");
    let c = dir(meta, b, "c");
    let f = file(meta, ROOT_INO, "f");
    assert_eq!(err(meta.rename(&ROOT, ROOT_INO, b"a", c, b"a", 0)), libc::EINVAL);
    assert_eq!(
        err(meta.rename(&ROOT, ROOT_INO, b"a", a, b"self", 0)),
        libc::EINVAL
    );
    assert_eq!(err(meta.rename(&ROOT, a, b"b", c, b"b", 0)), libc::EINVAL);
    meta.rename(&ROOT, b, b"c", ROOT_INO, b"c", 0).unwrap();
    assert_eq!(
        err(meta.rename(&ROOT, ROOT_INO, b"f", ROOT_INO, b"c", rename_flags::NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(
        err(meta.rename(&ROOT, ROOT_INO, b"f", ROOT_INO, b"c", 3)),
        libc::EINVAL
    );
    assert_eq!(
        err(meta.rename(&ROOT, ROOT_INO, b"f", ROOT_INO, b"zz", rename_flags::EXCHANGE)),
        libc::ENOENT
    );
    meta.rename(&ROOT, ROOT_INO, b"f", ROOT_INO, b"g", rename_flags::NOREPLACE)
        .unwrap();
    // Exchange a file in the root with directory b inside a.
    meta.rename(&ROOT, ROOT_INO, b"g", a, b"b", rename_flags::EXCHANGE)
        .unwrap();
    assert_eq!(meta.lookup(&ROOT, ROOT_INO, b"g").unwrap().0, b);
    assert_eq!(meta.lookup(&ROOT, a, b"b").unwrap().0, f);
    assert_eq!(meta.lookup(&ROOT, b, b"..").unwrap().0, ROOT_INO);
    assert_eq!(meta.getattr(a).unwrap().nlink, 2);
    assert_eq!(meta.getattr(ROOT_INO).unwrap().nlink, 5);
    // Exchanging a directory into its own subtree is refused.
    let inner = dir(meta, b, "inner");
    assert_eq!(
        err(meta.rename(&ROOT, ROOT_INO, b"g", inner, b"x", rename_flags::NOREPLACE)),
        libc::EINVAL
    );
    file(meta, inner, "x");
    assert_eq!(
        err(meta.rename(&ROOT, ROOT_INO, b"g", inner, b"x", rename_flags::EXCHANGE)),
        libc::EINVAL
    );
    assert_sound(meta);
}

fn symlinks_and_setattr(meta: &Meta) {
    let (l, rec) = meta.symlink(&ROOT, ROOT_INO, b"l", b"/some/target").unwrap();
    assert_eq!(rec.size, 12);
    assert_eq!(meta.readlink(l).unwrap(), b"/some/target");
    assert_eq!(err(meta.readlink(ROOT_INO)), libc::EINVAL);
    assert_eq!(
        err(meta.symlink(&ROOT, ROOT_INO, b"m", &vec![b'x'; 4096])),
        libc::ENAMETOOLONG
    );
    let f = file(meta, ROOT_INO, "f");
    let before = meta.getattr(f).unwrap();
    let (rec, old) = meta
        .setattr(
            &ROOT,
            f,
            &SetAttr {
                mode: Some(0o4700),
                uid: Some(7),
                gid: Some(8),
                size: Some(100),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(rec.mode, libc::S_IFREG | 0o4700);
    assert_eq!((rec.uid, rec.gid, rec.size, old), (7, 8, 100, Some(0)));
    assert!(rec.ctime >= before.ctime);
    let t = super::schema::Timestamp {
        sec: 1_000_000,
        nsec: 5,
    };
    let (rec, _) = meta
        .setattr(
            &ROOT,
            f,
            &SetAttr {
                atime: Some(TimeSet::At(t)),
                mtime: Some(TimeSet::At(t)),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!((rec.atime, rec.mtime), (t, t));
    assert_eq!(
        err(meta.setattr(
            &ROOT,
            ROOT_INO,
            &SetAttr {
                size: Some(1),
                ..SetAttr::default()
            }
        )),
        libc::EISDIR
    );
    assert_eq!(meta.usage().unwrap().bytes, 100);
    assert_eq!(
        err(meta.note_write(f, 77, 4096)),
        libc::EBADF,
        "a write needs a session"
    );
    let h = meta.open(&ROOT, f, false, true).unwrap().1;
    meta.note_write(f, h, 4096).unwrap();
    assert_eq!(meta.getattr(f).unwrap().size, 4096);
    meta.note_write(f, h, 10).unwrap();
    assert_eq!(
        meta.getattr(f).unwrap().size,
        4096,
        "writes below the end keep the size"
    );
    assert_eq!(
        meta.usage().unwrap(),
        Usage {
            inodes: 3,
            bytes: 4096
        }
    );
    // Past FILE_SIZE_MAX_BYTES: EFBIG, and nothing changes.
    let size = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    for past in [FILE_SIZE_MAX_BYTES + 1, u64::MAX] {
        assert_eq!(
            err(meta.setattr(&ROOT, f, &size(past))),
            libc::EFBIG,
            "setattr {past}"
        );
        assert_eq!(
            err(meta.note_write(f, h, past)),
            libc::EFBIG,
            "a write ending at {past}"
        );
    }
    assert_eq!(meta.getattr(f).unwrap().size, 4096);
    assert_eq!(meta.usage().unwrap().bytes, 4096);
    assert_sound(meta);
}

#[test]
fn files_at_the_size_limit_saturate_the_byte_counters_instead_of_overflowing() {
    let meta = meta_on(Arc::new(MemEngine::new()));
    // Three files of 2^62 bytes sum past i64::MAX, in one shard or across.
    let files: Vec<u64> = (0..3).map(|i| file(&meta, ROOT_INO, &format!("f{i}"))).collect();
    for (i, f) in files.iter().enumerate() {
        let set = SetAttr {
            size: Some(FILE_SIZE_MAX_BYTES),
            ..SetAttr::default()
        };
        if i == 0 {
            meta.setattr(&ROOT, *f, &set).unwrap();
        } else {
            let h = meta.open(&ROOT, *f, false, true).unwrap().1;
            meta.note_write(*f, h, FILE_SIZE_MAX_BYTES).unwrap();
        }
    }
    assert_eq!(meta.usage().unwrap().bytes, i64::MAX as u64);
}

fn permissions(meta: &Meta) {
    let d = meta.mkdir(&ROOT, ROOT_INO, b"d", 0o755).unwrap().0;
    meta.setattr(
        &ROOT,
        d,
        &SetAttr {
            uid: Some(ALICE.uid),
            gid: Some(ALICE.gid),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let (f, rec, _) = meta
        .mknod(&ALICE, d, b"mine", libc::S_IFREG | 0o600, 0, &[], false)
        .unwrap();
    assert_eq!((rec.uid, rec.gid), (ALICE.uid, ALICE.gid));
    assert_eq!(
        err(meta.mknod(&BOB, d, b"his", libc::S_IFREG | 0o600, 0, &[], false)),
        libc::EACCES
    );
    assert_eq!(err(meta.open(&BOB, f, true, false)), libc::EACCES);
    let (_, h) = meta.open(&ALICE, f, true, true).unwrap();
    meta.release(f, h).unwrap();
    assert_eq!(
        err(meta.setattr(
            &BOB,
            f,
            &SetAttr {
                mode: Some(0o777),
                ..SetAttr::default()
            }
        )),
        libc::EPERM
    );
    assert_eq!(
        err(meta.setattr(
            &ALICE,
            f,
            &SetAttr {
                uid: Some(BOB.uid),
                ..SetAttr::default()
            }
        )),
        libc::EPERM
    );
    assert_eq!(err(meta.unlink(&BOB, d, b"mine")), libc::EACCES);
    // Sticky world-writable directory: Bob may create but not remove Alice's.
    let tmp = meta.mkdir(&ROOT, ROOT_INO, b"tmp", 0o1777).unwrap().0;
    meta.mknod(&ALICE, tmp, b"a", libc::S_IFREG | 0o644, 0, &[], false)
        .unwrap();
    meta.mknod(&BOB, tmp, b"b", libc::S_IFREG | 0o644, 0, &[], false)
        .unwrap();
    assert_eq!(err(meta.unlink(&BOB, tmp, b"a")), libc::EPERM);
    assert_eq!(err(meta.rename(&BOB, tmp, b"a", tmp, b"c", 0)), libc::EPERM);
    meta.unlink(&BOB, tmp, b"b").unwrap();
    meta.lookup(&BOB, d, b"mine").unwrap();
    meta.setattr(
        &ROOT,
        d,
        &SetAttr {
            mode: Some(0o700),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(err(meta.lookup(&BOB, d, b"mine")), libc::EACCES);
    assert_eq!(err(meta.access(&BOB, f, access::R)), libc::EACCES);
    meta.access(&ALICE, f, access::R | access::W).unwrap();
    // Setgid directories hand their group down.
    let g = meta.mkdir(&ROOT, ROOT_INO, b"g", 0o2777).unwrap().0;
    meta.setattr(
        &ROOT,
        g,
        &SetAttr {
            gid: Some(50),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let (_, rec) = meta.mkdir(&ALICE, g, b"sub", 0o755).unwrap();
    assert_eq!(rec.gid, 50);
    assert_ne!(rec.mode & libc::S_ISGID, 0);
    assert_sound(meta);
}

fn open_unlinked_keeps_data(meta: &Meta) {
    let (f, _, h) = meta
        .mknod(&ROOT, ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, &[], true)
        .unwrap();
    let h = h.unwrap();
    let (_, h2) = meta.open(&ROOT, f, true, false).unwrap();
    assert!(
        meta.unlink(&ROOT, ROOT_INO, b"f").unwrap().is_none(),
        "open: data stays"
    );
    assert_eq!(meta.getattr(f).unwrap().nlink, 0);
    // Opened again (Linux does, through /proc/PID/fd), never named again.
    let (_, h3) = meta.open(&ROOT, f, true, false).unwrap();
    assert_eq!(err(meta.link(&ROOT, f, ROOT_INO, b"back")), libc::ENOENT);
    assert_sound(meta);
    assert!(meta.release(f, h).unwrap().is_none(), "still open twice");
    assert!(meta.release(f, h3).unwrap().is_none(), "still open once");
    let reclaim = meta.release(f, h2).unwrap().expect("last close deletes");
    assert_eq!(reclaim.ino, f);
    assert_eq!(err(meta.getattr(f)), libc::ENOENT);
    assert_sound(meta);
}

fn tmpfiles(meta: &Meta) {
    let d = dir(meta, ROOT_INO, "d");
    let listed = names(meta, d);
    let before = meta.usage().unwrap();
    assert_eq!(
        err(meta.tmpfile(&ALICE, d, 0o666)),
        libc::EACCES,
        "d is root's 0755"
    );
    let caller = Caller {
        umask: 0o022,
        ..Caller::ROOT
    };
    let (t, rec, h) = meta.tmpfile(&caller, d, 0o666).unwrap();
    assert_eq!(rec.kind(), libc::S_IFREG);
    assert_eq!(rec.mode & 0o7777, 0o644, "the umask applies");
    assert_eq!(rec.nlink, 0);
    assert_eq!(names(meta, d), listed, "no name appears");
    assert_sound(meta);

    // Named once: an ordinary file from then on.
    let linked = meta.link(&ROOT, t, d, b"named").unwrap();
    assert_eq!(linked.nlink, 1);
    assert_eq!(meta.lookup(&ROOT, d, b"named").unwrap().0, t);
    assert_sound(meta);
    assert!(meta.release(t, h).unwrap().is_none(), "named: it stays");
    assert_eq!(meta.getattr(t).unwrap().nlink, 1);

    // Unlinked while open again, it cannot be named a second time.
    let (_, h2) = meta.open(&ROOT, t, true, true).unwrap();
    assert!(meta.unlink(&ROOT, d, b"named").unwrap().is_none());
    assert_eq!(err(meta.link(&ROOT, t, d, b"again")), libc::ENOENT);
    assert!(
        meta.release(t, h2).unwrap().is_some(),
        "its last close deletes it"
    );

    // Never named: gone at its close, with nothing left behind.
    let (u, _, hu) = meta.tmpfile(&ROOT, d, 0o600).unwrap();
    let reclaim = meta.release(u, hu).unwrap().expect("the last close deletes it");
    assert_eq!(reclaim.ino, u);
    assert_eq!(err(meta.getattr(u)), libc::ENOENT);
    assert_eq!(err(meta.link(&ROOT, u, d, b"late")), libc::ENOENT);
    assert_eq!(meta.usage().unwrap().inodes, before.inodes);
    assert_sound(meta);

    // Only regular files, and only in a live directory.
    assert_eq!(err(meta.tmpfile(&ROOT, t, 0o600)), libc::ENOENT);
    assert_eq!(
        err(meta.tmpfile(&ROOT, file(meta, d, "plain"), 0o600)),
        libc::ENOTDIR
    );
}

fn readdir_cookies_are_stable(meta: &Meta) {
    let d = dir(meta, ROOT_INO, "d");
    for i in 0..50 {
        file(meta, d, &format!("f{i:02}"));
    }
    let mut seen = Vec::new();
    let mut cookie = 0;
    let mut round = 0;
    loop {
        let page = meta.readdir(d, cookie, 7).unwrap();
        if page.is_empty() {
            break;
        }
        for item in &page {
            seen.push(String::from_utf8(item.name.clone()).unwrap());
            assert!(item.cookie > cookie, "cookies grow");
            cookie = item.cookie;
        }
        // Churn between pages: remove a not-yet-listed entry and an already
        // listed one, add new ones, rename one.
        round += 1;
        assert!(round < 100, "listing does not end: {seen:?}");
        if round > 10 {
            continue; // no more churn: let the listing reach its end
        }
        let _ = meta.unlink(&ROOT, d, format!("f{:02}", 49 - round).as_bytes());
        let _ = meta.unlink(&ROOT, d, format!("f{:02}", round).as_bytes());
        file(meta, d, &format!("new{round}"));
        let _ = meta.rename(
            &ROOT,
            d,
            format!("f{:02}", 30 + round).as_bytes(),
            d,
            format!("moved{round}").as_bytes(),
            0,
        );
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an entry returned twice: {seen:?}");
    // Every entry that existed throughout: f12..f29 are never touched.
    for i in 12..30 {
        assert!(seen.contains(&format!("f{i:02}")), "f{i:02} skipped: {seen:?}");
    }
    assert_eq!(&seen[..2], &[".", ".."]);

    // generic/736: a reader renames every entry (in place) as it lists
    // them, a page at a time. Each keeps its place, so the listing ends
    // with every entry once, by its old name, and every name is new after.
    let d = dir(meta, ROOT_INO, "renamed");
    for i in 0..40 {
        file(meta, d, &format!("a{i:02}"));
    }
    let mut listed = Vec::new();
    let mut cookie = 0;
    loop {
        let page = meta.readdir(d, cookie, 3).unwrap();
        if page.is_empty() {
            break;
        }
        for item in &page {
            let name = String::from_utf8(item.name.clone()).unwrap();
            cookie = item.cookie;
            if let Some(number) = name.strip_prefix('a') {
                meta.rename(&ROOT, d, name.as_bytes(), d, format!("b{number}").as_bytes(), 0)
                    .unwrap();
            }
            listed.push(name);
            assert!(listed.len() <= 42, "the listing does not end: {listed:?}");
        }
    }
    let mut expected = vec![".".to_string(), "..".to_string()];
    expected.extend((0..40).map(|i| format!("a{i:02}")));
    assert_eq!(listed, expected, "each entry once, in creation order");
    let after: Vec<String> = meta
        .readdir(d, 0, 100)
        .unwrap()
        .into_iter()
        .map(|i| String::from_utf8(i.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(after, (0..40).map(|i| format!("b{i:02}")).collect::<Vec<_>>());
    assert_sound(meta);
}

fn xattrs_and_statfs(meta: &Meta) {
    let f = file(meta, ROOT_INO, "f");
    meta.setxattr(&ROOT, f, b"user.a", b"1", 0).unwrap();
    meta.setxattr(&ROOT, f, b"user.b", b"22", xattr_flags::CREATE)
        .unwrap();
    assert_eq!(
        err(meta.setxattr(&ROOT, f, b"user.b", b"x", xattr_flags::CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        err(meta.setxattr(&ROOT, f, b"user.c", b"x", xattr_flags::REPLACE)),
        libc::ENODATA
    );
    assert_eq!(meta.getxattr(f, b"user.b").unwrap(), b"22");
    assert_eq!(err(meta.getxattr(f, b"user.c")), libc::ENODATA);
    assert_eq!(
        meta.listxattr(f).unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    meta.removexattr(&ROOT, f, b"user.a").unwrap();
    assert_eq!(err(meta.removexattr(&ROOT, f, b"user.a")), libc::ENODATA);
    assert_eq!(err(meta.setxattr(&ROOT, f, &[b'x'; 256], b"", 0)), libc::ERANGE);
    assert_eq!(
        err(meta.setxattr(&ROOT, f, b"user.big", &vec![0; 65 * 1024], 0)),
        libc::E2BIG
    );
    assert_eq!(meta.usage().unwrap().inodes, 2);
    meta.unlink(&ROOT, ROOT_INO, b"f").unwrap();
    assert_eq!(meta.usage().unwrap().inodes, 1);
    assert_sound(meta);
}

fn replication_factor_per_directory(meta: &Meta) {
    let name = REPLICAS_XATTR.as_bytes();
    let (top, _) = meta.mkdir(&ROOT, ROOT_INO, b"top", 0o777).unwrap();
    let (d, _) = meta.mkdir(&ALICE, top, b"d", 0o777).unwrap();
    let before = file(meta, d, "before");
    // Unset: the cluster's default.
    assert_eq!(err(meta.getxattr(d, name)), libc::ENODATA);
    assert_eq!(err(meta.removexattr(&ALICE, d, name)), libc::ENODATA);
    // Only the owner (or root) sets it, only on a directory, only 1..=16.
    assert_eq!(err(meta.setxattr(&BOB, d, name, b"2", 0)), libc::EPERM);
    assert_eq!(err(meta.setxattr(&ALICE, top, name, b"2", 0)), libc::EPERM);
    for bad in [
        &b""[..],
        b"0",
        b"17",
        b"256",
        b"-1",
        b" 2",
        b"2x",
        b"0x2",
        b"1000",
    ] {
        assert_eq!(
            err(meta.setxattr(&ALICE, d, name, bad, 0)),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(err(meta.setxattr(&ROOT, before, name, b"2", 0)), libc::EINVAL);
    assert_eq!(
        err(meta.setxattr(&ALICE, d, name, b"2", xattr_flags::REPLACE)),
        libc::ENODATA
    );
    meta.setxattr(&ALICE, d, name, b"2\n", xattr_flags::CREATE)
        .unwrap();
    assert_eq!(meta.getxattr(d, name).unwrap(), b"2");
    assert_eq!(
        err(meta.setxattr(&ALICE, d, name, b"1", xattr_flags::CREATE)),
        libc::EEXIST
    );
    // Not an xattr kept in the store: not listed, not counted.
    assert!(meta.listxattr(d).unwrap().is_empty());
    assert_eq!(meta.getattr(d).unwrap().xattrs, 0);
    // What is made in it takes it; what was made before keeps the default;
    // symlinks and the like have none.
    let after = file(meta, d, "after");
    let (sub, _) = meta.mkdir(&ALICE, d, b"sub", 0o755).unwrap();
    let deeper = file(meta, sub, "deeper");
    let (link, _) = meta.symlink(&ALICE, d, b"l", b"after").unwrap();
    assert_eq!(meta.getattr(after).unwrap().replicas, 2);
    assert_eq!(meta.getattr(sub).unwrap().replicas, 2);
    assert_eq!(meta.getattr(deeper).unwrap().replicas, 2);
    assert_eq!(meta.getattr(link).unwrap().replicas, 0);
    assert_eq!(meta.getattr(before).unwrap().replicas, 0);
    assert_eq!(meta.getxattr(after, name).unwrap(), b"2");
    // A file keeps its factor when renamed out; changing the directory's
    // changes what is made from then on.
    meta.rename(&ALICE, d, b"after", top, b"moved", 0).unwrap();
    assert_eq!(meta.getattr(after).unwrap().replicas, 2);
    meta.setxattr(&ROOT, d, name, b"16", 0).unwrap();
    assert_eq!(meta.getattr(file(meta, d, "later")).unwrap().replicas, 16);
    assert_eq!(meta.getattr(sub).unwrap().replicas, 2);
    assert_eq!(err(meta.removexattr(&BOB, d, name)), libc::EPERM);
    meta.removexattr(&ALICE, d, name).unwrap();
    assert_eq!(err(meta.getxattr(d, name)), libc::ENODATA);
    assert_eq!(meta.getattr(file(meta, d, "last")).unwrap().replicas, 0);
    assert_sound(meta);
}

/// `u::rw-,u:1001:<bob>,g::r--,m::<mask>,o::r--` in the xattr form.
fn acl_naming_bob(bob: u16, mask: u16) -> Vec<u8> {
    use xfuse::acl::{tag, Acl, AclEntry};
    let e = |tag, perm, id| AclEntry { tag, perm, id };
    Acl::new(vec![
        e(tag::USER_OBJ, 6, 0),
        e(tag::USER, bob, BOB.uid),
        e(tag::GROUP_OBJ, 4, 0),
        e(tag::MASK, mask, 0),
        e(tag::OTHER, 4, 0),
    ])
    .unwrap()
    .to_xattr()
}

fn posix_acls(meta: &Meta) {
    use xfuse::acl::{tag, Acl, AclEntry, ACCESS_XATTR, DEFAULT_XATTR};
    const CAROL: Caller = Caller {
        uid: 1002,
        gid: 1002,
        groups: Vec::new(),
        check: true,
        umask: 0,
    };
    let (access, default) = (ACCESS_XATTR.as_bytes(), DEFAULT_XATTR.as_bytes());
    let shared = meta.mkdir(&ROOT, ROOT_INO, b"shared", 0o777).unwrap().0;
    let (f, rec, _) = meta
        .mknod(&ALICE, shared, b"f", libc::S_IFREG | 0o644, 0, &[], false)
        .unwrap();
    assert_eq!(rec.mode & 0o777, 0o644);
    let opens = |who: &Caller, write: bool| meta.open(who, f, !write, write).map(|(_, h)| meta.release(f, h));

    // Only the owner sets an ACL; a malformed one is EINVAL.
    assert_eq!(
        err(meta.setxattr(&BOB, f, access, &acl_naming_bob(6, 6), 0)),
        libc::EPERM
    );
    assert_eq!(
        err(meta.setxattr(&ALICE, f, access, b"\x02\0\0\0\x01", 0)),
        libc::EINVAL
    );
    // u:bob:--- refuses Bob what the mode gives everybody else.
    meta.setxattr(&ALICE, f, access, &acl_naming_bob(0, 4), 0)
        .unwrap();
    assert_eq!(
        meta.getattr(f).unwrap().mode & 0o777,
        0o644,
        "mask r-- is the group bits"
    );
    assert_eq!(err(opens(&BOB, false)), libc::EACCES);
    opens(&CAROL, false).unwrap().unwrap();
    assert_eq!(err(meta.access(&BOB, f, access::R)), libc::EACCES);
    // u:bob:rw- with mask rw- lets him write, and shows as group rw-.
    meta.setxattr(&ALICE, f, access, &acl_naming_bob(6, 6), 0)
        .unwrap();
    assert_eq!(meta.getattr(f).unwrap().mode & 0o777, 0o664);
    opens(&BOB, true).unwrap().unwrap();
    assert_eq!(err(opens(&CAROL, true)), libc::EACCES);
    // chmod 0640 bounds him by the new mask (r--) and rewrites the ACL.
    meta.setattr(
        &ALICE,
        f,
        &SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(err(opens(&BOB, true)), libc::EACCES);
    opens(&BOB, false).unwrap().unwrap();
    let stored = Acl::parse(&meta.getxattr(f, access).unwrap()).unwrap().unwrap();
    assert_eq!(stored.mode_bits(), 0o640);
    // An ACL the mode says all of is not kept: the mode takes its bits.
    let e = |tag, perm, id| AclEntry { tag, perm, id };
    let minimal = Acl::new(vec![
        e(tag::USER_OBJ, 7, 0),
        e(tag::GROUP_OBJ, 5, 0),
        e(tag::OTHER, 0, 0),
    ])
    .unwrap();
    meta.setxattr(&ALICE, f, access, &minimal.to_xattr(), 0).unwrap();
    assert_eq!(meta.getattr(f).unwrap().mode & 0o777, 0o750);
    assert_eq!(err(meta.getxattr(f, access)), libc::ENODATA);
    assert_eq!(meta.getattr(f).unwrap().xattrs, 0);
    // A default ACL only goes on a directory.
    assert_eq!(
        err(meta.setxattr(&ALICE, f, default, &acl_naming_bob(6, 6), 0)),
        libc::EACCES
    );

    // Entries created under a default ACL inherit it, bounded by their mode.
    let (d, _) = meta.mkdir(&ALICE, shared, b"d", 0o755).unwrap();
    let inheritable = Acl::new(vec![
        e(tag::USER_OBJ, 7, 0),
        e(tag::USER, 7, BOB.uid),
        e(tag::GROUP_OBJ, 5, 0),
        e(tag::MASK, 7, 0),
        e(tag::OTHER, 0, 0),
    ])
    .unwrap();
    meta.setxattr(&ALICE, d, default, &inheritable.to_xattr(), 0)
        .unwrap();
    let (g, rec, _) = meta
        .mknod(&ALICE, d, b"g", libc::S_IFREG | 0o666, 0, &[], false)
        .unwrap();
    assert_eq!(rec.mode & 0o777, 0o660);
    let inherited = Acl::parse(&meta.getxattr(g, access).unwrap()).unwrap().unwrap();
    assert!(inherited.entries().contains(&e(tag::USER, 7, BOB.uid)));
    assert_eq!(
        err(meta.getxattr(g, default)),
        libc::ENODATA,
        "files take no default ACL"
    );
    meta.open(&BOB, g, true, true).unwrap();
    let (sub, rec) = meta.mkdir(&ALICE, d, b"sub", 0o777).unwrap();
    assert_eq!(rec.mode & 0o777, 0o770);
    assert_eq!(rec.xattrs, 2, "a directory takes both");
    assert_eq!(meta.getxattr(sub, default).unwrap(), inheritable.to_xattr());
    let (link, rec) = meta.symlink(&ALICE, d, b"l", b"g").unwrap();
    assert_eq!((rec.xattrs, err(meta.getxattr(link, access))), (0, libc::ENODATA));
    // The creator's umask applies where no default ACL does, and only there.
    let masked = Caller {
        umask: 0o022,
        ..ALICE
    };
    let (_, rec, _) = meta
        .mknod(&masked, shared, b"plain", libc::S_IFREG | 0o666, 0, &[], false)
        .unwrap();
    assert_eq!(rec.mode & 0o777, 0o644);
    let (_, rec, _) = meta
        .mknod(&masked, d, b"shared_work", libc::S_IFREG | 0o666, 0, &[], false)
        .unwrap();
    assert_eq!(rec.mode & 0o777, 0o660, "the default ACL's, umask ignored");
    // Bob may search and write the new directory by its inherited ACL.
    meta.mknod(&BOB, sub, b"bobs", libc::S_IFREG | 0o600, 0, &[], false)
        .unwrap();
    assert_eq!(
        err(meta.mknod(&CAROL, sub, b"carols", libc::S_IFREG | 0o600, 0, &[], false)),
        libc::EACCES
    );
    assert_sound(meta);
}

fn concurrent_creates_and_renames(engine: Arc<dyn KvEngine>) {
    // Real contention: retries back off as in production.
    let config = MetaConfig::default();
    let metas: Vec<Arc<Meta>> = (0..4)
        .map(|_| Arc::new(Meta::connect(engine.clone(), config.clone(), Arc::new(SystemClock)).unwrap()))
        .collect();
    let shared = metas[0].mkdir(&ROOT, ROOT_INO, b"shared", 0o755).unwrap().0;
    let threads: Vec<_> = metas
        .iter()
        .enumerate()
        .map(|(t, meta)| {
            let meta = meta.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let name = format!("t{t}.{i}");
                    meta.mknod(
                        &ROOT,
                        shared,
                        name.as_bytes(),
                        libc::S_IFREG | 0o644,
                        0,
                        &[],
                        false,
                    )
                    .unwrap();
                    // Everyone renames onto the same few names: replaces race.
                    meta.rename(
                        &ROOT,
                        shared,
                        name.as_bytes(),
                        shared,
                        format!("hot{}", i % 3).as_bytes(),
                        0,
                    )
                    .unwrap_or_else(|e| panic!("rename {name}: {e:?}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(names(&metas[0], shared), vec!["hot0", "hot1", "hot2"]);
    assert_eq!(metas[0].usage().unwrap().inodes, 5);
    assert_sound(&metas[0]);
}

macro_rules! suite {
    ($module:ident, $make:expr, $local_sessions:expr) => {
        mod $module {
            use super::*;
            fn meta() -> (Meta, Option<tempfile::TempDir>) {
                let (engine, dir): (Arc<dyn KvEngine>, Option<tempfile::TempDir>) = $make;
                (meta_with(engine, $local_sessions), dir)
            }
            #[test]
            fn create_lookup_getattr() {
                super::create_lookup_getattr(&meta().0);
            }
            #[test]
            fn mkdir_rmdir_nlink() {
                super::mkdir_rmdir_nlink(&meta().0);
            }
            #[test]
            fn hard_links() {
                super::hard_links(&meta().0);
            }
            #[test]
            fn rename_basic_and_replace() {
                super::rename_basic_and_replace(&meta().0);
            }
            #[test]
            fn rename_noreplace_exchange_subtree() {
                super::rename_noreplace_exchange_subtree(&meta().0);
            }
            #[test]
            fn symlinks_and_setattr() {
                super::symlinks_and_setattr(&meta().0);
            }
            #[test]
            fn permissions() {
                super::permissions(&meta().0);
            }
            #[test]
            fn open_unlinked_keeps_data() {
                super::open_unlinked_keeps_data(&meta().0);
            }
            #[test]
            fn readdir_cookies_are_stable() {
                super::readdir_cookies_are_stable(&meta().0);
            }
            #[test]
            fn tmpfiles() {
                super::tmpfiles(&meta().0);
            }
            #[test]
            fn xattrs_and_statfs() {
                super::xattrs_and_statfs(&meta().0);
            }
            #[test]
            fn posix_acls() {
                super::posix_acls(&meta().0);
            }
            #[test]
            fn replication_factor_per_directory() {
                super::replication_factor_per_directory(&meta().0);
            }
            #[test]
            fn concurrent_creates_and_renames() {
                let (meta, _dir) = meta();
                super::concurrent_creates_and_renames(meta.engine().clone());
            }
        }
    };
}

suite!(on_mem, (Arc::new(MemEngine::new()), None), false);
suite!(
    on_embedded,
    {
        let dir = tempfile::tempdir().unwrap();
        let engine = EmbeddedEngine::open(dir.path(), Durability::default()).unwrap();
        (Arc::new(engine), Some(dir))
    },
    false
);
// The same rules with sessions kept in the process (an embedded mount's).
suite!(on_mem_local_sessions, (Arc::new(MemEngine::new()), None), true);

#[test]
fn embedded_store_survives_reopen_and_sync_mode_commits() {
    let dir = tempfile::tempdir().unwrap();
    let f = {
        let engine = Arc::new(EmbeddedEngine::open(dir.path(), Durability::Sync).unwrap());
        let meta = meta_on(engine);
        file(&meta, ROOT_INO, "kept")
    };
    let engine = Arc::new(EmbeddedEngine::open(dir.path(), Durability::default()).unwrap());
    let meta = meta_on(engine);
    assert_eq!(meta.lookup(&ROOT, ROOT_INO, b"kept").unwrap().0, f);
    let g = file(&meta, ROOT_INO, "new");
    assert!(g > f, "inode numbers are not reused after a reopen");
    assert_sound(&meta);
}

#[test]
fn a_stale_read_makes_the_commit_fail_and_nothing_is_written() {
    let engine = MemEngine::new();
    let mut setup = Txn::new(&engine);
    setup.put(b"k".to_vec(), b"1".to_vec());
    setup.commit().unwrap();
    let mut first = Txn::new(&engine);
    let mut second = Txn::new(&engine);
    assert_eq!(first.get(b"k").unwrap(), Some(b"1".to_vec()));
    assert_eq!(second.get(b"k").unwrap(), Some(b"1".to_vec()));
    first.put(b"k".to_vec(), b"2".to_vec());
    second.put(b"k".to_vec(), b"3".to_vec());
    second.put(b"other".to_vec(), b"x".to_vec());
    first.commit().unwrap();
    assert_eq!(second.commit(), Err(KvError::Conflict));
    assert_eq!(engine.get(b"k").unwrap().unwrap().0, b"2");
    assert!(
        engine.get(b"other").unwrap().is_none(),
        "a failed commit writes nothing"
    );
    // A key read as absent that appears meanwhile is a conflict too, and so
    // is a scan whose range gained a key.
    let mut absent = Txn::new(&engine);
    assert!(absent.get(b"new").unwrap().is_none());
    absent.put(b"x".to_vec(), b"y".to_vec());
    let mut scanner = Txn::new(&engine);
    assert_eq!(scanner.scan(b"a", b"z", 10).unwrap().len(), 1);
    scanner.put(b"y".to_vec(), b"y".to_vec());
    let mut writer = Txn::new(&engine);
    writer.put(b"new".to_vec(), b"1".to_vec());
    writer.commit().unwrap();
    assert_eq!(absent.commit(), Err(KvError::Conflict));
    assert_eq!(scanner.commit(), Err(KvError::Conflict));
}

#[test]
fn injected_conflicts_are_retried_until_the_bound() {
    let engine = Arc::new(MemEngine::new());
    let meta = meta_on(engine.clone());
    file(&meta, ROOT_INO, "warm-up"); // reserves inode numbers: one commit less below
                                      // Fail the next three commits: the create still succeeds, once.
    let failures = Arc::new(AtomicU32::new(3));
    let left = failures.clone();
    engine.set_fault(Some(Box::new(move |_| {
        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    })));
    let commits_before = engine.commits();
    file(&meta, ROOT_INO, "retried");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "the conflicts were hit");
    assert_eq!(engine.commits(), commits_before + 1, "committed exactly once");
    // Conflicts forever: the operation gives up with EAGAIN after the bound.
    let attempts = Arc::new(AtomicU32::new(0));
    let count = attempts.clone();
    engine.set_fault(Some(Box::new(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        true
    })));
    assert_eq!(err(meta.mkdir(&ROOT, ROOT_INO, b"never", 0o755)), libc::EAGAIN);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        RetryPolicy::default().attempts_max
    );
    engine.set_fault(None);
    assert_eq!(err(meta.lookup(&ROOT, ROOT_INO, b"never")), libc::ENOENT);
    assert_sound(&meta);
}

#[test]
fn a_lost_race_is_retried_on_fresh_state() {
    // Between the body's reads and its commit, another client takes the
    // name: the retry must see it and answer EEXIST, not overwrite it.
    let engine = Arc::new(MemEngine::new());
    let meta = meta_on(engine.clone());
    let other = meta_on(engine.clone());
    let mut raced = None;
    let (tx, rx) = std::sync::mpsc::channel();
    engine.set_fault(Some(Box::new(move |req| {
        if raced.is_none() && !req.writes.is_empty() {
            let (ino, _, _) = other
                .mknod(&ROOT, ROOT_INO, b"raced", libc::S_IFREG | 0o600, 0, &[], false)
                .unwrap();
            raced = Some(ino);
            tx.send(ino).unwrap();
        }
        false
    })));
    assert_eq!(
        err(meta.mknod(&ROOT, ROOT_INO, b"raced", libc::S_IFREG | 0o644, 0, &[], false)),
        libc::EEXIST
    );
    let winner = rx.recv().unwrap();
    assert_eq!(meta.lookup(&ROOT, ROOT_INO, b"raced").unwrap().0, winner);
    assert_eq!(meta.getattr(winner).unwrap().mode, libc::S_IFREG | 0o600);
    engine.set_fault(None);
    assert_sound(&meta);
}

/// A 3-member etcd cluster on 127.0.0.1 (ports in 26000-26999), each member
/// a child process; stopped (SIGKILL, by pid) and its data removed on drop.
struct EtcdCluster {
    members: Vec<Option<std::process::Child>>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    fn start() -> EtcdCluster {
        let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("etcd not found: install Debian's etcd-server (scripts/setup.sh does)");
        // Members' data on tmpfs when there is one: the test is about
        // transactions and failover, and three members fsyncing one shared
        // disk would make it slow, not more telling.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        // Six consecutive free ports, starting somewhere pid-dependent. A
        // lock file orders the test processes of this machine from the
        // probe until the members listen, so two of them (a stress run
        // beside the test command) never pick the same ports.
        let ports_lock = std::fs::File::create(std::env::temp_dir().join("xfuse-test-etcd-ports.lock"))
            .expect("creating the etcd ports lock file");
        ports_lock.lock().expect("locking the etcd ports lock file");
        let start = 26000 + (std::process::id() % 150) as u16 * 6;
        let base = (0..150u16)
            .map(|i| 26000 + (start - 26000 + i * 6) % 900)
            .find(|b| (0..6).all(|k| std::net::TcpListener::bind(("127.0.0.1", b + k)).is_ok()))
            .expect("six free ports in 26000-26899");
        let clients: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
        let peers: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", base + 3 + i))
            .collect();
        let initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", peers[i])).collect();
        let members = (0..3)
            .map(|i| {
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                Some(
                    std::process::Command::new(etcd)
                        .args(["--name", &format!("m{i}")])
                        .arg("--data-dir")
                        .arg(dir.path().join(format!("m{i}")))
                        .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                        .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                        .args(["--listen-peer-urls", &peers[i]])
                        .args(["--initial-advertise-peer-urls", &peers[i]])
                        .args(["--initial-cluster", &initial.join(",")])
                        .args(["--initial-cluster-state", "new"])
                        .args([
                            "--initial-cluster-token",
                            &format!("xfuse-test-{}", std::process::id()),
                        ])
                        .args([
                            "--max-txn-ops",
                            "10000",
                            "--heartbeat-interval",
                            "50",
                            "--election-timeout",
                            "500",
                        ])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
                        .stderr(std::process::Stdio::from(log))
                        .spawn()
                        .expect("spawning etcd"),
                )
            })
            .collect();
        let cluster = EtcdCluster {
            members,
            clients,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let healthy = etcd_engine(&cluster.clients, b"health/").and_then(|e| e.get(b"probe"));
            let listening = || (0..6).all(|k| std::net::TcpStream::connect(("127.0.0.1", base + k)).is_ok());
            if healthy.is_ok() && listening() {
                // Every member holds its ports: another process's probe now
                // sees them taken.
                drop(ports_lock);
                return cluster;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd cluster not healthy after 30 s: {healthy:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn etcd_engine(endpoints: &[String], prefix: &[u8]) -> Result<super::etcd::EtcdEngine, KvError> {
    super::etcd::EtcdEngine::connect(endpoints, prefix)
}

/// The operation suite on a real 3-member etcd cluster (each case under its
/// own key prefix), then a run of creates during which one member is
/// killed: operations continue and every acknowledged create is there.
#[test]
fn etcd_suite_on_a_three_node_cluster() {
    let mut cluster = EtcdCluster::start();
    type Case = (&'static str, fn(&Meta));
    let cases: [Case; 13] = [
        ("create_lookup_getattr", create_lookup_getattr),
        ("mkdir_rmdir_nlink", mkdir_rmdir_nlink),
        ("hard_links", hard_links),
        ("rename_basic_and_replace", rename_basic_and_replace),
        (
            "rename_noreplace_exchange_subtree",
            rename_noreplace_exchange_subtree,
        ),
        ("symlinks_and_setattr", symlinks_and_setattr),
        ("permissions", permissions),
        ("open_unlinked_keeps_data", open_unlinked_keeps_data),
        ("tmpfiles", tmpfiles),
        ("readdir_cookies_are_stable", readdir_cookies_are_stable),
        ("xattrs_and_statfs", xattrs_and_statfs),
        ("posix_acls", posix_acls),
        (
            "replication_factor_per_directory",
            replication_factor_per_directory,
        ),
    ];
    for (name, case) in cases {
        let engine = etcd_engine(&cluster.clients, format!("{name}/").as_bytes()).unwrap();
        case(&meta_on(Arc::new(engine)));
    }
    let engine = etcd_engine(&cluster.clients, b"concurrent/").unwrap();
    concurrent_creates_and_renames(Arc::new(engine));
    etcd_reads_see_one_revision_and_this_handles_commits(&cluster);

    // Failover: creates before, during and after a member's death.
    let engine: Arc<dyn KvEngine> = Arc::new(etcd_engine(&cluster.clients, b"failover/").unwrap());
    let meta = Meta::connect(engine.clone(), MetaConfig::default(), Arc::new(SystemClock)).unwrap();
    let d = meta.mkdir(&ROOT, ROOT_INO, b"d", 0o755).unwrap().0;
    let mut acknowledged = Vec::new();
    let mut failed_after_kill = 0;
    for i in 0..300 {
        if i == 100 {
            cluster.kill(0);
        }
        let name = format!("f{i}");
        match meta.mknod(&ROOT, d, name.as_bytes(), libc::S_IFREG | 0o644, 0, &[], false) {
            Ok(_) => acknowledged.push(name),
            // A commit cut off by the member's death has an unknown fate
            // (EIO); a retry of it may then find it done (EEXIST).
            Err(e) if i >= 100 => {
                failed_after_kill += 1;
                eprintln!("create {name} while a member is down: {e}");
            }
            Err(e) => panic!("create {name} with all members up: {e}"),
        }
    }
    assert!(
        failed_after_kill <= 10,
        "{failed_after_kill} creates failed after the kill: operations did not continue"
    );
    assert!(acknowledged.len() >= 290);
    for name in &acknowledged {
        meta.lookup(&ROOT, d, name.as_bytes())
            .unwrap_or_else(|e| panic!("acknowledged {name} is lost: {e}"));
    }
    let problems = check_namespace(engine.as_ref()).unwrap();
    assert!(
        problems.is_empty(),
        "namespace inconsistent:\n{}",
        problems.join("\n")
    );

    // A member left without a quorum: reads from what it has only within
    // the freshness bound of its last answer through the quorum, then
    // they fail as its commits do.
    let alone = etcd_engine(&cluster.clients[1..2], b"cut-off/").unwrap();
    Txn::new(&alone)
        .get(b"k")
        .expect("a read within the bound of connecting");
    cluster.kill(2);
    // The bound is a time: wait it out.
    std::thread::sleep(super::etcd::FRESHNESS + std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let read = Txn::new(&alone).get(b"k");
    assert!(
        read.is_err(),
        "a member without a quorum answered a read past the bound: {read:?}"
    );
    eprintln!("the cut-off read failed after {:?}: {read:?}", started.elapsed());
}

/// The index of the member of `clients` that leads the cluster.
fn etcd_leader(clients: &[String]) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (i, endpoint) in clients.iter().enumerate() {
            let mut c = etcd_client::Client::connect([format!("http://{endpoint}")], None)
                .await
                .unwrap();
            let status = c.status().await.unwrap();
            if status.header().unwrap().member_id() == status.leader() {
                return i;
            }
        }
        panic!("no member of {clients:?} leads")
    })
}

/// Reads at one revision: a transaction that read a key before another
/// client changed two sees the second as it was too, and commits without
/// validation (which would fail: the first key changed). And a handle's
/// own commit is seen by its next transaction even on a member that has
/// not applied it yet (the read is made again, linearizable).
fn etcd_reads_see_one_revision_and_this_handles_commits(cluster: &EtcdCluster) {
    let reader = etcd_engine(&cluster.clients, b"snapshot/").unwrap();
    let writer = etcd_engine(&cluster.clients, b"snapshot/").unwrap();
    let write = |a: &[u8], b: &[u8]| {
        let mut txn = Txn::new(&writer);
        txn.put(b"a".to_vec(), a.to_vec());
        txn.put(b"b".to_vec(), b.to_vec());
        txn.commit().unwrap();
    };
    write(b"a1", b"b1");
    let mut txn = Txn::new(&reader);
    assert_eq!(txn.get(b"a").unwrap().as_deref(), Some(&b"a1"[..]));
    write(b"a2", b"b2");
    assert_eq!(
        txn.get(b"b").unwrap().as_deref(),
        Some(&b"b1"[..]),
        "the second read of a transaction sees the first one's revision"
    );
    assert_eq!(txn.scan(b"a", b"c", 10).unwrap().len(), 2);
    txn.commit()
        .expect("a transaction that wrote nothing commits without validation");
    let mut txn = Txn::new(&reader);
    assert_eq!(txn.get(b"b").unwrap().as_deref(), Some(&b"b2"[..]));

    // Commits through the leader, reads on a follower at once after.
    let leader = etcd_leader(&cluster.clients);
    let follower = (leader + 1) % cluster.clients.len();
    let engine = etcd_engine(&cluster.clients, b"own-writes/").unwrap();
    for i in 0..200u32 {
        engine.use_member(leader);
        let mut txn = Txn::new(&engine);
        txn.put(b"k".to_vec(), i.to_be_bytes().to_vec());
        txn.commit().unwrap();
        engine.use_member(follower);
        let mut txn = Txn::new(&engine);
        assert_eq!(
            txn.get(b"k").unwrap(),
            Some(i.to_be_bytes().to_vec()),
            "commit {i}, read on another member"
        );
    }
}

#[test]
fn truncating_through_an_open_session_needs_no_write_permission() {
    let meta = meta_on(Arc::new(MemEngine::new()));
    let d = meta.mkdir(&ROOT, ROOT_INO, b"d", 0o777).unwrap().0;
    let (f, _, h) = meta
        .mknod(&ALICE, d, b"mine", libc::S_IFREG | 0o644, 0, &[], true)
        .unwrap();
    let h = h.unwrap();
    let chmod = SetAttr {
        mode: Some(0),
        ..SetAttr::default()
    };
    meta.setattr(&ALICE, f, &chmod).unwrap();
    let mut truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        err(meta.setattr(&ALICE, f, &truncate)),
        libc::EACCES,
        "truncate(2) by path"
    );
    truncate.handle = Some(h + 1);
    assert_eq!(
        err(meta.setattr(&ALICE, f, &truncate)),
        libc::EACCES,
        "a handle that is not open"
    );
    truncate.handle = Some(h);
    meta.setattr(&ALICE, f, &truncate)
        .expect("ftruncate(2) on the open file");
}

/// A CA, and certificates it signs for 127.0.0.1 (PEM: cert, key).
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    fn leaf(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The etcd engine against a member that speaks only TLS, requires client
/// certificates and, once auth is on, a user: plain HTTP is refused, TLS
/// with the member's CA and a client certificate works, a wrong password
/// is refused and the right one works.
#[test]
fn etcd_over_tls_with_client_certificates_and_a_user() {
    use super::etcd::{EtcdEngine, EtcdSecurity, EtcdTls};
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("etcd not found: install Debian's etcd-server (scripts/setup.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (server_cert, server_key) = ca.leaf("etcd member");
    let (client_cert, client_key) = ca.leaf("xfused");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", &ca.pem),
        write("server.pem", &server_cert),
        write("server.key", &server_key),
    );
    // Two free ports, held until etcd binds them (another test's etcd
    // cluster probes under the same lock).
    let ports_lock = std::fs::File::create(std::env::temp_dir().join("xfuse-test-etcd-ports.lock")).unwrap();
    ports_lock.lock().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client_port, peer_port) = (free(), free());
    let endpoint = format!("127.0.0.1:{client_port}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Kill(
        std::process::Command::new(etcd)
            .args(["--name", "tls"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("https://{endpoint}")])
            .args(["--advertise-client-urls", &format!("https://{endpoint}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer_port}")])
            .arg("--cert-file")
            .arg(&cert_file)
            .arg("--key-file")
            .arg(&key_file)
            .arg("--trusted-ca-file")
            .arg(&ca_file)
            .arg("--client-cert-auth")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("spawning etcd"),
    );
    let endpoints = vec![endpoint.clone()];
    let tls = EtcdTls {
        ca_pem: ca.pem.clone().into_bytes(),
        identity: Some((client_cert.clone().into_bytes(), client_key.clone().into_bytes())),
    };
    let secured = |user: Option<(&str, &str)>| EtcdSecurity {
        tls: Some(tls.clone()),
        user: user.map(|(u, p)| (u.to_string(), p.to_string())),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let engine = loop {
        match EtcdEngine::connect_secured(&endpoints, b"tls/", secured(None)) {
            Ok(e) => break e,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "etcd over TLS never answered: {e}\n{}",
                    std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default()
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    drop(ports_lock);
    let meta = meta_on(Arc::new(engine));
    let (f, _) = meta.mkdir(&ROOT, ROOT_INO, b"over-tls", 0o755).unwrap();
    assert!(meta.getattr(f).is_ok());
    // Plain HTTP to a TLS member: refused.
    assert!(
        EtcdEngine::connect(&endpoints, b"tls/").is_err(),
        "plain HTTP was answered"
    );
    // TLS without a client certificate: refused (--client-cert-auth).
    let anonymous = EtcdSecurity {
        tls: Some(EtcdTls {
            ca_pem: ca.pem.clone().into_bytes(),
            identity: None,
        }),
        user: None,
    };
    assert!(EtcdEngine::connect_secured(&endpoints, b"tls/", anonymous).is_err());
    // Users: root with a password, then auth on.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&ca.pem))
                .identity(etcd_client::Identity::from_pem(&client_cert, &client_key)),
        );
        let mut admin = etcd_client::Client::connect([format!("https://{endpoint}")], Some(options))
            .await
            .unwrap();
        admin.user_add("root", "right horse battery", None).await.unwrap();
        admin.user_grant_role("root", "root").await.unwrap();
        admin.auth_enable().await.unwrap();
    });
    assert!(
        EtcdEngine::connect_secured(&endpoints, b"tls/", secured(Some(("root", "wrong")))).is_err(),
        "a wrong password was accepted"
    );
    let engine = EtcdEngine::connect_secured(
        &endpoints,
        b"tls/",
        secured(Some(("root", "right horse battery"))),
    )
    .expect("the right password");
    let meta = meta_on(Arc::new(engine));
    assert!(meta.lookup(&ROOT, ROOT_INO, b"over-tls").is_ok());
}

/// Session keys of every inode in the store.
fn stored_sessions(meta: &Meta) -> usize {
    let start = vec![crate::meta::schema::tag::OPEN];
    let end = crate::meta::schema::prefix_end(&start);
    meta.engine().scan(&start, &end, usize::MAX).unwrap().len()
}

/// With sessions kept in the process, an open and a close write nothing to
/// the store, and the sessions still work: writes and truncation through
/// them, and a file unlinked while open lives until its last close (its
/// sessions reach the store with the unlink).
#[test]
fn local_sessions_reach_the_store_only_when_a_file_is_unlinked_while_open() {
    let meta = meta_with(Arc::new(MemEngine::new()), true);
    let f = file(&meta, ROOT_INO, "f");
    let (g, _, hg) = meta
        .mknod(&ROOT, ROOT_INO, b"g", libc::S_IFREG | 0o644, 0, &[], true)
        .unwrap();
    let hg = hg.unwrap();
    let (_, h1) = meta.open(&ALICE, f, true, false).unwrap();
    let (_, h2) = meta.open(&ROOT, f, true, true).unwrap();
    assert_eq!(stored_sessions(&meta), 0, "opens wrote sessions");
    // Writes through a session; ftruncate through one needs no write
    // permission (Alice opened read-only, but it is the session that
    // counts, as in `truncating_through_an_open_session...`).
    meta.note_write(f, h2, 10).unwrap();
    let truncate = SetAttr {
        size: Some(4),
        handle: Some(h1),
        ..SetAttr::default()
    };
    meta.setattr(&ALICE, f, &truncate).unwrap();
    assert_eq!(meta.getattr(f).unwrap().size, 4);
    assert_eq!(err(meta.note_write(f, 999, 1)), libc::EBADF);
    // Closing one that was never unlinked: nothing to do.
    assert_eq!(meta.release(g, hg).unwrap(), None);
    assert_eq!(meta.getattr(g).unwrap().nlink, 1);

    // Unlinked while open: both sessions go to the store, the file stays.
    assert_eq!(meta.unlink(&ROOT, ROOT_INO, b"f").unwrap(), None);
    assert_eq!(stored_sessions(&meta), 2);
    assert_sound(&meta);
    assert_eq!(meta.getattr(f).unwrap().nlink, 0);
    // Opened again (through /proc): that session is in the store at once.
    let (_, h3) = meta.open(&ROOT, f, true, false).unwrap();
    assert_eq!(stored_sessions(&meta), 3);
    assert_eq!(meta.release(f, h1).unwrap(), None);
    assert_eq!(meta.release(f, h2).unwrap(), None);
    let freed = meta.release(f, h3).unwrap().expect("the last close frees it");
    assert_eq!((freed.ino, freed.size), (f, 4));
    assert_eq!(err(meta.getattr(f)), libc::ENOENT);
    assert_eq!(stored_sessions(&meta), 0);
    assert_sound(&meta);

    // Replaced by a rename while open: the same.
    let a = file(&meta, ROOT_INO, "a");
    file(&meta, ROOT_INO, "b");
    let (_, ha) = meta.open(&ROOT, a, true, false).unwrap();
    meta.rename(&ROOT, ROOT_INO, b"b", ROOT_INO, b"a", 0).unwrap();
    assert_eq!(meta.getattr(a).unwrap().nlink, 0);
    assert_sound(&meta);
    assert!(meta.release(a, ha).unwrap().is_some());
    // A tmpfile given a name, then unlinked while its first handle is
    // still open: that handle holds it (the unlink looks for sessions in
    // the process, which knows the tmpfile's too).
    let (t, _, ht) = meta.tmpfile(&ROOT, ROOT_INO, 0o644).unwrap();
    meta.link(&ROOT, t, ROOT_INO, b"t").unwrap();
    assert_eq!(meta.unlink(&ROOT, ROOT_INO, b"t").unwrap(), None, "t is open");
    meta.note_write(t, ht, 7).unwrap();
    assert_sound(&meta);
    assert!(meta.release(t, ht).unwrap().is_some());
    assert_eq!(err(meta.getattr(t)), libc::ENOENT);
    // A client that ends forgets what it held.
    let (_, _) = meta.open(&ROOT, g, true, false).unwrap();
    meta.close_client().unwrap();
    assert_eq!(meta.local_sessions_held(), Some(0));
    assert_sound(&meta);
}

/// Opens race unlinks of the same names: an open that succeeds keeps its
/// file alive until it is closed, whichever commits first (a write
/// through it never finds the file gone), and at the end nothing is left
/// open or orphaned.
#[test]
fn local_sessions_hold_files_against_concurrent_unlinks() {
    const NAMES: u64 = 4;
    const ROUNDS: usize = 300;
    let meta = Arc::new(meta_with(Arc::new(MemEngine::new()), true));
    for i in 0..NAMES {
        file(&meta, ROOT_INO, &format!("f{i}"));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unlinker = {
        let (meta, stop) = (meta.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("f{}", i % NAMES);
                match meta.unlink(&ROOT, ROOT_INO, name.as_bytes()) {
                    Ok(_) | Err(MetaError::Errno(libc::ENOENT)) => {}
                    Err(e) => panic!("unlink: {e}"),
                }
                match meta.mknod(
                    &ROOT,
                    ROOT_INO,
                    name.as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    &[],
                    false,
                ) {
                    Ok(_) | Err(MetaError::Errno(libc::EEXIST)) => {}
                    Err(e) => panic!("mknod: {e}"),
                }
                i += 1;
            }
        })
    };
    let openers: Vec<_> = (0..2)
        .map(|t| {
            let meta = meta.clone();
            std::thread::spawn(move || {
                let mut opened = 0;
                for r in 0..ROUNDS {
                    let name = format!("f{}", (r as u64 + t) % NAMES);
                    let Ok((ino, _)) = meta.lookup(&ROOT, ROOT_INO, name.as_bytes()) else {
                        continue;
                    };
                    let h = match meta.open(&ROOT, ino, true, true) {
                        Ok((_, h)) => h,
                        // Unlinked between the lookup and the open.
                        Err(MetaError::Errno(libc::ENOENT)) => continue,
                        Err(e) => panic!("open: {e}"),
                    };
                    opened += 1;
                    // However the unlinks went meanwhile, the file is there.
                    meta.note_write(ino, h, 1 + r as u64)
                        .unwrap_or_else(|e| panic!("a write through an open file: {e}"));
                    meta.release(ino, h).unwrap();
                }
                opened
            })
        })
        .collect();
    let opened: usize = openers.into_iter().map(|t| t.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    unlinker.join().unwrap();
    assert!(opened > 0, "no open succeeded");
    assert_eq!(meta.local_sessions_held(), Some(0));
    assert_eq!(stored_sessions(&meta), 0);
    assert_sound(&meta);
}

/// Clients sharing one table (a metadata service on a store of its own):
/// one client's unlink sees another's open handles, held only in memory.
#[test]
fn a_shared_table_holds_each_clients_files_against_the_others_unlinks() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemEngine::new());
    let table = Arc::new(local::LocalSessions::new());
    let config = MetaConfig {
        retry: quick_retry(),
        shared_sessions: Some(table.clone()),
        ..MetaConfig::default()
    };
    let a = Meta::connect(engine.clone(), config.clone(), Arc::new(SystemClock)).unwrap();
    let b = Meta::connect(engine.clone(), config, Arc::new(SystemClock)).unwrap();
    let f = file(&a, ROOT_INO, "f");
    let (_, h) = a.open(&ROOT, f, true, true).unwrap();
    let (c, _, hc) = a
        .mknod(&ROOT, ROOT_INO, b"c", libc::S_IFREG | 0o644, 0, &[], true)
        .unwrap();
    assert_eq!(stored_sessions(&a), 0, "opens wrote sessions");
    assert_eq!(table.count(), 2);
    // B's unlinks keep A's files, and write A's sessions.
    assert_eq!(b.unlink(&ROOT, ROOT_INO, b"f").unwrap(), None);
    assert_eq!(b.unlink(&ROOT, ROOT_INO, b"c").unwrap(), None);
    assert_eq!(stored_sessions(&a), 2);
    assert_sound(&a);
    // B has no session of A's: its writes through A's handle are refused.
    assert_eq!(err(b.note_write(f, h, 1)), libc::EBADF);
    a.note_write(f, h, 3).unwrap();
    assert!(a.release(f, h).unwrap().is_some());
    assert!(a.release(c, hc.unwrap()).unwrap().is_some());
    assert_eq!(stored_sessions(&a), 0);
    // A client that ends, or is reaped, leaves nothing in the table.
    let g = file(&a, ROOT_INO, "g");
    a.open(&ROOT, g, true, false).unwrap();
    b.open(&ROOT, g, true, false).unwrap();
    a.close_client().unwrap();
    assert_eq!(table.count(), 1);
    b.close_client().unwrap();
    assert_eq!(table.count(), 0);
    assert_sound(&b);
}

/// A service restarted while its clients held files open: during the grace
/// period a file losing its last link is kept, its holder tells its handle
/// again and keeps it, and the grace period's end deletes the others.
#[test]
fn a_grace_period_keeps_files_until_their_holders_tell_their_handles_again() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemEngine::new());
    let config = |table: &Arc<local::LocalSessions>| MetaConfig {
        retry: quick_retry(),
        shared_sessions: Some(table.clone()),
        ..MetaConfig::default()
    };
    let before = Arc::new(local::LocalSessions::new());
    let holder = Meta::connect(engine.clone(), config(&before), Arc::new(SystemClock)).unwrap();
    let other = Meta::connect(engine.clone(), config(&before), Arc::new(SystemClock)).unwrap();
    let kept = file(&holder, ROOT_INO, "kept");
    let (_, h) = holder.open(&ROOT, kept, true, false).unwrap();
    let freed = file(&holder, ROOT_INO, "freed");
    let gone = file(&holder, ROOT_INO, "gone");
    let (_, hg) = holder.open(&ROOT, gone, true, false).unwrap();
    // The service restarts: a new table, its clients attached again.
    let after = Arc::new(local::LocalSessions::new());
    let own = Meta::connect(engine.clone(), config(&after), Arc::new(SystemClock)).unwrap();
    assert!(!own.store_has_linked_sessions().unwrap());
    let mut live = own.live_clients().unwrap();
    live.sort();
    assert_eq!(live, vec![holder.client_id(), other.client_id()]);
    after.begin_grace(own.client_id());
    let attach_again = |m: Meta| {
        Meta::attach(
            engine.clone(),
            config(&after),
            Arc::new(SystemClock),
            m.client_id(),
        )
        .unwrap()
    };
    let holder = attach_again(holder);
    let other = attach_again(other);
    // Unlinked before their holder spoke: all kept.
    for name in ["kept", "freed", "gone"] {
        assert_eq!(
            other.unlink(&ROOT, ROOT_INO, name.as_bytes()).unwrap(),
            None,
            "{name}"
        );
    }
    assert_sound(&own);
    // The holder tells its handles (one of a file since deleted for good
    // is skipped), then the grace period ends.
    assert_eq!(holder.reclaim_handles(&[(kept, h), (999_999, 1)]).unwrap(), 1);
    let reclaimed = own.end_grace().unwrap();
    let mut inos: Vec<u64> = reclaimed.iter().map(|r| r.ino).collect();
    inos.sort();
    assert_eq!(inos, vec![freed, gone], "held by no one told");
    assert!(!after.in_grace());
    assert_eq!(holder.getattr(kept).unwrap().nlink, 0);
    holder.note_write(kept, h, 2).unwrap();
    assert!(
        holder.release(kept, h).unwrap().is_some(),
        "the last close frees it"
    );
    assert_eq!(err(holder.note_write(gone, hg, 1)), libc::ENOENT);
    assert_eq!(stored_sessions(&own), 0);
    assert_eq!(after.count(), 0);
    assert_sound(&own);
    // After the grace period, an unlink deletes a file nobody holds.
    let late = file(&other, ROOT_INO, "late");
    assert!(other.unlink(&ROOT, ROOT_INO, b"late").unwrap().is_some());
    assert_eq!(err(own.getattr(late)), libc::ENOENT);
}
