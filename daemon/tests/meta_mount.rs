//! The distributed filesystem through a real mount: `xfused mount` on its
//! embedded metadata engine (fresh DATA directory per test), on the
//! transport under test (`XFUSE_TEST_TRANSPORT`). Everything is checked
//! through the mount, since the namespace has no source directory to compare
//! with; remounting checks what was stored.

mod common;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{assert_errno, assert_rustix_errno, file_digest, pattern, run, sha256_hex, with_timeout, Mount};
use rustix::fs::{RenameFlags, XattrFlags, CWD};

/// Chunk files under DATA/chunks (file data lives there), in
/// `chunks/LL/LAYOUT/INDEX`.
fn chunk_files(data: &Path) -> usize {
    let mut n = 0;
    for group in fs::read_dir(data.join("chunks")).expect("read DATA/chunks") {
        let group = group.unwrap();
        if !group.file_type().unwrap().is_dir() {
            continue; // chunks/FORMAT
        }
        for layout in fs::read_dir(group.path()).unwrap() {
            // A file's directory may be removed while this counts.
            n += fs::read_dir(layout.unwrap().path()).map_or(0, |d| d.count());
        }
    }
    n
}

/// The largest file `xfused mount` allows: 4 EiB.
const SIZE_MAX: u64 = xfused::meta::FILE_SIZE_MAX_BYTES;
const TIB: u64 = 1 << 40;
/// How long one operation on a huge sparse file may take. It costs a few
/// syscalls; the loops over every chunk index it replaced took minutes (a
/// 16 TiB file) or forever (4 EiB: 2^42 chunk indexes).
const OP_DEADLINE: Duration = Duration::from_secs(10);

/// Lists `dir` as `ls -l` does (readdir, then stat of each entry).
fn list(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        entry?.metadata()?;
        n += 1;
    }
    Ok(n)
}

/// Runs `op` on a helper thread while this thread keeps listing `mnt`, as
/// another user would. Panics if `op` fails or has not finished within
/// [`OP_DEADLINE`], or if one listing takes that long; else returns how
/// long `op` took.
fn quick_while_listing(
    mnt: &Path,
    what: &str,
    op: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Duration {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let result = op();
        let _ = tx.send((result, start.elapsed()));
    });
    let mut listings = 0;
    loop {
        let dir = mnt.to_path_buf();
        match with_timeout(OP_DEADLINE, move || list(&dir)) {
            None => panic!("listing the mount hung for {OP_DEADLINE:?} while {what} ran"),
            Some(Err(e)) => panic!("listing the mount while {what} ran: {e}"),
            Some(Ok(_)) => listings += 1,
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok((Ok(()), took)) => {
                eprintln!("{what}: {took:?} ({listings} listings of the mount meanwhile)");
                return took;
            }
            Ok((Err(e), _)) => panic!("{what}: {e}"),
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < OP_DEADLINE => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what} did not finish within {OP_DEADLINE:?}: its cost grows with the file's size")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
        }
    }
}

/// Every file and directory under `dir` (not `dir` itself), but those the
/// daemon removes meanwhile (the metadata engine rotates its files).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, out);
        }
    }
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
    let mut file = common::create_rw(&path);
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

