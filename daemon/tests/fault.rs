//! How the daemon and its mount end: killed, unmounted from outside,
//! interrupted. None of these may leave a hung mount or a lingering daemon.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run, with_timeout, Mount};
use rustix::process::Signal;

/// How long an access to a dead mount may take to fail.
const DEAD_MOUNT_ACCESS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the daemon may take to notice an unmount from outside.
const EXTERNAL_UNMOUNT_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors an access may see while the kernel is still tearing the dead
/// connection down: with FUSE-over-io_uring the ring queues are cancelled
/// before the /dev/fuse release aborts the connection, and requests caught in
/// between fail with these for a few milliseconds.
const TEARDOWN_ERRNOS: [i32; 2] = [libc::ECANCELED, libc::ECONNABORTED];

/// Runs `access` on a helper thread until it fails with ENOTCONN (passing
/// through [`TEARDOWN_ERRNOS`] is allowed); panics if that takes longer than
/// [`DEAD_MOUNT_ACCESS_TIMEOUT`] (a hang) or the access fails otherwise or
/// succeeds.
fn assert_enotconn_promptly(what: &str, access: impl Fn() -> std::io::Result<()> + Send + 'static) {
    let started = Instant::now();
    let outcome = with_timeout(DEAD_MOUNT_ACCESS_TIMEOUT, move || {
        let mut transient = Vec::new();
        loop {
            match access() {
                Err(e) if e.raw_os_error().is_some_and(|n| TEARDOWN_ERRNOS.contains(&n)) => {
                    transient.push(e.to_string());
                    if transient.len() > 1000 {
                        return (Err(e), transient);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => return (other, transient),
            }
        }
    });
    match outcome {
        None => panic!("{what} on the dead mount still blocked after {DEAD_MOUNT_ACCESS_TIMEOUT:?}"),
        Some((Ok(()), _)) => panic!("{what} on the dead mount succeeded, expected ENOTCONN"),
        Some((Err(e), transient)) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOTCONN),
            "{what} on the dead mount failed with {e} after {:?} (before that: {transient:?}), expected ENOTCONN",
            started.elapsed()
        ),
    }
}

#[test]
fn sigkill_leaves_no_hung_mount() {
    let mut m = Mount::start(&[]);
    let mnt: PathBuf = m.mnt().to_path_buf();
    fs::write(mnt.join("f"), b"before the kill").expect("write through the mount");
    // A file held open across the kill must fail too, not hang.
    let open_file = fs::File::open(mnt.join("f")).expect("open before the kill");
    m.kill();

    let p = mnt.clone();
    assert_enotconn_promptly("stat of the mountpoint", move || fs::metadata(&p).map(drop));
    let p = mnt.join("f");
    assert_enotconn_promptly("stat of a file", move || fs::metadata(&p).map(drop));
    let p = mnt.clone();
    assert_enotconn_promptly("readdir of the mountpoint", move || {
        fs::read_dir(&p)?.try_for_each(|entry| entry.map(drop))
    });
    if common::suite_args().iter().any(|a| a == "--passthrough") {
        // With FUSE passthrough the kernel reads an open file from its
        // backing file: the daemon's death does not concern it.
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 15];
        open_file
            .read_exact_at(&mut buf, 0)
            .expect("passthrough read after the kill");
        assert_eq!(&buf, b"before the kill");
        drop(open_file);
    } else {
        assert_enotconn_promptly("read of a file opened before the kill", move || {
            use std::os::unix::fs::FileExt;
            let mut buf = [0u8; 16];
            open_file.read_at(&mut buf, 0).map(drop)
        });
    }

    // Whether the mount outlives its daemon is up to the daemon (a watchdog
    // may detach it); if it is still there, a plain umount must work.
    if !m.is_mounted() {
        return;
    }
    let umount = with_timeout(DEAD_MOUNT_ACCESS_TIMEOUT, {
        let mnt = mnt.clone();
        move || Command::new("umount").arg(&mnt).output()
    })
    .unwrap_or_else(|| {
        panic!(
            "umount {} blocked for {DEAD_MOUNT_ACCESS_TIMEOUT:?}",
            mnt.display()
        )
    })
    .expect("spawning umount");
    assert!(
        umount.status.success(),
        "umount {} after SIGKILL: {}\n{}",
        mnt.display(),
        umount.status,
        String::from_utf8_lossy(&umount.stderr)
    );
    assert!(!m.is_mounted(), "{} still mounted after umount", mnt.display());
}

#[test]
fn external_unmount_makes_the_daemon_exit_0() {
    let mut m = Mount::start(&[]);
    fs::write(m.mnt().join("f"), b"x").expect("write through the mount");
    run(Command::new("umount").arg(m.mnt()));
    let started = Instant::now();
    match m.wait_exit(EXTERNAL_UNMOUNT_EXIT_TIMEOUT) {
        None => panic!(
            "xfused still running {EXTERNAL_UNMOUNT_EXIT_TIMEOUT:?} after `umount {}`\n{}",
            m.mnt().display(),
            m.describe()
        ),
        Some(status) => assert!(
            status.success(),
            "xfused exited with {status} after `umount` from outside (after {:?}), expected 0\n{}",
            started.elapsed(),
            m.describe()
        ),
    }
    assert!(
        !m.is_mounted(),
        "{} mounted again after umount",
        m.mnt().display()
    );
    assert_eq!(
        fs::read(m.src().join("f")).expect("SOURCE f"),
        b"x",
        "SOURCE after the unmount"
    );
}

#[test]
fn sigint_unmounts_and_exits_0() {
    let mut m = Mount::start(&[]);
    fs::write(m.mnt().join("f"), b"x").expect("write through the mount");
    let status = m.stop_with(Signal::INT);
    assert!(
        status.success(),
        "xfused exited with {status} after SIGINT, expected 0\n{}",
        m.describe()
    );
    assert!(
        !m.is_mounted(),
        "{} still mounted after SIGINT and exit\n{}",
        m.mnt().display(),
        m.describe()
    );
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    let m = Mount::start(&[]);
    fs::write(m.mnt().join("f"), b"x").expect("write through the mount");
    let mnt = m.mnt().to_path_buf();
    let status = m.stop();
    assert!(
        status.success(),
        "xfused exited with {status} after SIGTERM, expected 0"
    );
    assert!(
        common::mount_fstype(&mnt).is_none(),
        "{} still mounted after SIGTERM and exit",
        mnt.display()
    );
}

/// The mount is listed before xfused may be ready for signals; a SIGTERM
/// arriving at once must still unmount and exit 0, not kill the daemon with
/// the mount left behind. Several rounds, as the window is narrow.
#[test]
fn sigterm_right_after_the_mount_appears_exits_0() {
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        let m = Mount::start(&[]);
        let mnt = m.mnt().to_path_buf();
        let status = m.stop();
        assert!(
            status.success(),
            "round {round}: xfused exited with {status} after an early SIGTERM, expected 0"
        );
        assert!(
            common::mount_fstype(&mnt).is_none(),
            "round {round}: {} still mounted after an early SIGTERM",
            mnt.display()
        );
    }
}
