//! Round trips of a small tree through a real mount with the everyday tools
//! (`cp -a`, `cp -r`, `tar`), checked with `diff -r` and with a walk that
//! compares types, modes, owners, sizes, mtimes, symlink targets and hard
//! links.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{pattern, run, Mount};

/// Builds, under `root/tree`, nested directories, binary files of several
/// sizes, an empty file and directory, relative and dangling symlinks, a hard
/// link across directories, odd modes and a name with a space.
fn build_tree(root: &Path) -> PathBuf {
    let tree = root.join("tree");
    let dirs = ["dir1/dir2/dir3", "empty_dir", "with space é"];
    for d in dirs {
        fs::create_dir_all(tree.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    let files: [(&str, usize, u32); 8] = [
        ("empty", 0, 0o644),
        ("one", 1, 0o644),
        ("a.bin", 100_000, 0o600),
        ("big.bin", (3 << 20) + 17, 0o644),
        ("run.sh", 4096, 0o755),
        ("dir1/text.txt", 4095, 0o640),
        ("dir1/dir2/dir3/deep.bin", 65_537, 0o444),
        ("with space é/file", 10, 0o644),
    ];
    for (i, (name, len, mode)) in files.into_iter().enumerate() {
        let path = tree.join(name);
        fs::write(&path, pattern(len, i as u64)).unwrap_or_else(|e| panic!("write {name}: {e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {name}: {e}"));
    }
    std::os::unix::fs::symlink("dir1/text.txt", tree.join("link")).expect("symlink link");
    std::os::unix::fs::symlink("../../one", tree.join("dir1/dir2/up")).expect("symlink up");
    std::os::unix::fs::symlink("/nonexistent/target", tree.join("dangling")).expect("symlink dangling");
    fs::hard_link(tree.join("a.bin"), tree.join("dir1/hard")).expect("hard link dir1/hard");
    std::os::unix::fs::chown(tree.join("one"), Some(4321), Some(8765)).expect("chown one");
    // Nanosecond mtimes, set last (after the entries above were made).
    let stamp = SystemTime::UNIX_EPOCH + Duration::new(1_300_000_000, 123_456_789);
    for name in [
        "big.bin",
        "dir1/dir2/dir3/deep.bin",
        "dir1/dir2/dir3",
        "empty_dir",
    ] {
        let file = fs::File::open(tree.join(name)).unwrap_or_else(|e| panic!("open {name}: {e}"));
        file.set_modified(stamp)
            .unwrap_or_else(|e| panic!("set mtime of {name}: {e}"));
    }
    tree
}

/// What a round trip must keep of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    symlink_target: Option<PathBuf>,
    /// Other names of the same inode in the tree (hard links), sorted.
    other_names: Vec<PathBuf>,
}

fn walk(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn visit(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<PathBuf, Entry>,
        inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
    ) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let path = entry
                .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
                .path();
            let st = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let ft = st.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            if ft.is_file() && st.nlink() > 1 {
                inodes.entry(st.ino()).or_default().push(rel.clone());
            }
            let symlink_target = ft
                .is_symlink()
                .then(|| fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())));
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: st.mode() & 0o7777,
                    uid: st.uid(),
                    gid: st.gid(),
                    // A directory's size is the backing filesystem's business.
                    size: if ft.is_dir() { 0 } else { st.len() },
                    mtime: (st.mtime(), st.mtime_nsec()),
                    symlink_target,
                    other_names: Vec::new(),
                },
            );
            if ft.is_dir() {
                visit(root, &path, out, inodes);
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    visit(root, root, &mut out, &mut inodes);
    for names in inodes.values() {
        for name in names {
            let mut others: Vec<PathBuf> = names.iter().filter(|n| *n != name).cloned().collect();
            others.sort();
            out.get_mut(name).expect("walked").other_names = others;
        }
    }
    out
}

