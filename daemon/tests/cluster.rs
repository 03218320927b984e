//! The storage cluster on one machine: `xfused meta`, three `xfused
//! storage` services (127.0.0.1, ports of their own) and mounts whose file
//! data lives on them, replicated along chains.
//!
//! - What one mount writes, another reads back byte for byte, every chunk
//!   is on three targets, privately;
//! - SIGKILL of a target during a stream of writes, and of the head of a
//!   chunk's chain while one writer rewrites that chunk: writes stall
//!   until the target is taken out, then go on on the new chain; no
//!   acknowledged byte is lost or overwritten by an older one; the
//!   target comes back, copies what it missed, serves again, and then
//!   alone serves every file correctly;
//! - unlinking a file removes its chunks from every target;
//! - a replica whose block fails its checksum is read around, then
//!   replaced by a good copy; scrubbing finds and replaces one nobody
//!   reads;
//! - a directory's replication factor (`xfused.replicas`) is what the
//!   files made below it get;
//! - writers past a service's bound on bytes held (`--held-max-mib`)
//!   wait, and all finish;
//! - fallocate (allocate, punch-hole, zero-range) and `SEEK_DATA`/
//!   `SEEK_HOLE` do on cluster data what they do on tmpfs, every replica
//!   agrees afterwards, and a punch over a huge sparse file is quick;
//! - fsx (crates.io `fsx`: random reads, writes, mmap reads and writes,
//!   truncates, each checked against a model) and pjdfstest pass on a
//!   cluster mount.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::Mount;
use rustix::process::{kill_process, Pid, Signal};
use xfused::cluster::client::ClusterClient;
use xfused::cluster::{MemberState, Table};
use xfused::rpc::auth::{Credential, Role};

