//! The FUSE kernel uAPI, protocol 7.45 (`include/uapi/linux/fuse.h`, Linux 6.18).
//!
//! Every struct is `#[repr(C)]` and derives zerocopy's traits, so requests are
//! parsed by checked casts and replies are serialised by `as_bytes()`; nothing
//! is hand-cast. Each struct carries a compile-time size assertion against the
//! value the kernel header gives, and the tests cross-check every struct's
//! size, every field's offset and every flag, constant and opcode value
//! against the C header installed on the machine (`<linux/fuse.h>`).
//!
//! Names follow the kernel's, in Rust case: `struct fuse_entry_out` is
//! [`EntryOut`], `FUSE_LOOKUP` is [`Opcode::Lookup`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The newest protocol minor version we speak.
pub const KERNEL_MINOR_VERSION: u32 = 45;
/// The oldest protocol minor version we accept from a kernel.
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;
/// The node id of the root inode.
pub const ROOT_ID: u64 = 1;
/// The smallest read buffer the kernel accepts for /dev/fuse reads.
pub const MIN_READ_BUFFER: usize = 8192;
/// Marks a request the kernel re-sent after `FUSE_NOTIFY_RESEND`.
pub const UNIQUE_RESEND: u64 = 1 << 63;
/// A uid/gid the kernel could not map into the server's namespace.
pub const INVALID_UIDGID: u32 = u32::MAX;

/// Asserts at compile time that a kernel struct has the header's size.
macro_rules! abi_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(::core::mem::size_of::<$t>() == $n);
    };
}

/// Request opcodes (`enum fuse_opcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum Opcode {
    Lookup = 1,
    Forget = 2,
    Getattr = 3,
    Setattr = 4,
    Readlink = 5,
    Symlink = 6,
    Mknod = 8,
    Mkdir = 9,
    Unlink = 10,
    Rmdir = 11,
    Rename = 12,
    Link = 13,
    Open = 14,
    Read = 15,
    Write = 16,
    Statfs = 17,
    Release = 18,
    Fsync = 20,
    Setxattr = 21,
    Getxattr = 22,
    Listxattr = 23,
    Removexattr = 24,
    Flush = 25,
    Init = 26,
    Opendir = 27,
    Readdir = 28,
    Releasedir = 29,
    Fsyncdir = 30,
    Getlk = 31,
    Setlk = 32,
    Setlkw = 33,
    Access = 34,
    Create = 35,
    Interrupt = 36,
    Bmap = 37,
    Destroy = 38,
    Ioctl = 39,
    Poll = 40,
    NotifyReply = 41,
    BatchForget = 42,
    Fallocate = 43,
    Readdirplus = 44,
    Rename2 = 45,
    Lseek = 46,
    CopyFileRange = 47,
    Setupmapping = 48,
    Removemapping = 49,
    Syncfs = 50,
    Tmpfile = 51,
    Statx = 52,
    CopyFileRange64 = 53,
    CuseInit = 4096,
}

impl Opcode {
    /// Every opcode, in numeric order (for counters and tests).
    pub const ALL: [Opcode; 52] = [
        Opcode::Lookup,
        Opcode::Forget,
        Opcode::Getattr,
        Opcode::Setattr,
        Opcode::Readlink,
        Opcode::Symlink,
        Opcode::Mknod,
        Opcode::Mkdir,
        Opcode::Unlink,
        Opcode::Rmdir,
        Opcode::Rename,
        Opcode::Link,
        Opcode::Open,
        Opcode::Read,
        Opcode::Write,
        Opcode::Statfs,
        Opcode::Release,
        Opcode::Fsync,
        Opcode::Setxattr,
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Removexattr,
        Opcode::Flush,
        Opcode::Init,
        Opcode::Opendir,
        Opcode::Readdir,
        Opcode::Releasedir,
        Opcode::Fsyncdir,
        Opcode::Getlk,
        Opcode::Setlk,
        Opcode::Setlkw,
        Opcode::Access,
        Opcode::Create,
        Opcode::Interrupt,
        Opcode::Bmap,
        Opcode::Destroy,
        Opcode::Ioctl,
        Opcode::Poll,
        Opcode::NotifyReply,
        Opcode::BatchForget,
        Opcode::Fallocate,
        Opcode::Readdirplus,
        Opcode::Rename2,
        Opcode::Lseek,
        Opcode::CopyFileRange,
        Opcode::Setupmapping,
        Opcode::Removemapping,
        Opcode::Syncfs,
        Opcode::Tmpfile,
        Opcode::Statx,
        Opcode::CopyFileRange64,
        Opcode::CuseInit,
    ];

    /// Decodes a raw opcode; `None` for values the protocol does not define.
    pub fn from_raw(raw: u32) -> Option<Opcode> {
        Self::ALL.iter().copied().find(|op| *op as u32 == raw)
    }

    /// The kernel's name for the opcode, without the `FUSE_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Lookup => "LOOKUP",
            Opcode::Forget => "FORGET",
            Opcode::Getattr => "GETATTR",
            Opcode::Setattr => "SETATTR",
            Opcode::Readlink => "READLINK",
            Opcode::Symlink => "SYMLINK",
            Opcode::Mknod => "MKNOD",
            Opcode::Mkdir => "MKDIR",
            Opcode::Unlink => "UNLINK",
            Opcode::Rmdir => "RMDIR",
            Opcode::Rename => "RENAME",
            Opcode::Link => "LINK",
            Opcode::Open => "OPEN",
            Opcode::Read => "READ",
            Opcode::Write => "WRITE",
            Opcode::Statfs => "STATFS",
            Opcode::Release => "RELEASE",
            Opcode::Fsync => "FSYNC",
            Opcode::Setxattr => "SETXATTR",
            Opcode::Getxattr => "GETXATTR",
            Opcode::Listxattr => "LISTXATTR",
            Opcode::Removexattr => "REMOVEXATTR",
            Opcode::Flush => "FLUSH",
            Opcode::Init => "INIT",
            Opcode::Opendir => "OPENDIR",
            Opcode::Readdir => "READDIR",
            Opcode::Releasedir => "RELEASEDIR",
            Opcode::Fsyncdir => "FSYNCDIR",
            Opcode::Getlk => "GETLK",
            Opcode::Setlk => "SETLK",
            Opcode::Setlkw => "SETLKW",
            Opcode::Access => "ACCESS",
            Opcode::Create => "CREATE",
            Opcode::Interrupt => "INTERRUPT",
            Opcode::Bmap => "BMAP",
            Opcode::Destroy => "DESTROY",
            Opcode::Ioctl => "IOCTL",
            Opcode::Poll => "POLL",
            Opcode::NotifyReply => "NOTIFY_REPLY",
            Opcode::BatchForget => "BATCH_FORGET",
            Opcode::Fallocate => "FALLOCATE",
            Opcode::Readdirplus => "READDIRPLUS",
            Opcode::Rename2 => "RENAME2",
            Opcode::Lseek => "LSEEK",
            Opcode::CopyFileRange => "COPY_FILE_RANGE",
            Opcode::Setupmapping => "SETUPMAPPING",
            Opcode::Removemapping => "REMOVEMAPPING",
            Opcode::Syncfs => "SYNCFS",
            Opcode::Tmpfile => "TMPFILE",
            Opcode::Statx => "STATX",
            Opcode::CopyFileRange64 => "COPY_FILE_RANGE_64",
            Opcode::CuseInit => "CUSE_INIT",
        }
    }
}

/// Codes of notifications the server sends unasked (`enum fuse_notify_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum NotifyCode {
    Poll = 1,
    InvalInode = 2,
    InvalEntry = 3,
    Store = 4,
    Retrieve = 5,
    Delete = 6,
    Resend = 7,
    IncEpoch = 8,
    Prune = 9,
}

