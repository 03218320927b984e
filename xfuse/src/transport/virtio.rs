//! Transport `virtio`: a vhost-user-fs backend, serving a guest kernel's
//! FUSE requests from virtqueues in guest memory shared with us, the way
//! virtiofsd does.
//!
//! The VMM (QEMU) connects to a Unix socket and hands over the guest's
//! memory map and the virtqueues (vhost-user). Queue 0 is the high-priority
//! queue (FORGET, BATCH_FORGET, INTERRUPT); queues 1.. carry every other
//! request. Each queue has its own thread; with a thread pool, a queue's
//! thread only takes descriptor chains off the ring and the pool runs them.
//!
//! A request is one descriptor chain: device-readable descriptors carrying
//! `fuse_in_header` and the arguments (WRITE data included), then
//! device-writable ones for `fuse_out_header` and the reply. The chain comes
//! from the guest and is untrusted: [`ChainLayout::parse`] checks the order
//! of the descriptors, that every one lies inside guest memory, that the
//! chain ends (no cycles; the queue's own iterator bounds its length) and
//! that it fits our buffers, before a byte is copied. Request bytes are
//! copied once out of guest memory into the worker's buffer, where the
//! dispatcher parses them in place; the reply body is written once into the
//! guest's buffers. File data is not copied by us at all: a WRITE's data
//! stays in the guest's buffers and a READ's goes straight into them
//! ([`Data`], the `guest_io` reader and writer), so a file-backed
//! filesystem moves it with one `pwritev`/`preadv` on guest memory, as
//! virtiofsd does.
//!
//! There is no INIT before the queues run: the guest sends it as its first
//! request, so this transport answers it (with [`super::handshake`], as a
//! mount's INIT is answered) and builds a fresh [`Dispatcher`] for each INIT. A guest that resets its device or a VMM that
//! disconnects ends the connection: the filesystem's `destroy` runs, and the
//! next INIT starts over.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::{InHeader, Opcode, OutHeader, WriteIn, WriteOut};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use zerocopy::{FromBytes, IntoBytes};

use super::handshake::{self, Handshake};
use super::out_header;
use crate::dispatch::{Data, Dispatcher, DispatcherBuilder, Policy, Reply};
use crate::init::{self, InitConfig};
use crate::ratelimit::LogLimit;
use crate::request::{split_contiguous, Args, BadRequest};
use crate::warn_limited;

mod guest_io;

use guest_io::{GuestReader, GuestWriter};

/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();
const IN_HEADER: usize = std::mem::size_of::<InHeader>();
/// Largest request accepted before INIT fixed `max_write` (INIT itself is
/// about a hundred bytes).
const PRE_INIT_REQUEST_LIMIT: usize = 64 << 10;

/// Settings of a virtio-fs backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioConfig {
    /// Request queues offered to the VMM (QEMU's `num-request-queues`), on
    /// top of the high-priority queue.
    pub request_queues: usize,
    /// Largest virtqueue size accepted (QEMU's `queue-size`, 128 by default).
    pub max_queue_size: u16,
    /// Threads that run requests; 0 runs each queue's requests on that
    /// queue's own thread, one at a time.
    pub thread_pool: usize,
    /// What to answer the guest's INIT with. `passthrough` and
    /// `over_io_uring` are ignored: neither exists over virtio.
    pub init: InitConfig,
    /// Reply policies for the dispatcher.
    pub policy: Policy,
    /// Log the request counters (per opcode) when a guest session ends.
    pub report_stats: bool,
    /// Time every request (see [`crate::DispatcherBuilder::time_requests`]).
    pub time_requests: bool,
}

impl Default for VirtioConfig {
    fn default() -> Self {
        VirtioConfig {
            request_queues: 1,
            max_queue_size: 1024,
            thread_pool: 0,
            init: InitConfig::default(),
            policy: Policy::default(),
            report_stats: false,
            time_requests: false,
        }
    }
}

/// Why a descriptor chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-readable descriptor after a device-writable one.
    #[error("a readable descriptor follows a writable one")]
    ReadableAfterWritable,
    /// The chain ended on a descriptor that says another follows: its next
    /// index or indirect table was invalid, or the chain loops.
    #[error("the chain is cut short (bad next index, bad indirect table, or a loop)")]
    Truncated,
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x}+{len} is outside guest memory")]
    OutOfRange {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// The request is larger than the negotiated limit.
    #[error("request of {len} bytes, limit {limit}")]
    TooLong {
        /// Bytes the guest offered.
        len: usize,
        /// Bytes we accept.
        limit: usize,
    },
    /// Shorter than a request header.
    #[error("request of {0} bytes is shorter than its header")]
    TooShort(usize),
}

/// The guest buffers of one request, checked against guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLayout {
    /// The head descriptor's index, returned in the used ring.
    pub head: u16,
    readable: Vec<(GuestAddress, usize)>,
    writable: Vec<(GuestAddress, usize)>,
    read_len: usize,
    write_len: usize,
}

