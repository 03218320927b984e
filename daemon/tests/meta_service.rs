//! The metadata service over TCP (`xfused meta`): bad input is refused
//! without hurting other clients, and two mounts of one namespace through
//! it, four threads each racing creates, renames, links and unlinks in
//! shared directories, leave a namespace that passes the full consistency
//! check; pjdfstest passes on a mount through the service.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Mount;
use rustix::process::{kill_process, Pid, Signal};
use xfused::meta::check::check_namespace;
use xfused::meta::embedded::{Durability, EmbeddedEngine};
use xfused::net::proto::{self, Reply, Request};

/// A running `xfused meta` on an embedded store; SIGTERM on drop.
struct Service {
    /// `None` once reaped (its pid may be reused then: never signal it).
    child: Option<Child>,
    addr: String,
    store: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start() -> Service {
        Service::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("meta");
        let log = dir.path().join("meta.log");
        // Port 0: the kernel picks a free port, which the service logs; no
        // probe that another process could race.
        let child = Command::new(env!("CARGO_BIN_EXE_xfused"))
            .args([
                "meta",
                "--engine",
                &format!("embedded:{}", store.display()),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawning xfused meta");
        // Owned by a Service from here, so a failure below kills it (Drop).
        let mut service = Service {
            child: Some(child),
            addr: String::new(),
            store,
            log,
            _dir: dir,
        };
        const LISTENING: &str = "metadata service on ";
        service.addr = common::wait_for("xfused meta listening", Duration::from_secs(30), || {
            let text = service.log_text();
            let addr = text
                .split_once(LISTENING)
                .and_then(|(_, rest)| rest.split_once(','))
                .map(|(addr, _)| addr.to_owned());
            let exited = service
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("waitpid"));
            match (addr, exited) {
                (Some(addr), _) => Ok(addr),
                (None, Some(status)) => panic!("xfused meta exited ({status}) before listening:\n{text}"),
                (None, None) => Err(text),
            }
        });
        service
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the service (SIGTERM) and returns the store's path.
    fn stop(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::TERM);
            let _ = child.wait();
        }
        self.store.clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::KILL);
            let _ = child.wait();
        }
    }
}

fn call(stream: &mut TcpStream, body: &[u8]) -> Result<Reply, i32> {
    proto::write_frame(stream, body).unwrap();
    let frame = proto::read_frame(stream).unwrap().expect("an answer");
    proto::decode_response(&frame).unwrap()
}

#[test]
fn bad_frames_and_oversized_names_are_refused_and_others_keep_being_served() {
    let service = Service::start();
    let mut good = TcpStream::connect(&service.addr).unwrap();
    let Ok(Reply::Client(client)) = call(&mut good, &Request::Hello.encode()) else {
        panic!("hello failed:\n{}", service.log_text());
    };
    let mut bad = TcpStream::connect(&service.addr).unwrap();
    // Garbage, a truncated request, an unknown opcode, a wrong version: each
    // answered EPROTO on the same connection, which stays usable.
    for body in [
        vec![1u8, 2, 3],
        Request::Getattr { ino: 1 }.encode()[..5].to_vec(),
        vec![proto::VERSION, 250],
        vec![99, 6],
    ] {
        assert_eq!(call(&mut bad, &body), Err(libc::EPROTO), "body {body:?}");
    }
    assert!(matches!(
        call(&mut bad, &Request::Getattr { ino: 1 }.encode()),
        Ok(Reply::Inode(_))
    ));
    // A 256-byte name: ENAMETOOLONG; a name claiming far more: EPROTO.
    let caller = xfused::meta::Caller::ROOT;
    let long = Request::Mknod {
        client,
        caller,
        parent: 1,
        name: vec![b'x'; 256],
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: Vec::new(),
        open: false,
    };
    assert_eq!(call(&mut bad, &long.encode()), Err(libc::ENAMETOOLONG));
    let huge = Request::Lookup {
        client,
        caller,
        parent: 1,
        name: vec![b'y'; 5000],
    };
    assert_eq!(call(&mut bad, &huge.encode()), Err(libc::EPROTO));
    // An unknown client id: ESTALE, not a crash.
    let stranger = Request::Open {
        client: 999_999,
        caller,
        ino: 1,
        read: true,
        write: false,
    };
    assert_eq!(call(&mut bad, &stranger.encode()), Err(libc::ESTALE));
    // A frame length over the limit: answered, then that connection closed.
    bad.write_all(&((proto::FRAME_LEN_MAX as u32) + 1).to_le_bytes())
        .unwrap();
    let frame = proto::read_frame(&mut bad)
        .unwrap()
        .expect("an answer before closing");
    assert_eq!(proto::decode_response(&frame).unwrap(), Err(libc::EPROTO));
    let mut rest = Vec::new();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        bad.read_to_end(&mut rest).unwrap(),
        0,
        "connection closed after a broken frame"
    );
    // A client that sends half a frame and vanishes.
    let mut half = TcpStream::connect(&service.addr).unwrap();
    half.write_all(&100u32.to_le_bytes()).unwrap();
    half.write_all(&[1, 2, 3]).unwrap();
    drop(half);
    // The well-behaved client was never disturbed.
    let create = Request::Mknod {
        client,
        caller,
        parent: 1,
        name: b"fine".to_vec(),
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: Vec::new(),
        open: false,
    };
    assert!(
        matches!(call(&mut good, &create.encode()), Ok(Reply::Created { .. })),
        "{}",
        service.log_text()
    );
    let lookup = Request::Lookup {
        client,
        caller,
        parent: 1,
        name: b"fine".to_vec(),
    };
    assert!(matches!(
        call(&mut good, &lookup.encode()),
        Ok(Reply::Entry { .. })
    ));
}

