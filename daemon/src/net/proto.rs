//! The metadata RPC: frames, requests and responses, and their encoding.
//!
//! A frame is a 4-byte little-endian length, then that many bytes of body
//! (at most [`FRAME_LEN_MAX`]). A request body is a version byte
//! ([`VERSION`]), an opcode byte and the opcode's fields; a response body is
//! a status byte (0: the value follows; 1: a 4-byte errno follows).
//! Integers are little-endian; byte strings (names, values, targets) are a
//! 4-byte length and the bytes, each bounded by the limit of what it is
//! (`NAME_LEN_MAX` for names, ...). Decoding checks every length and the
//! end of the body; anything that does not decode is answered with an
//! error response (`EPROTO`), never a panic. A length prefix over the limit
//! cannot be skipped safely, so the server answers it and closes that
//! connection only.

use std::io::{self, Read, Write};

use crate::meta::schema::{self, InodeRec, Timestamp};
use crate::meta::{Caller, DirItem, Reclaim, SetAttr, TimeSet, Usage};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Largest frame body, in bytes.
pub const FRAME_LEN_MAX: usize = 1 << 20;
/// Most readdir entries one request may ask for.
pub const READDIR_LIMIT_MAX: u32 = 4096;

/// Why a body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(pub String);

fn bad<T>(what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(what.into()))
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_LEN_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {FRAME_LEN_MAX}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    if body.len() > FRAME_LEN_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Encoder.
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).u64(v),
            None => self.u8(0),
        }
    }
    fn caller(&mut self, c: &Caller) -> &mut Self {
        self.u32(c.uid).u32(c.gid).u8(u8::from(c.check))
    }
    fn time(&mut self, t: Timestamp) -> &mut Self {
        self.u64(t.sec as u64).u32(t.nsec)
    }
    fn inode(&mut self, rec: &InodeRec) -> &mut Self {
        self.bytes(&rec.encode())
    }
    fn reclaim(&mut self, r: &Option<Reclaim>) -> &mut Self {
        match r {
            Some(r) => self
                .u8(1)
                .u64(r.ino)
                .u64(r.layout_id)
                .u32(r.chunk_size)
                .u64(r.size),
            None => self.u8(0),
        }
    }
}

/// Bounds-checked decoder.
#[derive(Debug)]
pub struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    /// A decoder over `body`.
    pub fn new(body: &'a [u8]) -> Dec<'a> {
        Dec(body)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return bad(format!("truncated: {n} bytes wanted, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => bad(format!("boolean byte {v}")),
        }
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    /// A byte string of at most `max` bytes.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return bad(format!("{what} of {len} bytes exceeds {max}"));
        }
        Ok(self.take(len)?.to_vec())
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.bool()? { Some(self.u64()?) } else { None })
    }
    fn caller(&mut self) -> Result<Caller, DecodeError> {
        Ok(Caller {
            uid: self.u32()?,
            gid: self.u32()?,
            check: self.bool()?,
        })
    }
    fn time(&mut self) -> Result<Timestamp, DecodeError> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return bad(format!("nanoseconds {nsec}"));
        }
        Ok(Timestamp { sec, nsec })
    }
    fn inode(&mut self) -> Result<InodeRec, DecodeError> {
        let bytes = self.bytes(256 + schema::SYMLINK_LEN_MAX, "inode")?;
        InodeRec::decode(&bytes).map_err(|e| DecodeError(e.to_string()))
    }
    fn reclaim(&mut self) -> Result<Option<Reclaim>, DecodeError> {
        Ok(if self.bool()? {
            Some(Reclaim {
                ino: self.u64()?,
                layout_id: self.u64()?,
                chunk_size: self.u32()?,
                size: self.u64()?,
            })
        } else {
            None
        })
    }
    /// Fails unless every byte was consumed.
    pub fn end(self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bad(format!("{} trailing bytes", self.0.len()))
        }
    }
}

