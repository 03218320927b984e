//! Keys and records of the namespace (see the table in [`super`]).
//!
//! Every key starts with a one-byte table tag, then (for per-inode tables) a
//! one-byte shard, then the big-endian inode number. The shard is a hash of
//! the inode number: consecutive inode numbers (files created one after the
//! other) land far apart in the key space, so a range-partitioned engine
//! (etcd's, or a future sharded one) spreads them over its ranges, while all
//! keys of one inode (its entries, its xattrs, its open sessions) stay
//! contiguous for range scans.
//!
//! Records are fixed little-endian layouts with a format byte first; parsing
//! checks every length and refuses unknown formats ([`SchemaError`]).

use std::fmt;

/// Table tags.
pub mod tag {
    /// `A`: the inode-number allocator (one key).
    pub const ALLOC: u8 = b'A';
    /// `B`: the client-id allocator (one key).
    pub const CLIENT_ALLOC: u8 = b'B';
    /// `C`: live clients and their lease.
    pub const CLIENT: u8 = b'C';
    /// `D`: directory entries by name.
    pub const DENTRY: u8 = b'D';
    /// `G`: orphans, inodes without links kept for open files.
    pub const ORPHAN: u8 = b'G';
    /// `H`: the open-handle epoch allocator (one key).
    pub const HANDLE_ALLOC: u8 = b'H';
    /// `I`: inodes.
    pub const INODE: u8 = b'I';
    /// `K`: statfs counter shards.
    pub const COUNTER: u8 = b'K';
    /// `L`: directory listing by entry cookie.
    pub const LISTING: u8 = b'L';
    /// `O`: open-file sessions by inode.
    pub const OPEN: u8 = b'O';
    /// `P`: open-file sessions by client (to reap a dead client's).
    pub const CLIENT_OPEN: u8 = b'P';
    /// `R`: the outcomes of a client's numbered changes (exactly-once).
    pub const DONE: u8 = b'R';
    /// `S`: the own client of the metadata service that holds a store only
    /// one process can open (one key).
    pub const SERVICE: u8 = b'S';
    /// `X`: extended attributes.
    pub const XATTR: u8 = b'X';
}

/// Counter shards: statfs sums them; each inode updates the one of its shard
/// so creates in different places do not all write one hot key.
pub const COUNTER_SHARDS: u8 = 16;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Longest name of a directory entry or xattr, in bytes.
pub const NAME_LEN_MAX: usize = 255;
/// Longest symlink target, in bytes.
pub const SYMLINK_LEN_MAX: usize = 4095;
/// Largest xattr value, in bytes.
pub const XATTR_VALUE_LEN_MAX: usize = 64 * 1024;

/// The spread byte of inode `ino`.
pub fn shard(ino: u64) -> u8 {
    (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn inode_prefixed(tag: u8, ino: u64, extra: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + extra);
    key.push(tag);
    key.push(shard(ino));
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

/// The end (exclusive) of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// `I shard ino`.
pub fn inode_key(ino: u64) -> Vec<u8> {
    inode_prefixed(tag::INODE, ino, 0)
}

/// `D shard(parent) parent name`.
pub fn dentry_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut key = inode_prefixed(tag::DENTRY, parent, name.len());
    key.extend_from_slice(name);
    key
}

/// `L shard(parent) parent cookie`.
pub fn listing_key(parent: u64, cookie: u64) -> Vec<u8> {
    let mut key = inode_prefixed(tag::LISTING, parent, 8);
    key.extend_from_slice(&cookie.to_be_bytes());
    key
}

/// The prefix of every listing key of `parent`.
pub fn listing_prefix(parent: u64) -> Vec<u8> {
    inode_prefixed(tag::LISTING, parent, 0)
}

/// `X shard ino name`.
pub fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut key = inode_prefixed(tag::XATTR, ino, name.len());
    key.extend_from_slice(name);
    key
}

/// The prefix of every xattr key of `ino`.
pub fn xattr_prefix(ino: u64) -> Vec<u8> {
    inode_prefixed(tag::XATTR, ino, 0)
}

