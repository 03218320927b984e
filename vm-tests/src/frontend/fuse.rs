//! FUSE requests as a Linux guest's virtio-fs driver builds them (one
//! buffer per argument), and replies parsed and checked with kmod-shim's
//! ABI types: a reply is bytes from another process, validated before use.

use kmod_shim::abi::{
    AttrOut, CreateIn, DirentPlus, EntryOut, FlushIn, ForgetIn, GetattrIn, GetxattrIn, GetxattrOut, InHeader,
    InitIn, InitOut, LinkIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn,
    RenameIn, SetattrIn,
};
use zerocopy::{FromBytes, IntoBytes};

/// Bytes of `fuse_in_header`.
pub const IN_HEADER_BYTES: usize = size_of::<InHeader>();
/// Bytes of `fuse_out_header`.
pub const OUT_HEADER_BYTES: usize = size_of::<OutHeader>();
/// The kernel's READDIRPLUS buffer (one page).
pub const READDIR_BYTES: u32 = 4096;
/// The kernel's O_LARGEFILE (x86-64; glibc defines it as 0 there), which
/// the kernel adds to every open of a 64-bit process.
pub const KERNEL_O_LARGEFILE: u32 = 0o100000;
/// Longest name the replay sends or accepts in a directory entry.
pub const NAME_MAX_BYTES: usize = 255;

/// One request: the header's fields and each argument as its own buffer
/// (the guest driver makes one descriptor of each), and the sizes of the
/// reply's arguments after `fuse_out_header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The opcode.
    pub opcode: Opcode,
    /// The inode the request is about.
    pub nodeid: u64,
    /// The arguments, in order.
    pub args: Vec<Vec<u8>>,
    /// Reply argument sizes (empty: only an out header; FORGET has no reply at all).
    pub out_bytes: Vec<u32>,
}

fn name_arg(name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v
}

impl Request {
    /// Whether the device answers (all but FORGET and BATCH_FORGET).
    pub fn expects_reply(&self) -> bool {
        !matches!(self.opcode, Opcode::Forget | Opcode::BatchForget)
    }

    /// The header and arguments as the guest writes them: `fuse_in_header`
    /// first, then each argument; `unique` identifies the request, which
    /// guest root sends.
    pub fn encode(&self, unique: u64) -> Vec<Vec<u8>> {
        self.encode_as(unique, Caller::ROOT)
    }

    /// [`Request::encode`] for a request made by `caller`.
    pub fn encode_as(&self, unique: u64, caller: Caller) -> Vec<Vec<u8>> {
        let args_len: usize = self.args.iter().map(Vec::len).sum();
        let header = InHeader {
            len: (IN_HEADER_BYTES + args_len) as u32,
            opcode: self.opcode as u32,
            unique,
            nodeid: self.nodeid,
            uid: caller.uid,
            gid: caller.gid,
            pid: 1,
            total_extlen: 0,
            padding: 0,
        };
        let mut parts = Vec::with_capacity(1 + self.args.len());
        parts.push(header.as_bytes().to_vec());
        parts.extend(self.args.iter().cloned());
        parts
    }

    /// INIT.
    pub fn init(init: &InitIn) -> Request {
        Request {
            opcode: Opcode::Init,
            nodeid: 0,
            args: vec![init.as_bytes().to_vec()],
            out_bytes: vec![size_of::<InitOut>() as u32],
        }
    }

    /// LOOKUP of `name` in `parent`.
    pub fn lookup(parent: u64, name: &str) -> Request {
        Request {
            opcode: Opcode::Lookup,
            nodeid: parent,
            args: vec![name_arg(name)],
            out_bytes: vec![size_of::<EntryOut>() as u32],
        }
    }

    /// MKNOD of a regular file.
    pub fn mknod(parent: u64, name: &str, mode: u32, umask: u32) -> Request {
        let arg = MknodIn {
            mode,
            rdev: 0,
            umask,
            padding: 0,
        };
        Request {
            opcode: Opcode::Mknod,
            nodeid: parent,
            args: vec![arg.as_bytes().to_vec(), name_arg(name)],
            out_bytes: vec![size_of::<EntryOut>() as u32],
        }
    }

