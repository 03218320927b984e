//! The POSIX operations, each one transaction on the KV engine.
//!
//! [`Meta`] is one client's handle on the namespace: it holds no namespace
//! state of its own beyond a reserved range of inode numbers and its client
//! id, so any number of `Meta`s (in one process or many) can serve one
//! engine. Each operation runs [`retry`] around a body that reads what it
//! needs, checks POSIX rules, and stages its writes; conflicts rerun it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xfuse::acl::{self, Acl};

use super::kv::{retry, KvEngine, KvError, RetryPolicy, Txn, TxnError};
use super::local::{self, LocalSessions};
use super::schema::{
    self, tag, CounterRec, DentryRec, InodeRec, ListingRec, SchemaError, Timestamp, ROOT_INO,
};

/// A source of time, so a simulation can run on a fake one.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// Errors of metadata operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// A POSIX error for the caller (ENOENT, EEXIST, ...).
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// The engine failed, or conflicts outlasted the retry bound.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A stored record does not parse.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The namespace breaks an invariant (an entry naming a missing inode).
    #[error("namespace corrupt: {0}")]
    Corrupt(String),
    /// The change was done before ([`Meta::exactly_once`]): its recorded
    /// outcome.
    #[error("change already done")]
    Done(Outcome),
}

/// The recorded outcome of a numbered change, as its recorder encoded it
/// (for the metadata service: the call's `Answer`, so a replay reads back
/// what the first run answered, whatever build recorded it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome(pub Vec<u8>);

/// What a change's value leaves for a resend to find ([`Meta::exactly_once`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Record this encoding of it as the change's outcome.
    Outcome(Vec<u8>),
    /// Nothing: the change's own writes show it was done, and a resend
    /// that finds them answers as the first run did (an open's session,
    /// [`Meta::open`]; a close that deleted nothing, [`Meta::release`]).
    Unneeded,
    /// The value is not of the type the recorder expects: a bug.
    Mistyped,
}

/// The bit of an open handle that makes it a numbered change's
/// ([`Meta::open`]); handles from the allocator stay below it.
pub const SEQ_HANDLE: u64 = 1 << 63;

/// Says what to record of a change's value.
pub type Recorder = fn(&dyn std::any::Any) -> Record;

impl MetaError {
    /// The errno to hand the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::Errno(e) => *e,
            // Conflicts that outlasted every retry: the caller may try again.
            MetaError::Kv(KvError::Conflict) => libc::EAGAIN,
            MetaError::Kv(KvError::Unavailable(_)) => libc::EIO,
            MetaError::Kv(KvError::Failed(_)) | MetaError::Schema(_) | MetaError::Corrupt(_) => libc::EIO,
            // Answered by the caller of exactly_once; never a caller's errno.
            MetaError::Done(_) => libc::EIO,
        }
    }
}

impl TxnError for MetaError {
    fn is_conflict(&self) -> bool {
        matches!(self, MetaError::Kv(KvError::Conflict))
    }
}

impl From<MetaError> for std::io::Error {
    fn from(e: MetaError) -> Self {
        std::io::Error::from_raw_os_error(e.errno())
    }
}

fn errno<T>(e: i32) -> Result<T, MetaError> {
    Err(MetaError::Errno(e))
}

/// Who asks, and whether the metadata layer checks their permissions.
///
/// On the wire (a mount asking an `xfused meta` service) only the uid and
/// the groups travel: `check` is not sent, and a caller that arrives is
/// always checked. Whether to check is the service's decision, never the
/// sender's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (empty when unknown; then only the primary
    /// group counts).
    #[serde(deserialize_with = "bounded_groups")]
    pub groups: Vec<u32>,
    /// Check permissions here. A FUSE mount with `default_permissions`
    /// turns this off for its in-process namespace: the kernel has already
    /// checked, with the caller's supplementary groups.
    #[serde(skip, default = "checked")]
    pub check: bool,
    /// The calling process's umask, for the permission bits of what it
    /// creates where no default ACL applies (0: the mode is already
    /// masked, as the kernel does without `FUSE_DONT_MASK`).
    #[serde(default)]
    pub umask: u32,
}

/// Most supplementary groups a caller may state (Linux allows 65,536; a
/// caller in more is checked with the first this many).
pub const GROUPS_MAX: usize = 256;

fn checked() -> bool {
    true
}

fn bounded_groups<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let groups = <Vec<u32> as serde::Deserialize>::deserialize(d)?;
    if groups.len() > GROUPS_MAX {
        return Err(serde::de::Error::custom(format!(
            "{} supplementary groups, more than {GROUPS_MAX}",
            groups.len()
        )));
    }
    Ok(groups)
}

impl Caller {
    /// Root, unchecked.
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        check: false,
        umask: 0,
    };

    /// Whether `gid` is the caller's primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The numbered change this thread is running ([`Meta::exactly_once`]).
#[derive(Debug, Clone, Copy)]
struct Change {
    seq: u64,
    /// Sent before: look for its outcome. (A first sending cannot have
    /// one: numbers are never reused.)
    resent: bool,
    prune_from: u64,
    prune_to: u64,
    record: Recorder,
}

thread_local! {
    static CHANGE: std::cell::Cell<Option<Change>> = const { std::cell::Cell::new(None) };
    /// The directories the recorded transaction of this thread's numbered
    /// change wrote, as written ([`take_changed_dirs`]); `None` when no
    /// change is being recorded.
    static CHANGED_DIRS: std::cell::RefCell<Option<Vec<(u64, InodeRec)>>> =
        const { std::cell::RefCell::new(None) };
}

/// The directories the last numbered change run on this thread
/// ([`Meta::exactly_once`]) wrote, with their records as committed: a
/// service sends them with its answer, so the client can answer the
/// kernel's next `GETATTR` of the directory (which every change of a
/// directory provokes) without another call. Empty for a change that was
/// done before, or that wrote no directory.
pub fn take_changed_dirs() -> Vec<(u64, InodeRec)> {
    CHANGED_DIRS.with(|d| d.borrow_mut().take()).unwrap_or_default()
}

/// Most extended attributes one inode may have; one more is `ENOSPC`.
/// With names of at most 255 bytes, the list of names stays within
/// Linux's 64 KiB (`XATTR_LIST_MAX`), and values are at most 64 KiB each
/// (`XATTR_SIZE_MAX`).
pub const XATTRS_MAX: usize = 256;

/// Xattrs read per scan by `listxattr`: bounds the values held at once
/// (16 × 64 KiB) however many an inode has.
const XATTR_SCAN_PAGE: usize = 16;

/// `access(2)` bits.
pub mod access {
    /// Read.
    pub const R: u32 = 4;
    /// Write.
    pub const W: u32 = 2;
    /// Execute / search.
    pub const X: u32 = 1;
}

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimeSet {
    /// The current time.
    Now,
    /// This time.
    At(Timestamp),
}

/// The attributes `setattr` changes (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SetAttr {
    /// Permission bits (the type bits are kept).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size (regular files).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<TimeSet>,
    /// Modification time.
    pub mtime: Option<TimeSet>,
    /// Change time.
    pub ctime: Option<Timestamp>,
    /// The size changes through this client's open session `handle`
    /// (`ftruncate(2)`): the file was opened for writing, so write
    /// permission is not checked again, as on Linux.
    pub handle: Option<u64>,
}

/// File data that is no longer referenced and must be deleted from the
/// chunk store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reclaim {
    /// The inode that was deleted.
    pub ino: u64,
    /// Its chunk layout id.
    pub layout_id: u64,
    /// Its chunk size.
    pub chunk_size: u32,
    /// Its size when deleted.
    pub size: u64,
}

/// One readdir entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirItem {
    /// Entry name.
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: u64,
    /// Its `S_IFMT` bits.
    pub kind: u32,
    /// The offset to resume after this entry.
    pub cookie: u64,
}

/// Usage from the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Inodes in use.
    pub inodes: u64,
    /// Bytes of file sizes.
    pub bytes: u64,
}

/// `renameat2` flags.
pub mod rename_flags {
    /// Fail if the target exists.
    pub const NOREPLACE: u32 = 1;
    /// Swap the two entries.
    pub const EXCHANGE: u32 = 2;
    /// Leave a whiteout (overlayfs): not supported.
    pub const WHITEOUT: u32 = 4;
}

/// `setxattr` flags.
pub mod xattr_flags {
    /// Fail if the attribute exists.
    pub const CREATE: u32 = 1;
    /// Fail if it does not.
    pub const REPLACE: u32 = 2;
}

/// Most links to one inode.
pub const LINK_MAX: u32 = 65_000;
/// The largest size of a regular file: 4 EiB (2^62 bytes), so
/// `truncate -s 4E` works and one byte more is `EFBIG`, as is a write
/// request that would end past it (refused whole; through a FUSE mount the
/// kernel sends each page's bytes as a request of their own, so a write(2)
/// across the limit comes back short, ending at the limit, as POSIX has it).
///
/// Enforced here, by [`Meta::setattr`] and [`Meta::note_write`], so a
/// client of `xfused meta` over TCP or a virtio guest is held to it like a
/// FUSE mount. Why 2^62: sizes reach the kernel as `i64` (`st_size`,
/// `off_t`), and this layer takes their differences and sums as `i64` (a
/// setattr's size change, the statfs counters); a quarter of `i64`'s range
/// keeps every difference exact and the offset arithmetic of the I/O path
/// far from overflow. The chunk store addresses any `u64` offset and its
/// cost follows a file's data, not its size ([`crate::chunk`]), so a sparse
/// file this large costs what its data costs.
pub const FILE_SIZE_MAX_BYTES: u64 = 1 << 62;
/// Deepest directory nesting the subtree check walks before it calls the
/// tree corrupt.
const DEPTH_MAX: usize = 4096;
/// Inode numbers reserved per allocator transaction.
const INO_BATCH: u64 = 256;
/// Cookies `.` and `..` use; entries start after them.
const COOKIE_DOT: u64 = 1;
const COOKIE_DOTDOT: u64 = 2;
const COOKIE_FIRST: u64 = 3;