/// `O shard ino client handle`.
pub fn open_key(ino: u64, client: u64, handle: u64) -> Vec<u8> {
    let mut key = inode_prefixed(tag::OPEN, ino, 16);
    key.extend_from_slice(&client.to_be_bytes());
    key.extend_from_slice(&handle.to_be_bytes());
    key
}

/// The prefix of every open session of `ino`.
pub fn open_prefix(ino: u64) -> Vec<u8> {
    inode_prefixed(tag::OPEN, ino, 0)
}

/// `P client ino handle`.
pub fn client_open_key(client: u64, ino: u64, handle: u64) -> Vec<u8> {
    let mut key = client_open_prefix(client);
    key.extend_from_slice(&ino.to_be_bytes());
    key.extend_from_slice(&handle.to_be_bytes());
    key
}

/// The prefix of every open session of `client`.
pub fn client_open_prefix(client: u64) -> Vec<u8> {
    let mut key = vec![tag::CLIENT_OPEN];
    key.extend_from_slice(&client.to_be_bytes());
    key
}

/// Splits a `P` key into (ino, handle).
pub fn parse_client_open_key(key: &[u8]) -> Result<(u64, u64), SchemaError> {
    if key.len() != 25 || key[0] != tag::CLIENT_OPEN {
        return Err(SchemaError::new("client open key", key.len()));
    }
    Ok((be_u64(&key[9..17]), be_u64(&key[17..25])))
}

/// `C client`.
pub fn client_key(client: u64) -> Vec<u8> {
    let mut key = vec![tag::CLIENT];
    key.extend_from_slice(&client.to_be_bytes());
    key
}

/// Splits a `C` key into the client id.
pub fn parse_client_key(key: &[u8]) -> Result<u64, SchemaError> {
    if key.len() != 9 || key[0] != tag::CLIENT {
        return Err(SchemaError::new("client key", key.len()));
    }
    Ok(be_u64(&key[1..9]))
}

/// `R client seq`: the outcome of change `seq` of `client`.
pub fn done_key(client: u64, seq: u64) -> Vec<u8> {
    let mut key = vec![tag::DONE];
    key.extend_from_slice(&client.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `R client`: every outcome of `client`.
pub fn done_prefix(client: u64) -> Vec<u8> {
    let mut key = vec![tag::DONE];
    key.extend_from_slice(&client.to_be_bytes());
    key
}

/// The value of an orphan mark on a file made by `O_TMPFILE` that has never
/// had a name: LINK may give it one (an orphan unlinked while open has an
/// empty value, and no name brings it back).
pub const ORPHAN_TMPFILE: &[u8] = b"tmpfile";

/// `G ino`.
pub fn orphan_key(ino: u64) -> Vec<u8> {
    let mut key = vec![tag::ORPHAN];
    key.extend_from_slice(&ino.to_be_bytes());
    key
}

/// `K shard`.
pub fn counter_key(ino: u64) -> Vec<u8> {
    vec![tag::COUNTER, shard(ino) % COUNTER_SHARDS]
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// A stored record that does not parse: the store is corrupt or was written
/// by an incompatible version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what} record ({len} bytes)")]
pub struct SchemaError {
    what: &'static str,
    len: usize,
}

impl SchemaError {
    fn new(what: &'static str, len: usize) -> SchemaError {
        SchemaError { what, len }
    }
}

/// A bounds-checked little-endian reader over a record.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
    len: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader {
            bytes,
            what,
            len: bytes.len(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SchemaError> {
        if self.bytes.len() < n {
            return Err(SchemaError::new(self.what, self.len));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, SchemaError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, SchemaError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Result<u64, SchemaError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or([0; 8])))
    }
    fn i64(&mut self) -> Result<i64, SchemaError> {
        Ok(self.u64()? as i64)
    }
    fn end(self) -> Result<(), SchemaError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::new(self.what, self.len))
        }
    }
}

/// A point in time: seconds and nanoseconds since the epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 UTC.
    pub sec: i64,
    /// Nanoseconds (below 10^9).
    pub nsec: u32,
}

