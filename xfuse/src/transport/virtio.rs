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
//! guest's buffers.
//!
//! There is no INIT before the queues run: the guest sends it as its first
//! request, so this transport negotiates itself and builds a fresh
//! [`Dispatcher`] for each INIT. A guest that resets its device or a VMM that
//! disconnects ends the connection: the filesystem's `destroy` runs, and the
//! next INIT starts over.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::{InHeader, Opcode, OutHeader};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use zerocopy::IntoBytes;

use crate::dispatch::{Dispatcher, Policy};
use crate::init::{self, InitAnswer, InitConfig};
use crate::request::{split_contiguous, Args, BadRequest};

/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();
const IN_HEADER: usize = std::mem::size_of::<InHeader>();
/// Largest request accepted before INIT fixed `max_write` (INIT itself is
/// about a hundred bytes).
const PRE_INIT_REQUEST_LIMIT: usize = 64 << 10;

/// Settings of a virtio-fs backend.
#[derive(Debug, Clone)]
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
            config,
        });
        Ok(VirtioFsBackend { shared })
    }

    /// Counters over all connections.
    pub fn counters(&self) -> &VirtioCounters {
        &self.shared.counters
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
            std::fs::remove_file(socket)
                .map_err(|e| listen_err(format!("removing the stale socket: {e}")))?;
        }
        let listener = UnixListener::bind(socket).map_err(|e| listen_err(e.to_string()))?;
        let mut listener = Listener::from(listener);
        tracing::info!(socket = %socket.display(), "waiting for a vhost-user frontend (VMM)");
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
            tracing::info!(socket = %socket.display(), "waiting for the next frontend");
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
            tracing::warn!("adding chain {head} to the used ring: {e}");
            return;
        }
        self.shared.counters.chains.fetch_add(1, Ordering::Relaxed);
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!("signalling the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("used-ring notification check: {e}"),
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
                        tracing::warn!(queue, head, "refusing a descriptor chain: {e}");
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
        if bufs.request.len() < n {
            bufs.request.resize(n, 0);
        }
        if let Err(e) = layout.read_request(mem, &mut bufs.request[..n]) {
            tracing::warn!(head = layout.head, "reading the request from guest memory: {e}");
            return 0;
        }
        let (header, args) = match split_contiguous(&mut bufs.request[..n]) {
            Ok(split) => split,
            Err(BadRequest {
                unique: Some(unique),
                error,
            }) => {
                tracing::warn!("malformed request {unique}: {error}");
                return self.send(mem, layout, unique, -error.errno(), &[]);
            }
            Err(BadRequest { unique: None, error }) => {
                tracing::warn!("unanswerable request: {error}");
                return 0;
            }
        };
        if header.opcode == Opcode::Init as u32 {
            return self.init(mem, layout, &header, args);
        }
        let dispatcher = self.shared.conn.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dispatcher) = dispatcher else {
            tracing::warn!(opcode = header.opcode, "request before INIT: EIO");
            return self.send(mem, layout, header.unique, -libc::EIO, &[]);
        };
        let room = layout
            .write_len()
            .saturating_sub(OUT_HEADER)
            .min(dispatcher.negotiated().max_reply_bytes());
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

    fn init<M: GuestMemory>(&self, mem: &M, layout: &ChainLayout, header: &InHeader, args: &mut [u8]) -> u32 {
        let fs = self.shared.fs.clone();
        match init::negotiate(args, &self.shared.config.init, |cap| fs.init(cap)) {
            InitAnswer::Agreed(out, negotiated) => {
                // A guest that rebooted without a device reset sends INIT again.
                self.end_connection("a new INIT arrived");
                let mut dispatcher = Dispatcher::new(self.shared.fs.clone(), negotiated);
                dispatcher.set_policy(self.shared.config.policy.clone());
                *self.shared.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(dispatcher));
                self.shared.counters.inits.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    minor = negotiated.minor,
                    max_write = negotiated.max_write,
                    flags = ?init::flag_names(negotiated.flags),
                    "guest FUSE session started"
                );
                self.send(mem, layout, header.unique, 0, out.as_bytes())
            }
            InitAnswer::RetryWithMajor(out) => self.send(mem, layout, header.unique, 0, out.as_bytes()),
            InitAnswer::Refuse(errno, why) => {
                tracing::error!("refusing the guest's INIT: {why}");
                self.send(mem, layout, header.unique, -errno, &[])
            }
        }
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
        let header = OutHeader {
            len: (OUT_HEADER + body.len()) as u32,
            error,
            unique,
        };
        match layout.write_reply(mem, &[header.as_bytes(), body]) {
            Ok(n) => n,
            Err(e) if !body.is_empty() => {
                // The body does not fit what the guest offered: answer EIO.
                tracing::warn!(unique, "reply does not reach the guest: {e}");
                let header = OutHeader {
                    len: OUT_HEADER as u32,
                    error: -libc::EIO,
                    unique,
                };
                layout.write_reply(mem, &[header.as_bytes()]).unwrap_or(0)
            }
            Err(e) => {
                tracing::warn!(unique, "reply does not reach the guest: {e}");
                0
            }
        }
    }
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
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected events {evset:?} on queue {thread_id}"
            )));
        }
        // One queue per thread: the event is that queue's kick.
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("event {device_event} on thread {thread_id}")))?;
        self.process_queue(thread_id, vring)
    }
}
