//! Many live inodes through one mount: more than the open-file limit of
//! this machine (20,000, hard), so a daemon that keeps a file descriptor per
//! inode fails here with EMFILE.

mod common;

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use common::Mount;

/// Files created in one directory; well above the 20,000 open-file limit.
const FILE_COUNT: usize = 50_000;
/// The daemon may hold this many descriptors with all files looked up;
/// far below one per inode.
const DAEMON_FDS_MAX: usize = 1_000;

fn name(i: usize) -> String {
    format!("inode-{i:06}")
}

#[test]
fn fifty_thousand_live_inodes_in_one_directory() {
    let m = Mount::start(&[]);
    let dir = m.mnt().join("many");
    fs::create_dir(&dir).expect("mkdir many");
    let mut timings = Vec::new();

    let started = Instant::now();
    for i in 0..FILE_COUNT {
        let path = dir.join(name(i));
        if let Err(e) = File::create(&path) {
            panic!(
                "create #{i} {} failed: {e} (errno {:?}); daemon holds {} fds\n{}",
                path.display(),
                e.raw_os_error(),
                m.daemon_fd_count(),
                m.describe()
            );
        }
    }
    timings.push(("create+close", started.elapsed()));

    let started = Instant::now();
    let mut inodes = HashSet::with_capacity(FILE_COUNT);
    for i in 0..FILE_COUNT {
        let path = dir.join(name(i));
        match fs::metadata(&path) {
            Ok(st) => {
                assert!(
                    st.is_file() && st.len() == 0,
                    "{}: not an empty regular file: {st:?}",
                    path.display()
                );
                inodes.insert(st.ino());
            }
            Err(e) => panic!(
                "stat #{i} {} failed: {e} (errno {:?}); daemon holds {} fds\n{}",
                path.display(),
                e.raw_os_error(),
                m.daemon_fd_count(),
                m.describe()
            ),
        }
    }
    timings.push(("stat", started.elapsed()));
    assert_eq!(inodes.len(), FILE_COUNT, "distinct inode numbers among the files");
    let daemon_fds = m.daemon_fd_count();
    assert!(
        daemon_fds <= DAEMON_FDS_MAX,
        "xfused holds {daemon_fds} file descriptors with {FILE_COUNT} inodes live (at most {DAEMON_FDS_MAX} expected)"
    );

    let started = Instant::now();
    let mut seen = HashSet::with_capacity(FILE_COUNT);
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("opendir {}: {e}", dir.display())) {
        let entry =
            entry.unwrap_or_else(|e| panic!("readdir {} after {} entries: {e}", dir.display(), seen.len()));
        let name = entry.file_name().into_string().expect("utf-8 name");
        assert!(seen.insert(name.clone()), "readdir returned {name} twice");
    }
    timings.push(("readdir", started.elapsed()));
    assert_eq!(
        seen.len(),
        FILE_COUNT,
        "entries in one listing of {}",
        dir.display()
    );
    assert!(
        (0..FILE_COUNT).all(|i| seen.contains(&name(i))),
        "a created name is missing from the listing"
    );

    let started = Instant::now();
    for i in 0..FILE_COUNT {
        let path = dir.join(name(i));
        fs::remove_file(&path).unwrap_or_else(|e| {
            panic!(
                "unlink #{i} {} failed: {e} (errno {:?})",
                path.display(),
                e.raw_os_error()
            )
        });
    }
    timings.push(("unlink", started.elapsed()));
    let left = fs::read_dir(&dir).expect("opendir after unlink").count();
    assert_eq!(left, 0, "entries left in {} after unlinking all", dir.display());
    let left_in_source = fs::read_dir(m.src().join("many"))
        .expect("opendir SOURCE")
        .count();
    assert_eq!(left_in_source, 0, "entries left in SOURCE after unlinking all");
    fs::remove_dir(&dir).expect("rmdir many");

    // Shown with `cargo test -- --nocapture`.
    for (phase, took) in timings {
        eprintln!(
            "scale: {phase:>12} of {FILE_COUNT} files: {took:>10.3?} ({:.1} µs each)",
            took.as_secs_f64() * 1e6 / FILE_COUNT as f64
        );
    }
    eprintln!("scale: daemon held {daemon_fds} fds with all inodes live");
}