/// Record format byte of [`InodeRec`] as written: 2 adds
/// [`InodeRec::replicas`] after the target. Format 1 records (no replicas
/// byte) still read, as replicas 0.
const INODE_FORMAT: u8 = 2;
/// The format before [`InodeRec::replicas`].
const INODE_FORMAT_1: u8 = 1;

/// An inode: attributes, and per type its directory bookkeeping, symlink
/// target or chunk layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InodeRec {
    /// Type and permission bits (`S_IFMT | 07777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links: entries naming it; for a directory 2 + its subdirectories.
    pub nlink: u32,
    /// Size in bytes (regular files; symlinks: target length).
    pub size: u64,
    /// Device number (character and block devices).
    pub rdev: u32,
    /// Last access (set by utimens; reads do not update it: noatime).
    pub atime: Timestamp,
    /// Last data or entries change.
    pub mtime: Timestamp,
    /// Last change of the inode.
    pub ctime: Timestamp,
    /// Directories: the parent directory (for `..` and the subtree check).
    pub parent: u64,
    /// Directories: the number of entries.
    pub entries: u64,
    /// Directories: the cookie the next entry gets (cookies only grow).
    pub cookie_next: u64,
    /// Regular files: chunk size in bytes; chunk `i` holds bytes
    /// `[i * chunk_size, (i + 1) * chunk_size)`.
    pub chunk_size: u32,
    /// Regular files: the layout id; chunk `i` of the file is chunk
    /// `(layout_id, i)` of the chunk store.
    pub layout_id: u64,
    /// Extended attributes it has (so deleting an inode without any skips
    /// the scan for them).
    pub xattrs: u32,
    /// Symlinks: the target.
    pub target: Vec<u8>,
    /// Directories: the replicas the file data made below it gets on the
    /// storage cluster (the `xfused.replicas` xattr; inherited by the
    /// directories made in it). Regular files: the replicas their data
    /// gets, copied from the directory they were made in. 0: the
    /// cluster's default.
    pub replicas: u8,
}

impl InodeRec {
    /// The file type bits.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(112 + self.target.len());
        out.push(INODE_FORMAT);
        for v in [self.mode, self.uid, self.gid, self.nlink] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime] {
            out.extend_from_slice(&t.sec.to_le_bytes());
            out.extend_from_slice(&t.nsec.to_le_bytes());
        }
        for v in [self.parent, self.entries, self.cookie_next] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.layout_id.to_le_bytes());
        out.extend_from_slice(&self.xattrs.to_le_bytes());
        out.extend_from_slice(&(self.target.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.target);
        out.push(self.replicas);
        out
    }

    /// Parses a record written by [`InodeRec::encode`].
    pub fn decode(bytes: &[u8]) -> Result<InodeRec, SchemaError> {
        let mut r = Reader::new(bytes, "inode");
        let format = r.u8()?;
        if format != INODE_FORMAT && format != INODE_FORMAT_1 {
            return Err(SchemaError::new("inode", bytes.len()));
        }
        let (mode, uid, gid, nlink) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let size = r.u64()?;
        let rdev = r.u32()?;
        let mut times = [Timestamp::default(); 3];
        for t in &mut times {
            t.sec = r.i64()?;
            t.nsec = r.u32()?;
        }
        let (parent, entries, cookie_next) = (r.u64()?, r.u64()?, r.u64()?);
        let chunk_size = r.u32()?;
        let layout_id = r.u64()?;
        let xattrs = r.u32()?;
        let target_len = r.u32()? as usize;
        if target_len > SYMLINK_LEN_MAX {
            return Err(SchemaError::new("inode", bytes.len()));
        }
        let target = r.take(target_len)?.to_vec();
        let replicas = if format == INODE_FORMAT { r.u8()? } else { 0 };
        r.end()?;
        Ok(InodeRec {
            mode,
            uid,
            gid,
            nlink,
            size,
            rdev,
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            parent,
            entries,
            cookie_next,
            chunk_size,
            layout_id,
            xattrs,
            target,
            replicas,
        })
    }
}