/// Time for a killed target to be taken out of its chains, or a returning
/// one to be synced, on a loaded machine (the target lease is 4 s).
const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process of the cluster, stopped on drop.
struct Proc {
    /// `None` once reaped.
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[String], log: &Path) -> Proc {
        let child = common::spawn_xfused(args, log);
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address logged after `marker`, once it is.
    fn wait_listening(&mut self, marker: &str) -> String {
        common::wait_for(marker, Duration::from_secs(30), || {
            let text = self.log_text();
            if let Some(addr) = text
                .split_once(marker)
                .and_then(|(_, rest)| rest.split_once(','))
                .map(|(addr, _)| addr.to_owned())
            {
                return Ok(addr);
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("waitpid")) {
                panic!("xfused exited ({status}) before listening:\n{text}");
            }
            Err(text)
        })
    }

    fn signal(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_process(Pid::from_child(&child), signal);
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

/// A storage service with one target.
struct Storage {
    proc: Option<Proc>,
    target: PathBuf,
    log: PathBuf,
    restarts: usize,
}

/// See the module docs.
struct Cluster {
    storages: Vec<Storage>,
    meta: Proc,
    addr: String,
    credential: PathBuf,
    dir: tempfile::TempDir,
    /// Added to every `xfused storage`'s arguments.
    storage_args: Vec<String>,
}

/// The table in a few lines, for failure messages: each chain's members
/// and states, each target's liveness and reported copies.
fn describe(table: &Table) -> String {
    let mut out = format!("table version {}\n", table.chains.version);
    for c in &table.chains.chains {
        let members: Vec<String> = c
            .members
            .iter()
            .map(|m| format!("{} {:?}", m.target, m.state))
            .collect();
        out += &format!("  chain {} version {}: {}\n", c.id, c.version, members.join(", "));
    }
    for t in &table.targets {
        out += &format!(
            "  target {} at {}: up {}, lease until {} ms, synced {:?}\n",
            t.id, t.addr, t.up, t.lease_until_ms, t.synced
        );
    }
    out
}

impl Cluster {
    fn start(targets: usize) -> Cluster {
        Cluster::start_with(targets, &[])
    }

    /// With `meta_args` added to `xfused meta`'s.
    fn start_with(targets: usize, meta_args: &[&str]) -> Cluster {
        Cluster::start_full(targets, meta_args, &[])
    }

    /// With `meta_args` added to `xfused meta`'s, `storage_args` to every
    /// `xfused storage`'s.
    fn start_full(targets: usize, meta_args: &[&str], storage_args: &[&str]) -> Cluster {
        Cluster::start_on(None, targets, meta_args, storage_args)
    }

    /// As [`Cluster::start_full`], the metadata service on `engine` (a
    /// URL; `None`: an embedded engine of its own).
    fn start_on(engine: Option<&str>, targets: usize, meta_args: &[&str], storage_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("xfuse-cluster.")
            .tempdir()
            .unwrap();
        let credential = dir.path().join("cluster.pem");
        let mut args = vec![
            "meta".into(),
            "--engine".into(),
            engine.map_or_else(
                || format!("embedded:{}", dir.path().join("meta").display()),
                str::to_owned,
            ),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--credential".into(),
            credential.display().to_string(),
        ];
        args.extend(meta_args.iter().map(|a| a.to_string()));
        let mut meta = Proc::spawn(&args, &dir.path().join("meta.log"));
        let addr = meta.wait_listening("metadata service on ");
        let mut cluster = Cluster {
            storages: Vec::new(),
            meta,
            addr,
            credential,
            dir,
            storage_args: storage_args.iter().map(|a| a.to_string()).collect(),
        };
        for i in 0..targets {
            let target = cluster.dir.path().join(format!("target{i}"));
            let log = cluster.dir.path().join(format!("storage{i}.log"));
            cluster.storages.push(Storage {
                proc: None,
                target,
                log,
                restarts: 0,
            });
            cluster.start_storage(i);
        }
        cluster.wait_for("every target up, no chain reconfigured", |t| {
            t.targets.len() == targets && t.targets.iter().all(|t| t.up)
        });
        cluster
    }

    fn start_storage(&mut self, i: usize) {
        let s = &mut self.storages[i];
        let log = s.log.with_extension(format!("{}.log", s.restarts));
        s.restarts += 1;
        let mut args = vec![
            "storage".into(),
            "--meta".into(),
            format!("tcp://{}", self.addr),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--target".into(),
            s.target.display().to_string(),
            "--credential".into(),
            self.credential.display().to_string(),
        ];
        args.extend(self.storage_args.iter().cloned());
        let mut proc = Proc::spawn(&args, &log);
        proc.wait_listening("storage service on ");
        s.proc = Some(proc);
    }

    fn kill_storage(&mut self, i: usize) {
        if let Some(mut p) = self.storages[i].proc.take() {
            p.signal(Signal::KILL);
        }
    }

    fn client(&self) -> ClusterClient {
        let cred = Credential::load(&self.credential).unwrap();
        ClusterClient::new(&self.addr, Some(cred.client_config(Role::Admin).unwrap())).unwrap()
    }

    fn table(&self) -> Table {
        self.client().table().expect("reading the chain table")
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut(&Table) -> bool) -> Table {
        let client = self.client();
        common::wait_for(what, RECONFIGURE_TIMEOUT, || {
            let table = client.table().map_err(|e| e.to_string())?;
            if ok(&table) {
                Ok(table)
            } else {
                Err(format!("{}\n{}", describe(&table), self.logs()))
            }
        })
    }

    fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    fn mount_with(&self, extra: &[&str]) -> Mount {
        let meta = format!("tcp://{}", self.addr);
        let mut args = vec!["--meta", &meta, "--credential", self.credential.to_str().unwrap()];
        args.extend(extra);
        Mount::start_cluster(&args)
    }

    /// Every log of the cluster, for failure messages.
    fn logs(&self) -> String {
        let mut out = format!("--- meta\n{}", self.meta.log_text());
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("storage") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: String = text
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                out += &format!("\n--- {name}\n{tail}");
            }
        }
        out
    }

    /// The chunk files (`.m` headers) under target `i`, by layout directory
    /// name and index.
    fn chunks(&self, i: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let root = self.storages[i].target.join("chunks");
        for group in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if !group.path().is_dir() {
                continue;
            }
            for layout in std::fs::read_dir(group.path()).into_iter().flatten().flatten() {
                for chunk in std::fs::read_dir(layout.path()).into_iter().flatten().flatten() {
                    let name = chunk.file_name().to_string_lossy().into_owned();
                    if let Some(index) = name.strip_suffix(".m") {
                        out.push((
                            layout.file_name().to_string_lossy().into_owned(),
                            index.to_owned(),
                        ));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

impl Cluster {
    /// Waits until no target holds a chunk of `layout`.
    fn wait_chunks_gone(&self, layout: &str, what: &str, timeout: Duration) {
        common::wait_for(what, timeout, || {
            let left: Vec<_> = (0..self.storages.len())
                .flat_map(|i| self.chunks(i))
                .filter(|(l, _)| l == layout)
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}\n{}", self.logs()))
            }
        });
    }
}

fn layout_name(ino: u64) -> String {
    format!("{ino:016x}")
}

impl Cluster {
    /// The data file of chunk `index` of file `ino` on target `i` (see
    /// `storage::engine`: `chunks/LL/LLLLLLLLLLLLLLLL/INDEX`).
    fn chunk_file(&self, i: usize, ino: u64, index: u64) -> PathBuf {
        self.storages[i]
            .target
            .join("chunks")
            .join(format!("{:02x}", ino & 0xff))
            .join(layout_name(ino))
            .join(index.to_string())
    }
}

/// Inverts the byte at `offset` of `path`, as a torn write or a bad
/// sector would damage it.
fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[!b[0]], offset).unwrap();
}

#[test]
fn files_written_on_one_mount_read_back_on_another_with_three_replicas() {
    let cluster = Cluster::start(3);
    let a = cluster.mount();
    let b = cluster.mount();
    assert!(
        a.daemon_log().contains("file data: in the storage cluster"),
        "{}",
        a.daemon_log()
    );
    let sizes = [0usize, 1, 4095, 4097, (1 << 20) + 3, 5 << 20];
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(a.mnt().join(format!("f{i}")), common::pattern(*size, i as u64)).unwrap();
    }
    for (i, size) in sizes.iter().enumerate() {
        let got = std::fs::read(b.mnt().join(format!("f{i}"))).unwrap();
        assert!(
            got == common::pattern(*size, i as u64),
            "f{i} ({size} bytes) differs on the other mount"
        );
    }
    // Overwrite in the middle, cut, extend, append: on one mount, seen on
    // the other.
    use std::io::{Seek, SeekFrom, Write};
    let path = a.mnt().join("f5");
    let mut expect = common::pattern(5 << 20, 5);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(1_000_000)).unwrap();
        f.write_all(&[9u8; 70_000]).unwrap();
        expect[1_000_000..1_070_000].fill(9);
        f.set_len(3_000_000).unwrap();
        expect.truncate(3_000_000);
        f.set_len(3_500_000).unwrap();
        expect.resize(3_500_000, 0);
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"tail").unwrap();
        expect.extend_from_slice(b"tail");
    }
    assert!(
        std::fs::read(b.mnt().join("f5")).unwrap() == expect,
        "f5 after its changes"
    );
    // Every chunk is on all three targets, readable by the service alone.
    let ino = std::fs::metadata(a.mnt().join("f5")).unwrap().ino();
    for i in 0..3 {
        let chunks: Vec<_> = cluster
            .chunks(i)
            .into_iter()
            .filter(|(l, _)| *l == layout_name(ino))
            .collect();
        // Four chunks of data, and the fifth cut to nothing by the
        // truncate (a chunk that may be written again keeps its header and
        // version; only a file's removal removes its chunks).
        assert_eq!(chunks.len(), 5, "target {i} holds f5's 5 chunks: {chunks:?}");
        let dir = cluster.storages[i].target.join("chunks");
        for entry in walk(&dir) {
            let mode = std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
            let want = if entry.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{}", entry.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// fsync right after a member died, while the table still lists it: the
/// sync waits for the chain to be fixed, as writes do, and succeeds on the
/// members left (it failed with EIO at once, found by the RDMA guest test).
#[test]
fn an_fsync_right_after_a_member_dies_waits_for_the_chain_and_succeeds() {
    use std::io::Write;
    let mut cluster = Cluster::start(3);
    let a = cluster.mount();
    let path = a.mnt().join("f");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&common::pattern(200_000, 1)).unwrap();
    f.sync_all().unwrap();
    cluster.kill_storage(1);
    // Before the target's lease runs out (the table still has it serving),
    // with nothing to write first, which would wait for the chain itself.
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync with a member just killed: {e}\n{}", cluster.logs()));
    f.write_all(&common::pattern(200_000, 2)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut want = common::pattern(200_000, 1);
    want.extend(common::pattern(200_000, 2));
    assert!(std::fs::read(&path).unwrap() == want, "the file differs");
}

#[test]
fn a_killed_target_loses_no_acknowledged_write_then_syncs_and_serves_alone() {
    let mut cluster = Cluster::start(3);
    let a = cluster.mount();
    let dir = a.mnt().to_path_buf();
    const FILES: usize = 24;
    const SIZE: usize = 300_000;
    // A stream of writes; target 1 dies after the sixth file.
    let writer = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0..FILES {
            let path = dir.join(format!("w{i}"));
            // Close returns: acknowledged.
            match std::fs::write(&path, common::pattern(SIZE, 100 + i as u64)) {
                Ok(()) => acknowledged.push(i),
                Err(e) => panic!("writing w{i}: {e}"),
            }
        }
        acknowledged
    });
    common::wait_for("six files written", Duration::from_secs(120), || {
        let n = std::fs::read_dir(a.mnt()).unwrap().count();
        if n >= 6 {
            Ok(())
        } else {
            Err(format!("{n} files"))
        }
    });
    cluster.kill_storage(1);
    let acknowledged = writer.join().expect("the writer");
    assert_eq!(acknowledged.len(), FILES);
    let table = cluster.wait_for("target 2 offline", |t| t.targets.iter().any(|t| !t.up));
    let down: Vec<u32> = table.targets.iter().filter(|t| !t.up).map(|t| t.id).collect();
    assert_eq!(down.len(), 1, "{table:#?}");
    let check = |cluster: &Cluster, mount: &Mount, what: &str| {
        for i in &acknowledged {
            let got = std::fs::read(mount.mnt().join(format!("w{i}"))).unwrap();
            assert!(
                got == common::pattern(SIZE, 100 + *i as u64),
                "w{i} differs {what}\n{}",
                cluster.logs()
            );
        }
    };
    let b = cluster.mount();
    check(&cluster, &b, "with a target down");
    drop(b);
    // It comes back, copies what it missed, serves.
    cluster.start_storage(1);
    cluster.wait_for("every member of every chain serving", |t| {
        t.targets.iter().all(|t| t.up)
            && t.chains
                .chains
                .iter()
                .all(|c| c.members.iter().all(|m| m.state == MemberState::Serving))
    });
    // The two others die: the one that came back serves alone.
    cluster.kill_storage(0);
    cluster.kill_storage(2);
    let table = cluster.wait_for("the returned target alone serving", |t| {
        t.chains.chains.iter().all(|c| {
            let readers: Vec<u32> = c.readers().collect();
            readers.len() == 1 && readers[0] == down[0]
        })
    });
    let c = cluster.mount();
    check(
        &cluster,
        &c,
        &format!("served by the returned target alone ({table:?})"),
    );
}

