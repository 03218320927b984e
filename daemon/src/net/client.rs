//! [`RemoteMeta`]: a client's handle on an `xfused meta` service, with a
//! connection pool and retries.
//!
//! Retries: a request that failed on the network is sent again (on a new
//! connection, with backoff, up to [`ATTEMPTS_MAX`] times) if it is safe to
//! repeat: reads always, and any request whose connection failed before it
//! was sent. A change whose fate is unknown (sent, no answer) is not
//! repeated behind the caller's back: it fails with EIO, because running
//! it twice could answer EEXIST for a create that succeeded.

use std::io::{self, BufReader, BufWriter};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::proto::{self, Reply, Request};
use crate::meta::namespace::Namespace;
use crate::meta::schema::InodeRec;
use crate::meta::{Caller, DirItem, MetaError, Reclaim, SetAttr, Usage};

/// Attempts per request before giving up.
pub const ATTEMPTS_MAX: u32 = 5;
/// Idle connections kept for reuse.
const POOL_MAX: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

struct Conn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

/// See the module docs.
pub struct RemoteMeta {
    addrs: Vec<SocketAddr>,
    pool: Mutex<Vec<Conn>>,
    client: u64,
    next_addr: AtomicU64,
}

impl std::fmt::Debug for RemoteMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMeta")
            .field("addrs", &self.addrs)
            .field("client", &self.client)
            .finish()
    }
}

fn io_failure(what: &str, e: impl std::fmt::Display) -> MetaError {
    MetaError::Kv(crate::meta::kv::KvError::Unavailable(format!("{what}: {e}")))
}