/// INIT flags, as one 64-bit set: bits 32..63 travel in `flags2`.
pub mod init_flags {
    #![allow(missing_docs)]
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const FILE_OPS: u64 = 1 << 2;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const EXPORT_SUPPORT: u64 = 1 << 4;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const SPLICE_WRITE: u64 = 1 << 7;
    pub const SPLICE_MOVE: u64 = 1 << 8;
    pub const SPLICE_READ: u64 = 1 << 9;
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    pub const HAS_IOCTL_DIR: u64 = 1 << 11;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const NO_OPEN_SUPPORT: u64 = 1 << 17;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const HANDLE_KILLPRIV: u64 = 1 << 19;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const ABORT_ERROR: u64 = 1 << 21;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const EXPLICIT_INVAL_DATA: u64 = 1 << 25;
    pub const MAP_ALIGNMENT: u64 = 1 << 26;
    pub const SUBMOUNTS: u64 = 1 << 27;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const SETXATTR_EXT: u64 = 1 << 29;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const INIT_RESERVED: u64 = 1 << 31;
    pub const SECURITY_CTX: u64 = 1 << 32;
    pub const HAS_INODE_DAX: u64 = 1 << 33;
    pub const CREATE_SUPP_GROUP: u64 = 1 << 34;
    pub const HAS_EXPIRE_ONLY: u64 = 1 << 35;
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const NO_EXPORT_SUPPORT: u64 = 1 << 38;
    pub const HAS_RESEND: u64 = 1 << 39;
    pub const ALLOW_IDMAP: u64 = 1 << 40;
    pub const OVER_IO_URING: u64 = 1 << 41;
    pub const REQUEST_TIMEOUT: u64 = 1 << 42;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    #![allow(missing_docs)]
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_open_out.open_flags` bits.
pub mod fopen {
    #![allow(missing_docs)]
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NONSEEKABLE: u32 = 1 << 2;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const STREAM: u32 = 1 << 4;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// Flags of individual requests.
pub mod req_flags {
    #![allow(missing_docs)]
    pub const RELEASE_FLUSH: u32 = 1 << 0;
    pub const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
    pub const GETATTR_FH: u32 = 1 << 0;
    pub const LK_FLOCK: u32 = 1 << 0;
    pub const WRITE_CACHE: u32 = 1 << 0;
    pub const WRITE_LOCKOWNER: u32 = 1 << 1;
    pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
    pub const READ_LOCKOWNER: u32 = 1 << 1;
    pub const FSYNC_FDATASYNC: u32 = 1 << 0;
    pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
    pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
    pub const EXPIRE_ONLY: u32 = 1 << 0;
    pub const IOCTL_COMPAT: u32 = 1 << 0;
    pub const IOCTL_UNRESTRICTED: u32 = 1 << 1;
    pub const IOCTL_RETRY: u32 = 1 << 2;
    pub const IOCTL_32BIT: u32 = 1 << 3;
    pub const IOCTL_DIR: u32 = 1 << 4;
    pub const IOCTL_COMPAT_X32: u32 = 1 << 5;
    pub const IOCTL_MAX_IOV: u32 = 256;
    pub const POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;
    pub const ATTR_SUBMOUNT: u32 = 1 << 0;
    pub const ATTR_DAX: u32 = 1 << 1;
}

/// `struct fuse_attr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}
abi_size!(Attr, 88);

/// `struct fuse_sx_time`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct SxTime {
    pub tv_sec: i64,
    pub tv_nsec: u32,
    pub reserved: i32,
}
abi_size!(SxTime, 16);

/// `struct fuse_statx`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct Statx {
    pub mask: u32,
    pub blksize: u32,
    pub attributes: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub spare0: [u16; 1],
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub attributes_mask: u64,
    pub atime: SxTime,
    pub btime: SxTime,
    pub ctime: SxTime,
    pub mtime: SxTime,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub spare2: [u64; 14],
}
abi_size!(Statx, 256);

/// `struct fuse_kstatfs`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}
abi_size!(Kstatfs, 80);

/// `struct fuse_file_lock`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct FileLock {
    pub start: u64,
    pub end: u64,
    pub type_: u32,
    pub pid: u32,
}
abi_size!(FileLock, 24);

/// `struct fuse_entry_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}
abi_size!(EntryOut, 128);

/// `struct fuse_forget_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct ForgetIn {
    pub nlookup: u64,
}
abi_size!(ForgetIn, 8);

/// `struct fuse_forget_one`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct ForgetOne {
    pub nodeid: u64,
    pub nlookup: u64,
}
abi_size!(ForgetOne, 16);

/// `struct fuse_batch_forget_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct BatchForgetIn {
    pub count: u32,
    pub dummy: u32,
}
abi_size!(BatchForgetIn, 8);

/// `struct fuse_getattr_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct GetattrIn {
    pub getattr_flags: u32,
    pub dummy: u32,
    pub fh: u64,
}
abi_size!(GetattrIn, 16);

/// `struct fuse_attr_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}
abi_size!(AttrOut, 104);

/// `struct fuse_statx_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct StatxIn {
    pub getattr_flags: u32,
    pub reserved: u32,
    pub fh: u64,
    pub sx_flags: u32,
    pub sx_mask: u32,
}
abi_size!(StatxIn, 24);

/// `struct fuse_statx_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct StatxOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub flags: u32,
    pub spare: [u64; 2],
    pub stat: Statx,
}
abi_size!(StatxOut, 288);

/// `struct fuse_mknod_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct MknodIn {
    pub mode: u32,
    pub rdev: u32,
    pub umask: u32,
    pub padding: u32,
}
abi_size!(MknodIn, 16);

/// `struct fuse_mkdir_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct MkdirIn {
    pub mode: u32,
    pub umask: u32,
}
abi_size!(MkdirIn, 8);

/// `struct fuse_rename_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct RenameIn {
    pub newdir: u64,
}
abi_size!(RenameIn, 8);

/// `struct fuse_rename2_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct Rename2In {
    pub newdir: u64,
    pub flags: u32,
    pub padding: u32,
}
abi_size!(Rename2In, 16);

/// `struct fuse_link_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct LinkIn {
    pub oldnodeid: u64,
}
abi_size!(LinkIn, 8);

/// `struct fuse_setattr_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct SetattrIn {
    pub valid: u32,
    pub padding: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub unused4: u32,
    pub uid: u32,
    pub gid: u32,
    pub unused5: u32,
}
abi_size!(SetattrIn, 88);

/// `struct fuse_open_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct OpenIn {
    pub flags: u32,
    pub open_flags: u32,
}
abi_size!(OpenIn, 8);

/// `struct fuse_create_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct CreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}
abi_size!(CreateIn, 16);

/// `struct fuse_open_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32,
}
abi_size!(OpenOut, 16);

/// `struct fuse_release_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct ReleaseIn {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}
abi_size!(ReleaseIn, 24);

/// `struct fuse_flush_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct FlushIn {
    pub fh: u64,
    pub unused: u32,
    pub padding: u32,
    pub lock_owner: u64,
}
abi_size!(FlushIn, 24);

/// `struct fuse_read_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct ReadIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}
abi_size!(ReadIn, 40);

/// `struct fuse_write_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct WriteIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub write_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}
abi_size!(WriteIn, 40);

/// `struct fuse_write_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct WriteOut {
    pub size: u32,
    pub padding: u32,
}
abi_size!(WriteOut, 8);

/// `struct fuse_statfs_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct StatfsOut {
    pub st: Kstatfs,
}
abi_size!(StatfsOut, 80);

/// `struct fuse_fsync_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct FsyncIn {
    pub fh: u64,
    pub fsync_flags: u32,
    pub padding: u32,
}
abi_size!(FsyncIn, 16);

/// Size of `struct fuse_setxattr_in` before `FUSE_SETXATTR_EXT` (7.33).
pub const COMPAT_SETXATTR_IN_SIZE: usize = 8;

/// `struct fuse_setxattr_in` (the extended form; see [`COMPAT_SETXATTR_IN_SIZE`]).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct SetxattrIn {
    pub size: u32,
    pub flags: u32,
    pub setxattr_flags: u32,
    pub padding: u32,
}
abi_size!(SetxattrIn, 16);

/// `struct fuse_getxattr_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct GetxattrIn {
    pub size: u32,
    pub padding: u32,
}
abi_size!(GetxattrIn, 8);

/// `struct fuse_getxattr_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct GetxattrOut {
    pub size: u32,
    pub padding: u32,
}
abi_size!(GetxattrOut, 8);

/// `struct fuse_lk_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct LkIn {
    pub fh: u64,
    pub owner: u64,
    pub lk: FileLock,
    pub lk_flags: u32,
    pub padding: u32,
}
abi_size!(LkIn, 48);

/// `struct fuse_lk_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct LkOut {
    pub lk: FileLock,
}
abi_size!(LkOut, 24);

/// `struct fuse_access_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct AccessIn {
    pub mask: u32,
    pub padding: u32,
}
abi_size!(AccessIn, 8);

/// Size of `struct fuse_init_in` before 7.36 added `flags2`.
pub const COMPAT_INIT_IN_SIZE: usize = 16;

/// `struct fuse_init_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub flags2: u32,
    pub unused: [u32; 11],
}
abi_size!(InitIn, 64);

/// `struct fuse_init_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub flags2: u32,
    pub max_stack_depth: u32,
    pub request_timeout: u16,
    pub unused: [u16; 11],
}
abi_size!(InitOut, 64);

/// `struct fuse_interrupt_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct InterruptIn {
    pub unique: u64,
}
abi_size!(InterruptIn, 8);

/// `struct fuse_bmap_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct BmapIn {
    pub block: u64,
    pub blocksize: u32,
    pub padding: u32,
}
abi_size!(BmapIn, 16);

/// `struct fuse_bmap_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct BmapOut {
    pub block: u64,
}
abi_size!(BmapOut, 8);

/// `struct fuse_ioctl_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct IoctlIn {
    pub fh: u64,
    pub flags: u32,
    pub cmd: u32,
    pub arg: u64,
    pub in_size: u32,
    pub out_size: u32,
}
abi_size!(IoctlIn, 32);

/// `struct fuse_ioctl_iovec`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct IoctlIovec {
    pub base: u64,
    pub len: u64,
}
abi_size!(IoctlIovec, 16);

/// `struct fuse_ioctl_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct IoctlOut {
    pub result: i32,
    pub flags: u32,
    pub in_iovs: u32,
    pub out_iovs: u32,
}
abi_size!(IoctlOut, 16);

