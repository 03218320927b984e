//! POSIX behaviour through a real `xfused passthrough` mount: every test
//! starts its own daemon, works through the mountpoint, and checks the
//! result both through the mount and on the SOURCE directory it serves.

mod common;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{assert_errno, assert_rustix_errno, file_digest, pattern, sha256_hex, Mount};
use rustix::fs::{RenameFlags, Timespec, Timestamps, XattrFlags, CWD};

/// Writes `data` to a new file at `path` in `chunk_bytes` pieces (odd
/// sizes, so writes straddle page boundaries), then closes it.
fn write_chunked(path: &Path, data: &[u8], chunk_bytes: usize) {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for (i, chunk) in data.chunks(chunk_bytes).enumerate() {
        file.write_all(chunk).unwrap_or_else(|e| {
            panic!(
                "write chunk {i} ({} bytes) to {}: {e}",
                chunk.len(),
                path.display()
            )
        });
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn meta(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

/// Asserts that the file at `path` holds exactly `expected` (length and
/// SHA-256 compared, so a failure does not print megabytes).
#[track_caller]
fn assert_content(path: &Path, expected: &[u8]) {
    let (len, digest) = file_digest(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        (len, digest.as_str()),
        (expected.len() as u64, sha256_hex(expected).as_str()),
        "content of {} (length, sha256)",
        path.display()
    );
    let st_size = meta(path).len();
    assert_eq!(st_size, expected.len() as u64, "st_size of {}", path.display());
}

/// Writes a file of `size` bytes through the mount, reads it back through
/// the mount and from SOURCE.
fn round_trip_of_size(size: usize) {
    let m = Mount::start(&[]);
    let data = pattern(size, size as u64);
    let name = format!("file-{size}");
    write_chunked(&m.mnt().join(&name), &data, 65_537);
    assert_content(&m.mnt().join(&name), &data);
    assert_content(&m.src().join(&name), &data);
}

#[test]
fn write_read_0_bytes() {
    round_trip_of_size(0);
}

#[test]
fn write_read_1_byte() {
    round_trip_of_size(1);
}

#[test]
fn write_read_4095_bytes() {
    round_trip_of_size(4095);
}

#[test]
fn write_read_4096_bytes() {
    round_trip_of_size(4096);
}

#[test]
fn write_read_1_mib_plus_3() {
    round_trip_of_size((1 << 20) + 3);
}

#[test]
fn write_read_16_mib() {
    round_trip_of_size(16 << 20);
}

#[test]
fn file_written_in_source_reads_through_mount() {
    let m = Mount::start(&[]);
    let data = pattern((1 << 20) + 3, 7);
    write_chunked(&m.src().join("from-src"), &data, 1 << 16);
    assert_content(&m.mnt().join("from-src"), &data);
}

#[test]
fn pwrite_pread_at_offsets() {
    let m = Mount::start(&[]);
    let path = m.mnt().join("f");
    let mut expected = pattern(300_000, 1);
    write_chunked(&path, &expected, 4096);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");
    for (offset, len, seed) in [
        (0usize, 10usize, 2u64),
        (4095, 2, 3),
        (131_071, 70_000, 4),
        (299_990, 10, 5),
    ] {
        let patch = pattern(len, seed);
        file.write_all_at(&patch, offset as u64)
            .unwrap_or_else(|e| panic!("pwrite {len} bytes at {offset}: {e}"));
        expected[offset..offset + len].copy_from_slice(&patch);
        let mut back = vec![0u8; len];
        file.read_exact_at(&mut back, offset as u64)
            .unwrap_or_else(|e| panic!("pread {len} bytes at {offset}: {e}"));
        assert!(
            back == patch,
            "pread at {offset} after pwrite returned other bytes"
        );
    }
    drop(file);
    assert_content(&path, &expected);
    assert_content(&m.src().join("f"), &expected);
}

#[test]
fn truncate_grows_with_zeros_and_shrinks() {
    let m = Mount::start(&[]);
    let path = m.mnt().join("t");
    let original = pattern(10_000, 9);
    write_chunked(&path, &original, 10_000);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open rw");

    file.set_len(20_000).expect("ftruncate to 20000 (grow)");
    let mut grown = original.clone();
    grown.resize(20_000, 0);
    assert_content(&path, &grown);
    assert_content(&m.src().join("t"), &grown);

    file.set_len(3_000).expect("ftruncate to 3000 (shrink)");
    assert_content(&path, &original[..3_000]);
    assert_content(&m.src().join("t"), &original[..3_000]);

    // Growing again must not resurrect the bytes cut off before.
    file.set_len(5_000).expect("ftruncate to 5000 (grow again)");
    let mut regrown = original[..3_000].to_vec();
    regrown.resize(5_000, 0);
    assert_content(&path, &regrown);
    drop(file);

    // O_TRUNC on open.
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .expect("open O_TRUNC"),
    );
    assert_content(&path, b"");
    assert_content(&m.src().join("t"), b"");
}

#[test]
fn rename_over_existing_file_replaces_it() {
    let m = Mount::start(&[]);
    let (a, b) = (m.mnt().join("a"), m.mnt().join("b"));
    fs::write(&a, b"from a").expect("write a");
    fs::write(&b, b"old b").expect("write b");
    let ino_a = meta(&a).ino();
    fs::rename(&a, &b).expect("rename a -> b (b exists)");
    assert_errno(fs::metadata(&a), libc::ENOENT, "stat a after rename");
    assert_eq!(read(&b), b"from a", "content of b after rename");
    assert_eq!(meta(&b).ino(), ino_a, "b must be a's inode after rename");
    assert_eq!(read(&m.src().join("b")), b"from a", "SOURCE b after rename");
    assert!(!m.src().join("a").exists(), "SOURCE a still exists after rename");
}

#[test]
fn rename_across_directories() {
    let m = Mount::start(&[]);
    let mnt = m.mnt();
    fs::create_dir_all(mnt.join("d1/sub")).expect("mkdir d1/sub");
    fs::create_dir(mnt.join("d2")).expect("mkdir d2");
    fs::write(mnt.join("d1/file"), b"file").expect("write d1/file");
    fs::write(mnt.join("d1/sub/inner"), b"inner").expect("write d1/sub/inner");

    fs::rename(mnt.join("d1/file"), mnt.join("d2/moved")).expect("rename d1/file -> d2/moved");
    assert_eq!(read(&mnt.join("d2/moved")), b"file");
    assert_errno(
        fs::metadata(mnt.join("d1/file")),
        libc::ENOENT,
        "stat d1/file after move",
    );

    // A non-empty directory moves with its contents.
    fs::rename(mnt.join("d1/sub"), mnt.join("d2/sub2")).expect("rename d1/sub -> d2/sub2");
    assert_eq!(read(&mnt.join("d2/sub2/inner")), b"inner");
    assert_errno(
        fs::metadata(mnt.join("d1/sub")),
        libc::ENOENT,
        "stat d1/sub after move",
    );
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 name")
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&mnt.join("d1")), Vec::<String>::new(), "d1 after moves");
    assert_eq!(names(&mnt.join("d2")), ["moved", "sub2"], "d2 after moves");
    assert_eq!(
        read(&m.src().join("d2/sub2/inner")),
        b"inner",
        "SOURCE d2/sub2/inner"
    );
    // d1 lost a subdirectory, d2 gained one.
    assert_eq!(
        meta(&mnt.join("d1")).nlink(),
        meta(&m.src().join("d1")).nlink(),
        "nlink of d1"
    );
    assert_eq!(
        meta(&mnt.join("d2")).nlink(),
        meta(&m.src().join("d2")).nlink(),
        "nlink of d2"
    );
}

