//! The serving half of every service: accept, authenticate, read whole
//! frames, run requests (many at once per connection), write replies, all
//! within bounds.
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
//! | frame size | [`super::frame`] | the connection is dropped |
//! | requests running at once, all connections | [`Limits::workers`] | reading stops until one ends |
//!
//! Each is logged with the peer's address.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::{self, Role};
use super::codec;
use super::frame::{self, Frame};
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
    /// Threads running requests of all connections.
    pub workers: usize,
}

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
            workers: 32,
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

type Job = Box<dyn FnOnce() + Send>;

/// Counts of what the server has seen, for reports and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections authenticated.
    pub accepted: AtomicU64,
    /// Connections refused or dropped before or at authentication.
    pub refused: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
}

/// A server of `H`'s requests.
pub struct Server<H: Handler> {
    handler: Arc<H>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    pending: Mutex<VecDeque<(u64, TcpStream)>>,
    next_pending: AtomicU64,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    jobs: SyncSender<Job>,
    jobs_rx: Mutex<Option<Receiver<Job>>>,
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
    in_flight: AtomicUsize,
}

impl<H: Handler> Server<H> {
    /// A server of `handler`, authenticating with `tls` (`None`: nobody is
    /// authenticated; only for `--insecure-no-auth`).
    pub fn new(handler: Arc<H>, tls: Option<Arc<rustls::ServerConfig>>, limits: Limits) -> Arc<Server<H>> {
        let (jobs, rx) = sync_channel(limits.workers * 4);
        Arc::new(Server {
            handler,
            tls,
            limits,
            pending: Mutex::new(VecDeque::new()),
            next_pending: AtomicU64::new(0),
            per_peer: Mutex::new(HashMap::new()),
            jobs,
            jobs_rx: Mutex::new(Some(rx)),
            stats: ServerStats::default(),
        })
    }

    fn start_workers(&self) -> io::Result<()> {
        let Some(rx) = lock(&self.jobs_rx).take() else {
            return Ok(());
        };
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.limits.workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rpc-worker-{i}"))
                .spawn(move || loop {
                    let job = match lock(&rx).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                })?;
        }
        Ok(())
    }

    /// Accepts connections on `listener` until it fails.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        self.start_workers()?;
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
                });
                if let Err(e) = self.read_loop(&conn) {
                    tracing::debug!("{addr}: connection ended: {e}");
                }
                // Requests still running hold the connection's state until
                // they end; their replies fail.
                conn.stream.shutdown();
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

    fn read_loop(self: &Arc<Self>, conn: &Arc<Connection<H>>) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut frame_started: Option<Instant> = None;
        loop {
            // Every whole frame in the buffer first.
            loop {
                let frame = match frame::take_frame(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("{}: {e}; closing the connection", conn.peer.addr);
                        return Ok(());
                    }
                };
                frame_started = None;
                if frame.kind != frame::KIND_REQUEST {
                    tracing::warn!("{}: sent a reply frame; closing the connection", conn.peer.addr);
                    return Ok(());
                }
                let more = matches!(frame::frame_len(&buf), Ok(Some(len)) if buf.len() >= 4 + len);
                self.dispatch(conn, frame, more)?;
            }
            if !buf.is_empty() && frame_started.is_none() {
                frame_started = Some(Instant::now());
            }
            let deadline = match frame_started {
                Some(start) => start + self.limits.frame_timeout,
                None => Instant::now() + self.limits.idle_timeout,
            };
            match conn.stream.read_into(&mut buf, Some(deadline)) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if frame_started.is_some() {
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
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one request: on this thread if nothing else is in flight and
    /// no other request is waiting (no hand-off for a lone caller), else on
    /// a worker.
    fn dispatch(self: &Arc<Self>, conn: &Arc<Connection<H>>, frame: Frame, more: bool) -> io::Result<()> {
        let running = conn.in_flight.fetch_add(1, Ordering::SeqCst);
        if running >= self.limits.in_flight {
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                "{}: more than {} requests in flight; answering EAGAIN",
                conn.peer.addr,
                self.limits.in_flight
            );
            return self.reply(conn, frame.id, Err(libc::EAGAIN));
        }
        if running == 0 && !more {
            let result = self.run(conn, frame.message, frame.bulk);
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            return self.reply(conn, frame.id, result);
        }
        let server = self.clone();
        let conn = conn.clone();
        let job: Job = Box::new(move || {
            let result = server.run(&conn, frame.message, frame.bulk);
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = server.reply(&conn, frame.id, result) {
                tracing::debug!("{}: writing a reply: {e}", conn.peer.addr);
                conn.stream.shutdown();
            }
        });
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the worker pool stopped"))
    }

    fn run(&self, conn: &Connection<H>, message: Vec<u8>, bulk: Vec<u8>) -> Result<(Vec<u8>, Vec<u8>), i32> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let req = codec::decode::<H::Request>(&message).map_err(|e| {
            tracing::warn!("{}: refused a request: {e}", conn.peer.addr);
            libc::EPROTO
        })?;
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

    fn reply(
        &self,
        conn: &Connection<H>,
        id: u64,
        result: Result<(Vec<u8>, Vec<u8>), i32>,
    ) -> io::Result<()> {
        let bytes = match result {
            Ok((message, bulk)) => Frame::to_bytes(id, frame::KIND_REPLY, &message, &bulk)?,
            Err(errno) => Frame::to_bytes(id, frame::KIND_ERROR, &errno.to_le_bytes(), &[])?,
        };
        conn.stream
            .write_all(&bytes, Instant::now() + self.limits.write_timeout)
            .inspect_err(|e| {
                tracing::warn!(
                    "{}: writing a reply: {e}; dropping the connection",
                    conn.peer.addr
                );
                conn.stream.shutdown();
            })
    }
}
