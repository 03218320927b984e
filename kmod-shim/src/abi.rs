//! The FUSE kernel uAPI, protocol 7.45 (`include/uapi/linux/fuse.h`, Linux 6.18).
//!
//! Every struct is `#[repr(C)]` and derives zerocopy's traits, so requests are
//! parsed by checked casts and replies are serialised by `as_bytes()`; nothing
//! is hand-cast. Each struct carries a compile-time size assertion against the
//! value the kernel header gives, and `tests::sizes_match_system_header`
//! cross-checks the sizes against the C header installed on the machine.
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
    use super::*;
    use std::mem::size_of;

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

    /// Compiles a C program against the machine's `<linux/fuse.h>` and compares
    /// every struct it knows with ours. The system header may be older than 7.45
    /// (Debian 12 ships 7.38); structs it lacks are checked by the `abi_size!`
    /// assertions alone, and so is a machine without a C compiler.
    #[test]
    fn sizes_match_system_header() {
        let header = std::path::Path::new("/usr/include/linux/fuse.h");
        let Ok(text) = std::fs::read_to_string(header) else {
            eprintln!("no {}: compile-time sizes only", header.display());
            return;
        };
        let ours: &[(&str, usize)] = &[
            ("fuse_attr", size_of::<Attr>()),
            ("fuse_kstatfs", size_of::<Kstatfs>()),
            ("fuse_file_lock", size_of::<FileLock>()),
            ("fuse_entry_out", size_of::<EntryOut>()),
            ("fuse_forget_in", size_of::<ForgetIn>()),
            ("fuse_forget_one", size_of::<ForgetOne>()),
            ("fuse_batch_forget_in", size_of::<BatchForgetIn>()),
            ("fuse_getattr_in", size_of::<GetattrIn>()),
            ("fuse_attr_out", size_of::<AttrOut>()),
            ("fuse_statx_in", size_of::<StatxIn>()),
            ("fuse_statx_out", size_of::<StatxOut>()),
            ("fuse_statx", size_of::<Statx>()),
            ("fuse_mknod_in", size_of::<MknodIn>()),
            ("fuse_mkdir_in", size_of::<MkdirIn>()),
            ("fuse_rename_in", size_of::<RenameIn>()),
            ("fuse_rename2_in", size_of::<Rename2In>()),
            ("fuse_link_in", size_of::<LinkIn>()),
            ("fuse_setattr_in", size_of::<SetattrIn>()),
            ("fuse_open_in", size_of::<OpenIn>()),
            ("fuse_create_in", size_of::<CreateIn>()),
            ("fuse_open_out", size_of::<OpenOut>()),
            ("fuse_release_in", size_of::<ReleaseIn>()),
            ("fuse_flush_in", size_of::<FlushIn>()),
            ("fuse_read_in", size_of::<ReadIn>()),
            ("fuse_write_in", size_of::<WriteIn>()),
            ("fuse_write_out", size_of::<WriteOut>()),
            ("fuse_statfs_out", size_of::<StatfsOut>()),
            ("fuse_fsync_in", size_of::<FsyncIn>()),
            ("fuse_setxattr_in", size_of::<SetxattrIn>()),
            ("fuse_getxattr_in", size_of::<GetxattrIn>()),
            ("fuse_getxattr_out", size_of::<GetxattrOut>()),
            ("fuse_lk_in", size_of::<LkIn>()),
            ("fuse_lk_out", size_of::<LkOut>()),
            ("fuse_access_in", size_of::<AccessIn>()),
            ("fuse_init_in", size_of::<InitIn>()),
            ("fuse_init_out", size_of::<InitOut>()),
            ("fuse_interrupt_in", size_of::<InterruptIn>()),
            ("fuse_bmap_in", size_of::<BmapIn>()),
            ("fuse_bmap_out", size_of::<BmapOut>()),
            ("fuse_ioctl_in", size_of::<IoctlIn>()),
            ("fuse_ioctl_iovec", size_of::<IoctlIovec>()),
            ("fuse_ioctl_out", size_of::<IoctlOut>()),
            ("fuse_poll_in", size_of::<PollIn>()),
            ("fuse_poll_out", size_of::<PollOut>()),
            ("fuse_fallocate_in", size_of::<FallocateIn>()),
            ("fuse_in_header", size_of::<InHeader>()),
            ("fuse_out_header", size_of::<OutHeader>()),
            ("fuse_dirent", size_of::<Dirent>()),
            ("fuse_direntplus", size_of::<DirentPlus>()),
            ("fuse_notify_inval_inode_out", size_of::<NotifyInvalInodeOut>()),
            ("fuse_notify_inval_entry_out", size_of::<NotifyInvalEntryOut>()),
            ("fuse_notify_delete_out", size_of::<NotifyDeleteOut>()),
            ("fuse_notify_store_out", size_of::<NotifyStoreOut>()),
            ("fuse_notify_retrieve_out", size_of::<NotifyRetrieveOut>()),
            ("fuse_notify_retrieve_in", size_of::<NotifyRetrieveIn>()),
            ("fuse_backing_map", size_of::<BackingMap>()),
            ("fuse_lseek_in", size_of::<LseekIn>()),
            ("fuse_lseek_out", size_of::<LseekOut>()),
            ("fuse_copy_file_range_in", size_of::<CopyFileRangeIn>()),
            ("fuse_setupmapping_in", size_of::<SetupmappingIn>()),
            ("fuse_removemapping_one", size_of::<RemovemappingOne>()),
            ("fuse_syncfs_in", size_of::<SyncfsIn>()),
            ("fuse_ext_header", size_of::<ExtHeader>()),
            ("fuse_uring_ent_in_out", size_of::<UringEntInOut>()),
            ("fuse_uring_req_header", size_of::<UringReqHeader>()),
            ("fuse_uring_cmd_req", size_of::<UringCmdReq>()),
        ];
        let known: Vec<&(&str, usize)> = ours
            .iter()
            .filter(|(name, _)| text.contains(&format!("struct {name} {{")))
            .collect();
        assert!(known.len() >= 40, "system header knows too few structs");
        let mut program = String::from("#include <stdio.h>\n#include <linux/fuse.h>\nint main(void){\n");
        for (name, _) in &known {
            program.push_str(&format!("printf(\"%zu\\n\", sizeof(struct {name}));\n"));
        }
        program.push_str("return 0;}\n");
        let dir = std::env::temp_dir().join(format!("kmod-shim-abi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("abi.c");
        let bin = dir.join("abi");
        std::fs::write(&src, program).unwrap();
        let cc = std::process::Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .status();
        match cc {
            Ok(status) if status.success() => {}
            other => {
                let _ = std::fs::remove_dir_all(&dir);
                eprintln!("no working C compiler ({other:?}): compile-time sizes only");
                return;
            }
        }
        let out = std::process::Command::new(&bin).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let sizes: Vec<usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(sizes.len(), known.len());
        for ((name, rust), c) in known.iter().zip(sizes) {
            assert_eq!(*rust, c, "struct {name}: Rust {rust} bytes, C header {c}");
        }
    }
}