#[test]
fn rename_noreplace() {
    let m = Mount::start(&[]);
    let (a, b, c) = (m.mnt().join("a"), m.mnt().join("b"), m.mnt().join("c"));
    fs::write(&a, b"aaa").expect("write a");
    fs::write(&b, b"bbb").expect("write b");
    assert_rustix_errno(
        rustix::fs::renameat_with(CWD, &a, CWD, &b, RenameFlags::NOREPLACE),
        libc::EEXIST,
        "renameat2(a, b, RENAME_NOREPLACE) with b existing",
    );
    assert_eq!(read(&a), b"aaa", "a after refused rename");
    assert_eq!(read(&b), b"bbb", "b after refused rename");
    rustix::fs::renameat_with(CWD, &a, CWD, &c, RenameFlags::NOREPLACE)
        .unwrap_or_else(|e| panic!("renameat2(a, c, RENAME_NOREPLACE) with c absent: {e}"));
    assert_eq!(read(&c), b"aaa", "c after rename");
    assert_errno(fs::metadata(&a), libc::ENOENT, "stat a after rename");
    assert_eq!(read(&m.src().join("c")), b"aaa", "SOURCE c");
}

#[test]
fn rename_exchange_swaps() {
    let m = Mount::start(&[]);
    let mnt = m.mnt();
    fs::create_dir(mnt.join("dir")).expect("mkdir dir");
    let (a, b) = (mnt.join("a"), mnt.join("dir/b"));
    fs::write(&a, b"content of a").expect("write a");
    fs::write(&b, b"content of b").expect("write b");
    let (ino_a, ino_b) = (meta(&a).ino(), meta(&b).ino());
    rustix::fs::renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE)
        .unwrap_or_else(|e| panic!("renameat2(a, dir/b, RENAME_EXCHANGE): {e}"));
    assert_eq!(read(&a), b"content of b", "a after exchange");
    assert_eq!(read(&b), b"content of a", "dir/b after exchange");
    assert_eq!(
        (meta(&a).ino(), meta(&b).ino()),
        (ino_b, ino_a),
        "inodes after exchange"
    );
    assert_eq!(
        read(&m.src().join("a")),
        b"content of b",
        "SOURCE a after exchange"
    );
    assert_eq!(
        read(&m.src().join("dir/b")),
        b"content of a",
        "SOURCE dir/b after exchange"
    );
    assert_rustix_errno(
        rustix::fs::renameat_with(CWD, &a, CWD, mnt.join("missing"), RenameFlags::EXCHANGE),
        libc::ENOENT,
        "renameat2(a, missing, RENAME_EXCHANGE)",
    );
}

#[test]
fn hard_link_shares_inode() {
    let m = Mount::start(&[]);
    let (a, b) = (m.mnt().join("a"), m.mnt().join("b"));
    fs::write(&a, b"shared").expect("write a");
    fs::hard_link(&a, &b).expect("link a -> b");
    let (ma, mb) = (meta(&a), meta(&b));
    assert_eq!(ma.ino(), mb.ino(), "a and b must be the same inode");
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2), "nlink of a and b after link");
    assert_eq!(meta(&m.src().join("a")).nlink(), 2, "SOURCE nlink after link");

    // A write through one name shows through the other.
    OpenOptions::new()
        .append(true)
        .open(&b)
        .and_then(|mut f| f.write_all(b"+more"))
        .expect("append through b");
    assert_eq!(read(&a), b"shared+more", "a after writing through b");

    assert_errno(fs::hard_link(&a, &b), libc::EEXIST, "link a -> b again");
    fs::remove_file(&a).expect("unlink a");
    assert_eq!(meta(&b).nlink(), 1, "nlink of b after unlinking a");
    assert_eq!(read(&b), b"shared+more", "b after unlinking a");
    assert_eq!(
        meta(&m.src().join("b")).nlink(),
        1,
        "SOURCE nlink of b after unlinking a"
    );
}