/// `struct fuse_poll_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct PollIn {
    pub fh: u64,
    pub kh: u64,
    pub flags: u32,
    pub events: u32,
}
abi_size!(PollIn, 24);

/// `struct fuse_poll_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct PollOut {
    pub revents: u32,
    pub padding: u32,
}
abi_size!(PollOut, 8);

/// `struct fuse_notify_poll_wakeup_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyPollWakeupOut {
    pub kh: u64,
}
abi_size!(NotifyPollWakeupOut, 8);

/// `struct fuse_fallocate_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct FallocateIn {
    pub fh: u64,
    pub offset: u64,
    pub length: u64,
    pub mode: u32,
    pub padding: u32,
}
abi_size!(FallocateIn, 32);

/// `struct fuse_in_header`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the extension headers at the end, in 8-byte units.
    pub total_extlen: u16,
    pub padding: u16,
}
abi_size!(InHeader, 40);

/// `struct fuse_out_header`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}
abi_size!(OutHeader, 16);

/// The fixed part of `struct fuse_dirent`; the name follows, padded to 8 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub type_: u32,
}
abi_size!(Dirent, 24);

/// The fixed part of `struct fuse_direntplus`; the name follows, padded to 8 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct DirentPlus {
    pub entry_out: EntryOut,
    pub dirent: Dirent,
}
abi_size!(DirentPlus, 152);

/// Rounds a directory record length up to the 8-byte alignment the kernel expects.
pub const fn dirent_align(len: usize) -> usize {
    (len + 7) & !7
}

/// `struct fuse_notify_inval_inode_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyInvalInodeOut {
    pub ino: u64,
    pub off: i64,
    pub len: i64,
}
abi_size!(NotifyInvalInodeOut, 24);

/// `struct fuse_notify_inval_entry_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyInvalEntryOut {
    pub parent: u64,
    pub namelen: u32,
    pub flags: u32,
}
abi_size!(NotifyInvalEntryOut, 16);

/// `struct fuse_notify_delete_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyDeleteOut {
    pub parent: u64,
    pub child: u64,
    pub namelen: u32,
    pub padding: u32,
}
abi_size!(NotifyDeleteOut, 24);

/// `struct fuse_notify_store_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyStoreOut {
    pub nodeid: u64,
    pub offset: u64,
    pub size: u32,
    pub padding: u32,
}
abi_size!(NotifyStoreOut, 24);

/// `struct fuse_notify_retrieve_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyRetrieveOut {
    pub notify_unique: u64,
    pub nodeid: u64,
    pub offset: u64,
    pub size: u32,
    pub padding: u32,
}
abi_size!(NotifyRetrieveOut, 32);

/// `struct fuse_notify_retrieve_in` (the kernel's answer to a retrieve).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyRetrieveIn {
    pub dummy1: u64,
    pub offset: u64,
    pub size: u32,
    pub dummy2: u32,
    pub dummy3: u64,
    pub dummy4: u64,
}
abi_size!(NotifyRetrieveIn, 40);

/// `struct fuse_notify_prune_out`; an array of node ids follows.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct NotifyPruneOut {
    pub count: u32,
    pub padding: u32,
    pub spare: u64,
}
abi_size!(NotifyPruneOut, 16);

/// `struct fuse_backing_map`, the argument of `FUSE_DEV_IOC_BACKING_OPEN`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct BackingMap {
    pub fd: i32,
    pub flags: u32,
    pub padding: u64,
}
abi_size!(BackingMap, 16);

/// `struct fuse_lseek_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct LseekIn {
    pub fh: u64,
    pub offset: u64,
    pub whence: u32,
    pub padding: u32,
}
abi_size!(LseekIn, 24);

/// `struct fuse_lseek_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct LseekOut {
    pub offset: u64,
}
abi_size!(LseekOut, 8);

/// `struct fuse_copy_file_range_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct CopyFileRangeIn {
    pub fh_in: u64,
    pub off_in: u64,
    pub nodeid_out: u64,
    pub fh_out: u64,
    pub off_out: u64,
    pub len: u64,
    pub flags: u64,
}
abi_size!(CopyFileRangeIn, 56);

/// `struct fuse_copy_file_range_out` (the reply of `FUSE_COPY_FILE_RANGE_64`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct CopyFileRangeOut {
    pub bytes_copied: u64,
}
abi_size!(CopyFileRangeOut, 8);

/// `struct fuse_setupmapping_in` (virtio-fs DAX).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct SetupmappingIn {
    pub fh: u64,
    pub foffset: u64,
    pub len: u64,
    pub flags: u64,
    pub moffset: u64,
}
abi_size!(SetupmappingIn, 40);

/// `struct fuse_removemapping_in`; `count` [`RemovemappingOne`] follow.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct RemovemappingIn {
    pub count: u32,
}
abi_size!(RemovemappingIn, 4);

/// `struct fuse_removemapping_one`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct RemovemappingOne {
    pub moffset: u64,
    pub len: u64,
}
abi_size!(RemovemappingOne, 16);

/// `struct fuse_syncfs_in`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct SyncfsIn {
    pub padding: u64,
}
abi_size!(SyncfsIn, 8);

/// `struct fuse_ext_header`: one extension appended to a request.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct ExtHeader {
    pub size: u32,
    pub type_: u32,
}
abi_size!(ExtHeader, 8);

/// Size of the `in_out` area of [`UringReqHeader`].
pub const URING_IN_OUT_HEADER_SZ: usize = 128;
/// Size of the `op_in` area of [`UringReqHeader`].
pub const URING_OP_IN_OUT_SZ: usize = 128;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct UringEntInOut {
    pub flags: u64,
    /// The id a reply to this ring request must be committed with.
    pub commit_id: u64,
    /// Bytes used in the payload buffer.
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}
abi_size!(UringEntInOut, 32);

/// `struct fuse_uring_req_header`: the per-entry header buffer of a ring.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct UringReqHeader {
    /// `fuse_in_header` on the way in, `fuse_out_header` on the way out.
    pub in_out: [u8; URING_IN_OUT_HEADER_SZ],
    /// The opcode's fixed argument struct.
    pub op_in: [u8; URING_OP_IN_OUT_SZ],
    /// Ring bookkeeping.
    pub ring_ent_in_out: UringEntInOut,
}
abi_size!(UringReqHeader, 288);

/// `enum fuse_uring_cmd`: the `cmd_op` of an `IORING_OP_URING_CMD` SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum UringCmd {
    /// Not a command.
    Invalid = 0,
    /// Register an entry's buffers and wait for a request.
    Register = 1,
    /// Commit the reply of `commit_id` and wait for the next request.
    CommitAndFetch = 2,
}

/// `struct fuse_uring_cmd_req`: lives in the SQE's 80-byte command area.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[allow(missing_docs)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}
abi_size!(UringCmdReq, 24);

#[cfg(test)]
mod tests {
    //! Besides unit tests of the helpers above, this module cross-checks the
    //! whole file against a C `fuse.h`: every struct's size and every field's
    //! offset, every flag and constant, every opcode and notify code. The C
    //! side comes from compiling a program generated from tables here; which
    //! names the header has is read from its text first, so an older header
    //! (Debian 12 ships 7.38) leaves the newer names out instead of failing
    //! to compile. The tables themselves are checked against this file's
    //! source (`tables_cover_every_item_in_this_file`) and against the
    //! structs' layouts (`layout_tables_cover_every_field`), so an item
    //! added above and forgotten here fails a test.

    use super::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::mem::{offset_of, size_of, size_of_val};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;
    use zerocopy::FromZeros;

