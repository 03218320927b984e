//! INIT negotiation: what the kernel offers, what the filesystem wants, what
//! we answer.
//!
//! The kernel sends its highest protocol version and the features it offers;
//! we answer with the lower of the two minors and the features both sides
//! want. Protocol 7.31 (Linux 5.7) is the oldest we accept: every struct
//! layout we parse is then fixed except `fuse_init_in` (grown in 7.36) and
//! `fuse_setxattr_in` (grown behind `FUSE_SETXATTR_EXT`, which we do not ask for).

use fuse_backend_rs::api::filesystem::FsOptions;
use kmod_shim::abi::{
    init_flags as f, InitIn, InitOut, COMPAT_INIT_IN_SIZE, KERNEL_MINOR_VERSION, KERNEL_VERSION,
    MIN_KERNEL_MINOR_VERSION,
};
use zerocopy::FromZeros;

use crate::dispatch::Failure;

/// Largest `max_write` we accept in a [`InitConfig`] (the kernel caps
/// requests at 256 pages by default anyway).
pub const MAX_WRITE_LIMIT: u32 = 16 << 20;
const PAGE_SIZE: u32 = 4096;

/// Features that change message layouts or semantics in ways this layer
/// handles. Anything else the filesystem asks for is dropped, so the kernel
/// never sends a format we cannot parse (e.g. `FUSE_SECURITY_CTX` extensions).
const UNDERSTOOD: u64 = f::ASYNC_READ
    | f::POSIX_LOCKS
    | f::ATOMIC_O_TRUNC
    | f::EXPORT_SUPPORT
    | f::BIG_WRITES
    | f::DONT_MASK
    | f::FLOCK_LOCKS
    | f::HAS_IOCTL_DIR
    | f::AUTO_INVAL_DATA
    | f::DO_READDIRPLUS
    | f::READDIRPLUS_AUTO
    | f::ASYNC_DIO
    | f::WRITEBACK_CACHE
    | f::NO_OPEN_SUPPORT
    | f::PARALLEL_DIROPS
    | f::HANDLE_KILLPRIV
    | f::POSIX_ACL
    | f::MAX_PAGES
    | f::CACHE_SYMLINKS
    | f::NO_OPENDIR_SUPPORT
    | f::EXPLICIT_INVAL_DATA
    | f::HANDLE_KILLPRIV_V2
    | f::INIT_EXT
    | f::NO_EXPORT_SUPPORT
    | f::PASSTHROUGH
    | f::ALLOW_IDMAP
    | f::OVER_IO_URING;