    /// MKDIR.
    pub fn mkdir(parent: u64, name: &str, mode: u32, umask: u32) -> Request {
        let arg = MkdirIn { mode, umask };
        Request {
            opcode: Opcode::Mkdir,
            nodeid: parent,
            args: vec![arg.as_bytes().to_vec(), name_arg(name)],
            out_bytes: vec![size_of::<EntryOut>() as u32],
        }
    }

    /// CREATE (open with O_CREAT).
    pub fn create(parent: u64, name: &str, flags: u32, mode: u32, umask: u32) -> Request {
        let arg = CreateIn {
            flags,
            mode,
            umask,
            open_flags: 0,
        };
        Request {
            opcode: Opcode::Create,
            nodeid: parent,
            args: vec![arg.as_bytes().to_vec(), name_arg(name)],
            out_bytes: vec![size_of::<EntryOut>() as u32, size_of::<OpenOut>() as u32],
        }
    }

    /// FLUSH (close of a file descriptor).
    pub fn flush(nodeid: u64, fh: u64, lock_owner: u64) -> Request {
        let arg = FlushIn {
            fh,
            unused: 0,
            padding: 0,
            lock_owner,
        };
        Request {
            opcode: Opcode::Flush,
            nodeid,
            args: vec![arg.as_bytes().to_vec()],
            out_bytes: vec![],
        }
    }

    /// RELEASE or RELEASEDIR of `fh`, opened with `flags`.
    pub fn release(opcode: Opcode, nodeid: u64, fh: u64, flags: u32) -> Request {
        let arg = ReleaseIn {
            fh,
            flags,
            release_flags: 0,
            lock_owner: 0,
        };
        Request {
            opcode,
            nodeid,
            args: vec![arg.as_bytes().to_vec()],
            out_bytes: vec![],
        }
    }

    /// GETATTR without a file handle (stat of a path).
    pub fn getattr(nodeid: u64) -> Request {
        Request {
            opcode: Opcode::Getattr,
            nodeid,
            args: vec![GetattrIn::default().as_bytes().to_vec()],
            out_bytes: vec![size_of::<AttrOut>() as u32],
        }
    }

    /// OPENDIR.
    pub fn opendir(nodeid: u64, flags: u32) -> Request {
        let arg = OpenIn { flags, open_flags: 0 };
        Request {
            opcode: Opcode::Opendir,
            nodeid,
            args: vec![arg.as_bytes().to_vec()],
            out_bytes: vec![size_of::<OpenOut>() as u32],
        }
    }

    /// READDIRPLUS of one page from `offset`.
    pub fn readdirplus(nodeid: u64, fh: u64, offset: u64, flags: u32) -> Request {
        let arg = ReadIn {
            fh,
            offset,
            size: READDIR_BYTES,
            read_flags: 0,
            lock_owner: 0,
            flags,
            padding: 0,
        };
        Request {
            opcode: Opcode::Readdirplus,
            nodeid,
            args: vec![arg.as_bytes().to_vec()],
            out_bytes: vec![READDIR_BYTES],
        }
    }

    /// RENAME (no flags, as rename(2) sends it).
    pub fn rename(parent: u64, old: &str, new_parent: u64, new: &str) -> Request {
        let arg = RenameIn { newdir: new_parent };
        Request {
            opcode: Opcode::Rename,
            nodeid: parent,
            args: vec![arg.as_bytes().to_vec(), name_arg(old), name_arg(new)],
            out_bytes: vec![],
        }
    }

    /// LINK of inode `old` as `name` in `new_parent`.
    pub fn link(old: u64, new_parent: u64, name: &str) -> Request {
        let arg = LinkIn { oldnodeid: old };
        Request {
            opcode: Opcode::Link,
            nodeid: new_parent,
            args: vec![arg.as_bytes().to_vec(), name_arg(name)],
            out_bytes: vec![size_of::<EntryOut>() as u32],
        }
    }

    /// UNLINK.
    pub fn unlink(parent: u64, name: &str) -> Request {
        Request {
            opcode: Opcode::Unlink,
            nodeid: parent,
            args: vec![name_arg(name)],
            out_bytes: vec![],
        }
    }

