//! Where a mount keeps file data: [`FileData`], implemented by the local
//! chunk store ([`LocalData`]) and by the storage cluster
//! ([`crate::storage::client::ClusterData`]). [`crate::fs::MetaFs`] reads
//! and writes through it; the metadata (sizes, times) stays its own.
//!
//! Holes are chunk-granular: a chunk that exists with bytes in it is data
//! from its start to its end (or the file's), a missing or emptied chunk
//! is a hole. POSIX lets `SEEK_DATA`/`SEEK_HOLE` report holes as data, so
//! [`seek_hole_data`] answers from the chunks [`FileData::data_chunks`]
//! lists; with 4 KiB chunks it agrees with tmpfs page for page.

use std::io;
use std::ops::Range;

use crate::chunk::ChunkStore;
use crate::meta::schema::InodeRec;
use crate::meta::{Reclaim, FILE_SIZE_MAX_BYTES};

/// See the module docs. `rec` is the file's inode record as the caller
/// last read it (its layout id, chunk size and size).
pub trait FileData: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`, within the file's size
    /// (holes read as zeros); how many.
    fn read(&self, ino: u64, rec: &InodeRec, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Reads as [`FileData::read`] does up to `len` bytes, but writes them
    /// to `out` (a FUSE reply): a store whose bytes arrive in buffers of
    /// their own writes those, without a copy into a buffer of the
    /// caller's. The default goes through `read`.
    fn read_to(
        &self,
        ino: u64,
        rec: &InodeRec,
        offset: u64,
        len: usize,
        out: &mut dyn io::Write,
    ) -> io::Result<usize> {
        let mut buf = vec![0u8; len];
        let n = self.read(ino, rec, offset, &mut buf)?;
        out.write_all(&buf[..n])?;
        Ok(n)
    }
    /// Writes `data` at `offset`; durable as the store promises. Uses
    /// only what of `rec` never changes (the layout id and chunk size):
    /// the caller may pass a record read at an earlier write.
    fn write(&self, ino: u64, rec: &InodeRec, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Drops every byte at `at` and past it: done before a size change
    /// commits, so no size can ever bring old bytes back.
    fn cut(&self, ino: u64, rec: &InodeRec, at: u64) -> io::Result<()>;
    /// Deletes the data of a file that is gone.
    fn remove(&self, reclaim: &Reclaim) -> io::Result<()>;
    /// Makes the file's data durable.
    fn sync(&self, ino: u64, rec: &InodeRec) -> io::Result<()>;
    /// Makes the bytes of `range` read as zeros (fallocate's punch-hole
    /// and zero-range): chunks wholly inside are emptied without writing
    /// their bytes, the parts of the (at most two) edge chunks inside are
    /// cut off when they reach the chunk's end, or else overwritten with
    /// zeros. Costs the chunks the file has in the range, never the
    /// range's length. Not atomic: a crash may leave part of the range
    /// zeroed (as on a local filesystem without a journal).
    fn zero(&self, ino: u64, rec: &InodeRec, range: Range<u64>) -> io::Result<()>;
    /// The indexes, in order, of the chunks in `indexes` that hold data
    /// (exist and are not empty). Costs the chunks the file has, never the
    /// length of `indexes`.
    fn data_chunks(&self, ino: u64, rec: &InodeRec, indexes: Range<u64>) -> io::Result<Vec<u64>>;
}

/// `lseek(2)`'s `SEEK_DATA` or `SEEK_HOLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// The first byte at or after the offset that is data.
    Data,
    /// The first byte at or after the offset that is in a hole (the end
    /// of the file is one).
    Hole,
}

/// Where `seek` from `offset` lands in a file of `size` bytes cut into
/// `chunk_size` chunks of which `data` (sorted indexes, none below
/// `offset`'s chunk) hold data; `None` is `ENXIO` (no data at or after
/// `offset`, or `offset` at or past the end).
pub fn seek_hole_data(data: &[u64], chunk_size: u32, size: u64, offset: u64, seek: Seek) -> Option<u64> {
    if offset >= size {
        return None;
    }
    let cs = u64::from(chunk_size.max(1));
    let first = offset / cs;
    let mut chunks = data.iter().copied().filter(|i| *i >= first);
    match seek {
        Seek::Data => chunks
            .next()
            .map(|i| offset.max(i.saturating_mul(cs)))
            .filter(|at| *at < size),
        Seek::Hole => {
            // Walks the run of data chunks starting at `offset`'s chunk.
            let mut at = first;
            for i in chunks {
                if i != at {
                    break;
                }
                at += 1;
            }
            Some(if at == first {
                offset
            } else {
                at.saturating_mul(cs).min(size)
            })
        }
    }
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

    fn zero(&self, _ino: u64, rec: &InodeRec, range: Range<u64>) -> io::Result<()> {
        self.0.zero(rec.layout_id, rec.chunk_size, range)
    }

    fn data_chunks(&self, _ino: u64, rec: &InodeRec, indexes: Range<u64>) -> io::Result<Vec<u64>> {
        self.0.data_chunks(rec.layout_id, indexes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u32 = 4096;

    #[test]
    fn seek_data_and_hole_follow_the_chunks_that_hold_data() {
        // Chunks 1, 2 and 4 of a file of 4.5 chunks.
        let data = [1, 2, 4];
        let size = 4 * 4096 + 2048;
        let at = |offset, seek| seek_hole_data(&data, CS, size, offset, seek);
        assert_eq!(at(0, Seek::Data), Some(4096));
        assert_eq!(at(5000, Seek::Data), Some(5000), "inside data: itself");
        assert_eq!(at(3 * 4096, Seek::Data), Some(4 * 4096));
        assert_eq!(at(0, Seek::Hole), Some(0), "inside a hole: itself");
        assert_eq!(at(4096, Seek::Hole), Some(3 * 4096), "after the run 1..=2");
        assert_eq!(at(4 * 4096 + 1, Seek::Hole), Some(size), "the end is a hole");
        assert_eq!(at(size, Seek::Data), None);
        assert_eq!(at(size, Seek::Hole), None);
        assert_eq!(at(size - 1, Seek::Data), Some(size - 1));
    }

    #[test]
    fn a_file_without_data_or_past_its_chunks_has_no_data() {
        assert_eq!(seek_hole_data(&[], CS, 10_000, 0, Seek::Data), None);
        assert_eq!(seek_hole_data(&[], CS, 10_000, 9_999, Seek::Hole), Some(9_999));
        assert_eq!(seek_hole_data(&[0], CS, 10_000, 4096, Seek::Data), None);
        // A chunk left past the size (a crash before a cut) is no data.
        assert_eq!(seek_hole_data(&[3], CS, 10_000, 0, Seek::Data), None);
        assert_eq!(seek_hole_data(&[0], CS, 0, 0, Seek::Hole), None);
    }
}