#[test]
fn symlink_and_readlink() {
    let m = Mount::start(&[]);
    let mnt = m.mnt();
    fs::create_dir(mnt.join("dir")).expect("mkdir dir");
    fs::write(mnt.join("dir/target"), b"pointed at").expect("write dir/target");
    let link = mnt.join("link");
    std::os::unix::fs::symlink("dir/target", &link).expect("symlink link -> dir/target");
    assert_eq!(
        fs::read_link(&link).expect("readlink link"),
        Path::new("dir/target")
    );
    assert!(
        meta(&link).file_type().is_symlink(),
        "lstat of link is not a symlink"
    );
    assert_eq!(read(&link), b"pointed at", "reading through link");
    assert_eq!(
        fs::read_link(m.src().join("link")).expect("SOURCE readlink"),
        Path::new("dir/target")
    );

    // Dangling and long targets are stored verbatim.
    let long_target = format!("/nonexistent/{}", "x".repeat(1000));
    let dangling = mnt.join("dangling");
    std::os::unix::fs::symlink(&long_target, &dangling).expect("symlink dangling");
    assert_eq!(
        fs::read_link(&dangling).expect("readlink dangling"),
        Path::new(&long_target)
    );
    assert_eq!(
        meta(&dangling).len(),
        long_target.len() as u64,
        "st_size of a symlink"
    );
    assert_errno(
        fs::metadata(&dangling),
        libc::ENOENT,
        "stat through a dangling symlink",
    );
    assert_errno(
        std::os::unix::fs::symlink("x", &link),
        libc::EEXIST,
        "symlink over existing name",
    );
}

#[test]
fn mkdir_rmdir() {
    let m = Mount::start(&[]);
    let mnt = m.mnt();
    let d = mnt.join("d");
    fs::create_dir(&d).expect("mkdir d");
    assert!(meta(&d).is_dir(), "d is not a directory");
    assert!(m.src().join("d").is_dir(), "SOURCE d is not a directory");
    assert_errno(fs::create_dir(&d), libc::EEXIST, "mkdir d again");
    fs::create_dir(d.join("sub")).expect("mkdir d/sub");
    assert_eq!(meta(&d).nlink(), 3, "nlink of d with one subdirectory");
    assert_errno(fs::remove_dir(&d), libc::ENOTEMPTY, "rmdir d with a subdirectory");
    fs::remove_dir(d.join("sub")).expect("rmdir d/sub");
    fs::write(d.join("file"), b"x").expect("write d/file");
    assert_errno(fs::remove_dir(&d), libc::ENOTEMPTY, "rmdir d with a file");
    assert_errno(fs::remove_dir(d.join("file")), libc::ENOTDIR, "rmdir on a file");
    assert_errno(fs::remove_file(&d), libc::EISDIR, "unlink on a directory");
    fs::remove_file(d.join("file")).expect("unlink d/file");
    fs::remove_dir(&d).expect("rmdir empty d");
    assert_errno(fs::metadata(&d), libc::ENOENT, "stat d after rmdir");
    assert!(!m.src().join("d").exists(), "SOURCE d still exists after rmdir");
    assert_errno(fs::remove_dir(&d), libc::ENOENT, "rmdir d twice");
}

#[test]
fn open_errors() {
    let m = Mount::start(&[]);
    let f = m.mnt().join("f");
    fs::write(&f, b"x").expect("write f");
    assert_errno(
        OpenOptions::new().write(true).create_new(true).open(&f),
        libc::EEXIST,
        "open(O_CREAT|O_EXCL) on an existing file",
    );
    assert_errno(
        File::open(m.mnt().join("missing")),
        libc::ENOENT,
        "open a missing file",
    );
    assert_errno(
        OpenOptions::new().write(true).open(m.mnt()),
        libc::EISDIR,
        "open the root directory for writing",
    );
    assert_errno(
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&f),
        libc::ENOTDIR,
        "open(O_DIRECTORY) on a file",
    );
    assert_errno(
        File::open(f.join("below")),
        libc::ENOTDIR,
        "open a path below a file",
    );
}

/// All names of one directory listing (one opendir, read to the end), with
/// how often each was returned.
fn list_once(dir: &Path) -> HashMap<Vec<u8>, (usize, rustix::fs::FileType)> {
    let fd = File::open(dir).unwrap_or_else(|e| panic!("opendir {}: {e}", dir.display()));
    let stream =
        rustix::fs::Dir::read_from(&fd).unwrap_or_else(|e| panic!("fdopendir {}: {e}", dir.display()));
    let mut seen: HashMap<Vec<u8>, (usize, rustix::fs::FileType)> = HashMap::new();
    for (i, entry) in stream.enumerate() {
        let entry = entry.unwrap_or_else(|e| panic!("readdir {} (entry {i}): {e}", dir.display()));
        let slot = seen
            .entry(entry.file_name().to_bytes().to_vec())
            .or_insert((0, entry.file_type()));
        slot.0 += 1;
    }
    seen
}