/// A mount killed while it holds a file unlinked while open: the next
/// mount of the store deletes that file's data as it starts (its store is
/// its alone, so the dead mount's sessions need not wait for their lease),
/// and a second mount of a store in use is refused.
#[test]
fn a_killed_mounts_unlinked_open_file_is_deleted_by_the_next_mount() {
    let data = tempfile::tempdir().unwrap();
    {
        let mut m = Mount::start_meta_on(data.path(), &[]);
        let path = m.mnt().join("held");
        let mut file = common::create_rw(&path);
        file.write_all(&pattern(300_000, 5)).expect("write");
        file.sync_all().expect("fsync");
        fs::remove_file(&path).expect("unlink while open");
        assert!(chunk_files(data.path()) >= 1, "the data stays while open");
        // Another mount of the same store, while this one runs.
        let second = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_xfused"))
            .args(["mount", "--data"])
            .arg(data.path())
            .arg(second.path())
            .output()
            .expect("running xfused");
        assert!(!out.status.success(), "a second mount of a store in use started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("in use by another xfused"), "{err}");
        m.kill();
        rustix::mount::unmount(m.mnt(), rustix::mount::UnmountFlags::DETACH).expect("umount -l");
        drop(file);
    }
    assert!(chunk_files(data.path()) >= 1, "nothing deleted the data yet");
    let m = Mount::start_meta_on(data.path(), &[]);
    // Deleted before the mount serves, well within the 30 s lease.
    assert_eq!(chunk_files(data.path()), 0, "the dead mount's file is deleted");
    assert!(m.daemon_log().contains("reaping client"), "{}", m.daemon_log());
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

#[test]
fn a_huge_sparse_file_is_cut_synced_and_unlinked_at_once_while_others_list() {
    let m = Mount::start_meta(&[]);
    fs::write(m.mnt().join("neighbour"), b"hello").unwrap();
    let path = m.mnt().join("huge");
    let file = Arc::new(common::create_rw(&path));
    file.write_all_at(b"head", 0).expect("write at 0");
    let f = file.clone();
    quick_while_listing(m.mnt(), "truncate -s 4E", move || f.set_len(SIZE_MAX));
    let f = file.clone();
    quick_while_listing(m.mnt(), "a write of the last 4 bytes of 4 EiB", move || {
        f.write_all_at(b"tail", SIZE_MAX - 4)
    });
    assert_eq!(file.metadata().unwrap().len(), SIZE_MAX);
    let f = file.clone();
    quick_while_listing(m.mnt(), "a shrink from 4 EiB to 1 byte", move || f.set_len(1));
    assert_eq!(fs::read(&path).unwrap(), b"h");
    let f = file.clone();
    quick_while_listing(m.mnt(), "a write at 16 TiB", move || {
        f.write_all_at(b"far", 16 * TIB)
    });
    let f = file.clone();
    quick_while_listing(m.mnt(), "fsync of a sparse 16 TiB file", move || f.sync_all());
    drop(file);
    let p = path.clone();
    quick_while_listing(m.mnt(), "unlink of a sparse 16 TiB file", move || {
        fs::remove_file(p)
    });
    // Its chunks go at the unlink, or at the release if the close is still
    // on its way; the neighbour's one chunk stays.
    common::wait_for(
        "only the neighbour's chunk is left",
        OP_DEADLINE,
        || match chunk_files(m.src()) {
            1 => Ok(()),
            n => Err(format!("{n} chunk files")),
        },
    );
    assert_eq!(fs::read(m.mnt().join("neighbour")).unwrap(), b"hello");
}

#[test]
fn sizes_past_4_eib_are_efbig_and_change_nothing() {
    let m = Mount::start_meta(&[]);
    let path = m.mnt().join("big");
    let file = common::create_rw(&path);
    assert_errno(file.set_len(SIZE_MAX + 1), libc::EFBIG, "truncate to 4 EiB + 1");
    assert_errno(
        file.write_all_at(b"ab", SIZE_MAX),
        libc::EFBIG,
        "a write at 4 EiB",
    );
    assert_eq!(
        file.metadata().unwrap().len(),
        0,
        "the refused requests changed nothing"
    );
    assert_eq!(chunk_files(m.src()), 0, "the refused write left no data behind");
    file.set_len(SIZE_MAX).expect("4 EiB itself is allowed");
    assert_eq!(fs::metadata(&path).unwrap().len(), SIZE_MAX);
    // A write across the limit: the kernel sends the bytes of each page as
    // its own request, so the byte before the limit is written (a short
    // write, as POSIX has it) and the one past it refused.
    match file.write_at(b"ab", SIZE_MAX - 1) {
        Ok(n) => assert_eq!(n, 1, "a write across 4 EiB"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "a write across 4 EiB: {e}"),
    }
    assert_errno(file.write_at(b"b", SIZE_MAX), libc::EFBIG, "the rest of it");
    assert_eq!(file.metadata().unwrap().len(), SIZE_MAX, "never past the limit");
}

#[test]
fn file_data_and_metadata_on_disk_are_private() {
    let m = Mount::start_meta(&[]);
    let path = m.mnt().join("secret");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("create secret");
    file.write_all(b"top secret").unwrap();
    file.sync_all().unwrap();
    rustix::fs::setxattr(&path, "user.note", b"private too", XattrFlags::empty()).unwrap();
    drop(file);
    // The harness's temporary directory is 0700; open it up as /tmp is, so
    // only the data directory's own modes keep other users out.
    let data = m.src();
    fs::set_permissions(data.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut all = vec![data.to_path_buf()];
    walk(data, &mut all);
    let mut loose = Vec::new();
    let (mut chunk, mut meta_file) = (None, None);
    for p in &all {
        let Ok(md) = fs::symlink_metadata(p) else {
            continue; // removed by the daemon since the walk
        };
        let mode = md.permissions().mode() & 0o7777;
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            loose.push(format!("{:04o} {}", mode, p.display()));
        }
        if md.is_file() && md.len() > 0 {
            if p.starts_with(data.join("chunks")) && p.file_name().unwrap() != "FORMAT" {
                chunk.get_or_insert(p.clone());
            } else if p.starts_with(data.join("meta")) {
                meta_file.get_or_insert(p.clone());
            }
        }
    }
    assert!(loose.is_empty(), "not private:\n{}", loose.join("\n"));
    let chunk = chunk.expect("a chunk file under DATA/chunks");
    let meta_file = meta_file.expect("a metadata file under DATA/meta");
    assert_eq!(
        fs::read(&chunk).unwrap(),
        b"top secret",
        "{} holds the data",
        chunk.display()
    );
    for target in [&chunk, &meta_file] {
        let out = Command::new("cat")
            .arg(target)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("spawning cat as nobody");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("Permission denied") && out.stdout.is_empty(),
            "user nobody read {}: {}, stdout {:?}, stderr {stderr}",
            target.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// What a crash must leave of one file of [`fsynced_state_survives_kill_9_in_a_loop`].
#[derive(Debug, Clone)]
enum Expect {
    /// fsync'd (and its directory): exactly these bytes.
    Exactly(Vec<u8>),
    /// Being changed when the daemon died: `first` written and fsync'd,
    /// then cut to `cut` bytes and grown back with zeros. Any state of that
    /// sequence will do: the old bytes, or the cut ones, with zeros (never
    /// the old bytes) past the cut.
    Cutting { first: Vec<u8>, cut: usize },
    /// Being unlinked when the daemon died: these bytes, or gone.
    Unlinking(Vec<u8>),
    /// Unlinked, and the directory fsync'd.
    Gone,
}

fn dir_fsync(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Chunk size of the crash test's mounts.
const CRASH_CHUNK: usize = 64 << 10;

/// Whether `got` is a state a file can be left in by a crash while it was
/// cut from `first` to `cut` bytes and grown back: the bytes before the cut
/// as written; past it, each chunk either as written or zeros. A cut takes
/// one chunk at a time before the size changes, so a crash in its middle
/// leaves the old size with some chunks cut: bytes the file had, never
/// another file's or garbage, and a completed cut is never undone (the
/// `Exactly` state that follows checks that).
fn cut_state(first: &[u8], cut: usize, got: &[u8]) -> bool {
    if got.len() != first.len() && got.len() != cut {
        return false;
    }
    if got[..cut.min(got.len())] != first[..cut.min(got.len())] {
        return false;
    }
    let mut at = cut;
    while at < got.len() {
        let end = ((at / CRASH_CHUNK + 1) * CRASH_CHUNK).min(got.len());
        let part = &got[at..end];
        if part != &first[at..end] && part.iter().any(|&b| b != 0) {
            return false;
        }
        at = end;
    }
    true
}

/// One round's workload: per file, create + write + fsync + directory
/// fsync, then cut and grow back + fsync; every few files an earlier file
/// is unlinked (directory fsync'd). Records each file's state once its
/// fsync returned; stops at the first error (the daemon was killed).
fn crash_workload(dir: PathBuf, round: u64, expect: Arc<std::sync::Mutex<Vec<(PathBuf, Expect)>>>) {
    let set = |path: &Path, e: Expect| {
        let mut v = expect.lock().unwrap();
        match v.iter_mut().find(|(p, _)| p == path) {
            Some(slot) => slot.1 = e,
            None => v.push((path.to_path_buf(), e)),
        }
    };
    let step = |i: u64| -> io::Result<()> {
        let path = dir.join(format!("r{round}-f{i}"));
        // Up to ~5 chunks of 64 KiB, not aligned.
        let len = 1 + (i * 37_123 + round * 11) as usize % (300 << 10);
        let first = pattern(len, round << 32 | i);
        let mut f = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        f.write_all(&first)?;
        f.sync_all()?;
        dir_fsync(&dir)?;
        set(&path, Expect::Exactly(first.clone()));
        let cut = len / 3;
        set(
            &path,
            Expect::Cutting {
                first: first.clone(),
                cut,
            },
        );
        f.set_len(cut as u64)?;
        f.set_len(len as u64)?;
        f.sync_all()?;
        let mut now = first;
        now[cut..].fill(0);
        set(&path, Expect::Exactly(now));
        if i % 4 == 3 {
            let victim = dir.join(format!("r{round}-f{}", i - 2));
            let was = {
                let v = expect.lock().unwrap();
                match v.iter().find(|(p, _)| *p == victim) {
                    Some((_, Expect::Exactly(bytes))) => bytes.clone(),
                    other => panic!("{}: {other:?} before its unlink", victim.display()),
                }
            };
            set(&victim, Expect::Unlinking(was));
            fs::remove_file(&victim)?;
            dir_fsync(&dir)?;
            set(&victim, Expect::Gone);
        }
        Ok(())
    };
    for i in 0.. {
        if step(i).is_err() {
            return;
        }
    }
}

/// The crash test of the local store: rounds of an fsync-checking workload
/// killed with SIGKILL at a varying moment, then a remount that must show
/// every fsync'd file and directory entry as it was, and no file with
/// bytes it did not have (never an earlier file's chunk, never bytes from
/// before a truncate). Buffered durability and `--durability sync` in
/// turn: without power loss both must keep everything fsync'd (a power
/// loss cannot be made here; fsync syncs the metadata journal, checked by
/// the unit tests of `fs.rs`).
#[test]
fn fsynced_state_survives_kill_9_in_a_loop() {
    let data = tempfile::tempdir().unwrap();
    let expect: Arc<std::sync::Mutex<Vec<(PathBuf, Expect)>>> = Arc::default();
    let mut checked = 0;
    for round in 0..6u64 {
        let durability = if round % 2 == 0 { "buffered" } else { "sync" };
        let chunk_kib = (CRASH_CHUNK >> 10).to_string();
        let args = ["--durability", durability, "--chunk-size-kib", &chunk_kib];
        let mut m = Mount::start_meta_on(data.path(), &args);
        // Check what the previous rounds left, through this mount.
        for (path, e) in expect.lock().unwrap().iter() {
            let path = m.mnt().join(path);
            let got = fs::read(&path);
            match e {
                Expect::Exactly(want) => {
                    let got = got.unwrap_or_else(|err| panic!("{}: {err} after a crash", path.display()));
                    assert!(
                        got == *want,
                        "{}: {} bytes, expected {} as fsync'd",
                        path.display(),
                        got.len(),
                        want.len()
                    );
                }
                Expect::Cutting { first, cut } => {
                    let got = got.unwrap_or_else(|err| panic!("{}: {err} after a crash", path.display()));
                    assert!(
                        cut_state(first, *cut, &got),
                        "{}: {} bytes, not a state of its last change",
                        path.display(),
                        got.len()
                    );
                }
                Expect::Unlinking(was) => {
                    if let Ok(got) = got {
                        assert!(
                            got == *was,
                            "{}: {} bytes while being unlinked",
                            path.display(),
                            got.len()
                        );
                    } else {
                        assert_errno(got, libc::ENOENT, "being unlinked");
                    }
                }
                Expect::Gone => assert_errno(got, libc::ENOENT, "unlinked and the directory fsync'd"),
            }
            checked += 1;
        }
        let dir = m.mnt().to_path_buf();
        let progress: Arc<std::sync::Mutex<Vec<(PathBuf, Expect)>>> = Arc::default();
        let worker = {
            let (expect, local) = (expect.clone(), progress.clone());
            // Kept relative to the mount, which is a new directory each round.
            std::thread::spawn(move || {
                crash_workload(dir.clone(), round, local.clone());
                let mut all = expect.lock().unwrap();
                for (path, e) in local.lock().unwrap().drain(..) {
                    all.push((path.strip_prefix(&dir).unwrap().to_path_buf(), e));
                }
            })
        };
        // Kill at a point of the workload that differs per round: once it
        // has recorded this many states (whatever the machine's load).
        let states = 2 + 3 * round as usize;
        common::wait_for(
            "the crash workload's progress",
            Duration::from_secs(60),
            || match progress.lock().unwrap().len() {
                n if n >= states => Ok(()),
                n => Err(format!("{n} of {states} states recorded")),
            },
        );
        m.kill();
        let joined = with_timeout(Duration::from_secs(30), move || worker.join().is_ok());
        assert_eq!(joined, Some(true), "the workload did not stop after the kill");
        rustix::mount::unmount(m.mnt(), rustix::mount::UnmountFlags::DETACH).expect("umount -l");
    }
    assert!(
        checked > 20,
        "the rounds fsync'd only {checked} files: nothing was tested"
    );
}

fn atime_of(path: &Path) -> (i64, i64) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.atime(), m.atime_nsec())
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.mtime(), m.mtime_nsec())
}

/// Waits until the clock (the daemon's too: both read the system's
/// real-time clock) is past every time of `path`, so that an atime the
/// next access sets is strictly after them.
fn clock_past(path: &Path) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let latest = [
        (m.atime(), m.atime_nsec()),
        (m.mtime(), m.mtime_nsec()),
        (m.ctime(), m.ctime_nsec()),
    ]
    .into_iter()
    .max()
    .unwrap();
    common::wait_for(
        "the clock to pass the file's times",
        Duration::from_secs(10),
        || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let now = (now.as_secs() as i64, i64::from(now.subsec_nanos()));
            if now > latest {
                Ok(())
            } else {
                Err(format!("now {now:?}, latest {latest:?}"))
            }
        },
    );
}

