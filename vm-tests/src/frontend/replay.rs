//! The replay: the metadata operations of the VM tests' guest workload
//! (`vm-tests/guest/workload.sh`), sent as a Linux guest's FUSE client would
//! send them, each reply checked against a model of the tree.
//!
//! `depth` workers run at once, each in its own directory
//! `from-guest/wK` (as the guest's worker processes do) and each with one
//! request in flight, so `depth` is the number of requests in flight. Per
//! worker and file `fI`: LOOKUP of the missing name, then CREATE (+ FLUSH
//! unless the open said FOPEN_NOFLUSH, + RELEASE) for even I or MKNOD for
//! odd I; LOOKUP and GETATTR; a READDIRPLUS listing (`ls -l`); RENAME of
//! every fourth file into `sub/` as `rI`; LINK of every fifth of the others
//! as `sub/lI`; UNLINK of every seventh of the others; listings of both
//! directories; FORGETs on the high-priority queue for every inode the
//! guest held (at unlink for inodes that died, at the end for the rest), as
//! the kernel's inode eviction sends them.
//!
//! Each request's latency runs from the moment its chain is published in
//! the available ring to the moment its used-ring entry is seen (after the
//! device's call). A reply that is malformed, answers the wrong request,
//! fails when it should succeed, or disagrees with the model (node ids,
//! modes, link counts, directory contents) ends the replay with an error.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use kmod_shim::abi::{fopen, init_flags, Attr, AttrOut, EntryOut, InitIn, InitOut, Opcode, OpenOut};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::device::{Device, HIPRIO, REQUEST};
use super::fuse::{self, Caller, DirEntry, Reply, Request, KERNEL_O_LARGEFILE, OUT_HEADER_BYTES};
use super::ReplayError;

/// Largest `depth` (workers, requests in flight).
pub const DEPTH_MAX: u32 = 32;
/// The root's node id.
const ROOT: u64 = kmod_shim::abi::ROOT_ID;
/// Guest memory per in-flight request: request bytes, reply bytes, an
/// indirect descriptor table.
const SLOT_BYTES: u64 = 0x4000;
const REQUEST_OFFSET: u64 = 0;
const REQUEST_BYTES_MAX: usize = 0x1000;
const REPLY_OFFSET: u64 = 0x1000;
const REPLY_BYTES_MAX: usize = 0x2000;
const TABLE_OFFSET: u64 = 0x3000;
/// Descriptors a request may use (header, three arguments, out header, two
/// reply arguments) and the stride of a slot's chain in a direct table.
const DESCS_MAX: u16 = 8;
/// Mode and umask of what the workload creates.
const FILE_MODE: u32 = libc::S_IFREG | 0o644;
const DIR_MODE: u32 = libc::S_IFDIR | 0o755;
const UMASK: u32 = 0o022;
const CREATE_FLAGS: u32 = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32 | KERNEL_O_LARGEFILE;
const WRITE_FLAGS: u32 = libc::O_WRONLY as u32 | KERNEL_O_LARGEFILE;
const DIR_FLAGS: u32 = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_DIRECTORY) as u32 | KERNEL_O_LARGEFILE;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Files per worker.
    pub files: u32,
    /// Workers, i.e. requests in flight (1..=[`DEPTH_MAX`]).
    pub depth: u32,
    /// How long to wait for any one reply before calling the backend hung.
    pub reply_timeout_ms: i32,
    /// The backend's process, to read its CPU time around the replay.
    pub backend_pid: Option<u32>,
}

/// What a replay measured.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// The backend's INIT reply.
    pub init: InitOut,
    /// Latencies in nanoseconds per operation label, in completion order.
    pub latencies_ns: BTreeMap<&'static str, Vec<u64>>,
    /// Requests the workers sent (INIT, the shared set-up and DESTROY excluded).
    pub requests: u64,
    /// Wall time of the workers' part.
    pub elapsed: Duration,
    /// The backend's CPU time over the workers' part, in nanoseconds.
    pub backend_cpu_ns: Option<u64>,
}

/// The tree one worker leaves in `from-guest/wK`: names at the top (files
/// and `sub`) and in `sub`.
pub fn expected_tree(files: u32) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut top = BTreeSet::from(["sub".to_string()]);
    let mut sub = BTreeSet::new();
    for i in 0..files {
        if renamed(i) {
            sub.insert(format!("r{i}"));
            continue;
        }
        if linked(i) {
            sub.insert(format!("l{i}"));
        }
        if !unlinked(i) {
            top.insert(format!("f{i}"));
        }
    }
    (top, sub)
}

/// `fI` moves to `sub/rI` (workload.sh: `i % 4 == 0`).
pub fn renamed(i: u32) -> bool {
    i.is_multiple_of(4)
}
/// `fI` gets a hard link `sub/lI`.
pub fn linked(i: u32) -> bool {
    !renamed(i) && i % 5 == 1
}
/// `fI` is unlinked.
pub fn unlinked(i: u32) -> bool {
    !renamed(i) && i % 7 == 3
}

/// A request in flight.
#[derive(Debug)]
struct Pending {
    opcode: Opcode,
    queue: usize,
    head: u16,
    unique: u64,
    room: usize,
    expects_reply: bool,
    started: Instant,
}