impl ChainLayout {
    /// Walks `chain` and checks it: readable descriptors first, all inside
    /// guest memory, no more than `read_limit` readable bytes, and a chain
    /// that ends where the guest says it ends. Empty descriptors are skipped.
    pub fn parse<M>(mut chain: DescriptorChain<M>, read_limit: usize) -> Result<ChainLayout, ChainError>
    where
        M: std::ops::Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut layout = ChainLayout {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
            read_len: 0,
            write_len: 0,
        };
        let mut more = false;
        while let Some(desc) = chain.next() {
            more = desc.has_next();
            let (addr, len) = (desc.addr(), desc.len());
            if !chain.memory().check_range(addr, len as usize) {
                return Err(ChainError::OutOfRange { addr: addr.0, len });
            }
            if len == 0 {
                continue;
            }
            if desc.is_write_only() {
                layout.writable.push((addr, len as usize));
                layout.write_len += len as usize;
            } else {
                if !layout.writable.is_empty() {
                    return Err(ChainError::ReadableAfterWritable);
                }
                layout.readable.push((addr, len as usize));
                layout.read_len += len as usize;
                if layout.read_len > read_limit {
                    return Err(ChainError::TooLong {
                        len: layout.read_len,
                        limit: read_limit,
                    });
                }
            }
        }
        // The queue's iterator stops early, without an error, on a bad next
        // index, an unreadable descriptor or a loop (it counts down from the
        // queue size): the last descriptor then still says "next".
        if more {
            return Err(ChainError::Truncated);
        }
        if layout.read_len < IN_HEADER {
            return Err(ChainError::TooShort(layout.read_len));
        }
        Ok(layout)
    }

    /// Bytes the guest sends (header, arguments and data).
    pub fn read_len(&self) -> usize {
        self.read_len
    }

    /// Bytes the guest has room for in its reply buffers.
    pub fn write_len(&self) -> usize {
        self.write_len
    }

    /// The guest buffers the request is read from, in order (none empty).
    pub fn readable(&self) -> &[(GuestAddress, usize)] {
        &self.readable
    }

    /// The guest buffers the reply is written to, in order (none empty).
    pub fn writable(&self) -> &[(GuestAddress, usize)] {
        &self.writable
    }

    /// Copies the request out of guest memory into `buf[..read_len]`.
    pub fn read_request<M: GuestMemory>(&self, mem: &M, buf: &mut [u8]) -> io::Result<usize> {
        let mut at = 0;
        for &(addr, len) in &self.readable {
            mem.read_slice(&mut buf[at..at + len], addr)
                .map_err(io::Error::other)?;
            at += len;
        }
        Ok(at)
    }

    /// Writes `parts` one after the other into the guest's reply buffers and
    /// returns the bytes written. Fails, writing nothing, if they do not fit.
    pub fn write_reply<M: GuestMemory>(&self, mem: &M, parts: &[&[u8]]) -> io::Result<u32> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > self.write_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("reply of {total} bytes, guest buffers hold {}", self.write_len),
            ));
        }
        let mut bufs = self.writable.iter().copied();
        let (mut addr, mut room) = (GuestAddress(0), 0usize);
        for part in parts {
            let mut part = *part;
            while !part.is_empty() {
                if room == 0 {
                    // Cannot run out: total <= write_len was checked above.
                    (addr, room) = bufs
                        .next()
                        .ok_or_else(|| io::Error::other("reply buffers ran out"))?;
                }
                let n = room.min(part.len());
                mem.write_slice(&part[..n], addr).map_err(io::Error::other)?;
                part = &part[n..];
                room -= n;
                addr = GuestAddress(addr.0 + n as u64);
            }
        }
        Ok(total as u32)
    }
}

/// Bytes before a WRITE's data: `fuse_in_header` and `fuse_write_in`.
const WRITE_HEADERS: usize = IN_HEADER + std::mem::size_of::<WriteIn>();

/// The header of a WRITE whose data can be left in guest memory, given the
/// request's first bytes (`head`, at most [`WRITE_HEADERS`]) and its length
/// in the chain. Anything else (another opcode, extension headers after the
/// data, a header whose length disagrees with the chain) takes the path
/// that copies the request, which answers or refuses it as before.
fn zero_copy_write(head: &[u8], read_len: usize) -> Option<InHeader> {
    let (header, _) = InHeader::read_from_prefix(head).ok()?;
    let plain = header.opcode == Opcode::Write as u32
        && header.total_extlen == 0
        && header.len as usize == read_len
        && head.len() == WRITE_HEADERS;
    plain.then_some(header)
}

/// Per-worker buffers: the request as copied out of the guest, and the reply body.
#[derive(Debug, Default)]
struct Buffers {
    request: Vec<u8>,
    reply: Vec<u8>,
}

/// Counters of a backend, over all connections.
#[derive(Debug, Default)]
pub struct VirtioCounters {
    /// Descriptor chains completed (used-ring entries written).
    pub chains: AtomicU64,
    /// Chains refused as malformed.
    pub bad_chains: AtomicU64,
    /// INIT requests answered.
    pub inits: AtomicU64,
    /// Connections (VMM sessions) served.
    pub connections: AtomicU64,
}

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// One [`LogLimit`] per kind of message a guest can make us log at will:
/// a guest looping on a bad request logs a few lines per interval, and the
/// count of the others, instead of flooding the host's log.
#[derive(Debug)]
struct GuestLogs {
    /// Descriptor chains refused by [`ChainLayout::parse`].
    bad_chain: LogLimit,
    /// Requests whose bytes could not be read out of guest memory.
    unreadable: LogLimit,
    /// Requests answered with an error before dispatch (bad header).
    malformed: LogLimit,
    /// Requests too broken to answer (no unique to reply to).
    unanswerable: LogLimit,
    /// Requests before INIT.
    before_init: LogLimit,
    /// INITs refused.
    refused_init: LogLimit,
    /// Replies that did not fit the guest's buffers.
    lost_reply: LogLimit,
    /// Used-ring updates and notifications that failed (guest memory or
    /// ring state the guest broke).
    used_ring: LogLimit,
}

impl GuestLogs {
    fn new() -> GuestLogs {
        GuestLogs {
            bad_chain: LogLimit::standard(),
            unreadable: LogLimit::standard(),
            malformed: LogLimit::standard(),
            unanswerable: LogLimit::standard(),
            before_init: LogLimit::standard(),
            refused_init: LogLimit::standard(),
            lost_reply: LogLimit::standard(),
            used_ring: LogLimit::standard(),
        }
    }

    /// Says how many messages of each kind were dropped since the last of
    /// its kind logged (at the end of a connection, when no later message
    /// may carry the count).
    fn report_suppressed(&self) {
        for (kind, limit) in [
            ("refused descriptor chains", &self.bad_chain),
            ("unreadable requests", &self.unreadable),
            ("malformed requests", &self.malformed),
            ("unanswerable requests", &self.unanswerable),
            ("requests before INIT", &self.before_init),
            ("refused INITs", &self.refused_init),
            ("replies that did not reach the guest", &self.lost_reply),
            ("used-ring failures", &self.used_ring),
        ] {
            let n = limit.take_suppressed();
            if n > 0 {
                tracing::warn!(suppressed = n, "{n} more messages about {kind} were not logged");
            }
        }
    }
}

struct Job {
    vring: VringRwLock,
    layout: ChainLayout,
}

struct Shared<F> {
    fs: Arc<F>,
    config: VirtioConfig,
    /// The connection's dispatcher, from INIT until DESTROY or reset.
    conn: RwLock<Option<Arc<Dispatcher<Arc<F>>>>>,
    mem: RwLock<Option<Memory>>,
    event_idx: AtomicBool,
    /// Buffers of the queue threads (inline mode), one per queue.
    buffers: Vec<Mutex<Buffers>>,
    pool: Mutex<Option<mpsc::Sender<Job>>>,
    counters: VirtioCounters,
    logs: GuestLogs,
}

/// The vhost-user-fs backend: cheap to clone (the VMM side of the library
/// wants one per thread), all clones share one state.
pub struct VirtioFsBackend<F> {
    shared: Arc<Shared<F>>,
}

impl<F> Clone for VirtioFsBackend<F> {
    fn clone(&self) -> Self {
        VirtioFsBackend {
            shared: self.shared.clone(),
        }
    }
}