/// generic/003's subject: reads and listings update access times by the
/// mount's option (the kernel leaves it to a FUSE filesystem): relatime by
/// default (once after each change), every time with strictatime, never
/// with noatime or on a read-only mount. The ctime never moves for it.
#[test]
fn reads_and_listings_update_access_times_by_the_mounts_option() {
    let data = tempfile::tempdir().unwrap();
    {
        let m = Mount::start_meta_on(data.path(), &[]);
        let f = m.mnt().join("f");
        let d = m.mnt().join("d");
        fs::write(&f, b"data").unwrap();
        fs::create_dir(&d).unwrap();
        fs::write(d.join("inside"), b"x").unwrap();
        let ctime = fs::metadata(&f).unwrap().ctime_nsec();
        clock_past(&f);
        fs::read(&f).unwrap();
        let first = atime_of(&f);
        assert!(
            first > mtime_of(&f),
            "relatime: the first read after a write updates the atime"
        );
        assert_eq!(
            fs::metadata(&f).unwrap().ctime_nsec(),
            ctime,
            "an access changed the ctime"
        );
        clock_past(&f);
        fs::read(&f).unwrap();
        assert_eq!(atime_of(&f), first, "relatime: a second read changes nothing");
        fs::write(&f, b"more data").unwrap();
        clock_past(&f);
        fs::read(&f).unwrap();
        assert!(
            atime_of(&f) > mtime_of(&f),
            "relatime: a read after the next write updates it"
        );
        clock_past(&d);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        assert!(
            atime_of(&d) > mtime_of(&d),
            "relatime: listing a changed directory updates its atime"
        );
        assert!(m.stop().success());
    }
    {
        // Read-only: nothing changes, whatever the rule says.
        let m = Mount::start_meta_on(data.path(), &["-o", "ro,strictatime"]);
        let f = m.mnt().join("f");
        let before = atime_of(&f);
        clock_past(&f);
        fs::read(&f).unwrap();
        assert_eq!(atime_of(&f), before, "a read-only mount updated an atime");
        assert!(m.stop().success());
    }
    {
        let m = Mount::start_meta_on(data.path(), &["--atime", "strictatime"]);
        let f = m.mnt().join("f");
        let d = m.mnt().join("d");
        let before = atime_of(&f);
        clock_past(&f);
        fs::read(&f).unwrap();
        let first = atime_of(&f);
        assert!(first > before, "strictatime: every read updates the atime");
        clock_past(&f);
        fs::read(&f).unwrap();
        assert!(atime_of(&f) > first, "strictatime: every read updates the atime");
        let dir_before = atime_of(&d);
        clock_past(&d);
        fs::read_dir(&d).unwrap().for_each(drop);
        assert!(
            atime_of(&d) > dir_before,
            "strictatime: every listing updates the atime"
        );
        assert!(m.stop().success());
    }
    let m = Mount::start_meta_on(data.path(), &["-o", "noatime"]);
    let f = m.mnt().join("f");
    fs::write(&f, b"changed").unwrap();
    let before = atime_of(&f);
    clock_past(&f);
    fs::read(&f).unwrap();
    fs::read_dir(m.mnt()).unwrap().for_each(drop);
    assert_eq!(atime_of(&f), before, "noatime: a read updated the atime");
}

