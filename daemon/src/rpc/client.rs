//! [`Conn`]: one multiplexed connection to a service. Any number of
//! threads call at once (up to [`IN_FLIGHT_MAX`] in flight); replies are
//! matched to calls by request id.
//!
//! There is no reader thread: a caller waiting for its reply reads the
//! connection itself if nobody else is, hands the replies it finds to their
//! callers, and passes the reading on when its own has come. A lone caller
//! therefore sends and receives on its own thread, with no hand-off.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::codec;
use super::frame::{self, Assembler, Frame};
use super::rdma::pool::Pool;
use super::rdma::{Endpoint, QueuePair, RdmaCall, DEFAULT_WINDOW};
use super::stream::Stream;

/// Calls in flight on one connection; more wait for a slot.
pub const IN_FLIGHT_MAX: usize = 64;
/// Writing one request may take this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request never left: safe to send again (elsewhere).
    #[error("not sent: {0}")]
    NotSent(io::Error),
    /// The request was sent and no reply came: it may have run.
    #[error("no reply: {0}")]
    Lost(io::Error),
    /// The service answered with an errno.
    #[error("{}", io::Error::from_raw_os_error(*.0))]
    Remote(i32),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Calls {
    /// Ids whose replies are awaited.
    waiting: HashSet<u64>,
    /// Replies not yet taken by their callers.
    done: HashMap<u64, Frame>,
    in_flight: usize,
    /// Why the connection is unusable, once it is.
    dead: Option<String>,
    /// Threads waiting on `Conn::changed`: with none, nobody is woken (a
    /// wake-up is a system call even with no waiter).
    sleepers: usize,
}

/// See the module docs.
pub struct Conn {
    stream: Stream,
    next_id: AtomicU64,
    calls: Mutex<Calls>,
    changed: Condvar,
    /// The reading turn, and the bytes of frames read in part.
    reading: Mutex<Assembler>,
    /// RDMA with the service, once connected ([`Conn::connect_rdma`]).
    rdma: std::sync::OnceLock<ConnRdma>,
}

/// This end of a connection's RDMA: the queue pair the service reaches
/// this process's buffers through, and the buffers.
#[derive(Debug)]
struct ConnRdma {
    /// Kept for as long as the connection: the service's reads and writes
    /// arrive through it.
    _qp: Box<dyn QueuePair>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Frees a call's slot however the call ends.
struct Slot<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut calls = lock(&self.conn.calls);
        calls.waiting.remove(&self.id);
        calls.done.remove(&self.id);
        calls.in_flight -= 1;
        let sleepers = calls.sleepers;
        drop(calls);
        if sleepers > 0 {
            self.conn.changed.notify_all();
        }
    }
}