/// Session settings that shape the INIT reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// Largest WRITE payload, in bytes (also sets `max_pages`).
    pub max_write: u32,
    /// Largest readahead the kernel may do; capped by the kernel's offer.
    pub max_readahead: u32,
    /// Background requests (readahead, async direct I/O) in flight at once.
    pub max_background: u16,
    /// Background requests above which the kernel throttles writers.
    pub congestion_threshold: u16,
    /// Let reads of one file run in parallel.
    pub async_read: bool,
    /// Let lookups and readdirs of one directory run in parallel.
    pub parallel_dirops: bool,
    /// Offer READDIRPLUS to filesystems that want it.
    pub readdirplus: bool,
    /// Buffer writes in the page cache (the filesystem must want it too).
    pub writeback_cache: bool,
    /// Ask for FUSE passthrough (the filesystem must want it too).
    pub passthrough: bool,
    /// Ask for FUSE-over-io_uring (set by the `uring` transport).
    pub over_io_uring: bool,
    /// Ask for `FUSE_HANDLE_KILLPRIV_V2`: the dispatcher then clears
    /// set-user-ID and set-group-ID bits on writes, truncates and changes of
    /// owner by Linux's rules, for any filesystem ([`crate::killpriv`]),
    /// instead of the kernel, whose own clearing for FUSE keeps a
    /// set-group-ID bit without group-execute that Linux drops for callers
    /// outside the file's group.
    pub kill_privileges: bool,
    /// Ask for `FUSE_POSIX_ACL`: the kernel then checks POSIX ACLs (read
    /// with GETXATTR of `system.posix_acl_access` and cached) along with
    /// the mode, and turns `default_permissions` on for the mount. The
    /// filesystem must keep ACL and mode in step: a new access ACL sets
    /// the mode's bits, a `chmod` rewrites the ACL, and entries created
    /// in a directory with a default ACL inherit it. Without it the
    /// kernel passes ACL xattrs through but checks only the mode.
    pub posix_acl: bool,
    /// Ask for `FUSE_DONT_MASK`: the kernel then sends creations' modes
    /// without applying the caller's umask (it still sends the umask), and
    /// the filesystem applies it: under `FUSE_POSIX_ACL` the only way a
    /// directory's default ACL can replace the umask, as Linux has it.
    /// Only for filesystems that apply the umask they are given.
    pub dont_mask: bool,
    /// Ask for `FUSE_ALLOW_IDMAP` (Linux 6.12+): the mount may then be
    /// cloned into idmapped mounts (mount_setattr(2) `MOUNT_ATTR_IDMAP`).
    /// The kernel accepts it only on a mount with `default_permissions`
    /// (it fails the connection otherwise; [`crate::Session::mount`]
    /// refuses the combination first), and from then on sends the
    /// caller's ids only with requests that create an inode (MKNOD, MKDIR,
    /// SYMLINK, CREATE, TMPFILE, and RENAME2 with `RENAME_WHITEOUT`),
    /// mapped through the idmap of the mount used; every other request,
    /// on any mount of the filesystem, carries
    /// [`kmod_shim::abi::INVALID_UIDGID`] as uid and gid. A filesystem
    /// that needs its caller for anything but owning new inodes must not
    /// ask for it.
    pub allow_idmap: bool,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            max_write: 1 << 20,
            max_readahead: 1 << 20,
            max_background: 64,
            congestion_threshold: 48,
            async_read: true,
            parallel_dirops: true,
            readdirplus: true,
            writeback_cache: false,
            passthrough: false,
            over_io_uring: false,
            kill_privileges: true,
            posix_acl: false,
            dont_mask: false,
            allow_idmap: false,
        }
    }
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol minor both sides speak.
    pub minor: u32,
    /// What the kernel offered (flags and flags2 as one set).
    pub offered: u64,
    /// What we enabled.
    pub flags: u64,
    /// `max_write` we announced.
    pub max_write: u32,
    /// `max_pages` we announced (largest READ/READDIR reply, in pages).
    pub max_pages: u16,
    /// `max_readahead` we announced.
    pub max_readahead: u32,
}

impl Negotiated {
    /// A feature was enabled.
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }

    /// Largest reply body a request may need: a READ or READDIR of
    /// `max_pages` pages, or a read of `max_write`.
    pub fn max_reply_bytes(&self) -> usize {
        (usize::from(self.max_pages) * PAGE_SIZE as usize).max(self.max_write as usize)
    }

    /// Smallest buffer a `/dev/fuse` read may use: the kernel refuses reads
    /// into anything shorter than a WRITE of `max_write` with its headers.
    pub fn request_buffer_bytes(&self) -> usize {
        (self.max_write as usize + 4096).max(kmod_shim::abi::MIN_READ_BUFFER)
    }
}

/// What to send back to an INIT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitAnswer {
    /// Protocol agreed: send this `fuse_init_out`.
    Agreed(InitOut, Negotiated),
    /// The kernel speaks a newer major: answer with ours and wait for another INIT.
    RetryWithMajor(InitOut),
    /// Refuse (send this errno) and end the session.
    Refuse(i32, String),
}