#[test]
fn the_head_killed_mid_write_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3);
    let a = cluster.mount();
    let path = a.mnt().join("hot");
    std::fs::write(&path, [0u8; 8 * SLOT]).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    // Whose chain holds chunk 0, and who heads it.
    let cred = Credential::load(&cluster.credential).unwrap();
    let mount_client =
        ClusterClient::new(&cluster.addr, Some(cred.client_config(Role::Mount).unwrap())).unwrap();
    let (_, layout) = mount_client.layout(ino).unwrap();
    let table = cluster.table();
    let head = table.chain(layout.chain_of(0)).unwrap().head().unwrap();
    let head_addr = table.addr(head).unwrap().to_string();
    let victim = (0..3)
        .find(|&i| {
            let log = std::fs::read_to_string(cluster.storages[i].log.with_extension("0.log")).unwrap();
            log.contains(&format!("storage service on {head_addr},"))
        })
        .expect("the head's storage service");
    // One writer rewriting the eight 128 KiB slots of chunk 0 in turn.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let done = done.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            for i in 0..ROUNDS {
                f.write_all_at(&common::pattern(SLOT, i as u64), ((i % 8) * SLOT) as u64)
                    .unwrap_or_else(|e| panic!("write {i}: {e}"));
                done.store(i + 1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    common::wait_for("20 writes", Duration::from_secs(120), || {
        let n = done.load(std::sync::atomic::Ordering::SeqCst);
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    cluster.kill_storage(victim);
    writer.join().expect("the writer");
    let table = cluster.wait_for("the dead head out of its chain", |t| {
        t.chain(layout.chain_of(0)).unwrap().head() != Some(head)
    });
    let b = cluster.mount();
    let got = std::fs::read(b.mnt().join("hot")).unwrap();
    for slot in 0..8 {
        let last = (0..ROUNDS).rev().find(|i| i % 8 == slot).unwrap();
        assert!(
            got[slot * SLOT..(slot + 1) * SLOT] == common::pattern(SLOT, last as u64)[..],
            "slot {slot} is not write {last}'s ({table:?})\n{}",
            cluster.logs()
        );
    }
}

/// A slot of the head-kill test.
const SLOT: usize = 128 * 1024;
/// Writes of the head-kill test.
const ROUNDS: usize = 120;

#[test]
fn an_unlinked_file_leaves_no_chunk_on_any_target() {
    let cluster = Cluster::start(3);
    let a = cluster.mount();
    let path = a.mnt().join("gone");
    std::fs::write(&path, common::pattern(3 << 20, 1)).unwrap();
    let layout = layout_name(std::fs::metadata(&path).unwrap().ino());
    for i in 0..3 {
        assert!(
            cluster.chunks(i).iter().any(|(l, _)| *l == layout),
            "target {i} has the file's chunks"
        );
    }
    std::fs::remove_file(&path).unwrap();
    cluster.wait_chunks_gone(&layout, "the file's chunks removed", Duration::from_secs(30));
    // The table itself is untouched by it.
    assert_eq!(cluster.table().targets.len(), 3);
}

#[test]
fn a_directorys_replication_factor_is_what_the_files_made_below_it_get() {
    use rustix::fs::{getxattr, setxattr, XattrFlags};
    let cluster = Cluster::start(3);
    let a = cluster.mount();
    let name = "xfused.replicas";
    let one = a.mnt().join("one");
    std::fs::create_dir(&one).unwrap();
    let get = |path: &Path| -> Result<String, rustix::io::Errno> {
        let mut buf = [0u8; 16];
        let n = getxattr(path, name, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert_eq!(get(&one), Err(rustix::io::Errno::NODATA));
    for bad in ["0", "17", "two", ""] {
        assert_eq!(
            setxattr(&one, name, bad.as_bytes(), XattrFlags::empty()),
            Err(rustix::io::Errno::INVAL),
            "{bad:?}"
        );
    }
    setxattr(&one, name, b"1", XattrFlags::empty()).unwrap();
    assert_eq!(get(&one).unwrap(), "1");
    let sub = one.join("sub");
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(get(&sub).unwrap(), "1", "a new directory inherits it");
    // Three chunks each: in `one` and below it on one target, elsewhere
    // on all three.
    let write = |path: &Path, seed: u64| {
        std::fs::write(path, common::pattern(3 << 20, seed)).unwrap();
        std::fs::File::open(path).unwrap().sync_all().unwrap();
        layout_name(std::fs::metadata(path).unwrap().ino())
    };
    let single = [write(&one.join("f"), 1), write(&sub.join("g"), 2)];
    let triple = write(&a.mnt().join("h"), 3);
    assert_eq!(get(&one.join("f")).unwrap(), "1", "a file shows what it got");
    assert_eq!(
        setxattr(one.join("f"), name, b"2", XattrFlags::empty()),
        Err(rustix::io::Errno::INVAL),
        "a file's factor is fixed when it is made"
    );
    let held = |layout: &str| -> Vec<usize> {
        (0..3)
            .map(|i| cluster.chunks(i).iter().filter(|(l, _)| l == layout).count())
            .collect()
    };
    for layout in &single {
        let counts = held(layout);
        assert_eq!(
            counts.iter().sum::<usize>(),
            3,
            "one copy of each chunk: {counts:?}"
        );
    }
    assert_eq!(held(&triple), vec![3, 3, 3], "three copies of each chunk");
    // Read back whole on another mount.
    let b = cluster.mount();
    for (path, seed) in [("one/f", 1), ("one/sub/g", 2), ("h", 3)] {
        assert!(
            std::fs::read(b.mnt().join(path)).unwrap() == common::pattern(3 << 20, seed),
            "{path} differs on the other mount"
        );
    }
}

#[test]
fn writers_past_the_services_held_bound_wait_and_all_finish() {
    // 5 MiB: one whole write at a time per service. Sixteen writers of
    // 1 MiB writes, through four mounts (each serves at least two requests
    // at once, four on `dev`), on three-member chains, each write held at every member
    // until the tail has it: past five at once, the heads' admitted writes
    // wait at their successors (forwards are counted but never wait, or
    // chains that run round the ring would wait on each other for ever).
    const WRITERS: u64 = 16;
    let cluster = Cluster::start_full(3, &[], &["--held-max-mib", "5"]);
    let mounts: Vec<Mount> = (0..4).map(|_| cluster.mount_with(&["--threads", "4"])).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let path = mounts[i as usize % mounts.len()].mnt().join(format!("w{i}"));
            std::thread::spawn(move || {
                let mut f = std::fs::File::create(&path).unwrap();
                use std::io::Write;
                for j in 0..6u64 {
                    f.write_all(&common::pattern(1 << 20, i * 100 + j)).unwrap();
                }
                f.sync_all().unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let waited = (0..3).any(|i| {
        std::fs::read_dir(cluster.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("storage{i}"))
            })
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("not read until")
            })
    });
    assert!(waited, "no service reached its bound:\n{}", cluster.logs());
    for i in 0..WRITERS {
        let got = std::fs::read(mounts[0].mnt().join(format!("w{i}"))).unwrap();
        assert_eq!(got.len(), 6 << 20);
        for j in 0..6u64 {
            let part = &got[(j as usize) << 20..((j as usize) + 1) << 20];
            assert!(
                part == common::pattern(1 << 20, i * 100 + j),
                "w{i}, MiB {j}, differs"
            );
        }
    }
}

#[test]
fn a_replica_whose_block_fails_its_checksum_is_healed_from_another() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let cluster = Cluster::start(3);
    let a = cluster.mount();
    let path = a.mnt().join("f");
    let data = common::pattern(1 << 20, 7);
    std::fs::write(&path, &data).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let chunk_file = |i: usize| cluster.chunk_file(i, ino, 0);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    // A mount reads from the member it prefers (see
    // `ClusterData::readers_in_order`), which the test does not know:
    // damage block 1 of the chunk on each target in turn, as a torn write
    // or a bad sector would, and read. Every read returns the right
    // bytes; the damage on the member read from is healed, and one not
    // read is undone before the next round.
    let mut healed = Vec::new();
    for i in 0..3 {
        flip_byte(&chunk_file(i), 5000);
        let good = (i + 1) % 3;
        assert_ne!(
            std::fs::read(chunk_file(i)).unwrap(),
            std::fs::read(chunk_file(good)).unwrap()
        );
        for _ in 0..3 {
            let mut buf = vec![0u8; 8192];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert!(buf == data[..8192], "a read returned wrong bytes");
        }
        if std::fs::read(chunk_file(i)).unwrap() == std::fs::read(chunk_file(good)).unwrap() {
            healed.push(i);
        } else {
            flip_byte(&chunk_file(i), 5000);
        }
    }
    // The member read from was damaged in one round, and replaced by a
    // good copy then.
    assert_eq!(healed.len(), 1, "healed {healed:?}:\n{}", cluster.logs());
    assert!(
        cluster.logs().contains("replaced by target"),
        "{}",
        cluster.logs()
    );
    for i in 1..3 {
        assert_eq!(
            std::fs::read(chunk_file(0)).unwrap(),
            std::fs::read(chunk_file(i)).unwrap()
        );
    }
    assert!(std::fs::read(&path).unwrap() == data);
}

#[test]
fn scrubbing_repairs_a_damaged_block_nobody_reads() {
    let cluster = Cluster::start_full(3, &[], &["--scrub-mib-per-sec", "64"]);
    let a = cluster.mount();
    let path = a.mnt().join("f");
    std::fs::write(&path, common::pattern(1 << 20, 9)).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let chunk_file = |i: usize| cluster.chunk_file(i, ino, 0);
    // Damage a block of the second target's copy; nothing reads the file
    // again.
    flip_byte(&chunk_file(1), 600_000);
    // A pass starts every 10 s after the last: within a minute on a
    // loaded machine, that copy is the others' again, and the pass
    // that replaced it has said so (once it ended).
    common::wait_for(
        "the damaged copy replaced by scrubbing",
        Duration::from_secs(90),
        || {
            let logs = cluster.logs();
            if std::fs::read(chunk_file(1)).unwrap() == std::fs::read(chunk_file(0)).unwrap()
                && logs.contains(": 1 repaired")
            {
                Ok(())
            } else {
                Err(logs)
            }
        },
    );
}

#[test]
fn a_killed_mounts_unlinked_open_file_loses_its_chunks() {
    // Short leases, and the reconciler every second.
    let cluster = Cluster::start_with(3, &["--lease-ms", "1500", "--reconcile-secs", "1"]);
    let mut a = cluster.mount_with(&["--lease-ms", "1500"]);
    let path = a.mnt().join("open-and-gone");
    let file = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    (&file).write_all(&common::pattern(2 << 20, 3)).unwrap();
    let layout = layout_name(file.metadata().unwrap().ino());
    std::fs::remove_file(&path).unwrap();
    // Still open: the chunks stay.
    assert!(cluster.chunks(0).iter().any(|(l, _)| *l == layout));
    a.kill();
    drop(file);
    drop(a);
    // The service reaps the dead client (deleting the file), and the
    // reconciler removes its chunks.
    cluster.wait_chunks_gone(
        &layout,
        "the dead mount's file's chunks removed",
        Duration::from_secs(60),
    );
    // The chunks go before the pass logs its count: wait for the line.
    common::wait_for("the reconciler's log line", Duration::from_secs(30), || {
        let log = cluster.meta.log_text();
        if log.contains("collected the chunks of 1 files") {
            Ok(())
        } else {
            Err(cluster.logs())
        }
    });
}

/// [`common::fallocate::CASES`] on cluster data: the same results, sizes,
/// bytes and mtimes as tmpfs, and sound seeks (the chunk size is the
/// metadata service's, 1 MiB, so where they land is not tmpfs's). Then a
/// second mount reads every file back, and every chunk's files are the
/// same on each replica, so a punch or zero applied to one replica only
/// would show.
#[test]
fn fallocate_and_seek_on_cluster_data_agree_with_tmpfs_on_every_replica() {
    let cluster = Cluster::start(3);
    let a = cluster.mount();
    let differ = common::fallocate::differences(a.mnt(), false);
    assert!(
        differ.is_empty(),
        "{}\nmount log:\n{}\n{}",
        differ.join("\n"),
        a.daemon_log(),
        cluster.logs()
    );
    let b = cluster.mount();
    for (i, _) in common::fallocate::CASES.iter().enumerate() {
        let name = format!("case{i}");
        let want = std::fs::read(a.mnt().join(&name)).unwrap();
        let got = std::fs::read(b.mnt().join(&name)).unwrap();
        assert!(got == want, "{name}: a read on another mount differs");
    }
    let chunks = cluster.chunks(0);
    assert!(!chunks.is_empty());
    for i in 1..3 {
        assert_eq!(
            chunks,
            cluster.chunks(i),
            "target {i} holds other chunks than target 0"
        );
    }
    for (layout, index) in &chunks {
        let ino = u64::from_str_radix(layout, 16).unwrap();
        let read = |i: usize, suffix: &str| {
            let data = cluster.chunk_file(i, ino, index.parse().unwrap());
            std::fs::read(format!("{}{suffix}", data.display())).unwrap_or_default()
        };
        for suffix in ["", ".m"] {
            for i in 1..3 {
                assert!(
                    read(0, suffix) == read(i, suffix),
                    "chunk {layout}/{index}{suffix} differs between targets 0 and {i}"
                );
            }
        }
    }
}

/// A punch of 16 TiB over a sparse file on cluster data costs its chunks:
/// done within the deadline, zeros where it was, data and holes by chunk.
#[test]
fn a_punch_over_a_huge_sparse_file_on_cluster_data_is_quick() {
    use rustix::fs::{FallocateFlags, SeekFrom};
    use std::os::unix::fs::FileExt;
    const TIB: u64 = 1 << 40;
    // The metadata service's chunk size.
    const CHUNK: u64 = 1 << 20;
    let cluster = Cluster::start(3);
    let a = cluster.mount();
    let path = a.mnt().join("huge");
    let file = common::create_rw(&path);
    file.write_all_at(&[7u8; 100], 0).unwrap();
    file.write_all_at(b"middle", 8 * TIB).unwrap();
    file.write_all_at(b"tail", 16 * TIB).unwrap();
    let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    let fd = file.try_clone().unwrap();
    let done = common::with_timeout(Duration::from_secs(30), move || {
        rustix::fs::fallocate(&fd, punch, 50, 16 * TIB - 50)
    });
    match done {
        None => panic!("a punch of 16 TiB did not finish within 30 s\n{}", cluster.logs()),
        Some(r) => r.expect("punch"),
    }
    let mut back = [1u8; 100];
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back[..50], &[7u8; 50][..]);
    assert_eq!(&back[50..], &[0u8; 50][..]);
    let mut middle = [1u8; 6];
    file.read_exact_at(&mut middle, 8 * TIB).unwrap();
    assert_eq!(middle, [0u8; 6]);
    assert_eq!(rustix::fs::seek(&file, SeekFrom::Data(CHUNK)).unwrap(), 16 * TIB);
    assert_eq!(rustix::fs::seek(&file, SeekFrom::Hole(0)).unwrap(), CHUNK);
    assert_eq!(file.metadata().unwrap().len(), 16 * TIB + 4);
}