#[test]
fn sizes_past_4_eib_are_refused_with_efbig_by_the_service() {
    const SIZE_MAX: u64 = xfused::meta::FILE_SIZE_MAX_BYTES;
    let service = Service::start();
    let mut conn = TcpStream::connect(&service.addr).unwrap();
    let Ok(Reply::Client(client)) = call(&mut conn, &Request::Hello.encode()) else {
        panic!("hello failed:\n{}", service.log_text());
    };
    let caller = xfused::meta::Caller::ROOT;
    let create = Request::Mknod {
        client,
        caller,
        parent: 1,
        name: b"big".to_vec(),
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: Vec::new(),
        open: false,
    };
    let Ok(Reply::Created { ino, .. }) = call(&mut conn, &create.encode()) else {
        panic!("create failed:\n{}", service.log_text());
    };
    let setattr = |size| Request::Setattr {
        caller,
        ino,
        set: xfused::meta::SetAttr {
            size: Some(size),
            ..Default::default()
        },
    };
    // Past the limit, by a client that skips MetaFs's own check: EFBIG.
    for size in [SIZE_MAX + 1, u64::MAX] {
        assert_eq!(
            call(&mut conn, &setattr(size).encode()),
            Err(libc::EFBIG),
            "setattr size {size}"
        );
        let write = Request::NoteWrite { ino, end: size };
        assert_eq!(
            call(&mut conn, &write.encode()),
            Err(libc::EFBIG),
            "a write ending at {size}"
        );
    }
    let Ok(Reply::Inode(rec)) = call(&mut conn, &Request::Getattr { ino }.encode()) else {
        panic!("getattr failed");
    };
    assert_eq!(rec.size, 0, "the refused requests changed nothing");
    // At the limit: allowed.
    let Ok(Reply::Setattr { rec, .. }) = call(&mut conn, &setattr(SIZE_MAX).encode()) else {
        panic!("a setattr to 4 EiB was refused");
    };
    assert_eq!(rec.size, SIZE_MAX);
    assert!(matches!(
        call(&mut conn, &setattr(0).encode()),
        Ok(Reply::Setattr { .. })
    ));
    let write = Request::NoteWrite { ino, end: SIZE_MAX };
    let Ok(Reply::Inode(rec)) = call(&mut conn, &write.encode()) else {
        panic!("a write ending at 4 EiB was refused");
    };
    assert_eq!(rec.size, SIZE_MAX);
}

/// Random create/rename/link/unlink on `mnt` for a while.
fn churn(mnt: PathBuf, seed: u64, ops: usize) -> usize {
    let mut state = seed | 1;
    let mut rand = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let dirs = ["shared/a", "shared/b", "shared/c"];
    let mut done = 0;
    for _ in 0..ops {
        let path = |r: &mut dyn FnMut(u64) -> u64| mnt.join(dirs[r(3) as usize]).join(format!("n{}", r(8)));
        let (p, q) = (path(&mut rand), path(&mut rand));
        let ok = match rand(5) {
            0 | 1 => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .is_ok(),
            2 => std::fs::rename(&p, &q).is_ok(),
            3 => std::fs::hard_link(&p, &q).is_ok(),
            _ => std::fs::remove_file(&p).is_ok(),
        };
        done += usize::from(ok);
    }
    done
}