/// Negotiates from the raw INIT argument bytes. `fs_init` receives the
/// capabilities the kernel and this layer offer and returns what the
/// filesystem wants (fuse-backend-rs's `FileSystem::init`).
pub fn negotiate(
    arg: &[u8],
    config: &InitConfig,
    fs_init: impl FnOnce(FsOptions) -> std::io::Result<FsOptions>,
) -> InitAnswer {
    if arg.len() < 8 {
        return InitAnswer::Refuse(libc::EINVAL, format!("INIT argument of {} bytes", arg.len()));
    }
    let mut init = InitIn::new_zeroed();
    let take = arg.len().min(std::mem::size_of::<InitIn>());
    zerocopy::IntoBytes::as_mut_bytes(&mut init)[..take].copy_from_slice(&arg[..take]);

    if init.major > KERNEL_VERSION {
        let out = InitOut {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION,
            ..Default::default()
        };
        return InitAnswer::RetryWithMajor(out);
    }
    if init.major < KERNEL_VERSION || init.minor < MIN_KERNEL_MINOR_VERSION {
        return InitAnswer::Refuse(
            libc::EPROTO,
            format!(
                "kernel speaks FUSE {}.{}, xfuse needs {KERNEL_VERSION}.{MIN_KERNEL_MINOR_VERSION} or newer",
                init.major, init.minor
            ),
        );
    }
    if arg.len() < COMPAT_INIT_IN_SIZE {
        return InitAnswer::Refuse(libc::EINVAL, format!("INIT argument of {} bytes", arg.len()));
    }
    let minor = init.minor.min(KERNEL_MINOR_VERSION);
    let mut offered = u64::from(init.flags);
    if offered & f::INIT_EXT != 0 && arg.len() >= std::mem::size_of::<InitIn>() {
        offered |= u64::from(init.flags2) << 32;
    }

    // What we may offer the filesystem: the kernel's offer, minus what this
    // layer cannot parse and what the session config turns off.
    let mut may = offered & UNDERSTOOD;
    if !config.writeback_cache {
        may &= !f::WRITEBACK_CACHE;
    }
    if !config.readdirplus {
        may &= !(f::DO_READDIRPLUS | f::READDIRPLUS_AUTO);
    }
    if !config.passthrough {
        may &= !f::PASSTHROUGH;
    }
    if !config.posix_acl {
        // It would turn default_permissions on behind the session's back.
        may &= !f::POSIX_ACL;
    }
    if !config.allow_idmap {
        // It takes the callers' ids away from most requests.
        may &= !f::ALLOW_IDMAP;
    }
    // fuse-backend-rs's FsOptions mirrors the kernel's bits, except that it
    // keeps its own bit 63 for a passthrough of its own; never offer that.
    let capable = FsOptions::from_bits_truncate(may & !(1 << 63));
    let wanted = match fs_init(capable) {
        Ok(w) => w.bits() & may,
        Err(e) => {
            let why = format!("filesystem init failed: {e}");
            return InitAnswer::Refuse(Failure::Fs(e).errno(), why);
        }
    };

    // Features this layer enables on its own where the kernel offers them.
    let mut ours = f::BIG_WRITES | f::MAX_PAGES | f::INIT_EXT | f::AUTO_INVAL_DATA | f::ASYNC_DIO;
    if config.async_read {
        ours |= f::ASYNC_READ;
    }
    if config.parallel_dirops {
        ours |= f::PARALLEL_DIROPS;
    }
    if config.passthrough {
        ours |= f::PASSTHROUGH;
    }
    if config.over_io_uring {
        ours |= f::OVER_IO_URING;
    }
    if config.kill_privileges {
        ours |= f::HANDLE_KILLPRIV_V2;
    }
    if config.posix_acl {
        ours |= f::POSIX_ACL;
    }
    if config.dont_mask {
        ours |= f::DONT_MASK;
    }
    if config.allow_idmap {
        ours |= f::ALLOW_IDMAP;
    }
    let mut flags = (wanted | (ours & may)) & offered;
    if flags & f::PASSTHROUGH != 0 && flags & f::WRITEBACK_CACHE != 0 {
        // The kernel refuses the two together; the explicit request wins.
        flags &= !f::WRITEBACK_CACHE;
    }

    let max_write = config.max_write.clamp(PAGE_SIZE, MAX_WRITE_LIMIT);
    let max_pages = max_write.div_ceil(PAGE_SIZE).min(u32::from(u16::MAX)) as u16;
    let max_readahead = config.max_readahead.min(init.max_readahead);
    let out = InitOut {
        major: KERNEL_VERSION,
        minor,
        max_readahead,
        flags: flags as u32,
        max_background: config.max_background,
        congestion_threshold: config.congestion_threshold.min(config.max_background),
        max_write,
        time_gran: 1,
        max_pages,
        map_alignment: 0,
        flags2: if flags & f::INIT_EXT != 0 {
            (flags >> 32) as u32
        } else {
            0
        },
        max_stack_depth: if flags & f::PASSTHROUGH != 0 { 1 } else { 0 },
        request_timeout: 0,
        unused: [0; 11],
    };
    let negotiated = Negotiated {
        minor,
        offered,
        flags,
        max_write,
        max_pages,
        max_readahead,
    };
    InitAnswer::Agreed(out, negotiated)
}