#[test]
fn pjdfstest_passes_on_a_cluster_mount() {
    let cluster = Cluster::start(3);
    let mount = cluster.mount();
    let run = mount.run_pjdfstest();
    eprintln!("{} on the cluster: {}", mount.describe(), run.summary);
    assert!(
        run.status.success(),
        "pjdfstest failed ({}):\n{}\n{}\nmount log:\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr,
        mount.daemon_log(),
        cluster.logs()
    );
}

/// One etcd member on 127.0.0.1, on free ports, for one test; killed on
/// drop.
struct Etcd {
    proc: Proc,
    client: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// `None` (recorded as missing) without an etcd binary.
    fn start() -> Option<Etcd> {
        let Some(etcd) = which("etcd") else {
            common::missing("etcd (scripts/setup.sh --tests installs etcd-server)");
            return None;
        };
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (client, peer) = (free(), free());
        let dir = tempfile::Builder::new().prefix("xfuse-etcd.").tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(etcd)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                format!("--listen-client-urls=http://{client}"),
                format!("--advertise-client-urls=http://{client}"),
                format!("--listen-peer-urls=http://{peer}"),
                format!("--initial-advertise-peer-urls=http://{peer}"),
                format!("--initial-cluster=t=http://{peer}"),
            ])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning etcd");
        let proc = Proc {
            child: Some(child),
            log,
        };
        common::wait_for("etcd to serve", Duration::from_secs(30), || {
            let text = proc.log_text();
            if text.contains("ready to serve client requests") {
                Ok(())
            } else {
                Err(text)
            }
        });
        Some(Etcd {
            proc,
            client: client.to_string(),
            _dir: dir,
        })
    }
}