// Names may arrive one byte too long so that the service, not the decoder,
// answers ENAMETOOLONG the way a local filesystem would.
const NAME_WIRE_MAX: usize = schema::NAME_LEN_MAX + 1;

/// A metadata request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    /// Register a new client; answered with its id.
    Hello,
    Heartbeat {
        client: u64,
    },
    Goodbye {
        client: u64,
    },
    ReapExpired {
        client: u64,
    },
    Lookup {
        client: u64,
        caller: Caller,
        parent: u64,
        name: Vec<u8>,
    },
    Getattr {
        ino: u64,
    },
    Access {
        caller: Caller,
        ino: u64,
        mask: u32,
    },
    Setattr {
        caller: Caller,
        ino: u64,
        set: SetAttr,
    },
    Mknod {
        client: u64,
        caller: Caller,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        rdev: u32,
        target: Vec<u8>,
        open: bool,
    },
    Readlink {
        ino: u64,
    },
    Link {
        caller: Caller,
        ino: u64,
        newparent: u64,
        newname: Vec<u8>,
    },
    Unlink {
        caller: Caller,
        parent: u64,
        name: Vec<u8>,
    },
    Rmdir {
        caller: Caller,
        parent: u64,
        name: Vec<u8>,
    },
    Rename {
        caller: Caller,
        olddir: u64,
        oldname: Vec<u8>,
        newdir: u64,
        newname: Vec<u8>,
        flags: u32,
    },
    Open {
        client: u64,
        caller: Caller,
        ino: u64,
        read: bool,
        write: bool,
    },
    Release {
        client: u64,
        ino: u64,
        handle: u64,
    },
    NoteWrite {
        ino: u64,
        end: u64,
    },
    Opendir {
        caller: Caller,
        ino: u64,
    },
    Readdir {
        ino: u64,
        after: u64,
        limit: u32,
    },
    Setxattr {
        caller: Caller,
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    Getxattr {
        ino: u64,
        name: Vec<u8>,
    },
    Listxattr {
        ino: u64,
    },
    Removexattr {
        caller: Caller,
        ino: u64,
        name: Vec<u8>,
    },
    Usage,
}

fn enc_timeset(e: &mut Enc, t: Option<TimeSet>) {
    match t {
        None => {
            e.u8(0);
        }
        Some(TimeSet::Now) => {
            e.u8(1);
        }
        Some(TimeSet::At(t)) => {
            e.u8(2).time(t);
        }
    }
}

fn dec_timeset(d: &mut Dec<'_>) -> Result<Option<TimeSet>, DecodeError> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(TimeSet::Now)),
        2 => Ok(Some(TimeSet::At(d.time()?))),
        v => bad(format!("time tag {v}")),
    }
}

fn enc_opt_u32(e: &mut Enc, v: Option<u32>) {
    match v {
        Some(v) => {
            e.u8(1).u32(v);
        }
        None => {
            e.u8(0);
        }
    }
}

fn dec_opt_u32(d: &mut Dec<'_>) -> Result<Option<u32>, DecodeError> {
    Ok(if d.bool()? { Some(d.u32()?) } else { None })
}

