//! [`Stream`]: one connection's bytes, over mutual TLS (or, only when the
//! operator said so, plain TCP), usable by a reading thread and writing
//! threads at once.
//!
//! The socket is non-blocking after the handshake. A reader waits in
//! `poll(2)` without holding the TLS state, then takes it for the moment
//! it needs to decrypt; a writer takes it to encrypt and send. So a reply
//! can be written while another thread waits for the next request, which
//! the multiplexed connections of [`super::client`] and [`super::server`]
//! need. Every wait has a deadline.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

/// Bytes read at most per system call.
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
    tls: Option<Mutex<rustls::Connection>>,
    /// Serializes writers of a plain stream (TLS ones hold `tls`).
    plain_writer: Mutex<()>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("peer", &self.peer)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: deadline passed"))
}

/// Whether decrypted bytes wait in the TLS state.
trait Plaintext {
    fn wants_read_plaintext_available(&mut self) -> bool;
}

impl Plaintext for rustls::Connection {
    fn wants_read_plaintext_available(&mut self) -> bool {
        // `process_new_packets` reports decrypted bytes not yet read.
        self.process_new_packets()
            .map(|state| state.plaintext_bytes_to_read() > 0)
            .unwrap_or(true)
    }
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

impl Stream {
    fn new(sock: TcpStream, tls: Option<rustls::Connection>) -> io::Result<Stream> {
        let peer = sock.peer_addr()?;
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        sock.set_nonblocking(true)?;
        Ok(Stream {
            sock,
            peer,
            tls: tls.map(Mutex::new),
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
        conn.set_buffer_limit(None);
        handshake(&mut sock, &mut conn, deadline)?;
        Stream::new(sock, Some(conn))
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
        conn.set_buffer_limit(None);
        handshake(&mut sock, &mut conn, deadline)?;
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        Ok((Stream::new(sock, Some(conn))?, cert))
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
        match &self.tls {
            None => CHUNK.with(|chunk| self.read_plain(&mut chunk.borrow_mut(), feed, deadline)),
            Some(tls) => self.read_tls(tls, feed, deadline),
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

    fn read_tls(
        &self,
        tls: &Mutex<rustls::Connection>,
        feed: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        // As for plain reads: wait first, unless decrypted bytes are held.
        if !lock(tls).wants_read_plaintext_available() {
            self.wait(PollFlags::IN, deadline, "reading")?;
        }
        let mut total = 0;
        loop {
            {
                let mut tls = lock(tls);
                // Decrypted bytes go to `feed` as they lie in the TLS
                // state, not through a buffer of ours.
                loop {
                    let mut reader = tls.reader();
                    match reader.fill_buf() {
                        Ok([]) => return Ok(total),
                        Ok(bytes) => {
                            let n = bytes.len();
                            let more = feed(bytes)?;
                            reader.consume(n);
                            total += n;
                            if !more {
                                return Ok(total);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                match tls.read_tls(&mut &self.sock) {
                    Ok(0) => {
                        // The end: what is decrypted is read first.
                        tls.process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        continue;
                    }
                    Ok(_) => {
                        tls.process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        // Alerts or key updates to answer go out now,
                        // as far as the socket takes them.
                        while tls.wants_write() {
                            match tls.write_tls(&mut &self.sock) {
                                Ok(_) => {}
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            self.wait(PollFlags::IN, deadline, "reading")?;
        }
    }

    /// Writes `parts`, one after another, by the deadline: a frame's
    /// header, message and bulk go as they are, gathered by the TLS layer
    /// (or by writev(2)), not first copied into one buffer.
    pub fn write_parts(&self, parts: &[&[u8]], deadline: Instant) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| io::IoSlice::new(p))
            .collect();
        let mut rest = &mut slices[..];
        match &self.tls {
            None => {
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
            Some(tls) => {
                let mut tls = lock(tls);
                while !rest.is_empty() {
                    // Unlimited buffering (see `client`): takes all.
                    match tls.writer().write_vectored(rest)? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        n => io::IoSlice::advance_slices(&mut rest, n),
                    }
                }
                self.flush_tls(&mut tls, deadline)
            }
        }
    }

    /// Sends what the TLS state holds encrypted, by the deadline.
    fn flush_tls(&self, tls: &mut rustls::Connection, deadline: Instant) -> io::Result<()> {
        while tls.wants_write() {
            match tls.write_tls(&mut &self.sock) {
                Ok(_) => {}
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
