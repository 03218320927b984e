//! The serving half of every service: accept, authenticate, read whole
//! frames, run requests (many at once per connection), write replies, all
//! within bounds.
//!
//! Threads of a connection take turns reading. A request read while none
//! other of its connection runs is run by the thread that read it, with
//! no hand-off: the common case of a caller alone costs one wake-up per
//! request, as a thread blocked in `read(2)` would. A request read while
//! others run wakes (or starts) another thread of the connection to read
//! on, so concurrent callers do not wait for each other. Should a request
//! arrive while a lone one runs, a watchdog notices within
//! [`Limits::stall`] and wakes a reader for it: a slow request (an etcd
//! transaction) holds up another by at most that long. The watchdog looks
//! every half of that while requests run, and sleeps when none has run
//! alone for [`WATCHDOG_QUIET_ROUNDS`] looks, until one does.
//!
//! | bound | value | when exceeded |
//! |---|---|---|
//! | handshakes pending | [`Limits::handshakes`] | the oldest pending one is dropped |
//! | handshake time | [`Limits::handshake_timeout`] | the connection is dropped |
//! | connections, total and per peer address | [`Limits::connections`], [`Limits::per_peer`] | refused at once |
//! | requests in flight per connection | [`Limits::in_flight`] | answered `EAGAIN` |
//! | one frame, from its first byte to its last | [`Limits::frame_timeout`] | the connection is dropped |
//! | idle between frames | [`Limits::idle_timeout`] | the connection is closed |
//! | writing one reply | [`Limits::write_timeout`] | the connection is dropped |
//! | frame size | [`super::frame`]; bulk payloads [`Limits::bulk_max`] | the connection is dropped |
//! | bytes of large frames held, all connections together | [`Limits::held_max`] | the connection is not read until bytes are freed |
//! | threads of all connections | [`Limits::workers`] | a connection reads again when one of its requests ends |
//!
//! Each is logged with the peer's address.
//!
//! # Bytes held
//!
//! A frame of more than [`UNCOUNTED_FRAME`] bytes (a write's data, a large
//! message) takes its length from the server's [`Limits::held_max`]
//! before the rest of it is read, and gives it back once its reply is
//! written; a request whose reply will carry bulk (a read, as
//! [`Handler::reply_bulk`] says) takes that much before it runs. When the
//! budget is spent the connection waits unread (TCP pushes back on its
//! peer), and the time spent waiting does not count against the peer's
//! frame deadline. What is left uncounted is bounded by the connection and
//! thread bounds: per connection, one frame of at most [`UNCOUNTED_FRAME`]
//! being read and 16 KiB past it; per running request, a message-sized
//! reply.
//!
//! Frames from storage services (role [`Role::Service`]: a chain's
//! forwards and copies) are counted but never wait: a forward waiting at
//! its successor while that successor's own forwards wait elsewhere could
//! wait around a ring of chains for ever. Their bytes are bounded by what
//! the heads that sent them admitted, each under its own budget.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rdma::pool::Pool;
use super::rdma::{Endpoint, Fabric, QueuePair, RdmaCall, RemoteBuf, DEFAULT_WINDOW};

use super::auth::{self, Role};
use super::codec;
use super::frame::{self, Assembler, Frame};
use super::stream::Stream;

/// The bounds of a server (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections not yet authenticated.
    pub handshakes: usize,
    /// Time to authenticate.
    pub handshake_timeout: Duration,
    /// Authenticated connections in all.
    pub connections: usize,
    /// Authenticated connections from one address.
    pub per_peer: usize,
    /// Requests in flight on one connection.
    pub in_flight: usize,
    /// Time from a frame's first byte to its last.
    pub frame_timeout: Duration,
    /// Time between frames before an idle connection is closed.
    pub idle_timeout: Duration,
    /// Time to write one reply.
    pub write_timeout: Duration,
    /// Threads of all connections together (each connection has at least
    /// one).
    pub workers: usize,
    /// How long a request may wait unread behind a lone one running.
    pub stall: Duration,
    /// Largest bulk payload a request may carry ([`frame::BULK_LEN_MAX`]
    /// at most); 0 for services whose requests carry none, so a peer can
    /// make a connection hold at most one message-sized frame.
    pub bulk_max: usize,
    /// Bytes of large frames (and of the replies [`Handler::reply_bulk`]
    /// announces) held at once by all connections; see the module docs.
    pub held_max: usize,
}

/// Frames up to this many bytes are read without taking from
/// [`Limits::held_max`].
pub const UNCOUNTED_FRAME: usize = 64 << 10;

/// Rounds (of half [`Limits::stall`]) in which no request ran alone after
/// which the watchdog sleeps until one does.
const WATCHDOG_QUIET_ROUNDS: u32 = 100;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshakes: 64,
            handshake_timeout: Duration::from_secs(5),
            connections: 1024,
            per_peer: 256,
            in_flight: super::client::IN_FLIGHT_MAX,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            workers: 256,
            stall: Duration::from_millis(2),
            bulk_max: 0,
            held_max: 256 << 20,
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its role, from its certificate; `None` on a server running without
    /// authentication (`--insecure-no-auth`).
    pub role: Option<Role>,
}

/// A service's requests and how it answers them.
pub trait Handler: Send + Sync + 'static {
    /// Requests.
    type Request: DeserializeOwned + Send + 'static;
    /// Replies.
    type Reply: Serialize;
    /// State of one connection (e.g. the session bound to it).
    type Conn: Send + Sync + 'static;

    /// A new authenticated connection: its state, or why it is refused.
    fn open(&self, peer: &Peer) -> Result<Self::Conn, String>;
    /// Most bulk bytes the reply to `req` will carry: taken from
    /// [`Limits::held_max`] before `req` runs (see the module docs).
    fn reply_bulk(&self, _req: &Self::Request) -> usize {
        0
    }

    /// Answers one request; `bulk` is the payload after the message.
    fn handle(
        &self,
        conn: &Self::Conn,
        peer: &Peer,
        req: Self::Request,
        bulk: Vec<u8>,
    ) -> Result<(Self::Reply, Vec<u8>), i32>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts of what the server has seen, for reports and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections authenticated.
    pub accepted: AtomicU64,
    /// Connections refused or dropped before or at authentication.
    pub refused: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests answered with an errno (the handler's or the server's own).
    pub errors: AtomicU64,
    /// Time from a request read to its reply encoded.
    pub duration: crate::metrics::DurationHistogram,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Times a connection waited for [`Limits::held_max`] bytes.
    pub held_waits: AtomicU64,
    /// Queue pairs connected with peers (see [`super::rdma`]).
    pub rdma_connected: AtomicU64,
    /// Payload bytes pulled from peers by RDMA READ.
    pub rdma_read: AtomicU64,
    /// Reply bytes pushed to peers by RDMA WRITE.
    pub rdma_written: AtomicU64,
}

/// A request's reply: its frame kind, message and bulk; or its errno.
type Answered = Result<(u8, Vec<u8>, Vec<u8>), i32>;