/// Puts requests into guest memory and the rings, and takes replies out.
pub(super) struct Engine<'d> {
    dev: &'d mut Device,
    slots_base: u64,
    pending: Vec<Option<Pending>>,
    /// The unique of the next request.
    pub(super) next_unique: u64,
    timeout_ms: i32,
}

impl<'d> Engine<'d> {
    pub(super) fn new(dev: &'d mut Device, slots: usize, timeout_ms: i32) -> Result<Engine<'d>, ReplayError> {
        let slots_base = dev.free_memory_start();
        let end = slots_base + SLOT_BYTES * slots as u64;
        if end > dev.ram().size_bytes() {
            return Err(ReplayError::Setup(format!(
                "{slots} request slots need {end} bytes of guest memory, there are {}",
                dev.ram().size_bytes()
            )));
        }
        let per_slot = if dev.negotiated().indirect { 1 } else { DESCS_MAX };
        if slots * usize::from(per_slot) > usize::from(dev.queue_size()) {
            return Err(ReplayError::Setup(format!(
                "{slots} requests in flight do not fit a queue of {}",
                dev.queue_size()
            )));
        }
        Ok(Engine {
            dev,
            slots_base,
            pending: (0..slots).map(|_| None).collect(),
            next_unique: 1,
            timeout_ms,
        })
    }

    fn slot_addr(&self, slot: usize, offset: u64) -> GuestAddress {
        GuestAddress(self.slots_base + SLOT_BYTES * slot as u64 + offset)
    }

    /// Writes `req` into `slot`'s buffers and offers it on `queue`.
    fn submit(&mut self, slot: usize, queue: usize, req: &Request) -> Result<(), ReplayError> {
        self.submit_as(slot, queue, req, Caller::ROOT)
    }

    /// [`Engine::submit`] of a request made by `caller`.
    fn submit_as(
        &mut self,
        slot: usize,
        queue: usize,
        req: &Request,
        caller: Caller,
    ) -> Result<(), ReplayError> {
        let setup = |what: String| ReplayError::Setup(what);
        let unique = self.next_unique;
        self.next_unique += 1;
        let parts = req.encode_as(unique, caller);
        let total: usize = parts.iter().map(Vec::len).sum();
        if total > REQUEST_BYTES_MAX {
            return Err(setup(format!("{:?} request of {total} bytes", req.opcode)));
        }
        let mem = self.dev.ram().mem();
        let request_at = self.slot_addr(slot, REQUEST_OFFSET);
        let mut descs: Vec<(GuestAddress, u32, u16)> = Vec::with_capacity(usize::from(DESCS_MAX));
        let mut at = request_at.0;
        for part in &parts {
            mem.write_slice(part, GuestAddress(at))
                .map_err(|e| setup(format!("writing a request: {e}")))?;
            descs.push((GuestAddress(at), part.len() as u32, 0));
            at += part.len() as u64;
        }
        if queue == HIPRIO {
            // The guest sends a FORGET as one buffer (struct virtio_fs_forget).
            descs = vec![(request_at, total as u32, 0)];
        }
        let mut room = 0usize;
        if req.expects_reply() {
            let reply_at = self.slot_addr(slot, REPLY_OFFSET);
            // A stale header must not pass for a reply.
            mem.write_slice(&[0xff; OUT_HEADER_BYTES], reply_at)
                .map_err(|e| setup(format!("clearing a reply buffer: {e}")))?;
            let write = VRING_DESC_F_WRITE as u16;
            descs.push((reply_at, OUT_HEADER_BYTES as u32, write));
            room = OUT_HEADER_BYTES;
            for &len in &req.out_bytes {
                descs.push((GuestAddress(reply_at.0 + room as u64), len, write));
                room += len as usize;
            }
            if room > REPLY_BYTES_MAX {
                return Err(setup(format!("{:?} reply room of {room} bytes", req.opcode)));
            }
        }
        if descs.len() > usize::from(DESCS_MAX) {
            return Err(setup(format!(
                "{:?} needs {} descriptors",
                req.opcode,
                descs.len()
            )));
        }
        let slot16 = u16::try_from(slot).map_err(|_| setup(format!("slot {slot}")))?;
        let head = if queue == HIPRIO {
            self.dev.write_chain(self.dev.desc_table(queue), slot16, &descs)?;
            slot16
        } else if self.dev.negotiated().indirect {
            let table = self.slot_addr(slot, TABLE_OFFSET);
            self.dev.write_chain(table, 0, &descs)?;
            let table_len = 16 * descs.len() as u32;
            self.dev.write_chain(
                self.dev.desc_table(queue),
                slot16,
                &[(table, table_len, VRING_DESC_F_INDIRECT as u16)],
            )?;
            slot16
        } else {
            let first = slot16 * DESCS_MAX;
            self.dev.write_chain(self.dev.desc_table(queue), first, &descs)?;
            first
        };
        let started = Instant::now();
        self.pending[slot] = Some(Pending {
            opcode: req.opcode,
            queue,
            head,
            unique,
            room,
            expects_reply: req.expects_reply(),
            started,
        });
        self.dev.submit(queue, head)
    }

    /// Waits for the next used entry and returns its slot, the reply (None
    /// for a request without one), the request's unique and its latency.
    fn complete(&mut self) -> Result<(usize, Option<Reply>, u64, Duration), ReplayError> {
        loop {
            for queue in [HIPRIO, REQUEST] {
                let Some(used) = self.dev.pop_used(queue)? else {
                    continue;
                };
                let seen = Instant::now();
                return self.take(queue, used.id, used.len, seen);
            }
            self.dev.wait(self.timeout_ms)?;
        }
    }

    fn take(
        &mut self,
        queue: usize,
        id: u32,
        len: u32,
        seen: Instant,
    ) -> Result<(usize, Option<Reply>, u64, Duration), ReplayError> {
        let protocol = |reason: String| ReplayError::Protocol(reason);
        let slot = self.pending.iter().position(|p| {
            p.as_ref()
                .is_some_and(|p| p.queue == queue && u32::from(p.head) == id)
        });
        let Some(slot) = slot else {
            return Err(protocol(format!(
                "used entry for chain {id} on queue {queue}, which is not in flight"
            )));
        };
        let Some(p) = self.pending[slot].take() else {
            return Err(protocol(format!("slot {slot} lost its request")));
        };
        let latency = seen.duration_since(p.started);
        if !p.expects_reply {
            if len != 0 {
                return Err(ReplayError::BadReply {
                    op: p.opcode.name(),
                    unique: p.unique,
                    reason: format!("{len} bytes written into a chain with no reply buffer"),
                });
            }
            return Ok((slot, None, p.unique, latency));
        }
        if len == 0 && p.opcode == Opcode::Destroy {
            // virtiofsd returns DESTROY's chain without writing a reply;
            // the guest is unmounting and does not look.
            return Ok((slot, None, p.unique, latency));
        }
        let len = len as usize;
        if len > p.room {
            return Err(protocol(format!(
                "used length {len} for request {}, the guest offered {}",
                p.unique, p.room
            )));
        }
        let mut raw = vec![0u8; len];
        self.dev
            .ram()
            .mem()
            .read_slice(&mut raw, self.slot_addr(slot, REPLY_OFFSET))
            .map_err(|e| protocol(format!("reading a reply: {e}")))?;
        let reply = fuse::parse_reply(&raw, p.unique, p.room).map_err(|reason| ReplayError::BadReply {
            op: p.opcode.name(),
            unique: p.unique,
            reason,
        })?;
        Ok((slot, Some(reply), p.unique, latency))
    }

    /// Sends `req` from `slot` and waits for its answer (nothing else may be
    /// in flight).
    fn call(
        &mut self,
        slot: usize,
        queue: usize,
        req: &Request,
    ) -> Result<(Option<Reply>, u64), ReplayError> {
        self.call_as(slot, queue, req, Caller::ROOT)
    }

    /// [`Engine::call`] of a request made by `caller`.
    pub(super) fn call_as(
        &mut self,
        slot: usize,
        queue: usize,
        req: &Request,
        caller: Caller,
    ) -> Result<(Option<Reply>, u64), ReplayError> {
        self.submit_as(slot, queue, req, caller)?;
        let (done, reply, unique, _) = self.complete()?;
        if done != slot {
            return Err(ReplayError::Protocol(format!(
                "slot {done} answered, {slot} was asked"
            )));
        }
        Ok((reply, unique))
    }
}

/// The INIT a Linux 6.1 guest sends over virtio-fs (no DAX, no security
/// labels: `fuse_send_init` with virtio-fs's `auto_submounts`).
pub fn linux_6_1_init() -> InitIn {
    use init_flags::*;
    let flags = ASYNC_READ
        | POSIX_LOCKS
        | ATOMIC_O_TRUNC
        | EXPORT_SUPPORT
        | BIG_WRITES
        | DONT_MASK
        | SPLICE_WRITE
        | SPLICE_MOVE
        | SPLICE_READ
        | FLOCK_LOCKS
        | HAS_IOCTL_DIR
        | AUTO_INVAL_DATA
        | DO_READDIRPLUS
        | READDIRPLUS_AUTO
        | ASYNC_DIO
        | WRITEBACK_CACHE
        | NO_OPEN_SUPPORT
        | PARALLEL_DIROPS
        | HANDLE_KILLPRIV
        | POSIX_ACL
        | ABORT_ERROR
        | MAX_PAGES
        | CACHE_SYMLINKS
        | NO_OPENDIR_SUPPORT
        | EXPLICIT_INVAL_DATA
        | HANDLE_KILLPRIV_V2
        | SETXATTR_EXT
        | INIT_EXT
        | SUBMOUNTS;
    InitIn {
        major: 7,
        minor: 38,
        max_readahead: 128 << 10,
        flags: flags as u32,
        flags2: (flags >> 32) as u32,
        unused: [0; 11],
    }
}

/// Runs the replay on a connected device: INIT, the workers, FORGETs and
/// DESTROY.
pub fn run(dev: &mut Device, config: &ReplayConfig) -> Result<ReplayReport, ReplayError> {
    if config.depth == 0 || config.depth > DEPTH_MAX {
        return Err(ReplayError::Setup(format!(
            "depth {} is not 1..={DEPTH_MAX}",
            config.depth
        )));
    }
    let workers_n = config.depth as usize;
    // Slot 0 for INIT and the shared set-up, then one per worker.
    let mut engine = Engine::new(dev, 1 + workers_n, config.reply_timeout_ms)?;
    let mut report = ReplayReport::default();

    let (reply, unique) = engine.call(0, REQUEST, &Request::init(&linux_6_1_init()))?;
    let bad =
        |op: &'static str, unique: u64| move |reason: String| ReplayError::BadReply { op, unique, reason };
    let reply = reply.ok_or_else(|| bad("INIT", unique)("no reply".into()))?;
    if reply.error != 0 {
        return Err(bad("INIT", unique)(format!("error {}", reply.error)));
    }
    let init = fuse::init_out(&reply.body).map_err(bad("INIT", unique))?;
    if init.major != 7 || init.minor < 31 || init.minor > 38 {
        return Err(bad("INIT", unique)(format!(
            "protocol {}.{}",
            init.major, init.minor
        )));
    }
    report.init = init;
    let flags = u64::from(init.flags) | (u64::from(init.flags2) << 32);
    let writeback = flags & init_flags::WRITEBACK_CACHE != 0;

    // from-guest, shared by the workers, as the workload's `mkdir -p`.
    let (reply, unique) = engine.call(0, REQUEST, &Request::lookup(ROOT, "from-guest"))?;
    negative_lookup(reply).map_err(bad("LOOKUP", unique))?;
    let (reply, unique) = engine.call(0, REQUEST, &Request::mkdir(ROOT, "from-guest", DIR_MODE, UMASK))?;
    let base = entry(reply, DIR_MODE, None).map_err(bad("MKDIR", unique))?.nodeid;

    let mut workers: Vec<Worker> = (0..config.depth)
        .map(|k| Worker::new(k, config.files, base, writeback))
        .collect();
    let cpu_before = config
        .backend_pid
        .and_then(|pid| crate::procfs::cpu_time_ns(pid).ok());
    let started = Instant::now();
    for (k, worker) in workers.iter_mut().enumerate() {
        if let Some((queue, req)) = worker.next_request()? {
            engine.submit(1 + k, queue, &req)?;
        }
    }
    let mut running = workers.iter().filter(|w| w.current.is_some()).count();
    while running > 0 {
        let (slot, reply, unique, latency) = engine.complete()?;
        let Some(worker) = slot.checked_sub(1).and_then(|k| workers.get_mut(k)) else {
            return Err(ReplayError::Protocol(format!(
                "a reply for slot {slot}, which has no worker"
            )));
        };
        let label = worker.finish(reply, unique)?;
        report
            .latencies_ns
            .entry(label)
            .or_default()
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        report.requests += 1;
        match worker.next_request()? {
            Some((queue, req)) => engine.submit(slot, queue, &req)?,
            None => running -= 1,
        }
    }
    report.elapsed = started.elapsed();
    let cpu_after = config
        .backend_pid
        .and_then(|pid| crate::procfs::cpu_time_ns(pid).ok());
    report.backend_cpu_ns = cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b));
    for w in &workers {
        w.check_final()?;
    }

    // The kernel forgets from-guest at unmount, then says DESTROY.
    let (reply, unique) = engine.call(0, HIPRIO, &Request::forget(base, 1))?;
    if reply.is_some() {
        return Err(bad("FORGET", unique)("a reply to FORGET".into()));
    }
    let (reply, unique) = engine.call(0, REQUEST, &Request::destroy())?;
    match reply {
        None => {}
        Some(Reply { error: 0, body }) if body.is_empty() => {}
        other => return Err(bad("DESTROY", unique)(format!("{other:?}"))),
    }
    Ok(report)
}

