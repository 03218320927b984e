//! The chunk engine of one storage target: chunks on a local filesystem,
//! each with a version and a crc32c per 4 KiB block.
//!
//! # On disk
//!
//! Under the target's directory, chunk `i` of layout `L` is two files in
//! `chunks/LL/LLLLLLLLLLLLLLLL/` (`LL` the layout's low byte, as in the
//! client's local store, so no directory grows huge):
//! - `i`, the chunk's bytes, written in place;
//! - `i.m`, its header and block checksums: [`HEADER_LEN`] bytes (a magic,
//!   the format, the committed version, the chunk's length and chain, the last
//!   [`RECENT`] updates applied), then one
//!   little-endian crc32c per [`BLOCK_SIZE`] block of the chunk, the last
//!   block's over the bytes it has.
//!
//! # What a write costs
//!
//! A positioned write goes to its place in `i` and rewrites only the
//! checksums of the blocks it touched and the header (two `pwrite`s of a
//! few bytes into `i.m`). A 4 KiB write in a chunk of up to 3808 KiB thus
//! dirties one page of data and one of `i.m` (the checksums of the first
//! 952 blocks share the header's page): the pages that reach the disk
//! are at most 2x the data (3x for blocks past the first 952 of a larger
//! chunk). Nothing copies the chunk. (What the filesystem below then
//! writes back is its business: ext4 with large folios may write a whole
//! dirty folio; the cluster bench measures the bytes that reach the disk.)
//!
//! # What a read checks
//!
//! Every block a read touches is read whole and checked against its
//! checksum; a mismatch is `EIO` (logged with the chunk and block). The
//! target then copies the chunk from another member at the same version
//! (`Target::repair`), or failing that answers `EIO` and the client reads
//! another replica.
//!
//! # Crashes
//!
//! Nothing here is fsynced unless asked ([`ChunkEngine::sync`], or a write
//! with `sync`). A crash between a write's data and its checksums leaves
//! blocks that fail their check: they read as `EIO` on this replica, never
//! as wrong bytes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::private_state::{self, FILE_MODE};

/// Checksummed block size.
pub const BLOCK_SIZE: u32 = 4096;
/// Bytes of a chunk's header in its `.m` file.
pub const HEADER_LEN: usize = 32 + RECENT * 16;
/// Updates a chunk remembers by who sent them (client, sequence), newest
/// last: a retried update is recognized by any member that applied it,
/// across restarts, and copies of the chunk carry them along.
pub const RECENT: usize = 16;
/// Who sent an update: (client, sequence); (0, 0) is an empty slot.
pub type UpdateKey = (u64, u64);
/// Largest chunk the engine keeps (64 MiB, the largest chunk size a mount
/// may choose).
pub const CHUNK_SIZE_MAX: u32 = 64 << 20;
const MAGIC: &[u8; 4] = b"XFCK";
const FORMAT: u8 = 1;

/// A chunk: its layout (the file) and index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ChunkId {
    /// The file's layout id.
    pub layout: u64,
    /// The chunk's index in the file.
    pub index: u64,
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{}", self.layout, self.index)
    }
}

/// A chunk's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkMeta {
    /// The committed version (0: the chunk does not exist).
    pub version: u64,
    /// Its length in bytes.
    pub len: u32,
    /// The chain it belongs to.
    pub chain: u32,
    /// The last updates applied to it ([`RECENT`]).
    pub recent: [UpdateKey; RECENT],
}