#[test]
fn two_mounts_four_threads_each_leave_a_consistent_namespace() {
    let service = Service::start();
    let url = format!("tcp://{}", service.addr);
    // Short cache timeouts: the two mounts see each other's changes soon.
    let args = [
        "--meta",
        &url,
        "--attr-timeout-ms",
        "100",
        "--entry-timeout-ms",
        "100",
        "--negative-timeout-ms",
        "0",
    ];
    let first = Mount::start_meta(&args);
    let second = Mount::start_meta(&args);
    for d in ["shared", "shared/a", "shared/b", "shared/c"] {
        std::fs::create_dir(first.mnt().join(d)).unwrap();
    }
    // The other mount sees the directories (within its cache timeout).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !second.mnt().join("shared/c").is_dir() {
        assert!(Instant::now() < deadline, "second mount never saw shared/c");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts = [first.mnt().to_path_buf(), second.mnt().to_path_buf()];
    let succeeded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (mnt, succeeded) = (mounts[t % 2].clone(), succeeded.clone());
            std::thread::spawn(move || {
                let n = churn(mnt, 0x9E37_79B9 + t as u64, 400);
                succeeded.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        succeeded.load(std::sync::atomic::Ordering::Relaxed) > 200,
        "the workload mostly failed"
    );
    // Both mounts list the same names, once their caches (timeouts of
    // 100 ms) have caught up: polled, with a deadline.
    let listing = |m: &Path, d: &str| {
        let mut v: Vec<_> = std::fs::read_dir(m.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    for d in ["shared/a", "shared/b", "shared/c"] {
        common::wait_for(
            &format!("{d} alike on both mounts"),
            Duration::from_secs(10),
            || {
                let (a, b) = (listing(&mounts[0], d), listing(&mounts[1], d));
                if a == b {
                    Ok(())
                } else {
                    Err(format!("\n first: {a:?}\nsecond: {b:?}"))
                }
            },
        );
    }
    assert!(first.stop().success());
    assert!(second.stop().success());
    let store = service.stop();
    let engine = EmbeddedEngine::open(&store, Durability::default()).expect("reopening the store");
    let problems = check_namespace(&engine).unwrap();
    assert!(
        problems.is_empty(),
        "namespace inconsistent:\n{}",
        problems.join("\n")
    );
}

#[test]
fn pjdfstest_passes_through_the_service() {
    let service = Service::start();
    let url = format!("tcp://{}", service.addr);
    let mount = Mount::start_meta(&["--meta", &url]);
    let run = mount.run_pjdfstest();
    eprintln!("{} through the service: {}", mount.describe(), run.summary);
    assert!(
        run.status.success(),
        "pjdfstest failed ({}):\n{}\n{}\nmount log:\n{}\nservice log:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        mount.daemon_log(),
        service.log_text()
    );
}

#[test]
fn a_client_that_stops_renewing_its_lease_is_reaped() {
    let service = Service::start_with(&["--lease-ms", "400"]);
    let mut conn = TcpStream::connect(&service.addr).unwrap();
    let Ok(Reply::Client(client)) = call(&mut conn, &Request::Hello.encode()) else {
        panic!("hello failed:\n{}", service.log_text());
    };
    let caller = xfused::meta::Caller::ROOT;
    let create = Request::Mknod {
        client,
        caller,
        parent: 1,
        name: b"open-then-unlinked".to_vec(),
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: Vec::new(),
        open: true,
    };
    let Ok(Reply::Created {
        ino, handle: Some(_), ..
    }) = call(&mut conn, &create.encode())
    else {
        panic!("create failed:\n{}", service.log_text());
    };
    let unlink = Request::Unlink {
        caller,
        parent: 1,
        name: b"open-then-unlinked".to_vec(),
    };
    assert_eq!(
        call(&mut conn, &unlink.encode()),
        Ok(Reply::Reclaim(None)),
        "still open: kept"
    );
    assert!(matches!(
        call(&mut conn, &Request::Getattr { ino }.encode()),
        Ok(Reply::Inode(_))
    ));
    // The client goes silent; the service reaps it once its lease expires.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if call(&mut conn, &Request::Getattr { ino }.encode()) == Err(libc::ENOENT) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead client's file was never reaped:\n{}",
            service.log_text()
        );
    }
    let open = Request::Open {
        client,
        caller,
        ino: 1,
        read: true,
        write: false,
    };
    assert_eq!(
        call(&mut conn, &open.encode()),
        Err(libc::ESTALE),
        "a reaped client is refused"
    );
    assert!(
        matches!(call(&mut conn, &Request::Hello.encode()), Ok(Reply::Client(_))),
        "it may register again"
    );
}