impl Request {
    /// Serializes the request as a frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u8(VERSION);
        match self {
            Request::Hello => {
                e.u8(1);
            }
            Request::Heartbeat { client } => {
                e.u8(2).u64(*client);
            }
            Request::Goodbye { client } => {
                e.u8(3).u64(*client);
            }
            Request::ReapExpired { client } => {
                e.u8(4).u64(*client);
            }
            Request::Lookup {
                client,
                caller,
                parent,
                name,
            } => {
                e.u8(5).u64(*client).caller(caller).u64(*parent).bytes(name);
            }
            Request::Getattr { ino } => {
                e.u8(6).u64(*ino);
            }
            Request::Access { caller, ino, mask } => {
                e.u8(7).caller(caller).u64(*ino).u32(*mask);
            }
            Request::Setattr { caller, ino, set } => {
                e.u8(8).caller(caller).u64(*ino);
                enc_opt_u32(&mut e, set.mode);
                enc_opt_u32(&mut e, set.uid);
                enc_opt_u32(&mut e, set.gid);
                e.opt_u64(set.size);
                enc_timeset(&mut e, set.atime);
                enc_timeset(&mut e, set.mtime);
                match set.ctime {
                    Some(t) => e.u8(1).time(t),
                    None => e.u8(0),
                };
            }
            Request::Mknod {
                client,
                caller,
                parent,
                name,
                mode,
                rdev,
                target,
                open,
            } => {
                e.u8(9)
                    .u64(*client)
                    .caller(caller)
                    .u64(*parent)
                    .bytes(name)
                    .u32(*mode)
                    .u32(*rdev)
                    .bytes(target)
                    .u8(u8::from(*open));
            }
            Request::Readlink { ino } => {
                e.u8(10).u64(*ino);
            }
            Request::Link {
                caller,
                ino,
                newparent,
                newname,
            } => {
                e.u8(11).caller(caller).u64(*ino).u64(*newparent).bytes(newname);
            }
            Request::Unlink { caller, parent, name } => {
                e.u8(12).caller(caller).u64(*parent).bytes(name);
            }
            Request::Rmdir { caller, parent, name } => {
                e.u8(13).caller(caller).u64(*parent).bytes(name);
            }
            Request::Rename {
                caller,
                olddir,
                oldname,
                newdir,
                newname,
                flags,
            } => {
                e.u8(14)
                    .caller(caller)
                    .u64(*olddir)
                    .bytes(oldname)
                    .u64(*newdir)
                    .bytes(newname)
                    .u32(*flags);
            }
            Request::Open {
                client,
                caller,
                ino,
                read,
                write,
            } => {
                e.u8(15)
                    .u64(*client)
                    .caller(caller)
                    .u64(*ino)
                    .u8(u8::from(*read))
                    .u8(u8::from(*write));
            }
            Request::Release { client, ino, handle } => {
                e.u8(16).u64(*client).u64(*ino).u64(*handle);
            }
            Request::NoteWrite { ino, end } => {
                e.u8(17).u64(*ino).u64(*end);
            }
            Request::Opendir { caller, ino } => {
                e.u8(18).caller(caller).u64(*ino);
            }
            Request::Readdir { ino, after, limit } => {
                e.u8(19).u64(*ino).u64(*after).u32(*limit);
            }
            Request::Setxattr {
                caller,
                ino,
                name,
                value,
                flags,
            } => {
                e.u8(20)
                    .caller(caller)
                    .u64(*ino)
                    .bytes(name)
                    .bytes(value)
                    .u32(*flags);
            }
            Request::Getxattr { ino, name } => {
                e.u8(21).u64(*ino).bytes(name);
            }
            Request::Listxattr { ino } => {
                e.u8(22).u64(*ino);
            }
            Request::Removexattr { caller, ino, name } => {
                e.u8(23).caller(caller).u64(*ino).bytes(name);
            }
            Request::Usage => {
                e.u8(24);
            }
        }
        e.0
    }

    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
        let mut d = Dec::new(body);
        let version = d.u8()?;
        if version != VERSION {
            return bad(format!(
                "protocol version {version}, this service speaks {VERSION}"
            ));
        }
        let name = |d: &mut Dec<'_>| d.bytes(NAME_WIRE_MAX, "name");
        let req = match d.u8()? {
            1 => Request::Hello,
            2 => Request::Heartbeat { client: d.u64()? },
            3 => Request::Goodbye { client: d.u64()? },
            4 => Request::ReapExpired { client: d.u64()? },
            5 => Request::Lookup {
                client: d.u64()?,
                caller: d.caller()?,
                parent: d.u64()?,
                name: name(&mut d)?,
            },
            6 => Request::Getattr { ino: d.u64()? },
            7 => Request::Access {
                caller: d.caller()?,
                ino: d.u64()?,
                mask: d.u32()?,
            },
            8 => {
                let caller = d.caller()?;
                let ino = d.u64()?;
                let set = SetAttr {
                    mode: dec_opt_u32(&mut d)?,
                    uid: dec_opt_u32(&mut d)?,
                    gid: dec_opt_u32(&mut d)?,
                    size: d.opt_u64()?,
                    atime: dec_timeset(&mut d)?,
                    mtime: dec_timeset(&mut d)?,
                    ctime: if d.bool()? { Some(d.time()?) } else { None },
                };
                Request::Setattr { caller, ino, set }
            }
            9 => Request::Mknod {
                client: d.u64()?,
                caller: d.caller()?,
                parent: d.u64()?,
                name: name(&mut d)?,
                mode: d.u32()?,
                rdev: d.u32()?,
                target: d.bytes(schema::SYMLINK_LEN_MAX + 1, "symlink target")?,
                open: d.bool()?,
            },
            10 => Request::Readlink { ino: d.u64()? },
            11 => Request::Link {
                caller: d.caller()?,
                ino: d.u64()?,
                newparent: d.u64()?,
                newname: name(&mut d)?,
            },
            12 => Request::Unlink {
                caller: d.caller()?,
                parent: d.u64()?,
                name: name(&mut d)?,
            },
            13 => Request::Rmdir {
                caller: d.caller()?,
                parent: d.u64()?,
                name: name(&mut d)?,
            },
            14 => Request::Rename {
                caller: d.caller()?,
                olddir: d.u64()?,
                oldname: name(&mut d)?,
                newdir: d.u64()?,
                newname: name(&mut d)?,
                flags: d.u32()?,
            },
            15 => Request::Open {
                client: d.u64()?,
                caller: d.caller()?,
                ino: d.u64()?,
                read: d.bool()?,
                write: d.bool()?,
            },
            16 => Request::Release {
                client: d.u64()?,
                ino: d.u64()?,
                handle: d.u64()?,
            },
            17 => Request::NoteWrite {
                ino: d.u64()?,
                end: d.u64()?,
            },
            18 => Request::Opendir {
                caller: d.caller()?,
                ino: d.u64()?,
            },
            19 => {
                let (ino, after, limit) = (d.u64()?, d.u64()?, d.u32()?);
                if limit == 0 || limit > READDIR_LIMIT_MAX {
                    return bad(format!("readdir limit {limit}"));
                }
                Request::Readdir { ino, after, limit }
            }
            20 => Request::Setxattr {
                caller: d.caller()?,
                ino: d.u64()?,
                name: name(&mut d)?,
                value: d.bytes(schema::XATTR_VALUE_LEN_MAX + 1, "xattr value")?,
                flags: d.u32()?,
            },
            21 => Request::Getxattr {
                ino: d.u64()?,
                name: name(&mut d)?,
            },
            22 => Request::Listxattr { ino: d.u64()? },
            23 => Request::Removexattr {
                caller: d.caller()?,
                ino: d.u64()?,
                name: name(&mut d)?,
            },
            24 => Request::Usage,
            op => return bad(format!("unknown opcode {op}")),
        };
        d.end()?;
        Ok(req)
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Reply {
    Unit,
    Client(u64),
    Entry {
        ino: u64,
        rec: InodeRec,
    },
    Inode(InodeRec),
    Setattr {
        rec: InodeRec,
        old_size: Option<u64>,
    },
    Created {
        ino: u64,
        rec: InodeRec,
        handle: Option<u64>,
    },
    Opened {
        rec: InodeRec,
        handle: u64,
    },
    Bytes(Vec<u8>),
    Reclaim(Option<Reclaim>),
    Reclaims(Vec<Reclaim>),
    Items(Vec<DirItem>),
    Names(Vec<Vec<u8>>),
    Usage(Usage),
}