#[test]
fn readdir_10000_entries() {
    const COUNT: usize = 10_000;
    let m = Mount::start(&[]);
    let dir = m.mnt().join("big");
    fs::create_dir(&dir).expect("mkdir big");
    // Names of varied lengths, up to the 255-byte limit, so entries straddle
    // the boundaries of the kernel's readdir buffers in different places.
    let names: Vec<String> = (0..COUNT)
        .map(|i| format!("{i:05}-{}", "n".repeat((i * 7) % 250)))
        .collect();
    for name in &names {
        File::create(dir.join(name)).unwrap_or_else(|e| panic!("create big/{name}: {e}"));
    }
    let seen = list_once(&dir);
    let mut problems = Vec::new();
    for name in &names {
        match seen.get(name.as_bytes()) {
            Some((1, rustix::fs::FileType::RegularFile)) => {}
            other => problems.push(format!(
                "{name:.12}..: {other:?}, expected once as a regular file"
            )),
        }
    }
    for dot in [&b"."[..], b".."] {
        match seen.get(dot) {
            Some((1, rustix::fs::FileType::Directory)) => {}
            other => problems.push(format!(
                "{:?}: {other:?}, expected once as a directory",
                String::from_utf8_lossy(dot)
            )),
        }
    }
    let created: std::collections::HashSet<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let extra: Vec<String> = seen
        .iter()
        .filter(|(name, _)| !matches!(name.as_slice(), b"." | b".."))
        .filter(|(name, _)| !created.contains(name.as_slice()))
        .map(|(name, seen)| format!("{:?}: {seen:?}, never created", String::from_utf8_lossy(name)))
        .collect();
    problems.extend(extra);
    assert!(
        problems.is_empty(),
        "one listing of {} returned {} distinct names for {COUNT} files; {} problems, first ones:\n{}",
        dir.display(),
        seen.len(),
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// A listing through the mount names what SOURCE holds, "." and ".."
/// included, as directories (fuse-backend-rs 0.14's PassthroughFs leaves
/// them out; the dispatcher adds them, since Linux programs count on
/// them: xfstests generic/401, 471).
#[test]
fn readdir_lists_what_source_holds() {
    let m = Mount::start(&[]);
    fs::create_dir(m.mnt().join("d")).expect("mkdir d");
    fs::write(m.mnt().join("d/f"), b"").expect("create d/f");
    let dots = |n: &String| n == "." || n == "..";
    for dir in [m.mnt().to_path_buf(), m.mnt().join("d")] {
        let seen = list_once(&dir);
        let src_seen = list_once(&m.src().join(dir.strip_prefix(m.mnt()).expect("under mnt")));
        let mut names: Vec<String> = seen
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| !dots(n))
            .collect();
        let mut src_names: Vec<String> = src_seen
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| !dots(n))
            .collect();
        names.sort();
        src_names.sort();
        assert_eq!(names, src_names, "names listed in {} vs in SOURCE", dir.display());
        for dot in [".", ".."] {
            let found = seen.get(dot.as_bytes());
            assert_eq!(
                found.map(|f| (f.0, f.1)),
                Some((1, rustix::fs::FileType::Directory)),
                "{dot:?} in {}",
                dir.display()
            );
        }
    }
}

/// One listing read a few entries per getdents64 call: every name with
/// the cookie (d_off) that resumes after it.
fn cookies(dir: &Path) -> Vec<(Vec<u8>, u64)> {
    let fd = File::open(dir).unwrap_or_else(|e| panic!("opendir {}: {e}", dir.display()));
    read_from(&fd, 0)
}

/// The rest of a listing of `fd` from `cookie`.
fn read_from(fd: &File, cookie: u64) -> Vec<(Vec<u8>, u64)> {
    rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(cookie)).expect("seekdir");
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
    let mut raw = rustix::fs::RawDir::new(fd, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = raw.next() {
        let entry = entry.expect("getdents64");
        out.push((entry.file_name().to_bytes().to_vec(), entry.next_entry_cookie()));
    }
    out
}

/// telldir/seekdir: cookies are distinct, and resuming from any of them,
/// on a new descriptor, gives the rest of the same listing (xfstests
/// generic/257). "." and ".." come once each.
fn listing_cookies_resume(m: &Mount) {
    let dir = m.mnt().join("cookies");
    fs::create_dir(&dir).expect("mkdir cookies");
    for i in 0..300 {
        File::create(dir.join(format!("entry-{i:03}-{}", "x".repeat(i % 40)))).expect("create");
    }
    let all = cookies(&dir);
    let names: Vec<&[u8]> = all.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(all.len(), 302, "300 files, \".\" and \"..\" ({})", m.describe());
    for dot in [&b"."[..], b".."] {
        assert_eq!(names.iter().filter(|n| **n == dot).count(), 1, "{dot:?} once");
    }
    let mut distinct: Vec<u64> = all.iter().map(|(_, c)| *c).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), all.len(), "every cookie distinct");
    for i in (0..all.len()).step_by(23).chain([0, 1, all.len() - 1]) {
        let fd = File::open(&dir).expect("opendir");
        let rest = read_from(&fd, all[i].1);
        let expected: Vec<&[u8]> = names[i + 1..].to_vec();
        let got: Vec<&[u8]> = rest.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(got, expected, "resumed after entry {i} ({})", m.describe());
    }
    // As xfstests' t_dir_offset2 (generic/257, 637): on one descriptor,
    // seek back to each entry's start (the cookie before it), last to
    // first, and read it again, in 200-byte getdents calls.
    let fd = File::open(&dir).expect("opendir");
    let first_pass = first_entries(&fd, 0, all.len());
    for i in (0..all.len()).rev() {
        let start = if i == 0 { 0 } else { all[i - 1].1 };
        let again = first_entries(&fd, start, 1);
        assert_eq!(
            again.first(),
            first_pass.get(i),
            "entry {i} after seeking to its start ({})",
            m.describe()
        );
    }
}