/// LOOKUP of a missing name: ENOENT, or a negative entry (node id 0).
fn negative_lookup(reply: Option<Reply>) -> Result<(), String> {
    let reply = reply.ok_or("no reply")?;
    match reply.error {
        e if e == -libc::ENOENT => Ok(()),
        0 => {
            let e: EntryOut = fuse::exact(&reply.body, "entry")?;
            if e.nodeid == 0 {
                Ok(())
            } else {
                Err(format!("a missing name has node id {}", e.nodeid))
            }
        }
        e => Err(format!("error {e}, expected ENOENT")),
    }
}

/// An entry reply for a node of `mode` (and `nlink` links if given).
fn entry(reply: Option<Reply>, mode: u32, nlink: Option<u32>) -> Result<EntryOut, String> {
    let reply = reply.ok_or("no reply")?;
    if reply.error != 0 {
        return Err(format!("error {}", reply.error));
    }
    let e: EntryOut = fuse::exact(&reply.body, "entry")?;
    if e.nodeid == 0 || e.nodeid == ROOT {
        return Err(format!("node id {}", e.nodeid));
    }
    check_attr(&e.attr, mode, nlink)?;
    Ok(e)
}

fn check_attr(attr: &Attr, mode: u32, nlink: Option<u32>) -> Result<(), String> {
    if attr.mode != mode {
        return Err(format!("mode {:o}, expected {mode:o}", attr.mode));
    }
    if mode & libc::S_IFMT == libc::S_IFREG && attr.size != 0 {
        return Err(format!("size {} of an empty file", attr.size));
    }
    if let Some(n) = nlink {
        if attr.nlink != n {
            return Err(format!("{} links, expected {n}", attr.nlink));
        }
    }
    Ok(())
}

