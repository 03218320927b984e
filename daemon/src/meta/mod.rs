//! Distributed metadata: a POSIX namespace on a transactional KV engine.
//!
//! Every POSIX operation is one optimistic transaction ([`kv`]): it reads
//! what it needs, checks the POSIX rules, stages its writes and commits;
//! a commit fails if anything it read changed meanwhile, and the operation
//! runs again (with backoff, a bounded number of times; one that keeps
//! losing runs its next attempts alone among its engine handle's, so a hot
//! directory cannot starve it). So any number of
//! [`Meta`] handles, in one process or many, serve one consistent namespace:
//! renames are atomic (across directories too), link counts are exact, and
//! no entry is lost or duplicated however operations interleave.
//!
//! # Engines
//!
//! | engine | where | for |
//! |---|---|---|
//! | [`mem::MemEngine`] | a `BTreeMap` in memory | unit tests, the simulation |
//! | [`embedded::EmbeddedEngine`] | fjall (an LSM tree with a journal) in one process | the default: zero set-up |
//! | [`etcd::EtcdEngine`] | an etcd cluster (v3 API, revision-compare transactions, Raft) | namespaces shared by many machines |
//!
//! The embedded engine was chosen by measurement (fjall 2.11.2 against redb
//! 2.6.4), on the metadata layer's own write pattern: a create reads the
//! parent inode and the (absent) entry, then, under the commit lock,
//! re-reads both and writes four keys in one atomic batch (inode, entry,
//! listing entry, parent inode); a stat reads the entry and the inode.
//! `cargo run --release -p benches --bin kv-engines -- /var/tmp 20000`
//! (Debian 12, Linux 6.18, 2 vCPUs shared with other builds, ext4 on a
//! virtio disk; 20,000 creates per thread, a twentieth of that with fsync):
//!
//! | engine | durability per commit | threads | creates/s | stats/s |
//! |---|---|---|---|---|
//! | fjall | journal write to the OS (survives a process crash) | 1 | 142,766 | 673,555 |
//! | redb | `Durability::None` (lost on a crash until a durable commit) | 1 | 5,230 | 419,640 |
//! | fjall | fdatasync | 1 | 10,696 | 801,576 |
//! | redb | `Durability::Immediate` (fsync) | 1 | 3,869 | 555,565 |
//! | fjall | journal write to the OS | 4 | 114,710 | 524,425 |
//! | redb | `Durability::None` | 4 | 3,822 | 564,639 |
//! | fjall | fdatasync | 4 | 8,907 | 1,008,643 |
//! | redb | `Durability::Immediate` | 4 | 2,207 | 343,784 |
//!
//! fjall creates 2.8x (fsync) to 27x (no fsync) faster, and its cheap mode
//! is still safe against a crash of the process, which redb's is not; reads
//! are on par. redb's copy-on-write B-tree rewrites a path of pages per
//! commit, where fjall appends one journal record.
//!
//! # Schema
//!
//! Keys start with a table tag; per-inode tables then have a one-byte shard
//! (a hash of the inode number, spreading consecutive inodes over the key
//! space) and the big-endian inode number, so one inode's keys are
//! contiguous ([`schema`]).
//!
//! | key | value | what |
//! |---|---|---|
//! | `A` | next free inode number | allocator; clients reserve 256 at a time |
//! | `B` | next client id | allocator |
//! | `H` | next open-handle epoch | allocator: a client handle's open handles are `epoch << 32 \| n` |
//! | `C client` | lease deadline (ms since the epoch) | live clients |
//! | `I shard ino` | [`schema::InodeRec`] | attributes; directories: parent, entry count, next cookie; symlinks: target; files: chunk size and layout id (chunk `i` of the file is chunk `(layout_id, i)`) |
//! | `D shard parent name` | [`schema::DentryRec`] (ino, type, cookie) | entries by name: lookup |
//! | `L shard parent cookie` | [`schema::ListingRec`] (ino, type, name) | entries by cookie: readdir is one range scan from a cookie |
//! | `X shard ino name` | value | extended attributes |
//! | `O shard ino client handle` | empty | open-file sessions of an inode (a client with [`MetaConfig::local_sessions`], an embedded mount, writes its own only when the file is unlinked while open: see [`local`]) |
//! | `P client ino handle` | empty | the same sessions by client, to reap a dead client's |
//! | `G ino` | empty, or `tmpfile` | orphans: inodes without links kept for open files; `tmpfile` marks an `O_TMPFILE` file never named, which LINK may name |
//! | `K shard` | [`schema::CounterRec`] | statfs counters, 16 shards |
//!
//! Invariants every transaction keeps (checked by the tests and the
//! simulation): every entry names a live inode; a non-directory's nlink is
//! the number of entries naming it; a directory's nlink is 2 plus its
//! subdirectories and its entry count matches its entries; every directory
//! but the root has exactly one entry, in its recorded parent; the tree has
//! no cycles; an inode without links exists only while it has sessions.
//!
//! Range scans are validated too (a scan's result must be unchanged at
//! commit), which is what makes "delete the inode if nobody has it open"
//! safe against a concurrent open.
//!
//! Readdir cookies: each entry gets a cookie from its directory's counter
//! when created; cookies only grow and listings resume after the last
//! cookie returned, so an entry present throughout a listing is returned
//! exactly once, whatever else is created, renamed or removed meanwhile.

pub mod check;
pub mod embedded;
pub mod etcd;
pub mod kv;
pub mod local;
pub mod mem;
pub mod namespace;
mod ops;
pub mod schema;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use namespace::{Answer, Call, Namespace};
pub use ops::take_changed_dirs;
pub use ops::{
    access, relatime_due, rename_flags, xattr_flags, Caller, Clock, DirItem, Meta, MetaConfig, MetaError,
    Outcome, Reclaim, Record, Recorder, SetAttr, SystemClock, TimeSet, Usage, FILE_SIZE_MAX_BYTES,
    GROUPS_MAX, LINK_MAX, REPLICAS_MAX, REPLICAS_XATTR, XATTRS_MAX,
};