impl<F> std::fmt::Debug for VirtioFsBackend<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioFsBackend")
            .field("config", &self.shared.config)
            .field("counters", &self.shared.counters)
            .finish_non_exhaustive()
    }
}

/// Errors of the virtio transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {reason}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The vhost-user session failed.
    #[error("vhost-user: {0}")]
    Vhost(String),
    /// Bad settings.
    #[error("invalid virtio settings: {0}")]
    Config(String),
}

impl<F: FileSystem + Send + Sync + 'static> VirtioFsBackend<F> {
    /// A backend serving `fs`.
    pub fn new(fs: F, config: VirtioConfig) -> Result<VirtioFsBackend<F>, VirtioError> {
        if config.request_queues == 0 || config.request_queues > 63 {
            return Err(VirtioError::Config(format!(
                "request queues must be 1..=63, not {}",
                config.request_queues
            )));
        }
        if config.max_queue_size == 0 || !config.max_queue_size.is_power_of_two() {
            return Err(VirtioError::Config(format!(
                "queue size must be a power of two, not {}",
                config.max_queue_size
            )));
        }
        let mut config = config;
        config.init.passthrough = false;
        config.init.over_io_uring = false;
        let queues = 1 + config.request_queues;
        let shared = Arc::new(Shared {
            fs: Arc::new(fs),
            conn: RwLock::new(None),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            buffers: (0..queues).map(|_| Mutex::new(Buffers::default())).collect(),
            pool: Mutex::new(None),
            counters: VirtioCounters::default(),
            logs: GuestLogs::new(),
            config,
        });
        Ok(VirtioFsBackend { shared })
    }

    /// Counters over all connections.
    pub fn counters(&self) -> &VirtioCounters {
        &self.shared.counters
    }

    /// The current connection's dispatcher (with its request counters),
    /// if the guest sent INIT. A new connection gets a new one: its
    /// counters start from zero.
    pub fn dispatcher(&self) -> Option<Arc<Dispatcher<Arc<F>>>> {
        self.shared.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Request counters of the current connection, if the guest sent INIT.
    pub fn stats_report(&self) -> Option<String> {
        let conn = self.shared.conn.read().unwrap_or_else(|e| e.into_inner());
        conn.as_ref().map(|d| d.stats().render())
    }

    /// The filesystem served.
    pub fn fs(&self) -> &Arc<F> {
        &self.shared.fs
    }

    /// Serves VMMs connecting to `socket` (created, and replaced if a stale
    /// one is there): one connection at a time, until one ends and
    /// `keep_listening` is false. Returns after the last connection.
    pub fn serve(&self, socket: &Path, keep_listening: bool) -> Result<(), VirtioError> {
        let listener = listen(socket)?;
        tracing::info!(socket = %socket.display(), "waiting for a vhost-user frontend (VMM)");
        self.serve_listener(listener, keep_listening)
    }

    /// Serves VMMs connecting to `listener` (from [`listen`]), as
    /// [`VirtioFsBackend::serve`] does: for a caller that confines itself
    /// between creating the socket and serving it.
    pub fn serve_listener(&self, listener: UnixListener, keep_listening: bool) -> Result<(), VirtioError> {
        let mut listener = Listener::from(listener);
        loop {
            let result = self.serve_one(&mut listener);
            self.end_connection("the frontend disconnected");
            match result {
                Ok(()) => tracing::info!("vhost-user frontend disconnected"),
                Err(e) => tracing::warn!("vhost-user session ended: {e}"),
            }
            if !keep_listening {
                return Ok(());
            }
            tracing::info!("waiting for the next frontend");
        }
    }

    fn serve_one(&self, listener: &mut Listener) -> Result<(), VirtioError> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("xfuse-virtiofs".into(), self.clone(), mem)
            .map_err(|e| VirtioError::Vhost(e.to_string()))?;
        self.start_pool();
        daemon
            .start(listener)
            .map_err(|e| VirtioError::Vhost(e.to_string()))?;
        self.shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!("vhost-user frontend connected");
        let result = daemon.wait();
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        match result {
            Ok(()) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(VirtioError::Vhost(e.to_string())),
        }
    }

    fn start_pool(&self) {
        let n = self.shared.config.thread_pool;
        let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
        if n == 0 || pool.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for id in 0..n {
            let rx = rx.clone();
            let backend = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("xfuse-vfs-{id}"))
                .spawn(move || {
                    let mut bufs = Buffers::default();
                    loop {
                        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        backend.run_job(job, &mut bufs);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start pool thread {id}: {e}; requests run on the queue threads");
                return;
            }
        }
        *pool = Some(tx);
    }

    fn run_job(&self, job: Job, bufs: &mut Buffers) {
        let Some(mem) = self.memory() else { return };
        let used = self.handle(&*mem.memory(), &job.layout, bufs);
        self.complete(&job.vring, job.layout.head, used);
    }

    /// Ends the current connection: the filesystem forgets the guest.
    fn end_connection(&self, why: &str) {
        self.shared.logs.report_suppressed();
        let old = self.shared.conn.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(dispatcher) = old {
            tracing::info!("{why}: ending the FUSE session");
            if self.shared.config.report_stats {
                tracing::info!(
                    "request counters of the session:\n{}",
                    dispatcher.stats().render()
                );
            }
            dispatcher.destroy();
        }
    }

    fn memory(&self) -> Option<Memory> {
        self.shared.mem.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn read_limit(&self) -> usize {
        match &*self.shared.conn.read().unwrap_or_else(|e| e.into_inner()) {
            Some(d) => d.negotiated().request_buffer_bytes(),
            None => PRE_INIT_REQUEST_LIMIT,
        }
    }

    fn complete(&self, vring: &VringRwLock, head: u16, used: u32) {
        if let Err(e) = vring.add_used(head, used) {
            warn_limited!(
                self.shared.logs.used_ring,
                "adding chain {head} to the used ring: {e}"
            );
            return;
        }
        self.shared.counters.chains.fetch_add(1, Ordering::Relaxed);
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    warn_limited!(self.shared.logs.used_ring, "signalling the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => warn_limited!(self.shared.logs.used_ring, "used-ring notification check: {e}"),
        }
    }

    /// Takes every available chain off `vring` (queue `queue`) and runs or
    /// hands out each.
    fn process_queue(&self, queue: usize, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = self.memory() else {
            return Err(io::Error::other("queue kicked before the memory table arrived"));
        };
        let event_idx = self.shared.event_idx.load(Ordering::Relaxed);
        let pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner()).clone();
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let chains: Vec<_> = {
                let mut state = vring.get_mut();
                state
                    .get_queue_mut()
                    .iter(mem.memory())
                    .map_err(io::Error::other)?
                    .collect()
            };
            for chain in chains {
                let head = chain.head_index();
                let limit = self.read_limit();
                let layout = match ChainLayout::parse(chain, limit) {
                    Ok(layout) => layout,
                    Err(e) => {
                        self.shared.counters.bad_chains.fetch_add(1, Ordering::Relaxed);
                        warn_limited!(
                            self.shared.logs.bad_chain,
                            queue,
                            head,
                            "refusing a descriptor chain: {e}"
                        );
                        self.complete(vring, head, 0);
                        continue;
                    }
                };
                match &pool {
                    // FORGETs are cheap and order-sensitive: run them here.
                    Some(tx) if queue != HIPRIO_QUEUE => {
                        let job = Job {
                            vring: vring.clone(),
                            layout,
                        };
                        if let Err(mpsc::SendError(job)) = tx.send(job) {
                            let used = self.run_inline(queue, &mem, &job.layout);
                            self.complete(vring, job.layout.head, used);
                        }
                    }
                    _ => {
                        let used = self.run_inline(queue, &mem, &layout);
                        self.complete(vring, head, used);
                    }
                }
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(())
    }

    fn run_inline(&self, queue: usize, mem: &Memory, layout: &ChainLayout) -> u32 {
        let mut bufs = self.shared.buffers[queue]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.handle(&*mem.memory(), layout, &mut bufs)
    }

    /// Runs one request; returns the bytes written into the guest's buffers.
    fn handle<M: GuestMemory>(&self, mem: &M, layout: &ChainLayout, bufs: &mut Buffers) -> u32 {
        let n = layout.read_len();
        // The headers first: a WRITE's data is left in guest memory, for
        // the filesystem to write from there.
        let head = n.min(WRITE_HEADERS);
        if bufs.request.len() < head {
            bufs.request.resize(head, 0);
        }
        let mut reader = GuestReader::new(mem, layout.readable(), 0);
        if let Err(e) = io::Read::read_exact(&mut reader, &mut bufs.request[..head]) {
            warn_limited!(
                self.shared.logs.unreadable,
                head = layout.head,
                "reading the request from guest memory: {e}"
            );
            return 0;
        }
        if let Some(header) = zero_copy_write(&bufs.request[..head], n) {
            return self.write(mem, layout, header, &mut bufs.request[IN_HEADER..head], reader);
        }
        if bufs.request.len() < n {
            bufs.request.resize(n, 0);
        }
        if let Err(e) = io::Read::read_exact(&mut reader, &mut bufs.request[head..n]) {
            warn_limited!(
                self.shared.logs.unreadable,
                head = layout.head,
                "reading the request from guest memory: {e}"
            );
            return 0;
        }
        let (header, args) = match split_contiguous(&mut bufs.request[..n]) {
            Ok(split) => split,
            Err(BadRequest {
                unique: Some(unique),
                error,
            }) => {
                warn_limited!(self.shared.logs.malformed, "malformed request {unique}: {error}");
                let reply = Reply::malformed(unique, error);
                return self.send(mem, layout, reply.unique, reply.error, &[]);
            }
            Err(BadRequest { unique: None, error }) => {
                warn_limited!(self.shared.logs.unanswerable, "unanswerable request: {error}");
                return 0;
            }
        };
        if header.opcode == Opcode::Init as u32 {
            return self.init(mem, layout, &header, args);
        }
        let dispatcher = self.shared.conn.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dispatcher) = dispatcher else {
            warn_limited!(
                self.shared.logs.before_init,
                opcode = header.opcode,
                "request before INIT: EIO"
            );
            return self.send(mem, layout, header.unique, -libc::EIO, &[]);
        };
        let room = layout
            .write_len()
            .saturating_sub(OUT_HEADER)
            .min(dispatcher.negotiated().max_reply_bytes());
        if header.opcode == Opcode::Read as u32 {
            // The data goes straight into the guest's buffers after the
            // out header; only the header is written here.
            let mut data = GuestWriter::new(mem, layout.writable(), OUT_HEADER, room);
            let reply =
                dispatcher.dispatch_with(&header, Args::contiguous(args), &mut [], Data::Read(&mut data));
            let Some(reply) = reply else { return 0 };
            let body_len = if reply.error == 0 { data.written() } else { 0 };
            let header = out_header(reply.unique, reply.error, body_len);
            return match layout.write_reply(mem, &[header.as_bytes()]) {
                Ok(n) => n + body_len as u32,
                Err(e) => {
                    warn_limited!(
                        self.shared.logs.lost_reply,
                        unique = reply.unique,
                        "reply does not reach the guest: {e}"
                    );
                    0
                }
            };
        }
        if bufs.reply.len() < room {
            bufs.reply.resize(room, 0);
        }
        let reply = dispatcher.dispatch(&header, Args::contiguous(args), &mut bufs.reply[..room]);
        if header.opcode == Opcode::Destroy as u32 {
            self.end_connection("the guest unmounted (DESTROY)");
        }
        let Some(reply) = reply else { return 0 };
        let used = self.send(
            mem,
            layout,
            reply.unique,
            reply.error,
            &bufs.reply[..reply.body_len],
        );
        if used == 0 {
            dispatcher.reply_lost(&reply);
        }
        used
    }

    /// A WRITE whose data stays in guest memory: `args` is its
    /// `fuse_write_in`, `data` the rest of the readable buffers.
    fn write<M: GuestMemory>(
        &self,
        mem: &M,
        layout: &ChainLayout,
        header: InHeader,
        args: &mut [u8],
        mut data: GuestReader<'_, M>,
    ) -> u32 {
        let dispatcher = self.shared.conn.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dispatcher) = dispatcher else {
            warn_limited!(
                self.shared.logs.before_init,
                opcode = header.opcode,
                "request before INIT: EIO"
            );
            return self.send(mem, layout, header.unique, -libc::EIO, &[]);
        };
        let mut body = [0u8; std::mem::size_of::<WriteOut>()];
        let len = data.len();
        let reply = dispatcher.dispatch_with(
            &header,
            Args::contiguous(args),
            &mut body,
            Data::Write {
                reader: &mut data,
                len,
            },
        );
        let Some(reply) = reply else { return 0 };
        self.send(mem, layout, reply.unique, reply.error, &body[..reply.body_len])
    }

    fn init<M: GuestMemory>(&self, mem: &M, layout: &ChainLayout, header: &InHeader, args: &mut [u8]) -> u32 {
        let (reply, next) =
            handshake::answer(header.unique, args, &self.shared.config.init, &*self.shared.fs);
        match next {
            Handshake::Agreed(negotiated) => {
                // A guest that rebooted without a device reset sends INIT again.
                self.end_connection("a new INIT arrived");
                let mut dispatcher = DispatcherBuilder::new(self.shared.fs.clone(), negotiated);
                dispatcher.set_policy(self.shared.config.policy.clone());
                dispatcher.time_requests(self.shared.config.time_requests);
                *self.shared.conn.write().unwrap_or_else(|e| e.into_inner()) =
                    Some(Arc::new(dispatcher.build()));
                self.shared.counters.inits.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    minor = negotiated.minor,
                    max_write = negotiated.max_write,
                    flags = ?init::flag_names(negotiated.flags),
                    "guest FUSE session started"
                );
            }
            Handshake::Retry => {}
            Handshake::Refused(why) => {
                warn_limited!(self.shared.logs.refused_init, "refusing the guest's INIT: {why}")
            }
        }
        self.send(mem, layout, reply.unique, reply.error, reply.body())
    }

    /// Writes a reply; returns the bytes written, 0 if it could not be.
    fn send<M: GuestMemory>(
        &self,
        mem: &M,
        layout: &ChainLayout,
        unique: u64,
        error: i32,
        body: &[u8],
    ) -> u32 {
        let header = out_header(unique, error, body.len());
        match layout.write_reply(mem, &[header.as_bytes(), body]) {
            Ok(n) => n,
            Err(e) if !body.is_empty() => {
                // The body does not fit what the guest offered: answer EIO.
                warn_limited!(
                    self.shared.logs.lost_reply,
                    unique,
                    "reply does not reach the guest: {e}"
                );
                let header = out_header(unique, -libc::EIO, 0);
                layout.write_reply(mem, &[header.as_bytes()]).unwrap_or(0)
            }
            Err(e) => {
                warn_limited!(
                    self.shared.logs.lost_reply,
                    unique,
                    "reply does not reach the guest: {e}"
                );
                0
            }
        }
    }
}