impl Conn {
    /// Connects to `addr` and completes the handshake by `deadline`.
    pub fn connect(
        addr: &SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        deadline: Instant,
    ) -> io::Result<Conn> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let sock = TcpStream::connect_timeout(addr, left)?;
        let stream = Stream::client(sock, tls, deadline)?;
        Ok(Conn {
            stream,
            next_id: AtomicU64::new(1),
            calls: Mutex::new(Calls::default()),
            changed: Condvar::new(),
            reading: Mutex::new(Assembler::default()),
            rdma: std::sync::OnceLock::new(),
        })
    }

    /// Connects a queue pair on `pool`'s device with the service's
    /// ([`frame::KIND_RDMA_HELLO`]), so that [`Conn::call_rdma`] moves
    /// payloads through `pool`'s buffers (registered for the service's
    /// RDMA READ and WRITE). `Err(Remote(EOPNOTSUPP))` when the service
    /// serves no RDMA.
    pub fn connect_rdma(&self, pool: Arc<Pool>, timeout: Duration) -> Result<(), CallError> {
        let qp = pool
            .fabric()
            .queue_pair(DEFAULT_WINDOW)
            .map_err(CallError::NotSent)?;
        let hello = codec::encode(&qp.endpoint());
        let frame = self.exchange(frame::KIND_RDMA_HELLO, &[&hello], &[], Instant::now() + timeout)?;
        let theirs: Endpoint = codec::decode(&Conn::replied(frame)?.0)
            .map_err(|e| CallError::Lost(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        qp.connect(&theirs).map_err(CallError::Lost)?;
        self.rdma.set(ConnRdma { _qp: qp, pool }).map_err(|_| {
            CallError::NotSent(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "RDMA already connected",
            ))
        })
    }

    /// Whether payloads go by RDMA ([`Conn::connect_rdma`] succeeded).
    pub fn has_rdma(&self) -> bool {
        self.rdma.get().is_some()
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.calls).in_flight
    }

    /// Whether the connection has failed (calls on it fail at once).
    pub fn is_dead(&self) -> bool {
        lock(&self.calls).dead.is_some()
    }

    fn kill(&self, why: String) {
        let mut calls = lock(&self.calls);
        if calls.dead.is_none() {
            tracing::debug!("connection to {} closed: {why}", self.stream.peer());
            calls.dead = Some(why);
        }
        drop(calls);
        self.stream.shutdown();
        self.wake_sleepers();
    }

    /// Wakes the threads waiting on `changed`, if any.
    fn wake_sleepers(&self) {
        if lock(&self.calls).sleepers > 0 {
            self.changed.notify_all();
        }
    }

    /// Sends a request and waits up to `timeout` for its reply: the reply's
    /// message and bulk payload.
    pub fn call(
        &self,
        message: &[u8],
        bulk: &[u8],
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        let frame = self.exchange(frame::KIND_REQUEST, &[message], bulk, Instant::now() + timeout)?;
        Conn::replied(frame)
    }

    /// Like [`Conn::call`], the payloads moved by RDMA when the connection
    /// has it ([`Conn::connect_rdma`]; else as [`Conn::call`]): the
    /// service pulls `bulk` from a registered buffer and pushes a reply
    /// payload of up to `reply_max` bytes into one (a larger one comes
    /// in the reply frame).
    pub fn call_rdma(
        &self,
        message: &[u8],
        bulk: &[u8],
        reply_max: usize,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        let Some(rdma) = self.rdma.get() else {
            return self.call(message, bulk, timeout);
        };
        let deadline = Instant::now() + timeout;
        let reply_max = reply_max.min(rdma.pool.max_len());
        // One buffer serves both ways: the service reads the payload
        // before the request runs and writes the reply's after.
        let buf = rdma
            .pool
            .take(bulk.len().max(reply_max), deadline)
            .map_err(CallError::NotSent)?;
        buf.fill(bulk);
        let call = RdmaCall {
            payload: (!bulk.is_empty()).then(|| buf.remote(bulk.len())).flatten(),
            reply: (reply_max > 0).then(|| buf.remote(reply_max)).flatten(),
        };
        let head = call.to_bytes();
        let frame = match self.exchange(frame::KIND_REQUEST_RDMA, &[&head, message], &[], deadline) {
            Ok(frame) => frame,
            Err(e) => {
                if matches!(e, CallError::Lost(_)) {
                    // The service may still reach the buffer: never reuse
                    // it.
                    buf.discard();
                }
                return Err(e);
            }
        };
        if frame.kind != frame::KIND_REPLY_RDMA {
            return Conn::replied(frame);
        }
        let lost = |why: &str| CallError::Lost(io::Error::new(io::ErrorKind::InvalidData, why.to_string()));
        let (count, message) = frame
            .message
            .split_first_chunk::<4>()
            .ok_or_else(|| lost("an RDMA reply too short for its count"))?;
        let count = u32::from_le_bytes(*count) as usize;
        if count > reply_max {
            return Err(lost("an RDMA reply larger than the room given for it"));
        }
        Ok((message.to_vec(), buf.to_vec(count)))
    }

    /// A reply frame's message and bulk, or its errno.
    fn replied(frame: Frame) -> Result<(Vec<u8>, Vec<u8>), CallError> {
        match frame.kind {
            frame::KIND_REPLY => Ok((frame.message, frame.bulk)),
            _ => {
                let errno = frame
                    .message
                    .get(..4)
                    .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .filter(|e| *e > 0)
                    .unwrap_or(libc::EPROTO);
                Err(CallError::Remote(errno))
            }
        }
    }

    /// Sends a request frame of `kind` (its message in `parts`) and waits
    /// until `deadline` for the reply frame.
    pub(crate) fn exchange(
        &self,
        kind: u8,
        parts: &[&[u8]],
        bulk: &[u8],
        deadline: Instant,
    ) -> Result<Frame, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message_len = parts.iter().map(|p| p.len()).sum();
        let head = frame::header(id, kind, message_len, bulk.len()).map_err(CallError::NotSent)?;
        {
            let mut calls = lock(&self.calls);
            loop {
                if let Some(why) = &calls.dead {
                    return Err(CallError::NotSent(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        why.clone(),
                    )));
                }
                if calls.in_flight < IN_FLIGHT_MAX {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(CallError::NotSent(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "waiting for a free request slot",
                    )));
                }
                calls.sleepers += 1;
                calls = self
                    .changed
                    .wait_timeout(calls, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                calls.sleepers -= 1;
            }
            calls.in_flight += 1;
            calls.waiting.insert(id);
        }
        let slot = Slot { conn: self, id };
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        all.push(&head);
        all.extend_from_slice(parts);
        all.push(bulk);
        if let Err(e) = self.stream.write_parts(&all, Instant::now() + WRITE_TIMEOUT) {
            // A frame cut short is not a request: the service drops the
            // connection without running it.
            self.kill(format!("writing: {e}"));
            return Err(CallError::NotSent(e));
        }
        let frame = self.wait_reply(id, deadline)?;
        drop(slot);
        Ok(frame)
    }

    fn wait_reply(&self, id: u64, deadline: Instant) -> Result<Frame, CallError> {
        loop {
            {
                let mut calls = lock(&self.calls);
                if let Some(frame) = calls.done.remove(&id) {
                    return Ok(frame);
                }
                if let Some(why) = &calls.dead {
                    return Err(CallError::Lost(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        why.clone(),
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(CallError::Lost(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no reply in time",
                    )));
                }
            }
            match self.reading.try_lock() {
                Ok(mut buf) => {
                    self.read_turn(&mut buf, deadline);
                    drop(buf);
                    self.wake_sleepers();
                }
                Err(_) => {
                    let mut calls = lock(&self.calls);
                    if calls.done.contains_key(&id) || calls.dead.is_some() {
                        continue;
                    }
                    // The reader may have left since: take the turn. (It
                    // takes `calls` after `reading`, so trying `reading`
                    // here cannot deadlock.)
                    if self.reading.try_lock().is_ok() {
                        continue;
                    }
                    // Woken when a reader delivers or leaves; the timeout
                    // bounds a missed turn.
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(20));
                    calls.sleepers += 1;
                    let mut calls = self
                        .changed
                        .wait_timeout(calls, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    calls.sleepers -= 1;
                }
            }
        }
    }

    /// One reading turn: reads until a frame is whole (or the deadline)
    /// and delivers every whole frame.
    fn read_turn(&self, frames: &mut Assembler, deadline: Instant) {
        // A frame already whole needs no read.
        if !frames.has_frame() {
            let mut feed = |bytes: &[u8]| -> io::Result<bool> {
                frames
                    .feed(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                Ok(!frames.has_frame())
            };
            match self.stream.read_to(&mut feed, Some(deadline)) {
                Ok(0) => return self.kill("closed by the service".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return,
                Err(e) => return self.kill(format!("reading: {e}")),
            }
        }
        loop {
            match frames.take() {
                Ok(Some(frame)) => {
                    if !matches!(
                        frame.kind,
                        frame::KIND_REPLY | frame::KIND_ERROR | frame::KIND_REPLY_RDMA
                    ) {
                        return self.kill("the service sent a request".into());
                    }
                    let mut calls = lock(&self.calls);
                    if calls.waiting.remove(&frame.id) {
                        calls.done.insert(frame.id, frame);
                    }
                    // else: the reply of a call that gave up waiting.
                }
                Ok(None) => return,
                Err(e) => return self.kill(e.to_string()),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stream.shutdown();
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use std::time::{Duration, Instant};

    /// Polls `check` until it holds or `timeout` passes.
    pub(crate) fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