impl ChunkMeta {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(MAGIC);
        h[4] = FORMAT;
        h[8..16].copy_from_slice(&self.version.to_le_bytes());
        h[16..20].copy_from_slice(&self.len.to_le_bytes());
        h[20..24].copy_from_slice(&self.chain.to_le_bytes());
        for (i, (client, seq)) in self.recent.iter().enumerate() {
            h[32 + 16 * i..40 + 16 * i].copy_from_slice(&client.to_le_bytes());
            h[40 + 16 * i..48 + 16 * i].copy_from_slice(&seq.to_le_bytes());
        }
        h
    }

    fn decode(h: &[u8]) -> io::Result<ChunkMeta> {
        if h.len() < HEADER_LEN || &h[..4] != MAGIC || h[4] != FORMAT {
            return Err(corrupt("a chunk header has a bad magic or format"));
        }
        let version = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
        let chain = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
        if len > CHUNK_SIZE_MAX {
            return Err(corrupt("a chunk header states a length past the largest chunk"));
        }
        let mut recent = [(0, 0); RECENT];
        for (i, slot) in recent.iter_mut().enumerate() {
            let at = 32 + 16 * i;
            *slot = (
                u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes")),
                u64::from_le_bytes(h[at + 8..at + 16].try_into().expect("8 bytes")),
            );
        }
        Ok(ChunkMeta {
            version,
            len,
            chain,
            recent,
        })
    }

    /// Whether the update `by` was applied to this chunk lately.
    pub fn applied(&self, by: UpdateKey) -> bool {
        by != (0, 0) && self.recent.contains(&by)
    }

    fn with(mut self, by: Option<UpdateKey>) -> ChunkMeta {
        if let Some(by) = by.filter(|b| !self.applied(*b) && *b != (0, 0)) {
            self.recent.rotate_left(1);
            self.recent[RECENT - 1] = by;
        }
        self
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn einval(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// The checksum of a zero-filled block.
fn zero_block_crc() -> u32 {
    static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| crc32c::crc32c(&[0u8; BLOCK_SIZE as usize]))
}

fn exists_ok(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn not_found_ok<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bytes the engine handed to the operating system, by kind (to measure
/// write amplification).
#[derive(Debug, Default)]
pub struct Written {
    /// Chunk bytes.
    pub data: std::sync::atomic::AtomicU64,
    /// Header and checksum bytes.
    pub meta: std::sync::atomic::AtomicU64,
}

/// See the module docs.
#[derive(Debug)]
pub struct ChunkEngine {
    root: PathBuf,
    written: Written,
    /// Reads of a chunk exclude changes of it (a read must not see a
    /// block whose checksum is not yet written): striped by chunk.
    stripes: Vec<RwLock<()>>,
    files: Mutex<FileCache>,
}

/// Lock stripes of an engine.
const STRIPES: usize = 64;

/// A chunk's two files.
#[derive(Debug)]
struct ChunkFiles {
    data: File,
    meta: File,
}

struct Open {
    files: Arc<ChunkFiles>,
    header: ChunkMeta,
}

/// The files of recently used chunks, kept open so a call on a chunk
/// costs no path walk, `open` or `close`: at most `cap` chunks, the one
/// to close chosen by the clock algorithm: a chunk used again since it
/// was opened or the hand last passed it is passed over once.
///
/// Every change of a chunk's files happens in place through these very
/// descriptors, except [`ChunkEngine::remove`], which forgets the chunk
/// under its stripe's write lock before unlinking, so a kept descriptor
/// never outlives its file's name.
#[derive(Debug)]
struct FileCache {
    cap: usize,
    slots: Vec<(ChunkId, Arc<ChunkFiles>, bool)>,
    index: HashMap<ChunkId, usize>,
    hand: usize,
}

impl FileCache {
    fn new(cap: usize) -> FileCache {
        FileCache {
            cap,
            slots: Vec::new(),
            index: HashMap::new(),
            hand: 0,
        }
    }

    fn get(&mut self, id: ChunkId) -> Option<Arc<ChunkFiles>> {
        let &i = self.index.get(&id)?;
        let slot = &mut self.slots[i];
        slot.2 = true;
        Some(slot.1.clone())
    }

    fn put(&mut self, id: ChunkId, files: Arc<ChunkFiles>) {
        if self.cap == 0 {
            return;
        }
        if let Some(&i) = self.index.get(&id) {
            self.slots[i] = (id, files, false);
            return;
        }
        if self.slots.len() < self.cap {
            self.index.insert(id, self.slots.len());
            self.slots.push((id, files, false));
            return;
        }
        while self.slots[self.hand].2 {
            self.slots[self.hand].2 = false;
            self.hand = (self.hand + 1) % self.slots.len();
        }
        let old = self.slots[self.hand].0;
        self.index.remove(&old);
        self.slots[self.hand] = (id, files, false);
        self.index.insert(id, self.hand);
        self.hand = (self.hand + 1) % self.slots.len();
    }

    fn forget(&mut self, id: ChunkId) {
        let Some(i) = self.index.remove(&id) else {
            return;
        };
        self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.0, i);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }
}

impl ChunkEngine {
    /// The engine of the target in directory `dir` (its chunks in
    /// `dir/chunks`, created private if missing), keeping the files of up
    /// to `open_chunks` chunks open (two descriptors each).
    pub fn open(dir: &Path, open_chunks: usize) -> io::Result<ChunkEngine> {
        let root = dir.join("chunks");
        private_state::ensure_dir(&root)?;
        Ok(ChunkEngine {
            root,
            written: Written::default(),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            files: Mutex::new(FileCache::new(open_chunks)),
        })
    }

    /// Chunks whose files are kept open now.
    pub fn open_chunks(&self) -> usize {
        self.file_cache().len()
    }

    fn file_cache(&self) -> MutexGuard<'_, FileCache> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the engine has written so far.
    pub fn written(&self) -> &Written {
        &self.written
    }

    fn stripe(&self, id: ChunkId) -> usize {
        (id.layout.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
            as usize
            % STRIPES
    }

    fn reading(&self, id: ChunkId) -> RwLockReadGuard<'_, ()> {
        self.stripes[self.stripe(id)]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn changing(&self, id: ChunkId) -> RwLockWriteGuard<'_, ()> {
        self.stripes[self.stripe(id)]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn layout_dir(&self, layout: u64) -> PathBuf {
        self.root
            .join(format!("{:02x}", layout & 0xff))
            .join(format!("{layout:016x}"))
    }

    fn paths(&self, id: ChunkId) -> (PathBuf, PathBuf) {
        let dir = self.layout_dir(id.layout);
        (
            dir.join(id.index.to_string()),
            dir.join(format!("{}.m", id.index)),
        )
    }

    /// The chunk's files and header (with `create`, made if missing; else
    /// `None` if missing). Call with its stripe locked.
    fn open_chunk(&self, id: ChunkId, create: bool) -> io::Result<Option<Open>> {
        let kept = self.file_cache().get(id);
        let files = match kept {
            Some(files) => files,
            None => {
                let Some(files) = self.open_files(id, create)? else {
                    return Ok(None);
                };
                let files = Arc::new(files);
                self.file_cache().put(id, files.clone());
                files
            }
        };
        let mut h = [0u8; HEADER_LEN];
        let n = files.meta.read_at(&mut h, 0)?;
        let header = if n == 0 {
            ChunkMeta::default()
        } else if n < HEADER_LEN {
            return Err(corrupt("a chunk header is cut short"));
        } else {
            ChunkMeta::decode(&h)?
        };
        Ok(Some(Open { files, header }))
    }

    fn open_files(&self, id: ChunkId, create: bool) -> io::Result<Option<ChunkFiles>> {
        let (data_path, meta_path) = self.paths(id);
        let opts = |create: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(create).mode(FILE_MODE);
            o
        };
        let meta = match not_found_ok(opts(false).open(&meta_path))? {
            Some(m) => m,
            None if !create => return Ok(None),
            None => {
                let dir = self.layout_dir(id.layout);
                let group = dir.parent().expect("a layout dir has a parent");
                if exists_ok(private_state::create_dir(group).or_else(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        fs::create_dir_all(group)
                    } else {
                        Err(e)
                    }
                }))? {
                    private_state::sync_dir(&self.root)?;
                }
                exists_ok(private_state::create_dir(&dir))?;
                opts(true).open(&meta_path)?
            }
        };
        let data = opts(true).open(&data_path)?;
        Ok(Some(ChunkFiles { data, meta }))
    }

    /// A chunk's header (version 0 and length 0 if it does not exist).
    pub fn meta(&self, id: ChunkId) -> io::Result<ChunkMeta> {
        let _r = self.reading(id);
        self.meta_unlocked(id)
    }

    fn meta_unlocked(&self, id: ChunkId) -> io::Result<ChunkMeta> {
        Ok(self.open_chunk(id, false)?.map(|o| o.header).unwrap_or_default())
    }

    fn crcs(meta: &File, first: u32, count: u32) -> io::Result<Vec<u32>> {
        let mut buf = vec![0u8; count as usize * 4];
        let n = meta.read_at(&mut buf, HEADER_LEN as u64 + u64::from(first) * 4)?;
        if n < buf.len() {
            return Err(corrupt("a chunk's checksums are cut short"));
        }
        Ok(buf
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    /// Reads `buf.len()` bytes at `offset` of the chunk, checking every
    /// block touched; bytes past the chunk's length are not read. Returns
    /// the bytes read (0 past the end) and the chunk's header.
    pub fn read(&self, id: ChunkId, offset: u32, buf: &mut [u8]) -> io::Result<(usize, ChunkMeta)> {
        let _r = self.reading(id);
        self.read_unlocked(id, offset, buf)
    }

    fn read_unlocked(&self, id: ChunkId, offset: u32, buf: &mut [u8]) -> io::Result<(usize, ChunkMeta)> {
        let (bytes, meta) = self.read_vec_unlocked(id, offset, buf.len())?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok((bytes.len(), meta))
    }

    /// Up to `len` bytes at `offset` (fewer past the chunk's end), every
    /// block they touch checked, in a buffer of their own: for a read
    /// that starts on a block, the very buffer the blocks were read into.
    pub fn read_vec(&self, id: ChunkId, offset: u32, len: usize) -> io::Result<(Vec<u8>, ChunkMeta)> {
        let _r = self.reading(id);
        self.read_vec_unlocked(id, offset, len)
    }

    fn read_vec_unlocked(&self, id: ChunkId, offset: u32, len: usize) -> io::Result<(Vec<u8>, ChunkMeta)> {
        let Some(open) = self.open_chunk(id, false)? else {
            return Ok((Vec::new(), ChunkMeta::default()));
        };
        let size = open.header.len;
        if offset >= size || len == 0 {
            return Ok((Vec::new(), open.header));
        }
        let end = (u64::from(offset) + len as u64).min(u64::from(size)) as u32;
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let crcs = Self::crcs(&open.files.meta, first, last - first + 1)?;
        let start = first * BLOCK_SIZE;
        let stop = ((last + 1) * BLOCK_SIZE).min(size);
        let want = (stop - start) as usize;
        // Read into spare capacity: no zeroing of what the read fills.
        let mut blocks = Vec::with_capacity(want);
        while blocks.len() < want {
            let at = u64::from(start) + blocks.len() as u64;
            let n = rustix::io::pread(&open.files.data, rustix::buffer::spare_capacity(&mut blocks), at)?;
            if n == 0 {
                // Past the data file's end but inside the length: a hole
                // at the end (zeros), as written by an extending truncate.
                blocks.resize(want, 0);
                break;
            }
        }
        // The spare capacity may be larger than asked for: a read may have
        // run past the blocks, which the checksums below do not cover.
        blocks.truncate(want);
        for (i, crc) in crcs.iter().enumerate() {
            let b = i * BLOCK_SIZE as usize;
            let e = (b + BLOCK_SIZE as usize).min(blocks.len());
            if crc32c::crc32c(&blocks[b..e]) != *crc {
                tracing::error!(
                    "chunk {id}: block {} fails its checksum (version {})",
                    first as usize + i,
                    open.header.version
                );
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk {id}: block {} fails its checksum", first as usize + i),
                ));
            }
        }
        let from = (offset - start) as usize;
        let n = (end - offset) as usize;
        blocks.truncate(from + n);
        if from > 0 {
            blocks.drain(..from);
        }
        Ok((blocks, open.header))
    }

    /// Reads the whole chunk (for syncing a replica).
    pub fn read_all(&self, id: ChunkId) -> io::Result<(Vec<u8>, ChunkMeta)> {
        let _r = self.reading(id);
        let header = self.meta_unlocked(id)?;
        self.read_vec_unlocked(id, 0, header.len as usize)
    }

    fn put_header_and_crcs(
        &self,
        open: &Open,
        header: ChunkMeta,
        first: u32,
        crcs: &[u32],
    ) -> io::Result<()> {
        let mut tail = Vec::with_capacity(crcs.len() * 4);
        for c in crcs {
            tail.extend_from_slice(&c.to_le_bytes());
        }
        // The checksums, then the header that makes them count: two small
        // writes, usually into one page.
        if !tail.is_empty() {
            open.files
                .meta
                .write_all_at(&tail, HEADER_LEN as u64 + u64::from(first) * 4)?;
        }
        open.files.meta.write_all_at(&header.encode(), 0)?;
        self.count_meta(tail.len() + HEADER_LEN);
        Ok(())
    }

    fn count_meta(&self, n: usize) {
        self.written
            .meta
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The new checksums of `blocks` of a chunk grown or cut from
    /// `old_len` to `len`, `written` (offset, bytes) just written: whole
    /// blocks of zeros past the old end need no read, blocks wholly
    /// written are summed from the bytes at hand, the rest are read back.
    fn changed_crcs(
        open: &Open,
        old_len: u32,
        len: u32,
        blocks: std::ops::RangeInclusive<u32>,
        written: Option<(u32, &[u8])>,
    ) -> io::Result<Vec<u32>> {
        let mut crcs = Vec::with_capacity(blocks.clone().count());
        for b in blocks {
            let start = b * BLOCK_SIZE;
            let end = (start + BLOCK_SIZE).min(len);
            let (w_start, w_end) = written.map_or((0, 0), |(o, d)| (o, o + d.len() as u32));
            let touched = start < w_end && end > w_start;
            if start >= old_len && end - start == BLOCK_SIZE && !touched {
                crcs.push(zero_block_crc());
            } else if let Some((o, d)) = written.filter(|_| start >= w_start && end <= w_end) {
                let from = (start - o) as usize;
                crcs.push(crc32c::crc32c(&d[from..from + (end - start) as usize]));
            } else {
                crcs.extend(Self::block_crcs(open, len, b, b)?);
            }
        }
        Ok(crcs)
    }

    /// The checksums of blocks `first..=last` of the data as it is now in
    /// the file (blocks past `len` absent).
    fn block_crcs(open: &Open, len: u32, first: u32, last: u32) -> io::Result<Vec<u32>> {
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        for b in first..=last {
            let start = b * BLOCK_SIZE;
            let n = (len - start).min(BLOCK_SIZE) as usize;
            let mut got = 0;
            while got < n {
                let r = open
                    .files
                    .data
                    .read_at(&mut block[got..n], u64::from(start) + got as u64)?;
                if r == 0 {
                    break;
                }
                got += r;
            }
            block[got..n].fill(0);
            out.push(crc32c::crc32c(&block[..n]));
        }
        Ok(out)
    }

    /// Writes `data` at `offset` of the chunk and makes `version` its
    /// committed version; with `sync`, durable before returning.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        id: ChunkId,
        chain: u32,
        version: u64,
        offset: u32,
        data: &[u8],
        sync: bool,
        by: Option<UpdateKey>,
    ) -> io::Result<ChunkMeta> {
        let _w = self.changing(id);
        self.write_unlocked(id, chain, version, offset, data, sync, by)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_unlocked(
        &self,
        id: ChunkId,
        chain: u32,
        version: u64,
        offset: u32,
        data: &[u8],
        sync: bool,
        by: Option<UpdateKey>,
    ) -> io::Result<ChunkMeta> {
        let end = u64::from(offset) + data.len() as u64;
        if end > u64::from(CHUNK_SIZE_MAX) {
            return Err(einval("a write past the largest chunk"));
        }
        let end = end as u32;
        let open = self.open_chunk(id, true)?.expect("created");
        let old = open.header;
        open.files.data.write_all_at(data, u64::from(offset))?;
        self.written
            .data
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let len = old.len.max(end);
        let header = ChunkMeta {
            version,
            len,
            chain,
            recent: old.recent,
        }
        .with(by);
        // Blocks whose checksum changes: those written, the old last block
        // if the write starts past it (it gains zeros), and the zero
        // blocks between.
        let (first, last) = if data.is_empty() {
            (0, 0)
        } else {
            let from = if offset > old.len { old.len } else { offset };
            (from / BLOCK_SIZE, (end - 1) / BLOCK_SIZE)
        };
        let crcs = if data.is_empty() {
            Vec::new()
        } else {
            Self::changed_crcs(&open, old.len, len, first..=last, Some((offset, data)))?
        };
        self.put_header_and_crcs(&open, header, first, &crcs)?;
        if sync {
            open.files.data.sync_data()?;
            open.files.meta.sync_data()?;
        }
        Ok(header)
    }

    /// Replaces the whole chunk with `data` at `version` (syncing a
    /// replica).
    pub fn replace(
        &self,
        id: ChunkId,
        chain: u32,
        version: u64,
        data: &[u8],
        sync: bool,
        recent: &[UpdateKey],
    ) -> io::Result<ChunkMeta> {
        let _w = self.changing(id);
        self.truncate_unlocked(id, chain, version, 0, false, None)?;
        let mut header = self.write_unlocked(id, chain, version, 0, data, false, None)?;
        // The copy remembers what its source did.
        header.recent = [(0, 0); RECENT];
        let keep = recent.len().min(RECENT);
        header.recent[RECENT - keep..].copy_from_slice(&recent[recent.len() - keep..]);
        let open = self
            .open_chunk(id, false)?
            .ok_or_else(|| io::Error::other("chunk vanished"))?;
        self.put_header_and_crcs(&open, header, 0, &[])?;
        if sync {
            open.files.data.sync_data()?;
            open.files.meta.sync_data()?;
        }
        Ok(header)
    }

    /// Cuts or extends the chunk to `len` (zeros) at `version`.
    pub fn truncate(
        &self,
        id: ChunkId,
        chain: u32,
        version: u64,
        len: u32,
        sync: bool,
        by: Option<UpdateKey>,
    ) -> io::Result<ChunkMeta> {
        let _w = self.changing(id);
        self.truncate_unlocked(id, chain, version, len, sync, by)
    }

    fn truncate_unlocked(
        &self,
        id: ChunkId,
        chain: u32,
        version: u64,
        len: u32,
        sync: bool,
        by: Option<UpdateKey>,
    ) -> io::Result<ChunkMeta> {
        if len > CHUNK_SIZE_MAX {
            return Err(einval("a truncate past the largest chunk"));
        }
        let open = self.open_chunk(id, true)?.expect("created");
        let old = open.header;
        open.files.data.set_len(u64::from(len))?;
        let header = ChunkMeta {
            version,
            len,
            chain,
            recent: old.recent,
        }
        .with(by);
        // Blocks whose checksum changes: from the one holding the shorter
        // length's end (partial, or the first new one) to the new last.
        let first = old.len.min(len) / BLOCK_SIZE;
        let crcs = if len == 0 || first > (len - 1) / BLOCK_SIZE {
            Vec::new()
        } else {
            Self::changed_crcs(&open, old.len, len, first..=(len - 1) / BLOCK_SIZE, None)?
        };
        self.put_header_and_crcs(&open, header, first, &crcs)?;
        if len < old.len {
            // Checksums past the end are dead; keep the .m file short.
            open.files
                .meta
                .set_len(HEADER_LEN as u64 + u64::from(len.div_ceil(BLOCK_SIZE)) * 4)?;
        }
        if sync {
            open.files.data.sync_data()?;
            open.files.meta.sync_data()?;
        }
        Ok(header)
    }

    /// Removes a chunk.
    pub fn remove(&self, id: ChunkId) -> io::Result<()> {
        let _w = self.changing(id);
        self.file_cache().forget(id);
        let (data, meta) = self.paths(id);
        // The header goes first: a chunk is there while its `.m` is.
        not_found_ok(fs::remove_file(meta))?;
        not_found_ok(fs::remove_file(data))?;
        Ok(())
    }

    /// The chunks this target has of `layout`, by index, with headers.
    pub fn chunks_of(&self, layout: u64) -> io::Result<Vec<(u64, ChunkMeta)>> {
        let dir = self.layout_dir(layout);
        let Some(entries) = not_found_ok(fs::read_dir(&dir))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".m"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let id = ChunkId { layout, index };
            let meta = self.meta(id)?;
            if meta.version > 0 {
                out.push((index, meta));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// Every layout this target has chunks of.
    pub fn layouts(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for group in fs::read_dir(&self.root)? {
            let group = group?;
            if !group.file_type()?.is_dir() {
                continue;
            }
            for layout in fs::read_dir(group.path())? {
                let name = layout?.file_name();
                if let Some(l) = name
                    .to_str()
                    .filter(|n| n.len() == 16)
                    .and_then(|n| u64::from_str_radix(n, 16).ok())
                {
                    out.push(l);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Up to `limit` chunks of `chain` after `after`, in (layout, index)
    /// order, with their versions.
    pub fn chain_chunks(
        &self,
        chain: u32,
        after: Option<ChunkId>,
        limit: usize,
    ) -> io::Result<Vec<(ChunkId, u64)>> {
        let mut out = Vec::new();
        for layout in self.layouts()? {
            if after.is_some_and(|a| layout < a.layout) {
                continue;
            }
            for (index, meta) in self.chunks_of(layout)? {
                let id = ChunkId { layout, index };
                if meta.chain != chain || after.is_some_and(|a| id <= a) {
                    continue;
                }
                out.push((id, meta.version));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Removes the layout's directory once it has no chunks left.
    pub fn remove_layout_dir(&self, layout: u64) -> io::Result<()> {
        match fs::remove_dir(self.layout_dir(layout)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// fsyncs the chunks of `layout` and its directory.
    pub fn sync(&self, layout: u64) -> io::Result<()> {
        for (index, _) in self.chunks_of(layout)? {
            let id = ChunkId { layout, index };
            let _r = self.reading(id);
            if let Some(open) = self.open_chunk(id, false)? {
                open.files.data.sync_data()?;
                open.files.meta.sync_data()?;
            }
        }
        let dir = self.layout_dir(layout);
        if dir.exists() {
            private_state::sync_dir(&dir)?;
            private_state::sync_dir(dir.parent().expect("a layout dir has a parent"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ChunkId = ChunkId { layout: 7, index: 3 };

    fn engine() -> (tempfile::TempDir, ChunkEngine) {
        // On a disk, not tmpfs: the amplification test needs a filesystem
        // whose dirtied pages the kernel counts.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let e = ChunkEngine::open(dir.path(), 2).unwrap();
        (dir, e)
    }

    fn read(e: &ChunkEngine, offset: u32, len: usize) -> Vec<u8> {
        let mut buf = vec![0xAA; len];
        let (n, _) = e.read(ID, offset, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn files_of(dir: &Path) -> ChunkFiles {
        let open = |n: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(n))
                .unwrap()
        };
        ChunkFiles {
            data: open("d"),
            meta: open("m"),
        }
    }

    #[test]
    fn the_file_cache_closes_a_chunk_not_used_again_first() {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(files_of(dir.path()));
        let id = |index| ChunkId { layout: 1, index };
        let mut c = FileCache::new(3);
        for i in 0..3 {
            c.put(id(i), files.clone());
        }
        assert!(c.get(id(0)).is_some());
        // 0 was used again: the hand passes it over and closes 1.
        c.put(id(3), files.clone());
        assert_eq!(c.len(), 3);
        assert!(c.get(id(1)).is_none());
        for i in [0, 2, 3] {
            assert!(c.get(id(i)).is_some(), "chunk {i}");
        }
        // Forgetting one keeps the others found.
        c.forget(id(0));
        c.forget(id(7));
        assert!(c.get(id(0)).is_none());
        assert!(c.get(id(2)).is_some() && c.get(id(3)).is_some());
        c.put(id(4), files.clone());
        c.put(id(5), files.clone());
        assert_eq!(c.len(), 3);
        assert_eq!(Arc::strong_count(&files), 4);
        let mut none = FileCache::new(0);
        none.put(id(0), files);
        assert!(none.get(id(0)).is_none());
    }

    #[test]
    fn a_removed_chunk_is_not_read_through_files_kept_open() {
        let (d, e) = engine();
        e.write(ID, 1, 1, 0, b"old bytes", false, None).unwrap();
        assert_eq!(read(&e, 0, 9), b"old bytes");
        assert_eq!(e.open_chunks(), 1);
        e.remove(ID).unwrap();
        assert_eq!(e.open_chunks(), 0);
        assert_eq!(e.meta(ID).unwrap(), ChunkMeta::default());
        assert_eq!(read(&e, 0, 9), b"");
        // Written again: into new files, found under the chunk's name.
        e.write(ID, 1, 1, 0, b"new", false, None).unwrap();
        let (data, _) = e.paths(ID);
        assert_eq!(std::fs::read(data).unwrap(), b"new");
        // More chunks than kept: the others still read and write right.
        for index in 0..5 {
            let id = ChunkId { layout: 8, index };
            e.write(id, 1, 1, 0, &[index as u8; 100], false, None).unwrap();
        }
        for index in 0..5 {
            let id = ChunkId { layout: 8, index };
            let (bytes, meta) = e.read_vec(id, 0, 100).unwrap();
            assert_eq!((bytes, meta.version), (vec![index as u8; 100], 1));
        }
        assert_eq!(e.open_chunks(), 2);
        drop(d);
    }

    #[test]
    fn unaligned_writes_holes_and_versions_read_back() {
        let (_d, e) = engine();
        assert_eq!(e.meta(ID).unwrap(), ChunkMeta::default());
        assert_eq!(read(&e, 0, 10), b"");
        // Past the start: the gap reads as zeros.
        e.write(ID, 9, 1, 10_000, b"hello", false, None).unwrap();
        let m = e.meta(ID).unwrap();
        assert_eq!((m.version, m.len, m.chain), (1, 10_005, 9));
        let all = read(&e, 0, 20_000);
        assert_eq!(all.len(), 10_005);
        assert!(all[..10_000].iter().all(|&b| b == 0));
        assert_eq!(&all[10_000..], b"hello");
        // Across a block boundary, inside the chunk.
        e.write(ID, 9, 2, 4090, &[7u8; 20], false, None).unwrap();
        assert_eq!(
            read(&e, 4088, 24),
            [&[0u8, 0][..], &[7u8; 20][..], &[0u8, 0][..]].concat()
        );
        // Extending from inside the last partial block.
        e.write(ID, 9, 3, 10_003, b"XYZW", false, None).unwrap();
        assert_eq!(read(&e, 10_000, 100), b"helXYZW");
        assert_eq!(e.meta(ID).unwrap().version, 3);
        // Every block still passes its check.
        assert_eq!(e.read_all(ID).unwrap().0.len(), 10_007);
    }

    #[test]
    fn truncate_cuts_and_extends_with_zeros() {
        let (_d, e) = engine();
        e.write(ID, 1, 1, 0, &[5u8; 9000], false, None).unwrap();
        e.truncate(ID, 1, 2, 5000, false, None).unwrap();
        assert_eq!(read(&e, 0, 10_000), vec![5u8; 5000]);
        e.truncate(ID, 1, 3, 12_000, false, None).unwrap();
        let all = read(&e, 0, 20_000);
        assert_eq!(all.len(), 12_000);
        assert_eq!(&all[..5000], &[5u8; 5000][..]);
        assert!(all[5000..].iter().all(|&b| b == 0));
        e.truncate(ID, 1, 4, 4096, false, None).unwrap();
        assert_eq!(read(&e, 0, 10_000), vec![5u8; 4096]);
        e.truncate(ID, 1, 5, 0, false, None).unwrap();
        assert_eq!(read(&e, 0, 10), b"");
        assert_eq!(e.meta(ID).unwrap().version, 5);
        e.replace(ID, 1, 6, b"new", false, &[]).unwrap();
        assert_eq!(read(&e, 0, 10), b"new");
        e.remove(ID).unwrap();
        assert_eq!(e.meta(ID).unwrap(), ChunkMeta::default());
    }

    #[test]
    fn a_damaged_block_reads_as_an_error_and_the_others_still_read() {
        let (dir, e) = engine();
        e.write(ID, 1, 1, 0, &[1u8; 3 * 4096], false, None).unwrap();
        let data = dir.path().join("chunks/07/0000000000000007/3");
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(&[2u8], 5000).unwrap();
        let mut buf = vec![0u8; 100];
        let err = e.read(ID, 4096, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(e.read(ID, 0, &mut buf).is_ok());
        assert!(e.read(ID, 8192, &mut buf).is_ok());
        // A header that is not one.
        let meta = dir.path().join("chunks/07/0000000000000007/3.m");
        OpenOptions::new()
            .write(true)
            .open(&meta)
            .unwrap()
            .write_all_at(b"JUNK", 0)
            .unwrap();
        assert!(e.read(ID, 0, &mut buf).is_err());
    }

    #[test]
    fn chains_and_layouts_are_listed() {
        let (_d, e) = engine();
        for index in 0..4 {
            e.write(
                ChunkId { layout: 7, index },
                (index % 2) as u32,
                1,
                0,
                b"x",
                false,
                None,
            )
            .unwrap();
        }
        e.write(
            ChunkId {
                layout: 300,
                index: 0,
            },
            1,
            1,
            0,
            b"x",
            false,
            None,
        )
        .unwrap();
        assert_eq!(e.layouts().unwrap(), vec![7, 300]);
        assert_eq!(e.chunks_of(7).unwrap().len(), 4);
        let one: Vec<_> = e
            .chain_chunks(1, None, 100)
            .unwrap()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(
            one,
            vec![
                ChunkId { layout: 7, index: 1 },
                ChunkId { layout: 7, index: 3 },
                ChunkId {
                    layout: 300,
                    index: 0
                }
            ]
        );
        let page = e.chain_chunks(1, Some(one[0]), 1).unwrap();
        assert_eq!(page[0].0, one[1]);
    }

    #[test]
    fn small_random_writes_hand_the_os_little_more_than_their_bytes() {
        let (_d, e) = engine();
        const CHUNK: u32 = 1 << 20;
        e.write(ID, 1, 1, 0, &vec![1u8; CHUNK as usize], false, None)
            .unwrap();
        let data_before = e.written().data.load(std::sync::atomic::Ordering::Relaxed);
        let meta_before = e.written().meta.load(std::sync::atomic::Ordering::Relaxed);
        // 64 writes of 4 KiB at scattered blocks (a fixed permutation).
        let blocks = CHUNK / BLOCK_SIZE;
        for i in 0..64u32 {
            let block = (i * 97 + 13) % blocks;
            e.write(
                ID,
                1,
                2 + u64::from(i),
                block * BLOCK_SIZE,
                &[i as u8; 4096],
                false,
                Some((7, u64::from(i) + 1)),
            )
            .unwrap();
        }
        let data = e.written().data.load(std::sync::atomic::Ordering::Relaxed) - data_before;
        let meta = e.written().meta.load(std::sync::atomic::Ordering::Relaxed) - meta_before;
        assert_eq!(data, 64 * 4096);
        // A checksum and a header per write: never a block, let alone the
        // chunk.
        assert_eq!(meta, 64 * (4 + HEADER_LEN as u64));
        // Who made each is remembered, up to RECENT of them.
        let header = e.meta(ID).unwrap();
        assert!(!header.applied((7, 1)), "forgotten: older than RECENT");
        assert!(header.applied((7, 64)) && header.applied((7, 49)));
        assert!(!header.applied((7, 48)) && !header.applied((8, 64)));
    }
}