fn ok_empty(reply: Option<Reply>) -> Result<(), String> {
    match reply {
        Some(Reply { error: 0, body }) if body.is_empty() => Ok(()),
        Some(Reply { error: 0, body }) => Err(format!("{} bytes of body, expected none", body.len())),
        Some(Reply { error, .. }) => Err(format!("error {error}")),
        None => Err("no reply".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Top,
    Sub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Mkdir(Dir),
    LookupMissing(u32),
    Create(u32),
    Flush(u32, u64),
    Release(u32, u64),
    Mknod(u32),
    Lookup(u32),
    Getattr(u32),
    OpenDir(Dir),
    ReadDirPlus {
        dir: Dir,
        fh: u64,
        offset: u64,
        pages: u32,
    },
    ReleaseDir(Dir, u64),
    Rename(u32),
    Link(u32),
    Unlink(u32),
    Forget(u64, u64),
    ForgetAll,
}

impl Step {
    fn label(&self) -> &'static str {
        match self {
            Step::Mkdir(_) => "MKDIR",
            Step::LookupMissing(_) => "LOOKUP (ENOENT)",
            Step::Create(_) => "CREATE",
            Step::Flush(..) => "FLUSH",
            Step::Release(..) => "RELEASE",
            Step::Mknod(_) => "MKNOD",
            Step::Lookup(_) => "LOOKUP",
            Step::Getattr(_) => "GETATTR",
            Step::OpenDir(_) => "OPENDIR",
            Step::ReadDirPlus { .. } => "READDIRPLUS",
            Step::ReleaseDir(..) => "RELEASEDIR",
            Step::Rename(_) => "RENAME",
            Step::Link(_) => "LINK",
            Step::Unlink(_) => "UNLINK",
            Step::Forget(..) | Step::ForgetAll => "FORGET",
        }
    }
}

/// One node the guest knows: its id and the inode number it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    nodeid: u64,
    ino: u64,
}