/// Names longer than the namespace allows never go on the wire (the
/// service would refuse the frame): answered here as a local filesystem
/// would.
fn name_ok(name: &[u8]) -> Result<(), MetaError> {
    if name.len() > crate::meta::schema::NAME_LEN_MAX {
        return Err(MetaError::Errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

fn xattr_name_ok(name: &[u8]) -> Result<(), MetaError> {
    if name.len() > crate::meta::schema::NAME_LEN_MAX {
        return Err(MetaError::Errno(libc::ERANGE));
    }
    Ok(())
}

fn unexpected(reply: Reply) -> MetaError {
    MetaError::Corrupt(format!("the metadata service answered {reply:?}"))
}

impl RemoteMeta {
    /// Connects to the service at `address` (`HOST:PORT`; several
    /// addresses, comma-separated, are tried in turn) and registers as a
    /// new client.
    pub fn connect(address: &str) -> Result<RemoteMeta, MetaError> {
        let mut addrs = Vec::new();
        for part in address.split(',') {
            let resolved = part
                .to_socket_addrs()
                .map_err(|e| MetaError::Corrupt(format!("metadata service address {part:?}: {e}")))?;
            addrs.extend(resolved);
        }
        if addrs.is_empty() {
            return Err(MetaError::Corrupt(format!(
                "metadata service address {address:?} names no host"
            )));
        }
        let mut remote = RemoteMeta {
            addrs,
            pool: Mutex::new(Vec::new()),
            client: 0,
            next_addr: AtomicU64::new(0),
        };
        match remote.call(&Request::Hello)? {
            Reply::Client(id) => remote.client = id,
            other => return Err(unexpected(other)),
        }
        Ok(remote)
    }

    fn dial(&self) -> io::Result<Conn> {
        let mut last = None;
        for _ in 0..self.addrs.len() {
            let i = self.next_addr.fetch_add(1, Ordering::Relaxed) as usize % self.addrs.len();
            match TcpStream::connect_timeout(&self.addrs[i], CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                    return Ok(Conn {
                        reader: BufReader::new(stream.try_clone()?),
                        writer: BufWriter::new(stream),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no address")))
    }

    fn idempotent(req: &Request) -> bool {
        matches!(
            req,
            Request::Hello
                | Request::Heartbeat { .. }
                | Request::Lookup { .. }
                | Request::Getattr { .. }
                | Request::Access { .. }
                | Request::Readlink { .. }
                | Request::Opendir { .. }
                | Request::Readdir { .. }
                | Request::Getxattr { .. }
                | Request::Listxattr { .. }
                | Request::Usage
        )
    }

    /// Sends `req` and returns the service's reply (errors as MetaError).
    pub fn call(&self, req: &Request) -> Result<Reply, MetaError> {
        let body = req.encode();
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 1;
        loop {
            let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let (mut conn, fresh) = match pooled {
                Some(c) => (c, false),
                None => match self.dial() {
                    Ok(c) => (c, true),
                    Err(e) if attempt < ATTEMPTS_MAX => {
                        tracing::warn!("connecting to the metadata service: {e}; retrying");
                        std::thread::sleep(backoff);
                        backoff *= 2;
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(io_failure("connecting to the metadata service", e)),
                },
            };
            let sent = proto::write_frame(&mut conn.writer, &body);
            let answer = sent.and_then(|()| proto::read_frame(&mut conn.reader));
            match answer {
                Ok(Some(frame)) => {
                    let decoded = proto::decode_response(&frame)
                        .map_err(|e| MetaError::Corrupt(format!("reply from the metadata service: {e}")))?;
                    let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                    if pool.len() < POOL_MAX {
                        pool.push(conn);
                    }
                    return decoded.map_err(MetaError::Errno);
                }
                failed => {
                    let e = match failed {
                        Err(e) => e,
                        _ => io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                    };
                    // A pooled connection may have idled out on the server:
                    // nothing was processed, so the request may go again.
                    let repeatable = Self::idempotent(req) || !fresh && e.kind() != io::ErrorKind::TimedOut;
                    if repeatable && attempt < ATTEMPTS_MAX {
                        if fresh {
                            std::thread::sleep(backoff);
                            backoff *= 2;
                        }
                        attempt += 1;
                        continue;
                    }
                    return Err(io_failure("talking to the metadata service", e));
                }
            }
        }
    }
}

impl Namespace for RemoteMeta {
    fn client_id(&self) -> u64 {
        self.client
    }
    fn heartbeat(&self) -> Result<(), MetaError> {
        self.call(&Request::Heartbeat { client: self.client }).map(|_| ())
    }
    fn close_client(&self) -> Result<Vec<Reclaim>, MetaError> {
        match self.call(&Request::Goodbye { client: self.client })? {
            Reply::Reclaims(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
    fn reap_expired(&self) -> Result<Vec<Reclaim>, MetaError> {
        match self.call(&Request::ReapExpired { client: self.client })? {
            Reply::Reclaims(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
    fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(u64, InodeRec), MetaError> {
        name_ok(name)?;
        match self.call(&Request::Lookup {
            client: self.client,
            caller: *caller,
            parent,
            name: name.to_vec(),
        })? {
            Reply::Entry { ino, rec } => Ok((ino, rec)),
            other => Err(unexpected(other)),
        }
    }
    fn getattr(&self, ino: u64) -> Result<InodeRec, MetaError> {
        match self.call(&Request::Getattr { ino })? {
            Reply::Inode(rec) => Ok(rec),
            other => Err(unexpected(other)),
        }
    }
    fn access(&self, caller: &Caller, ino: u64, mask: u32) -> Result<(), MetaError> {
        self.call(&Request::Access {
            caller: *caller,
            ino,
            mask,
        })
        .map(|_| ())
    }
    fn setattr(
        &self,
        caller: &Caller,
        ino: u64,
        set: &SetAttr,
    ) -> Result<(InodeRec, Option<u64>), MetaError> {
        match self.call(&Request::Setattr {
            caller: *caller,
            ino,
            set: set.clone(),
        })? {
            Reply::Setattr { rec, old_size } => Ok((rec, old_size)),
            other => Err(unexpected(other)),
        }
    }
    fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: &[u8],
        open: bool,
    ) -> Result<(u64, InodeRec, Option<u64>), MetaError> {
        name_ok(name)?;
        if target.len() > crate::meta::schema::SYMLINK_LEN_MAX {
            return Err(MetaError::Errno(libc::ENAMETOOLONG));
        }
        let req = Request::Mknod {
            client: self.client,
            caller: *caller,
            parent,
            name: name.to_vec(),
            mode,
            rdev,
            target: target.to_vec(),
            open,
        };
        match self.call(&req)? {
            Reply::Created { ino, rec, handle } => Ok((ino, rec, handle)),
            other => Err(unexpected(other)),
        }
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>, MetaError> {
        match self.call(&Request::Readlink { ino })? {
            Reply::Bytes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }
    fn link(&self, caller: &Caller, ino: u64, newparent: u64, newname: &[u8]) -> Result<InodeRec, MetaError> {
        name_ok(newname)?;
        match self.call(&Request::Link {
            caller: *caller,
            ino,
            newparent,
            newname: newname.to_vec(),
        })? {
            Reply::Inode(rec) => Ok(rec),
            other => Err(unexpected(other)),
        }
    }
    fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<Option<Reclaim>, MetaError> {
        name_ok(name)?;
        match self.call(&Request::Unlink {
            caller: *caller,
            parent,
            name: name.to_vec(),
        })? {
            Reply::Reclaim(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
    fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(), MetaError> {
        name_ok(name)?;
        self.call(&Request::Rmdir {
            caller: *caller,
            parent,
            name: name.to_vec(),
        })
        .map(|_| ())
    }
    fn rename(
        &self,
        caller: &Caller,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<Option<Reclaim>, MetaError> {
        name_ok(oldname)?;
        name_ok(newname)?;
        let req = Request::Rename {
            caller: *caller,
            olddir,
            oldname: oldname.to_vec(),
            newdir,
            newname: newname.to_vec(),
            flags,
        };
        match self.call(&req)? {
            Reply::Reclaim(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
    fn open(&self, caller: &Caller, ino: u64, read: bool, write: bool) -> Result<(InodeRec, u64), MetaError> {
        match self.call(&Request::Open {
            client: self.client,
            caller: *caller,
            ino,
            read,
            write,
        })? {
            Reply::Opened { rec, handle } => Ok((rec, handle)),
            other => Err(unexpected(other)),
        }
    }
    fn release(&self, ino: u64, handle: u64) -> Result<Option<Reclaim>, MetaError> {
        match self.call(&Request::Release {
            client: self.client,
            ino,
            handle,
        })? {
            Reply::Reclaim(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
    fn note_write(&self, ino: u64, end: u64) -> Result<InodeRec, MetaError> {
        match self.call(&Request::NoteWrite { ino, end })? {
            Reply::Inode(rec) => Ok(rec),
            other => Err(unexpected(other)),
        }
    }
    fn opendir(&self, caller: &Caller, ino: u64) -> Result<(), MetaError> {
        self.call(&Request::Opendir { caller: *caller, ino }).map(|_| ())
    }
    fn readdir(&self, ino: u64, after: u64, limit: usize) -> Result<Vec<DirItem>, MetaError> {
        let limit = limit.clamp(1, proto::READDIR_LIMIT_MAX as usize) as u32;
        match self.call(&Request::Readdir { ino, after, limit })? {
            Reply::Items(items) => Ok(items),
            other => Err(unexpected(other)),
        }
    }
    fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), MetaError> {
        xattr_name_ok(name)?;
        if value.len() > crate::meta::schema::XATTR_VALUE_LEN_MAX {
            return Err(MetaError::Errno(libc::E2BIG));
        }
        let req = Request::Setxattr {
            caller: *caller,
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.call(&req).map(|_| ())
    }
    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        xattr_name_ok(name)?;
        match self.call(&Request::Getxattr {
            ino,
            name: name.to_vec(),
        })? {
            Reply::Bytes(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }
    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, MetaError> {
        match self.call(&Request::Listxattr { ino })? {
            Reply::Names(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }
    fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> Result<(), MetaError> {
        xattr_name_ok(name)?;
        self.call(&Request::Removexattr {
            caller: *caller,
            ino,
            name: name.to_vec(),
        })
        .map(|_| ())
    }
    fn usage(&self) -> Result<Usage, MetaError> {
        match self.call(&Request::Usage)? {
            Reply::Usage(u) => Ok(u),
            other => Err(unexpected(other)),
        }
    }
}