/// Every allocate, punch-hole and zero-range case of
/// [`common::fallocate::CASES`] does on the mount what it does on tmpfs
/// (ext4 for zero-range): results, size, bytes, mtime; with 4 KiB chunks
/// also where `SEEK_DATA`/`SEEK_HOLE` land. With the default 1 MiB chunks
/// the edges of a range fall inside chunks: bytes and sizes must agree too.
#[test]
fn fallocate_and_seek_agree_with_tmpfs() {
    for (chunk_kib, seeks) in [("4", true), ("1024", false)] {
        let m = Mount::start_meta(&["--chunk-size-kib", chunk_kib]);
        let differ = common::fallocate::differences(m.mnt(), seeks);
        assert!(
            differ.is_empty(),
            "with {chunk_kib} KiB chunks:\n{}\n{}",
            differ.join("\n"),
            m.daemon_log()
        );
    }
}

/// Punching or zeroing a range of a sparse file costs its chunks, not the
/// range: 16 TiB go at once, and whole chunks are removed rather than
/// written with zeros (so the count of chunk files only drops).
#[test]
fn a_punch_over_a_huge_sparse_file_is_quick_and_touches_only_its_chunks() {
    use rustix::fs::{FallocateFlags, SeekFrom};
    let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    let m = Mount::start_meta(&["--chunk-size-kib", "4"]);
    fs::write(m.mnt().join("neighbour"), b"hello").unwrap();
    let path = m.mnt().join("huge");
    let file = Arc::new(common::create_rw(&path));
    file.write_all_at(&[7u8; 8192], 0).expect("two chunks at 0");
    file.write_all_at(b"middle", 8 * TIB).expect("a write at 8 TiB");
    file.write_all_at(b"tail", 16 * TIB).expect("a write at 16 TiB");
    assert_eq!(
        chunk_files(m.src()),
        5,
        "two chunks at 0, one each further on, the neighbour's"
    );
    let size = 16 * TIB + 4;
    let f = file.clone();
    quick_while_listing(
        m.mnt(),
        "a punch of 16 TiB but 100 bytes and the tail",
        move || rustix::fs::fallocate(&*f, punch, 100, 16 * TIB - 100).map_err(io::Error::from),
    );
    assert_eq!(
        chunk_files(m.src()),
        3,
        "chunk 0 (cut at 100), the tail's and the neighbour's are left"
    );
    let mut head = [1u8; 200];
    file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..100], &[7u8; 100][..]);
    assert_eq!(&head[100..], &[0u8; 100][..]);
    let mut middle = [1u8; 6];
    file.read_exact_at(&mut middle, 8 * TIB).unwrap();
    assert_eq!(middle, [0u8; 6]);
    assert_eq!(file.metadata().unwrap().len(), size, "the size stays");
    let f = file.clone();
    quick_while_listing(m.mnt(), "SEEK_DATA and SEEK_HOLE over 16 TiB", move || {
        let data = rustix::fs::seek(&*f, SeekFrom::Data(100)).map_err(io::Error::from)?;
        let hole = rustix::fs::seek(&*f, SeekFrom::Hole(0)).map_err(io::Error::from)?;
        assert_eq!((data, hole), (100, 4096), "chunk 0 then the tail's chunk");
        let data = rustix::fs::seek(&*f, SeekFrom::Data(4096)).map_err(io::Error::from)?;
        assert_eq!(data, 16 * TIB, "the tail's chunk");
        Ok(())
    });
    let f = file.clone();
    quick_while_listing(m.mnt(), "a zero-range of all 16 TiB", move || {
        rustix::fs::fallocate(&*f, FallocateFlags::ZERO_RANGE, 0, size).map_err(io::Error::from)
    });
    assert_eq!(chunk_files(m.src()), 1, "only the neighbour's chunk is left");
    assert_rustix_errno(
        rustix::fs::seek(&*file, SeekFrom::Data(0)),
        libc::ENXIO,
        "no data left",
    );
    assert_eq!(rustix::fs::seek(&*file, SeekFrom::Hole(5)).unwrap(), 5);
    assert_eq!(fs::read(m.mnt().join("neighbour")).unwrap(), b"hello");
}