/// Status byte of a response.
const STATUS_OK: u8 = 0;
const STATUS_ERR: u8 = 1;

/// Serializes a response: a reply or an errno.
pub fn encode_response(result: &Result<Reply, i32>) -> Vec<u8> {
    let mut e = Enc::default();
    match result {
        Err(errno) => {
            e.u8(STATUS_ERR).u32(*errno as u32);
        }
        Ok(reply) => {
            e.u8(STATUS_OK);
            match reply {
                Reply::Unit => {
                    e.u8(0);
                }
                Reply::Client(id) => {
                    e.u8(1).u64(*id);
                }
                Reply::Entry { ino, rec } => {
                    e.u8(2).u64(*ino).inode(rec);
                }
                Reply::Inode(rec) => {
                    e.u8(3).inode(rec);
                }
                Reply::Setattr { rec, old_size } => {
                    e.u8(4).inode(rec).opt_u64(*old_size);
                }
                Reply::Created { ino, rec, handle } => {
                    e.u8(5).u64(*ino).inode(rec).opt_u64(*handle);
                }
                Reply::Opened { rec, handle } => {
                    e.u8(6).inode(rec).u64(*handle);
                }
                Reply::Bytes(b) => {
                    e.u8(7).bytes(b);
                }
                Reply::Reclaim(r) => {
                    e.u8(8).reclaim(r);
                }
                Reply::Reclaims(rs) => {
                    e.u8(9).u32(rs.len() as u32);
                    for r in rs {
                        e.reclaim(&Some(*r));
                    }
                }
                Reply::Items(items) => {
                    e.u8(10).u32(items.len() as u32);
                    for i in items {
                        e.bytes(&i.name).u64(i.ino).u32(i.kind).u64(i.cookie);
                    }
                }
                Reply::Names(names) => {
                    e.u8(11).u32(names.len() as u32);
                    for n in names {
                        e.bytes(n);
                    }
                }
                Reply::Usage(u) => {
                    e.u8(12).u64(u.inodes).u64(u.bytes);
                }
            }
        }
    }
    e.0
}