    /// SETATTR of the attributes `arg.valid` names (`fattr` bits).
    pub fn setattr(nodeid: u64, arg: &SetattrIn) -> Request {
        Request {
            opcode: Opcode::Setattr,
            nodeid,
            args: vec![arg.as_bytes().to_vec()],
            out_bytes: vec![size_of::<AttrOut>() as u32],
        }
    }

    /// SETXATTR (the 8-byte argument of a kernel without
    /// FUSE_SETXATTR_EXT: size and flags).
    pub fn setxattr(nodeid: u64, name: &str, value: &[u8], flags: u32) -> Request {
        let mut fixed = (value.len() as u32).to_ne_bytes().to_vec();
        fixed.extend_from_slice(&flags.to_ne_bytes());
        Request {
            opcode: Opcode::Setxattr,
            nodeid,
            args: vec![fixed, name_arg(name), value.to_vec()],
            out_bytes: vec![],
        }
    }

    /// GETXATTR of at most `size` bytes (0: the value's size only).
    pub fn getxattr(nodeid: u64, name: &str, size: u32) -> Request {
        let arg = GetxattrIn { size, padding: 0 };
        let out = if size == 0 {
            size_of::<GetxattrOut>() as u32
        } else {
            size
        };
        Request {
            opcode: Opcode::Getxattr,
            nodeid,
            args: vec![arg.as_bytes().to_vec(), name_arg(name)],
            out_bytes: vec![out],
        }
    }

    /// FORGET (high-priority queue, no reply).
    pub fn forget(nodeid: u64, nlookup: u64) -> Request {
        Request {
            opcode: Opcode::Forget,
            nodeid,
            args: vec![ForgetIn { nlookup }.as_bytes().to_vec()],
            out_bytes: vec![],
        }
    }

    /// DESTROY (unmount).
    pub fn destroy() -> Request {
        Request {
            opcode: Opcode::Destroy,
            nodeid: 0,
            args: vec![],
            out_bytes: vec![],
        }
    }
}

/// Who makes a request: the ids in its `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Caller {
    /// Guest root, and the guest kernel's own requests.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// A reply that passed the header checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 0 or a negated errno.
    pub error: i32,
    /// The bytes after the out header.
    pub body: Vec<u8>,
}

/// Checks the out header of `raw` (the `used_len` bytes the device said it
/// wrote) against the request it answers.
pub fn parse_reply(raw: &[u8], unique: u64, room: usize) -> Result<Reply, String> {
    let Ok((header, body)) = OutHeader::read_from_prefix(raw) else {
        return Err(format!("{} bytes, shorter than an out header", raw.len()));
    };
    if header.unique != unique {
        return Err(format!("answers unique {}, not {unique}", header.unique));
    }
    if header.len as usize != raw.len() {
        return Err(format!(
            "out header says {} bytes, the used ring {}",
            header.len,
            raw.len()
        ));
    }
    if raw.len() > room {
        return Err(format!("{} bytes written, the guest offered {room}", raw.len()));
    }
    if header.error > 0 || header.error < -4095 {
        return Err(format!(
            "error field {} is not 0 or a negated errno",
            header.error
        ));
    }
    if header.error != 0 && !body.is_empty() {
        return Err(format!(
            "error {} with {} bytes of body",
            header.error,
            body.len()
        ));
    }
    Ok(Reply {
        error: header.error,
        body: body.to_vec(),
    })
}

/// `body` as exactly one `T` (the kernel refuses a fixed-size reply of
/// another length).
pub fn exact<T: FromBytes>(body: &[u8], what: &str) -> Result<T, String> {
    T::read_from_bytes(body).map_err(|_| format!("{what}: {} bytes, expected {}", body.len(), size_of::<T>()))
}

/// Parses an INIT reply: at least the 7.23 layout (24 bytes), at most ours.
pub fn init_out(body: &[u8]) -> Result<InitOut, String> {
    const COMPAT_BYTES: usize = 24;
    if body.len() < COMPAT_BYTES || body.len() > size_of::<InitOut>() {
        return Err(format!("INIT reply of {} bytes", body.len()));
    }
    let mut full = [0u8; size_of::<InitOut>()];
    full[..body.len()].copy_from_slice(body);
    InitOut::read_from_bytes(&full[..]).map_err(|_| "INIT reply".to_string())
}