/// The limits: past 4 EiB an allocation or a growing zero-range is EFBIG
/// and changes nothing, a punch there is fine (nothing is there); modes
/// the mount does not serve are EOPNOTSUPP; SEEK_DATA/SEEK_HOLE at or past
/// the end are ENXIO; the kernel's own checks (length 0, a read-only
/// descriptor) hold.
#[test]
fn fallocate_limits_and_unsupported_modes() {
    use rustix::fs::{FallocateFlags, SeekFrom};
    let keep = FallocateFlags::KEEP_SIZE;
    let m = Mount::start_meta(&[]);
    let path = m.mnt().join("f");
    let file = common::create_rw(&path);
    file.write_all_at(b"0123456789", 0).unwrap();
    for (mode, what) in [
        (FallocateFlags::empty(), "allocate"),
        (keep, "allocate with KEEP_SIZE"),
        (FallocateFlags::ZERO_RANGE, "zero-range"),
    ] {
        assert_rustix_errno(
            rustix::fs::fallocate(&file, mode, SIZE_MAX - 10, 11),
            libc::EFBIG,
            &format!("{what} to 4 EiB + 1"),
        );
    }
    rustix::fs::fallocate(&file, FallocateFlags::empty(), SIZE_MAX - 10, 10).expect("allocate up to 4 EiB");
    assert_eq!(file.metadata().unwrap().len(), SIZE_MAX);
    file.set_len(10).unwrap();
    for mode in [
        FallocateFlags::PUNCH_HOLE | keep,
        FallocateFlags::ZERO_RANGE | keep,
    ] {
        rustix::fs::fallocate(&file, mode, SIZE_MAX - 10, 1 << 20)
            .unwrap_or_else(|e| panic!("{mode:?} past 4 EiB with KEEP_SIZE: {e}"));
    }
    for (mode, what) in [
        (FallocateFlags::COLLAPSE_RANGE, "collapse-range"),
        (FallocateFlags::INSERT_RANGE, "insert-range"),
        (FallocateFlags::UNSHARE_RANGE, "unshare-range"),
        (FallocateFlags::PUNCH_HOLE, "punch-hole without KEEP_SIZE"),
    ] {
        assert_rustix_errno(
            rustix::fs::fallocate(&file, mode, 0, 4096),
            libc::EOPNOTSUPP,
            what,
        );
    }
    assert_rustix_errno(
        rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, 0),
        libc::EINVAL,
        "length 0",
    );
    let read_only = fs::File::open(&path).unwrap();
    assert_rustix_errno(
        rustix::fs::fallocate(&read_only, FallocateFlags::empty(), 0, 100),
        libc::EBADF,
        "a read-only descriptor",
    );
    assert_eq!(
        file.metadata().unwrap().len(),
        10,
        "the refused calls changed nothing"
    );
    assert_eq!(fs::read(&path).unwrap(), b"0123456789");
    assert_rustix_errno(
        rustix::fs::seek(&file, SeekFrom::Data(10)),
        libc::ENXIO,
        "SEEK_DATA at the end",
    );
    assert_rustix_errno(
        rustix::fs::seek(&file, SeekFrom::Hole(11)),
        libc::ENXIO,
        "SEEK_HOLE past the end",
    );
    assert_eq!(
        rustix::fs::seek(&file, SeekFrom::Hole(3)).unwrap(),
        10,
        "the end is a hole"
    );
}