/// Names of the flags set in `flags`, for logs.
pub fn flag_names(flags: u64) -> Vec<&'static str> {
    const NAMES: [(u64, &str); 43] = [
        (f::ASYNC_READ, "ASYNC_READ"),
        (f::POSIX_LOCKS, "POSIX_LOCKS"),
        (f::FILE_OPS, "FILE_OPS"),
        (f::ATOMIC_O_TRUNC, "ATOMIC_O_TRUNC"),
        (f::EXPORT_SUPPORT, "EXPORT_SUPPORT"),
        (f::BIG_WRITES, "BIG_WRITES"),
        (f::DONT_MASK, "DONT_MASK"),
        (f::SPLICE_WRITE, "SPLICE_WRITE"),
        (f::SPLICE_MOVE, "SPLICE_MOVE"),
        (f::SPLICE_READ, "SPLICE_READ"),
        (f::FLOCK_LOCKS, "FLOCK_LOCKS"),
        (f::HAS_IOCTL_DIR, "HAS_IOCTL_DIR"),
        (f::AUTO_INVAL_DATA, "AUTO_INVAL_DATA"),
        (f::DO_READDIRPLUS, "DO_READDIRPLUS"),
        (f::READDIRPLUS_AUTO, "READDIRPLUS_AUTO"),
        (f::ASYNC_DIO, "ASYNC_DIO"),
        (f::WRITEBACK_CACHE, "WRITEBACK_CACHE"),
        (f::NO_OPEN_SUPPORT, "NO_OPEN_SUPPORT"),
        (f::PARALLEL_DIROPS, "PARALLEL_DIROPS"),
        (f::HANDLE_KILLPRIV, "HANDLE_KILLPRIV"),
        (f::POSIX_ACL, "POSIX_ACL"),
        (f::ABORT_ERROR, "ABORT_ERROR"),
        (f::MAX_PAGES, "MAX_PAGES"),
        (f::CACHE_SYMLINKS, "CACHE_SYMLINKS"),
        (f::NO_OPENDIR_SUPPORT, "NO_OPENDIR_SUPPORT"),
        (f::EXPLICIT_INVAL_DATA, "EXPLICIT_INVAL_DATA"),
        (f::MAP_ALIGNMENT, "MAP_ALIGNMENT"),
        (f::SUBMOUNTS, "SUBMOUNTS"),
        (f::HANDLE_KILLPRIV_V2, "HANDLE_KILLPRIV_V2"),
        (f::SETXATTR_EXT, "SETXATTR_EXT"),
        (f::INIT_EXT, "INIT_EXT"),
        (f::INIT_RESERVED, "INIT_RESERVED"),
        (f::SECURITY_CTX, "SECURITY_CTX"),
        (f::HAS_INODE_DAX, "HAS_INODE_DAX"),
        (f::CREATE_SUPP_GROUP, "CREATE_SUPP_GROUP"),
        (f::HAS_EXPIRE_ONLY, "HAS_EXPIRE_ONLY"),
        (f::DIRECT_IO_ALLOW_MMAP, "DIRECT_IO_ALLOW_MMAP"),
        (f::PASSTHROUGH, "PASSTHROUGH"),
        (f::NO_EXPORT_SUPPORT, "NO_EXPORT_SUPPORT"),
        (f::HAS_RESEND, "HAS_RESEND"),
        (f::ALLOW_IDMAP, "ALLOW_IDMAP"),
        (f::OVER_IO_URING, "OVER_IO_URING"),
        (f::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn init_in(minor: u32, flags: u64) -> Vec<u8> {
        InitIn {
            major: 7,
            minor,
            max_readahead: 128 << 10,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        }
        .as_bytes()
        .to_vec()
    }

    fn agreed(answer: InitAnswer) -> (InitOut, Negotiated) {
        match answer {
            InitAnswer::Agreed(o, n) => (o, n),
            other => panic!("expected agreement, got {other:?}"),
        }
    }

    const KERNEL_6_18: u64 = f::ASYNC_READ
        | f::POSIX_LOCKS
        | f::ATOMIC_O_TRUNC
        | f::BIG_WRITES
        | f::DO_READDIRPLUS
        | f::READDIRPLUS_AUTO
        | f::WRITEBACK_CACHE
        | f::PARALLEL_DIROPS
        | f::MAX_PAGES
        | f::INIT_EXT
        | f::SECURITY_CTX
        | f::CREATE_SUPP_GROUP
        | f::PASSTHROUGH
        | f::OVER_IO_URING
        | f::AUTO_INVAL_DATA
        | f::ASYNC_DIO;

    #[test]
    fn new_kernel_negotiates_745_and_drops_what_we_cannot_parse() {
        let (out, n) = agreed(negotiate(
            &init_in(45, KERNEL_6_18),
            &InitConfig::default(),
            |cap| {
                assert!(
                    !cap.contains(FsOptions::WRITEBACK_CACHE),
                    "writeback off by default"
                );
                // A filesystem that asks for everything it is offered, and more.
                Ok(cap | FsOptions::from_bits_truncate(f::SECURITY_CTX))
            },
        ));
        assert_eq!((out.major, out.minor), (7, 45));
        assert!(n.has(f::DO_READDIRPLUS) && n.has(f::PARALLEL_DIROPS) && n.has(f::MAX_PAGES));
        assert!(!n.has(f::SECURITY_CTX) && !n.has(f::CREATE_SUPP_GROUP));
        assert!(!n.has(f::WRITEBACK_CACHE) && !n.has(f::PASSTHROUGH) && !n.has(f::OVER_IO_URING));
        assert_eq!(out.max_write, 1 << 20);
        assert_eq!(out.max_pages, 256);
        assert_eq!(out.max_readahead, 128 << 10, "capped by the kernel's offer");
        assert_eq!(u64::from(out.flags) | (u64::from(out.flags2) << 32), n.flags);
    }

    #[test]
    fn newer_kernel_minor_is_negotiated_down() {
        let (out, n) = agreed(negotiate(&init_in(99, KERNEL_6_18), &InitConfig::default(), Ok));
        assert_eq!(out.minor, KERNEL_MINOR_VERSION);
        assert_eq!(n.minor, 45);
    }

    #[test]
    fn old_kernel_731_without_flags2() {
        // 7.31 kernels send the 16-byte compat fuse_init_in and know no flags2.
        let arg = &init_in(31, f::ASYNC_READ | f::BIG_WRITES | f::MAX_PAGES)[..16];
        let (out, n) = agreed(negotiate(arg, &InitConfig::default(), Ok));
        assert_eq!(out.minor, 31);
        assert_eq!(out.flags2, 0);
        assert!(!n.has(f::INIT_EXT));
        assert!(n.has(f::MAX_PAGES) && n.has(f::ASYNC_READ));
    }

    #[test]
    fn flags2_ignored_without_init_ext() {
        let (_, n) = agreed(negotiate(
            &init_in(45, f::ASYNC_READ | f::PASSTHROUGH),
            &InitConfig {
                passthrough: true,
                ..Default::default()
            },
            Ok,
        ));
        assert!(!n.has(f::PASSTHROUGH), "bits above 31 need INIT_EXT");
    }

    #[test]
    fn too_old_or_wrong_major_is_refused_or_retried() {
        assert!(matches!(
            negotiate(&init_in(30, 0), &InitConfig::default(), Ok),
            InitAnswer::Refuse(libc::EPROTO, _)
        ));
        let mut v8 = init_in(1, 0);
        v8[0] = 8;
        assert!(matches!(
            negotiate(&v8, &InitConfig::default(), Ok),
            InitAnswer::RetryWithMajor(InitOut { major: 7, .. })
        ));
        let mut v6 = init_in(40, 0);
        v6[0] = 6;
        assert!(matches!(
            negotiate(&v6, &InitConfig::default(), Ok),
            InitAnswer::Refuse(..)
        ));
        assert!(matches!(
            negotiate(&[1, 2, 3], &InitConfig::default(), Ok),
            InitAnswer::Refuse(..)
        ));
    }

    #[test]
    fn filesystem_init_failure_refuses() {
        let answer = negotiate(&init_in(45, KERNEL_6_18), &InitConfig::default(), |_| {
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        });
        assert!(matches!(answer, InitAnswer::Refuse(libc::EACCES, _)));
    }

    #[test]
    fn writeback_and_passthrough_are_exclusive() {
        let cfg = InitConfig {
            writeback_cache: true,
            passthrough: true,
            ..Default::default()
        };
        let (out, n) = agreed(negotiate(&init_in(45, KERNEL_6_18), &cfg, Ok));
        assert!(n.has(f::PASSTHROUGH) && !n.has(f::WRITEBACK_CACHE));
        assert_eq!(out.max_stack_depth, 1);
        let cfg = InitConfig {
            writeback_cache: true,
            ..Default::default()
        };
        let (_, n) = agreed(negotiate(&init_in(45, KERNEL_6_18), &cfg, Ok));
        assert!(n.has(f::WRITEBACK_CACHE));
    }

    #[test]
    fn killpriv_v2_is_asked_for_unless_turned_off() {
        // A filesystem that asks for nothing itself.
        let nothing = |_| Ok(FsOptions::empty());
        let offer = KERNEL_6_18 | f::HANDLE_KILLPRIV | f::HANDLE_KILLPRIV_V2;
        let (_, n) = agreed(negotiate(&init_in(45, offer), &InitConfig::default(), nothing));
        assert!(n.has(f::HANDLE_KILLPRIV_V2), "the dispatcher clears the bits");
        assert!(!n.has(f::HANDLE_KILLPRIV), "v1 is the filesystem's to ask for");
        let cfg = InitConfig {
            kill_privileges: false,
            ..Default::default()
        };
        let (_, n) = agreed(negotiate(&init_in(45, offer), &cfg, nothing));
        assert!(!n.has(f::HANDLE_KILLPRIV_V2), "the kernel clears the bits");
    }

    #[test]
    fn max_write_is_clamped() {
        let cfg = InitConfig {
            max_write: 1,
            ..Default::default()
        };
        let (out, _) = agreed(negotiate(&init_in(45, KERNEL_6_18), &cfg, Ok));
        assert_eq!((out.max_write, out.max_pages), (4096, 1));
        let cfg = InitConfig {
            max_write: u32::MAX,
            ..Default::default()
        };
        let (out, _) = agreed(negotiate(&init_in(45, KERNEL_6_18), &cfg, Ok));
        assert_eq!(out.max_write, MAX_WRITE_LIMIT);
    }

    #[test]
    fn posix_acl_only_when_the_session_asks() {
        let offer = KERNEL_6_18 | f::POSIX_ACL;
        // A filesystem asking for it cannot turn it (and with it
        // default_permissions) on by itself...
        let wants_acl = |cap: FsOptions| Ok(cap | FsOptions::POSIX_ACL);
        let (_, n) = agreed(negotiate(&init_in(45, offer), &InitConfig::default(), wants_acl));
        assert!(!n.has(f::POSIX_ACL));
        // ...the session turns it on for any filesystem, if offered.
        let cfg = InitConfig {
            posix_acl: true,
            ..Default::default()
        };
        let (_, n) = agreed(negotiate(&init_in(45, offer), &cfg, Ok));
        assert!(n.has(f::POSIX_ACL));
        let (_, n) = agreed(negotiate(&init_in(45, KERNEL_6_18), &cfg, Ok));
        assert!(!n.has(f::POSIX_ACL), "not offered");
    }

    #[test]
    fn allow_idmap_only_when_the_session_asks_and_the_kernel_offers() {
        let offer = KERNEL_6_18 | f::ALLOW_IDMAP;
        // A filesystem cannot ask for it by itself: it changes what every
        // request's header says.
        let wants = |cap: FsOptions| Ok(cap | FsOptions::from_bits_truncate(f::ALLOW_IDMAP));
        let (_, n) = agreed(negotiate(&init_in(45, offer), &InitConfig::default(), wants));
        assert!(!n.has(f::ALLOW_IDMAP), "off unless the session asks");
        let cfg = InitConfig {
            allow_idmap: true,
            ..Default::default()
        };
        let nothing = |_| Ok(FsOptions::empty());
        let (out, n) = agreed(negotiate(&init_in(45, offer), &cfg, nothing));
        assert!(n.has(f::ALLOW_IDMAP));
        assert_eq!(out.flags2 & (1 << 8), 1 << 8, "bit 40 travels as flags2 bit 8");
        let (_, n) = agreed(negotiate(&init_in(45, KERNEL_6_18), &cfg, nothing));
        assert!(!n.has(f::ALLOW_IDMAP), "not offered (Linux before 6.12)");
    }
}
