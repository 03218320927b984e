//! The local chunk store: file data on the client's machine, until the
//! storage cluster replaces it.
//!
//! A file's bytes are cut into fixed-size chunks (the chunk size is part of
//! the file's layout in the metadata); chunk `i` of layout `L` is the file
//! `chunks/LL/LLLLLLLLLLLLLLLL.i` (hex layout id, its low byte naming the
//! subdirectory so no directory grows huge). Reads and writes are positioned
//! (`pread`/`pwrite` through `FileExt`) at the offset inside each chunk they
//! touch: a small write never reads or rewrites the rest of its chunk.
//! Chunks are sparse: a missing chunk, or bytes past a chunk file's end but
//! inside the file's size, read as zeros.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
}

/// Which chunks of a file a byte range touches: (chunk index, offset in the
/// chunk, length, offset in the range).
fn pieces(chunk_size: u32, offset: u64, len: usize) -> impl Iterator<Item = (u64, u64, usize, usize)> {
    let cs = u64::from(chunk_size.max(1));
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let index = pos / cs;
        let within = pos % cs;
        let n = ((cs - within) as usize).min(len - done);
        let piece = (index, within, n, done);
        done += n;
        Some(piece)
    })
}

impl ChunkStore {
    /// Opens (creating it if needed) the store under `root`.
    pub fn open(root: &Path) -> io::Result<ChunkStore> {
        let root = root.join("chunks");
        fs::create_dir_all(&root)?;
        Ok(ChunkStore { root })
    }

    fn path(&self, layout: u64, index: u64) -> PathBuf {
        self.root
            .join(format!("{:02x}", layout & 0xff))
            .join(format!("{layout:016x}.{index}"))
    }

    /// Opens a chunk file: for writing (and created if missing) with
    /// `create`, else read-only, `None` if missing.
    fn open_chunk(&self, layout: u64, index: u64, create: bool) -> io::Result<Option<File>> {
        self.open_chunk_with(layout, index, create, create)
    }

    fn open_chunk_with(
        &self,
        layout: u64,
        index: u64,
        write: bool,
        create: bool,
    ) -> io::Result<Option<File>> {
        let path = self.path(layout, index);
        let mut options = OpenOptions::new();
        options.read(true).write(write).create(create);
        match options.open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                options.open(&path).map(Some)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `buf.len()` bytes at `offset` of a file of `size` bytes (fewer
    /// at the end of the file); returns how many.
    pub fn read(
        &self,
        layout: u64,
        chunk_size: u32,
        size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if offset >= size {
            return Ok(0);
        }
        let len = buf.len().min((size - offset).min(usize::MAX as u64) as usize);
        for (index, within, n, at) in pieces(chunk_size, offset, len) {
            let out = &mut buf[at..at + n];
            let mut filled = 0;
            if let Some(file) = self.open_chunk(layout, index, false)? {
                while filled < n {
                    let got = file.read_at(&mut out[filled..], within + filled as u64)?;
                    if got == 0 {
                        break;
                    }
                    filled += got;
                }
            }
            out[filled..].fill(0);
        }
        Ok(len)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, layout: u64, chunk_size: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        for (index, within, n, at) in pieces(chunk_size, offset, data.len()) {
            let file = self
                .open_chunk(layout, index, true)?
                .ok_or_else(|| io::Error::other("chunk vanished while being created"))?;
            file.write_all_at(&data[at..at + n], within)?;
        }
        Ok(())
    }

    /// Cuts a file from `old_size` to `new_size` bytes: chunks wholly past
    /// the new end are removed, the one holding the end is shortened.
    /// Growing needs nothing (missing bytes read as zeros).
    pub fn truncate(&self, layout: u64, chunk_size: u32, old_size: u64, new_size: u64) -> io::Result<()> {
        if new_size >= old_size {
            return Ok(());
        }
        let cs = u64::from(chunk_size.max(1));
        let first_gone = new_size.div_ceil(cs);
        for index in first_gone..old_size.div_ceil(cs) {
            remove_missing_ok(&self.path(layout, index))?;
        }
        if !new_size.is_multiple_of(cs) {
            if let Some(file) = self.open_chunk_with(layout, new_size / cs, true, false)? {
                if file.metadata()?.len() > new_size % cs {
                    file.set_len(new_size % cs)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every chunk of a file of `size` bytes.
    pub fn remove(&self, layout: u64, chunk_size: u32, size: u64) -> io::Result<()> {
        let cs = u64::from(chunk_size.max(1));
        for index in 0..size.div_ceil(cs).max(1) {
            remove_missing_ok(&self.path(layout, index))?;
        }
        Ok(())
    }

    /// Flushes a file's chunks to disk.
    pub fn sync(&self, layout: u64, chunk_size: u32, size: u64) -> io::Result<()> {
        let cs = u64::from(chunk_size.max(1));
        for index in 0..size.div_ceil(cs) {
            if let Some(file) = self.open_chunk(layout, index, false)? {
                file.sync_data()?;
            }
        }
        Ok(())
    }
}

fn remove_missing_ok(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_across_chunks_read_back_with_holes_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        store.write(7, 4096, 3000, &data).unwrap();
        let size = 3000 + data.len() as u64;
        let mut buf = vec![0xaa; 20_000];
        let n = store.read(7, 4096, size, 0, &mut buf).unwrap();
        assert_eq!(n as u64, size);
        assert!(
            buf[..3000].iter().all(|b| *b == 0),
            "hole before the write reads as zeros"
        );
        assert_eq!(&buf[3000..n], &data[..]);
        // A small write touches only its chunk, at its offset.
        store.write(7, 4096, 5000, b"xyz").unwrap();
        assert_eq!(fs::metadata(store.path(7, 1)).unwrap().len(), 4096);
        let mut three = [0u8; 3];
        store.read(7, 4096, size, 5000, &mut three).unwrap();
        assert_eq!(&three, b"xyz");
        // Truncate into chunk 1: chunks 2 and 3 go, chunk 1 is cut.
        store.truncate(7, 4096, size, 5000).unwrap();
        assert!(!store.path(7, 2).exists() && !store.path(7, 3).exists());
        assert_eq!(fs::metadata(store.path(7, 1)).unwrap().len(), 5000 - 4096);
        // Growing again reads zeros where the data was cut.
        let mut after = [0xaau8; 8];
        store.read(7, 4096, 6000, 5000, &mut after).unwrap();
        assert_eq!(after, [0; 8]);
        store.remove(7, 4096, 6000).unwrap();
        assert!(!store.path(7, 0).exists() && !store.path(7, 1).exists());
        assert_eq!(store.read(7, 4096, 6000, 0, &mut after).unwrap(), 8);
    }
}
