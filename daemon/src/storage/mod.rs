//! The data half: storage targets holding chunks, replicated along chains
//! with CRAQ (chain replication with apportioned queries).
//!
//! - [`engine`]: one target's chunks on its disk, with versions and
//!   block checksums;
//! - [`target`]: a target's part in its chains: updates enter at the head,
//!   are forwarded down the chain, applied at the tail first and on every
//!   member as the acknowledgement travels back; reads are answered by any
//!   member;
//! - [`service`]: `xfused storage`, serving its targets on the service
//!   layer ([`crate::rpc`]);
//! - [`transport`]: how requests and their bulk payloads travel between
//!   mounts and targets, and between targets (TCP now; RDMA behind the
//!   same trait next);
//! - [`client`]: a mount's data in the cluster.
//!
//! The chain table, the targets and the file layouts live in the metadata
//! engine ([`crate::cluster`]).
//!
//! # The protocol
//!
//! Every request names a chain and the chain version its sender knows; a
//! target answers `ESTALE` to any other version, and the sender fetches the
//! table again. An update (a write, or a layout-wide truncate or removal)
//! goes to the chain's head, which serializes the updates of a chunk:
//! it gives the update the chunk's next version, keeps it pending, and
//! forwards it to its successor, which does the same; the tail applies it
//! at once and acknowledges; each member applies it when the
//! acknowledgement comes back, and the head answers the client last. So
//! when a client hears "done", every member has the update on disk (synced
//! first when the mount asks for durability).
//!
//! A pending update stays in memory, not on disk: each replica writes the
//! data once. A member that crashes with updates pending loses only
//! updates nobody acknowledged, and is taken out of its chains.
//!
//! Reads go to any serving member. A member with nothing pending for the
//! chunk answers from disk. One with an update pending (dirty) asks the
//! tail which version is committed: its own committed version, or the
//! pending one (already applied at the tail, the acknowledgement not yet
//! back here), and answers that one: CRAQ's apportioned queries, never
//! "not committed, retry".
//!
//! A retried update (the client's reply lost, or the head died) carries the
//! same (client, sequence) and is recognized on every member that applied
//! it: each chunk's header remembers the last
//! [`RECENT`](engine::RECENT) updates applied to it, across restarts, and
//! copies of a chunk carry them along.
//! A member asked to apply a version that does not follow its own (it
//! missed one) answers `EILSEQ`, and its predecessor sends it the whole
//! chunk instead.
//!
//! A forward that keeps failing leaves the update pending at the sender
//! (reads there ask the tail, as for any update in flight): the successor
//! may have applied it, so the sender never acts as if it had not been
//! sent, and drives it down again before the chunk's next update. A member
//! that starts again checks each chunk with the tail before it heads an
//! update of it or answers a read of it, and copies the tail's if the
//! versions differ. A chunk that may be written again is never removed,
//! only cut to nothing (keeping its version); removal is for chunks of
//! files that are gone. All of this was found necessary, and is checked,
//! by the seeded simulation in `sim.rs` (linearizability of every chunk's
//! history under lost, late and repeated messages, crashes and chain
//! changes).

pub mod client;
pub mod engine;
pub mod service;
#[cfg(test)]
mod sim;
pub mod target;
pub mod transport;

pub use engine::{ChunkEngine, ChunkId, ChunkMeta};

/// Errno for "this version does not follow mine: send the whole chunk".
pub const ENEEDCHUNK: i32 = libc::EILSEQ;

/// A chain as a request's sender knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainRef {
    /// The chain's id.
    pub id: u32,
    /// Its version (bumped by every change of its members or their states).
    pub version: u64,
}

/// What an update does to a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChunkOp {
    /// Writes the bulk payload at `offset`.
    Write {
        /// Offset in the chunk.
        offset: u32,
    },
    /// Cuts or extends the chunk to `len`.
    Truncate {
        /// The new length.
        len: u32,
    },
    /// Removes the chunk for good: only for files that are gone (a
    /// chunk that may be written again is cut to nothing instead, keeping
    /// its version, so no version is ever given twice to one chunk).
    Remove,
    /// Replaces the whole chunk by the bulk payload (a member that missed
    /// versions, or one being synced).
    Replace,
}