/// Settings of a [`Meta`].
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Chunk size of new files, in bytes.
    pub chunk_size_bytes: u32,
    /// How conflicts are retried.
    pub retry: RetryPolicy,
    /// A client whose lease is older than this is considered dead and its
    /// open-file sessions are reaped.
    pub lease: Duration,
    /// Keep this client's open-file sessions in the process until a file
    /// is unlinked while open ([`super::local`]): an open and a close then
    /// write nothing, and an unlink looks for sessions there, not in the
    /// store. Only for the store's one client (an embedded mount, which
    /// also reaps every other client at start, [`Meta::reap_others`]):
    /// another client's unlink would not see these sessions, nor this
    /// client's unlink its.
    pub local_sessions: bool,
    /// A table of open handles shared by every client made with this
    /// config (a metadata service on a store only it can open): like
    /// `local_sessions`, with one table for all of them.
    pub shared_sessions: Option<Arc<LocalSessions>>,
}

impl MetaConfig {
    /// The table of open handles a client made with this config keeps, if
    /// any.
    fn sessions_table(&self) -> Option<Arc<LocalSessions>> {
        self.shared_sessions
            .clone()
            .or_else(|| self.local_sessions.then(|| Arc::new(LocalSessions::new())))
    }
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            chunk_size_bytes: 1 << 20,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(30),
            local_sessions: false,
            shared_sessions: None,
        }
    }
}

/// One client's handle on the namespace (see the module docs).
pub struct Meta {
    engine: Arc<dyn KvEngine>,
    config: MetaConfig,
    clock: Arc<dyn Clock>,
    client: u64,
    ino_pool: Mutex<(u64, u64)>,
    handle_next: AtomicU64,
    /// This client's sessions kept in the process, if
    /// [`MetaConfig::local_sessions`].
    local: Option<Arc<LocalSessions>>,
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("engine", &self.engine)
            .field("client", &self.client)
            .finish()
    }
}

/// Inodes a transaction has loaded and changed, written back at the end, so
/// an operation touching one directory twice (a rename within it) sees its
/// own changes.
#[derive(Default)]
struct Staged {
    inodes: BTreeMap<u64, (InodeRec, bool)>,
    deleted: Vec<u64>,
}

impl Staged {
    fn load(&mut self, txn: &mut Txn<'_>, ino: u64) -> Result<&mut InodeRec, MetaError> {
        match self.inodes.entry(ino) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(&mut e.into_mut().0),
            std::collections::btree_map::Entry::Vacant(e) => {
                let Some(bytes) = txn.get(&schema::inode_key(ino))? else {
                    return errno(libc::ENOENT);
                };
                Ok(&mut e.insert((InodeRec::decode(&bytes)?, false)).0)
            }
        }
    }
    fn load_dir(&mut self, txn: &mut Txn<'_>, ino: u64) -> Result<&mut InodeRec, MetaError> {
        let rec = self.load(txn, ino)?;
        if !rec.is_dir() {
            return errno(libc::ENOTDIR);
        }
        Ok(rec)
    }
    /// Marks `ino` (already loaded) as changed.
    fn dirty(&mut self, ino: u64) -> &mut InodeRec {
        let entry = self.inodes.get_mut(&ino).expect("dirty() on an inode not loaded");
        entry.1 = true;
        &mut entry.0
    }
    fn insert(&mut self, ino: u64, rec: InodeRec) {
        self.inodes.insert(ino, (rec, true));
    }
    fn delete(&mut self, ino: u64) {
        self.inodes.remove(&ino);
        self.deleted.push(ino);
    }
    fn flush(self, txn: &mut Txn<'_>) {
        // Only the numbered change's own transaction (CHANGE is cleared
        // once it commits) is captured.
        let recording = CHANGE.with(|c| c.get().is_some());
        CHANGED_DIRS.with(|d| {
            if let Some(dirs) = d.borrow_mut().as_mut().filter(|_| recording) {
                dirs.extend(
                    self.inodes
                        .iter()
                        .filter(|(_, (rec, dirty))| *dirty && rec.is_dir())
                        .map(|(ino, (rec, _))| (*ino, rec.clone())),
                );
            }
        });
        for (ino, (rec, dirty)) in self.inodes {
            if dirty {
                txn.put(schema::inode_key(ino), rec.encode());
            }
        }
        for ino in self.deleted {
            txn.delete(schema::inode_key(ino));
        }
    }
}