/// xfstests generic/035: a rename that replaces an open file or an open
/// empty directory leaves the descriptors answering fstat, with no links
/// left; the directory can no longer be listed.
#[test]
fn fstat_of_an_open_file_or_directory_replaced_by_rename() {
    let m = Mount::start_meta(&[]);
    let mnt = m.mnt();
    fs::create_dir(mnt.join("a")).expect("mkdir a");
    fs::create_dir(mnt.join("b")).expect("mkdir b");
    fs::write(mnt.join("f1"), b"one").expect("create f1");
    fs::write(mnt.join("f2"), b"two").expect("create f2");
    let dir = fs::File::open(mnt.join("b")).expect("open b");
    let file = fs::File::open(mnt.join("f2")).expect("open f2");
    let (dir_ino, file_ino) = (dir.metadata().unwrap().ino(), file.metadata().unwrap().ino());
    fs::rename(mnt.join("a"), mnt.join("b")).expect("rename a over b");
    fs::rename(mnt.join("f1"), mnt.join("f2")).expect("rename f1 over f2");
    let st = dir
        .metadata()
        .unwrap_or_else(|e| panic!("fstat of the replaced directory: {e} ({})", m.describe()));
    assert!(st.is_dir());
    assert_eq!((st.ino(), st.nlink()), (dir_ino, 0));
    let st = file.metadata().expect("fstat of the replaced file");
    assert_eq!((st.ino(), st.nlink(), st.len()), (file_ino, 0, 3));
    assert_rustix_errno(
        rustix::fs::Dir::read_from(&dir).and_then(|mut d| d.read().transpose().map(|_| ())),
        libc::ENOENT,
        "listing the replaced directory",
    );
    // The names now lead to what replaced them.
    assert_eq!(fs::read(mnt.join("f2")).unwrap(), b"one");
    assert!(fs::metadata(mnt.join("b")).unwrap().nlink() >= 2);
}