/// One entry of a READDIRPLUS reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// The entry (nodeid 0: the server gave no lookup reference).
    pub entry: EntryOut,
    /// The directory offset after this entry.
    pub off: u64,
    /// `d_ino`.
    pub ino: u64,
}

/// Parses a READDIRPLUS reply into its entries.
pub fn direntplus(body: &[u8]) -> Result<Vec<DirEntry>, String> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Ok((fixed, tail)) = DirentPlus::read_from_prefix(rest) else {
            return Err(format!("{} bytes left, shorter than a direntplus", rest.len()));
        };
        let namelen = fixed.dirent.namelen as usize;
        if namelen == 0 || namelen > NAME_MAX_BYTES {
            return Err(format!("name length {namelen}"));
        }
        let record = kmod_shim::abi::dirent_align(size_of::<DirentPlus>() + namelen);
        if record > rest.len() {
            return Err(format!("record of {record} bytes, {} left", rest.len()));
        }
        let name = &tail[..namelen];
        if name.contains(&0) || name.contains(&b'/') {
            return Err(format!(
                "name {:?} holds NUL or '/'",
                String::from_utf8_lossy(name)
            ));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| "a name is not UTF-8".to_string())?;
        out.push(DirEntry {
            name,
            entry: fixed.entry_out,
            off: fixed.dirent.off,
            ino: fixed.dirent.ino,
        });
        rest = &rest[record..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_shim::abi::Dirent;

    fn header(len: u32, error: i32, unique: u64) -> Vec<u8> {
        OutHeader { len, error, unique }.as_bytes().to_vec()
    }

    #[test]
    fn requests_carry_their_length_and_one_buffer_per_argument() {
        let parts = Request::rename(5, "a", 6, "bb").encode(9);
        assert_eq!(parts.len(), 4);
        let (h, _) = InHeader::read_from_prefix(&parts[0]).unwrap();
        assert_eq!((h.len, h.opcode, h.unique, h.nodeid), (40 + 8 + 2 + 3, 12, 9, 5));
        assert_eq!(parts[3], b"bb\0");
        assert!(!Request::forget(3, 1).expects_reply());
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(parse_reply(&[0u8; 8], 1, 64).is_err());
        assert!(parse_reply(&header(16, 0, 2), 1, 64).is_err(), "wrong unique");
        assert!(parse_reply(&header(20, 0, 1), 1, 64).is_err(), "length mismatch");
        assert!(parse_reply(&header(16, 5, 1), 1, 64).is_err(), "positive error");
        let mut with_body = header(20, -2, 1);
        with_body.extend_from_slice(&[0; 4]);
        assert!(parse_reply(&with_body, 1, 64).is_err(), "error with a body");
        assert!(
            parse_reply(&header(16, 0, 1), 1, 8).is_err(),
            "more than the room"
        );
        let ok = parse_reply(&header(16, -2, 1), 1, 64).unwrap();
        assert_eq!((ok.error, ok.body.len()), (-2, 0));
        assert!(exact::<EntryOut>(&[0u8; 127], "entry").is_err());
    }

    #[test]
    fn direntplus_records_are_walked_and_checked() {
        let record = |name: &str, off: u64| {
            let mut v = DirentPlus {
                entry_out: EntryOut {
                    nodeid: 7,
                    ..Default::default()
                },
                dirent: Dirent {
                    ino: 70,
                    off,
                    namelen: name.len() as u32,
                    type_: 8,
                },
            }
            .as_bytes()
            .to_vec();
            v.extend_from_slice(name.as_bytes());
            v.resize(kmod_shim::abi::dirent_align(v.len()), 0);
            v
        };
        let mut body = record("f1", 1);
        body.extend(record("sub", 2));
        let entries = direntplus(&body).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[1].name.as_str(), entries[1].off, entries[1].ino),
            ("sub", 2, 70)
        );
        assert!(direntplus(&body[..body.len() - 8]).is_err(), "cut record");
        let mut bad = record("x/y", 1);
        assert!(direntplus(&bad).is_err());
        bad = record("ok", 1);
        bad[size_of::<EntryOut>() + 16..size_of::<EntryOut>() + 20].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(direntplus(&bad).is_err(), "name length past the record");
    }
}