/// A mount that runs the metadata layer itself on etcd (the namespace a
/// metadata service on the same etcd serves) keeps its file data on the
/// cluster's targets: what it writes, a `tcp://` mount reads, and the
/// other way round; its unlink removes the chunks. (Before, it kept file
/// data in a local chunk store: the other mount saw the size and zeros.)
#[test]
fn an_etcd_mount_keeps_its_file_data_on_the_clusters_targets() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let url = format!("etcd://{}", etcd.client);
    let cluster = Cluster::start_on(Some(&url), 1, &[], &[]);
    let cred = cluster.credential.to_str().unwrap().to_owned();
    let on_etcd = Mount::start_cluster(&["--meta", &url, "--credential", &cred]);
    let on_tcp = cluster.mount();
    let a = common::pattern(3 << 20, 11);
    std::fs::write(on_etcd.mnt().join("a"), &a).unwrap();
    assert!(
        std::fs::read(on_tcp.mnt().join("a")).unwrap() == a,
        "the tcp:// mount read other bytes than the etcd:// mount wrote\n{}\n{}",
        on_etcd.daemon_log(),
        cluster.logs()
    );
    let b = common::pattern(1 << 20, 12);
    std::fs::write(on_tcp.mnt().join("b"), &b).unwrap();
    assert!(std::fs::read(on_etcd.mnt().join("b")).unwrap() == b);
    let ino = std::fs::metadata(on_etcd.mnt().join("a")).unwrap().ino();
    let layout = layout_name(ino);
    assert!(
        cluster.chunks(0).iter().any(|(l, _)| *l == layout),
        "no chunk of a on the target: {:?}",
        cluster.chunks(0)
    );
    assert!(on_etcd.daemon_log().contains("file data: in the storage cluster"));
    std::fs::remove_file(on_etcd.mnt().join("a")).unwrap();
    cluster.wait_chunks_gone(&layout, "a's chunks removed", RECONFIGURE_TIMEOUT);
    drop((on_etcd, on_tcp, cluster));
    drop(etcd.proc);
}