/// A server's RDMA: the device, and the buffers payloads are pulled into
/// and replies pushed from (registered for local access only).
#[derive(Debug)]
struct RdmaServe {
    fabric: Arc<dyn Fabric>,
    pool: Arc<Pool>,
}

/// Bytes held against [`Limits::held_max`] (see the module docs).
#[derive(Debug)]
struct Budget {
    most: usize,
    used: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        *lock(&self.budget.used) -= self.bytes;
        self.budget.freed.notify_all();
    }
}

impl Budget {
    /// Takes `bytes` (the whole budget at most: a frame larger than it
    /// waits until nothing else is held). Waits while they are not there,
    /// unless `wait` is false; `None` if `closed` is set meanwhile.
    fn take(
        self: &Arc<Self>,
        bytes: usize,
        wait: bool,
        closed: &std::sync::atomic::AtomicBool,
    ) -> Option<Held> {
        let bytes = bytes.min(self.most);
        let mut used = lock(&self.used);
        while wait && *used > 0 && *used + bytes > self.most {
            if closed.load(Ordering::SeqCst) {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(500))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += bytes;
        Some(Held {
            budget: self.clone(),
            bytes,
        })
    }

    fn used(&self) -> usize {
        *lock(&self.used)
    }
}

/// A server of `H`'s requests.
pub struct Server<H: Handler> {
    handler: Arc<H>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    pending: Mutex<VecDeque<(u64, TcpStream)>>,
    next_pending: AtomicU64,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    /// Threads of all connections.
    threads: AtomicUsize,
    /// Live connections, for the watchdog.
    live: Mutex<Vec<std::sync::Weak<Connection<H>>>>,
    /// The watchdog sleeps until woken (no request ran for a while):
    /// `parked` says so without a lock, `parked_at` holds it.
    parked: AtomicBool,
    parked_at: Mutex<bool>,
    unpark: std::sync::Condvar,
    /// When the server started (inline runs are timed from it).
    epoch: Instant,
    /// Bytes of large frames and replies held.
    held: Arc<Budget>,
    /// Messages about connections waiting for [`Server::held`].
    held_log: xfuse::ratelimit::LogLimit,
    /// RDMA, once offered ([`Server::offer_rdma`]).
    rdma: std::sync::OnceLock<RdmaServe>,
    /// What happened so far.
    pub stats: ServerStats,
}

impl<H: Handler> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One connection's shared state.
struct Connection<H: Handler> {
    stream: Stream,
    peer: Peer,
    state: H::Conn,
    /// Requests running.
    in_flight: AtomicUsize,
    /// The reading turn, with the bytes read so far.
    reading: Mutex<Reading>,
    /// Threads parked, waiting to be asked to read.
    parked: Mutex<usize>,
    wake: std::sync::Condvar,
    /// Since when (µs after the server's epoch, +1) a request read while
    /// none other ran has been running; 0 when none is.
    inline_since: AtomicU64,
    /// Whether a thread has the reading turn.
    reader_active: std::sync::atomic::AtomicBool,
    /// Set once reading ended: the other threads leave.
    closed: std::sync::atomic::AtomicBool,
    /// The queue pair connected with the peer, once it asked
    /// ([`frame::KIND_RDMA_HELLO`]).
    rdma: std::sync::OnceLock<Box<dyn QueuePair>>,
}

#[derive(Default)]
struct Reading {
    frames: Assembler,
    /// When the first byte of the frame being read arrived.
    frame_started: Option<Instant>,
    /// What the frame being read holds of [`Limits::held_max`].
    held: Option<Held>,
}

impl<H: Handler> Server<H> {
    /// A server of `handler`, authenticating with `tls` (`None`: nobody is
    /// authenticated; only for `--insecure-no-auth`).
    pub fn new(handler: Arc<H>, tls: Option<Arc<rustls::ServerConfig>>, limits: Limits) -> Arc<Server<H>> {
        Arc::new(Server {
            handler,
            tls,
            pending: Mutex::new(VecDeque::new()),
            next_pending: AtomicU64::new(0),
            per_peer: Mutex::new(HashMap::new()),
            threads: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
            parked: AtomicBool::new(false),
            parked_at: Mutex::new(false),
            unpark: std::sync::Condvar::new(),
            epoch: Instant::now(),
            held: Arc::new(Budget {
                most: limits.held_max.max(1),
                used: Mutex::new(0),
                freed: std::sync::Condvar::new(),
            }),
            held_log: xfuse::ratelimit::LogLimit::standard(),
            rdma: std::sync::OnceLock::new(),
            limits,
            stats: ServerStats::default(),
        })
    }

    /// Serves payloads by RDMA on `fabric` to peers that ask, pulling and
    /// pushing them through at most `pool_bytes` of registered buffers.
    /// Once: a later offer is ignored.
    pub fn offer_rdma(&self, fabric: Arc<dyn Fabric>, pool_bytes: usize) {
        let pool = Pool::new(fabric.clone(), pool_bytes.max(self.limits.bulk_max), false);
        let _ = self.rdma.set(RdmaServe { fabric, pool });
    }

    /// Bytes of large frames and replies held now (see the module docs).
    pub fn held_bytes(&self) -> usize {
        self.held.used()
    }

    /// Accepts connections on `listener` until it fails.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let server = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("rpc-watchdog".into())
            .spawn(move || {
                let mut quiet_rounds = 0u32;
                loop {
                    let Some(server) = server.upgrade() else { return };
                    let stall = server.limits.stall;
                    if server.watch() {
                        quiet_rounds = 0;
                    } else {
                        quiet_rounds += 1;
                    }
                    if quiet_rounds >= WATCHDOG_QUIET_ROUNDS {
                        quiet_rounds = 0;
                        server.park_watchdog();
                    }
                    drop(server);
                    std::thread::sleep(stall / 2);
                }
            })?;
        for sock in listener.incoming() {
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    // EMFILE and friends: do not spin.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            self.admit(sock);
        }
        Ok(())
    }