/// `diff -r` (symlinks compared as links) and a metadata walk agree that
/// `copy` is `original`.
#[track_caller]
fn assert_same_tree(original: &Path, copy: &Path) {
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(original)
        .arg(copy));
    let (a, b) = (walk(original), walk(copy));
    let mut problems = Vec::new();
    for (path, entry) in &a {
        match b.get(path) {
            None => problems.push(format!("{}: missing in the copy", path.display())),
            Some(other) if other != entry => problems.push(format!(
                "{}:\n  original {entry:?}\n  copy     {other:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        problems.push(format!("{}: only in the copy", path.display()));
    }
    assert!(
        problems.is_empty(),
        "{} differs from {}:\n{}",
        copy.display(),
        original.display(),
        problems.join("\n")
    );
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("xfuse-rt.")
        .tempdir()
        .expect("scratch directory")
}

#[test]
fn cp_a_into_mount_matches_original_and_source() {
    let m = Mount::start(&[]);
    let work = scratch();
    let tree = build_tree(work.path());
    run(Command::new("cp").arg("-a").arg(&tree).arg(m.mnt().join("tree")));
    assert_same_tree(&tree, &m.mnt().join("tree"));
    assert_same_tree(&tree, &m.src().join("tree"));
}

#[test]
fn cp_out_of_mount_matches_original() {
    let m = Mount::start(&[]);
    let work = scratch();
    let tree = build_tree(work.path());
    // Put the tree into SOURCE behind the daemon's back, then read it out.
    run(Command::new("cp").arg("-a").arg(&tree).arg(m.src().join("tree")));
    run(Command::new("cp")
        .arg("-a")
        .arg(m.mnt().join("tree"))
        .arg(work.path().join("out-a")));
    assert_same_tree(&tree, &work.path().join("out-a"));
    // Plain cp -r keeps contents (and follows nothing: -r copies symlinks as
    // symlinks), not metadata, so only diff applies.
    run(Command::new("cp")
        .arg("-r")
        .arg(m.mnt().join("tree"))
        .arg(work.path().join("out-r")));
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&tree)
        .arg(work.path().join("out-r")));
}

#[test]
fn cp_r_within_mount() {
    let m = Mount::start(&[]);
    let work = scratch();
    let tree = build_tree(work.path());
    run(Command::new("cp").arg("-a").arg(&tree).arg(m.mnt().join("tree")));
    run(Command::new("cp")
        .arg("-a")
        .arg(m.mnt().join("tree"))
        .arg(m.mnt().join("copy")));
    assert_same_tree(&tree, &m.mnt().join("copy"));
    assert_same_tree(&tree, &m.src().join("copy"));
}

#[test]
fn tar_from_mount_round_trip() {
    let m = Mount::start(&[]);
    let work = scratch();
    let tree = build_tree(work.path());
    run(Command::new("cp").arg("-a").arg(&tree).arg(m.mnt().join("tree")));
    let archive = work.path().join("from-mount.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(m.mnt())
        // pax keeps nanosecond timestamps (the default GNU format drops them).
        .args(["--format=posix", "-cf"])
        .arg(&archive)
        .arg("tree"));
    let out = work.path().join("untarred");
    fs::create_dir(&out).expect("mkdir untarred");
    run(Command::new("tar").arg("-C").arg(&out).arg("-xpf").arg(&archive));
    assert_same_tree(&tree, &out.join("tree"));
}

#[test]
fn tar_into_mount_round_trip() {
    let m = Mount::start(&[]);
    let work = scratch();
    let tree = build_tree(work.path());
    let archive = work.path().join("original.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(work.path())
        // pax keeps nanosecond timestamps (the default GNU format drops them).
        .args(["--format=posix", "-cf"])
        .arg(&archive)
        .arg("tree"));
    run(Command::new("tar")
        .arg("-C")
        .arg(m.mnt())
        .arg("-xpf")
        .arg(&archive));
    assert_same_tree(&tree, &m.mnt().join("tree"));
    assert_same_tree(&tree, &m.src().join("tree"));
}
