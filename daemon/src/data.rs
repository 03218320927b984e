//! Where a mount keeps file data: [`FileData`], implemented by the local
//! chunk store ([`LocalData`]) and by the storage cluster
//! ([`crate::storage::client::ClusterData`]). [`crate::fs::MetaFs`] reads
//! and writes through it; the metadata (sizes, times) stays its own.

use std::io;

use crate::chunk::ChunkStore;
use crate::meta::schema::InodeRec;
use crate::meta::{Reclaim, FILE_SIZE_MAX_BYTES};

/// See the module docs. `rec` is the file's inode record as the caller
/// last read it (its layout id, chunk size and size).
pub trait FileData: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`, within the file's size
    /// (holes read as zeros); how many.
    fn read(&self, ino: u64, rec: &InodeRec, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes `data` at `offset`; durable as the store promises.
    fn write(&self, ino: u64, rec: &InodeRec, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Drops every byte at `at` and past it: done before a size change
    /// commits, so no size can ever bring old bytes back.
    fn cut(&self, ino: u64, rec: &InodeRec, at: u64) -> io::Result<()>;
    /// Deletes the data of a file that is gone.
    fn remove(&self, reclaim: &Reclaim) -> io::Result<()>;
    /// Makes the file's data durable.
    fn sync(&self, ino: u64, rec: &InodeRec) -> io::Result<()>;
}

/// The local chunk store as [`FileData`].
#[derive(Debug)]
pub struct LocalData(pub ChunkStore);

impl FileData for LocalData {
    fn read(&self, _ino: u64, rec: &InodeRec, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(rec.layout_id, rec.chunk_size, rec.size, offset, buf)
    }

    fn write(&self, _ino: u64, rec: &InodeRec, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(rec.layout_id, rec.chunk_size, offset, data)
    }

    fn cut(&self, _ino: u64, rec: &InodeRec, at: u64) -> io::Result<()> {
        // Chunks past the recorded size may exist (a crash between a size
        // commit and its cut): the whole file's range is cut, which lists
        // the file's chunks rather than probing every index.
        self.0
            .truncate(rec.layout_id, rec.chunk_size, FILE_SIZE_MAX_BYTES, at)
    }

    fn remove(&self, reclaim: &Reclaim) -> io::Result<()> {
        self.0.remove(reclaim.layout_id)
    }

    fn sync(&self, _ino: u64, rec: &InodeRec) -> io::Result<()> {
        self.0.sync(rec.layout_id, rec.chunk_size, rec.size)
    }
}