/// A 4 KiB buffer for `O_DIRECT`.
#[repr(align(4096))]
struct Block([u8; 4096]);

/// `pread` of one 4 KiB block with `O_DIRECT` (past the kernel's page
/// cache, so the daemon answers): the bytes it returned.
fn direct_read(file: &std::fs::File, offset: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut block = Block([0; 4096]);
    let n = file.read_at(&mut block.0, offset).expect("O_DIRECT pread");
    block.0[..n].to_vec()
}

fn open_direct(path: &Path, write: bool) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()))
}

/// A read uses the file's record from the open (or the last read) within
/// the attribute timeout instead of asking the metadata service each
/// time. A mount reads its own appends at once; another mount's append
/// shows within that mount's attribute timeout, with the file still open.
#[test]
fn reads_see_their_own_mounts_appends_at_once_and_others_within_the_timeout() {
    let cluster = Cluster::start(1);
    let writer = cluster.mount_with(&["--attr-timeout-ms", "60000"]);
    let reader = cluster.mount_with(&["--attr-timeout-ms", "300"]);
    let (a, b) = (common::pattern(4096, 21), common::pattern(4096, 22));
    std::fs::write(writer.mnt().join("f"), &a).unwrap();
    let w = open_direct(&writer.mnt().join("f"), true);
    let r = open_direct(&reader.mnt().join("f"), false);
    assert_eq!(direct_read(&w, 0), a);
    assert_eq!(direct_read(&r, 0), a);
    // The writer kept the 4 KiB record for a minute; its own append drops it.
    {
        use std::os::unix::fs::FileExt;
        let block = Block(b.clone().try_into().unwrap());
        w.write_at(&block.0, 4096).unwrap();
    }
    assert_eq!(direct_read(&w, 4096), b, "the writer's own append, read at once");
    // The other mount, its file still open, within its 300 ms.
    common::wait_for(
        "the append to show on the other mount",
        Duration::from_secs(10),
        || {
            let got = direct_read(&r, 4096);
            if got == b {
                Ok(())
            } else {
                Err(format!("{} bytes", got.len()))
            }
        },
    );
}

#[test]
fn fsx_passes_on_a_cluster_mount() {
    let fsx = which("fsx");
    let Some(fsx) = fsx else {
        common::missing("fsx (scripts/setup.sh --tests installs it)");
        return;
    };
    let cluster = Cluster::start(3);
    let mount = cluster.mount();
    let artifacts = tempfile::tempdir().unwrap();
    let out = Command::new(fsx)
        .args(["-N", "3000", "-S", "20261203", "-P"])
        .arg(artifacts.path())
        .arg(mount.mnt().join("fsx.file"))
        .output()
        .expect("running fsx");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("All operations completed A-OK"),
        "fsx failed ({}):\n{text}\nmount log:\n{}\n{}",
        out.status,
        mount.daemon_log(),
        cluster.logs()
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