/// Export support: a file handle (name_to_handle_at) opens its file again
/// (open_by_handle_at) after the mount that made it is gone and the
/// namespace is mounted anew, which is what an NFS re-export and xfstests'
/// handle tests (generic/426, 467, 477) need; a handle of a deleted file
/// is ESTALE.
#[test]
fn file_handles_open_their_files_across_a_remount() {
    use kmod_shim::handle::{name_to_handle_at, open_by_handle_at};
    let data = tempfile::tempdir().unwrap();
    let (file, dir, doomed) = {
        let m = Mount::start_meta_on(data.path(), &[]);
        fs::create_dir(m.mnt().join("d")).unwrap();
        fs::write(m.mnt().join("d/kept"), b"kept by handle").unwrap();
        fs::write(m.mnt().join("doomed"), b"soon gone").unwrap();
        let handle = |p: &str| {
            name_to_handle_at(&m.mnt().join(p))
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .0
        };
        let handles = (handle("d/kept"), handle("d"), handle("doomed"));
        assert!(m.stop().success());
        handles
    };
    let m = Mount::start_meta_on(data.path(), &[]);
    let mount = fs::File::open(m.mnt()).unwrap();
    let opened = open_by_handle_at(&mount, &file, libc::O_RDONLY)
        .unwrap_or_else(|e| panic!("reopening d/kept by handle: {e}\n{}", m.daemon_log()));
    let mut back = Vec::new();
    fs::File::from(opened).read_to_end(&mut back).unwrap();
    assert_eq!(back, b"kept by handle");
    let opened = open_by_handle_at(&mount, &dir, libc::O_RDONLY | libc::O_DIRECTORY).expect("d by handle");
    assert!(fs::File::from(opened).metadata().unwrap().is_dir());
    fs::remove_file(m.mnt().join("doomed")).unwrap();
    assert_errno(
        open_by_handle_at(&mount, &doomed, libc::O_RDONLY).map_err(io::Error::from),
        libc::ESTALE,
        "the handle of a deleted file",
    );
}