    /// Starts authenticating a new connection, dropping the oldest pending
    /// one if too many are.
    fn admit(self: &Arc<Self>, sock: TcpStream) {
        let peer = match sock.peer_addr() {
            Ok(p) => p,
            Err(_) => return,
        };
        let token = self.next_pending.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = lock(&self.pending);
            while pending.len() >= self.limits.handshakes {
                if let Some((_, old)) = pending.pop_front() {
                    let who = old.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::warn!(
                        "{who}: dropped before authenticating: {} connections were waiting to",
                        self.limits.handshakes
                    );
                    let _ = old.shutdown(std::net::Shutdown::Both);
                }
            }
            match sock.try_clone() {
                Ok(clone) => pending.push_back((token, clone)),
                Err(e) => {
                    tracing::warn!("{peer}: {e}");
                    return;
                }
            }
        }
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rpc-conn".into())
            .spawn(move || server.connection(sock, peer, token));
        if let Err(e) = spawned {
            tracing::warn!("{peer}: cannot start a connection thread: {e}");
            lock(&self.pending).retain(|(t, _)| *t != token);
        }
    }

    fn connection(self: Arc<Self>, sock: TcpStream, addr: SocketAddr, token: u64) {
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let shook = Stream::server(sock, self.tls.clone(), deadline);
        lock(&self.pending).retain(|(t, _)| *t != token);
        let (stream, cert) = match shook {
            Ok(s) => s,
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{addr}: not authenticated: {e}");
                return;
            }
        };
        let role = match (&self.tls, cert) {
            (None, _) => None,
            (Some(_), Some(cert)) => match auth::peer_role(&cert) {
                Some(role) => Some(role),
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("{addr}: refused: its certificate names no role");
                    return;
                }
            },
            (Some(_), None) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{addr}: refused: no client certificate");
                return;
            }
        };
        let peer = Peer { addr, role };
        if !self.count_in(&peer) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.handler.open(&peer) {
            Ok(state) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let conn = Arc::new(Connection::<H> {
                    stream,
                    peer,
                    state,
                    in_flight: AtomicUsize::new(0),
                    reading: Mutex::new(Reading::default()),
                    parked: Mutex::new(0),
                    wake: std::sync::Condvar::new(),
                    inline_since: AtomicU64::new(0),
                    reader_active: std::sync::atomic::AtomicBool::new(false),
                    closed: std::sync::atomic::AtomicBool::new(false),
                    rdma: std::sync::OnceLock::new(),
                });
                {
                    let mut live = lock(&self.live);
                    live.retain(|c| c.strong_count() > 0);
                    live.push(Arc::downgrade(&conn));
                }
                // This thread is the connection's first: it counts, and
                // leaves when the connection ends (the others with it).
                self.threads.fetch_add(1, Ordering::SeqCst);
                self.serve_connection(&conn);
                self.threads.fetch_sub(1, Ordering::SeqCst);
                conn.closed.store(true, Ordering::SeqCst);
                conn.stream.shutdown();
                conn.wake.notify_all();
            }
            Err(why) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{addr}: refused: {why}");
            }
        }
        self.count_out(&peer);
    }

    fn count_in(&self, peer: &Peer) -> bool {
        let mut per_peer = lock(&self.per_peer);
        let total: usize = self.stats.open.load(Ordering::Relaxed);
        let mine = per_peer.get(&peer.addr.ip()).copied().unwrap_or(0);
        if total >= self.limits.connections {
            tracing::warn!(
                "{}: refused: {} connections are open, the most this service takes",
                peer.addr,
                total
            );
            return false;
        }
        if mine >= self.limits.per_peer {
            tracing::warn!(
                "{}: refused: {} connections from {} are open, the most one address may have",
                peer.addr,
                mine,
                peer.addr.ip()
            );
            return false;
        }
        per_peer.insert(peer.addr.ip(), mine + 1);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn count_out(&self, peer: &Peer) {
        let mut per_peer = lock(&self.per_peer);
        if let Some(n) = per_peer.get_mut(&peer.addr.ip()) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&peer.addr.ip());
            }
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One thread of a connection: read a request if nobody else is
    /// reading (else park until asked), run it, reply; until the
    /// connection ends.
    fn serve_connection(self: &Arc<Self>, conn: &Arc<Connection<H>>) {
        loop {
            if conn.closed.load(Ordering::SeqCst) {
                return;
            }
            let ((frame, frame_held), queued) = {
                let mut reading = match conn.reading.try_lock() {
                    Ok(r) => r,
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        self.park(conn);
                        continue;
                    }
                };
                conn.reader_active.store(true, Ordering::SeqCst);
                let read = self.read_request(conn, &mut reading);
                conn.reader_active.store(false, Ordering::SeqCst);
                match read {
                    Ok(Some((frame, held))) => {
                        let queued = reading.frames.has_frame();
                        ((frame, held), queued)
                    }
                    Ok(None) | Err(_) => {
                        conn.closed.store(true, Ordering::SeqCst);
                        conn.stream.shutdown();
                        conn.wake.notify_all();
                        return;
                    }
                }
            };
            let running = conn.in_flight.fetch_add(1, Ordering::SeqCst);
            let lone = running == 0 && !queued;
            if lone {
                let now = self.epoch.elapsed().as_micros() as u64 + 1;
                conn.inline_since.store(now, Ordering::SeqCst);
                self.unpark_watchdog();
            } else {
                // Others run or wait: someone reads on while this runs.
                self.wake_reader(conn);
            }
            let (result, reply_held) = if running >= self.limits.in_flight {
                tracing::warn!(
                    "{}: more than {} requests in flight; answering EAGAIN",
                    conn.peer.addr,
                    self.limits.in_flight
                );
                (Err(libc::EAGAIN), None)
            } else {
                self.run(conn, frame.kind, frame.message, frame.bulk)
            };
            if lone {
                conn.inline_since.store(0, Ordering::SeqCst);
            }
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            let replied = self.reply(conn, frame.id, result);
            drop((frame_held, reply_held));
            if replied.is_err() {
                conn.closed.store(true, Ordering::SeqCst);
                conn.wake.notify_all();
                return;
            }
        }
    }

    /// Waits until asked to read (or a while: then looks again).
    fn park(&self, conn: &Connection<H>) {
        let mut parked = lock(&conn.parked);
        *parked += 1;
        let (mut parked, _) = conn
            .wake
            .wait_timeout(parked, Duration::from_secs(1))
            .unwrap_or_else(|e| e.into_inner());
        *parked -= 1;
    }

    /// Asks a parked thread of `conn` to read, or starts one.
    fn wake_reader(self: &Arc<Self>, conn: &Arc<Connection<H>>) {
        if *lock(&conn.parked) > 0 {
            conn.wake.notify_one();
        } else {
            self.add_thread(conn);
        }
    }

    /// Puts the watchdog to sleep until a request runs alone (it has
    /// nothing to watch until then): an idle service does not wake every
    /// millisecond. A request that starts alone after `parked` is set sees
    /// it and wakes the watchdog; one that started before is seen by the
    /// second look here.
    fn park_watchdog(&self) {
        let mut parked = lock(&self.parked_at);
        *parked = true;
        self.parked.store(true, Ordering::SeqCst);
        let running = lock(&self.live)
            .iter()
            .filter_map(|c| c.upgrade())
            .any(|c| c.inline_since.load(Ordering::SeqCst) != 0);
        if !running {
            // The timeout only bounds what a missed wake-up could cost.
            parked = self
                .unpark
                .wait_timeout_while(parked, Duration::from_secs(60), |p| *p)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *parked = false;
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Wakes a parked watchdog: a request is about to run alone.
    fn unpark_watchdog(&self) {
        if self.parked.load(Ordering::SeqCst) {
            let mut parked = lock(&self.parked_at);
            if *parked {
                *parked = false;
                self.unpark.notify_one();
            }
        }
    }

    /// The watchdog's round: a connection whose lone request has run
    /// longer than the stall bound while nobody reads and bytes wait gets
    /// a reader. Returns whether any request ran alone.
    fn watch(self: &Arc<Self>) -> bool {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        let stall = self.limits.stall.as_micros() as u64;
        let live: Vec<_> = lock(&self.live).iter().filter_map(|c| c.upgrade()).collect();
        let mut busy = false;
        for conn in live {
            let since = conn.inline_since.load(Ordering::SeqCst);
            busy |= since != 0;
            if since == 0 || now.saturating_sub(since) < stall {
                continue;
            }
            // Nobody reading, and a request waiting?
            if !conn.reader_active.load(Ordering::SeqCst) && conn.stream.readable_now() {
                tracing::debug!(
                    "{}: a request waited behind a slow one; reading on",
                    conn.peer.addr
                );
                // Once per stalled request.
                conn.inline_since.store(u64::MAX / 2, Ordering::SeqCst);
                self.wake_reader(&conn);
            }
        }
        busy
    }

    /// Starts another thread for `conn`, if the bound allows; else the
    /// connection reads again when one of its requests ends.
    fn add_thread(self: &Arc<Self>, conn: &Arc<Connection<H>>) {
        if self.threads.fetch_add(1, Ordering::SeqCst) >= self.limits.workers {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let addr = conn.peer.addr;
        let (server, conn) = (self.clone(), conn.clone());
        let spawned = std::thread::Builder::new()
            .name("rpc-conn".into())
            .spawn(move || {
                server.serve_connection(&conn);
                server.threads.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("{addr}: cannot start a thread: {e}");
        }
    }

    /// Reads until a whole request frame is there; `None` when the
    /// connection ends (closed, idle, too slow, or broken framing).
    fn read_request(
        &self,
        conn: &Connection<H>,
        reading: &mut Reading,
    ) -> io::Result<Option<(Frame, Option<Held>)>> {
        loop {
            match reading.frames.take() {
                Ok(Some(frame)) => {
                    let held = reading.held.take();
                    reading.frame_started = (!reading.frames.is_empty()).then(Instant::now);
                    if frame.bulk.len() > self.limits.bulk_max {
                        tracing::warn!(
                            "{}: a request with {} bytes of bulk, more than {}; closing the connection",
                            conn.peer.addr,
                            frame.bulk.len(),
                            self.limits.bulk_max
                        );
                        return Ok(None);
                    }
                    let request = match frame.kind {
                        frame::KIND_REQUEST => true,
                        frame::KIND_RDMA_HELLO | frame::KIND_REQUEST_RDMA => frame.bulk.is_empty(),
                        _ => false,
                    };
                    if !request {
                        tracing::warn!(
                            "{}: sent a frame of kind {} with {} bytes of bulk, not a request; closing the connection",
                            conn.peer.addr,
                            frame.kind,
                            frame.bulk.len()
                        );
                        return Ok(None);
                    }
                    return Ok(Some((frame, held)));
                }
                Ok(None) => {
                    // A frame longer than this service takes is not read.
                    let most = frame::HEADER_LEN + frame::MESSAGE_LEN_MAX + self.limits.bulk_max;
                    if let Ok(Some(len)) = reading.frames.front_len() {
                        if len > most {
                            tracing::warn!(
                                "{}: a frame of {len} bytes, more than {most}; closing the connection",
                                conn.peer.addr
                            );
                            return Ok(None);
                        }
                        if 4 + len > UNCOUNTED_FRAME && reading.held.is_none() {
                            match self.hold(conn, 4 + len) {
                                Some(held) => reading.held = Some(held),
                                None => return Ok(None),
                            }
                            // The wait was the server's, not the peer's.
                            reading.frame_started = Some(Instant::now());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("{}: {e}; closing the connection", conn.peer.addr);
                    return Ok(None);
                }
            }
            if !reading.frames.is_empty() && reading.frame_started.is_none() {
                reading.frame_started = Some(Instant::now());
            }
            let deadline = match reading.frame_started {
                Some(start) => start + self.limits.frame_timeout,
                None => Instant::now() + self.limits.idle_timeout,
            };
            let Reading {
                frames,
                held,
                frame_started,
            } = &mut *reading;
            // Reads on until a frame is whole, but stops after the first
            // bytes of a frame (its deadline is the frame's from then,
            // above), and where a long one's length is known until its
            // bytes are held (above).
            let started = frame_started.is_some();
            let mut feed = |bytes: &[u8]| -> io::Result<bool> {
                frames
                    .feed(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let unheld = held.is_none()
                    && matches!(frames.front_len(), Ok(Some(len)) if 4 + len > UNCOUNTED_FRAME);
                Ok(started && !frames.has_frame() && !unheld)
            };
            match conn.stream.read_to(&mut feed, Some(deadline)) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if reading.frame_started.is_some() {
                        tracing::warn!(
                            "{}: a frame took longer than {:?} to arrive; closing the connection",
                            conn.peer.addr,
                            self.limits.frame_timeout
                        );
                    } else {
                        tracing::info!(
                            "{}: idle for {:?}; closing",
                            conn.peer.addr,
                            self.limits.idle_timeout
                        );
                    }
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!("{}: {e}; closing the connection", conn.peer.addr);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes `bytes` of [`Limits::held_max`] for `conn` (waiting unless
    /// it is a storage service's); `None` if the connection closed
    /// meanwhile.
    fn hold(&self, conn: &Connection<H>, bytes: usize) -> Option<Held> {
        let wait = conn.peer.role != Some(Role::Service);
        let most = self.held.most;
        if wait && self.held.used() + bytes.min(most) > most {
            self.stats.held_waits.fetch_add(1, Ordering::Relaxed);
            // Peers can make this happen at will: rate-limited.
            if let Some(suppressed) = self.held_log.admit() {
                tracing::info!(
                    suppressed,
                    "{}: not read until {bytes} bytes are free: the service holds {} of the {most} it may",
                    conn.peer.addr,
                    self.held.used()
                );
            }
        }
        self.held.take(bytes, wait, &conn.closed)
    }

    /// Runs a request; what it holds of [`Limits::held_max`] for its reply
    /// comes back with the answer, to be dropped once the reply is written.
    fn run(
        &self,
        conn: &Connection<H>,
        kind: u8,
        message: Vec<u8>,
        bulk: Vec<u8>,
    ) -> (Answered, Option<Held>) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut held = None;
        let result = match kind {
            frame::KIND_RDMA_HELLO => self.hello(conn, &message),
            frame::KIND_REQUEST_RDMA => self.answer_rdma(conn, message, &mut held),
            _ => self
                .answer(conn, message, bulk, &mut held)
                .map(|(message, bulk)| (frame::KIND_REPLY, message, bulk)),
        };
        self.stats.duration.observe(started.elapsed());
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        (result, held)
    }

    fn answer(
        &self,
        conn: &Connection<H>,
        message: Vec<u8>,
        bulk: Vec<u8>,
        held: &mut Option<Held>,
    ) -> Result<(Vec<u8>, Vec<u8>), i32> {
        let req = codec::decode::<H::Request>(&message).map_err(|e| {
            tracing::warn!("{}: refused a request: {e}", conn.peer.addr);
            libc::EPROTO
        })?;
        drop(message);
        let reply_bulk = self.handler.reply_bulk(&req).min(self.limits.bulk_max);
        if reply_bulk > UNCOUNTED_FRAME {
            *held = Some(self.hold(conn, reply_bulk).ok_or(libc::ECONNABORTED)?);
        }
        let (reply, bulk) = self.handler.handle(&conn.state, &conn.peer, req, bulk)?;
        let message = codec::encode(&reply);
        if message.len() > frame::MESSAGE_LEN_MAX {
            tracing::error!(
                "{}: a reply of {} bytes does not fit a frame; answering EOVERFLOW",
                conn.peer.addr,
                message.len()
            );
            return Err(libc::EOVERFLOW);
        }
        Ok((message, bulk))
    }

    /// Connects a queue pair with the peer's ([`frame::KIND_RDMA_HELLO`]):
    /// the reply is this end's [`Endpoint`].
    fn hello(&self, conn: &Connection<H>, message: &[u8]) -> Answered {
        let Some(rdma) = self.rdma.get() else {
            return Err(libc::EOPNOTSUPP);
        };
        let peer: Endpoint = codec::decode(message).map_err(|e| {
            tracing::warn!("{}: refused an RDMA hello: {e}", conn.peer.addr);
            libc::EPROTO
        })?;
        if conn.rdma.get().is_some() {
            return Err(libc::EALREADY);
        }
        let qp = rdma
            .fabric
            .queue_pair(DEFAULT_WINDOW)
            .and_then(|qp| qp.connect(&peer).map(|()| qp))
            .map_err(|e| {
                tracing::warn!(
                    "{}: no RDMA queue pair on {}: {e}",
                    conn.peer.addr,
                    rdma.fabric.device()
                );
                libc::EIO
            })?;
        let mine = codec::encode(&qp.endpoint());
        conn.rdma.set(qp).map_err(|_| libc::EALREADY)?;
        self.stats.rdma_connected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "{}: RDMA on {}: queue pair {} connected with the peer's {}",
            conn.peer.addr,
            rdma.fabric.device(),
            conn.rdma.get().map_or(0, |qp| qp.endpoint().qpn),
            peer.qpn
        );
        Ok((frame::KIND_REPLY, mine, Vec::new()))
    }

    /// Runs a [`frame::KIND_REQUEST_RDMA`]: pulls its payload by RDMA
    /// READ, runs it, and pushes the reply's payload by RDMA WRITE when the
    /// peer gave room for it (else it goes in the reply frame). A failed
    /// transfer breaks the queue pair: the connection is dropped, as for a
    /// broken stream.
    fn answer_rdma(&self, conn: &Connection<H>, message: Vec<u8>, held: &mut Option<Held>) -> Answered {
        let (Some(rdma), Some(qp)) = (self.rdma.get(), conn.rdma.get()) else {
            tracing::warn!("{}: an RDMA request before an RDMA hello", conn.peer.addr);
            return Err(libc::EPROTO);
        };
        let Some((call, request)) = RdmaCall::parse(&message) else {
            tracing::warn!("{}: an RDMA request too short for its head", conn.peer.addr);
            return Err(libc::EPROTO);
        };
        let deadline = Instant::now() + self.limits.frame_timeout;
        let broken = |what: &str, e: io::Error| {
            tracing::warn!(
                "{}: RDMA {what} failed: {e}; dropping the connection",
                conn.peer.addr
            );
            conn.closed.store(true, Ordering::SeqCst);
            conn.stream.shutdown();
            conn.wake.notify_all();
            libc::ECONNABORTED
        };
        let mut frame_held = None;
        let bulk = match call.payload {
            None => Vec::new(),
            Some(src) => {
                let len = src.len as usize;
                if len > self.limits.bulk_max {
                    tracing::warn!(
                        "{}: an RDMA request with {len} bytes of payload, more than {}",
                        conn.peer.addr,
                        self.limits.bulk_max
                    );
                    return Err(libc::EMSGSIZE);
                }
                if len > UNCOUNTED_FRAME {
                    frame_held = Some(self.hold(conn, len).ok_or(libc::ECONNABORTED)?);
                }
                let buf = rdma.pool.take(len, deadline).map_err(|e| {
                    tracing::warn!("{}: {e}", conn.peer.addr);
                    libc::EAGAIN
                })?;
                if let Err(e) = qp.read(buf.region(), 0, src, deadline) {
                    // Its read may still land: never reuse the buffer.
                    buf.discard();
                    return Err(broken("READ", e));
                }
                self.stats.rdma_read.fetch_add(len as u64, Ordering::Relaxed);
                buf.to_vec(len)
            }
        };
        let (message, bulk) = self.answer(conn, request.to_vec(), bulk, held)?;
        drop(frame_held);
        match call.reply {
            Some(dst) if !bulk.is_empty() && bulk.len() <= dst.len as usize => {
                let buf = rdma.pool.take(bulk.len(), deadline).map_err(|e| {
                    tracing::warn!("{}: {e}", conn.peer.addr);
                    libc::EAGAIN
                })?;
                buf.fill(&bulk);
                let dst = RemoteBuf {
                    len: bulk.len() as u32,
                    ..dst
                };
                if let Err(e) = qp.write(buf.region(), 0, dst, deadline) {
                    buf.discard();
                    return Err(broken("WRITE", e));
                }
                self.stats
                    .rdma_written
                    .fetch_add(bulk.len() as u64, Ordering::Relaxed);
                let mut out = Vec::with_capacity(4 + message.len());
                out.extend_from_slice(&(bulk.len() as u32).to_le_bytes());
                out.extend_from_slice(&message);
                Ok((frame::KIND_REPLY_RDMA, out, Vec::new()))
            }
            _ => Ok((frame::KIND_REPLY, message, bulk)),
        }
    }

    fn reply(&self, conn: &Connection<H>, id: u64, result: Answered) -> io::Result<()> {
        let errno_bytes;
        let (kind, message, bulk) = match &result {
            Ok((kind, message, bulk)) => (*kind, &message[..], &bulk[..]),
            Err(errno) => {
                errno_bytes = errno.to_le_bytes();
                (frame::KIND_ERROR, &errno_bytes[..], &[][..])
            }
        };
        let head = frame::header(id, kind, message.len(), bulk.len())?;
        conn.stream
            .write_parts(
                &[&head, message, bulk],
                Instant::now() + self.limits.write_timeout,
            )
            .inspect_err(|e| {
                tracing::warn!(
                    "{}: writing a reply: {e}; dropping the connection",
                    conn.peer.addr
                );
                conn.stream.shutdown();
            })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::rpc::auth::Credential;
    use crate::rpc::client::{CallError, Conn};

    /// Answers a number with itself; 0 blocks until released.
    #[derive(Default)]
    struct Echo {
        release: Mutex<bool>,
        released: std::sync::Condvar,
        blocked: AtomicUsize,
        /// What [`Handler::reply_bulk`] says of every request.
        reply_bulk: AtomicUsize,
    }

    impl Echo {
        fn release(&self) {
            *lock(&self.release) = true;
            self.released.notify_all();
        }
    }

    impl Handler for Echo {
        type Request = u64;
        type Reply = u64;
        type Conn = ();
        fn open(&self, _peer: &Peer) -> Result<(), String> {
            Ok(())
        }
        fn reply_bulk(&self, _req: &u64) -> usize {
            self.reply_bulk.load(Ordering::SeqCst)
        }
        fn handle(&self, _: &(), _: &Peer, req: u64, bulk: Vec<u8>) -> Result<(u64, Vec<u8>), i32> {
            if req == 0 {
                self.blocked.fetch_add(1, Ordering::SeqCst);
                let mut released = lock(&self.release);
                while !*released {
                    released = self.released.wait(released).unwrap_or_else(|e| e.into_inner());
                }
            }
            Ok((req, bulk))
        }
    }

    fn start(limits: Limits, tls: Option<&Credential>) -> (Arc<Server<Echo>>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The echo's requests carry a few bytes of bulk.
        let limits = Limits {
            bulk_max: limits.bulk_max.max(1024),
            ..limits
        };
        let server = Server::new(
            Arc::new(Echo::default()),
            tls.map(|c| c.server_config().unwrap()),
            limits,
        );
        let s = server.clone();
        std::thread::spawn(move || s.serve(listener));
        (server, addr)
    }

    fn connect(addr: SocketAddr, tls: Option<&Credential>) -> Conn {
        let config = tls.map(|c| c.client_config(Role::Mount).unwrap());
        Conn::connect(&addr, config, Instant::now() + Duration::from_secs(10)).unwrap()
    }

    fn echo(conn: &Conn, n: u64) -> Result<u64, CallError> {
        conn.call(&codec::encode(&n), b"bulk", Duration::from_secs(10))
            .map(|(m, bulk)| {
                assert_eq!(bulk, b"bulk");
                codec::decode(&m).unwrap()
            })
    }

    /// Waits until `sock` is closed by the server (EOF or reset).
    fn closed(sock: &mut TcpStream, within: Duration) -> bool {
        sock.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 64];
        loop {
            match sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    #[test]
    fn many_calls_share_one_tls_connection() {
        let cred = Credential::generate().unwrap();
        let (server, addr) = start(Limits::default(), Some(&cred));
        let conn = Arc::new(connect(addr, Some(&cred)));
        let threads: Vec<_> = (1..=8u64)
            .map(|t| {
                let conn = conn.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let n = t * 1000 + i;
                        assert_eq!(echo(&conn, n).unwrap(), n);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(server.stats.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(server.stats.requests.load(Ordering::SeqCst), 1600);
    }

    #[test]
    fn large_frames_cross_the_record_layer_both_ways_intact() {
        let cred = Credential::generate().unwrap();
        let (_server, addr) = start(
            Limits {
                bulk_max: 4 << 20,
                ..Limits::default()
            },
            Some(&cred),
        );
        let conn = connect(addr, Some(&cred));
        for len in [1, 16 * 1024 - 1, 16 * 1024, 64 * 1024 + 3, 3 << 20] {
            let bulk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let (m, back) = conn
                .call(&codec::encode(&7u64), &bulk, Duration::from_secs(10))
                .unwrap();
            assert_eq!(codec::decode::<u64>(&m).unwrap(), 7);
            assert!(back == bulk, "{len} bytes came back altered");
        }
    }

    #[test]
    fn a_peer_that_does_not_name_the_record_layer_is_refused() {
        let cred = Credential::generate().unwrap();
        let (server, addr) = start(Limits::default(), Some(&cred));
        let base = cred.client_config(Role::Mount).unwrap();
        for alpn in [vec![], vec![b"http/1.1".to_vec()]] {
            let mut config = (*base).clone();
            config.alpn_protocols = alpn.clone();
            let r = Conn::connect(
                &addr,
                Some(Arc::new(config)),
                Instant::now() + Duration::from_secs(10),
            );
            assert!(r.is_err(), "ALPN {alpn:?} was served");
        }
        assert_eq!(server.stats.requests.load(Ordering::SeqCst), 0);
        // The same client naming it is served.
        assert_eq!(echo(&connect(addr, Some(&cred)), 5).unwrap(), 5);
    }

    #[test]
    fn a_frame_that_arrives_too_slowly_closes_only_its_connection() {
        let limits = Limits {
            frame_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (_server, addr) = start(limits, None);
        let good = connect(addr, None);
        let mut slow = TcpStream::connect(addr).unwrap();
        // A good header of a 100-byte request, then one byte of its
        // message now and then: never a whole frame.
        slow.write_all(&frame::header(1, frame::KIND_REQUEST, 100 - frame::HEADER_LEN, 0).unwrap())
            .unwrap();
        let started = Instant::now();
        let mut dropped = false;
        for _ in 0..20 {
            if slow.write_all(&[1]).is_err() || closed(&mut slow, Duration::from_millis(100)) {
                dropped = true;
                break;
            }
            assert_eq!(echo(&good, 7).unwrap(), 7);
        }
        assert!(
            dropped,
            "a frame trickling for {:?} was waited for",
            started.elapsed()
        );
        assert_eq!(echo(&good, 8).unwrap(), 8);
    }

    #[test]
    fn requests_past_the_in_flight_bound_are_answered_eagain() {
        let limits = Limits {
            in_flight: 2,
            ..Limits::default()
        };
        let (server, addr) = start(limits, None);
        let conn = Arc::new(connect(addr, None));
        // Two that block hold both places; the third is refused at once.
        let blocked: Vec<_> = (0..2)
            .map(|_| {
                let conn = conn.clone();
                std::thread::spawn(move || echo(&conn, 0))
            })
            .collect();
        // Both running (the second read past the first, which runs where it
        // was read, by the watchdog's reader).
        let both = crate::rpc::client::tests_support::wait_until(Duration::from_secs(30), || {
            server.handler.blocked.load(Ordering::SeqCst) == 2
        });
        assert!(both, "the second request never ran beside the first");
        match echo(&conn, 5) {
            Err(CallError::Remote(libc::EAGAIN)) => {}
            other => panic!("a third request beside two: {other:?}"),
        }
        server.handler.release();
        for b in blocked {
            assert_eq!(b.join().unwrap().unwrap(), 0);
        }
        assert_eq!(echo(&conn, 5).unwrap(), 5);
    }

    /// An idle server's watchdog sleeps; a request that then runs alone
    /// wakes it, so one sent behind it on the same connection is still
    /// read and answered while the first runs.
    #[test]
    fn a_sleeping_watchdog_wakes_for_a_request_running_alone() {
        let (server, addr) = start(Limits::default(), None);
        let conn = Arc::new(connect(addr, None));
        assert_eq!(echo(&conn, 1).unwrap(), 1);
        let asleep = crate::rpc::client::tests_support::wait_until(Duration::from_secs(30), || {
            server.parked.load(Ordering::SeqCst)
        });
        assert!(asleep, "an idle server's watchdog never slept");
        let slow = {
            let conn = conn.clone();
            std::thread::spawn(move || echo(&conn, 0))
        };
        let running = crate::rpc::client::tests_support::wait_until(Duration::from_secs(30), || {
            server.handler.blocked.load(Ordering::SeqCst) == 1
        });
        assert!(running);
        assert_eq!(echo(&conn, 7).unwrap(), 7, "answered beside the slow one");
        assert_eq!(
            server.handler.blocked.load(Ordering::SeqCst),
            1,
            "which still runs"
        );
        server.handler.release();
        assert_eq!(slow.join().unwrap().unwrap(), 0);
    }

    #[test]
    fn connections_past_the_per_address_bound_are_refused() {
        let limits = Limits {
            per_peer: 2,
            ..Limits::default()
        };
        let (server, addr) = start(limits, None);
        let a = connect(addr, None);
        let b = connect(addr, None);
        assert_eq!(echo(&a, 1).unwrap(), 1);
        assert_eq!(echo(&b, 2).unwrap(), 2);
        let mut third = TcpStream::connect(addr).unwrap();
        assert!(
            closed(&mut third, Duration::from_secs(10)),
            "a third connection was kept"
        );
        drop(a);
        // Its place is free again once the server sees it closed.
        let again = crate::rpc::client::tests_support::wait_until(Duration::from_secs(10), || {
            let c = connect(addr, None);
            echo(&c, 3).is_ok()
        });
        assert!(again);
        assert!(server.stats.refused.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn pending_handshakes_are_bounded_and_the_oldest_go_first() {
        let cred = Credential::generate().unwrap();
        let limits = Limits {
            handshakes: 4,
            handshake_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let (_server, addr) = start(limits, Some(&cred));
        let mut idle: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(addr).unwrap()).collect();
        // A real client still gets in, past all of them.
        let conn = connect(addr, Some(&cred));
        assert_eq!(echo(&conn, 9).unwrap(), 9);
        // The oldest idle ones were dropped.
        assert!(closed(&mut idle[0], Duration::from_secs(10)));
    }

    #[test]
    fn bulk_past_the_services_bound_closes_the_connection() {
        let (_server, addr) = start(Limits::default(), None);
        let conn = connect(addr, None);
        assert_eq!(echo(&conn, 1).unwrap(), 1);
        // The echo takes 1 KiB of bulk (see start); 2 KiB is refused
        // without being answered, and the connection ends.
        let big = conn.call(&codec::encode(&2u64), &[0; 2048], Duration::from_secs(10));
        assert!(matches!(big, Err(CallError::Lost(_))), "{big:?}");
        assert!(conn.is_dead());
    }

    /// Calls echo 0 (which blocks until released) with `bulk` bytes on
    /// `n` connections of their own, each on a thread.
    fn blocked_calls(addr: SocketAddr, n: usize, bulk: usize) -> Vec<std::thread::JoinHandle<u64>> {
        (0..n)
            .map(|_| {
                std::thread::spawn(move || {
                    let conn = connect(addr, None);
                    let (m, back) = conn
                        .call(&codec::encode(&0u64), &vec![7u8; bulk], Duration::from_secs(120))
                        .unwrap();
                    assert_eq!(back.len(), bulk);
                    codec::decode(&m).unwrap()
                })
            })
            .collect()
    }

    /// Waits until `running` requests block in the handler and at least
    /// `waiting` connections waited for bytes; then checks no more run.
    fn only_some_run(server: &Server<Echo>, running: usize, waiting: u64) {
        let settled = crate::rpc::client::tests_support::wait_until(Duration::from_secs(60), || {
            server.handler.blocked.load(Ordering::SeqCst) >= running
                && server.stats.held_waits.load(Ordering::SeqCst) >= waiting
        });
        assert!(
            settled,
            "{} running, {} waits",
            server.handler.blocked.load(Ordering::SeqCst),
            server.stats.held_waits.load(Ordering::SeqCst)
        );
        assert_eq!(server.handler.blocked.load(Ordering::SeqCst), running);
        assert!(
            server.held_bytes() <= server.limits.held_max,
            "{}",
            server.held_bytes()
        );
    }

    /// Waits until every request's bytes are back: a request gives them
    /// back just after writing its reply, so its caller may see the reply
    /// first.
    fn all_given_back(server: &Server<Echo>) {
        let back = crate::rpc::client::tests_support::wait_until(Duration::from_secs(30), || {
            server.held_bytes() == 0
        });
        assert!(back, "{} bytes still held", server.held_bytes());
    }

    #[test]
    fn large_frames_past_the_held_bound_wait_unread_until_bytes_are_freed() {
        let limits = Limits {
            bulk_max: 512 << 10,
            held_max: 1 << 20,
            ..Limits::default()
        };
        let (server, addr) = start(limits, None);
        // Three frames of 300 KiB fit in 1 MiB, the fourth does not: three
        // run (and block), three wait unread.
        let calls = blocked_calls(addr, 6, 300 << 10);
        only_some_run(&server, 3, 3);
        server.handler.release();
        for c in calls {
            assert_eq!(c.join().unwrap(), 0);
        }
        all_given_back(&server);
        // Small frames never count.
        let conn = connect(addr, None);
        assert_eq!(echo(&conn, 4).unwrap(), 4);
        assert_eq!(server.held_bytes(), 0);
    }

    #[test]
    fn announced_reply_bytes_are_held_before_the_request_runs() {
        let limits = Limits {
            bulk_max: 512 << 10,
            held_max: 1 << 20,
            ..Limits::default()
        };
        let (server, addr) = start(limits, None);
        server.handler.reply_bulk.store(400 << 10, Ordering::SeqCst);
        // Small requests, each announcing a 400 KiB reply: two run.
        let calls = blocked_calls(addr, 4, 16);
        only_some_run(&server, 2, 2);
        server.handler.release();
        for c in calls {
            assert_eq!(c.join().unwrap(), 0);
        }
        all_given_back(&server);
    }

    #[test]
    fn a_peer_that_never_finishes_the_handshake_is_dropped() {
        let cred = Credential::generate().unwrap();
        let limits = Limits {
            handshake_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (server, addr) = start(limits, Some(&cred));
        let mut idle = TcpStream::connect(addr).unwrap();
        assert!(closed(&mut idle, Duration::from_secs(10)));
        // The failed handshake drops the socket, then counts the refusal:
        // the close can be seen first.
        let counted = crate::rpc::client::tests_support::wait_until(Duration::from_secs(10), || {
            server.stats.refused.load(Ordering::SeqCst) >= 1
        });
        assert!(counted, "the refusal was never counted");
    }

    mod rdma {
        use super::*;
        use crate::rpc::rdma::fake::{FakeFabric, FakeNet};
        use crate::rpc::rdma::pool::Pool;
        use crate::rpc::rdma::RDMA_CALL_LEN;

        const KIB: usize = 1024;

        /// A server offering RDMA on a fake device, a connection to it, and
        /// a client pool on another device of the same fake net.
        fn start_rdma(limits: Limits) -> (Arc<Server<Echo>>, Arc<FakeFabric>, Conn, Arc<Pool>) {
            let net = Arc::new(FakeNet::default());
            let device = Arc::new(FakeFabric::on(&net));
            let limits = Limits {
                bulk_max: 1 << 20,
                ..limits
            };
            let (server, addr) = start(limits, None);
            server.offer_rdma(device.clone(), 4 << 20);
            let pool = Pool::new(Arc::new(FakeFabric::on(&net)), 4 << 20, true);
            (server, device, connect(addr, None), pool)
        }

        fn pattern(len: usize) -> Vec<u8> {
            (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
        }

        fn echo_rdma(conn: &Conn, bulk: &[u8], reply_max: usize) -> Result<(u64, Vec<u8>), CallError> {
            conn.call_rdma(&codec::encode(&7u64), bulk, reply_max, Duration::from_secs(10))
                .map(|(m, bulk)| (codec::decode(&m).unwrap(), bulk))
        }

        #[test]
        fn payloads_go_by_rdma_both_ways_and_a_reply_without_room_comes_inline() {
            let (server, device, conn, pool) = start_rdma(Limits::default());
            conn.connect_rdma(pool.clone(), Duration::from_secs(10)).unwrap();
            assert!(conn.has_rdma());
            let data = pattern(200 * KIB);
            assert_eq!(echo_rdma(&conn, &data, data.len()).unwrap(), (7, data.clone()));
            assert_eq!(server.stats.rdma_read.load(Ordering::SeqCst), 200 * KIB as u64);
            assert_eq!(server.stats.rdma_written.load(Ordering::SeqCst), 200 * KIB as u64);
            assert_eq!(device.moved().read, 200 * KIB as u64);
            assert_eq!(device.moved().written, 200 * KIB as u64);
            // No room for the reply's payload: it comes in the frame.
            assert_eq!(
                echo_rdma(&conn, &data[..1000], 10).unwrap(),
                (7, data[..1000].to_vec())
            );
            assert_eq!(server.stats.rdma_written.load(Ordering::SeqCst), 200 * KIB as u64);
            // Many callers at once, each its own bytes.
            let conn = Arc::new(conn);
            let callers: Vec<_> = (0..8)
                .map(|i| {
                    let conn = conn.clone();
                    std::thread::spawn(move || {
                        for round in 0..20 {
                            let data: Vec<u8> = pattern(KIB * (i + 1) * (round + 1))
                                .iter()
                                .map(|b| b ^ i as u8)
                                .collect();
                            assert_eq!(echo_rdma(&conn, &data, data.len()).unwrap().1, data);
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.join().unwrap();
            }
            // Buffers were reused, not registered per call.
            assert!(
                pool.registrations() <= 32,
                "{} registrations",
                pool.registrations()
            );
            assert!(pool.registered() <= 4 << 20);
        }

        #[test]
        fn a_service_without_rdma_says_so_and_calls_go_over_the_stream() {
            let (_server, addr) = start(Limits::default(), None);
            let conn = connect(addr, None);
            let pool = Pool::new(Arc::new(FakeFabric::new()), 1 << 20, true);
            match conn.connect_rdma(pool, Duration::from_secs(10)) {
                Err(CallError::Remote(errno)) => assert_eq!(errno, libc::EOPNOTSUPP),
                other => panic!("{other:?}"),
            }
            assert!(!conn.has_rdma());
            assert_eq!(echo_rdma(&conn, b"bulk", 100).unwrap(), (7, b"bulk".to_vec()));
        }

        /// An RDMA request with `call` for its head, sent as is.
        fn forged(conn: &Conn, call: RdmaCall) -> Result<Frame, CallError> {
            let head = call.to_bytes();
            conn.exchange(
                frame::KIND_REQUEST_RDMA,
                &[&head, &codec::encode(&7u64)],
                &[],
                Instant::now() + Duration::from_secs(10),
            )
        }

        #[test]
        fn an_rdma_request_before_the_hello_or_without_its_head_is_refused() {
            let (_server, _device, conn, _pool) = start_rdma(Limits::default());
            let e = forged(&conn, RdmaCall::default()).unwrap();
            assert_eq!(e.kind, frame::KIND_ERROR);
            assert_eq!(e.message, libc::EPROTO.to_le_bytes());
            let short = conn
                .exchange(
                    frame::KIND_REQUEST_RDMA,
                    &[&[0; RDMA_CALL_LEN - 1]],
                    &[],
                    Instant::now() + Duration::from_secs(10),
                )
                .unwrap();
            assert_eq!(short.message, libc::EPROTO.to_le_bytes());
        }

        #[test]
        fn memory_the_peer_never_offered_breaks_its_connection_and_is_not_read() {
            let (server, device, conn, pool) = start_rdma(Limits::default());
            conn.connect_rdma(pool.clone(), Duration::from_secs(10)).unwrap();
            // A key of the service's own fake device: not the peer's.
            let theirs = device.register(4096, true).unwrap();
            let call = RdmaCall {
                payload: theirs.remote(0, 4096),
                reply: None,
            };
            assert!(matches!(forged(&conn, call), Err(CallError::Lost(_))));
            assert!(conn.is_dead());
            assert_eq!(server.stats.rdma_read.load(Ordering::SeqCst), 0);
            // A payload past the service's bound is refused before any read.
            let (server, _device, conn, pool) = start_rdma(Limits::default());
            conn.connect_rdma(pool.clone(), Duration::from_secs(10)).unwrap();
            let big = pool.take(2 << 20, Instant::now()).unwrap();
            let call = RdmaCall {
                payload: big.remote(2 << 20),
                reply: None,
            };
            let e = forged(&conn, call).unwrap();
            assert_eq!(e.message, libc::EMSGSIZE.to_le_bytes());
            assert_eq!(server.stats.rdma_read.load(Ordering::SeqCst), 0);
        }

        #[test]
        fn a_peer_whose_rdma_goes_silent_fails_its_call_in_bounded_time() {
            let limits = Limits {
                frame_timeout: Duration::from_millis(300),
                ..Limits::default()
            };
            let (_server, device, conn, pool) = start_rdma(limits);
            conn.connect_rdma(pool.clone(), Duration::from_secs(10)).unwrap();
            device.silence(true);
            let started = Instant::now();
            let e = echo_rdma(&conn, &pattern(8 * KIB), 8 * KIB).unwrap_err();
            assert!(matches!(e, CallError::Lost(_)), "{e:?}");
            // Well within the call's own 10 s: the service's bound ended it.
            assert!(
                started.elapsed() < Duration::from_secs(9),
                "{:?}",
                started.elapsed()
            );
            // The service may still write into the buffer of a lost call:
            // it was given up, not back.
            assert_eq!(pool.registered(), 0);
        }
    }
}