/// One guest worker: a plan of steps, and the model of its directory.
#[derive(Debug)]
struct Worker {
    k: u32,
    base: u64,
    writeback: bool,
    plan: VecDeque<Step>,
    current: Option<Step>,
    /// Path under the worker's directory ("", "sub", "f3", "sub/r4") -> node.
    names: HashMap<String, Node>,
    /// Lookup references the guest holds, per node id.
    lookups: HashMap<u64, u64>,
    /// What the directories hold now.
    top: BTreeSet<String>,
    sub: BTreeSet<String>,
    /// Entries of the listing in progress.
    listing: Vec<DirEntry>,
    files: u32,
}

impl Worker {
    fn new(k: u32, files: u32, base: u64, writeback: bool) -> Worker {
        let mut plan = VecDeque::new();
        plan.extend([Step::Mkdir(Dir::Top), Step::Mkdir(Dir::Sub)]);
        for i in 0..files {
            plan.push_back(Step::LookupMissing(i));
            plan.push_back(if i % 2 == 0 {
                Step::Create(i)
            } else {
                Step::Mknod(i)
            });
        }
        for i in 0..files {
            plan.extend([Step::Lookup(i), Step::Getattr(i)]);
        }
        plan.push_back(Step::OpenDir(Dir::Top));
        plan.extend((0..files).filter(|&i| renamed(i)).map(Step::Rename));
        plan.extend((0..files).filter(|&i| linked(i)).map(Step::Link));
        plan.extend((0..files).filter(|&i| unlinked(i)).map(Step::Unlink));
        plan.extend([Step::OpenDir(Dir::Top), Step::OpenDir(Dir::Sub), Step::ForgetAll]);
        Worker {
            k,
            base,
            writeback,
            plan,
            current: None,
            names: HashMap::new(),
            lookups: HashMap::new(),
            top: BTreeSet::new(),
            sub: BTreeSet::new(),
            listing: Vec::new(),
            files,
        }
    }