/// Creates the vhost-user socket at `socket` (replacing a stale socket
/// there; any other file is an error) and listens on it.
pub fn listen(socket: &Path) -> Result<UnixListener, VirtioError> {
    let listen_err = |reason: String| VirtioError::Listen {
        path: socket.to_owned(),
        reason,
    };
    if socket.exists() {
        // Only replace a socket: never delete a file someone mistyped.
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::symlink_metadata(socket).map_err(|e| listen_err(e.to_string()))?;
        if !meta.file_type().is_socket() {
            return Err(listen_err("exists and is not a socket".into()));
        }
        std::fs::remove_file(socket).map_err(|e| listen_err(format!("removing the stale socket: {e}")))?;
    }
    UnixListener::bind(socket).map_err(|e| listen_err(e.to_string()))
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserBackend for VirtioFsBackend<F> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1 + self.shared.config.request_queues
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.config.max_queue_size)
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        self.end_connection("the guest reset the device");
    }

    fn set_event_idx(&self, enabled: bool) {
        self.shared.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self.shared.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    /// One thread per queue: queue `i` on thread `i`.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!(thread_index, "cannot create an exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let result = if evset != EventSet::IN {
            Err(io::Error::other(format!("unexpected events {evset:?}")))
        } else {
            // One queue per thread: the event is that queue's kick.
            match vrings.get(usize::from(device_event)) {
                Some(vring) => self.process_queue(thread_id, vring),
                None => Err(io::Error::other(format!("event {device_event} for no queue"))),
            }
        };
        // The library ends the queue's thread on an error: say so.
        result.inspect_err(|e| tracing::error!(queue = thread_id, "{e}; the queue stops serving this VM"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Request;
    use fuse_backend_rs::api::filesystem::{Context, Entry};
    use kmod_shim::abi::{init_flags, InitIn, InitOut, KERNEL_MINOR_VERSION, KERNEL_VERSION};
    use std::ffi::CStr;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use zerocopy::FromBytes;

    const MEM_SIZE: usize = 0x20_0000;
    const DATA: u64 = 0x10_0000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Builds one chain from `descs` (next links filled in) and parses it.
    fn parse(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        limit: usize,
    ) -> Result<ChainLayout, ChainError> {
        let queue = MockSplitQueue::new(mem, 16);
        let chain = queue.build_desc_chain(descs).unwrap();
        ChainLayout::parse(chain, limit)
    }

    #[test]
    fn a_well_formed_chain_is_read_and_written_across_descriptors() {
        let mem = memory();
        let request: Vec<u8> = (0..100u8).collect();
        mem.write_slice(&request[..60], GuestAddress(DATA)).unwrap();
        mem.write_slice(&request[60..], GuestAddress(DATA + 0x1000))
            .unwrap();
        let layout = parse(
            &mem,
            &[
                desc(DATA, 60, false),
                desc(DATA + 0x1000, 40, false),
                desc(DATA + 0x2000, 0, false),
                desc(DATA + 0x3000, 10, true),
                desc(DATA + 0x4000, 30, true),
            ],
            4096,
        )
        .unwrap();
        assert_eq!((layout.read_len(), layout.write_len()), (100, 40));
        let mut buf = vec![0u8; 100];
        assert_eq!(layout.read_request(&mem, &mut buf).unwrap(), 100);
        assert_eq!(buf, request);

        // A reply spread over both writable descriptors, in order.
        let reply: Vec<u8> = (200..235u8).collect();
        assert_eq!(layout.write_reply(&mem, &[&reply[..4], &reply[4..]]).unwrap(), 35);
        let mut first = [0u8; 10];
        let mut second = [0u8; 25];
        mem.read_slice(&mut first, GuestAddress(DATA + 0x3000)).unwrap();
        mem.read_slice(&mut second, GuestAddress(DATA + 0x4000)).unwrap();
        assert_eq!(&first[..], &reply[..10]);
        assert_eq!(&second[..], &reply[10..]);

        // More than the guest offered: refused, nothing written.
        mem.write_slice(&[0u8; 30], GuestAddress(DATA + 0x4000)).unwrap();
        assert!(layout.write_reply(&mem, &[&[7u8; 41]]).is_err());
        mem.read_slice(&mut second, GuestAddress(DATA + 0x4000)).unwrap();
        assert_eq!(second, [0u8; 25]);
    }

    #[test]
    fn malformed_chains_are_refused() {
        let mem = memory();
        // Readable after writable.
        assert_eq!(
            parse(
                &mem,
                &[
                    desc(DATA, 64, false),
                    desc(DATA + 0x1000, 64, true),
                    desc(DATA + 0x2000, 8, false)
                ],
                4096
            ),
            Err(ChainError::ReadableAfterWritable)
        );
        // Outside guest memory, and wrapping the address space.
        assert!(matches!(
            parse(
                &mem,
                &[desc(MEM_SIZE as u64 - 16, 64, false), desc(DATA, 64, true)],
                4096
            ),
            Err(ChainError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(&mem, &[desc(u64::MAX - 8, 64, false)], 4096),
            Err(ChainError::OutOfRange { .. })
        ));
        // Larger than the limit, and shorter than a header.
        assert_eq!(
            parse(
                &mem,
                &[desc(DATA, 4000, false), desc(DATA + 0x1000, 200, false)],
                4096
            ),
            Err(ChainError::TooLong {
                len: 4200,
                limit: 4096
            })
        );
        assert_eq!(
            parse(&mem, &[desc(DATA, 39, false)], 4096),
            Err(ChainError::TooShort(39))
        );
        // Only writable descriptors: no request at all.
        assert_eq!(
            parse(&mem, &[desc(DATA, 64, true)], 4096),
            Err(ChainError::TooShort(0))
        );
    }

    #[test]
    fn looping_and_dangling_chains_are_refused() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let next = VRING_DESC_F_NEXT as u16;
        // 0 -> 1 -> 0 -> ...: the queue's iterator stops after 16 descriptors.
        let looping = [
            RawDescriptor::from(SplitDescriptor::new(DATA, 64, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA + 0x1000, 64, next, 0)),
        ];
        let chain = queue.build_multiple_desc_chains(&looping).unwrap();
        assert_eq!(ChainLayout::parse(chain, 1 << 20), Err(ChainError::Truncated));

        // A next index past the end of the table.
        let queue = MockSplitQueue::new(&mem, 16);
        let dangling = [RawDescriptor::from(SplitDescriptor::new(DATA, 64, next, 99))];
        let chain = queue.build_multiple_desc_chains(&dangling).unwrap();
        assert_eq!(ChainLayout::parse(chain, 1 << 20), Err(ChainError::Truncated));
    }

    #[test]
    fn indirect_tables_are_followed_and_checked() {
        let mem = memory();
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        let indirect = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let table = GuestAddress(DATA + 0x10000);
        let entries = [
            RawDescriptor::from(SplitDescriptor::new(DATA, 64, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA + 0x1000, 16, next | write, 2)),
            RawDescriptor::from(SplitDescriptor::new(DATA + 0x2000, 100, write, 0)),
        ];
        for (i, e) in entries.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(table.0 + 16 * i as u64)).unwrap();
        }
        let queue = MockSplitQueue::new(&mem, 16);
        let head = [RawDescriptor::from(SplitDescriptor::new(
            table.0, 48, indirect, 0,
        ))];
        let chain = queue.build_multiple_desc_chains(&head).unwrap();
        let layout = ChainLayout::parse(chain, 4096).unwrap();
        assert_eq!((layout.read_len(), layout.write_len()), (64, 116));

        // A table whose length is not a whole number of descriptors: the
        // queue's iterator yields nothing, so there is no request to serve.
        let queue = MockSplitQueue::new(&mem, 16);
        let head = [RawDescriptor::from(SplitDescriptor::new(
            table.0, 40, indirect, 0,
        ))];
        let chain = queue.build_multiple_desc_chains(&head).unwrap();
        assert_eq!(ChainLayout::parse(chain, 4096), Err(ChainError::TooShort(0)));

        // An indirect table nested in an indirect table (the spec forbids it):
        // the walk stops inside the table, on a descriptor that says "next".
        let nested = GuestAddress(DATA + 0x20000);
        let inner = [
            RawDescriptor::from(SplitDescriptor::new(DATA, 64, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(table.0, 48, indirect, 0)),
        ];
        for (i, e) in inner.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(nested.0 + 16 * i as u64)).unwrap();
        }
        let queue = MockSplitQueue::new(&mem, 16);
        let head = [RawDescriptor::from(SplitDescriptor::new(
            nested.0, 32, indirect, 0,
        ))];
        let chain = queue.build_multiple_desc_chains(&head).unwrap();
        assert_eq!(ChainLayout::parse(chain, 4096), Err(ChainError::Truncated));
    }

    /// A filesystem that knows one name.
    struct OneName;
    impl FileSystem for OneName {
        type Inode = u64;
        type Handle = u64;
        fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
            if parent == 1 && name.to_bytes() == b"known" {
                let mut attr = Entry::default().attr;
                attr.st_ino = 42;
                attr.st_mode = libc::S_IFREG | 0o644;
                Ok(Entry {
                    inode: 42,
                    generation: 0,
                    attr,
                    attr_flags: 0,
                    attr_timeout: Duration::from_secs(1),
                    entry_timeout: Duration::from_secs(1),
                })
            } else {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            }
        }
    }

    use std::time::Duration;

    struct Guest<F = OneName> {
        mem: GuestMemoryMmap,
        backend: VirtioFsBackend<F>,
        bufs: Buffers,
        next: u64,
    }

    impl Guest {
        fn new() -> Guest {
            Guest::with_fs(OneName)
        }
    }

    impl<F: FileSystem + Send + Sync + 'static> Guest<F> {
        fn with_fs(fs: F) -> Guest<F> {
            Guest {
                mem: memory(),
                backend: VirtioFsBackend::new(fs, VirtioConfig::default()).unwrap(),
                bufs: Buffers::default(),
                next: 1,
            }
        }

        /// Sends `request` as one chain: its bytes cut into readable
        /// descriptors of `read_cuts` bytes (the last takes the rest), then
        /// writable descriptors of `write_lens` bytes, scattered over guest
        /// memory. Returns the reply's header and body.
        fn call_scattered(
            &mut self,
            request: &Request,
            read_cuts: &[usize],
            write_lens: &[u32],
        ) -> Option<(OutHeader, Vec<u8>)> {
            let unique = request.header().unique;
            let bytes = request.to_bytes();
            let mut descs = Vec::new();
            let mut at = 0;
            // Every buffer on its own 64 KiB slot, at an odd offset.
            let mut slot = DATA;
            for (i, &cut) in read_cuts.iter().chain([&usize::MAX]).enumerate() {
                let end = if i == read_cuts.len() {
                    bytes.len()
                } else {
                    (at + cut).min(bytes.len())
                };
                if end > at {
                    self.mem
                        .write_slice(&bytes[at..end], GuestAddress(slot + 8))
                        .unwrap();
                    descs.push(desc(slot + 8, (end - at) as u32, false));
                    slot += 0x1_0000;
                }
                at = end;
            }
            let mut reply_bufs = Vec::new();
            for &len in write_lens {
                self.mem
                    .write_slice(&vec![0xee; len as usize], GuestAddress(slot + 8))
                    .unwrap();
                descs.push(desc(slot + 8, len, true));
                reply_bufs.push((slot + 8, len));
                slot += 0x1_0000;
            }
            let queue = MockSplitQueue::new(&self.mem, 64);
            let chain = queue.build_desc_chain(&descs).unwrap();
            let layout = ChainLayout::parse(chain, 1 << 20).unwrap();
            let used = self.backend.handle(&self.mem, &layout, &mut self.bufs);
            if used == 0 {
                return None;
            }
            let mut out = Vec::new();
            for (addr, len) in reply_bufs {
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                out.extend(b);
            }
            out.truncate(used as usize);
            let (h, body) = OutHeader::read_from_prefix(&out).unwrap();
            assert_eq!(h.unique, unique);
            assert_eq!(h.len, used);
            Some((h, body.to_vec()))
        }

        /// Sends `opcode` with `args` (a correct header unless `len` is
        /// given) and returns the reply's header and body.
        fn call(
            &mut self,
            opcode: u32,
            args: &[u8],
            len: Option<u32>,
            room: u32,
        ) -> Option<(OutHeader, Vec<u8>)> {
            let unique = self.next;
            self.next += 1;
            let mut request = Request::raw(opcode).unique(unique).bytes(args);
            if let Some(len) = len {
                request = request.claim_len(len);
            }
            let request = request.to_bytes();
            self.mem.write_slice(&request, GuestAddress(DATA)).unwrap();
            self.mem
                .write_slice(&vec![0xee; room as usize], GuestAddress(DATA + 0x8000))
                .unwrap();
            let queue = MockSplitQueue::new(&self.mem, 16);
            let chain = queue
                .build_desc_chain(&[
                    desc(DATA, request.len() as u32, false),
                    desc(DATA + 0x8000, room, true),
                ])
                .unwrap();
            let layout = ChainLayout::parse(chain, 1 << 20).unwrap();
            let used = self.backend.handle(&self.mem, &layout, &mut self.bufs);
            if used == 0 {
                return None;
            }
            let mut out = vec![0u8; used as usize];
            self.mem
                .read_slice(&mut out, GuestAddress(DATA + 0x8000))
                .unwrap();
            let (h, body) = OutHeader::read_from_prefix(&out).unwrap();
            assert_eq!(h.unique, unique);
            assert_eq!(h.len, used);
            Some((h, body.to_vec()))
        }

        fn init(&mut self) -> InitOut {
            let init = InitIn {
                major: KERNEL_VERSION,
                minor: 38,
                max_readahead: 1 << 20,
                flags: (init_flags::ASYNC_READ | init_flags::MAX_PAGES | init_flags::INIT_EXT) as u32,
                ..Default::default()
            };
            let (h, body) = self
                .call(Opcode::Init as u32, init.as_bytes(), None, 256)
                .unwrap();
            assert_eq!(h.error, 0);
            InitOut::read_from_prefix(&body).unwrap().0
        }
    }

    #[test]
    fn requests_before_init_get_eio_then_init_starts_a_session() {
        let mut guest = Guest::new();
        let (h, _) = guest.call(Opcode::Lookup as u32, b"known\0", None, 256).unwrap();
        assert_eq!(h.error, -libc::EIO);
        let out = guest.init();
        assert_eq!(
            (out.major, out.minor),
            (KERNEL_VERSION, 38.min(KERNEL_MINOR_VERSION))
        );
        let (h, body) = guest.call(Opcode::Lookup as u32, b"known\0", None, 256).unwrap();
        assert_eq!(h.error, 0);
        let entry = kmod_shim::abi::EntryOut::read_from_prefix(&body).unwrap().0;
        assert_eq!(entry.nodeid, 42);
        let (h, _) = guest
            .call(Opcode::Lookup as u32, b"unknown\0", None, 256)
            .unwrap();
        assert_eq!(h.error, -libc::ENOENT);
        assert_eq!(guest.backend.counters().inits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_requests_are_answered_with_errors() {
        let mut guest = Guest::new();
        guest.init();
        // A header that claims more bytes than the chain carries.
        let (h, _) = guest
            .call(Opcode::Lookup as u32, b"known\0", Some(4000), 256)
            .unwrap();
        assert_eq!(h.error, -libc::EINVAL);
        // An unknown opcode.
        let (h, _) = guest.call(9999, &[], None, 256).unwrap();
        assert_eq!(h.error, -libc::ENOSYS);
        // A name without its terminating NUL.
        let (h, _) = guest.call(Opcode::Lookup as u32, b"known", None, 256).unwrap();
        assert_eq!(h.error, -libc::EINVAL);
        // A reply buffer too small for the entry: the dispatcher's reply
        // overflows and becomes ERANGE, with no lookup reference handed out.
        let (h, body) = guest.call(Opcode::Lookup as u32, b"known\0", None, 24).unwrap();
        assert_eq!((h.error, body.len()), (-libc::ERANGE, 0));
        // No room even for a header: nothing written.
        assert!(guest.call(Opcode::Lookup as u32, b"known\0", None, 8).is_none());
        // FORGET takes no reply.
        assert!(guest
            .call(Opcode::Forget as u32, &1u64.to_ne_bytes(), None, 256)
            .is_none());
    }

    #[test]
    fn destroy_ends_the_session_and_a_new_init_starts_another() {
        let mut guest = Guest::new();
        guest.init();
        let (h, _) = guest.call(Opcode::Destroy as u32, &[], None, 256).unwrap();
        assert_eq!(h.error, 0);
        let (h, _) = guest.call(Opcode::Lookup as u32, b"known\0", None, 256).unwrap();
        assert_eq!(h.error, -libc::EIO, "a destroyed session serves nothing");
        guest.init();
        let (h, _) = guest.call(Opcode::Lookup as u32, b"known\0", None, 256).unwrap();
        assert_eq!(h.error, 0);
        assert_eq!(guest.backend.counters().inits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn garbage_requests_get_one_well_formed_reply_or_none_when_none_is_due() {
        // A fixed-seed generator: random opcodes and arguments, random
        // reply room, after a valid INIT. `call` checks that a reply
        // echoes the request's unique and that its `len` is what was
        // written; the coverage-guided search is in fuzz/ (target
        // `virtio`, and `request` for the dispatcher).
        let mut guest = Guest::new();
        guest.init();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let opcode = (rand() % 60) as u32;
            if opcode == Opcode::Init as u32 || opcode == Opcode::Destroy as u32 {
                continue;
            }
            let n = (rand() % 300) as usize;
            let args: Vec<u8> = (0..n).map(|_| rand() as u8).collect();
            let room = 16 + (rand() % 512) as u32;
            let silent = [
                Opcode::Forget,
                Opcode::BatchForget,
                Opcode::Interrupt,
                Opcode::NotifyReply,
            ]
            .iter()
            .any(|&op| op as u32 == opcode);
            match guest.call(opcode, &args, None, room) {
                None => assert!(silent, "no reply to opcode {opcode}"),
                Some((h, body)) => {
                    assert!(!silent, "a reply to opcode {opcode}, which takes none");
                    assert!(h.error <= 0 && h.error > -4096, "error {}", h.error);
                    assert!(h.error == 0 || body.is_empty(), "an error reply with a body");
                    assert!(h.len <= room, "reply of {} bytes in {room}", h.len);
                }
            }
        }
    }

    /// One file, read and written through the transport's zero-copy
    /// reader and writer (PassthroughFs's way), or through `io::Read` and
    /// `io::Write` with a buffer of its own (MetaFs's way).
    struct OneFile {
        file: Mutex<std::fs::File>,
        buffered: bool,
    }

    impl FileSystem for OneFile {
        type Inode = u64;
        type Handle = u64;

        #[allow(clippy::too_many_arguments)]
        fn read(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            w: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyWriter,
            size: u32,
            offset: u64,
            _: Option<u64>,
            _: u32,
        ) -> io::Result<usize> {
            let mut f = self.file.lock().unwrap();
            if self.buffered {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; size as usize];
                let n = f.read_at(&mut buf, offset)?;
                w.write_all(&buf[..n])?;
                return Ok(n);
            }
            w.write_from(&mut *f, size as usize, offset)
        }

        #[allow(clippy::too_many_arguments)]
        fn write(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            r: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyReader,
            size: u32,
            offset: u64,
            _: Option<u64>,
            _: bool,
            _: u32,
            _: u32,
        ) -> io::Result<usize> {
            let mut f = self.file.lock().unwrap();
            if self.buffered {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; size as usize];
                r.read_exact(&mut buf)?;
                f.write_all_at(&buf, offset)?;
                return Ok(buf.len());
            }
            r.read_to(&mut *f, size as usize, offset)
        }
    }

    fn write_request(unique: u64, offset: u64, data: &[u8]) -> Request {
        let wi = WriteIn {
            fh: 1,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        Request::new(Opcode::Write)
            .unique(unique)
            .nodeid(2)
            .fixed(&wi)
            .bytes(data)
    }

    fn read_request(unique: u64, offset: u64, size: u32) -> Request {
        let ri = kmod_shim::abi::ReadIn {
            fh: 1,
            offset,
            size,
            ..Default::default()
        };
        Request::new(Opcode::Read).unique(unique).nodeid(2).fixed(&ri)
    }

    #[test]
    fn reads_and_writes_move_data_between_the_file_and_scattered_guest_buffers() {
        let data: Vec<u8> = (0..3 * 4096 + 123)
            .map(|i: usize| (i * 31 + i / 4096) as u8)
            .collect();
        for buffered in [false, true] {
            let file = tempfile::tempfile().unwrap();
            let mut guest = Guest::with_fs(OneFile {
                file: Mutex::new(file.try_clone().unwrap()),
                buffered,
            });
            guest.init();
            // As Linux lays a WRITE out: header, fuse_write_in, then the
            // data a page per descriptor; and once all in one descriptor,
            // and cut in odd places (the split is by bytes, not buffers).
            for (k, cuts) in [vec![40, 40, 4096, 4096, 4096], vec![], vec![7, 100, 1, 5000]]
                .into_iter()
                .enumerate()
            {
                let offset = 1000 * k as u64;
                let (h, body) = guest
                    .call_scattered(&write_request(10 + k as u64, offset, &data), &cuts, &[16, 8])
                    .unwrap();
                assert_eq!(h.error, 0, "buffered {buffered}, cuts {cuts:?}");
                let out = WriteOut::read_from_bytes(&body).unwrap();
                assert_eq!(out.size as usize, data.len());
                let mut back = vec![0u8; data.len()];
                use std::os::unix::fs::FileExt;
                file.read_exact_at(&mut back, offset).unwrap();
                assert_eq!(back, data, "buffered {buffered}, cuts {cuts:?}");
            }
            // READ: the header in its own buffer, the data over pages; the
            // file ends before the request does (a short read).
            let end = 2000 + data.len() as u64;
            let (h, body) = guest
                .call_scattered(&read_request(20, end - 5000, 8192), &[], &[16, 4096, 4096, 4096])
                .unwrap();
            assert_eq!(h.error, 0);
            assert_eq!(body.len(), 5000);
            assert_eq!(body[..], data[data.len() - 5000..], "buffered {buffered}");
            // Header and data in one buffer.
            let (h, body) = guest
                .call_scattered(&read_request(21, 2000, 100), &[], &[4096])
                .unwrap();
            assert_eq!((h.error, &body[..]), (0, &data[..100]));
            // More asked than the guest has room for: refused, nothing read.
            let (h, body) = guest
                .call_scattered(&read_request(22, 0, 8192), &[], &[16, 4096])
                .unwrap();
            assert_eq!((h.error, body.len()), (-libc::EINVAL, 0));
            // No file data went through the transport's own buffers.
            let (request, reply) = (guest.bufs.request.len(), guest.bufs.reply.len());
            assert!(
                request < 4096 && reply < 4096,
                "buffers of {request} and {reply} bytes"
            );
        }
    }

    #[test]
    fn a_write_whose_lengths_disagree_is_refused_without_touching_the_file() {
        let file = tempfile::tempfile().unwrap();
        let mut guest = Guest::with_fs(OneFile {
            file: Mutex::new(file.try_clone().unwrap()),
            buffered: false,
        });
        guest.init();
        // fuse_write_in says 100 bytes, the chain carries 50.
        let wi = WriteIn {
            fh: 1,
            size: 100,
            ..Default::default()
        };
        let req = Request::new(Opcode::Write)
            .unique(5)
            .nodeid(2)
            .fixed(&wi)
            .bytes(&[1; 50]);
        let (h, _) = guest.call_scattered(&req, &[80], &[16, 8]).unwrap();
        assert_eq!(h.error, -libc::EINVAL);
        // The header says more bytes than the chain holds.
        let req = write_request(6, 0, &[2; 50]).claim_len(4000);
        let (h, _) = guest.call_scattered(&req, &[80], &[16, 8]).unwrap();
        assert_eq!(h.error, -libc::EINVAL);
        // Headers cut short: the request is shorter than fuse_write_in.
        let req = Request::new(Opcode::Write).unique(7).nodeid(2).bytes(&[0; 20]);
        let (h, _) = guest.call_scattered(&req, &[], &[16, 8]).unwrap();
        assert_eq!(h.error, -libc::EINVAL);
        assert_eq!(file.metadata().unwrap().len(), 0, "nothing was written");
    }
}