/// Up to `count` (name, inode) entries of `fd` from `cookie`, read in
/// 200-byte getdents64 calls.
fn first_entries(fd: &File, cookie: u64, count: usize) -> Vec<(Vec<u8>, u64)> {
    rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(cookie)).expect("seekdir");
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 200];
    let mut raw = rustix::fs::RawDir::new(fd, &mut buf);
    let mut out = Vec::new();
    while out.len() < count {
        match raw.next() {
            Some(entry) => {
                let entry = entry.expect("getdents64");
                out.push((entry.file_name().to_bytes().to_vec(), entry.ino()));
            }
            None => break,
        }
    }
    out
}

#[test]
fn listing_cookies_resume_on_passthrough() {
    listing_cookies_resume(&Mount::start(&[]));
}

#[test]
fn listing_cookies_resume_with_daemon_permissions() {
    listing_cookies_resume(&Mount::start(&["--permissions", "daemon"]));
}

#[test]
fn listing_cookies_resume_on_xfused_mount() {
    listing_cookies_resume(&Mount::start_meta(&[]));
}

fn getxattr(path: &Path, name: &str) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    let len = rustix::fs::getxattr(path, name, &mut buf[..])?;
    buf.truncate(len);
    Ok(buf)
}

fn listxattr_user(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65_536];
    let len = rustix::fs::listxattr(path, &mut buf[..])
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    let mut names: Vec<String> = buf[..len]
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(b"user."))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn xattr_set_get_list_remove() {
    let m = Mount::start(&[]);
    let f = m.mnt().join("f");
    fs::write(&f, b"x").expect("write f");
    let binary_value = [0u8, 1, 2, 0, 255];
    let big_value = pattern(3000, 11);

    rustix::fs::setxattr(&f, "user.one", &binary_value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr user.one: {e}"));
    rustix::fs::setxattr(&f, "user.big", &big_value, XattrFlags::CREATE)
        .unwrap_or_else(|e| panic!("setxattr user.big (XATTR_CREATE): {e}"));
    rustix::fs::setxattr(&f, "user.empty", b"", XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr user.empty (empty value): {e}"));
    assert_eq!(getxattr(&f, "user.one").expect("getxattr user.one"), binary_value);
    assert!(
        getxattr(&f, "user.big").expect("getxattr user.big") == big_value,
        "user.big value differs"
    );
    assert_eq!(getxattr(&f, "user.empty").expect("getxattr user.empty"), b"");
    assert_eq!(
        rustix::fs::getxattr(&f, "user.big", &mut [0u8; 10][..]).map_err(|e| e.raw_os_error()),
        Err(libc::ERANGE),
        "getxattr into a buffer too small"
    );
    assert_eq!(
        listxattr_user(&f),
        ["user.big", "user.empty", "user.one"],
        "listxattr"
    );
    assert_eq!(
        getxattr(&m.src().join("f"), "user.one").expect("SOURCE getxattr user.one"),
        binary_value
    );

    assert_rustix_errno(
        rustix::fs::setxattr(&f, "user.one", b"again", XattrFlags::CREATE),
        libc::EEXIST,
        "setxattr user.one with XATTR_CREATE when it exists",
    );
    assert_rustix_errno(
        rustix::fs::setxattr(&f, "user.missing", b"v", XattrFlags::REPLACE),
        libc::ENODATA,
        "setxattr user.missing with XATTR_REPLACE",
    );
    rustix::fs::setxattr(&f, "user.one", b"replaced", XattrFlags::REPLACE)
        .unwrap_or_else(|e| panic!("setxattr user.one (XATTR_REPLACE): {e}"));
    assert_eq!(getxattr(&f, "user.one").expect("getxattr user.one"), b"replaced");

    rustix::fs::removexattr(&f, "user.one").unwrap_or_else(|e| panic!("removexattr user.one: {e}"));
    assert_rustix_errno(
        getxattr(&f, "user.one"),
        libc::ENODATA,
        "getxattr user.one after remove",
    );
    assert_rustix_errno(
        rustix::fs::removexattr(&f, "user.one"),
        libc::ENODATA,
        "removexattr user.one twice",
    );
    assert_eq!(
        listxattr_user(&f),
        ["user.big", "user.empty"],
        "listxattr after remove"
    );
    assert_eq!(
        listxattr_user(&m.src().join("f")),
        ["user.big", "user.empty"],
        "SOURCE listxattr"
    );

    // Directories carry xattrs too.
    let d = m.mnt().join("d");
    fs::create_dir(&d).expect("mkdir d");
    rustix::fs::setxattr(&d, "user.dir", b"on a dir", XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr on a directory: {e}"));
    assert_eq!(
        getxattr(&d, "user.dir").expect("getxattr on a directory"),
        b"on a dir"
    );
}

#[test]
fn chmod_chown_utimens() {
    let m = Mount::start(&[]);
    let f = m.mnt().join("f");
    let src_f = m.src().join("f");
    fs::write(&f, b"x").expect("write f");

    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).expect("chown f 1234:5678");
    assert_eq!(
        (meta(&f).uid(), meta(&f).gid()),
        (1234, 5678),
        "uid:gid after chown"
    );
    assert_eq!(
        (meta(&src_f).uid(), meta(&src_f).gid()),
        (1234, 5678),
        "SOURCE uid:gid after chown"
    );
    std::os::unix::fs::chown(&f, None, Some(42)).expect("chown f :42");
    assert_eq!(
        (meta(&f).uid(), meta(&f).gid()),
        (1234, 42),
        "uid:gid after chgrp only"
    );

    for mode in [0o640, 0o4751, 0o000, 0o777] {
        fs::set_permissions(&f, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {mode:o}: {e}"));
        assert_eq!(meta(&f).mode() & 0o7777, mode, "mode after chmod {mode:o}");
        assert_eq!(
            meta(&src_f).mode() & 0o7777,
            mode,
            "SOURCE mode after chmod {mode:o}"
        );
    }
    // fchmod and fchown through an open file.
    let file = OpenOptions::new().write(true).open(&f).expect("open f");
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("fchmod 600");
    std::os::unix::fs::fchown(&file, Some(7), Some(8)).expect("fchown 7:8");
    let st = meta(&f);
    assert_eq!(
        (st.mode() & 0o7777, st.uid(), st.gid()),
        (0o600, 7, 8),
        "after fchmod/fchown"
    );

    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        last_modification: Timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 987_654_321,
        },
    };
    rustix::fs::utimensat(CWD, &f, &times, rustix::fs::AtFlags::empty())
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", f.display()));
    for (side, path) in [("mount", &f), ("SOURCE", &src_f)] {
        let st = meta(path);
        assert_eq!(
            (st.atime(), st.atime_nsec(), st.mtime(), st.mtime_nsec()),
            (1_000_000_000, 123_456_789, 1_234_567_890, 987_654_321),
            "{side} atime/mtime (s, ns) after utimensat"
        );
    }
    // UTIME_OMIT leaves one, the other changes.
    let only_mtime = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 1,
        },
    };
    rustix::fs::utimensat(CWD, &f, &only_mtime, rustix::fs::AtFlags::empty())
        .unwrap_or_else(|e| panic!("utimensat with UTIME_OMIT: {e}"));
    let st = meta(&f);
    assert_eq!(
        (st.atime(), st.atime_nsec(), st.mtime(), st.mtime_nsec()),
        (1_000_000_000, 123_456_789, 1_500_000_000, 1),
        "atime/mtime after utimensat(atime=UTIME_OMIT)"
    );
    // futimens through the open file.
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 555_555_555);
    file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .expect("futimens");
    let st = meta(&src_f);
    assert_eq!(
        (st.mtime(), st.mtime_nsec()),
        (1_600_000_000, 555_555_555),
        "SOURCE mtime after futimens"
    );
    let st = meta(&f);
    assert_eq!(
        (st.mtime(), st.mtime_nsec()),
        (1_600_000_000, 555_555_555),
        "mtime after futimens"
    );

    // lchown changes the link, not its target.
    let link = m.mnt().join("link");
    std::os::unix::fs::symlink("f", &link).expect("symlink");
    std::os::unix::fs::lchown(&link, Some(99), Some(98)).expect("lchown link");
    assert_eq!(
        (meta(&link).uid(), meta(&link).gid()),
        (99, 98),
        "link uid:gid after lchown"
    );
    assert_eq!(
        (meta(&f).uid(), meta(&f).gid()),
        (7, 8),
        "target uid:gid after lchown of link"
    );
}

