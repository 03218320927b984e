//! [`Stream`]: one connection's bytes, over mutual TLS (or, only when the
//! operator said so, plain TCP), usable by a reading thread and writing
//! threads at once.
//!
//! rustls does the handshake; the bytes then travel in the records of
//! [`super::record`], sealed with the keys the handshake agreed. The
//! socket is non-blocking after the handshake. The receiving and sending
//! directions have their own state and lock, so a reply can be written
//! while another thread waits for the next request, which the multiplexed
//! connections of [`super::client`] and [`super::server`] need. Every wait
//! has a deadline.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

use super::record::{self, Opener, Sealer};

/// Bytes read at most per system call (plain streams).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where a thread's reads land before they join the caller's buffer:
    /// zeroed once per thread, not once per read.
    static CHUNK: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// See the module docs.
pub struct Stream {
    sock: TcpStream,
    peer: SocketAddr,
    records: Option<Records>,
    /// Serializes writers of a plain stream (others hold their `tx`).
    plain_writer: Mutex<()>,
}

/// The two directions of a connection's records.
struct Records {
    rx: Mutex<Opener>,
    tx: Mutex<Sealer>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("peer", &self.peer)
            .field("tls", &self.records.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: deadline passed"))
}

/// Blocking socket timeouts for the handshake, from a deadline.
fn handshake_timeouts(sock: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| timed_out("TLS handshake"))?;
    sock.set_read_timeout(Some(left))?;
    sock.set_write_timeout(Some(left))
}

fn handshake(sock: &mut TcpStream, conn: &mut rustls::Connection, deadline: Instant) -> io::Result<()> {
    while conn.is_handshaking() {
        handshake_timeouts(sock, deadline)?;
        conn.complete_io(sock)?;
    }
    // The client's last flight (its certificate) may still be queued.
    while conn.wants_write() {
        handshake_timeouts(sock, deadline)?;
        conn.write_tls(sock)?;
    }
    Ok(())
}

/// After the handshake: the record layer's keys (see [`super::record`]).
fn into_records(conn: rustls::Connection) -> io::Result<(Opener, Sealer)> {
    if conn.alpn_protocol() != Some(record::ALPN) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer does not speak this version's record layer (an older xfused?)",
        ));
    }
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| io::Error::other(format!("taking the handshake's keys: {e}")))?;
    Ok((
        Opener::new(secrets.rx.0, secrets.rx.1)?,
        Sealer::new(secrets.tx.0, secrets.tx.1)?,
    ))
}