/// A directory entry (`D` value): the inode it names, that inode's type,
/// and the entry's listing cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DentryRec {
    /// The inode.
    pub ino: u64,
    /// Its `S_IFMT` bits.
    pub kind: u32,
    /// Its cookie in the directory's listing (`L` key).
    pub cookie: u64,
}

impl DentryRec {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.cookie.to_le_bytes());
        out
    }
    /// Parses a record.
    pub fn decode(bytes: &[u8]) -> Result<DentryRec, SchemaError> {
        let mut r = Reader::new(bytes, "dentry");
        let rec = DentryRec {
            ino: r.u64()?,
            kind: r.u32()?,
            cookie: r.u64()?,
        };
        r.end()?;
        Ok(rec)
    }
}

/// A listing entry (`L` value): what readdir returns for a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingRec {
    /// The inode.
    pub ino: u64,
    /// Its `S_IFMT` bits.
    pub kind: u32,
    /// The entry's name.
    pub name: Vec<u8>,
}

impl ListingRec {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.name.len());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.name);
        out
    }
    /// Parses a record.
    pub fn decode(bytes: &[u8]) -> Result<ListingRec, SchemaError> {
        let mut r = Reader::new(bytes, "listing");
        let ino = r.u64()?;
        let kind = r.u32()?;
        let name = r.bytes.to_vec();
        if name.is_empty() || name.len() > NAME_LEN_MAX {
            return Err(SchemaError::new("listing", bytes.len()));
        }
        Ok(ListingRec { ino, kind, name })
    }
}

/// A statfs counter shard (`K` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterRec {
    /// Inodes (net creations) counted in this shard.
    pub inodes: i64,
    /// Bytes of file sizes counted in this shard.
    pub bytes: i64,
}

impl CounterRec {
    /// Serializes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.inodes.to_le_bytes());
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out
    }
    /// Parses a record.
    pub fn decode(bytes: &[u8]) -> Result<CounterRec, SchemaError> {
        let mut r = Reader::new(bytes, "counter");
        let rec = CounterRec {
            inodes: r.i64()?,
            bytes: r.i64()?,
        };
        r.end()?;
        Ok(rec)
    }
}

/// Encodes a u64 value (allocators, client leases).
pub fn encode_u64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Parses a u64 value.
pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, SchemaError> {
    let mut r = Reader::new(bytes, what);
    let v = r.u64()?;
    r.end()?;
    Ok(v)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips_and_truncations_are_refused() {
        let rec = InodeRec {
            mode: libc::S_IFLNK | 0o777,
            uid: 1,
            gid: 2,
            nlink: 1,
            size: 3,
            rdev: 0,
            atime: Timestamp { sec: 5, nsec: 6 },
            mtime: Timestamp { sec: -7, nsec: 8 },
            ctime: Timestamp { sec: 9, nsec: 10 },
            parent: 0,
            entries: 0,
            cookie_next: 0,
            chunk_size: 0,
            layout_id: 0,
            xattrs: 4,
            target: b"abc".to_vec(),
            replicas: 2,
        };
        let bytes = rec.encode();
        assert_eq!(InodeRec::decode(&bytes).unwrap(), rec);
        // A record of format 1, written before replicas were kept: the
        // same bytes without the last, read as the cluster's default.
        let mut old = bytes[..bytes.len() - 1].to_vec();
        old[0] = INODE_FORMAT_1;
        assert_eq!(
            InodeRec::decode(&old).unwrap(),
            InodeRec {
                replicas: 0,
                ..rec.clone()
            }
        );
        for len in 0..bytes.len() {
            assert!(InodeRec::decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(InodeRec::decode(&longer).is_err());
    }

    #[test]
    fn keys_of_one_directory_are_contiguous_and_inodes_spread() {
        let a = dentry_key(42, b"a");
        let prefix = &a[..10];
        assert!(dentry_key(42, b"zzz").starts_with(prefix));
        assert!(!dentry_key(43, b"a").starts_with(prefix));
        let shards: std::collections::HashSet<u8> = (1..=64).map(shard).collect();
        assert!(
            shards.len() > 40,
            "consecutive inodes should spread: {}",
            shards.len()
        );
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert!(listing_key(7, 3) < listing_key(7, 4));
    }
}
