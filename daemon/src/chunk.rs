//! The local chunk store: file data on the client's machine, until the
//! storage cluster replaces it.
//!
//! A file's bytes are cut into fixed-size chunks (the chunk size is part of
//! the file's layout in the metadata). Reads and writes are positioned
//! (`pread`/`pwrite` through `FileExt`) at the offset inside each chunk they
//! touch: a small write never reads or rewrites the rest of its chunk.
//! Chunks are sparse: a missing chunk, or bytes past a chunk file's end but
//! inside the file's size, read as zeros.
//!
//! # On disk
//!
//! Chunk `i` of layout `L` is the file `chunks/LL/LLLLLLLLLLLLLLLL/i`: each
//! layout (each file) has a directory of its own, named by the hex layout id
//! inside a directory named by its low byte (so no directory grows huge),
//! and its chunks in there are named by decimal index. `chunks/FORMAT` says
//! which format the store has.
//!
//! # Cost follows data, not size
//!
//! The chunks a file has are one `read_dir` of its directory, so
//! [`ChunkStore::truncate`], [`ChunkStore::zero`] (punching a hole),
//! [`ChunkStore::data_chunks`] (seeking data or a hole),
//! [`ChunkStore::remove`] and [`ChunkStore::sync`] visit the chunks that
//! exist, never every index up to the file's size
//! (when the range of indexes they touch is shorter than
//! [`INDEX_PROBE_MAX`], they look those up by name instead of listing). A
//! sparse file of [`crate::meta::FILE_SIZE_MAX_BYTES`] (4 EiB, the largest
//! the metadata layer allows) with two chunks is cut, synced and deleted in
//! a handful of syscalls. Reads and writes cost what they move.
//!
//! # Durability
//!
//! [`ChunkStore::sync`] fsyncs each chunk of the file, then the file's
//! directory and the one above it, so chunks created since the last sync
//! keep their names across a crash. Creating a chunk does not fsync its
//! directory: nothing is promised before an fsync, and a directory fsync
//! per new chunk would put a journal commit in the way of every first write
//! to each chunk of every file (creating a directory and a 4 KiB file in it
//! took 0.13 ms, 3.3 ms with an fsync of the directory: ext4 on a virtio
//! disk, 2 busy vCPUs). A new `LL` directory, made at most 256 times
//! in a store's life, has `chunks/` fsynced at once, so a sync need not
//! reach higher.
//!
//! # Privacy
//!
//! Directories are made 0700 and chunk files 0600, whatever the umask
//! ([`crate::private_state`]); [`ChunkStore::open`] tightens a `chunks/`
//! left 0755 by an older xfused.
//!
//! # Migration from the flat format
//!
//! Stores written before `FORMAT` existed kept every chunk of an `LL`
//! directory side by side, as `LL/LLLLLLLLLLLLLLLL.i`. Opening a store with
//! no `FORMAT` moves each such chunk to its new name by `rename` (atomic: a
//! crash leaves it at the old name or the new one, never both or neither),
//! making it 0600 and its `LL` directory 0700 on the way; then it fsyncs
//! the directories it changed and only then writes `FORMAT`. A migration cut
//! short by a crash has written no `FORMAT`, so the next open scans again and
//! moves what is left; a store with `FORMAT` is never scanned.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::private_state::{self, DIR_MODE, FILE_MODE};

/// The format marker's file name, in `chunks/`.
const FORMAT_FILE: &str = "FORMAT";
/// The format marker's content for the per-layout-directory format.
const FORMAT_PER_LAYOUT_DIR: &[u8] = b"xfused chunk store 2: chunks/LL/LAYOUT/INDEX\n";
/// When truncate or sync touch at most this many chunk indexes, each is
/// looked up by name (a missing one costs one failed `open`/`unlink`);
/// more, and the file's directory is listed instead.
pub const INDEX_PROBE_MAX: u64 = 64;

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