/// Reads from `sock` into the spare capacity of `buf`.
fn read_some(sock: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        match rustix::io::read(sock, rustix::buffer::spare_capacity(buf)) {
            Err(rustix::io::Errno::INTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

impl Stream {
    fn new(sock: TcpStream, records: Option<(Opener, Sealer)>) -> io::Result<Stream> {
        let peer = sock.peer_addr()?;
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        sock.set_nonblocking(true)?;
        Ok(Stream {
            sock,
            peer,
            records: records.map(|(rx, tx)| Records {
                rx: Mutex::new(rx),
                tx: Mutex::new(tx),
            }),
            plain_writer: Mutex::new(()),
        })
    }

    /// The client side of a connection: TLS with `config` (checking the
    /// server is a service of the cluster), or plain without one.
    pub fn client(
        mut sock: TcpStream,
        config: Option<Arc<rustls::ClientConfig>>,
        deadline: Instant,
    ) -> io::Result<Stream> {
        sock.set_nodelay(true)?;
        let Some(config) = config else {
            return Stream::new(sock, None);
        };
        let mut conn = rustls::ClientConnection::new(config, super::auth::service_name())
            .map(rustls::Connection::Client)
            .map_err(io::Error::other)?;
        handshake(&mut sock, &mut conn, deadline)?;
        let (mut rx, tx) = into_records(conn)?;
        // The service speaks first (see `super::record`).
        loop {
            if let Some(plain) = rx.open_next()? {
                if plain != record::READY {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the service's first record is not the expected one",
                    ));
                }
                break;
            }
            handshake_timeouts(&sock, deadline)?;
            let n = rx.read_from(&mut |buf| read_some(&sock, buf)).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    timed_out("TLS handshake")
                } else {
                    e
                }
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the service closed the connection after the handshake",
                ));
            }
        }
        Stream::new(sock, Some((rx, tx)))
    }

    /// The server side: TLS with `config` (requiring a client certificate
    /// of the cluster), or plain without one. Returns the stream and the
    /// peer's verified certificate.
    pub fn server(
        mut sock: TcpStream,
        config: Option<Arc<rustls::ServerConfig>>,
        deadline: Instant,
    ) -> io::Result<(Stream, Option<rustls::pki_types::CertificateDer<'static>>)> {
        sock.set_nodelay(true)?;
        let Some(config) = config else {
            return Ok((Stream::new(sock, None)?, None));
        };
        let mut conn = rustls::ServerConnection::new(config)
            .map(rustls::Connection::Server)
            .map_err(io::Error::other)?;
        handshake(&mut sock, &mut conn, deadline)?;
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let (rx, mut tx) = into_records(conn)?;
        handshake_timeouts(&sock, deadline)?;
        tx.seal(&[record::READY], &mut |bytes| (&sock).write_all(bytes))?;
        Ok((Stream::new(sock, Some((rx, tx)))?, cert))
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Waits until the socket is ready for `flags`, or the deadline.
    fn wait(&self, flags: PollFlags, deadline: Option<Instant>, what: &str) -> io::Result<()> {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d
                    .checked_duration_since(Instant::now())
                    .filter(|l| !l.is_zero())
                    .ok_or_else(|| timed_out(what))?;
                Some(rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        let mut fds = [PollFd::new(&self.sock, flags)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => Err(timed_out(what)),
            Ok(_) => Ok(()),
            Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether bytes wait to be read (without waiting for them).
    pub fn readable_now(&self) -> bool {
        if let Some(records) = &self.records {
            // A reader holds the lock: it reads what is there.
            if let Ok(rx) = records.rx.try_lock() {
                if rx.has_record().unwrap_or(true) {
                    return true;
                }
            }
        }
        let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }

    /// Hands bytes that arrived to `feed`, waiting until the deadline for
    /// at least one: all that are there, and more as they come while
    /// `feed` answers that it wants more (`Ok(true)`: the message it
    /// gathers is not whole yet). `Ok(0)` at the end of the stream.
    pub fn read_to(
        &self,
        feed: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        match &self.records {
            None => CHUNK.with(|chunk| self.read_plain(&mut chunk.borrow_mut(), feed, deadline)),
            Some(records) => self.read_records(&mut lock(&records.rx), feed, deadline),
        }
    }

    fn read_plain(
        &self,
        chunk: &mut [u8],
        feed: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        // Whoever reads here has just sent or answered, so bytes are rarely
        // there yet: wait first rather than try a read that fails (one
        // syscall less per message).
        self.wait(PollFlags::IN, deadline, "reading")?;
        let mut total = 0;
        loop {
            match (&self.sock).read(chunk) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    total += n;
                    if !feed(&chunk[..n])? {
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::IN, deadline, "reading")?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn read_records(
        &self,
        rx: &mut Opener,
        feed: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let mut total = 0;
        loop {
            while let Some(plain) = rx.open_next()? {
                total += plain.len();
                if !plain.is_empty() && !feed(plain)? {
                    return Ok(total);
                }
            }
            match rx.read_from(&mut |buf| read_some(&self.sock, buf)) {
                Ok(0) => return Ok(total),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::IN, deadline, "reading")?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `parts`, one after another, by the deadline: a frame's
    /// header, message and bulk go as they are, sealed as records (or
    /// gathered by writev(2)), not first copied into one buffer.
    pub fn write_parts(&self, parts: &[&[u8]], deadline: Instant) -> io::Result<()> {
        match &self.records {
            None => {
                let mut slices: Vec<io::IoSlice<'_>> = parts
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| io::IoSlice::new(p))
                    .collect();
                let mut rest = &mut slices[..];
                let _writer = lock(&self.plain_writer);
                while !rest.is_empty() {
                    match (&self.sock).write_vectored(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.wait(PollFlags::OUT, Some(deadline), "writing")?
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Some(records) => lock(&records.tx).seal(parts, &mut |bytes| self.send(bytes, deadline)),
        }
    }

    /// Writes all of `bytes` by the deadline.
    fn send(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            match (&self.sock).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::OUT, Some(deadline), "writing")?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Ends the connection both ways: a thread waiting on it wakes.
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}