/// Parses a response body.
pub fn decode_response(body: &[u8]) -> Result<Result<Reply, i32>, DecodeError> {
    let mut d = Dec::new(body);
    let result = match d.u8()? {
        STATUS_ERR => Err(d.u32()? as i32),
        STATUS_OK => Ok(match d.u8()? {
            0 => Reply::Unit,
            1 => Reply::Client(d.u64()?),
            2 => Reply::Entry {
                ino: d.u64()?,
                rec: d.inode()?,
            },
            3 => Reply::Inode(d.inode()?),
            4 => Reply::Setattr {
                rec: d.inode()?,
                old_size: d.opt_u64()?,
            },
            5 => Reply::Created {
                ino: d.u64()?,
                rec: d.inode()?,
                handle: d.opt_u64()?,
            },
            6 => Reply::Opened {
                rec: d.inode()?,
                handle: d.u64()?,
            },
            7 => Reply::Bytes(d.bytes(FRAME_LEN_MAX, "bytes")?),
            8 => Reply::Reclaim(d.reclaim()?),
            9 => {
                let n = d.u32()? as usize;
                let mut rs = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    rs.extend(d.reclaim()?);
                }
                Reply::Reclaims(rs)
            }
            10 => {
                let n = d.u32()? as usize;
                let mut items = Vec::with_capacity(n.min(READDIR_LIMIT_MAX as usize));
                for _ in 0..n {
                    items.push(DirItem {
                        name: d.bytes(schema::NAME_LEN_MAX, "name")?,
                        ino: d.u64()?,
                        kind: d.u32()?,
                        cookie: d.u64()?,
                    });
                }
                Reply::Items(items)
            }
            11 => {
                let n = d.u32()? as usize;
                let mut names = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    names.push(d.bytes(schema::NAME_LEN_MAX, "name")?);
                }
                Reply::Names(names)
            }
            12 => Reply::Usage(Usage {
                inodes: d.u64()?,
                bytes: d.u64()?,
            }),
            t => return bad(format!("reply tag {t}")),
        }),
        s => return bad(format!("status byte {s}")),
    };
    d.end()?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        let caller = Caller {
            uid: 1,
            gid: 2,
            check: true,
        };
        vec![
            Request::Hello,
            Request::Lookup {
                client: 3,
                caller,
                parent: 1,
                name: b"name".to_vec(),
            },
            Request::Setattr {
                caller,
                ino: 9,
                set: SetAttr {
                    mode: Some(0o644),
                    size: Some(5),
                    mtime: Some(TimeSet::At(Timestamp { sec: -3, nsec: 7 })),
                    atime: Some(TimeSet::Now),
                    ..SetAttr::default()
                },
            },
            Request::Mknod {
                client: 1,
                caller,
                parent: 1,
                name: b"l".to_vec(),
                mode: libc::S_IFLNK,
                rdev: 0,
                target: b"t".to_vec(),
                open: false,
            },
            Request::Rename {
                caller,
                olddir: 1,
                oldname: b"a".to_vec(),
                newdir: 2,
                newname: b"b".to_vec(),
                flags: 2,
            },
            Request::Readdir {
                ino: 1,
                after: 7,
                limit: 128,
            },
            Request::Setxattr {
                caller,
                ino: 1,
                name: b"user.a".to_vec(),
                value: vec![0; 10],
                flags: 1,
            },
            Request::Usage,
        ]
    }

    #[test]
    fn requests_round_trip_and_every_truncation_is_refused() {
        for req in requests() {
            let body = req.encode();
            assert_eq!(Request::decode(&body).unwrap(), req);
            for len in 0..body.len() {
                assert!(
                    Request::decode(&body[..len]).is_err(),
                    "{req:?} truncated to {len}"
                );
            }
            let mut longer = body.clone();
            longer.push(0);
            assert!(Request::decode(&longer).is_err(), "trailing byte after {req:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let mut body: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            if body.len() > 1 {
                body[0] = VERSION;
            }
            let _ = Request::decode(&body);
            let _ = decode_response(&body);
        }
        assert!(Request::decode(&[VERSION, 200]).is_err());
        assert!(Request::decode(&[9, 1]).is_err(), "wrong version");
        // A name length field claiming 4 GiB is refused without allocating.
        let mut huge = vec![VERSION, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Request::decode(&huge).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let rec = InodeRec::decode(
            &InodeRec {
                mode: libc::S_IFREG | 0o600,
                uid: 0,
                gid: 0,
                nlink: 1,
                size: 0,
                rdev: 0,
                atime: Timestamp::default(),
                mtime: Timestamp::default(),
                ctime: Timestamp::default(),
                parent: 0,
                entries: 0,
                cookie_next: 0,
                chunk_size: 4096,
                layout_id: 5,
                xattrs: 0,
                target: Vec::new(),
            }
            .encode(),
        )
        .unwrap();
        for r in [
            Err(libc::ENOENT),
            Ok(Reply::Created {
                ino: 5,
                rec: rec.clone(),
                handle: Some(3),
            }),
            Ok(Reply::Items(vec![DirItem {
                name: b"x".to_vec(),
                ino: 2,
                kind: libc::S_IFDIR,
                cookie: 3,
            }])),
            Ok(Reply::Reclaim(Some(Reclaim {
                ino: 1,
                layout_id: 1,
                chunk_size: 4096,
                size: 9,
            }))),
            Ok(Reply::Usage(Usage { inodes: 3, bytes: 4 })),
        ] {
            let body = encode_response(&r);
            assert_eq!(decode_response(&body).unwrap(), r);
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&((FRAME_LEN_MAX as u32) + 1).to_le_bytes());
        let err = read_frame(&mut &wire[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut ok = Vec::new();
        write_frame(&mut ok, b"abc").unwrap();
        assert_eq!(read_frame(&mut &ok[..]).unwrap().unwrap(), b"abc");
        assert!(read_frame(&mut &ok[..5]).is_err(), "truncated body");
        assert!(read_frame(&mut &[][..]).unwrap().is_none(), "clean end");
    }
}