    #[test]
    fn opcode_round_trips() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_raw(op as u32), Some(op));
            assert!(!op.name().is_empty());
        }
        assert_eq!(Opcode::from_raw(0), None);
        assert_eq!(Opcode::from_raw(7), None);
        assert_eq!(Opcode::from_raw(54), None);
        assert_eq!(Opcode::from_raw(u32::MAX), None);
    }

    #[test]
    fn flags2_bits_live_above_32() {
        assert_eq!(init_flags::OVER_IO_URING >> 32, 1 << 9);
        assert_eq!(init_flags::PASSTHROUGH >> 32, 1 << 5);
    }

    /// Set to `1` by the test command, which installed a C compiler and the
    /// kernel headers: this module's tests then fail instead of skipping.
    const STRICT_ENV: &str = "XFUSE_TEST_STRICT";
    /// A file where skipped tests are recorded (see [`cannot_run`]).
    const SKIP_LOG_ENV: &str = "XFUSE_SKIP_LOG";
    /// The C compiler to use, `cc` (from `PATH`) if unset.
    const CC_ENV: &str = "CC";
    /// The `fuse.h` to check against, `/usr/include/linux/fuse.h` if unset
    /// (point it at a kernel tree's `include/uapi/linux/fuse.h` to check
    /// against a newer protocol than the distribution's).
    const HEADER_ENV: &str = "XFUSE_FUSE_H";

    /// Ends a test that cannot run on this machine because of `reason` (no
    /// C compiler, no `fuse.h`). The caller must return right after.
    ///
    /// The protocol, shared with `daemon/tests/common`:
    /// - `XFUSE_TEST_STRICT=1` (the test command sets it; its setup script
    ///   installed gcc and linux-libc-dev): panics, naming `reason`.
    /// - Otherwise the test is skipped: prints `skipped: <reason>` to stderr
    ///   and, if `XFUSE_SKIP_LOG` names a file, appends exactly one line
    ///   `<test name>\t<reason>\n` to it (opened with append+create, written
    ///   with one `write_all`, so the lines of tests running in parallel do
    ///   not interleave). Tabs and newlines in `reason` become spaces. The
    ///   test name is the thread's, which libtest sets to the test's path
    ///   (`abi::tests::offsets_match_system_header`).
    ///
    /// libtest has no runtime skip: without the log line a skipped test would
    /// count as passed.
    fn cannot_run(reason: &str) {
        if std::env::var(STRICT_ENV).as_deref() == Ok("1") {
            panic!("{STRICT_ENV}=1 and this test cannot run: {reason}");
        }
        eprintln!("skipped: {reason}");
        let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
            return;
        };
        let name = std::thread::current()
            .name()
            .unwrap_or("(unnamed test)")
            .to_owned();
        let line = format!("{name}\t{}\n", reason.replace(['\n', '\t'], " "));
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut log| log.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("recording a skip in {}: {e}", Path::new(&path).display()));
    }

    /// One of our structs, the header's name for it, and every field.
    #[derive(Debug)]
    struct Layout {
        rust: &'static str,
        c: &'static str,
        size: usize,
        fields: Vec<Field>,
    }

    /// One field of a [`Layout`].
    #[derive(Debug)]
    struct Field {
        rust: &'static str,
        c: &'static str,
        offset: usize,
        size: usize,
        /// The oldest protocol minor version whose header has the field where
        /// ours is. Reserved fields shrink and move as the protocol grows
        /// (`fuse_init_out.unused` sits at 36 in 7.38, at 42 since 7.43); on
        /// an older header such a field is left out, not compared.
        since_minor: u32,
    }

    /// `layout!(Rust => "fuse_c" { field, field as "c_name", field since 43 })`:
    /// offsets and sizes come from the Rust type itself; `as` gives the C
    /// field's name where it differs, `since` a [`Field::since_minor`].
    macro_rules! layout {
        ($t:ident => $c:literal { $($f:ident $(as $cf:literal)? $(since $m:literal)?),* $(,)? }) => {{
            let zero = <$t as FromZeros>::new_zeroed();
            Layout {
                rust: stringify!($t),
                c: $c,
                size: size_of::<$t>(),
                fields: vec![$(Field {
                    rust: stringify!($f),
                    c: layout!(@c_name $f $($cf)?),
                    offset: offset_of!($t, $f),
                    size: size_of_val(&zero.$f),
                    since_minor: layout!(@since $($m)?),
                }),*],
            }
        }};
        (@c_name $f:ident) => { stringify!($f) };
        (@c_name $f:ident $cf:literal) => { $cf };
        (@since) => { 0 };
        (@since $m:literal) => { $m };
    }

    /// Every struct of this file, field by field.
    ///
    /// Fields whose type is itself a FUSE struct (`EntryOut.attr`,
    /// `LkIn.lk`, `StatfsOut.st`, `DirentPlus.entry_out`/`dirent`, the
    /// `SxTime`s of `Statx`, `StatxOut.stat`, `UringReqHeader.ring_ent_in_out`)
    /// are compared as one field at their offset; their insides are compared
    /// through their own entries. The header's flexible array members
    /// (`fuse_dirent.name`, `fuse_supp_groups.groups`) have no Rust field: the
    /// name's offset is compared as the constant `FUSE_NAME_OFFSET` (= our
    /// `size_of::<Dirent>()`). No struct of ours or of the 7.45 header has a
    /// union; the header scan flattens anonymous ones should one appear.
    fn layouts() -> Vec<Layout> {
        vec![
            layout!(Attr => "fuse_attr" {
                ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
                mode, nlink, uid, gid, rdev, blksize, flags,
            }),
            layout!(SxTime => "fuse_sx_time" { tv_sec, tv_nsec, reserved as "__reserved" }),
            layout!(Statx => "fuse_statx" {
                mask, blksize, attributes, nlink, uid, gid, mode, spare0 as "__spare0", ino, size,
                blocks, attributes_mask, atime, btime, ctime, mtime, rdev_major, rdev_minor,
                dev_major, dev_minor, spare2 as "__spare2",
            }),
            layout!(Kstatfs => "fuse_kstatfs" {
                blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare,
            }),
            layout!(FileLock => "fuse_file_lock" { start, end, type_ as "type", pid }),
            layout!(EntryOut => "fuse_entry_out" {
                nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec, attr,
            }),
            layout!(ForgetIn => "fuse_forget_in" { nlookup }),
            layout!(ForgetOne => "fuse_forget_one" { nodeid, nlookup }),
            layout!(BatchForgetIn => "fuse_batch_forget_in" { count, dummy }),
            layout!(GetattrIn => "fuse_getattr_in" { getattr_flags, dummy, fh }),
            layout!(AttrOut => "fuse_attr_out" { attr_valid, attr_valid_nsec, dummy, attr }),
            layout!(StatxIn => "fuse_statx_in" { getattr_flags, reserved, fh, sx_flags, sx_mask }),
            layout!(StatxOut => "fuse_statx_out" { attr_valid, attr_valid_nsec, flags, spare, stat }),
            layout!(MknodIn => "fuse_mknod_in" { mode, rdev, umask, padding }),
            layout!(MkdirIn => "fuse_mkdir_in" { mode, umask }),
            layout!(RenameIn => "fuse_rename_in" { newdir }),
            layout!(Rename2In => "fuse_rename2_in" { newdir, flags, padding }),
            layout!(LinkIn => "fuse_link_in" { oldnodeid }),
            layout!(SetattrIn => "fuse_setattr_in" {
                valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec,
                ctimensec, mode, unused4, uid, gid, unused5,
            }),
            layout!(OpenIn => "fuse_open_in" { flags, open_flags }),
            layout!(CreateIn => "fuse_create_in" { flags, mode, umask, open_flags }),
            layout!(OpenOut => "fuse_open_out" { fh, open_flags, backing_id }),
            layout!(ReleaseIn => "fuse_release_in" { fh, flags, release_flags, lock_owner }),
            layout!(FlushIn => "fuse_flush_in" { fh, unused, padding, lock_owner }),
            layout!(ReadIn => "fuse_read_in" {
                fh, offset, size, read_flags, lock_owner, flags, padding,
            }),
            layout!(WriteIn => "fuse_write_in" {
                fh, offset, size, write_flags, lock_owner, flags, padding,
            }),
            layout!(WriteOut => "fuse_write_out" { size, padding }),
            layout!(StatfsOut => "fuse_statfs_out" { st }),
            layout!(FsyncIn => "fuse_fsync_in" { fh, fsync_flags, padding }),
            layout!(SetxattrIn => "fuse_setxattr_in" { size, flags, setxattr_flags, padding }),
            layout!(GetxattrIn => "fuse_getxattr_in" { size, padding }),
            layout!(GetxattrOut => "fuse_getxattr_out" { size, padding }),
            layout!(LkIn => "fuse_lk_in" { fh, owner, lk, lk_flags, padding }),
            layout!(LkOut => "fuse_lk_out" { lk }),
            layout!(AccessIn => "fuse_access_in" { mask, padding }),
            layout!(InitIn => "fuse_init_in" { major, minor, max_readahead, flags, flags2, unused }),
            layout!(InitOut => "fuse_init_out" {
                major, minor, max_readahead, flags, max_background, congestion_threshold,
                max_write, time_gran, max_pages, map_alignment, flags2, max_stack_depth,
                request_timeout, unused since 43,
            }),
            layout!(InterruptIn => "fuse_interrupt_in" { unique }),
            layout!(BmapIn => "fuse_bmap_in" { block, blocksize, padding }),
            layout!(BmapOut => "fuse_bmap_out" { block }),
            layout!(IoctlIn => "fuse_ioctl_in" { fh, flags, cmd, arg, in_size, out_size }),
            layout!(IoctlIovec => "fuse_ioctl_iovec" { base, len }),
            layout!(IoctlOut => "fuse_ioctl_out" { result, flags, in_iovs, out_iovs }),
            layout!(PollIn => "fuse_poll_in" { fh, kh, flags, events }),
            layout!(PollOut => "fuse_poll_out" { revents, padding }),
            layout!(NotifyPollWakeupOut => "fuse_notify_poll_wakeup_out" { kh }),
            layout!(FallocateIn => "fuse_fallocate_in" { fh, offset, length, mode, padding }),
            layout!(InHeader => "fuse_in_header" {
                len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding,
            }),
            layout!(OutHeader => "fuse_out_header" { len, error, unique }),
            layout!(Dirent => "fuse_dirent" { ino, off, namelen, type_ as "type" }),
            layout!(DirentPlus => "fuse_direntplus" { entry_out, dirent }),
            layout!(NotifyInvalInodeOut => "fuse_notify_inval_inode_out" { ino, off, len }),
            layout!(NotifyInvalEntryOut => "fuse_notify_inval_entry_out" { parent, namelen, flags }),
            layout!(NotifyDeleteOut => "fuse_notify_delete_out" { parent, child, namelen, padding }),
            layout!(NotifyStoreOut => "fuse_notify_store_out" { nodeid, offset, size, padding }),
            layout!(NotifyRetrieveOut => "fuse_notify_retrieve_out" {
                notify_unique, nodeid, offset, size, padding,
            }),
            layout!(NotifyRetrieveIn => "fuse_notify_retrieve_in" {
                dummy1, offset, size, dummy2, dummy3, dummy4,
            }),
            layout!(NotifyPruneOut => "fuse_notify_prune_out" { count, padding, spare }),
            layout!(BackingMap => "fuse_backing_map" { fd, flags, padding }),
            layout!(LseekIn => "fuse_lseek_in" { fh, offset, whence, padding }),
            layout!(LseekOut => "fuse_lseek_out" { offset }),
            layout!(CopyFileRangeIn => "fuse_copy_file_range_in" {
                fh_in, off_in, nodeid_out, fh_out, off_out, len, flags,
            }),
            layout!(CopyFileRangeOut => "fuse_copy_file_range_out" { bytes_copied }),
            layout!(SetupmappingIn => "fuse_setupmapping_in" { fh, foffset, len, flags, moffset }),
            layout!(RemovemappingIn => "fuse_removemapping_in" { count }),
            layout!(RemovemappingOne => "fuse_removemapping_one" { moffset, len }),
            layout!(SyncfsIn => "fuse_syncfs_in" { padding }),
            layout!(ExtHeader => "fuse_ext_header" { size, type_ as "type" }),
            layout!(UringEntInOut => "fuse_uring_ent_in_out" {
                flags, commit_id, payload_sz, padding, reserved,
            }),
            layout!(UringReqHeader => "fuse_uring_req_header" { in_out, op_in, ring_ent_in_out }),
            layout!(UringCmdReq => "fuse_uring_cmd_req" { flags, commit_id, qid, padding }),
        ]
    }

    /// How the header's side of a [`Constant`] is found.
    #[derive(Debug)]
    enum CName {
        /// A `#define`: compared under `#ifdef`.
        Macro(&'static str),
        /// A member of an enum: compared if the header's text declares it.
        Enumerator(String),
        /// A C expression on a struct field: compared if the header declares
        /// the field (struct name, field name, expression).
        OnField(&'static str, &'static str, &'static str),
    }

    /// One of our constants or enum discriminants, and the header's value.
    #[derive(Debug)]
    struct Constant {
        /// Its path in this file (`fopen::STREAM`, `Opcode::Lookup`).
        rust: String,
        c: CName,
        /// Widened to `u64` (C prints it as `unsigned long long`, so a
        /// negative value would wrap alike on both sides).
        value: u64,
    }

    /// Widens a value to `u64`, the type both sides are compared in.
    trait Widen {
        fn widen(self) -> u64;
    }

    impl Widen for u32 {
        fn widen(self) -> u64 {
            u64::from(self)
        }
    }

    impl Widen for u64 {
        fn widen(self) -> u64 {
            self
        }
    }

    impl Widen for usize {
        fn widen(self) -> u64 {
            u64::try_from(self).expect("usize is 64 bits here")
        }
    }

    /// `flags!(module, "C_PREFIX_", [NAME, ..])`: `module::NAME` is the macro
    /// `C_PREFIX_NAME`.
    macro_rules! flags {
        ($m:ident, $prefix:literal, [$($name:ident),* $(,)?]) => {
            [$(Constant {
                rust: concat!(stringify!($m), "::", stringify!($name)).to_owned(),
                c: CName::Macro(concat!($prefix, stringify!($name))),
                value: $m::$name.widen(),
            }),*]
        };
    }

    /// `top!(NAME => "C_NAME", ..)`: a constant at this file's top level.
    macro_rules! top {
        ($($name:ident => $c:literal),* $(,)?) => {
            [$(Constant { rust: stringify!($name).to_owned(), c: CName::Macro($c), value: $name.widen() }),*]
        };
    }

    /// This file's constants that have no counterpart in the header, and why.
    const NO_C_COUNTERPART: &[(&str, &str)] = &[
        (
            "KERNEL_MINOR_VERSION",
            "ours is 45 by design; the header's is printed, not compared",
        ),
        ("MIN_KERNEL_MINOR_VERSION", "our policy, not the protocol's"),
    ];

    /// Every constant and enum discriminant of this file with a C
    /// counterpart, plus two values the header gives as expressions.
    fn constants() -> Vec<Constant> {
        let mut all = Vec::new();
        all.extend(top!(
            KERNEL_VERSION => "FUSE_KERNEL_VERSION",
            ROOT_ID => "FUSE_ROOT_ID",
            MIN_READ_BUFFER => "FUSE_MIN_READ_BUFFER",
            UNIQUE_RESEND => "FUSE_UNIQUE_RESEND",
            INVALID_UIDGID => "FUSE_INVALID_UIDGID",
            COMPAT_SETXATTR_IN_SIZE => "FUSE_COMPAT_SETXATTR_IN_SIZE",
            URING_IN_OUT_HEADER_SZ => "FUSE_URING_IN_OUT_HEADER_SZ",
            URING_OP_IN_OUT_SZ => "FUSE_URING_OP_IN_OUT_SZ",
        ));
        // The header has no FUSE_COMPAT_INIT_IN_SIZE: the old size is where
        // 7.36 put `flags2`.
        all.push(Constant {
            rust: "COMPAT_INIT_IN_SIZE".to_owned(),
            c: CName::OnField("fuse_init_in", "flags2", "offsetof(struct fuse_init_in, flags2)"),
            value: COMPAT_INIT_IN_SIZE.widen(),
        });
        // A dirent's name follows our fixed part: it must start where the
        // header's flexible `name[]` does.
        all.push(Constant {
            rust: "size_of::<Dirent>()".to_owned(),
            c: CName::Macro("FUSE_NAME_OFFSET"),
            value: size_of::<Dirent>().widen(),
        });
        all.push(Constant {
            rust: "size_of::<DirentPlus>()".to_owned(),
            c: CName::Macro("FUSE_NAME_OFFSET_DIRENTPLUS"),
            value: size_of::<DirentPlus>().widen(),
        });
        all.extend(flags!(
            init_flags,
            "FUSE_",
            [
                ASYNC_READ,
                POSIX_LOCKS,
                FILE_OPS,
                ATOMIC_O_TRUNC,
                EXPORT_SUPPORT,
                BIG_WRITES,
                DONT_MASK,
                SPLICE_WRITE,
                SPLICE_MOVE,
                SPLICE_READ,
                FLOCK_LOCKS,
                HAS_IOCTL_DIR,
                AUTO_INVAL_DATA,
                DO_READDIRPLUS,
                READDIRPLUS_AUTO,
                ASYNC_DIO,
                WRITEBACK_CACHE,
                NO_OPEN_SUPPORT,
                PARALLEL_DIROPS,
                HANDLE_KILLPRIV,
                POSIX_ACL,
                ABORT_ERROR,
                MAX_PAGES,
                CACHE_SYMLINKS,
                NO_OPENDIR_SUPPORT,
                EXPLICIT_INVAL_DATA,
                MAP_ALIGNMENT,
                SUBMOUNTS,
                HANDLE_KILLPRIV_V2,
                SETXATTR_EXT,
                INIT_EXT,
                INIT_RESERVED,
                SECURITY_CTX,
                HAS_INODE_DAX,
                CREATE_SUPP_GROUP,
                HAS_EXPIRE_ONLY,
                DIRECT_IO_ALLOW_MMAP,
                PASSTHROUGH,
                NO_EXPORT_SUPPORT,
                HAS_RESEND,
                ALLOW_IDMAP,
                OVER_IO_URING,
                REQUEST_TIMEOUT,
            ]
        ));
        all.extend(flags!(
            fattr,
            "FATTR_",
            [
                MODE,
                UID,
                GID,
                SIZE,
                ATIME,
                MTIME,
                FH,
                ATIME_NOW,
                MTIME_NOW,
                LOCKOWNER,
                CTIME,
                KILL_SUIDGID,
            ]
        ));
        all.extend(flags!(
            fopen,
            "FOPEN_",
            [
                DIRECT_IO,
                KEEP_CACHE,
                NONSEEKABLE,
                CACHE_DIR,
                STREAM,
                NOFLUSH,
                PARALLEL_DIRECT_WRITES,
                PASSTHROUGH,
            ]
        ));
        all.extend(flags!(
            req_flags,
            "FUSE_",
            [
                RELEASE_FLUSH,
                RELEASE_FLOCK_UNLOCK,
                GETATTR_FH,
                LK_FLOCK,
                WRITE_CACHE,
                WRITE_LOCKOWNER,
                WRITE_KILL_SUIDGID,
                READ_LOCKOWNER,
                FSYNC_FDATASYNC,
                OPEN_KILL_SUIDGID,
                SETXATTR_ACL_KILL_SGID,
                EXPIRE_ONLY,
                IOCTL_COMPAT,
                IOCTL_UNRESTRICTED,
                IOCTL_RETRY,
                IOCTL_32BIT,
                IOCTL_DIR,
                IOCTL_COMPAT_X32,
                IOCTL_MAX_IOV,
                POLL_SCHEDULE_NOTIFY,
                ATTR_SUBMOUNT,
                ATTR_DAX,
            ]
        ));
        // `Opcode::name` is the kernel's name without `FUSE_` (CUSE_INIT keeps
        // its own prefix); a slip there shows as an opcode the header has and
        // we lack (see `constants_match_system_header`).
        all.extend(Opcode::ALL.iter().map(|op| Constant {
            rust: format!("Opcode::{op:?}"),
            c: CName::Enumerator(match op.name() {
                name if name.starts_with("CUSE_") => name.to_owned(),
                name => format!("FUSE_{name}"),
            }),
            value: *op as u64,
        }));
        let notify = [
            (NotifyCode::Poll, "FUSE_NOTIFY_POLL"),
            (NotifyCode::InvalInode, "FUSE_NOTIFY_INVAL_INODE"),
            (NotifyCode::InvalEntry, "FUSE_NOTIFY_INVAL_ENTRY"),
            (NotifyCode::Store, "FUSE_NOTIFY_STORE"),
            (NotifyCode::Retrieve, "FUSE_NOTIFY_RETRIEVE"),
            (NotifyCode::Delete, "FUSE_NOTIFY_DELETE"),
            (NotifyCode::Resend, "FUSE_NOTIFY_RESEND"),
            (NotifyCode::IncEpoch, "FUSE_NOTIFY_INC_EPOCH"),
            (NotifyCode::Prune, "FUSE_NOTIFY_PRUNE"),
        ];
        all.extend(notify.into_iter().map(|(code, c)| Constant {
            rust: format!("NotifyCode::{code:?}"),
            c: CName::Enumerator(c.to_owned()),
            value: code as u64,
        }));
        let uring = [
            (UringCmd::Invalid, "FUSE_IO_URING_CMD_INVALID"),
            (UringCmd::Register, "FUSE_IO_URING_CMD_REGISTER"),
            (UringCmd::CommitAndFetch, "FUSE_IO_URING_CMD_COMMIT_AND_FETCH"),
        ];
        all.extend(uring.into_iter().map(|(cmd, c)| Constant {
            rust: format!("UringCmd::{cmd:?}"),
            c: CName::Enumerator(c.to_owned()),
            value: cmd as u64,
        }));
        all
    }

    /// The header's enumerators that name no value of ours on purpose.
    const ENUMERATORS_NOT_OURS: &[&str] = &[
        "CUSE_INIT_BSWAP_RESERVED",
        "FUSE_INIT_BSWAP_RESERVED",
        "FUSE_NOTIFY_CODE_MAX",
    ];
    /// The header's enums whose every member must be one of ours (when the
    /// header is not newer than our protocol).
    const ENUMS_WE_SPEAK: &[&str] = &["fuse_opcode", "fuse_notify_code", "fuse_uring_cmd"];

    /// The Rust tables must not have gaps: each struct's fields, in offset
    /// order, tile it exactly (zerocopy's `IntoBytes` already rules out
    /// padding, so a gap is a field missing from `layouts()`).
    #[test]
    fn layout_tables_cover_every_field() {
        for layout in layouts() {
            let mut fields: Vec<&Field> = layout.fields.iter().collect();
            fields.sort_by_key(|f| f.offset);
            let mut end = 0;
            for field in fields {
                assert_eq!(
                    field.offset, end,
                    "{}.{} starts at {} but the field before ends at {end}: a field is missing from the table",
                    layout.rust, field.rust, field.offset
                );
                end = field.offset + field.size;
            }
            assert_eq!(
                end, layout.size,
                "{}: the table's fields end at {end} of {} bytes",
                layout.rust, layout.size
            );
        }
    }

    /// The items this file (above the test module) declares, by scanning its
    /// source: structs, `pub const`s (module-qualified; not those of `impl`
    /// blocks), and enum variants (`Enum::Variant`).
    fn declared_in_this_file() -> (Vec<String>, Vec<String>, Vec<String>) {
        let source = include_str!("abi.rs");
        let (mut structs, mut consts, mut variants) = (Vec::new(), Vec::new(), Vec::new());
        let (mut module, mut enumeration, mut in_impl) = (None, None, false);
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        for line in source.lines() {
            if line == "#[cfg(test)]" {
                break;
            }
            let item = line.trim_start();
            if line == "}" {
                (module, enumeration, in_impl) = (None, None, false);
            } else if let Some(rest) = line.strip_prefix("pub mod ") {
                module = Some(ident(rest));
            } else if let Some(rest) = line.strip_prefix("pub enum ") {
                enumeration = Some(ident(rest));
            } else if line.starts_with("impl ") {
                in_impl = true;
            } else if let Some(rest) = item.strip_prefix("pub struct ") {
                structs.push(ident(rest));
            } else if let Some(rest) = item.strip_prefix("pub const ") {
                if !rest.starts_with("fn ") && !in_impl {
                    let name = ident(rest);
                    consts.push(match &module {
                        Some(module) => format!("{module}::{name}"),
                        None => name,
                    });
                }
            } else if let Some(enumeration) = &enumeration {
                let name = ident(item);
                if !name.is_empty() && item[name.len()..].trim_start().starts_with('=') {
                    variants.push(format!("{enumeration}::{name}"));
                }
            }
        }
        (structs, consts, variants)
    }

    /// Every struct, constant and enum variant of this file is in a table of
    /// this module (or in [`NO_C_COUNTERPART`]), so the header comparisons
    /// cover everything. This also catches a variant missing from
    /// [`Opcode::ALL`].
    #[test]
    fn tables_cover_every_item_in_this_file() {
        let (structs, consts, variants) = declared_in_this_file();
        assert!(
            structs.len() >= 70 && consts.len() >= 90 && variants.len() >= 60,
            "scan found too little"
        );
        let tabled: BTreeSet<&str> = layouts().iter().map(|l| l.rust).collect();
        let missing: Vec<&String> = structs.iter().filter(|s| !tabled.contains(s.as_str())).collect();
        assert!(missing.is_empty(), "structs missing from layouts(): {missing:?}");
        let tabled: BTreeSet<String> = constants()
            .into_iter()
            .map(|c| c.rust)
            .chain(NO_C_COUNTERPART.iter().map(|(name, _)| (*name).to_owned()))
            .collect();
        let missing: Vec<&String> = consts
            .iter()
            .chain(&variants)
            .filter(|c| !tabled.contains(*c))
            .collect();
        assert!(
            missing.is_empty(),
            "constants and variants missing from constants(): {missing:?}"
        );
    }

    /// What a `fuse.h` declares, read from its text.
    #[derive(Debug, Default)]
    struct Declared {
        /// `FUSE_KERNEL_MINOR_VERSION`.
        minor: Option<u32>,
        /// Struct name (`fuse_attr`) to its field names, in order.
        structs: BTreeMap<String, Vec<String>>,
        /// Enum name (`fuse_opcode`) to its members.
        enums: BTreeMap<String, Vec<String>>,
        /// Every `#define`d name.
        macros: BTreeSet<String>,
    }

    impl Declared {
        fn has_field(&self, c_struct: &str, field: &str) -> bool {
            self.structs
                .get(c_struct)
                .is_some_and(|fields| fields.iter().any(|f| f == field))
        }

        fn has_enumerator(&self, name: &str) -> bool {
            self.enums.values().flatten().any(|e| e == name)
        }
    }

    /// `text` without C comments (newlines kept, so `#define` lines stay lines).
    fn strip_comments(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        loop {
            let block = rest.find("/*").map(|at| (at, true));
            let line = rest.find("//").map(|at| (at, false));
            match block.into_iter().chain(line).min() {
                None => {
                    out.push_str(rest);
                    return out;
                }
                Some((at, true)) => {
                    out.push_str(&rest[..at]);
                    let Some(len) = rest[at..].find("*/").map(|end| end + 2) else {
                        return out;
                    };
                    out.extend(rest[at..at + len].chars().filter(|c| *c == '\n'));
                    out.push(' ');
                    rest = &rest[at + len..];
                }
                Some((at, false)) => {
                    out.push_str(&rest[..at]);
                    rest = rest[at..].find('\n').map_or("", |n| &rest[at + n..]);
                }
            }
        }
    }

    fn is_ident_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_'
    }

    /// The index of the `}` matching the `{` at `open`.
    fn matching_brace(text: &str, open: usize) -> Option<usize> {
        let mut depth = 0usize;
        for (i, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(open + i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The bodies of `keyword NAME { body }` definitions in `text`, by name.
    fn definitions<'t>(text: &'t str, keyword: &str) -> Vec<(&'t str, &'t str)> {
        let mut found = Vec::new();
        let mut at = 0;
        while let Some(i) = text[at..].find(keyword).map(|i| at + i) {
            at = i + keyword.len();
            let word_start = text[..i].chars().next_back().is_none_or(|c| !is_ident_char(c));
            let rest = &text[at..];
            if !word_start || !rest.starts_with(char::is_whitespace) {
                continue;
            }
            let rest = rest.trim_start();
            let name_len = rest.find(|c| !is_ident_char(c)).unwrap_or(rest.len());
            let name = &rest[..name_len];
            let after = rest[name_len..].trim_start();
            if name.is_empty() || !after.starts_with('{') {
                continue;
            }
            let open = text.len() - after.len();
            let Some(close) = matching_brace(text, open) else {
                break;
            };
            found.push((name, &text[open + 1..close]));
            at = close + 1;
        }
        found
    }

    /// The member names of a struct body, in order. A member that is itself
    /// a braced union or struct is flattened if anonymous (its members are
    /// then the outer struct's, `offsetof` reaches them) and taken by its name
    /// otherwise (its insides are not the outer struct's members).
    fn members(body: &str) -> Vec<String> {
        let mut names = Vec::new();
        let (mut depth, mut start) = (0usize, 0);
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ';' if depth == 0 => {
                    let decl = body[start..i].trim();
                    start = i + 1;
                    if let (Some(open), Some(close)) = (decl.find('{'), decl.rfind('}')) {
                        let name = decl[close + 1..].trim();
                        if name.is_empty() {
                            names.extend(members(&decl[open + 1..close]));
                        } else {
                            names.push(declarator_name(name));
                        }
                    } else if !decl.is_empty() {
                        names.push(declarator_name(decl));
                    }
                }
                _ => {}
            }
        }
        names
    }

    /// `uint32_t unused[11]` -> `unused`; `unsigned x : 3` -> `x`.
    fn declarator_name(decl: &str) -> String {
        let decl = decl.split([':', '[']).next().unwrap_or(decl).trim_end();
        let start = decl.rfind(|c| !is_ident_char(c)).map_or(0, |i| i + 1);
        decl[start..].to_owned()
    }

    /// Reads a `fuse.h`'s declarations. Preprocessor conditionals are not
    /// evaluated (fuse.h has none around its declarations); a declaration
    /// hidden by one would make the generated program fail to compile, which
    /// fails the tests instead of skipping them.
    fn parse_header(text: &str) -> Declared {
        let text = strip_comments(text);
        let mut declared = Declared::default();
        for line in text.lines() {
            let Some(directive) = line.trim_start().strip_prefix('#') else {
                continue;
            };
            let Some(rest) = directive.trim_start().strip_prefix("define") else {
                continue;
            };
            let rest = rest.trim_start();
            let name: String = rest.chars().take_while(|c| is_ident_char(*c)).collect();
            if name == "FUSE_KERNEL_MINOR_VERSION" {
                declared.minor = rest[name.len()..].trim().parse().ok();
            }
            if !name.is_empty() {
                declared.macros.insert(name);
            }
        }
        for (name, body) in definitions(&text, "struct") {
            declared.structs.insert(name.to_owned(), members(body));
        }
        for (name, body) in definitions(&text, "enum") {
            let enumerators = body
                .split(',')
                .map(|e| e.split('=').next().unwrap_or("").trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect();
            declared.enums.insert(name.to_owned(), enumerators);
        }
        declared
    }

    #[test]
    fn header_scan_reads_declarations() {
        let text = "/* struct fuse_gone { int x; }; */\n#define FUSE_KERNEL_MINOR_VERSION 38\n\
                    # define FOPEN_X (1 << 3) // struct fuse_also_gone {\n\
                    struct fuse_a {\n\tuint64_t\tino; /* a\n b */\n\tstruct fuse_b b;\n\
                    \tuint32_t\tunused[7];\n\tunion { uint32_t u1; uint64_t u2; };\n\
                    \tunion { uint32_t n1; } named;\n\tchar name[];\n};\n\
                    enum fuse_e {\n\tFUSE_ONE = 1, /* x */\n\tFUSE_TWO\t= 2,\n\tFUSE_MAX\n};\n";
        let declared = parse_header(text);
        assert_eq!(declared.minor, Some(38));
        assert!(declared.macros.contains("FOPEN_X"));
        assert_eq!(declared.structs.keys().collect::<Vec<_>>(), ["fuse_a"]);
        assert_eq!(
            declared.structs["fuse_a"],
            ["ino", "b", "unused", "u1", "u2", "named", "name"]
        );
        assert_eq!(declared.enums["fuse_e"], ["FUSE_ONE", "FUSE_TWO", "FUSE_MAX"]);
    }

    /// Which part of the header a [`Check`] compares.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Size,
        Offset,
        Const,
    }

    /// Whether the header has what a [`Check`] compares.
    #[derive(Debug)]
    enum Presence {
        /// Its text declares it: the C program prints it unconditionally.
        Declared,
        /// A macro: printed under `#ifdef`; absent if not printed.
        IfDefined(&'static str),
        /// Not in this header, and why.
        Absent(String),
    }

    /// One number compared: ours, and a C expression for the header's.
    #[derive(Debug)]
    struct Check {
        kind: Kind,
        /// Both sides' names, for messages.
        what: String,
        c_expr: String,
        ours: u64,
        presence: Presence,
    }

    fn checks(declared: &Declared) -> Vec<Check> {
        let minor = declared.minor.unwrap_or(0);
        let mut checks = Vec::new();
        for layout in layouts() {
            let c_struct = layout.c;
            let struct_declared = declared.structs.contains_key(c_struct);
            checks.push(Check {
                kind: Kind::Size,
                what: format!("size of {} (struct {c_struct})", layout.rust),
                c_expr: format!("sizeof(struct {c_struct})"),
                ours: layout.size.widen(),
                presence: if struct_declared {
                    Presence::Declared
                } else {
                    Presence::Absent(format!("no struct {c_struct}"))
                },
            });
            for field in &layout.fields {
                let presence = if !struct_declared {
                    Presence::Absent(format!("no struct {c_struct}"))
                } else if !declared.has_field(c_struct, field.c) {
                    Presence::Absent(format!("no field {c_struct}.{}", field.c))
                } else if minor < field.since_minor {
                    Presence::Absent(format!(
                        "{c_struct}.{} is where ours is only since 7.{}",
                        field.c, field.since_minor
                    ))
                } else {
                    Presence::Declared
                };
                checks.push(Check {
                    kind: Kind::Offset,
                    what: format!(
                        "offset of {}.{} (struct {c_struct}.{})",
                        layout.rust, field.rust, field.c
                    ),
                    c_expr: format!("offsetof(struct {c_struct}, {})", field.c),
                    ours: field.offset.widen(),
                    presence,
                });
            }
        }
        for constant in constants() {
            let (what, c_expr, presence) = match constant.c {
                CName::Macro(name) => (
                    format!("{} ({name})", constant.rust),
                    name.to_owned(),
                    Presence::IfDefined(name),
                ),
                CName::Enumerator(name) => {
                    let presence = if declared.has_enumerator(&name) {
                        Presence::Declared
                    } else {
                        Presence::Absent(format!("no enumerator {name}"))
                    };
                    (format!("{} ({name})", constant.rust), name, presence)
                }
                CName::OnField(c_struct, field, expr) => {
                    let presence = if declared.has_field(c_struct, field) {
                        Presence::Declared
                    } else {
                        Presence::Absent(format!("no field {c_struct}.{field}"))
                    };
                    (format!("{} ({expr})", constant.rust), expr.to_owned(), presence)
                }
            };
            checks.push(Check {
                kind: Kind::Const,
                what,
                c_expr,
                ours: constant.value,
                presence,
            });
        }
        checks
    }

    /// The C program printing `index\tvalue\tsizeof value` for each check
    /// the header has.
    fn c_program(header: &Path, checks: &[Check]) -> String {
        let header = header
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        let mut c = format!(
            "#include <stddef.h>\n#include <stdio.h>\n#include \"{header}\"\n\n\
             #define P(i, v) printf(\"%d\\t%llu\\t%zu\\n\", (i), (unsigned long long)(v), sizeof(v))\n\n\
             int main(void)\n{{\n"
        );
        for (i, check) in checks.iter().enumerate() {
            match &check.presence {
                Presence::Declared => c.push_str(&format!("\tP({i}, {});\n", check.c_expr)),
                Presence::IfDefined(name) => {
                    c.push_str(&format!("#ifdef {name}\n\tP({i}, {});\n#endif\n", check.c_expr))
                }
                Presence::Absent(_) => {}
            }
        }
        c.push_str("\treturn 0;\n}\n");
        c
    }

    /// The header's side of every [`Check`].
    #[derive(Debug)]
    struct Probe {
        header: PathBuf,
        declared: Declared,
        checks: Vec<Check>,
        /// Check index to the value the C program printed, cut to the width
        /// of its C expression: `FUSE_INIT_RESERVED` is `(1 << 31)`, a
        /// negative `int` that `(unsigned long long)` sign-extends to
        /// `0xffffffff80000000`; the bits it stands for are `0x80000000`.
        values: HashMap<usize, u64>,
    }

    /// Why there is no [`Probe`].
    #[derive(Debug)]
    enum NoProbe {
        /// The machine lacks a tool or the header: skip, or fail if strict.
        Unavailable(String),
        /// The probe itself is wrong (a generated program that does not
        /// compile though the compiler works): always a failure.
        Broken(String),
    }

    /// A directory removed when dropped (tempfile is not a dependency here).
    struct ScratchDir(PathBuf);

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Compiles `source` into `dir`, returning the binary or cc's complaint.
    fn compile(cc: &std::ffi::OsStr, dir: &Path, stem: &str, source: &str) -> Result<PathBuf, String> {
        let src = dir.join(format!("{stem}.c"));
        let bin = dir.join(stem);
        std::fs::write(&src, source).map_err(|e| format!("writing {}: {e}", src.display()))?;
        let out = Command::new(cc)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .output()
            .map_err(|e| format!("running C compiler {cc:?}: {e}"))?;
        if out.status.success() {
            return Ok(bin);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let status = out.status;
        Err(if stderr.is_empty() {
            format!("{cc:?} failed ({status})")
        } else {
            format!("{cc:?} failed ({status}): {stderr}")
        })
    }

    fn probe() -> Result<Probe, NoProbe> {
        let header = std::env::var_os(HEADER_ENV)
            .map_or_else(|| PathBuf::from("/usr/include/linux/fuse.h"), PathBuf::from);
        let text = std::fs::read_to_string(&header).map_err(|e| {
            NoProbe::Unavailable(format!(
                "cannot read {} ({e}); install linux-libc-dev",
                header.display()
            ))
        })?;
        let declared = parse_header(&text);
        let checks = checks(&declared);
        let cc = std::env::var_os(CC_ENV).unwrap_or_else(|| "cc".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("kmod-shim-abi-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| NoProbe::Broken(format!("creating {}: {e}", dir.display())))?;
        let dir = ScratchDir(dir);
        let program = c_program(&header, &checks);
        let bin = match compile(&cc, &dir.0, "abi", &program) {
            Ok(bin) => bin,
            Err(why) => {
                // Tell a missing or broken compiler from a probe this module
                // got wrong: the first is the machine's, the second a bug.
                return Err(
                    match compile(&cc, &dir.0, "trivial", "int main(void) { return 0; }\n") {
                        Err(trivial) => NoProbe::Unavailable(format!("no working C compiler: {trivial}")),
                        Ok(_) => NoProbe::Broken(format!("the generated program does not compile: {why}")),
                    },
                );
            }
        };
        let out = Command::new(&bin)
            .output()
            .map_err(|e| NoProbe::Broken(format!("running {}: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(NoProbe::Broken(format!(
                "{} exited with {}",
                bin.display(),
                out.status
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut values = HashMap::new();
        for line in stdout.lines() {
            let mut fields = line.split('\t').map(str::parse::<u64>);
            let (Some(Ok(i)), Some(Ok(value)), Some(Ok(width_bytes)), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(NoProbe::Broken(format!("unexpected output line {line:?}")));
            };
            let value = match width_bytes {
                1..=7 => value & ((1 << (8 * width_bytes)) - 1),
                _ => value,
            };
            let i = usize::try_from(i).map_err(|e| NoProbe::Broken(format!("line {line:?}: {e}")))?;
            values.insert(i, value);
        }
        Ok(Probe {
            header,
            declared,
            checks,
            values,
        })
    }

    /// The probe, computed once for all tests of this module.
    fn shared_probe() -> &'static Result<Probe, NoProbe> {
        static PROBE: OnceLock<Result<Probe, NoProbe>> = OnceLock::new();
        PROBE.get_or_init(probe)
    }

    /// What comparing one [`Kind`] found.
    #[derive(Debug, Default)]
    struct Outcome {
        compared: usize,
        absent: Vec<String>,
        mismatches: Vec<String>,
    }

    /// Compares every check of `kind`; `None` if the test cannot run here
    /// (already recorded by [`cannot_run`]).
    fn compare(kind: Kind) -> Option<(&'static Probe, Outcome)> {
        let probe = match shared_probe() {
            Ok(probe) => probe,
            Err(NoProbe::Unavailable(why)) => {
                cannot_run(why);
                return None;
            }
            Err(NoProbe::Broken(why)) => panic!("the header probe is broken: {why}"),
        };
        let mut outcome = Outcome::default();
        for (i, check) in probe.checks.iter().enumerate().filter(|(_, c)| c.kind == kind) {
            let c = match (&check.presence, probe.values.get(&i)) {
                (Presence::Absent(why), _) => {
                    outcome.absent.push(format!("{}: {why}", check.what));
                    continue;
                }
                (Presence::IfDefined(name), None) => {
                    outcome.absent.push(format!("{}: no #define {name}", check.what));
                    continue;
                }
                (Presence::Declared, None) => {
                    panic!("the header probe printed nothing for {}", check.what)
                }
                (_, Some(c)) => *c,
            };
            outcome.compared += 1;
            if c != check.ours {
                let (ours, what) = (check.ours, &check.what);
                outcome.mismatches.push(match kind {
                    Kind::Const => format!("{what}: Rust {ours} ({ours:#x}), C header {c} ({c:#x})"),
                    Kind::Size | Kind::Offset => format!("{what}: Rust {ours}, C header {c}"),
                });
            }
        }
        Some((probe, outcome))
    }

    /// Prints what was compared and fails on any mismatch or on too few
    /// comparisons. `floor` is a little below what Debian 12's 7.38 header
    /// yields, so a probe that silently compares nothing cannot pass; an
    /// older header than setup.sh installs would trip it too.
    fn report(probe: &Probe, noun: &str, outcome: &Outcome, floor: usize) {
        eprintln!(
            "{}: header protocol 7.{}; {} {noun} compared, {} not in this header",
            probe.header.display(),
            probe
                .declared
                .minor
                .map_or_else(|| "?".to_owned(), |m| m.to_string()),
            outcome.compared,
            outcome.absent.len()
        );
        for absent in &outcome.absent {
            eprintln!("  not in this header: {absent}");
        }
        assert!(
            outcome.mismatches.is_empty(),
            "{} {noun} disagree with {}:\n  {}",
            outcome.mismatches.len(),
            probe.header.display(),
            outcome.mismatches.join("\n  ")
        );
        assert!(
            outcome.compared >= floor,
            "only {} {noun} compared against {} (expected at least {floor}): is the probe broken?",
            outcome.compared,
            probe.header.display()
        );
    }

    /// Compares every struct's size with the header's. Structs the header
    /// lacks (it may be older than 7.45) are left to the `abi_size!`
    /// assertions.
    #[test]
    fn sizes_match_system_header() {
        let Some((probe, outcome)) = compare(Kind::Size) else {
            return;
        };
        report(probe, "struct sizes", &outcome, 58);
        let ours: BTreeSet<&str> = layouts().iter().map(|l| l.c).collect();
        let theirs: Vec<&String> = probe
            .declared
            .structs
            .keys()
            .filter(|s| !ours.contains(s.as_str()))
            .collect();
        eprintln!("  header structs with no Rust counterpart: {theirs:?}");
    }

    /// Compares every field's offset with the header's (fields the header
    /// lacks are left out; see [`layouts`] for nested structs and flexible
    /// arrays).
    #[test]
    fn offsets_match_system_header() {
        let Some((probe, outcome)) = compare(Kind::Offset) else {
            return;
        };
        report(probe, "field offsets", &outcome, 235);
        for layout in layouts() {
            let Some(fields) = probe.declared.structs.get(layout.c) else {
                continue;
            };
            let unmapped: Vec<&String> = fields
                .iter()
                .filter(|f| !layout.fields.iter().any(|ours| ours.c == f.as_str()))
                .collect();
            if !unmapped.is_empty() {
                eprintln!(
                    "  struct {} fields with no Rust counterpart: {unmapped:?}",
                    layout.c
                );
            }
        }
    }

    /// Compares every flag, constant and enum discriminant with the header's,
    /// and checks that we know every opcode and notify code of a header not
    /// newer than our protocol.
    #[test]
    fn constants_match_system_header() {
        let Some((probe, outcome)) = compare(Kind::Const) else {
            return;
        };
        report(probe, "constants", &outcome, 135);
        let ours: BTreeSet<String> = constants()
            .into_iter()
            .filter_map(|c| match c.c {
                CName::Macro(name) => Some(name.to_owned()),
                CName::Enumerator(name) => Some(name),
                CName::OnField(..) => None,
            })
            .collect();
        let minor = probe.declared.minor.unwrap_or(u32::MAX);
        for enumeration in ENUMS_WE_SPEAK {
            let Some(members) = probe.declared.enums.get(*enumeration) else {
                continue;
            };
            let unknown: Vec<&String> = members
                .iter()
                .filter(|m| !ours.contains(*m) && !ENUMERATORS_NOT_OURS.contains(&m.as_str()))
                .collect();
            if minor <= KERNEL_MINOR_VERSION {
                assert!(
                    unknown.is_empty(),
                    "enum {enumeration} of {} (7.{minor}, not newer than our 7.{KERNEL_MINOR_VERSION}) has members we lack or misname: {unknown:?}",
                    probe.header.display()
                );
            } else if !unknown.is_empty() {
                eprintln!("  enum {enumeration} members newer than ours: {unknown:?}");
            }
        }
        let unmapped: Vec<&String> = probe
            .declared
            .macros
            .iter()
            .filter(|m| ["FUSE_", "FOPEN_", "FATTR_"].iter().any(|p| m.starts_with(p)) && !ours.contains(*m))
            .collect();
        eprintln!("  header macros with no Rust counterpart: {unmapped:?}");
    }
}
