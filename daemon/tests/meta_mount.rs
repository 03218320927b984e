//! The distributed filesystem through a real mount: `xfused mount` on its
//! embedded metadata engine (fresh DATA directory per test), on the
//! transport under test (`XFUSE_TEST_TRANSPORT`). Everything is checked
//! through the mount, since the namespace has no source directory to compare
//! with; remounting checks what was stored.

mod common;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{assert_errno, assert_rustix_errno, file_digest, pattern, run, sha256_hex, Mount};
use rustix::fs::{RenameFlags, XattrFlags, CWD};

/// Chunk files under DATA/chunks (file data lives there).
fn chunk_files(data: &Path) -> usize {
    let mut n = 0;
    for sub in fs::read_dir(data.join("chunks")).expect("read DATA/chunks") {
        n += fs::read_dir(sub.unwrap().path()).unwrap().count();
    }
    n
}

#[test]
fn data_round_trips_across_chunks_with_offsets_and_truncate() {
    // 4 KiB chunks, so writes cross chunk boundaries.
    let m = Mount::start_meta(&["--chunk-size-kib", "4"]);
    let path = m.mnt().join("f");
    let data = pattern(1_000_003, 1);
    fs::write(&path, &data).expect("write f");
    let (len, digest) = file_digest(&path).expect("read f");
    assert_eq!((len, digest), (data.len() as u64, sha256_hex(&data)));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open f");
    file.write_all_at(b"XYZ", 4094)
        .expect("pwrite across a chunk boundary");
    let mut three = [0u8; 3];
    file.read_exact_at(&mut three, 4094).expect("pread");
    assert_eq!(&three, b"XYZ");
    let mut around = [0u8; 4];
    file.read_exact_at(&mut around, 4093).expect("pread around");
    assert_eq!(around, [data[4093], b'X', b'Y', b'Z']);
    // Shrink into the middle of a chunk, then grow: zeros after the cut.
    file.set_len(5000).expect("truncate to 5000");
    file.set_len(9000).expect("grow to 9000");
    let mut back = Vec::new();
    fs::File::open(&path).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 9000);
    assert_eq!(&back[..4093], &data[..4093]);
    assert!(
        back[5000..].iter().all(|b| *b == 0),
        "bytes past a truncate read as zeros"
    );
    // A sparse write far out: the hole reads as zeros.
    file.write_all_at(b"end", 100_000).expect("write past the end");
    assert_eq!(fs::metadata(&path).unwrap().len(), 100_003);
    let mut hole = [1u8; 16];
    file.read_exact_at(&mut hole, 50_000).unwrap();
    assert_eq!(hole, [0; 16]);
}

