//! The metadata service (`xfused meta`): only the cluster's mounts get in,
//! sessions and permission checks cannot be forged, bad input and floods
//! are refused without hurting other clients, and two mounts of one
//! namespace through it, four threads each racing creates, renames, links
//! and unlinks in shared directories, leave a namespace that passes the
//! full consistency check; pjdfstest passes on a mount through the service.
//!
//! Each attack of issue 14 is a test here that succeeded against the
//! service of 8b55fc9 (no authentication, sessions named by request, the
//! permission check chosen by the caller, unbounded replies and xattrs).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Mount;
use rustix::process::{kill_process, Pid, Signal};
use xfused::meta::check::check_namespace;
use xfused::meta::embedded::{Durability, EmbeddedEngine};
use xfused::meta::{Answer, Call, Caller};
use xfused::net::{MetaReply, MetaRequest};
use xfused::rpc::auth::{Credential, Role};
use xfused::rpc::client::{CallError, Conn};
use xfused::rpc::codec;

/// A running `xfused meta` on an embedded store; SIGTERM on drop.
struct Service {
    /// `None` once reaped (its pid may be reused then: never signal it).
    child: Option<Child>,
    addr: String,
    store: PathBuf,
    log: PathBuf,
    /// The cluster credential it made on start (private to this test).
    credential: PathBuf,
    /// Arguments it was started with, beyond the store's and address.
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start() -> Service {
        Service::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut service = Service {
            child: None,
            addr: String::new(),
            store: dir.path().join("meta"),
            log: dir.path().join("meta.log"),
            credential: dir.path().join("state/cluster.pem"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        // Port 0: the kernel picks a free port, which the service logs; no
        // probe that another process could race.
        service.spawn("127.0.0.1:0");
        service
    }

    /// Starts `xfused meta` on this service's store, listening on `listen`,
    /// and waits until it listens.
    fn spawn(&mut self, listen: &str) {
        let child = Command::new(env!("CARGO_BIN_EXE_xfused"))
            .args([
                "meta",
                "--engine",
                &format!("embedded:{}", self.store.display()),
                "--listen",
                listen,
                "--credential",
                self.credential.to_str().unwrap(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&self.log).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&self.log).unwrap()))
            .spawn()
            .expect("spawning xfused meta");
        // Owned by the Service from here, so a failure below kills it (Drop).
        self.child = Some(child);
        const LISTENING: &str = "metadata service on ";
        self.addr = common::wait_for("xfused meta listening", Duration::from_secs(30), || {
            let text = self.log_text();
            let addr = text
                .split_once(LISTENING)
                .and_then(|(_, rest)| rest.split_once(','))
                .map(|(addr, _)| addr.to_owned());
            let exited = self.child.as_mut().and_then(|c| c.try_wait().expect("waitpid"));
            match (addr, exited) {
                (Some(addr), _) => Ok(addr),
                (None, Some(status)) => panic!("xfused meta exited ({status}) before listening:\n{text}"),
                (None, None) => Err(text),
            }
        });
    }

    /// Kills the service (SIGKILL: nothing it held in memory is saved) and
    /// starts it again on the same store and address.
    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), Signal::KILL);
            let _ = child.wait();
        }
        let addr = self.addr.clone();
        self.spawn(&addr);
        assert_eq!(self.addr, addr);
    }

    /// The arguments that point a mount at this service.
    fn mount_args(&self) -> Vec<String> {
        vec![
            "--meta".into(),
            format!("tcp://{}", self.addr),
            "--credential".into(),
            self.credential.display().to_string(),
        ]
    }

    fn cluster(&self) -> Credential {
        Credential::load(&self.credential).expect("the service's credential")
    }

    /// A connection authenticated as `role` with the service's cluster.
    fn connect(&self, role: Role) -> Client {
        self.connect_with(&self.cluster(), role).expect("connecting")
    }

    fn connect_with(&self, cred: &Credential, role: Role) -> std::io::Result<Client> {
        let tls = cred.client_config(role).expect("a client configuration");
        let conn = Conn::connect(
            &self.addr.parse().unwrap(),
            Some(tls),
            Instant::now() + Duration::from_secs(10),
        )?;
        Ok(Client {
            conn,
            next_seq: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// A mount's connection with a fresh session: the client and its id.
    fn session(&self) -> (Client, u64) {
        let client = self.connect(Role::Mount);
        match client.request(&MetaRequest::Hello) {
            Ok(MetaReply::Session { client: id, .. }) => (client, id),
            other => panic!("hello: {other:?}\n{}", self.log_text()),
        }
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

/// A raw client of the service: messages as the service reads them.
struct Client {
    conn: Conn,
    next_seq: std::sync::atomic::AtomicU64,
}

impl Client {
    fn request(&self, req: &MetaRequest) -> Result<MetaReply, i32> {
        self.raw(&codec::encode(req))
    }

    fn raw(&self, message: &[u8]) -> Result<MetaReply, i32> {
        match self.conn.call(message, &[], Duration::from_secs(30)) {
            Ok((reply, _)) => Ok(codec::decode(&reply).expect("a reply that decodes")),
            Err(CallError::Remote(errno)) => Err(errno),
            Err(e) => panic!("the call failed on the network: {e}"),
        }
    }

    /// Sends a call as a mount does: changes numbered.
    fn call(&self, call: Call) -> Result<Answer, i32> {
        let req = if call.is_change() {
            let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            MetaRequest::Change {
                seq,
                forget: (seq, seq),
                resent: false,
                call,
            }
        } else {
            MetaRequest::Call(call)
        };
        match self.request(&req)? {
            MetaReply::Answer(a) | MetaReply::Changed { answer: a, .. } => Ok(a),
            other => panic!("a call answered {other:?}"),
        }
    }

    fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &str,
        mode: u32,
        open: bool,
    ) -> Result<(u64, Option<u64>), i32> {
        match self.call(Call::Mknod {
            caller: caller.clone(),
            parent,
            name: name.as_bytes().to_vec(),
            mode,
            rdev: 0,
            target: Vec::new(),
            open,
        })? {
            Answer::Mknod((ino, _, handle)) => Ok((ino, handle)),
            other => panic!("mknod answered {other:?}"),
        }
    }

    fn getattr(&self, ino: u64) -> Result<xfused::meta::schema::InodeRec, i32> {
        match self.call(Call::Getattr { ino })? {
            Answer::Getattr(rec) => Ok(rec),
            other => panic!("getattr answered {other:?}"),
        }
    }
}

fn user(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        groups: Vec::new(),
        check: false,
        umask: 0,
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn peers_without_the_cluster_credential_get_nothing() {
    let service = Service::start();
    // The request 8b55fc9 answered with a client id: a plaintext Hello.
    let mut plain = TcpStream::connect(&service.addr).unwrap();
    std::io::Write::write_all(&mut plain, &[2, 0, 0, 0, 1, 1]).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut got);
    assert!(
        got.is_empty() || got[0] == 0x15,
        "a plaintext peer got {got:?} (at most a TLS alert)"
    );
    // A credential of another cluster: the handshake fails. A storage
    // service's credential is the cluster's, but not a mount's.
    let service_role = service.cluster().issue(Role::Service).unwrap();
    for (cred, role, who) in [
        (
            Credential::generate().unwrap(),
            Role::Mount,
            "another cluster's mount",
        ),
        (service_role, Role::Service, "a service credential"),
    ] {
        // TLS 1.3: the client may finish before the server refuses it; then
        // the first call fails.
        if let Ok(client) = service.connect_with(&cred, role) {
            let hello = client
                .conn
                .call(&codec::encode(&MetaRequest::Hello), &[], Duration::from_secs(20));
            assert!(hello.is_err(), "{who} was served");
        }
    }
    common::wait_for("the refusals logged", Duration::from_secs(10), || {
        let log = service.log_text();
        if log.contains("not authenticated") && log.contains("may not use the metadata service") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // A mount credential issued for the role works.
    let mount_role = service.cluster().issue(Role::Mount).unwrap();
    let mount = service.connect_with(&mount_role, Role::Mount).unwrap();
    assert!(matches!(
        mount.request(&MetaRequest::Hello),
        Ok(MetaReply::Session { .. })
    ));
}

#[test]
fn the_wire_cannot_turn_permission_checks_off() {
    let service = Service::start();
    let (client, _) = service.session();
    let root = user(0);
    let (file, _) = client
        .create(&root, 1, "roots", libc::S_IFREG | 0o644, false)
        .unwrap();
    let (dir, _) = client
        .create(&root, 1, "rootdir", libc::S_IFDIR | 0o755, false)
        .unwrap();
    let mallory = user(1001);
    // On 8b55fc9 a caller said "do not check" and was believed.
    let chown = Call::Setattr {
        caller: mallory.clone(),
        ino: file,
        set: xfused::meta::SetAttr {
            uid: Some(1001),
            mode: Some(0o6755),
            ..Default::default()
        },
    };
    assert_eq!(client.call(chown), Err(libc::EPERM));
    assert_eq!(
        client.create(&mallory, 1, "sda", libc::S_IFBLK | 0o666, false),
        Err(libc::EPERM),
        "a block device by a user"
    );
    assert_eq!(
        client.create(&mallory, dir, "x", libc::S_IFREG | 0o644, false),
        Err(libc::EACCES),
        "a file in root's 0755 directory"
    );
    // Supplementary groups count, as in the kernel.
    let (shared, _) = client
        .create(&root, 1, "shared", libc::S_IFDIR | 0o770, false)
        .unwrap();
    client
        .call(Call::Setattr {
            caller: root.clone(),
            ino: shared,
            set: xfused::meta::SetAttr {
                gid: Some(4242),
                ..Default::default()
            },
        })
        .unwrap();
    assert_eq!(
        client.create(&mallory, shared, "y", libc::S_IFREG | 0o644, false),
        Err(libc::EACCES)
    );
    let member = Caller {
        groups: vec![4242],
        ..mallory.clone()
    };
    assert!(client
        .create(&member, shared, "y", libc::S_IFREG | 0o644, false)
        .is_ok());
    let rec = client.getattr(file).unwrap();
    assert_eq!((rec.uid, rec.mode & 0o7777), (0, 0o644), "nothing changed");
    // A message stating more groups than a caller may have is refused.
    let many = Caller {
        groups: (0..=xfused::meta::GROUPS_MAX as u32).collect(),
        ..mallory
    };
    assert_eq!(
        client.call(Call::Access {
            caller: many,
            ino: 1,
            mask: 4
        }),
        Err(libc::EPROTO)
    );
}

#[test]
fn sessions_belong_to_their_connection() {
    let service = Service::start();
    let (victim, victim_id) = service.session();
    let root = user(0);
    let (ino, handle) = victim
        .create(&root, 1, "kept-open", libc::S_IFREG | 0o644, true)
        .unwrap();
    let handle = handle.unwrap();
    assert_eq!(
        victim.call(Call::Unlink {
            caller: root.clone(),
            parent: 1,
            name: b"kept-open".to_vec()
        }),
        Ok(Answer::Unlink(None)),
        "still open: kept"
    );
    // Another mount of the cluster cannot act in the victim's session.
    let (attacker, attacker_id) = service.session();
    assert_ne!(attacker_id, victim_id);
    let guess = MetaRequest::Resume {
        client: victim_id,
        token: [0; xfused::net::TOKEN_LEN],
    };
    assert_eq!(attacker.request(&guess), Err(libc::EACCES), "a guessed token");
    // On 8b55fc9, Release/Goodbye named any client: now they act on the
    // sender's own session only.
    let _ = attacker.call(Call::Release { ino, handle });
    assert!(matches!(attacker.call(Call::CloseClient {}), Ok(Answer::CloseClient(r)) if r.is_empty()));
    // A connection with no session gets nothing.
    let unbound = service.connect(Role::Mount);
    assert_eq!(unbound.call(Call::Getattr { ino: 1 }), Err(libc::ENOTCONN));
    // The victim's open file and session are intact.
    assert!(victim.getattr(ino).is_ok(), "the victim's file survived");
    assert!(matches!(
        victim.call(Call::NoteWrite { ino, handle, end: 10 }),
        Ok(Answer::NoteWrite(rec)) if rec.size == 10
    ));
    // A write needs a session of the writer's.
    let (other, _) = service.session();
    assert_eq!(
        other.call(Call::NoteWrite {
            ino,
            handle,
            end: u64::MAX / 8
        }),
        Err(libc::EBADF)
    );
    assert_eq!(victim.getattr(ino).unwrap().size, 10);
    assert!(matches!(
        victim.call(Call::Release { ino, handle }),
        Ok(Answer::Release(Some(_)))
    ));
}

#[test]
fn a_change_sent_again_is_answered_not_run_again() {
    let service = Service::start();
    let (client, _) = service.session();
    let create = |seq: u64| MetaRequest::Change {
        seq,
        forget: (seq, seq),
        resent: true,
        call: Call::Mknod {
            caller: user(0),
            parent: 1,
            name: b"once".to_vec(),
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
            target: Vec::new(),
            open: false,
        },
    };
    // The same change twice (a retry after a lost reply): on 8b55fc9 the
    // client sent it again unnumbered and the second run said EEXIST.
    let answer = |reply: MetaReply| match reply {
        MetaReply::Answer(a) | MetaReply::Changed { answer: a, .. } => a,
        other => panic!("a change answered {other:?}"),
    };
    let first = answer(client.request(&create(7)).unwrap());
    // (Without the directories it wrote: what they are now is not what
    // the first run left.)
    let again = client.request(&create(7)).unwrap();
    assert!(matches!(again, MetaReply::Answer(_)), "{again:?}");
    assert_eq!(first, answer(again), "the retry got the first run's outcome");
    // A new change of the same name is a new create: EEXIST.
    assert_eq!(client.request(&create(8)), Err(libc::EEXIST));
    // What a change may forget is bounded and below it.
    for forget in [(0, 100), (20, 30), (5, 4)] {
        let MetaRequest::Change { call, .. } = create(10) else {
            unreachable!()
        };
        let req = MetaRequest::Change {
            seq: 10,
            forget,
            resent: false,
            call,
        };
        assert_eq!(client.request(&req), Err(libc::EINVAL), "forget {forget:?}");
    }
    // Changes must be numbered.
    let MetaRequest::Change { call, .. } = create(9) else {
        unreachable!()
    };
    assert_eq!(client.request(&MetaRequest::Call(call)), Err(libc::EINVAL));
    // Numbers are per client: another client's number 7 is a change of
    // its own, here a new create of the same name.
    let (other, _) = service.session();
    assert_eq!(
        other.request(&create(7)),
        Err(libc::EEXIST),
        "another client's number 7 is its own"
    );
}

#[test]
fn bad_messages_and_oversized_names_are_refused_and_others_keep_being_served() {
    let service = Service::start();
    let (good, _) = service.session();
    let (bad, _) = service.session();
    // Garbage and truncated messages: EPROTO on the same connection, which
    // stays usable.
    let getattr = codec::encode(&MetaRequest::Call(Call::Getattr { ino: 1 }));
    for message in [
        vec![1u8, 2, 3],
        getattr[..getattr.len() - 1].to_vec(),
        vec![250],
        vec![],
    ] {
        assert_eq!(bad.raw(&message), Err(libc::EPROTO), "message {message:?}");
    }
    assert!(bad.getattr(1).is_ok());
    let root = user(0);
    assert_eq!(
        bad.create(&root, 1, &"x".repeat(256), libc::S_IFREG | 0o644, false),
        Err(libc::ENAMETOOLONG)
    );
    // A frame length over the limit: that connection is closed.
    let cluster = service.cluster();
    let raw = xfused::rpc::stream::Stream::client(
        TcpStream::connect(&service.addr).unwrap(),
        Some(cluster.client_config(Role::Mount).unwrap()),
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    let huge = (xfused::rpc::frame::MESSAGE_LEN_MAX + xfused::rpc::frame::BULK_LEN_MAX + 100) as u32;
    raw.write_parts(&[&huge.to_le_bytes()], Instant::now() + Duration::from_secs(10))
        .unwrap();
    let n = raw.read_to(&mut |_| Ok(true), Some(Instant::now() + Duration::from_secs(20)));
    assert!(matches!(n, Ok(0) | Err(_)), "the connection stayed open: {n:?}");
    // A peer that sends half a frame and vanishes.
    let half = xfused::rpc::stream::Stream::client(
        TcpStream::connect(&service.addr).unwrap(),
        Some(cluster.client_config(Role::Mount).unwrap()),
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    half.write_parts(
        &[&[100, 0, 0, 0, 1, 2, 3]],
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    drop(half);
    // The well-behaved client was never disturbed.
    let (ino, _) = good
        .create(&root, 1, "fine", libc::S_IFREG | 0o644, false)
        .unwrap();
    assert!(matches!(
        good.call(Call::Lookup { caller: root, parent: 1, name: b"fine".to_vec() }),
        Ok(Answer::Lookup((found, _))) if found == ino
    ));
}

#[test]
fn big_directories_are_read_in_pages_that_fit_frames() {
    let service = Service::start();
    let (client, _) = service.session();
    let root = user(0);
    let (dir, _) = client
        .create(&root, 1, "big", libc::S_IFDIR | 0o755, false)
        .unwrap();
    // 4,096 names of 255 bytes: one answer of them all (~1.1 MB) would not
    // fit a frame; on 8b55fc9 the service dropped the connection.
    const N: usize = 4096;
    for i in 0..N {
        let name = format!("{i:05}{}", "n".repeat(250));
        client
            .create(&root, dir, &name, libc::S_IFREG | 0o644, false)
            .unwrap();
    }
    let mut seen = 0;
    let mut after = 0;
    let mut pages = 0;
    loop {
        let Answer::Readdir(items) = client
            .call(Call::Readdir {
                ino: dir,
                after,
                limit: N,
            })
            .unwrap()
        else {
            panic!("readdir answered something else");
        };
        let Some(last) = items.last() else { break };
        after = last.cookie;
        seen += items.iter().filter(|i| i.name != b"." && i.name != b"..").count();
        pages += 1;
    }
    assert_eq!(seen, N);
    assert!(pages >= 2, "one page held {N} long names");
    assert_eq!(
        client.call(Call::Readdir {
            ino: dir,
            after: 0,
            limit: 100_000
        }),
        Err(libc::EINVAL),
        "a limit past the maximum"
    );
}

#[test]
fn xattrs_are_bounded_and_listing_them_does_not_balloon_the_service() {
    let service = Service::start();
    let (client, _) = service.session();
    let root = user(0);
    let (ino, _) = client
        .create(&root, 1, "x", libc::S_IFREG | 0o644, false)
        .unwrap();
    let value = vec![7u8; 64 * 1024];
    let set = |i: usize| {
        client.call(Call::Setxattr {
            caller: root.clone(),
            ino,
            name: format!("user.{i:04}").into_bytes(),
            value: value.clone(),
            flags: 0,
        })
    };
    for i in 0..xfused::meta::XATTRS_MAX {
        set(i).unwrap();
    }
    // On 8b55fc9: 1,000 and more were taken.
    assert_eq!(set(xfused::meta::XATTRS_MAX), Err(libc::ENOSPC));
    assert_eq!(
        client.call(Call::Setxattr {
            caller: root.clone(),
            ino,
            name: b"user.0000".to_vec(),
            value: vec![0; 64 * 1024 + 1],
            flags: 0
        }),
        Err(libc::E2BIG)
    );
    let pid = service.child.as_ref().unwrap().id();
    let before = peak_rss_kib(pid);
    // 16 listings at once, on 16 connections.
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (c, _) = service.session();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    match c.call(Call::Listxattr { ino }) {
                        Ok(Answer::Listxattr(names)) => assert_eq!(names.len(), xfused::meta::XATTRS_MAX),
                        other => panic!("listxattr: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = peak_rss_kib(pid);
    eprintln!("service peak RSS: {before} KiB before the listings, {after} KiB after");
    // On 8b55fc9 this took the service from 45 MB to 996 MB. Each listing
    // now holds at most a page of 16 values (1 MiB) and the names.
    assert!(
        after < before + 96 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn floods_of_idle_connections_do_not_lock_out_mounts() {
    let service = Service::start();
    // 900 connections that never authenticate (on 8b55fc9, 512 of them
    // took every slot and a Hello was refused), some sending a byte.
    let idle: Vec<TcpStream> = (0..900)
        .map(|i| {
            let mut s = TcpStream::connect(&service.addr).unwrap();
            if i % 3 == 0 {
                std::io::Write::write_all(&mut s, &[0x16]).unwrap();
            }
            s
        })
        .collect();
    let started = Instant::now();
    let (client, _) = service.session();
    assert!(client.getattr(1).is_ok());
    eprintln!(
        "a mount got in past {} idle connections in {:?}",
        idle.len(),
        started.elapsed()
    );
    drop(idle);
    assert!(service.log_text().contains("dropped before authenticating"));
    // At most 64 handshakes wait at a time, so the flood holds little.
    let peak = peak_rss_kib(service.child.as_ref().unwrap().id());
    eprintln!("service peak RSS during the flood: {peak} KiB");
    assert!(peak < 256 * 1024, "the service peaked at {peak} KiB");
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
    let mut args = service.mount_args();
    // Short cache timeouts: the two mounts see each other's changes soon.
    args.extend(
        [
            "--attr-timeout-ms",
            "100",
            "--entry-timeout-ms",
            "100",
            "--negative-timeout-ms",
            "0",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
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
    stop_and_check(first, second, service, "");
}

/// Stops both mounts (each must exit 0) and the service, then checks the
/// store's namespace (`check_namespace`); returns the reopened store.
fn stop_and_check(first: Mount, second: Mount, service: Service, what: &str) -> EmbeddedEngine {
    assert!(first.stop().success());
    assert!(second.stop().success());
    let store = service.stop();
    let engine = EmbeddedEngine::open(&store, Durability::default()).expect("reopening the store");
    let problems = check_namespace(&engine).unwrap();
    assert!(
        problems.is_empty(),
        "{what}namespace inconsistent:\n{}",
        problems.join("\n")
    );
    engine
}

/// O_TMPFILE through the service: a file made with no name on one mount,
/// named by linkat, is seen (name and size) by another mount; one never
/// named leaves nothing in the store.
#[test]
fn o_tmpfile_through_the_service() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let service = Service::start();
    let args = service.mount_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = Mount::start_meta(&args);
    let second = Mount::start_meta(&args);
    let tmpfile = |dir: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
            .expect("open O_TMPFILE")
    };
    let mut named = tmpfile(first.mnt());
    named.write_all(&[7u8; 5000]).unwrap();
    assert_eq!(named.metadata().unwrap().nlink(), 0);
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&named));
    rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        rustix::fs::CWD,
        first.mnt().join("named"),
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .expect("linkat");
    drop(named);
    let unnamed = tmpfile(first.mnt());
    drop(unnamed);
    common::wait_for(
        "the other mount to see the name",
        Duration::from_secs(30),
        || match std::fs::metadata(second.mnt().join("named")) {
            Ok(m) if m.len() == 5000 && m.nlink() == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let names: Vec<_> = std::fs::read_dir(second.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["named"]);
    let engine = stop_and_check(first, second, service, "");
    // One inode counted ("named"; the counters leave the root out): the
    // unnamed file went at its close.
    let usage = xfused::meta::Meta::connect(
        std::sync::Arc::new(engine),
        xfused::meta::MetaConfig::default(),
        std::sync::Arc::new(xfused::meta::SystemClock),
    )
    .unwrap()
    .usage()
    .unwrap();
    assert_eq!(usage.inodes, 1);
}

#[test]
fn pjdfstest_passes_through_the_service() {
    let service = Service::start();
    let args = service.mount_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mount = Mount::start_meta(&args);
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
    let (conn, _) = service.session();
    let root = user(0);
    let (ino, handle) = conn
        .create(&root, 1, "open-then-unlinked", libc::S_IFREG | 0o644, true)
        .unwrap();
    assert!(handle.is_some());
    assert_eq!(
        conn.call(Call::Unlink {
            caller: root.clone(),
            parent: 1,
            name: b"open-then-unlinked".to_vec()
        }),
        Ok(Answer::Unlink(None)),
        "still open: kept"
    );
    assert!(conn.getattr(ino).is_ok());
    // The client goes silent; the service reaps it once its lease expires,
    // and its session ends: ESTALE.
    let (watcher, _) = service.session();
    common::wait_for("the dead client's file reaped", Duration::from_secs(10), || {
        // The watcher renews its own lease as it polls.
        let _ = watcher.call(Call::Heartbeat {});
        match watcher.getattr(ino) {
            Err(libc::ENOENT) => Ok(()),
            other => Err(format!("{other:?}\n{}", service.log_text())),
        }
    });
    assert_eq!(
        conn.call(Call::Open {
            caller: root,
            ino: 1,
            read: true,
            write: false
        }),
        Err(libc::ESTALE),
        "a reaped client is refused"
    );
    assert!(
        matches!(conn.request(&MetaRequest::Hello), Ok(MetaReply::Session { .. })),
        "it may register again"
    );
}

/// A TCP proxy between mounts and the service that breaks connections:
/// each connection is cut after a random number of bytes in one direction
/// (mostly replies, so changes done lose their answers), some forward each
/// chunk late, and some send a chunk twice (which TLS detects: the
/// connection drops). The choices come from the seed, one stream per
/// connection, so a failing seed replays the same faults
/// (`XFUSE_FAULT_SEED=N`).
struct FaultProxy {
    addr: String,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl FaultProxy {
    fn start(target: String, seed: u64) -> FaultProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cuts = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (c, n) = (cuts.clone(), connections.clone());
        std::thread::spawn(move || {
            for (i, down) in listener.incoming().enumerate() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(&target) else {
                    continue;
                };
                // Small writes go at once, as from the endpoints themselves.
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                n.fetch_add(1, Ordering::Relaxed);
                let mut rng = Rng((seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
                // Past the handshake (under 4 KB each way), then within a few
                // dozen calls; in replies three times out of four (a reply
                // cut short is a change done whose outcome was lost).
                let cut_replies = rng.below(4) != 0;
                let cut_after = 4_000 + rng.below(12_000) as usize;
                let late = rng.below(4) == 0;
                let duplicate_at = (rng.below(8) == 0).then(|| rng.below(12_000) as usize);
                for (from, to, replies) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap(), false),
                    (up, down, true),
                ] {
                    let cuts = c.clone();
                    let cut_after = (replies == cut_replies).then_some(cut_after);
                    std::thread::spawn(move || {
                        let sent = AtomicUsize::new(0);
                        let mut buf = [0u8; 4096];
                        let (mut from, mut to) = (from, to);
                        loop {
                            let n = match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if late {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            let before = sent.fetch_add(n, Ordering::Relaxed);
                            if let Some(cut_after) = cut_after.filter(|c| before + n >= *c) {
                                // Part of the chunk, then the cut.
                                let part = cut_after.saturating_sub(before).min(n);
                                let _ = std::io::Write::write_all(&mut to, &buf[..part]);
                                cuts.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                break;
                            }
                            if duplicate_at.is_some_and(|d| before < d && d <= before + n) {
                                let _ = std::io::Write::write_all(&mut to, &buf[..n]);
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        FaultProxy {
            addr,
            cuts,
            connections,
        }
    }
}

/// Each thread's own names, so every outcome is known: a change applied
/// twice shows as an error (EEXIST, ENOENT), a lost one as a missing name.
fn churn_own_names(mnt: PathBuf, thread: usize, rounds: usize) -> Result<(), String> {
    let dir = mnt.join("shared");
    for i in 0..rounds {
        let base = dir.join(format!("t{thread}-{i}"));
        let renamed = dir.join(format!("t{thread}-{i}.r"));
        let linked = dir.join(format!("t{thread}-{i}.l"));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&base)
            .map_err(|e| format!("create {}: {e}", base.display()))?;
        std::fs::rename(&base, &renamed).map_err(|e| format!("rename {}: {e}", base.display()))?;
        std::fs::hard_link(&renamed, &linked).map_err(|e| format!("link {}: {e}", renamed.display()))?;
        std::fs::remove_file(&linked).map_err(|e| format!("unlink {}: {e}", linked.display()))?;
    }
    Ok(())
}

#[test]
fn changes_through_a_faulty_network_apply_exactly_once() {
    let seed = std::env::var("XFUSE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("fault seed {seed} (replay with XFUSE_FAULT_SEED={seed})");
    let service = Service::start();
    let proxy = FaultProxy::start(service.addr.clone(), seed);
    let args = [
        "--meta".to_string(),
        format!("tcp://{}", proxy.addr),
        "--credential".into(),
        service.credential.display().to_string(),
        "--negative-timeout-ms".into(),
        "0".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = Mount::start_meta(&args);
    let second = Mount::start_meta(&args);
    common::wait_for(
        "the shared directory",
        Duration::from_secs(60),
        || match std::fs::create_dir(first.mnt().join("shared")) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    );
    const ROUNDS: usize = 60;
    let mounts = [first.mnt().to_path_buf(), second.mnt().to_path_buf()];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mnt = mounts[t % 2].clone();
            std::thread::spawn(move || churn_own_names(mnt, t, ROUNDS))
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    let cuts = proxy.cuts.load(std::sync::atomic::Ordering::Relaxed);
    let connections = proxy.connections.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("seed {seed}: {connections} connections, {cuts} cut");
    assert!(
        failures.is_empty(),
        "seed {seed}: {failures:?}\nfirst mount:\n{}\nsecond mount:\n{}",
        first.daemon_log(),
        second.daemon_log()
    );
    assert!(
        cuts >= 2,
        "seed {seed}: the proxy cut {cuts} connections: the test tested nothing"
    );
    // Exactly the renamed names, each with one link.
    let mut names: Vec<String> = std::fs::read_dir(first.mnt().join("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..8)
        .flat_map(|t| (0..ROUNDS).map(move |i| format!("t{t}-{i}.r")))
        .collect();
    expected.sort();
    assert_eq!(names, expected, "seed {seed}");
    stop_and_check(first, second, service, &format!("seed {seed}: "));
}

impl Service {
    /// A mount's client of the service, as `xfused mount` makes it.
    fn remote(&self) -> xfused::net::RemoteMeta {
        let tls = self
            .cluster()
            .client_config(Role::Mount)
            .expect("a client configuration");
        xfused::net::RemoteMeta::connect(&self.addr, Some(tls)).expect("connecting")
    }
}

/// A change answers with the directories it wrote, as committed; a client
/// that keeps them answers the next getattr of such a directory from that
/// record, once, without a call (another client's later chmod shows only
/// on the getattr after), and one that keeps none asks every time.
#[test]
fn a_changes_directories_answer_the_next_getattr_once() {
    use xfused::meta::{Namespace, SetAttr};
    let service = Service::start();
    let (raw, _) = service.session();
    let (dir, _) = raw
        .create(&Caller::ROOT, 1, "d", libc::S_IFDIR | 0o755, false)
        .unwrap();
    // The raw reply: the directory's record as the change left it.
    let reply = raw
        .request(&MetaRequest::Change {
            seq: 100,
            forget: (100, 100),
            resent: false,
            call: Call::Mknod {
                caller: Caller::ROOT,
                parent: dir,
                name: b"f".to_vec(),
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
                target: Vec::new(),
                open: false,
            },
        })
        .unwrap();
    let MetaReply::Changed { dirs, .. } = reply else {
        panic!("a create answered {reply:?}")
    };
    assert_eq!(dirs, vec![(dir, raw.getattr(dir).unwrap())]);

    let chmod = |mode: u32| {
        raw.call(Call::Setattr {
            caller: Caller::ROOT,
            ino: dir,
            set: SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            },
        })
        .unwrap();
    };
    let mut keeping = service.remote();
    keeping.remember_dirs(Duration::from_secs(60));
    let (_, after_create, _) = keeping
        .mknod(&Caller::ROOT, dir, b"g", libc::S_IFREG | 0o644, 0, &[], false)
        .unwrap();
    assert_eq!(after_create.kind(), libc::S_IFREG);
    let created = raw.getattr(dir).unwrap();
    chmod(0o700);
    assert_eq!(
        keeping.getattr(dir).unwrap(),
        created,
        "the create's record answers"
    );
    assert_eq!(keeping.getattr(dir).unwrap().mode & 0o7777, 0o700, "once");

    let asking = service.remote();
    asking
        .mknod(&Caller::ROOT, dir, b"h", libc::S_IFREG | 0o644, 0, &[], false)
        .unwrap();
    chmod(0o750);
    assert_eq!(asking.getattr(dir).unwrap().mode & 0o7777, 0o750);
}

/// Deferred closes: a release returns at once and the session stays open
/// until the closes go, together: once the oldest has waited long enough,
/// or with the client's next call once a full batch waits (a file
/// unlinked meanwhile by another client is an orphan until then, and is
/// freed, to the sink, when its close goes).
#[test]
fn deferred_closes_go_together_or_with_the_next_call() {
    use std::sync::Mutex;
    use xfused::meta::{Namespace, Reclaim};
    let service = Service::start();
    let (raw, _) = service.session();
    let unlink = |name: &str| match raw.call(Call::Unlink {
        caller: Caller::ROOT,
        parent: 1,
        name: name.as_bytes().to_vec(),
    }) {
        Ok(Answer::Unlink(r)) => r,
        other => panic!("unlink answered {other:?}"),
    };
    let freed = |sink: &Arc<Mutex<Vec<Reclaim>>>, ino: u64| {
        let sink = sink.clone();
        common::wait_for("the freed file at the sink", Duration::from_secs(20), move || {
            if sink.lock().unwrap().iter().any(|r| r.ino == ino) {
                Ok(())
            } else {
                Err(format!("{:?}", sink.lock().unwrap()))
            }
        });
    };

    // A full batch goes with the next call (nothing goes alone within an
    // hour); fewer wait.
    use xfused::net::RELEASES_MAX;
    let sink = Arc::new(Mutex::new(Vec::new()));
    let remote = Arc::new(service.remote());
    let to = sink.clone();
    remote
        .defer_releases(Duration::from_secs(3600), move |r| to.lock().unwrap().push(r))
        .unwrap();
    let opened: Vec<(u64, u64)> = (0..RELEASES_MAX)
        .map(|i| {
            let (ino, _, handle) = remote
                .mknod(
                    &Caller::ROOT,
                    1,
                    format!("f{i}").as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    &[],
                    true,
                )
                .unwrap();
            (ino, handle.unwrap())
        })
        .collect();
    let (ino, _) = opened[0];
    for &(i, h) in &opened[..RELEASES_MAX - 1] {
        assert_eq!(remote.release(i, h).unwrap(), None);
    }
    // This call carries nothing: fewer than a batch wait.
    assert!(remote.lookup(&Caller::ROOT, 1, b"f1").is_ok());
    assert_eq!(unlink("f0"), None, "the close was deferred: f0 is still open");
    assert_eq!(raw.getattr(ino).unwrap().nlink, 0);
    let (i, h) = opened[RELEASES_MAX - 1];
    assert_eq!(remote.release(i, h).unwrap(), None);
    // A call that fails carries them as well as one that succeeds.
    assert!(matches!(
        remote.lookup(&Caller::ROOT, 1, b"nothing"),
        Err(xfused::meta::MetaError::Errno(libc::ENOENT))
    ));
    freed(&sink, ino);
    assert_eq!(raw.getattr(ino), Err(libc::ENOENT));

    // Alone, soon.
    let sink = Arc::new(Mutex::new(Vec::new()));
    let remote = Arc::new(service.remote());
    let to = sink.clone();
    remote
        .defer_releases(Duration::from_millis(2), move |r| to.lock().unwrap().push(r))
        .unwrap();
    let (ino, _, handle) = remote
        .mknod(&Caller::ROOT, 1, b"g", libc::S_IFREG | 0o644, 0, &[], true)
        .unwrap();
    // Unlinked while open (this call carries nothing: no close waits).
    remote.unlink(&Caller::ROOT, 1, b"g").unwrap();
    remote.release(ino, handle.unwrap()).unwrap();
    freed(&sink, ino);
    assert_eq!(raw.getattr(ino), Err(libc::ENOENT));
    assert!(remote.settle_deferred().is_empty(), "the sink took it");
}

/// Batches are bounded and hold no batch.
#[test]
fn batches_are_bounded() {
    use xfused::net::{Release, RELEASES_MAX};
    let service = Service::start();
    let (raw, _) = service.session();
    let release = |seq| Release {
        seq,
        resent: false,
        ino: 1,
        handle: 0,
    };
    let too_many = MetaRequest::Batch {
        releases: (1..=RELEASES_MAX as u64 + 1).map(release).collect(),
        then: None,
    };
    assert_eq!(raw.request(&too_many), Err(libc::EINVAL));
    let nested = MetaRequest::Batch {
        releases: vec![release(1)],
        then: Some(Box::new(MetaRequest::Batch {
            releases: Vec::new(),
            then: None,
        })),
    };
    assert_eq!(raw.request(&nested), Err(libc::EINVAL));
    // A close of a session that is not there closes nothing, harmlessly.
    match raw.request(&MetaRequest::Batch {
        releases: vec![release(2)],
        then: None,
    }) {
        Ok(MetaReply::Batch { released, then: None }) => assert_eq!(released, vec![(2, Ok(None))]),
        other => panic!("a batch answered {other:?}"),
    }
    // Without a session, nothing.
    let unbound = service.connect(Role::Mount);
    assert_eq!(
        unbound.request(&MetaRequest::Batch {
            releases: vec![release(3)],
            then: None,
        }),
        Err(libc::ENOTCONN)
    );
}

/// A service on a store of its own keeps its clients' open files in its
/// memory. Killed and started again, it asks each client that may hold
/// files open to tell them, and until they have, a file losing its last
/// link is kept: the file one mount holds outlives another's unlink, and
/// the file nobody holds is deleted once everyone has told.
#[test]
fn files_held_open_outlive_a_restart_of_the_service() {
    // A lease far longer than the test: the grace period ends because
    // every client told, not because time ran out.
    let mut service = Service::start_with(&["--lease-ms", "120000"]);
    let holder = service.remote();
    let other = service.remote();
    let root = user(0);
    let create = |m: &xfused::net::RemoteMeta, name: &str, open: bool| match m
        .invoke(Call::Mknod {
            caller: root.clone(),
            parent: 1,
            name: name.as_bytes().to_vec(),
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
            target: Vec::new(),
            open,
        })
        .unwrap()
    {
        Answer::Mknod((ino, _, handle)) => (ino, handle),
        other => panic!("mknod answered {other:?}"),
    };
    let getattr = |m: &xfused::net::RemoteMeta, ino: u64| m.invoke(Call::Getattr { ino });
    let (kept, handle) = create(&holder, "kept", true);
    let handle = handle.unwrap();
    let (freed, _) = create(&holder, "freed", false);

    service.restart();
    // The other client speaks first: it tells its (no) open files, and its
    // unlinks come during the grace period: both files are kept.
    for name in ["kept", "freed"] {
        let unlinked = other.invoke(Call::Unlink {
            caller: root.clone(),
            parent: 1,
            name: name.as_bytes().to_vec(),
        });
        assert_eq!(
            unlinked,
            Ok(Answer::Unlink(None)),
            "{name}\n{}",
            service.log_text()
        );
    }
    assert!(
        getattr(&other, freed).is_ok(),
        "deleted before its holder could tell"
    );
    // The holder's next call tells its handle; everyone has, and the
    // file nobody holds goes.
    match getattr(&holder, kept) {
        Ok(Answer::Getattr(rec)) => assert_eq!(rec.nlink, 0),
        other => panic!("the held file: {other:?}\n{}", service.log_text()),
    }
    assert_eq!(
        getattr(&other, freed),
        Err(xfused::meta::MetaError::Errno(libc::ENOENT))
    );
    // The handle still works, and its close deletes the file.
    holder
        .invoke(Call::NoteWrite {
            ino: kept,
            handle,
            end: 5,
        })
        .unwrap();
    assert!(matches!(
        holder.invoke(Call::Release { ino: kept, handle }),
        Ok(Answer::Release(Some(_)))
    ));
    assert_eq!(
        getattr(&other, kept),
        Err(xfused::meta::MetaError::Errno(libc::ENOENT))
    );
    let log = service.log_text();
    assert_eq!(log.matches("told its open files").count(), 2, "{log}");
    assert!(log.contains("grace period over: 1 files"), "{log}");
    drop((holder, other));
    let store = service.stop();
    let engine = EmbeddedEngine::open(&store, Durability::default()).expect("reopening the store");
    let problems = check_namespace(&engine).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

/// Open files are told only to a restarted service that asks: at any
/// other time a claim of handles (which would hold files against unlinks)
/// keeps nothing.
#[test]
fn handles_nobody_asked_for_are_not_kept() {
    let service = Service::start();
    let (conn, _) = service.session();
    let root = user(0);
    let (ino, _) = conn
        .create(&root, 1, "claimed", libc::S_IFREG | 0o644, false)
        .unwrap();
    assert_eq!(
        conn.request(&MetaRequest::Reopen {
            handles: vec![(ino, 77)],
            last: true
        }),
        Ok(MetaReply::Reopened(0))
    );
    assert_eq!(
        conn.call(Call::Unlink {
            caller: root,
            parent: 1,
            name: b"claimed".to_vec()
        }),
        Ok(Answer::Unlink(Some(xfused::meta::Reclaim {
            ino,
            layout_id: ino,
            chunk_size: 1 << 20,
            size: 0
        }))),
        "deleted at once: the claim held nothing"
    );
}