#[test]
fn statfs_matches_source() {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let m = Mount::start(&[]);
    let on_mnt = rustix::fs::statfs(m.mnt()).unwrap_or_else(|e| panic!("statfs {}: {e}", m.mnt().display()));
    let on_src = rustix::fs::statfs(m.src()).unwrap_or_else(|e| panic!("statfs {}: {e}", m.src().display()));
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or i32 depending on the target
    let f_type = on_mnt.f_type as i64;
    assert_eq!(f_type, FUSE_SUPER_MAGIC, "f_type of the mount");
    assert_eq!(on_mnt.f_bsize, on_src.f_bsize, "f_bsize: mount vs SOURCE");
    assert_eq!(on_mnt.f_blocks, on_src.f_blocks, "f_blocks: mount vs SOURCE");
    assert_eq!(on_mnt.f_files, on_src.f_files, "f_files: mount vs SOURCE");
    assert_eq!(on_mnt.f_namelen, on_src.f_namelen, "f_namelen: mount vs SOURCE");
    assert!(on_mnt.f_blocks > 0, "f_blocks is 0");
    assert!(
        on_mnt.f_bfree <= on_mnt.f_blocks,
        "f_bfree {} > f_blocks {}",
        on_mnt.f_bfree,
        on_mnt.f_blocks
    );
    assert!(
        on_mnt.f_bavail <= on_mnt.f_bfree,
        "f_bavail {} > f_bfree {}",
        on_mnt.f_bavail,
        on_mnt.f_bfree
    );
    assert!(
        on_mnt.f_ffree <= on_mnt.f_files,
        "f_ffree {} > f_files {}",
        on_mnt.f_ffree,
        on_mnt.f_files
    );
    // Free space moves with other tests' writes; it only has to be close.
    let free_diff = on_mnt.f_bfree.abs_diff(on_src.f_bfree);
    assert!(
        free_diff <= on_src.f_blocks / 100,
        "f_bfree differs by {free_diff} blocks: mount {} vs SOURCE {}",
        on_mnt.f_bfree,
        on_src.f_bfree
    );
}