#[test]
fn renames_links_and_symlinks() {
    let m = Mount::start_meta(&[]);
    let mnt = m.mnt();
    fs::create_dir_all(mnt.join("d1/sub")).unwrap();
    fs::create_dir(mnt.join("d2")).unwrap();
    fs::write(mnt.join("d1/sub/inner"), b"inner").unwrap();
    fs::rename(mnt.join("d1/sub"), mnt.join("d2/sub2")).expect("rename a directory across directories");
    assert_eq!(fs::read(mnt.join("d2/sub2/inner")).unwrap(), b"inner");
    assert_eq!(fs::metadata(mnt.join("d1")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(mnt.join("d2")).unwrap().nlink(), 3);
    assert_errno(
        fs::rename(mnt.join("d2"), mnt.join("d2/sub2/x")),
        libc::EINVAL,
        "rename into own subtree",
    );
    fs::write(mnt.join("a"), b"aaa").unwrap();
    fs::write(mnt.join("b"), b"bbb").unwrap();
    fs::rename(mnt.join("a"), mnt.join("b")).expect("rename over a file");
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b"aaa");
    assert_errno(fs::metadata(mnt.join("a")), libc::ENOENT, "old name after rename");
    fs::write(mnt.join("c"), b"ccc").unwrap();
    assert_rustix_errno(
        rustix::fs::renameat_with(CWD, mnt.join("c"), CWD, mnt.join("b"), RenameFlags::NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto b",
    );
    rustix::fs::renameat_with(
        CWD,
        mnt.join("c"),
        CWD,
        mnt.join("d2/sub2"),
        RenameFlags::EXCHANGE,
    )
    .expect("RENAME_EXCHANGE of a file and a directory");
    assert_eq!(fs::read(mnt.join("d2/sub2")).unwrap(), b"ccc");
    assert_eq!(fs::read(mnt.join("c/inner")).unwrap(), b"inner");
    assert_eq!(
        fs::metadata(mnt.join("d2")).unwrap().nlink(),
        2,
        "d2 lost its subdirectory"
    );
    fs::hard_link(mnt.join("b"), mnt.join("c/b2")).expect("link");
    assert_eq!(fs::metadata(mnt.join("b")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(mnt.join("b")).unwrap().ino(),
        fs::metadata(mnt.join("c/b2")).unwrap().ino()
    );
    fs::remove_file(mnt.join("b")).unwrap();
    assert_eq!(fs::metadata(mnt.join("c/b2")).unwrap().nlink(), 1);
    std::os::unix::fs::symlink("c/b2", mnt.join("l")).expect("symlink");
    assert_eq!(fs::read_link(mnt.join("l")).unwrap(), Path::new("c/b2"));
    assert_eq!(
        fs::read(mnt.join("l")).unwrap(),
        b"aaa",
        "read through the symlink"
    );
    assert_errno(
        fs::remove_dir(mnt.join("c")),
        libc::ENOTEMPTY,
        "rmdir of a non-empty directory",
    );
}

#[test]
fn unlinked_open_file_keeps_its_data_until_the_last_close() {
    let m = Mount::start_meta(&[]);
    let path = m.mnt().join("gone");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create gone");
    file.write_all(&pattern(100_000, 3)).expect("write");
    let chunks_open = chunk_files(m.src());
    assert!(chunks_open >= 1, "the data is in the chunk store");
    fs::remove_file(&path).expect("unlink gone");
    assert_errno(fs::metadata(&path), libc::ENOENT, "stat after unlink");
    file.write_all(b"after unlink").expect("write after unlink");
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    file.read_to_end(&mut back).expect("read after unlink");
    assert_eq!(&back[..100_000], &pattern(100_000, 3)[..]);
    assert_eq!(&back[100_000..], b"after unlink");
    assert_eq!(file.metadata().unwrap().nlink(), 0);
    assert_eq!(chunk_files(m.src()), chunks_open, "data stays while open");
    drop(file);
    // The release reaches the daemon asynchronously after close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while chunk_files(m.src()) != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(chunk_files(m.src()), 0, "the last close deletes the data");
}

#[test]
fn readdir_lists_every_entry_once_and_statfs_counts_inodes() {
    let m = Mount::start_meta(&[]);
    let dir = m.mnt().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..3000 {
        fs::File::create(dir.join(format!("entry-{i:05}"))).unwrap();
    }
    let mut seen = HashSet::new();
    for e in fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(seen.insert(name.clone()), "{name} listed twice");
    }
    assert_eq!(seen.len(), 3000);
    let st = rustix::fs::statvfs(m.mnt()).expect("statvfs");
    assert_eq!(st.f_files - st.f_ffree, 3002, "root + many + 3000 files");
    assert_eq!(st.f_namemax, 255);
    let long = "n".repeat(256);
    assert_errno(
        fs::File::create(dir.join(long)),
        libc::ENAMETOOLONG,
        "256-byte name",
    );
}

#[test]
fn xattrs_through_the_mount() {
    let m = Mount::start_meta(&[]);
    let f = m.mnt().join("f");
    fs::write(&f, b"x").unwrap();
    rustix::fs::setxattr(&f, "user.one", b"\0\x01\x02", XattrFlags::empty()).expect("setxattr");
    assert_rustix_errno(
        rustix::fs::setxattr(&f, "user.one", b"again", XattrFlags::CREATE),
        libc::EEXIST,
        "XATTR_CREATE of an existing attribute",
    );
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&f, "user.one", &mut buf[..]).expect("getxattr");
    assert_eq!(&buf[..n], b"\0\x01\x02");
    assert_rustix_errno(
        rustix::fs::getxattr(&f, "user.one", &mut [0u8; 1][..]),
        libc::ERANGE,
        "small buffer",
    );
    let n = rustix::fs::listxattr(&f, &mut buf[..]).expect("listxattr");
    assert_eq!(&buf[..n], b"user.one\0");
    rustix::fs::removexattr(&f, "user.one").expect("removexattr");
    assert_rustix_errno(
        rustix::fs::getxattr(&f, "user.one", &mut buf[..]),
        libc::ENODATA,
        "after remove",
    );
}

#[test]
fn a_tree_round_trips_and_survives_a_remount() {
    let data = tempfile::tempdir().unwrap();
    let tree = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    {
        let m = Mount::start_meta_on(data.path(), &[]);
        run(Command::new("cp").arg("-r").arg(tree).arg(m.mnt().join("src")));
        run(Command::new("diff").arg("-r").arg(tree).arg(m.mnt().join("src")));
        fs::write(m.mnt().join("last"), b"written last").unwrap();
        assert!(m.stop().success());
    }
    let m = Mount::start_meta_on(data.path(), &[]);
    run(Command::new("diff").arg("-r").arg(tree).arg(m.mnt().join("src")));
    assert_eq!(fs::read(m.mnt().join("last")).unwrap(), b"written last");
}

#[test]
fn nothing_acknowledged_is_lost_when_the_daemon_is_killed() {
    let data = tempfile::tempdir().unwrap();
    {
        let mut m = Mount::start_meta_on(data.path(), &[]);
        for i in 0..200 {
            fs::write(m.mnt().join(format!("f{i}")), format!("content {i}")).unwrap();
        }
        fs::create_dir(m.mnt().join("d")).unwrap();
        fs::rename(m.mnt().join("f0"), m.mnt().join("d/moved")).unwrap();
        m.kill();
        rustix::mount::unmount(m.mnt(), rustix::mount::UnmountFlags::DETACH).expect("umount -l");
    }
    let m = Mount::start_meta_on(data.path(), &[]);
    for i in 1..200 {
        assert_eq!(
            fs::read_to_string(m.mnt().join(format!("f{i}"))).unwrap(),
            format!("content {i}")
        );
    }
    assert_eq!(fs::read_to_string(m.mnt().join("d/moved")).unwrap(), "content 0");
    assert_errno(fs::metadata(m.mnt().join("f0")), libc::ENOENT, "f0 was renamed");
}