/// Who sent an update, to recognize it when sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct UpdateId {
    /// The mount's metadata client id.
    pub client: u64,
    /// The mount's number for this update.
    pub seq: u64,
}

/// A request to a storage service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StorageRequest {
    /// A client's update of a chunk, sent to the chain's head.
    Update {
        /// The target addressed.
        target: u32,
        /// The chain.
        chain: ChainRef,
        /// The chunk.
        chunk: ChunkId,
        /// What to do.
        op: ChunkOp,
        /// Who sent it.
        id: UpdateId,
        /// Durable on every member before the answer.
        sync: bool,
    },
    /// An update forwarded by a predecessor, with the version the head gave
    /// it.
    Forward {
        /// The target addressed.
        target: u32,
        /// The chain.
        chain: ChainRef,
        /// The chunk.
        chunk: ChunkId,
        /// What to do.
        op: ChunkOp,
        /// The chunk's version after it.
        version: u64,
        /// Who sent it.
        id: UpdateId,
        /// Durable before the answer.
        sync: bool,
        /// With [`ChunkOp::Replace`]: the updates the whole chunk has
        /// seen (see [`engine::RECENT`]).
        recent: Vec<(u64, u64)>,
    },
    /// Bytes of a chunk.
    Read {
        /// The target addressed.
        target: u32,
        /// The chain.
        chain: ChainRef,
        /// The chunk.
        chunk: ChunkId,
        /// Offset in the chunk.
        offset: u32,
        /// Bytes wanted.
        len: u32,
    },
    /// The committed version of a chunk (asked of the tail).
    Committed {
        /// The target addressed.
        target: u32,
        /// The chain.
        chain: ChainRef,
        /// The chunk.
        chunk: ChunkId,
    },
    /// The chunks of `layout` this target holds for `chain` (indexes and
    /// versions): to cut or remove a file, and to sync a member.
    List {
        /// The target addressed.
        target: u32,
        /// The chain.
        chain: ChainRef,
        /// The layout.
        layout: u64,
    },
    /// The chunks this target holds for `chain`, after `after`, in
    /// order: to sync a member.
    ListChain {
        /// The target addressed.
        target: u32,
        /// The chain.
        chain: ChainRef,
        /// Where the previous page ended.
        after: Option<ChunkId>,
    },
    /// Makes the chunks of `layout` on this target durable.
    Sync {
        /// The target addressed.
        target: u32,
        /// The layout.
        layout: u64,
    },
}

impl UpdateId {
    /// As a chunk remembers it.
    pub fn key(&self) -> engine::UpdateKey {
        (self.client, self.seq)
    }
}

impl StorageRequest {
    /// The target a request addresses.
    pub fn target(&self) -> u32 {
        match self {
            StorageRequest::Update { target, .. }
            | StorageRequest::Forward { target, .. }
            | StorageRequest::Read { target, .. }
            | StorageRequest::Committed { target, .. }
            | StorageRequest::List { target, .. }
            | StorageRequest::ListChain { target, .. }
            | StorageRequest::Sync { target, .. } => *target,
        }
    }

    /// Most bytes of payload its reply carries.
    pub fn reply_bulk(&self) -> usize {
        match self {
            StorageRequest::Read { len, .. } => *len as usize,
            _ => 0,
        }
    }
}

/// A reply of a storage service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StorageReply {
    /// The update is applied on every member from here to the tail, at
    /// this version.
    Done {
        /// The chunk's version after it.
        version: u64,
    },
    /// The bytes read are the bulk payload (fewer than asked: the chunk
    /// ends).
    Data {
        /// The version they are of.
        version: u64,
        /// The updates the chunk remembers (for copies between members).
        recent: Vec<(u64, u64)>,
    },
    /// A committed version.
    Version(u64),
    /// Chunks: (index, version, length).
    Chunks(Vec<(u64, u64, u32)>),
    /// A page of a chain's chunks, with versions (empty: the end).
    ChainChunks(Vec<(ChunkId, u64)>),
    /// Synced.
    Synced,
}