#[test]
fn fsync_and_fdatasync_succeed() {
    let m = Mount::start(&[]);
    let path = m.mnt().join("f");
    let data = pattern(200_000, 3);
    let mut file = File::create(&path).expect("create f");
    file.write_all(&data).expect("write");
    file.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
    file.write_all(&data).expect("write again");
    file.sync_data()
        .unwrap_or_else(|e| panic!("fdatasync {}: {e}", path.display()));
    rustix::fs::fsync(&file).unwrap_or_else(|e| panic!("fsync (rustix) {}: {e}", path.display()));
    rustix::fs::fdatasync(&file).unwrap_or_else(|e| panic!("fdatasync (rustix) {}: {e}", path.display()));
    // After fsync the bytes are in SOURCE, even with the file still open.
    let mut twice = data.clone();
    twice.extend_from_slice(&data);
    assert_content(&m.src().join("f"), &twice);
    // A read-only descriptor and a directory can be synced too.
    File::open(&path)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync of a read-only fd: {e}"));
    File::open(m.mnt())
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of the root directory: {e}"));
    drop(file);
}

#[test]
fn concurrent_writers_each_verified() {
    const WRITERS: u64 = 8;
    const FILE_BYTES: usize = 4 << 20;
    let m = Mount::start(&["--threads", "4"]);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                let path = m.mnt().join(format!("w{i}"));
                scope.spawn(move || {
                    let data = pattern(FILE_BYTES, 100 + i);
                    // A different chunk size per writer so requests interleave unevenly.
                    write_chunked(&path, &data, 4096 * (i as usize + 1) + 1);
                    assert_content(&path, &data);
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(Box::new(format!("writer {i} failed: {panic:?}")));
            }
        }
    });
    for i in 0..WRITERS {
        assert_content(&m.src().join(format!("w{i}")), &pattern(FILE_BYTES, 100 + i));
    }
}

#[test]
fn append_mode_always_writes_at_the_end() {
    let m = Mount::start(&[]);
    let path = m.mnt().join("log");
    fs::write(&path, b"start:").expect("write log");
    let open_append = || {
        OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .expect("open O_APPEND")
    };
    let (mut one, mut two) = (open_append(), open_append());
    one.write_all(b"aaa").expect("append aaa");
    two.write_all(b"bbbb").expect("append bbbb");
    one.seek(SeekFrom::Start(0)).expect("seek to 0");
    one.write_all(b"cc").expect("append cc after seek to 0");
    assert_eq!(
        one.stream_position().expect("tell"),
        b"start:aaabbbbcc".len() as u64,
        "position after an O_APPEND write"
    );
    let mut back = Vec::new();
    two.seek(SeekFrom::Start(0)).expect("seek");
    two.read_to_end(&mut back).expect("read back");
    assert_eq!(back, b"start:aaabbbbcc", "through the mount");
    drop((one, two));
    assert_eq!(read(&m.src().join("log")), b"start:aaabbbbcc", "SOURCE");
}

#[test]
fn unlinked_open_file_stays_usable() {
    let m = Mount::start(&[]);
    let path = m.mnt().join("gone");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create gone");
    file.write_all(b"before unlink;").expect("write");
    fs::remove_file(&path).expect("unlink gone");
    assert_errno(fs::metadata(&path), libc::ENOENT, "stat after unlink");
    assert!(
        !m.src().join("gone").exists(),
        "SOURCE still has the name after unlink"
    );
    file.write_all(b"after unlink").expect("write after unlink");
    file.seek(SeekFrom::Start(0)).expect("seek");
    let mut back = String::new();
    file.read_to_string(&mut back).expect("read after unlink");
    assert_eq!(back, "before unlink;after unlink");
    assert_eq!(
        file.metadata().expect("fstat").nlink(),
        0,
        "nlink of an unlinked open file"
    );
    // The name can be reused at once for another file.
    fs::write(&path, b"new").expect("recreate the name");
    assert_eq!(read(&path), b"new");
}

/// Outcome of lseek(fd, offset, whence) as a comparable value.
fn seek_outcome(file: &File, pos: rustix::fs::SeekFrom) -> Result<u64, i32> {
    rustix::fs::seek(file, pos).map_err(|e| e.raw_os_error())
}

#[test]
fn seek_data_and_hole_match_source() {
    const MIB: u64 = 1 << 20;
    let m = Mount::start(&[]);
    let path = m.mnt().join("sparse");
    {
        let file = File::create(&path).expect("create sparse");
        file.write_all_at(&pattern(4096, 1), 0).expect("write at 0");
        file.write_all_at(&pattern(4096, 2), MIB).expect("write at 1 MiB");
        file.set_len(3 * MIB).expect("ftruncate to 3 MiB");
        file.sync_all().expect("fsync");
    }
    let on_mnt = File::open(&path).expect("open through mount");
    let on_src = File::open(m.src().join("sparse")).expect("open in SOURCE");
    let offsets = [
        0,
        1,
        4095,
        4096,
        65_536,
        MIB - 1,
        MIB,
        MIB + 4096,
        2 * MIB,
        3 * MIB - 1,
        3 * MIB,
        4 * MIB,
    ];
    let mut mismatches = Vec::new();
    for offset in offsets {
        for (whence, pos) in [
            ("SEEK_DATA", rustix::fs::SeekFrom::Data(offset)),
            ("SEEK_HOLE", rustix::fs::SeekFrom::Hole(offset)),
        ] {
            let (a, b) = (seek_outcome(&on_mnt, pos), seek_outcome(&on_src, pos));
            if a != b {
                mismatches.push(format!("lseek({offset}, {whence}): mount {a:?}, SOURCE {b:?}"));
            }
        }
    }
    assert_eq!(
        seek_outcome(&on_mnt, rustix::fs::SeekFrom::Data(3 * MIB)),
        Err(libc::ENXIO),
        "SEEK_DATA at EOF"
    );
    assert!(
        mismatches.is_empty(),
        "SEEK_DATA/SEEK_HOLE through the mount differ from SOURCE (errno as number):\n{}",
        mismatches.join("\n")
    );
}