    fn node(&self, path: &str) -> Result<Node, ReplayError> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| ReplayError::Protocol(format!("worker {}: no node for {path:?}", self.k)))
    }

    fn dir_path(dir: Dir) -> &'static str {
        match dir {
            Dir::Top => "",
            Dir::Sub => "sub",
        }
    }

    fn looked_up(&mut self, nodeid: u64) {
        *self.lookups.entry(nodeid).or_default() += 1;
    }

    /// The next request and its queue, or None when the worker is done.
    fn next_request(&mut self) -> Result<Option<(usize, Request)>, ReplayError> {
        let Some(mut step) = self.plan.pop_front() else {
            self.current = None;
            return Ok(None);
        };
        if step == Step::ForgetAll {
            // Children before their directories, as inode eviction goes.
            let dirs = [self.names.get("sub"), self.names.get("")].map(|n| n.map(|n| n.nodeid));
            let mut forgets: Vec<(u64, u64)> = self.lookups.drain().collect();
            forgets.sort_by_key(|&(id, _)| (dirs.iter().position(|d| *d == Some(id)), id));
            self.plan
                .extend(forgets.into_iter().map(|(id, n)| Step::Forget(id, n)));
            match self.plan.pop_front() {
                Some(s) => step = s,
                None => {
                    self.current = None;
                    return Ok(None);
                }
            }
        }
        let req = match &step {
            Step::Mkdir(Dir::Top) => Request::mkdir(self.base, &format!("w{}", self.k), DIR_MODE, UMASK),
            Step::Mkdir(Dir::Sub) => Request::mkdir(self.node("")?.nodeid, "sub", DIR_MODE, UMASK),
            Step::LookupMissing(i) | Step::Lookup(i) => {
                Request::lookup(self.node("")?.nodeid, &format!("f{i}"))
            }
            Step::Create(i) => Request::create(
                self.node("")?.nodeid,
                &format!("f{i}"),
                CREATE_FLAGS,
                FILE_MODE,
                UMASK,
            ),
            Step::Flush(i, fh) => Request::flush(
                self.node(&format!("f{i}"))?.nodeid,
                *fh,
                0x5eed + u64::from(self.k),
            ),
            Step::Release(i, fh) => Request::release(
                Opcode::Release,
                self.node(&format!("f{i}"))?.nodeid,
                *fh,
                WRITE_FLAGS,
            ),
            Step::Mknod(i) => Request::mknod(self.node("")?.nodeid, &format!("f{i}"), FILE_MODE, UMASK),
            Step::Getattr(i) => Request::getattr(self.node(&format!("f{i}"))?.nodeid),
            Step::OpenDir(d) => Request::opendir(self.node(Self::dir_path(*d))?.nodeid, DIR_FLAGS),
            Step::ReadDirPlus { dir, fh, offset, .. } => {
                Request::readdirplus(self.node(Self::dir_path(*dir))?.nodeid, *fh, *offset, DIR_FLAGS)
            }
            Step::ReleaseDir(d, fh) => Request::release(
                Opcode::Releasedir,
                self.node(Self::dir_path(*d))?.nodeid,
                *fh,
                DIR_FLAGS,
            ),
            Step::Rename(i) => Request::rename(
                self.node("")?.nodeid,
                &format!("f{i}"),
                self.node("sub")?.nodeid,
                &format!("r{i}"),
            ),
            Step::Link(i) => Request::link(
                self.node(&format!("f{i}"))?.nodeid,
                self.node("sub")?.nodeid,
                &format!("l{i}"),
            ),
            Step::Unlink(i) => Request::unlink(self.node("")?.nodeid, &format!("f{i}")),
            Step::Forget(id, n) => Request::forget(*id, *n),
            Step::ForgetAll => return Err(ReplayError::Protocol("ForgetAll expanded twice".into())),
        };
        let queue = if req.opcode == Opcode::Forget {
            HIPRIO
        } else {
            REQUEST
        };
        self.current = Some(step);
        Ok(Some((queue, req)))
    }

    /// Checks the reply to the current step against the model and updates
    /// it; returns the step's label.
    fn finish(&mut self, reply: Option<Reply>, unique: u64) -> Result<&'static str, ReplayError> {
        let Some(step) = self.current.take() else {
            return Err(ReplayError::Protocol(format!(
                "worker {}: a reply with nothing in flight",
                self.k
            )));
        };
        let label = step.label();
        let k = self.k;
        self.apply(step, reply).map_err(|reason| ReplayError::BadReply {
            op: label,
            unique,
            reason: format!("worker {k}: {reason}"),
        })?;
        Ok(label)
    }

    fn apply(&mut self, step: Step, reply: Option<Reply>) -> Result<(), String> {
        match step {
            Step::Mkdir(dir) => {
                let e = entry(reply, DIR_MODE, None)?;
                self.looked_up(e.nodeid);
                let path = Self::dir_path(dir);
                self.names.insert(
                    path.into(),
                    Node {
                        nodeid: e.nodeid,
                        ino: e.attr.ino,
                    },
                );
                if dir == Dir::Sub {
                    self.top.insert("sub".into());
                }
            }
            Step::LookupMissing(_) => negative_lookup(reply)?,
            Step::Create(i) => {
                let reply = reply.ok_or("no reply")?;
                if reply.error != 0 {
                    return Err(format!("error {}", reply.error));
                }
                let (e, open) = reply
                    .body
                    .split_at_checked(size_of::<EntryOut>())
                    .ok_or_else(|| format!("{} bytes, shorter than an entry", reply.body.len()))?;
                let e = entry(
                    Some(Reply {
                        error: 0,
                        body: e.to_vec(),
                    }),
                    FILE_MODE,
                    Some(1),
                )?;
                let open: OpenOut = fuse::exact(open, "open_out")?;
                self.new_file(i, e)?;
                self.plan.push_front(Step::Release(i, open.fh));
                // The kernel flushes on close unless the open said
                // NOFLUSH (ignored under writeback caching).
                if open.open_flags & fopen::NOFLUSH == 0 || self.writeback {
                    self.plan.push_front(Step::Flush(i, open.fh));
                }
            }
            Step::Mknod(i) => {
                let e = entry(reply, FILE_MODE, Some(1))?;
                self.new_file(i, e)?;
            }
            Step::Flush(..) | Step::Release(..) | Step::ReleaseDir(..) => ok_empty(reply)?,
            Step::Lookup(i) => {
                let e = entry(reply, FILE_MODE, Some(1))?;
                let known = self.node(&format!("f{i}")).map_err(|e| e.to_string())?;
                if (e.nodeid, e.attr.ino) != (known.nodeid, known.ino) {
                    return Err(format!(
                        "f{i} is node {} ino {}, was node {} ino {}",
                        e.nodeid, e.attr.ino, known.nodeid, known.ino
                    ));
                }
                self.looked_up(e.nodeid);
            }
            Step::Getattr(i) => {
                let reply = reply.ok_or("no reply")?;
                if reply.error != 0 {
                    return Err(format!("error {}", reply.error));
                }
                let out: AttrOut = fuse::exact(&reply.body, "attr_out")?;
                check_attr(&out.attr, FILE_MODE, Some(1))?;
                let known = self.node(&format!("f{i}")).map_err(|e| e.to_string())?;
                if out.attr.ino != known.ino {
                    return Err(format!("f{i} has ino {}, was {}", out.attr.ino, known.ino));
                }
            }
            Step::OpenDir(dir) => {
                let reply = reply.ok_or("no reply")?;
                if reply.error != 0 {
                    return Err(format!("error {}", reply.error));
                }
                let open: OpenOut = fuse::exact(&reply.body, "open_out")?;
                self.listing.clear();
                self.plan.push_front(Step::ReadDirPlus {
                    dir,
                    fh: open.fh,
                    offset: 0,
                    pages: 0,
                });
            }
            Step::ReadDirPlus { dir, fh, pages, .. } => {
                let reply = reply.ok_or("no reply")?;
                if reply.error != 0 {
                    return Err(format!("error {}", reply.error));
                }
                let entries = fuse::direntplus(&reply.body)?;
                let Some(last) = entries.last() else {
                    self.plan.push_front(Step::ReleaseDir(dir, fh));
                    return self.check_listing(dir);
                };
                // A directory of N names fits in far fewer pages than this.
                if pages > 2 * self.files + 8 {
                    return Err(format!("{pages} pages and the listing does not end"));
                }
                let offset = last.off;
                for e in entries {
                    if e.entry.nodeid != 0 && e.name != "." && e.name != ".." {
                        self.looked_up(e.entry.nodeid);
                    }
                    self.listing.push(e);
                }
                self.plan.push_front(Step::ReadDirPlus {
                    dir,
                    fh,
                    offset,
                    pages: pages + 1,
                });
            }
            Step::Rename(i) => {
                ok_empty(reply)?;
                let node = self.node(&format!("f{i}")).map_err(|e| e.to_string())?;
                self.names.remove(&format!("f{i}"));
                self.names.insert(format!("sub/r{i}"), node);
                self.top.remove(&format!("f{i}"));
                self.sub.insert(format!("r{i}"));
            }
            Step::Link(i) => {
                let e = entry(reply, FILE_MODE, Some(2))?;
                let node = self.node(&format!("f{i}")).map_err(|e| e.to_string())?;
                if e.nodeid != node.nodeid || e.attr.ino != node.ino {
                    return Err(format!(
                        "the link is node {}, its target {}",
                        e.nodeid, node.nodeid
                    ));
                }
                self.looked_up(e.nodeid);
                self.names.insert(format!("sub/l{i}"), node);
                self.sub.insert(format!("l{i}"));
            }
            Step::Unlink(i) => {
                ok_empty(reply)?;
                let node = self
                    .names
                    .remove(&format!("f{i}"))
                    .ok_or_else(|| format!("f{i} was not known"))?;
                self.top.remove(&format!("f{i}"));
                // An inode with no name left dies in the guest: FORGET.
                if !self.names.values().any(|n| n.nodeid == node.nodeid) {
                    if let Some(n) = self.lookups.remove(&node.nodeid) {
                        self.plan.push_front(Step::Forget(node.nodeid, n));
                    }
                }
            }
            Step::Forget(..) => {
                if reply.is_some() {
                    return Err("a reply to FORGET".into());
                }
            }
            Step::ForgetAll => return Err("ForgetAll was sent".into()),
        }
        Ok(())
    }

    fn new_file(&mut self, i: u32, e: EntryOut) -> Result<(), String> {
        if self.names.values().any(|n| n.nodeid == e.nodeid) {
            return Err(format!("new file f{i} got node id {}, already in use", e.nodeid));
        }
        self.looked_up(e.nodeid);
        self.names.insert(
            format!("f{i}"),
            Node {
                nodeid: e.nodeid,
                ino: e.attr.ino,
            },
        );
        self.top.insert(format!("f{i}"));
        Ok(())
    }

    /// Compares the finished listing of `dir` with the model.
    fn check_listing(&mut self, dir: Dir) -> Result<(), String> {
        let expected = match dir {
            Dir::Top => &self.top,
            Dir::Sub => &self.sub,
        };
        let mut seen = BTreeSet::new();
        for e in &self.listing {
            if e.name == "." || e.name == ".." {
                continue;
            }
            if !seen.insert(e.name.clone()) {
                return Err(format!("{} listed twice", e.name));
            }
            let path = match dir {
                Dir::Top => e.name.clone(),
                Dir::Sub => format!("sub/{}", e.name),
            };
            let Some(node) = self.names.get(&path) else {
                return Err(format!("unexpected entry {path}"));
            };
            if e.ino != node.ino || (e.entry.nodeid != 0 && e.entry.nodeid != node.nodeid) {
                return Err(format!(
                    "{path} listed as node {} ino {}, known as node {} ino {}",
                    e.entry.nodeid, e.ino, node.nodeid, node.ino
                ));
            }
        }
        if &seen != expected {
            let missing: Vec<_> = expected.difference(&seen).collect();
            return Err(format!("listing misses {missing:?}"));
        }
        self.listing.clear();
        Ok(())
    }

    /// The model ends where the workload's rules say it must.
    fn check_final(&self) -> Result<(), ReplayError> {
        let (top, sub) = expected_tree(self.files);
        if self.top != top || self.sub != sub || !self.lookups.is_empty() {
            return Err(ReplayError::Protocol(format!(
                "worker {} ended with another tree than the workload's rules give, \
                 or with lookups not forgotten ({} left)",
                self.k,
                self.lookups.len()
            )));
        }
        Ok(())
    }
}