fn check_name(name: &[u8]) -> Result<(), MetaError> {
    if name.len() > schema::NAME_LEN_MAX {
        return errno(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return errno(libc::EINVAL);
    }
    Ok(())
}

/// May `caller` access `rec` with `mask` (`access::*` bits)?
fn may(caller: &Caller, rec: &InodeRec, mask: u32) -> Result<(), MetaError> {
    if !caller.check || mask == 0 {
        return Ok(());
    }
    if caller.uid == 0 {
        // Root may do anything but execute a file nobody may execute.
        if mask & access::X != 0 && !rec.is_dir() && rec.mode & 0o111 == 0 {
            return errno(libc::EACCES);
        }
        return Ok(());
    }
    let bits = if caller.uid == rec.uid {
        (rec.mode >> 6) & 7
    } else if caller.in_group(rec.gid) {
        (rec.mode >> 3) & 7
    } else {
        rec.mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        errno(libc::EACCES)
    }
}

/// Whether the access ACL of an inode with record `rec` decides `caller`'s
/// access for `mask`: a checked caller, neither root nor the owner (whose
/// access the owner's bits say, the ACL's owner entry being those bits),
/// of an inode with xattrs.
fn acl_decides(caller: &Caller, rec: &InodeRec, mask: u32) -> bool {
    caller.check && mask != 0 && caller.uid != 0 && caller.uid != rec.uid && rec.xattrs > 0
}

/// [`may`], with the access ACL `acl` (its xattr form) when there is one:
/// Linux's `posix_acl_permission` ([`Acl::permits`]).
fn may_with_acl(caller: &Caller, rec: &InodeRec, acl: Option<&[u8]>, mask: u32) -> Result<(), MetaError> {
    let acl = match acl.map(Acl::parse) {
        None | Some(Ok(None)) => return may(caller, rec, mask),
        Some(Ok(Some(acl))) => acl,
        // ACLs are validated when set: this one was not stored by us.
        Some(Err(_)) => return errno(libc::EIO),
    };
    match acl.permits(rec.uid, caller.uid, |g| Some(caller.in_group(g)), mask, rec.gid) {
        Some(true) => Ok(()),
        _ => errno(libc::EACCES),
    }
}

/// [`may`] for inode `ino` with record `rec`, its access ACL read in
/// `txn` where it decides.
fn may_in(txn: &mut Txn<'_>, caller: &Caller, ino: u64, rec: &InodeRec, mask: u32) -> Result<(), MetaError> {
    if !acl_decides(caller, rec, mask) {
        return may(caller, rec, mask);
    }
    let acl = txn.get(&schema::xattr_key(ino, acl::ACCESS_XATTR.as_bytes()))?;
    may_with_acl(caller, rec, acl.as_deref(), mask)
}

/// Which ACL xattr `name` is, if one.
/// The xattr naming a directory's replication factor: how many replicas
/// the storage cluster keeps of the data of files made below it from now
/// on (`setfattr -n xfused.replicas -v 2 DIR`). Directories made in it
/// inherit it; files keep the value they were made with. It is not
/// listed by `listxattr`, so copies of a tree do not carry it.
pub const REPLICAS_XATTR: &str = "xfused.replicas";

/// Most replicas a directory may ask for (the cluster gives at most as
/// many as it has targets).
pub const REPLICAS_MAX: u8 = 16;

/// A replication factor as `setfattr` writes it: decimal, 1 to
/// [`REPLICAS_MAX`], an optional trailing newline.
fn parse_replicas(value: &[u8]) -> Option<u8> {
    let digits = value.strip_suffix(b"\n").unwrap_or(value);
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    u8::try_from(n).ok().filter(|n| (1..=REPLICAS_MAX).contains(n))
}

fn acl_kind(name: &[u8]) -> Option<AclKind> {
    if name == acl::ACCESS_XATTR.as_bytes() {
        Some(AclKind::Access)
    } else if name == acl::DEFAULT_XATTR.as_bytes() {
        Some(AclKind::Default)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AclKind {
    Access,
    Default,
}

/// The sticky-directory rule: in a sticky directory only the owner of the
/// entry's inode, the directory's owner or root may remove or rename it.
fn sticky_ok(caller: &Caller, dir: &InodeRec, victim: &InodeRec) -> Result<(), MetaError> {
    if !caller.check || dir.mode & libc::S_ISVTX == 0 || caller.uid == 0 {
        return Ok(());
    }
    if caller.uid == dir.uid || caller.uid == victim.uid {
        return Ok(());
    }
    errno(libc::EPERM)
}

fn counter_add(txn: &mut Txn<'_>, ino: u64, inodes: i64, bytes: i64) -> Result<(), MetaError> {
    if inodes == 0 && bytes == 0 {
        return Ok(());
    }
    let key = schema::counter_key(ino);
    let mut rec = match txn.get(&key)? {
        Some(b) => CounterRec::decode(&b)?,
        None => CounterRec::default(),
    };
    // Saturating: sizes up to FILE_SIZE_MAX_BYTES can sum past i64 in one
    // shard; statfs then shows a full count instead of a wrapped one.
    rec.inodes = rec.inodes.saturating_add(inodes);
    rec.bytes = rec.bytes.saturating_add(bytes);
    txn.put(key, rec.encode());
    Ok(())
}

fn get_dentry(txn: &mut Txn<'_>, parent: u64, name: &[u8]) -> Result<Option<DentryRec>, MetaError> {
    match txn.get(&schema::dentry_key(parent, name))? {
        Some(b) => Ok(Some(DentryRec::decode(&b)?)),
        None => Ok(None),
    }
}

/// Adds `name -> ino` to directory `parent` (loaded in `staged`), at the
/// end of its listing.
fn add_entry(txn: &mut Txn<'_>, staged: &mut Staged, parent: u64, name: &[u8], ino: u64, kind: u32) {
    let dir = staged.dirty(parent);
    let cookie = dir.cookie_next.max(COOKIE_FIRST);
    dir.cookie_next = cookie + 1;
    put_entry(txn, staged, parent, name, ino, kind, cookie);
}

/// Adds `name -> ino` to directory `parent` at listing position `cookie`
/// (one no entry of `parent` holds).
fn put_entry(
    txn: &mut Txn<'_>,
    staged: &mut Staged,
    parent: u64,
    name: &[u8],
    ino: u64,
    kind: u32,
    cookie: u64,
) {
    staged.dirty(parent).entries += 1;
    txn.put(
        schema::dentry_key(parent, name),
        DentryRec { ino, kind, cookie }.encode(),
    );
    txn.put(
        schema::listing_key(parent, cookie),
        ListingRec {
            ino,
            kind,
            name: name.to_vec(),
        }
        .encode(),
    );
}

/// Removes entry `name` (whose record is `dentry`) from `parent`.
fn remove_entry(txn: &mut Txn<'_>, staged: &mut Staged, parent: u64, name: &[u8], dentry: &DentryRec) {
    let dir = staged.dirty(parent);
    dir.entries = dir.entries.saturating_sub(1);
    txn.delete(schema::dentry_key(parent, name));
    txn.delete(schema::listing_key(parent, dentry.cookie));
}

fn touch_dir(staged: &mut Staged, dir: u64, now: Timestamp) {
    let rec = staged.dirty(dir);
    rec.mtime = now;
    rec.ctime = now;
}

/// Checks that `caller` may open `ino` (for reading, writing or both) and
/// returns its record. A file without links is open somewhere (an orphan):
/// Linux opens it again through /proc/PID/fd, and so does this.
fn may_open(
    txn: &mut Txn<'_>,
    staged: &mut Staged,
    caller: &Caller,
    ino: u64,
    read: bool,
    write: bool,
) -> Result<InodeRec, MetaError> {
    let rec = staged.load(txn, ino)?;
    if rec.nlink == 0 && txn.get(&schema::orphan_key(ino))?.is_none() {
        return errno(libc::ENOENT);
    }
    if rec.is_dir() && write {
        return errno(libc::EISDIR);
    }
    let mask = if read { access::R } else { 0 } | if write { access::W } else { 0 };
    may_in(txn, caller, ino, rec, mask)?;
    Ok(rec.clone())
}

/// Records session `handle` of `client` on `ino` in the store (by inode,
/// and by client for reaping).
pub(super) fn put_session(txn: &mut Txn<'_>, ino: u64, client: u64, handle: u64) {
    txn.put(schema::open_key(ino, client, handle), Vec::new());
    txn.put(schema::client_open_key(client, ino, handle), Vec::new());
}

/// Whether an inode has open-file sessions other than `except`.
fn has_sessions(txn: &mut Txn<'_>, ino: u64, except: Option<&[u8]>) -> Result<bool, MetaError> {
    let prefix = schema::open_prefix(ino);
    let found = txn.scan(&prefix, &schema::prefix_end(&prefix), 2)?;
    Ok(found.iter().any(|p| Some(p.key.as_slice()) != except))
}

/// Deletes inode `ino` (loaded in `staged`) and its xattrs; its data is
/// returned for the caller to delete.
fn destroy_inode(txn: &mut Txn<'_>, staged: &mut Staged, ino: u64) -> Result<Option<Reclaim>, MetaError> {
    let rec = staged.load(txn, ino)?.clone();
    if rec.xattrs > 0 {
        let prefix = schema::xattr_prefix(ino);
        let end = schema::prefix_end(&prefix);
        for p in txn.scan(&prefix, &end, usize::MAX)? {
            txn.delete(p.key);
        }
    }
    txn.delete(schema::orphan_key(ino));
    staged.delete(ino);
    let bytes = if rec.kind() == libc::S_IFREG {
        rec.size as i64
    } else {
        0
    };
    counter_add(txn, ino, -1, -bytes)?;
    Ok((rec.kind() == libc::S_IFREG).then_some(Reclaim {
        ino,
        layout_id: rec.layout_id,
        chunk_size: rec.chunk_size,
        size: rec.size,
    }))
}

/// One link of non-directory `ino` is gone: drop nlink, and delete the
/// inode when it was the last link and nobody has it open (else it becomes
/// an orphan, deleted at the last close).
fn drop_link(
    txn: &mut Txn<'_>,
    staged: &mut Staged,
    ino: u64,
    now: Timestamp,
) -> Result<Option<Reclaim>, MetaError> {
    let rec = staged.load(txn, ino)?;
    let nlink = rec.nlink.saturating_sub(1);
    let rec = staged.dirty(ino);
    rec.nlink = nlink;
    rec.ctime = now;
    if nlink > 0 {
        return Ok(None);
    }
    // This client's sessions kept in the process go to the store now;
    // with them, they are all the sessions there are.
    let open = match local::write_sessions_of(txn, ino)? {
        Some(open) => open,
        None => has_sessions(txn, ino, None)?,
    };
    if open {
        txn.put(schema::orphan_key(ino), Vec::new());
        return Ok(None);
    }
    destroy_inode(txn, staged, ino)
}

/// Deletes empty directory `ino` (its entry already removed from `parent`).
fn drop_dir(txn: &mut Txn<'_>, staged: &mut Staged, parent: u64, ino: u64) -> Result<(), MetaError> {
    let dir = staged.dirty(parent);
    dir.nlink = dir.nlink.saturating_sub(1);
    destroy_inode(txn, staged, ino)?;
    Ok(())
}

/// The kernel's `relatime` rule: an access updates the atime if it is not
/// after the last modification or change, or is at least a day old.
pub fn relatime_due(rec: &InodeRec, now: Timestamp) -> bool {
    const DAY_S: i64 = 24 * 60 * 60;
    rec.atime <= rec.mtime || rec.atime <= rec.ctime || now.sec.saturating_sub(rec.atime.sec) >= DAY_S
}

impl Meta {
    /// Opens the namespace on `engine` (creating the root directory if the
    /// store is empty) and registers a new client with a lease.
    pub fn connect(
        engine: Arc<dyn KvEngine>,
        config: MetaConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Meta, MetaError> {
        let mut meta = Meta {
            engine,
            config,
            clock,
            client: 0,
            ino_pool: Mutex::new((0, 0)),
            handle_next: AtomicU64::new(1),
            local: None,
        };
        let now = meta.clock.now();
        meta.txn(|txn| {
            if txn.get(&schema::inode_key(ROOT_INO))?.is_some() {
                return Ok(());
            }
            let root = InodeRec {
                mode: libc::S_IFDIR | 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                rdev: 0,
                atime: now,
                mtime: now,
                ctime: now,
                parent: ROOT_INO,
                entries: 0,
                cookie_next: COOKIE_FIRST,
                chunk_size: 0,
                layout_id: 0,
                xattrs: 0,
                target: Vec::new(),
                replicas: 0,
            };
            txn.put(schema::inode_key(ROOT_INO), root.encode());
            txn.put(vec![tag::ALLOC], schema::encode_u64(ROOT_INO + 1));
            counter_add(txn, ROOT_INO, 1, 0)?;
            Ok(())
        })?;
        meta.client = meta.txn(|txn| {
            let key = vec![tag::CLIENT_ALLOC];
            let next = match txn.get(&key)? {
                Some(b) => schema::decode_u64(&b, "client allocator")?,
                None => 1,
            };
            txn.put(key, schema::encode_u64(next + 1));
            Ok(next)
        })?;
        meta.heartbeat()?;
        meta.new_handle_epoch()?;
        meta.local = meta.config.sessions_table();
        Ok(meta)
    }

    /// A handle for existing client `client` (one `Meta::connect`
    /// registered), e.g. in a metadata service serving that client: ESTALE
    /// if the store does not know it (its lease expired and it was reaped).
    pub fn attach(
        engine: Arc<dyn KvEngine>,
        config: MetaConfig,
        clock: Arc<dyn Clock>,
        client: u64,
    ) -> Result<Meta, MetaError> {
        let local = config.sessions_table();
        let meta = Meta {
            engine,
            config,
            clock,
            client,
            ino_pool: Mutex::new((0, 0)),
            handle_next: AtomicU64::new(1),
            local,
        };
        if meta.engine.get(&schema::client_key(client))?.is_none() {
            return errno(libc::ESTALE);
        }
        meta.new_handle_epoch()?;
        Ok(meta)
    }

    /// Open handles are `epoch << 32 | n` with an epoch from the store, so
    /// several handles on one client (services restarted or side by side)
    /// never hand out the same handle. Handles with [`SEQ_HANDLE`] set are
    /// numbered changes' ([`Meta::open`]), unique per client too.
    fn new_handle_epoch(&self) -> Result<(), MetaError> {
        let epoch = self.txn(|txn| {
            let key = vec![tag::HANDLE_ALLOC];
            let next = match txn.get(&key)? {
                Some(b) => schema::decode_u64(&b, "handle allocator")?,
                None => 1,
            };
            txn.put(key, schema::encode_u64(next + 1));
            Ok(next)
        })?;
        if epoch << 32 >= SEQ_HANDLE {
            return Err(MetaError::Corrupt(format!(
                "open-handle epoch {epoch} is past the last one; the store's handle allocator is exhausted"
            )));
        }
        self.handle_next.store(epoch << 32 | 1, Ordering::Relaxed);
        Ok(())
    }

    /// Open handles kept in the process ([`MetaConfig::local_sessions`]),
    /// if it keeps them.
    pub fn local_sessions_held(&self) -> Option<usize> {
        self.local.as_ref().map(|l| l.count())
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn KvEngine> {
        &self.engine
    }

    /// Runs `body` as one transaction (retried on conflicts). Inside
    /// [`Meta::exactly_once`], the first transaction that writes also
    /// records its value as the change's outcome, and every transaction
    /// first looks for that record: found, the change was done before and
    /// `MetaError::Done` returns its outcome instead.
    fn txn<T: 'static>(
        &self,
        mut body: impl FnMut(&mut Txn<'_>) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let local = self.local.as_ref();
        let Some(change) = CHANGE.with(|c| c.get()) else {
            return retry(self.engine.as_ref(), &self.config.retry, |txn| {
                local::begin_attempt(local);
                body(txn)
            });
        };
        let key = schema::done_key(self.client, change.seq);
        let mut wrote = false;
        let result = retry(self.engine.as_ref(), &self.config.retry, |txn| {
            local::begin_attempt(local);
            // What an attempt that did not commit wrote does not count.
            CHANGED_DIRS.with(|d| *d.borrow_mut() = Some(Vec::new()));
            if !change.resent {
                // Nothing to look for.
            } else if let Some(bytes) = txn.get(&key)? {
                return Err(MetaError::Done(Outcome(bytes)));
            }
            let value = body(txn)?;
            wrote = txn.has_writes();
            if wrote {
                match (change.record)(&value) {
                    Record::Outcome(bytes) => txn.put(key.clone(), bytes),
                    Record::Unneeded => {}
                    // A recorder for another type: a bug the namespace
                    // tests catch. The change still happens, unrecorded.
                    Record::Mistyped => tracing::error!(
                        "change {}: an outcome of type {} was not recorded",
                        change.seq,
                        std::any::type_name::<T>()
                    ),
                }
                // Outcomes the client no longer needs go with it.
                for seq in change.prune_from..change.prune_to {
                    txn.delete(schema::done_key(self.client, seq));
                }
            }
            Ok(value)
        });
        if result.is_ok() && wrote {
            // One transaction per change is recorded: later ones of the
            // same operation (none today) run as usual.
            CHANGE.with(|c| c.set(None));
        }
        result
    }

    /// Runs `change`, this client's change number `seq`, so that it takes
    /// effect once however often it is sent: the transaction that makes it
    /// records its outcome under (client, seq) too, and a change already
    /// done answers `MetaError::Done` with that outcome, without running
    /// again. A change the client says it sends for the first time
    /// (`resent` false) skips that look-up. A change that fails changes nothing and records nothing, so
    /// running it again is like running it for the first time. Outcomes of
    /// `record` encodes the value for the record. Outcomes of
    /// the changes numbered `prune` are deleted in the same transaction
    /// (the client will not send them again); the rest go when the client
    /// ends or is reaped.
    pub fn exactly_once<T>(
        &self,
        seq: u64,
        resent: bool,
        prune: std::ops::Range<u64>,
        record: Recorder,
        change: impl FnOnce(&Self) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        CHANGED_DIRS.with(|d| *d.borrow_mut() = None);
        CHANGE.with(|c| {
            c.set(Some(Change {
                seq,
                resent,
                prune_from: prune.start,
                prune_to: prune.end,
                record,
            }))
        });
        let result = change(self);
        CHANGE.with(|c| c.set(None));
        result
    }

    fn lease_deadline_ms(&self) -> u64 {
        let now = self.clock.now();
        (now.sec.max(0) as u64) * 1000
            + u64::from(now.nsec / 1_000_000)
            + self.config.lease.as_millis() as u64
    }

    /// Renews this client's lease (call well within [`MetaConfig::lease`]).
    pub fn heartbeat(&self) -> Result<(), MetaError> {
        let deadline = self.lease_deadline_ms();
        let client = self.client;
        self.txn(|txn| {
            txn.put(schema::client_key(client), schema::encode_u64(deadline));
            Ok(())
        })
    }

    /// Ends this client cleanly: its remaining sessions are closed (as a
    /// reaper would) and its lease removed. Returns data to delete.
    pub fn close_client(&self) -> Result<Vec<Reclaim>, MetaError> {
        self.reap_client(self.client)
    }

    /// Reaps every other client, live lease or not: for a store only this
    /// process can open (the embedded engine locks it), where any other
    /// client is one that died (a crash, kill -9) and will not come back.
    /// Its files unlinked while open are deleted now, not once its lease
    /// runs out. Returns data to delete.
    pub fn reap_others(&self) -> Result<Vec<Reclaim>, MetaError> {
        self.reap_clients(|_| Some("it ended without closing, and this store is this process's alone".into()))
    }

    /// Reaps every other client whose lease has expired: closes their
    /// open-file sessions (deleting orphans nobody else holds) and removes
    /// their lease. Returns data to delete.
    pub fn reap_expired(&self) -> Result<Vec<Reclaim>, MetaError> {
        let now_ms = self.lease_deadline_ms() - self.config.lease.as_millis() as u64;
        self.reap_clients(|deadline| {
            (deadline < now_ms).then(|| format!("its lease expired {} ms ago", now_ms - deadline))
        })
    }

    /// Makes this client the service's own on a store only this process
    /// can open (the embedded engine locks it): the previous service's
    /// client, recorded in the store, is dead for sure and is reaped now.
    /// Returns data to delete.
    pub fn take_store(&self) -> Result<Vec<Reclaim>, MetaError> {
        let key = vec![tag::SERVICE];
        let client = self.client;
        let previous = self.txn(|txn| {
            let previous = match txn.get(&key)? {
                Some(b) => Some(schema::decode_u64(&b, "the service's client")?),
                None => None,
            };
            txn.put(key.clone(), schema::encode_u64(client));
            Ok(previous)
        })?;
        match previous {
            Some(previous) if previous != client => {
                tracing::info!("reaping client {previous}: the previous service's own, which ended");
                self.reap_client(previous)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Other clients whose leases have not run out.
    pub fn live_clients(&self) -> Result<Vec<u64>, MetaError> {
        let now_ms = self.lease_deadline_ms() - self.config.lease.as_millis() as u64;
        let start = vec![tag::CLIENT];
        let mut live = Vec::new();
        for p in self
            .engine
            .scan(&start, &schema::prefix_end(&start), usize::MAX)?
        {
            let client = schema::parse_client_key(&p.key)?;
            if client != self.client && schema::decode_u64(&p.value, "client lease")? >= now_ms {
                live.push(client);
            }
        }
        Ok(live)
    }

    /// Whether the store has an open-file session of a file that still has
    /// a link (made by a client that kept its sessions there). Orphans'
    /// sessions are there by design and do not count.
    pub fn store_has_linked_sessions(&self) -> Result<bool, MetaError> {
        let start = vec![tag::CLIENT_OPEN];
        let end = schema::prefix_end(&start);
        let mut after = start.clone();
        loop {
            let page = self.engine.scan(&after, &end, 1024)?;
            let Some(last) = page.last() else {
                return Ok(false);
            };
            for p in &page {
                let (ino, _) = schema::parse_client_open_key(&p.key)?;
                match self.engine.get(&schema::inode_key(ino))? {
                    Some((bytes, _)) if InodeRec::decode(&bytes)?.nlink > 0 => return Ok(true),
                    _ => {}
                }
            }
            after = last.key.clone();
            after.push(0);
        }
    }

    /// Reaps every other client for which `why`, given its lease deadline,
    /// gives a reason (logged).
    fn reap_clients(&self, why: impl Fn(u64) -> Option<String>) -> Result<Vec<Reclaim>, MetaError> {
        let start = vec![tag::CLIENT];
        let end = schema::prefix_end(&start);
        let clients = self.engine.scan(&start, &end, usize::MAX)?;
        let mut reclaimed = Vec::new();
        for p in clients {
            let client = schema::parse_client_key(&p.key)?;
            if client == self.client {
                continue;
            }
            let deadline = schema::decode_u64(&p.value, "client lease")?;
            if let Some(reason) = why(deadline) {
                tracing::info!("reaping client {client}: {reason}");
                reclaimed.extend(self.reap_client(client)?);
            }
        }
        Ok(reclaimed)
    }

    fn reap_client(&self, client: u64) -> Result<Vec<Reclaim>, MetaError> {
        if let Some(local) = &self.local {
            // Those the store has are closed there, with the rest.
            local.forget_client(client);
        }
        let prefix = schema::client_open_prefix(client);
        let end = schema::prefix_end(&prefix);
        let mut reclaimed = Vec::new();
        loop {
            let sessions = self.engine.scan(&prefix, &end, 256)?;
            if sessions.is_empty() {
                break;
            }
            for p in sessions {
                let (ino, handle) = schema::parse_client_open_key(&p.key)?;
                reclaimed.extend(self.close_session(client, ino, handle)?);
            }
        }
        // The outcomes of its changes: nobody will send them again.
        let prefix = schema::done_prefix(client);
        let end = schema::prefix_end(&prefix);
        loop {
            let done = self.engine.scan(&prefix, &end, 1024)?;
            if done.is_empty() {
                break;
            }
            retry(self.engine.as_ref(), &self.config.retry, |txn| {
                for p in &done {
                    txn.delete(p.key.clone());
                }
                Ok::<(), MetaError>(())
            })?;
        }
        self.txn(|txn| {
            txn.delete(schema::client_key(client));
            Ok(())
        })?;
        Ok(reclaimed)
    }

    fn alloc_ino(&self) -> Result<u64, MetaError> {
        let mut pool = self.ino_pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.0 >= pool.1 {
            // Not part of any change's record: retry() directly.
            let start = retry(self.engine.as_ref(), &self.config.retry, |txn| {
                let key = vec![tag::ALLOC];
                let next = match txn.get(&key)? {
                    Some(b) => schema::decode_u64(&b, "inode allocator")?,
                    None => ROOT_INO + 1,
                };
                txn.put(key, schema::encode_u64(next + INO_BATCH));
                Ok::<u64, MetaError>(next)
            })?;
            *pool = (start, start + INO_BATCH);
        }
        let ino = pool.0;
        pool.0 += 1;
        Ok(ino)
    }

    /// Looks `name` up in `parent`.
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(u64, InodeRec), MetaError> {
        if name.len() > schema::NAME_LEN_MAX {
            return errno(libc::ENAMETOOLONG);
        }
        self.txn(|txn| {
            let mut staged = Staged::default();
            let dir = staged.load_dir(txn, parent)?;
            may_in(txn, caller, parent, dir, access::X)?;
            let ino = match name {
                b"." => parent,
                b".." => dir.parent,
                _ => match get_dentry(txn, parent, name)? {
                    Some(d) => d.ino,
                    None => return errno(libc::ENOENT),
                },
            };
            match staged.load(txn, ino) {
                Ok(rec) => Ok((ino, rec.clone())),
                Err(MetaError::Errno(libc::ENOENT)) => Err(MetaError::Corrupt(format!(
                    "entry {parent}/{} names missing inode {ino}",
                    String::from_utf8_lossy(name)
                ))),
                Err(e) => Err(e),
            }
        })
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<InodeRec, MetaError> {
        match self.engine.get(&schema::inode_key(ino))? {
            Some((bytes, _)) => Ok(InodeRec::decode(&bytes)?),
            None => errno(libc::ENOENT),
        }
    }

    /// Checks `access(2)`-style permission of `caller` on `ino`.
    pub fn access(&self, caller: &Caller, ino: u64, mask: u32) -> Result<(), MetaError> {
        let rec = self.getattr(ino)?;
        let caller = Caller {
            check: true,
            ..caller.clone()
        };
        self.may_now(&caller, ino, &rec, mask)
    }

    /// [`may`] for inode `ino` with record `rec`, its access ACL read now
    /// where it decides.
    fn may_now(&self, caller: &Caller, ino: u64, rec: &InodeRec, mask: u32) -> Result<(), MetaError> {
        if !acl_decides(caller, rec, mask) {
            return may(caller, rec, mask);
        }
        let acl = match self.getxattr(ino, acl::ACCESS_XATTR.as_bytes()) {
            Ok(acl) => Some(acl),
            Err(MetaError::Errno(libc::ENODATA)) => None,
            Err(e) => return Err(e),
        };
        may_with_acl(caller, rec, acl.as_deref(), mask)
    }

    /// Changes attributes; returns the new record and, if the size changed,
    /// the old size (the caller truncates file data). A size past
    /// [`FILE_SIZE_MAX_BYTES`] is `EFBIG`.
    pub fn setattr(
        &self,
        caller: &Caller,
        ino: u64,
        set: &SetAttr,
    ) -> Result<(InodeRec, Option<u64>), MetaError> {
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            let owner = !caller.check || caller.uid == 0 || caller.uid == rec.uid;
            if set.mode.is_some() && !owner {
                return errno(libc::EPERM);
            }
            if caller.check && caller.uid != 0 {
                if set.uid.is_some_and(|u| u != rec.uid) {
                    return errno(libc::EPERM);
                }
                if set
                    .gid
                    .is_some_and(|g| g != rec.gid && (caller.uid != rec.uid || !caller.in_group(g)))
                {
                    return errno(libc::EPERM);
                }
            }
            for t in [set.atime, set.mtime].into_iter().flatten() {
                match t {
                    TimeSet::At(_) if !owner => return errno(libc::EPERM),
                    TimeSet::Now if !owner => may_in(txn, caller, ino, rec, access::W)?,
                    _ => {}
                }
            }
            let mut old_size = None;
            if let Some(size) = set.size {
                match rec.kind() {
                    libc::S_IFREG => {}
                    libc::S_IFDIR => return errno(libc::EISDIR),
                    _ => return errno(libc::EINVAL),
                }
                let through_session = match set.handle {
                    Some(h) => self.has_session(txn, ino, h)?,
                    None => false,
                };
                if !through_session {
                    may_in(txn, caller, ino, rec, access::W)?;
                }
                if size > FILE_SIZE_MAX_BYTES {
                    return errno(libc::EFBIG);
                }
                if size != rec.size {
                    old_size = Some(rec.size);
                }
            }
            let delta = old_size.map_or(0, |old| set.size.unwrap_or(old) as i64 - old as i64);
            // A chmod rewrites the access ACL's owner, mask and other entries
            // (`posix_acl_chmod`).
            let acl_key = schema::xattr_key(ino, acl::ACCESS_XATTR.as_bytes());
            let acl = match set.mode {
                Some(mode) if staged.load(txn, ino)?.xattrs > 0 => txn
                    .get(&acl_key)?
                    .and_then(|v| Acl::parse(&v).ok().flatten())
                    .map(|mut acl| {
                        acl.chmod(mode);
                        acl.to_xattr()
                    }),
                _ => None,
            };
            if let Some(acl) = acl {
                txn.put(acl_key, acl);
            }
            let rec = staged.dirty(ino);
            let mut changed = false;
            if let Some(mode) = set.mode {
                rec.mode = (rec.mode & libc::S_IFMT) | (mode & 0o7777);
                changed = true;
            }
            if let Some(uid) = set.uid {
                rec.uid = uid;
                changed = true;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
                changed = true;
            }
            if let Some(size) = set.size {
                rec.size = size;
                rec.mtime = now;
                changed = true;
            }
            if let Some(t) = set.atime {
                rec.atime = if let TimeSet::At(t) = t { t } else { now };
                changed = true;
            }
            if let Some(t) = set.mtime {
                rec.mtime = if let TimeSet::At(t) = t { t } else { now };
                changed = true;
            }
            if changed {
                rec.ctime = now;
            }
            if let Some(ctime) = set.ctime {
                rec.ctime = ctime;
            }
            let result = rec.clone();
            counter_add(txn, ino, 0, delta)?;
            staged.flush(txn);
            Ok((result, old_size))
        })
    }

    /// Creates a node (any type but directory: see [`Meta::mkdir`]) named
    /// `name` in `parent`; with `open`, also opens it (returns the handle).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: &[u8],
        open: bool,
    ) -> Result<(u64, InodeRec, Option<u64>), MetaError> {
        check_name(name)?;
        self.make_node(caller, parent, Some(name), mode, rdev, target, open)
    }

    /// Creates an opened regular file with no name in `parent` (Linux's
    /// `O_TMPFILE`): it has no links, lives while a session holds it, like a
    /// file unlinked while open, and unlike one it may be given a name by
    /// [`Meta::link`], once. Returns its inode, record and session handle.
    pub fn tmpfile(
        &self,
        caller: &Caller,
        parent: u64,
        mode: u32,
    ) -> Result<(u64, InodeRec, u64), MetaError> {
        let mode = libc::S_IFREG | (mode & 0o7777);
        match self.make_node(caller, parent, None, mode, 0, &[], true)? {
            (ino, rec, Some(handle)) => Ok((ino, rec, handle)),
            (_, _, None) => errno(libc::EIO),
        }
    }

    /// [`Meta::mknod`], or with no `name` [`Meta::tmpfile`].
    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        caller: &Caller,
        parent: u64,
        name: Option<&[u8]>,
        mode: u32,
        rdev: u32,
        target: &[u8],
        open: bool,
    ) -> Result<(u64, InodeRec, Option<u64>), MetaError> {
        let kind = mode & libc::S_IFMT;
        if name.is_none() && (kind != libc::S_IFREG || !open) {
            return errno(libc::EINVAL);
        }
        match kind {
            libc::S_IFREG
            | libc::S_IFDIR
            | libc::S_IFCHR
            | libc::S_IFBLK
            | libc::S_IFIFO
            | libc::S_IFSOCK => {}
            libc::S_IFLNK if !target.is_empty() && target.len() <= schema::SYMLINK_LEN_MAX => {}
            libc::S_IFLNK if target.is_empty() => return errno(libc::ENOENT),
            libc::S_IFLNK => return errno(libc::ENAMETOOLONG),
            _ => return errno(libc::EINVAL),
        }
        // Devices need CAP_MKNOD, which only root has here.
        if matches!(kind, libc::S_IFCHR | libc::S_IFBLK) && caller.check && caller.uid != 0 {
            return errno(libc::EPERM);
        }
        let ino = self.alloc_ino()?;
        let handle = open.then(|| self.handle_next.fetch_add(1, Ordering::Relaxed));
        // A named file's session can be kept in the process (registered
        // before the name exists, so an unlink sees it); a tmpfile, an
        // orphan from birth, needs its session in the store.
        let client = self.client;
        let local = match (&self.local, handle, name) {
            (Some(local), Some(handle), Some(_)) if local.register(client, ino, handle) => {
                Some((local, handle))
            }
            // Known here too, as in the store: the table knows every
            // session (`local::write_sessions_of`).
            (Some(local), Some(handle), None) => {
                local.register_in_store(client, ino, handle);
                None
            }
            _ => None,
        };
        let now = self.clock.now();
        let chunk_size = self.config.chunk_size_bytes;
        let made = self.txn(|txn| {
            let mut staged = Staged::default();
            let dir = staged.load_dir(txn, parent)?;
            may_in(txn, caller, parent, dir, access::W | access::X)?;
            if dir.nlink == 0 {
                return errno(libc::ENOENT);
            }
            let (dir_gid, dir_setgid) = (dir.gid, dir.mode & libc::S_ISGID != 0);
            let dir_replicas = dir.replicas;
            let dir_has_xattrs = dir.xattrs > 0;
            if let Some(name) = name {
                if get_dentry(txn, parent, name)?.is_some() {
                    return errno(libc::EEXIST);
                }
            }
            let mut perm = mode & 0o7777;
            if kind == libc::S_IFDIR && dir_setgid {
                perm |= libc::S_ISGID;
            }
            // The parent's default ACL: the new entry's access ACL (bounded
            // by the mode asked for), and a new directory's default ACL
            // (`posix_acl_create`). Symlinks take none.
            let default_acl = if dir_has_xattrs && kind != libc::S_IFLNK {
                txn.get(&schema::xattr_key(parent, acl::DEFAULT_XATTR.as_bytes()))?
                    .and_then(|v| Acl::parse(&v).ok().flatten())
            } else {
                None
            };
            let mut acls = Vec::new();
            if default_acl.is_none() && kind != libc::S_IFLNK {
                perm &= !(caller.umask & 0o777);
            }
            if let Some(default_acl) = &default_acl {
                let (inherited, access_acl) = default_acl.inherit(kind | perm);
                perm = inherited & 0o7777;
                if let Some(access_acl) = access_acl {
                    acls.push((acl::ACCESS_XATTR, access_acl.to_xattr()));
                }
                if kind == libc::S_IFDIR {
                    acls.push((acl::DEFAULT_XATTR, default_acl.to_xattr()));
                }
            }
            let rec = InodeRec {
                mode: kind | perm,
                uid: caller.uid,
                gid: if dir_setgid { dir_gid } else { caller.gid },
                nlink: match (name, kind) {
                    (None, _) => 0,
                    (Some(_), libc::S_IFDIR) => 2,
                    (Some(_), _) => 1,
                },
                size: if kind == libc::S_IFLNK {
                    target.len() as u64
                } else {
                    0
                },
                rdev,
                atime: now,
                mtime: now,
                ctime: now,
                parent: if kind == libc::S_IFDIR { parent } else { 0 },
                entries: 0,
                cookie_next: COOKIE_FIRST,
                chunk_size: if kind == libc::S_IFREG { chunk_size } else { 0 },
                layout_id: if kind == libc::S_IFREG { ino } else { 0 },
                xattrs: acls.len() as u32,
                target: if kind == libc::S_IFLNK {
                    target.to_vec()
                } else {
                    Vec::new()
                },
                replicas: if matches!(kind, libc::S_IFREG | libc::S_IFDIR) {
                    dir_replicas
                } else {
                    0
                },
            };
            match name {
                Some(name) => {
                    add_entry(txn, &mut staged, parent, name, ino, kind);
                    touch_dir(&mut staged, parent, now);
                    if kind == libc::S_IFDIR {
                        staged.dirty(parent).nlink += 1;
                    }
                }
                // Kept for its session, and marked as one link may name.
                None => txn.put(schema::orphan_key(ino), schema::ORPHAN_TMPFILE.to_vec()),
            }
            for (name, value) in acls {
                txn.put(schema::xattr_key(ino, name.as_bytes()), value);
            }
            staged.insert(ino, rec.clone());
            counter_add(txn, ino, 1, 0)?;
            if let (Some(handle), None) = (handle, local) {
                put_session(txn, ino, client, handle);
            }
            staged.flush(txn);
            Ok((ino, rec, handle))
        });
        if let (Err(_), Some(local), Some(handle)) = (&made, &self.local, handle) {
            local.unregister(client, ino, handle);
        }
        made
    }

    /// Creates directory `name` in `parent`.
    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<(u64, InodeRec), MetaError> {
        let (ino, rec, _) = self.mknod(
            caller,
            parent,
            name,
            libc::S_IFDIR | (mode & 0o7777),
            0,
            &[],
            false,
        )?;
        Ok((ino, rec))
    }

    /// Creates symlink `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<(u64, InodeRec), MetaError> {
        let (ino, rec, _) = self.mknod(caller, parent, name, libc::S_IFLNK | 0o777, 0, target, false)?;
        Ok((ino, rec))
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, MetaError> {
        let rec = self.getattr(ino)?;
        if rec.kind() != libc::S_IFLNK {
            return errno(libc::EINVAL);
        }
        Ok(rec.target)
    }

    /// Adds hard link `newparent/newname` to `ino`.
    pub fn link(
        &self,
        caller: &Caller,
        ino: u64,
        newparent: u64,
        newname: &[u8],
    ) -> Result<InodeRec, MetaError> {
        check_name(newname)?;
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            if rec.is_dir() {
                return errno(libc::EPERM);
            }
            let named_tmpfile = rec.nlink == 0;
            if named_tmpfile && txn.get(&schema::orphan_key(ino))?.as_deref() != Some(schema::ORPHAN_TMPFILE)
            {
                // Gone, or unlinked while open: no name brings it back.
                return errno(libc::ENOENT);
            }
            if rec.nlink >= LINK_MAX {
                return errno(libc::EMLINK);
            }
            let kind = rec.kind();
            let dir = staged.load_dir(txn, newparent)?;
            may_in(txn, caller, newparent, dir, access::W | access::X)?;
            if dir.nlink == 0 {
                return errno(libc::ENOENT);
            }
            if get_dentry(txn, newparent, newname)?.is_some() {
                return errno(libc::EEXIST);
            }
            add_entry(txn, &mut staged, newparent, newname, ino, kind);
            touch_dir(&mut staged, newparent, now);
            if named_tmpfile {
                txn.delete(schema::orphan_key(ino));
            }
            let rec = staged.dirty(ino);
            rec.nlink += 1;
            rec.ctime = now;
            let result = rec.clone();
            staged.flush(txn);
            Ok(result)
        })
    }

    /// Removes non-directory entry `name` from `parent`. Returns the data
    /// to delete if this was the last link and the file is not open.
    pub fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<Option<Reclaim>, MetaError> {
        if name.len() > schema::NAME_LEN_MAX {
            return errno(libc::ENAMETOOLONG);
        }
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let dir = staged.load_dir(txn, parent)?;
            may_in(txn, caller, parent, dir, access::W | access::X)?;
            let dir = dir.clone();
            let Some(dentry) = get_dentry(txn, parent, name)? else {
                return errno(libc::ENOENT);
            };
            if dentry.kind == libc::S_IFDIR {
                return errno(libc::EISDIR);
            }
            sticky_ok(caller, &dir, staged.load(txn, dentry.ino)?)?;
            remove_entry(txn, &mut staged, parent, name, &dentry);
            touch_dir(&mut staged, parent, now);
            let reclaim = drop_link(txn, &mut staged, dentry.ino, now)?;
            staged.flush(txn);
            Ok(reclaim)
        })
    }

    /// Removes empty directory `name` from `parent`.
    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(), MetaError> {
        if name == b"." {
            return errno(libc::EINVAL);
        }
        if name == b".." {
            return errno(libc::ENOTEMPTY);
        }
        if name.len() > schema::NAME_LEN_MAX {
            return errno(libc::ENAMETOOLONG);
        }
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let dir = staged.load_dir(txn, parent)?;
            may_in(txn, caller, parent, dir, access::W | access::X)?;
            let dir = dir.clone();
            let Some(dentry) = get_dentry(txn, parent, name)? else {
                return errno(libc::ENOENT);
            };
            if dentry.kind != libc::S_IFDIR {
                return errno(libc::ENOTDIR);
            }
            let child = staged.load(txn, dentry.ino)?;
            sticky_ok(caller, &dir, child)?;
            if child.entries != 0 {
                return errno(libc::ENOTEMPTY);
            }
            remove_entry(txn, &mut staged, parent, name, &dentry);
            touch_dir(&mut staged, parent, now);
            drop_dir(txn, &mut staged, parent, dentry.ino)?;
            staged.flush(txn);
            Ok(())
        })
    }

    /// Renames `olddir/oldname` to `newdir/newname` (`rename_flags`).
    /// Returns data to delete if a replaced file lost its last link.
    pub fn rename(
        &self,
        caller: &Caller,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<Option<Reclaim>, MetaError> {
        use rename_flags::*;
        if flags & !(NOREPLACE | EXCHANGE | WHITEOUT) != 0 || flags & WHITEOUT != 0 {
            return errno(libc::EINVAL);
        }
        if flags & NOREPLACE != 0 && flags & EXCHANGE != 0 {
            return errno(libc::EINVAL);
        }
        if oldname.len() > schema::NAME_LEN_MAX {
            return errno(libc::ENAMETOOLONG);
        }
        check_name(newname)?;
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let od_rec = staged.load_dir(txn, olddir)?.clone();
            may_in(txn, caller, olddir, &od_rec, access::W | access::X)?;
            let nd_rec = staged.load_dir(txn, newdir)?.clone();
            may_in(txn, caller, newdir, &nd_rec, access::W | access::X)?;
            if nd_rec.nlink == 0 {
                return errno(libc::ENOENT);
            }
            let Some(src) = get_dentry(txn, olddir, oldname)? else {
                return errno(libc::ENOENT);
            };
            let dst = get_dentry(txn, newdir, newname)?;
            if dst.is_some_and(|d| d.ino == src.ino) {
                // Two links to one inode: rename does nothing.
                return Ok(None);
            }
            let src_rec = staged.load(txn, src.ino)?.clone();
            sticky_ok(caller, &od_rec, &src_rec)?;
            let src_is_dir = src.kind == libc::S_IFDIR;
            if src_is_dir && olddir != newdir {
                self.check_not_ancestor(txn, &mut staged, src.ino, newdir)?;
                // Moving a directory rewrites its `..`.
                may_in(txn, caller, src.ino, &src_rec, access::W)?;
            }
            if flags & EXCHANGE != 0 {
                let Some(dst) = dst else {
                    return errno(libc::ENOENT);
                };
                let dst_rec = staged.load(txn, dst.ino)?.clone();
                sticky_ok(caller, &nd_rec, &dst_rec)?;
                let dst_is_dir = dst.kind == libc::S_IFDIR;
                if dst_is_dir && olddir != newdir {
                    self.check_not_ancestor(txn, &mut staged, dst.ino, olddir)?;
                    may_in(txn, caller, dst.ino, &dst_rec, access::W)?;
                }
                for (dir, name, cookie, who) in [
                    (olddir, oldname, src.cookie, dst),
                    (newdir, newname, dst.cookie, src),
                ] {
                    txn.put(
                        schema::dentry_key(dir, name),
                        DentryRec {
                            ino: who.ino,
                            kind: who.kind,
                            cookie,
                        }
                        .encode(),
                    );
                    txn.put(
                        schema::listing_key(dir, cookie),
                        ListingRec {
                            ino: who.ino,
                            kind: who.kind,
                            name: name.to_vec(),
                        }
                        .encode(),
                    );
                }
                if olddir != newdir {
                    if src_is_dir {
                        staged.dirty(src.ino).parent = newdir;
                    }
                    if dst_is_dir {
                        staged.dirty(dst.ino).parent = olddir;
                    }
                    let shift = i64::from(src_is_dir) - i64::from(dst_is_dir);
                    let o = staged.dirty(olddir);
                    o.nlink = (i64::from(o.nlink) - shift) as u32;
                    let n = staged.dirty(newdir);
                    n.nlink = (i64::from(n.nlink) + shift) as u32;
                }
                staged.dirty(src.ino).ctime = now;
                staged.dirty(dst.ino).ctime = now;
                touch_dir(&mut staged, olddir, now);
                touch_dir(&mut staged, newdir, now);
                staged.flush(txn);
                return Ok(None);
            }
            let mut reclaim = None;
            if let Some(dst) = dst {
                if flags & NOREPLACE != 0 {
                    return errno(libc::EEXIST);
                }
                let dst_rec = staged.load(txn, dst.ino)?.clone();
                sticky_ok(caller, &nd_rec, &dst_rec)?;
                let dst_is_dir = dst.kind == libc::S_IFDIR;
                match (src_is_dir, dst_is_dir) {
                    (true, false) => return errno(libc::ENOTDIR),
                    (false, true) => return errno(libc::EISDIR),
                    (true, true) if dst_rec.entries != 0 => return errno(libc::ENOTEMPTY),
                    _ => {}
                }
                remove_entry(txn, &mut staged, newdir, newname, &dst);
                if dst_is_dir {
                    drop_dir(txn, &mut staged, newdir, dst.ino)?;
                } else {
                    reclaim = drop_link(txn, &mut staged, dst.ino, now)?;
                }
            }
            remove_entry(txn, &mut staged, olddir, oldname, &src);
            if olddir == newdir {
                // The entry keeps its place in the listing: a readdir in
                // progress neither sees it twice (it was listed already)
                // nor misses it (it was not), however many renames a
                // reader makes as it goes (xfstests generic/736).
                put_entry(txn, &mut staged, newdir, newname, src.ino, src.kind, src.cookie);
            } else {
                add_entry(txn, &mut staged, newdir, newname, src.ino, src.kind);
            }
            if src_is_dir && olddir != newdir {
                staged.dirty(src.ino).parent = newdir;
                let o = staged.dirty(olddir);
                o.nlink = o.nlink.saturating_sub(1);
                staged.dirty(newdir).nlink += 1;
            }
            staged.dirty(src.ino).ctime = now;
            touch_dir(&mut staged, olddir, now);
            touch_dir(&mut staged, newdir, now);
            staged.flush(txn);
            Ok(reclaim)
        })
    }

    /// Fails with EINVAL if directory `dir` is `target` or one of its
    /// ancestors (a directory cannot move into its own subtree). Every
    /// ancestor read is validated at commit, so a concurrent move of an
    /// ancestor conflicts.
    fn check_not_ancestor(
        &self,
        txn: &mut Txn<'_>,
        staged: &mut Staged,
        dir: u64,
        target: u64,
    ) -> Result<(), MetaError> {
        let mut cur = target;
        for _ in 0..DEPTH_MAX {
            if cur == dir {
                return errno(libc::EINVAL);
            }
            if cur == ROOT_INO {
                return Ok(());
            }
            cur = staged.load_dir(txn, cur)?.parent;
        }
        Err(MetaError::Corrupt(format!(
            "directory {target} is more than {DEPTH_MAX} levels deep, or its parents form a cycle"
        )))
    }

    /// Opens `ino`: records an open-file session (so its data outlives an
    /// unlink until [`Meta::release`]). `write` asks for write access.
    ///
    /// Inside a numbered change ([`Meta::exactly_once`]) the handle is the
    /// change's number (with `SEQ_HANDLE` set), so the session itself
    /// shows the open was done: a resend that finds it answers with it,
    /// and no outcome is recorded. An open costs its two session keys
    /// and nothing more.
    pub fn open(
        &self,
        caller: &Caller,
        ino: u64,
        read: bool,
        write: bool,
    ) -> Result<(InodeRec, u64), MetaError> {
        let (handle, resent) = match CHANGE.with(|c| c.get()) {
            Some(change) if change.seq < SEQ_HANDLE => (SEQ_HANDLE | change.seq, change.resent),
            Some(_) => return errno(libc::EINVAL),
            None => (self.handle_next.fetch_add(1, Ordering::Relaxed), false),
        };
        let client = self.client;
        if let Some(local) = &self.local {
            if resent && local.has(client, ino, handle) {
                // Done before, and its answer lost: the same session.
                return Ok((self.getattr(ino)?, handle));
            }
            if local.register(client, ino, handle) {
                return self.open_locally(local, caller, ino, read, write, handle);
            }
        }
        self.txn(|txn| {
            let mut staged = Staged::default();
            if resent && txn.get(&schema::open_key(ino, client, handle))?.is_some() {
                // Done before, and its answer lost: the same session.
                return Ok((staged.load(txn, ino)?.clone(), handle));
            }
            let rec = may_open(txn, &mut staged, caller, ino, read, write)?;
            put_session(txn, ino, client, handle);
            Ok((rec, handle))
        })
    }

    /// [`Meta::open`] with the session kept in the process
    /// ([`super::local`]): registered (by the caller) before the inode is
    /// read, so an unlink either sees it or comes first. Only an open of an
    /// orphan (opened again through /proc) writes its session to the store.
    fn open_locally(
        &self,
        local: &LocalSessions,
        caller: &Caller,
        ino: u64,
        read: bool,
        write: bool,
        handle: u64,
    ) -> Result<(InodeRec, u64), MetaError> {
        let client = self.client;
        let opened = self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = may_open(txn, &mut staged, caller, ino, read, write)?;
            let orphan = rec.nlink == 0;
            if orphan {
                // Held by sessions in the store, and closed there: so is
                // this one.
                put_session(txn, ino, client, handle);
            }
            Ok((rec, orphan))
        });
        match opened {
            Ok((rec, in_store)) => {
                if in_store {
                    local.mark_in_store(client, ino, handle);
                }
                Ok((rec, handle))
            }
            Err(e) => {
                local.unregister(client, ino, handle);
                Err(e)
            }
        }
    }

    /// Whether `handle` is an open session of `ino` by this client.
    fn has_session(&self, txn: &mut Txn<'_>, ino: u64, handle: u64) -> Result<bool, MetaError> {
        if self
            .local
            .as_ref()
            .is_some_and(|l| l.has(self.client, ino, handle))
        {
            return Ok(true);
        }
        Ok(txn.get(&schema::open_key(ino, self.client, handle))?.is_some())
    }

    /// Closes a session [`Meta::open`] or an opening [`Meta::mknod`] made.
    /// Returns the data to delete if the file had no links left and this was
    /// its last session. A session kept in the process only is forgotten
    /// there, with no transaction.
    pub fn release(&self, ino: u64, handle: u64) -> Result<Option<Reclaim>, MetaError> {
        if let Some(local) = &self.local {
            if local.unregister(self.client, ino, handle) == Some(false) {
                return Ok(None);
            }
        }
        self.close_session(self.client, ino, handle)
    }

    /// This client's open handles, told again after its metadata service
    /// restarted (its table of handles was lost with it, [`super::local`]):
    /// each is kept as an open session of its inode, as [`Meta::open`]
    /// made it. Handles of files that are gone are skipped; those of
    /// orphans get their sessions in the store. No permission is checked:
    /// the client opened them before. Returns how many were kept.
    pub fn reclaim_handles(&self, handles: &[(u64, u64)]) -> Result<usize, MetaError> {
        let Some(local) = &self.local else {
            // Every session is in the store already.
            return Ok(0);
        };
        let client = self.client;
        let mut kept = 0;
        for &(ino, handle) in handles {
            if local.has(client, ino, handle) {
                kept += 1;
                continue;
            }
            let registered = local.register(client, ino, handle);
            // Whether the store has the session (`None`: the file is gone).
            let found = self.txn(|txn| {
                let mut staged = Staged::default();
                let rec = match staged.load(txn, ino) {
                    Ok(rec) => rec,
                    Err(MetaError::Errno(libc::ENOENT)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                // An orphan is held by sessions in the store, and so is
                // any handle the table had no room for.
                if txn.get(&schema::open_key(ino, client, handle))?.is_some() {
                    return Ok(Some(true));
                }
                if rec.nlink == 0 || !registered {
                    put_session(txn, ino, client, handle);
                    return Ok(Some(true));
                }
                Ok(Some(false))
            });
            match found {
                Ok(Some(stored)) => {
                    if stored {
                        local.mark_in_store(client, ino, handle);
                    }
                    kept += 1;
                }
                Ok(None) => {
                    local.unregister(client, ino, handle);
                }
                Err(e) => {
                    local.unregister(client, ino, handle);
                    return Err(e);
                }
            }
        }
        Ok(kept)
    }

    /// Ends the grace period of this client's table
    /// ([`LocalSessions::begin_grace`], with this client as the owner):
    /// closes the sessions that held files unlinked meanwhile. Returns the
    /// data of those nobody else holds, now deleted.
    pub fn end_grace(&self) -> Result<Vec<Reclaim>, MetaError> {
        let Some(local) = &self.local else {
            return Ok(Vec::new());
        };
        let mut reclaimed = Vec::new();
        for (ino, handle) in local.end_grace() {
            reclaimed.extend(self.close_session(self.client, ino, handle)?);
        }
        Ok(reclaimed)
    }

    fn close_session(&self, client: u64, ino: u64, handle: u64) -> Result<Option<Reclaim>, MetaError> {
        self.txn(|txn| {
            let key = schema::open_key(ino, client, handle);
            txn.delete(key.clone());
            txn.delete(schema::client_open_key(client, ino, handle));
            let mut staged = Staged::default();
            let rec = match staged.load(txn, ino) {
                Ok(rec) => rec,
                Err(MetaError::Errno(libc::ENOENT)) => return Ok(None),
                Err(e) => return Err(e),
            };
            if rec.nlink > 0 || has_sessions(txn, ino, Some(&key))? {
                return Ok(None);
            }
            let reclaim = destroy_inode(txn, &mut staged, ino)?;
            staged.flush(txn);
            Ok(reclaim)
        })
    }

    /// Records that data was written up to byte `end` of `ino` through
    /// this client's session `handle`: grows the size if needed, updates
    /// mtime and ctime. Returns the new record; `EBADF` if this client has
    /// no such session of `ino`; `EFBIG` if `end` is past
    /// [`FILE_SIZE_MAX_BYTES`].
    pub fn note_write(&self, ino: u64, handle: u64, end: u64) -> Result<InodeRec, MetaError> {
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            match rec.kind() {
                libc::S_IFREG => {}
                libc::S_IFDIR => return errno(libc::EISDIR),
                _ => return errno(libc::EINVAL),
            }
            if !self.has_session(txn, ino, handle)? {
                return errno(libc::EBADF);
            }
            if end > FILE_SIZE_MAX_BYTES {
                return errno(libc::EFBIG);
            }
            let old = rec.size;
            let rec = staged.dirty(ino);
            rec.size = rec.size.max(end);
            rec.mtime = now;
            rec.ctime = now;
            let result = rec.clone();
            counter_add(txn, ino, 0, result.size as i64 - old as i64)?;
            staged.flush(txn);
            Ok(result)
        })
    }

    /// Checks that `caller` may list directory `ino`; returns its record.
    pub fn opendir(&self, caller: &Caller, ino: u64) -> Result<InodeRec, MetaError> {
        let rec = self.getattr(ino)?;
        if !rec.is_dir() {
            return errno(libc::ENOTDIR);
        }
        self.may_now(caller, ino, &rec, access::R)?;
        Ok(rec)
    }

    /// Up to `limit` entries of directory `ino` after cookie `after` (0:
    /// from the start), `.` and `..` first. Cookies are assigned when an
    /// entry is created and only grow, so a listing continued from a cookie
    /// returns every entry that existed throughout exactly once.
    pub fn readdir(&self, ino: u64, after: u64, limit: usize) -> Result<Vec<DirItem>, MetaError> {
        let rec = self.getattr(ino)?;
        if !rec.is_dir() {
            return errno(libc::ENOTDIR);
        }
        let mut items = Vec::new();
        if after < COOKIE_DOT && items.len() < limit {
            items.push(DirItem {
                name: b".".to_vec(),
                ino,
                kind: libc::S_IFDIR,
                cookie: COOKIE_DOT,
            });
        }
        if after < COOKIE_DOTDOT && items.len() < limit {
            items.push(DirItem {
                name: b"..".to_vec(),
                ino: rec.parent,
                kind: libc::S_IFDIR,
                cookie: COOKIE_DOTDOT,
            });
        }
        let want = limit - items.len();
        if want == 0 {
            return Ok(items);
        }
        let start = schema::listing_key(ino, after.saturating_add(1).max(COOKIE_FIRST));
        let end = schema::prefix_end(&schema::listing_prefix(ino));
        for p in self.engine.scan(&start, &end, want)? {
            let listing = ListingRec::decode(&p.value)?;
            let cookie = u64::from_be_bytes(
                p.key[p.key.len() - 8..]
                    .try_into()
                    .map_err(|_| MetaError::Corrupt("short listing key".into()))?,
            );
            items.push(DirItem {
                name: listing.name,
                ino: listing.ino,
                kind: listing.kind,
                cookie,
            });
        }
        Ok(items)
    }

    /// Sets xattr `name` of `ino` (`xattr_flags`).
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), MetaError> {
        if name.is_empty() {
            return errno(libc::EINVAL);
        }
        if name.len() > schema::NAME_LEN_MAX {
            return errno(libc::ERANGE);
        }
        if value.len() > schema::XATTR_VALUE_LEN_MAX {
            return errno(libc::E2BIG);
        }
        if name == REPLICAS_XATTR.as_bytes() {
            let replicas = parse_replicas(value).ok_or(MetaError::Errno(libc::EINVAL))?;
            return self.set_replicas(caller, ino, replicas, flags);
        }
        let acl_kind = acl_kind(name);
        // Validated before anything is read: EINVAL as Linux answers.
        let acl = match acl_kind {
            Some(_) => Acl::parse(value).map_err(|_| MetaError::Errno(libc::EINVAL))?,
            None => None,
        };
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            let owner = !caller.check || caller.uid == 0 || caller.uid == rec.uid;
            if let Some(kind) = acl_kind {
                // Only the owner may set ACLs (`inode_owner_or_capable`).
                if !owner {
                    return errno(libc::EPERM);
                }
                return self.set_acl(txn, staged, ino, kind, acl.as_ref(), now);
            }
            if !owner {
                may_in(txn, caller, ino, rec, access::W)?;
            }
            let key = schema::xattr_key(ino, name);
            let exists = txn.get(&key)?.is_some();
            if flags & xattr_flags::CREATE != 0 && exists {
                return errno(libc::EEXIST);
            }
            if flags & xattr_flags::REPLACE != 0 && !exists {
                return errno(libc::ENODATA);
            }
            if !exists && rec.xattrs as usize >= XATTRS_MAX {
                return errno(libc::ENOSPC);
            }
            txn.put(key, value.to_vec());
            let rec = staged.dirty(ino);
            rec.ctime = now;
            if !exists {
                rec.xattrs += 1;
            }
            staged.flush(txn);
            Ok(())
        })
    }

    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        if name.len() > schema::NAME_LEN_MAX {
            return errno(libc::ERANGE);
        }
        if name == REPLICAS_XATTR.as_bytes() {
            return match self.getattr(ino)?.replicas {
                0 => errno(libc::ENODATA),
                n => Ok(n.to_string().into_bytes()),
            };
        }
        self.txn(|txn| {
            if txn.get(&schema::inode_key(ino))?.is_none() {
                return errno(libc::ENOENT);
            }
            match txn.get(&schema::xattr_key(ino, name))? {
                Some(v) => Ok(v),
                None => errno(libc::ENODATA),
            }
        })
    }

    /// The xattr names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, MetaError> {
        self.txn(|txn| {
            if txn.get(&schema::inode_key(ino))?.is_none() {
                return errno(libc::ENOENT);
            }
            // A page of values at a time: the names are all that is kept.
            let prefix = schema::xattr_prefix(ino);
            let end = schema::prefix_end(&prefix);
            let mut start = prefix.clone();
            let mut names = Vec::new();
            loop {
                let pairs = txn.scan(&start, &end, XATTR_SCAN_PAGE)?;
                let full = pairs.len() == XATTR_SCAN_PAGE;
                for p in &pairs {
                    names.push(p.key[prefix.len()..].to_vec());
                }
                match pairs.last() {
                    Some(last) if full => {
                        start = last.key.clone();
                        start.push(0);
                    }
                    _ => return Ok(names),
                }
            }
        })
    }

    /// Sets (1 and up) or clears (0) directory `ino`'s replication factor,
    /// the [`REPLICAS_XATTR`]: by its owner or root only, as Linux lets
    /// only them change a file's flags; `flags` as for other xattrs.
    fn set_replicas(&self, caller: &Caller, ino: u64, replicas: u8, flags: u32) -> Result<(), MetaError> {
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            if !rec.is_dir() {
                return errno(libc::EINVAL);
            }
            if caller.check && caller.uid != 0 && caller.uid != rec.uid {
                return errno(libc::EPERM);
            }
            let exists = rec.replicas != 0;
            if flags & xattr_flags::CREATE != 0 && exists {
                return errno(libc::EEXIST);
            }
            if flags & xattr_flags::REPLACE != 0 && !exists {
                return errno(libc::ENODATA);
            }
            let rec = staged.dirty(ino);
            rec.replicas = replicas;
            rec.ctime = now;
            staged.flush(txn);
            Ok(())
        })
    }

    /// Sets (`acl`) or removes (`None`) ACL `kind` of `ino` in `txn`, as
    /// Linux's `posix_acl_update_mode` and `set_posix_acl` do: an access
    /// ACL sets the mode's permission bits, and is not kept when the mode
    /// says it all; a default ACL only goes on a directory (EACCES
    /// elsewhere). Not done: clearing set-group-ID for a caller outside the
    /// file's group, which the kernel asks only through
    /// `FUSE_SETXATTR_EXT` (not negotiated).
    fn set_acl(
        &self,
        txn: &mut Txn<'_>,
        mut staged: Staged,
        ino: u64,
        kind: AclKind,
        acl: Option<&Acl>,
        now: Timestamp,
    ) -> Result<(), MetaError> {
        let name = match kind {
            AclKind::Access => acl::ACCESS_XATTR,
            AclKind::Default => acl::DEFAULT_XATTR,
        };
        let key = schema::xattr_key(ino, name.as_bytes());
        let exists = txn.get(&key)?.is_some();
        let rec = staged.load(txn, ino)?;
        if kind == AclKind::Default && !rec.is_dir() {
            return if acl.is_some() {
                errno(libc::EACCES)
            } else {
                Ok(())
            };
        }
        let keep = match (kind, acl) {
            (_, None) => None,
            (AclKind::Access, Some(acl)) if acl.is_mode_only() => None,
            (_, Some(acl)) => Some(acl.to_xattr()),
        };
        if keep.is_some() && !exists && rec.xattrs as usize >= XATTRS_MAX {
            return errno(libc::ENOSPC);
        }
        let rec = staged.dirty(ino);
        if let (AclKind::Access, Some(acl)) = (kind, acl) {
            rec.mode = (rec.mode & !0o777) | acl.mode_bits();
        }
        rec.ctime = now;
        match keep {
            Some(value) => {
                txn.put(key, value);
                if !exists {
                    rec.xattrs += 1;
                }
            }
            None if exists => {
                txn.delete(key);
                rec.xattrs = rec.xattrs.saturating_sub(1);
            }
            None => {}
        }
        staged.flush(txn);
        Ok(())
    }

    /// Removes xattr `name` of `ino`.
    pub fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> Result<(), MetaError> {
        if name.len() > schema::NAME_LEN_MAX {
            return errno(libc::ERANGE);
        }
        if name == REPLICAS_XATTR.as_bytes() {
            return self.set_replicas(caller, ino, 0, xattr_flags::REPLACE);
        }
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            if caller.check && caller.uid != 0 && caller.uid != rec.uid {
                if acl_kind(name).is_some() {
                    return errno(libc::EPERM);
                }
                may_in(txn, caller, ino, rec, access::W)?;
            }
            // Removing the access ACL leaves the mode as it is: its bits are
            // already the ACL's owner, mask and other entries.
            let key = schema::xattr_key(ino, name);
            if txn.get(&key)?.is_none() {
                return errno(libc::ENODATA);
            }
            txn.delete(key);
            let rec = staged.dirty(ino);
            rec.ctime = now;
            rec.xattrs = rec.xattrs.saturating_sub(1);
            staged.flush(txn);
            Ok(())
        })
    }

    /// Records an access (a read of a file, a listing of a directory) in
    /// the inode's atime, as the kernel's `relatime` rule says (the atime
    /// is not after the mtime or the ctime, or is a day old), or always
    /// with `strict` (`strictatime`). Only the atime changes: not the
    /// ctime, and no permission is checked (whoever read the file could).
    /// Returns the record, changed or not.
    pub fn touch_atime(&self, ino: u64, strict: bool) -> Result<InodeRec, MetaError> {
        let now = self.clock.now();
        self.txn(|txn| {
            let mut staged = Staged::default();
            let rec = staged.load(txn, ino)?;
            if !(strict || relatime_due(rec, now)) {
                return Ok(rec.clone());
            }
            let rec = staged.dirty(ino);
            rec.atime = now;
            let result = rec.clone();
            staged.flush(txn);
            Ok(result)
        })
    }

    /// Makes every change acknowledged so far durable (the engine's
    /// [`KvEngine::sync`]): fsync and fsyncdir through a mount end here.
    pub fn sync(&self) -> Result<(), MetaError> {
        Ok(self.engine.sync()?)
    }

    /// Inodes and bytes in use, from the counter shards.
    pub fn usage(&self) -> Result<Usage, MetaError> {
        let start = vec![tag::COUNTER];
        let pairs = self
            .engine
            .scan(&start, &schema::prefix_end(&start), usize::MAX)?;
        let mut total = CounterRec::default();
        for p in pairs {
            let c = CounterRec::decode(&p.value)?;
            total.inodes = total.inodes.saturating_add(c.inodes);
            total.bytes = total.bytes.saturating_add(c.bytes);
        }
        Ok(Usage {
            inodes: total.inodes.max(0) as u64,
            bytes: total.bytes.max(0) as u64,
        })
    }
}