/// Two threads listing one 3,000-entry directory over and over: every
/// listing must be complete. (On `uring`, ring task work used to interrupt
/// the daemon's getdents64 after one entry — the thread saw a pending
/// signal — and PassthroughFs turned a lone "." into an empty listing; the
/// rings now defer their task work.)
#[test]
fn concurrent_listings_are_complete() {
    let m = Mount::start(&[]);
    let dir = m.src().join("many");
    fs::create_dir(&dir).expect("mkdir many");
    for i in 0..3000 {
        fs::write(dir.join(format!("f{i:05}")), b"").expect("create in SOURCE");
    }
    let listed = m.mnt().join("many");
    let counts: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let listed = listed.clone();
                s.spawn(move || {
                    (0..40)
                        .map(|_| fs::read_dir(&listed).expect("read_dir").count())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("lister panicked"))
            .collect()
    });
    let short: Vec<&usize> = counts.iter().filter(|&&n| n != 3000).collect();
    assert!(
        short.is_empty(),
        "{} of {} listings incomplete: {short:?}",
        short.len(),
        counts.len()
    );
}

/// A write by an unprivileged user clears the set-user-ID bit, as on a local
/// filesystem (xfused asks PassthroughFs to do it, FUSE_HANDLE_KILLPRIV_V2,
/// which spares the kernel a GETXATTR before every write).
#[test]
fn unprivileged_write_clears_setuid() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mount::start(&[]);
    for dir in [m.src(), m.mnt().parent().expect("mount parent")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    }
    let file = m.mnt().join("suid");
    fs::write(&file, b"start\n").expect("create");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o4777)).expect("chmod 4777");
    assert_eq!(
        fs::metadata(&file).expect("stat").permissions().mode() & 0o7777,
        0o4777
    );
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo more >> '{}'", file.display()))
        .status()
        .expect("running setpriv (util-linux)");
    assert!(status.success(), "write as uid 65534 failed: {status}");
    assert_eq!(fs::read(&file).expect("read back"), b"start\nmore\n");
    let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o777,
        "set-user-ID survived an unprivileged write: {mode:o}"
    );
    let src_mode = fs::metadata(m.src().join("suid"))
        .expect("stat source")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(src_mode, 0o777, "source file still set-user-ID: {src_mode:o}");
}

/// xfstests generic/637: a directory changed while one descriptor of it is
/// half read is seen changed by a new descriptor: no removed name, every
/// new one, each name with its inode number.
fn changes_seen_by_a_new_descriptor(m: &Mount) {
    let dir = m.mnt().join("changing");
    fs::create_dir(&dir).expect("mkdir changing");
    for n in 1..=100 {
        File::create(dir.join(n.to_string())).expect("create");
    }
    let mut removed = Vec::new();
    for n in (10..=100).step_by(10) {
        // Half read: one small getdents on an open descriptor.
        let open = File::open(&dir).expect("opendir");
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 200];
        let mut raw = rustix::fs::RawDir::new(&open, &mut buf);
        assert!(raw.next().is_some(), "a first entry");
        fs::remove_file(dir.join(n.to_string())).expect("unlink");
        removed.push(n.to_string());
        File::create(dir.join(format!("new{n}"))).expect("create new");
        let fresh = File::open(&dir).expect("opendir again");
        let listed = read_from(&fresh, 0);
        let names: std::collections::HashSet<String> = listed
            .iter()
            .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
            .collect();
        for gone in &removed {
            assert!(
                !names.contains(gone),
                "{gone} listed after its unlink ({})",
                m.describe()
            );
        }
        assert!(
            names.contains(&format!("new{n}")),
            "new{n} not listed ({})",
            m.describe()
        );
        let fresh = File::open(&dir).expect("opendir again");
        let stream = rustix::fs::Dir::read_from(&fresh).expect("fdopendir");
        for entry in stream {
            let entry = entry.expect("readdir");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let st = fs::symlink_metadata(dir.join(&name)).expect("stat a listed name");
            assert_eq!(
                entry.ino(),
                st.ino(),
                "{name}: d_ino against st_ino ({})",
                m.describe()
            );
        }
    }
}

#[test]
fn changes_seen_by_a_new_descriptor_on_passthrough() {
    changes_seen_by_a_new_descriptor(&Mount::start(&[]));
}

#[test]
fn changes_seen_by_a_new_descriptor_with_adaptive_caching() {
    changes_seen_by_a_new_descriptor(&Mount::start(&["--cache-policy", "adaptive"]));
}

#[test]
fn changes_seen_by_a_new_descriptor_on_xfused_mount() {
    changes_seen_by_a_new_descriptor(&Mount::start_meta(&[]));
}