/// A chunk's index from its file name: decimal digits only, as
/// [`ChunkStore::path`] writes them.
fn parse_index(name: &OsStr) -> Option<u64> {
    let name = name.to_str()?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// A flat-format chunk's layout and index from its file name,
/// `LLLLLLLLLLLLLLLL.i`.
fn parse_flat_name(name: &OsStr) -> Option<(u64, u64)> {
    let (layout, index) = name.to_str()?.split_once('.')?;
    // Lower-case hex, as the flat format wrote it.
    if layout.len() != 16 || !layout.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some((
        u64::from_str_radix(layout, 16).ok()?,
        parse_index(OsStr::new(index))?,
    ))
}

fn not_found_ok(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn exists_ok(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Overwrites `range` of `file` with zeros, a bounded buffer at a time.
fn write_zeros(file: &File, range: Range<u64>) -> io::Result<()> {
    const ZEROS_LEN: usize = 64 * 1024;
    let zeros = vec![0u8; ZEROS_LEN.min((range.end - range.start) as usize)];
    let mut at = range.start;
    while at < range.end {
        let n = zeros.len().min((range.end - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl ChunkStore {
    /// Opens the store in `data/chunks`, creating it if needed (0700),
    /// tightening it if an older xfused left it open to others, and moving
    /// a flat-format store's chunks into per-layout directories (see the
    /// module docs).
    pub fn open(data: &Path) -> io::Result<ChunkStore> {
        let root = data.join("chunks");
        private_state::ensure_dir(&root)?;
        let store = ChunkStore { root };
        let marker = store.root.join(FORMAT_FILE);
        match fs::read(&marker) {
            Ok(text) if text == FORMAT_PER_LAYOUT_DIR => {}
            Ok(text) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: unknown chunk store format {:?} (written by a newer xfused?)",
                        marker.display(),
                        String::from_utf8_lossy(&text)
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                store.migrate_flat_chunks()?;
                store.write_format_marker()?;
            }
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    fn group_dir(&self, layout: u64) -> PathBuf {
        self.root.join(format!("{:02x}", layout & 0xff))
    }

    fn layout_dir(&self, layout: u64) -> PathBuf {
        self.group_dir(layout).join(format!("{layout:016x}"))
    }

    fn path(&self, layout: u64, index: u64) -> PathBuf {
        self.layout_dir(layout).join(index.to_string())
    }

    /// Moves every flat-format chunk (`LL/LLLLLLLLLLLLLLLL.i`) to
    /// `LL/LLLLLLLLLLLLLLLL/i`, then fsyncs the directories changed.
    fn migrate_flat_chunks(&self) -> io::Result<()> {
        let mut moved = 0u64;
        let mut changed = BTreeSet::new();
        for group in fs::read_dir(&self.root)? {
            let group = group?;
            let name = group.file_name();
            let is_group = name.len() == 2
                && name
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_group || !group.file_type()?.is_dir() {
                continue;
            }
            let group = group.path();
            if fs::metadata(&group)?.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&group, fs::Permissions::from_mode(DIR_MODE))?;
            }
            // Listed before moving, so the listing never sees its own changes.
            let mut flat = Vec::new();
            for entry in fs::read_dir(&group)? {
                let entry = entry?;
                if let Some((layout, index)) = parse_flat_name(&entry.file_name()) {
                    if entry.file_type()?.is_file() {
                        flat.push((entry.path(), layout, index));
                    }
                }
            }
            for (old, layout, index) in flat {
                let dir = self.layout_dir(layout);
                if !dir.starts_with(&group) {
                    tracing::warn!(
                        "chunk store: {} is not in the directory of its layout; left alone",
                        old.display()
                    );
                    continue;
                }
                exists_ok(private_state::create_dir(&dir))?;
                fs::set_permissions(&old, fs::Permissions::from_mode(FILE_MODE))?;
                fs::rename(&old, self.path(layout, index))?;
                changed.insert(group.clone());
                changed.insert(dir);
                moved += 1;
            }
        }
        for dir in &changed {
            private_state::sync_dir(dir)?;
        }
        if moved > 0 {
            tracing::info!(
                "chunk store {}: moved {moved} chunks of the flat format into per-file directories",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Writes `FORMAT` durably: a temporary file, fsynced, renamed into
    /// place, and `chunks/` and the directory above it fsynced.
    fn write_format_marker(&self) -> io::Result<()> {
        let temp = self.root.join(format!("{FORMAT_FILE}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        file.write_all(FORMAT_PER_LAYOUT_DIR)?;
        file.sync_all()?;
        fs::rename(&temp, self.root.join(FORMAT_FILE))?;
        private_state::sync_dir(&self.root)?;
        if let Some(parent) = self.root.parent() {
            private_state::sync_dir(parent)?;
        }
        Ok(())
    }

    /// Creates the directory of `layout` (and its `LL` directory, fsyncing
    /// `chunks/` if that is new) if missing.
    fn make_layout_dir(&self, layout: u64) -> io::Result<()> {
        if exists_ok(private_state::create_dir(&self.group_dir(layout)))? {
            private_state::sync_dir(&self.root)?;
        }
        exists_ok(private_state::create_dir(&self.layout_dir(layout)))?;
        Ok(())
    }

    /// Opens a chunk file: for writing (and created if missing, 0600) with
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
        options.read(true).write(write).create(create).mode(FILE_MODE);
        match options.open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                self.make_layout_dir(layout)?;
                options.open(&path).map(Some)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The indexes in `range` that may have a chunk of `layout`: all of
    /// them when the range is short (the caller looks each up and treats a
    /// missing one as a hole), else those present in the layout's directory.
    /// Costs at most [`INDEX_PROBE_MAX`] or the number of chunks the file
    /// has, whichever is more; never the length of the range.
    fn candidate_indexes(&self, layout: u64, range: Range<u64>) -> io::Result<Vec<u64>> {
        if range.end.saturating_sub(range.start) <= INDEX_PROBE_MAX {
            return Ok(range.collect());
        }
        let listing = match fs::read_dir(self.layout_dir(layout)) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for entry in listing {
            if let Some(index) = parse_index(&entry?.file_name()) {
                if range.contains(&index) {
                    found.push(index);
                }
            }
        }
        found.sort_unstable();
        Ok(found)
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

    /// Cuts a file from `old_size` to `new_size` bytes: its chunks wholly
    /// past the new end are removed, the one holding the end is shortened.
    /// Growing needs nothing (missing bytes read as zeros).
    pub fn truncate(&self, layout: u64, chunk_size: u32, old_size: u64, new_size: u64) -> io::Result<()> {
        if new_size >= old_size {
            return Ok(());
        }
        let cs = u64::from(chunk_size.max(1));
        let first_gone = new_size.div_ceil(cs);
        for index in self.candidate_indexes(layout, first_gone..old_size.div_ceil(cs))? {
            not_found_ok(fs::remove_file(self.path(layout, index)))?;
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

    /// Makes bytes `range` of a file read as zeros: its chunks wholly
    /// inside are removed, and the part of an edge chunk inside is cut off
    /// (when it reaches the chunk file's end: a chunk left empty is
    /// removed) or overwritten with zeros (at most a chunk's worth, twice).
    /// Bytes past a chunk file's end already read as zeros and are left
    /// alone. Costs what [`ChunkStore::truncate`] does: the chunks the
    /// range holds, never its length.
    pub fn zero(&self, layout: u64, chunk_size: u32, range: Range<u64>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let cs = u64::from(chunk_size.max(1));
        for index in self.candidate_indexes(layout, range.start / cs..range.end.div_ceil(cs))? {
            let chunk_start = index * cs;
            let from = range.start.max(chunk_start) - chunk_start;
            let to = range.end.min(chunk_start.saturating_add(cs)) - chunk_start;
            if from == 0 && to == cs {
                not_found_ok(fs::remove_file(self.path(layout, index)))?;
                continue;
            }
            let Some(file) = self.open_chunk_with(layout, index, true, false)? else {
                continue;
            };
            let len = file.metadata()?.len();
            if from >= len {
                continue;
            }
            if to < len {
                write_zeros(&file, from..to)?;
            } else if from > 0 {
                file.set_len(from)?;
            } else {
                not_found_ok(fs::remove_file(self.path(layout, index)))?;
            }
        }
        Ok(())
    }

    /// The indexes in `indexes` whose chunk of `layout` holds data (exists
    /// and is not empty), in order. Costs a lookup of each index when
    /// there are at most [`INDEX_PROBE_MAX`], else a listing of the file's
    /// directory, and a `stat` of each chunk found.
    pub fn data_chunks(&self, layout: u64, indexes: Range<u64>) -> io::Result<Vec<u64>> {
        let mut found = Vec::new();
        for index in self.candidate_indexes(layout, indexes)? {
            match fs::metadata(self.path(layout, index)) {
                Ok(m) if m.len() > 0 => found.push(index),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Deletes every chunk of `layout`, and its directory.
    pub fn remove(&self, layout: u64) -> io::Result<()> {
        not_found_ok(fs::remove_dir_all(self.layout_dir(layout)))
    }

    /// Flushes the chunks of a file of `size` bytes to disk, and their
    /// names (see the module docs).
    pub fn sync(&self, layout: u64, chunk_size: u32, size: u64) -> io::Result<()> {
        let cs = u64::from(chunk_size.max(1));
        for index in self.candidate_indexes(layout, 0..size.div_ceil(cs))? {
            if let Some(file) = self.open_chunk(layout, index, false)? {
                file.sync_data()?;
            }
        }
        match private_state::sync_dir(&self.layout_dir(layout)) {
            // Never written: no chunk, nothing to name.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(()) => private_state::sync_dir(&self.group_dir(layout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// 4 EiB: the largest size the metadata layer allows.
    const HUGE: u64 = crate::meta::FILE_SIZE_MAX_BYTES;
    const CS: u32 = 4096;
    /// A few syscalls take microseconds; the flat loops these tests replace
    /// took 2^50 of them. Generous, for a busy machine.
    const DEADLINE: Duration = Duration::from_secs(5);

    /// Runs `op` on a helper thread; panics if it has not finished within
    /// [`DEADLINE`] (leaving it running), else returns its time.
    fn within_deadline(what: &str, op: impl FnOnce() -> io::Result<()> + Send + 'static) -> Duration {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            let result = op();
            let _ = tx.send((result, start.elapsed()));
        });
        match rx.recv_timeout(DEADLINE) {
            Ok((Ok(()), took)) => took,
            Ok((Err(e), _)) => panic!("{what}: {e}"),
            Err(_) => {
                panic!("{what} did not finish within {DEADLINE:?}: its cost grows with the file's size")
            }
        }
    }

    /// The chunk indexes present for `layout`, sorted.
    fn chunks_of(store: &ChunkStore, layout: u64) -> Vec<u64> {
        let mut found: Vec<u64> = match fs::read_dir(store.layout_dir(layout)) {
            Ok(listing) => listing
                .map(|e| parse_index(&e.unwrap().file_name()).expect("only chunks in a layout directory"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("listing layout {layout}: {e}"),
        };
        found.sort_unstable();
        found
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// A sparse file of [`HUGE`] bytes: 100 bytes at 0, 5 at its very end.
    fn huge_sparse_file(store: &ChunkStore, layout: u64) {
        store.write(layout, CS, 0, &[7u8; 100]).unwrap();
        store.write(layout, CS, HUGE - 5, b"tail!").unwrap();
        assert_eq!(chunks_of(store, layout), vec![0, HUGE / u64::from(CS) - 1]);
    }

    #[test]
    fn truncating_a_sparse_4_eib_file_to_10_bytes_touches_only_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        huge_sparse_file(&store, 9);
        let s = store.clone();
        let took = within_deadline("truncate 4 EiB -> 10", move || s.truncate(9, CS, HUGE, 10));
        eprintln!("truncate of a sparse 4 EiB file to 10 bytes: {took:?}");
        assert_eq!(
            chunks_of(&store, 9),
            vec![0],
            "the tail chunk is gone, chunk 0 stays"
        );
        assert_eq!(fs::metadata(store.path(9, 0)).unwrap().len(), 10);
        let mut buf = [0u8; 16];
        assert_eq!(store.read(9, CS, 10, 0, &mut buf).unwrap(), 10);
        assert_eq!(&buf[..10], &[7u8; 10]);
    }

    #[test]
    fn removing_and_syncing_a_sparse_4_eib_file_touch_only_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        huge_sparse_file(&store, 11);
        huge_sparse_file(&store, 11 + 256);
        let s = store.clone();
        let took = within_deadline("sync of 4 EiB", move || s.sync(11, CS, HUGE));
        eprintln!("sync of a sparse 4 EiB file: {took:?}");
        assert_eq!(
            chunks_of(&store, 11),
            vec![0, HUGE / u64::from(CS) - 1],
            "sync keeps the chunks"
        );
        let s = store.clone();
        let took = within_deadline("remove of 4 EiB", move || s.remove(11));
        eprintln!("remove of a sparse 4 EiB file: {took:?}");
        assert!(
            !store.layout_dir(11).exists(),
            "the file's chunks and directory are gone"
        );
        assert_eq!(
            chunks_of(&store, 11 + 256).len(),
            2,
            "another file in the same LL directory keeps its chunks"
        );
        // Removing a file that never had data, or twice, is fine.
        store.remove(11).unwrap();
        store.sync(12, CS, HUGE).unwrap();
    }

    #[test]
    fn chunk_files_are_0600_and_directories_0700() {
        // The test process runs with the usual umask (022), under which the
        // flat format's files came out 0644 and its directories 0755.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let store = ChunkStore::open(&data).unwrap();
        store.write(0x1234, CS, 5000, b"secret").unwrap();
        assert_eq!(mode(&store.path(0x1234, 1)), 0o600, "chunk file");
        for d in [
            store.layout_dir(0x1234),
            store.group_dir(0x1234),
            store.root.clone(),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&store.root.join(FORMAT_FILE)), 0o600, "format marker");
    }

    /// Writes a flat-format chunk, as the flat format's xfused did (0644 in
    /// a 0755 LL directory).
    fn flat_chunk(data: &Path, layout: u64, index: u64, bytes: &[u8]) {
        let group = data.join("chunks").join(format!("{:02x}", layout & 0xff));
        fs::create_dir_all(&group).unwrap();
        for d in [data.join("chunks"), group.clone()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = group.join(format!("{layout:016x}.{index}"));
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    #[test]
    fn a_flat_format_store_reads_back_the_same_after_open_and_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let a: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        // Layout 7: chunks 0 and 1 (6000 bytes); layout 0x107 shares its LL
        // directory; layout 0x2a has a hole at chunk 0.
        flat_chunk(data, 7, 0, &a[..4096]);
        flat_chunk(data, 7, 1, &a[4096..]);
        flat_chunk(data, 0x107, 0, b"other file");
        flat_chunk(data, 0x2a, 1, b"after a hole");
        let store = ChunkStore::open(data).unwrap();
        let mut buf = vec![0u8; 6000];
        assert_eq!(store.read(7, CS, 6000, 0, &mut buf).unwrap(), 6000);
        assert_eq!(buf, a);
        let mut other = [0u8; 10];
        store.read(0x107, CS, 10, 0, &mut other).unwrap();
        assert_eq!(&other, b"other file");
        let mut holed = vec![1u8; 4096 + 12];
        store.read(0x2a, CS, 4096 + 12, 0, &mut holed).unwrap();
        assert!(holed[..4096].iter().all(|b| *b == 0));
        assert_eq!(&holed[4096..], b"after a hole");
        assert_eq!(chunks_of(&store, 7), vec![0, 1]);
        let group = data.join("chunks/07");
        let left: Vec<_> = fs::read_dir(&group)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| parse_flat_name(n).is_some())
            .collect();
        assert!(left.is_empty(), "flat names left: {left:?}");
        assert_eq!(mode(&store.path(7, 1)), 0o600);
        for d in [data.join("chunks"), group, store.layout_dir(7)] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(
            fs::read(data.join("chunks").join(FORMAT_FILE)).unwrap(),
            FORMAT_PER_LAYOUT_DIR
        );
    }

    #[test]
    fn a_migration_cut_short_resumes_at_the_next_open_and_a_marked_store_is_not_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        flat_chunk(data, 5, 0, b"zero");
        flat_chunk(data, 5, 1, b"one");
        flat_chunk(data, 5, 2, b"two");
        // A crash after chunk 0 was renamed: no FORMAT yet.
        let group = data.join("chunks/05");
        fs::create_dir(group.join(format!("{:016x}", 5))).unwrap();
        fs::rename(
            group.join(format!("{:016x}.0", 5)),
            group.join(format!("{:016x}/0", 5)),
        )
        .unwrap();
        let store = ChunkStore::open(data).unwrap();
        assert_eq!(chunks_of(&store, 5), vec![0, 1, 2]);
        for (i, want) in [&b"zero"[..], b"one", b"two"].into_iter().enumerate() {
            let mut got = vec![0u8; want.len()];
            store.read(5, CS, 3 * 4096, i as u64 * 4096, &mut got).unwrap();
            assert_eq!(got, want, "chunk {i}");
        }
        // With FORMAT written, a flat name is no longer looked for.
        flat_chunk(data, 5, 3, b"stray");
        ChunkStore::open(data).unwrap();
        assert!(group.join(format!("{:016x}.3", 5)).exists());
        assert_eq!(chunks_of(&store, 5), vec![0, 1, 2]);
    }

    #[test]
    fn an_unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ChunkStore::open(dir.path()).unwrap();
        fs::write(
            dir.path().join("chunks").join(FORMAT_FILE),
            b"xfused chunk store 9\n",
        )
        .unwrap();
        let e = ChunkStore::open(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

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
        store.remove(7).unwrap();
        assert!(!store.path(7, 0).exists() && !store.path(7, 1).exists());
        assert_eq!(store.read(7, 4096, 6000, 0, &mut after).unwrap(), 8);
    }

    #[test]
    fn zeroing_a_range_of_a_sparse_4_eib_file_touches_only_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        huge_sparse_file(&store, 13);
        let s = store.clone();
        // From byte 50 of chunk 0 to 2 bytes before the end: chunk 0 is
        // cut at 50, the last chunk keeps its last 2 bytes.
        let took = within_deadline("zero of 4 EiB", move || s.zero(13, CS, 50..HUGE - 2));
        eprintln!("zeroing almost all of a sparse 4 EiB file: {took:?}");
        let last = HUGE / u64::from(CS) - 1;
        assert_eq!(chunks_of(&store, 13), vec![0, last]);
        assert_eq!(fs::metadata(store.path(13, 0)).unwrap().len(), 50);
        let mut tail = [1u8; 5];
        store.read(13, CS, HUGE, HUGE - 5, &mut tail).unwrap();
        assert_eq!(&tail, &[0, 0, 0, b'l', b'!']);
        assert_eq!(
            store.data_chunks(13, 0..HUGE / u64::from(CS)).unwrap(),
            vec![0, last]
        );
        // The whole file: every chunk goes.
        let s = store.clone();
        within_deadline("zero of all 4 EiB", move || s.zero(13, CS, 0..HUGE));
        assert_eq!(chunks_of(&store, 13), Vec::<u64>::new());
        assert_eq!(
            store.data_chunks(13, 0..HUGE / u64::from(CS)).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn zeroing_cuts_or_overwrites_the_edges_and_removes_whole_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..5 * 4096u32).map(|i| (i % 251) as u8 + 1).collect();
        store.write(3, CS, 0, &data).unwrap();
        // Inside chunk 0, 1..3 whole, into chunk 4: zeros written in 0 and
        // 4, chunks 1..3 removed.
        store.zero(3, CS, 100..4 * 4096 + 10).unwrap();
        assert_eq!(chunks_of(&store, 3), vec![0, 4]);
        assert_eq!(
            fs::metadata(store.path(3, 0)).unwrap().len(),
            100,
            "cut: the range reached its end"
        );
        assert_eq!(
            fs::metadata(store.path(3, 4)).unwrap().len(),
            4096,
            "zeros written, length kept"
        );
        let mut back = vec![0xaa; data.len()];
        store.read(3, CS, data.len() as u64, 0, &mut back).unwrap();
        let mut want = data.clone();
        want[100..4 * 4096 + 10].fill(0);
        assert_eq!(back, want);
        // Chunk 0 from its start to past its end: removed, not left empty.
        store.zero(3, CS, 0..200).unwrap();
        assert_eq!(chunks_of(&store, 3), vec![4]);
        assert_eq!(store.data_chunks(3, 0..5).unwrap(), vec![4]);
        // Past a chunk's end, or over a missing chunk: nothing happens.
        store.zero(3, CS, 4096..8000).unwrap();
        assert_eq!(chunks_of(&store, 3), vec![4]);
        store.zero(3, CS, 7..7).unwrap();
    }
}