/// Checks what the host sees in `source/from-guest` after a replay of
/// `workers` x `files`: the names the rules give, empty regular files, and
/// hard links sharing their inode. Returns the problems found.
pub fn check_host_tree(source: &std::path::Path, workers: u32, files: u32) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut problems = Vec::new();
    let (top, sub) = expected_tree(files);
    let base = source.join("from-guest");
    let list = |dir: &std::path::Path| -> std::io::Result<BTreeSet<String>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    let expected_workers: BTreeSet<String> = (0..workers).map(|k| format!("w{k}")).collect();
    let found = list(&base)?;
    if found != expected_workers {
        problems.push(format!(
            "from-guest holds {found:?}, expected {expected_workers:?}"
        ));
    }
    for k in 0..workers {
        let dir = base.join(format!("w{k}"));
        let found_top = list(&dir)?;
        if found_top != top {
            problems.push(format!("w{k}: {found_top:?}, expected {top:?}"));
        }
        let found_sub = list(&dir.join("sub"))?;
        if found_sub != sub {
            problems.push(format!("w{k}/sub: {found_sub:?}, expected {sub:?}"));
        }
        for i in 0..files {
            let f = dir.join(format!("f{i}"));
            let path = if renamed(i) {
                dir.join(format!("sub/r{i}"))
            } else if unlinked(i) {
                if linked(i) {
                    dir.join(format!("sub/l{i}"))
                } else {
                    continue;
                }
            } else {
                f.clone()
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                problems.push(format!("{} is missing", path.display()));
                continue;
            };
            let links = if linked(i) && !unlinked(i) { 2 } else { 1 };
            if !meta.is_file() || meta.len() != 0 || meta.mode() & 0o7777 != 0o644 || meta.nlink() != links {
                problems.push(format!(
                    "{}: mode {:o}, {} bytes, {} links (expected an empty 644 file with {links})",
                    path.display(),
                    meta.mode(),
                    meta.len(),
                    meta.nlink()
                ));
            }
            if linked(i) && !unlinked(i) {
                let link = std::fs::symlink_metadata(dir.join(format!("sub/l{i}")))?;
                if link.ino() != meta.ino() {
                    problems.push(format!("w{k}/sub/l{i} is not a hard link of f{i}"));
                }
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_give_the_workload_counts() {
        // vm-tests' expected counts for 300 files: 175 at the top (with
        // sub), 75 renamed + 45 links in sub.
        let (top, sub) = expected_tree(300);
        let renamed_n = (0..300).filter(|&i| renamed(i)).count();
        let linked_n = (0..300).filter(|&i| linked(i)).count();
        let unlinked_n = (0..300).filter(|&i| unlinked(i)).count();
        assert_eq!(sub.len(), renamed_n + linked_n);
        assert_eq!(top.len(), 1 + 300 - renamed_n - unlinked_n);
        assert!(top.contains("sub") && !top.contains("f0") && sub.contains("r0"));
        // f31 is linked and unlinked: only sub/l31 remains.
        assert!(linked(31) && unlinked(31));
        assert!(!top.contains("f31") && sub.contains("l31"));
    }

    #[test]
    fn a_worker_plans_every_step_of_the_workload() {
        let w = Worker::new(0, 8, 2, false);
        let labels: Vec<_> = w.plan.iter().map(Step::label).collect();
        assert_eq!(labels.iter().filter(|l| **l == "LOOKUP (ENOENT)").count(), 8);
        assert_eq!(labels.iter().filter(|l| **l == "CREATE").count(), 4);
        assert_eq!(labels.iter().filter(|l| **l == "MKNOD").count(), 4);
        assert_eq!(labels.iter().filter(|l| **l == "RENAME").count(), 2);
        assert_eq!(labels.last(), Some(&"FORGET"));
    }
}
