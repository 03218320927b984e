//! [`ClusterData`]: a mount's file data in the storage cluster.
//!
//! A file's layout (its chains) is fetched from the metadata service once
//! and kept; the chain table is fetched at start and again whenever a
//! target answers `ESTALE` or cannot be reached. Each chunk's piece of a
//! read or write goes to its chain: writes to the head, numbered (client
//! id, sequence) so a retry is recognized; reads to a serving member
//! chosen for load (see [`ClusterData::readers_in_order`]; a failing
//! member is skipped for the next).
//! Retries back off and end at [`RETRY_FOR`] with `EIO`.
//!
//! Zeroing a range (fallocate's punch-hole and zero-range) lists the
//! file's chunks on each of its chains (at the head, which has applied
//! every update this client was answered for) and sends each chunk in the
//! range one ordinary update through its chain's head, so the chain
//! orders it with the chunk's other updates and every replica applies the
//! same: a chunk wholly inside is cut to nothing (never removed: it may be
//! written again, see [`super`]), an edge chunk is cut where the range
//! reaches its end, or else has zeros written over the part inside.
//! `SEEK_DATA`/`SEEK_HOLE` use the same listing: a chunk with bytes is data.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::engine::ChunkId;
use super::target::READ_MAX;
use super::transport::{self, DataTransport};
use super::{ChunkOp, StorageReply, StorageRequest, UpdateId};
use crate::cluster::client::ClusterClient;
use crate::cluster::{ClusterAnswer, ClusterCall, LayoutRec, Table};
use crate::data::FileData;
use crate::meta::schema::InodeRec;
use crate::meta::{MetaError, Reclaim};
use crate::rpc::client::CallError;

/// How long one piece is retried (the time for management to take a dead
/// target out, and then some).
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Time for one call to a target.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Layouts kept (cleared when full).
const LAYOUTS_MAX: usize = 1 << 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `n` zero bytes to `out`.
fn write_zeros(out: &mut dyn io::Write, mut n: usize) -> io::Result<()> {
    const ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len());
        out.write_all(&ZEROS[..k])?;
        n -= k;
    }
    Ok(())
}

fn meta_err(e: MetaError) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// Reads a mount keeps in flight at one member before it reads from
/// another (see [`ClusterData::readers_in_order`]).
const SPILL_AT: usize = 4;

/// A score of target `target` for client `client`: each client ranks the
/// targets in an order of its own (splitmix64's finalizer over both).
fn rendezvous(client: u64, target: u32) -> u64 {
    let mut z = client ^ u64::from(target).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `readers` in the order client `client` reads from them, `load` giving
/// its reads in flight at each (see [`ClusterData::readers_in_order`]).
fn order_readers(client: u64, readers: impl Iterator<Item = u32>, load: impl Fn(u32) -> usize) -> Vec<u32> {
    let mut order: Vec<u32> = readers.collect();
    order.sort_by_key(|t| std::cmp::Reverse(rendezvous(client, *t)));
    let first = order
        .iter()
        .position(|t| load(*t) < SPILL_AT)
        .or_else(|| (0..order.len()).min_by_key(|&i| load(order[i])));
    if let Some(i) = first {
        order[..=i].rotate_right(1);
    }
    order
}

/// A read in flight at a target, counted while it lives.
struct Reading<'a> {
    counts: &'a Mutex<HashMap<u32, usize>>,
    target: u32,
}

impl<'a> Reading<'a> {
    fn start(counts: &'a Mutex<HashMap<u32, usize>>, target: u32) -> Reading<'a> {
        *lock(counts).entry(target).or_default() += 1;
        Reading { counts, target }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut counts = lock(self.counts);
        if let Some(n) = counts.get_mut(&self.target) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.target);
            }
        }
    }
}

/// See the module docs.
pub struct ClusterData {
    meta: ClusterClient,
    transport: Arc<dyn DataTransport>,
    table: RwLock<Arc<Table>>,
    layouts: Mutex<HashMap<u64, Arc<LayoutRec>>>,
    client: u64,
    seq: AtomicU64,
    sync_writes: bool,
    /// Reads in flight, by target.
    reading: Mutex<HashMap<u32, usize>>,
}

impl std::fmt::Debug for ClusterData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterData")
            .field("client", &self.client)
            .field("sync_writes", &self.sync_writes)
            .finish_non_exhaustive()
    }
}

/// What to do after a failed attempt.
enum Next {
    /// Fetch the table, then again.
    Refresh,
    /// Again after a pause.
    Again,
}

fn classify(e: &CallError) -> Result<Next, io::Error> {
    match e {
        CallError::Remote(libc::ESTALE) => Ok(Next::Refresh),
        CallError::Remote(libc::EAGAIN) => Ok(Next::Again),
        CallError::Remote(errno) => Err(io::Error::from_raw_os_error(*errno)),
        CallError::NotSent(_) | CallError::Lost(_) => Ok(Next::Refresh),
    }
}

impl ClusterData {
    /// The data of metadata client `client` (its id numbers its updates),
    /// through `meta` and `transport`; with `sync_writes`, a write is
    /// durable on every replica before it returns.
    pub fn new(
        meta: ClusterClient,
        transport: Arc<dyn DataTransport>,
        client: u64,
        sync_writes: bool,
    ) -> Result<ClusterData, MetaError> {
        let table = meta.table()?;
        Ok(ClusterData {
            meta,
            transport,
            table: RwLock::new(Arc::new(table)),
            layouts: Mutex::new(HashMap::new()),
            client,
            seq: AtomicU64::new(1),
            sync_writes,
            reading: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the cluster has storage targets.
    pub fn has_targets(&self) -> bool {
        !self.table().targets.is_empty()
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refresh(&self) {
        match self.meta.table() {
            Ok(t) => *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t),
            Err(e) => tracing::warn!("fetching the chain table: {e}"),
        }
    }

    /// The file's layout, made now if it has none (for writes). While
    /// every target is offline (`EAGAIN`) it is asked again, backing off,
    /// for up to [`RETRY_FOR`], as an update waits for a chain's members.
    fn layout(&self, ino: u64) -> io::Result<Arc<LayoutRec>> {
        if let Some(l) = lock(&self.layouts).get(&ino) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.meta.layout(ino) {
                Ok((_, layout)) => return Ok(self.keep(ino, layout)),
                Err(MetaError::Errno(libc::EAGAIN)) if Instant::now() < deadline => {
                    tracing::debug!("the layout of inode {ino}: no target is up; again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(MetaError::Errno(libc::EAGAIN)) => {
                    tracing::error!("the layout of inode {ino}: no target came up in {RETRY_FOR:?}");
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                Err(e) => return Err(meta_err(e)),
            }
        }
    }

    /// The file's layout if its data was ever written; reads, cuts and
    /// syncs of a file never written make none (and need no transaction).
    fn existing_layout(&self, ino: u64, layout_id: u64) -> io::Result<Option<Arc<LayoutRec>>> {
        if let Some(l) = lock(&self.layouts).get(&ino) {
            return Ok(Some(l.clone()));
        }
        match self
            .meta
            .call(&ClusterCall::GetLayout { layout: layout_id })
            .map_err(meta_err)?
        {
            ClusterAnswer::MaybeLayout(Some(l)) if !l.chains.is_empty() => Ok(Some(self.keep(ino, l))),
            ClusterAnswer::MaybeLayout(None) => Ok(None),
            other => Err(io::Error::other(format!("GetLayout answered {other:?}"))),
        }
    }

    fn keep(&self, ino: u64, layout: LayoutRec) -> Arc<LayoutRec> {
        let layout = Arc::new(layout);
        let mut layouts = lock(&self.layouts);
        if layouts.len() >= LAYOUTS_MAX {
            layouts.clear();
        }
        layouts.insert(ino, layout.clone());
        // New chains may have come with it.
        if layout.chains.iter().any(|c| self.table().chain(*c).is_none()) {
            drop(layouts);
            self.refresh();
        }
        layout
    }

    /// Runs `attempt` on the chain of `chain` until it succeeds, fails for
    /// good, or [`RETRY_FOR`] passes.
    fn with_retries<T>(
        &self,
        what: &str,
        chain: u32,
        mut attempt: impl FnMut(&Table, &crate::cluster::ChainRec, usize) -> Result<T, CallError>,
    ) -> io::Result<T> {
        use crate::metrics::counters::{self, Service};
        counters::call(Service::Storage);
        let deadline = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(5);
        let mut tries = 0;
        loop {
            let table = self.table();
            let result = match table.chain(chain) {
                Some(rec) => attempt(&table, rec, tries),
                None => Err(CallError::Remote(libc::ESTALE)),
            };
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let next = classify(&e)?;
            if Instant::now() >= deadline {
                counters::failure(Service::Storage);
                tracing::error!("{what} on chain {chain}: gave up after {tries} tries: {e}");
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            tracing::debug!("{what} on chain {chain}: {e}; again");
            counters::retry(Service::Storage);
            tries += 1;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
            if let Next::Refresh = next {
                self.refresh();
            }
        }
    }

    /// One update of one chunk, at its chain's head.
    fn update(&self, chain: u32, chunk: ChunkId, op: ChunkOp, data: &[u8]) -> io::Result<u64> {
        let id = UpdateId {
            client: self.client,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        self.with_retries("an update", chain, |table, rec, _| {
            let head = rec.head().ok_or(CallError::Remote(libc::EAGAIN))?;
            let addr = table.addr(head).ok_or(CallError::Remote(libc::ESTALE))?;
            let request = StorageRequest::Update {
                target: head,
                chain: rec.reference(),
                chunk,
                op,
                id,
                sync: self.sync_writes,
            };
            match transport::call(self.transport.as_ref(), addr, &request, data, CALL_TIMEOUT)? {
                (StorageReply::Done { version }, _) => Ok(version),
                (other, _) => Err(CallError::Lost(io::Error::other(format!(
                    "an update answered {other:?}"
                )))),
            }
        })
    }

    /// The serving members of a chain in the order this mount reads from
    /// them: the first has fewer than [`SPILL_AT`] of its reads in flight.
    ///
    /// Each mount prefers the same members in every chain (rendezvous
    /// hashing of its client id with the target's: the highest score
    /// first), so its reads keep to a few warm connections and page
    /// caches while different mounts spread over the replicas. A member
    /// with [`SPILL_AT`] or more of this mount's reads in flight yields to
    /// the next; with every member that busy, the least busy goes first.
    /// On one 2-CPU machine, reads spread over three storage processes
    /// in turn ran 0.8x as fast as reads kept to one (docs/BENCHMARKS.md).
    fn readers_in_order(&self, readers: impl Iterator<Item = u32>) -> Vec<u32> {
        let reading = lock(&self.reading);
        order_readers(self.client, readers, |t| reading.get(&t).copied().unwrap_or(0))
    }

    /// Reads a piece of one chunk from a serving member.
    /// Up to `len` bytes of `chunk` at `offset`, as the member sent them
    /// (fewer past the chunk's end).
    fn fetch_piece(&self, chain: u32, chunk: ChunkId, offset: u32, len: usize) -> io::Result<Vec<u8>> {
        let data = self.with_retries("a read", chain, |table, rec, tries| {
            let readers = self.readers_in_order(rec.readers());
            if readers.is_empty() {
                return Err(CallError::Remote(libc::EAGAIN));
            }
            let member = readers[tries % readers.len()];
            let _reading = Reading::start(&self.reading, member);
            let addr = table.addr(member).ok_or(CallError::Remote(libc::ESTALE))?;
            let request = StorageRequest::Read {
                target: member,
                chain: rec.reference(),
                chunk,
                offset,
                len: len as u32,
            };
            match transport::call(self.transport.as_ref(), addr, &request, &[], CALL_TIMEOUT) {
                Ok((StorageReply::Data { .. }, data)) => Ok(data),
                Ok((other, _)) => Err(CallError::Lost(io::Error::other(format!(
                    "a read answered {other:?}"
                )))),
                // A member that fails a checksum: another may not.
                Err(CallError::Remote(libc::EIO)) if tries + 1 < readers.len() => {
                    Err(CallError::Remote(libc::EAGAIN))
                }
                Err(e) => Err(e),
            }
        })?;
        let mut data = data;
        data.truncate(len);
        Ok(data)
    }

    /// The chunks of `layout` on `chain` (index, length).
    fn list(&self, chain: u32, layout: u64) -> io::Result<Vec<(u64, u32)>> {
        self.with_retries("a listing", chain, |table, rec, _| {
            let head = rec.head().ok_or(CallError::Remote(libc::EAGAIN))?;
            let addr = table.addr(head).ok_or(CallError::Remote(libc::ESTALE))?;
            let request = StorageRequest::List {
                target: head,
                chain: rec.reference(),
                layout,
            };
            match transport::call(self.transport.as_ref(), addr, &request, &[], CALL_TIMEOUT)? {
                (StorageReply::Chunks(c), _) => Ok(c.into_iter().map(|(i, _, len)| (i, len)).collect()),
                (other, _) => Err(CallError::Lost(io::Error::other(format!(
                    "a listing answered {other:?}"
                )))),
            }
        })
    }

    /// Removes every chunk of a layout from its chains.
    pub fn remove_chunks(&self, layout_id: u64, layout: &LayoutRec) -> io::Result<()> {
        self.cut_layout(layout_id, layout, 1, 0, true)
    }

    /// Drops the file's bytes from `at` on; with `purge` (the file is
    /// gone), its chunks are removed for good.
    fn cut_layout(
        &self,
        layout_id: u64,
        layout: &LayoutRec,
        chunk_size: u32,
        at: u64,
        purge: bool,
    ) -> io::Result<()> {
        let cs = u64::from(chunk_size.max(1));
        for &chain in &layout.chains {
            for (index, len) in self.list(chain, layout_id)? {
                let start = index.saturating_mul(cs);
                let chunk = ChunkId {
                    layout: layout_id,
                    index,
                };
                if purge {
                    // The file is gone: its chunks go for good.
                    self.update(chain, chunk, ChunkOp::Remove, &[])?;
                } else if start >= at {
                    // Emptied, not removed: the chunk keeps its version,
                    // so a version is never given twice to one chunk.
                    if len > 0 {
                        self.update(chain, chunk, ChunkOp::Truncate { len: 0 }, &[])?;
                    }
                } else if at - start < u64::from(len) {
                    self.update(
                        chain,
                        chunk,
                        ChunkOp::Truncate {
                            len: (at - start) as u32,
                        },
                        &[],
                    )?;
                }
            }
        }
        Ok(())
    }
}

impl ClusterData {
    /// The chunks of the file's layout on each of its chains (index,
    /// length), each chain listed once.
    fn chunks_of(&self, layout_id: u64, layout: &LayoutRec) -> io::Result<Vec<(u64, u32)>> {
        let chains: std::collections::BTreeSet<u32> = layout.chains.iter().copied().collect();
        let mut chunks = Vec::new();
        for chain in chains {
            chunks.extend(self.list(chain, layout_id)?);
        }
        Ok(chunks)
    }
}

/// The pieces of a byte range: (chunk index, offset in it, length, offset
/// in the range), each within one chunk and at most `max` long.
fn pieces(chunk_size: u32, offset: u64, len: usize, max: usize) -> Vec<(u64, u32, usize, usize)> {
    let cs = u64::from(chunk_size.max(1));
    let mut out = Vec::new();
    let mut done = 0;
    while done < len {
        let pos = offset + done as u64;
        let within = pos % cs;
        let n = ((cs - within) as usize).min(len - done).min(max);
        out.push((pos / cs, within as u32, n, done));
        done += n;
    }
    out
}

impl FileData for ClusterData {
    fn read(&self, ino: u64, rec: &InodeRec, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        self.read_to(ino, rec, offset, len, &mut &mut buf[..])
    }

    fn read_to(
        &self,
        ino: u64,
        rec: &InodeRec,
        offset: u64,
        len: usize,
        out: &mut dyn io::Write,
    ) -> io::Result<usize> {
        if offset >= rec.size {
            return Ok(0);
        }
        let len = len.min((rec.size - offset).min(usize::MAX as u64) as usize);
        let Some(layout) = self.existing_layout(ino, rec.layout_id)? else {
            // Never written: a hole.
            write_zeros(out, len)?;
            return Ok(len);
        };
        for (index, within, n, _) in pieces(rec.chunk_size, offset, len, READ_MAX as usize) {
            let chunk = ChunkId {
                layout: rec.layout_id,
                index,
            };
            let data = self.fetch_piece(layout.chain_of(index), chunk, within, n)?;
            out.write_all(&data)?;
            // Past a chunk's end inside the file's size: a hole.
            write_zeros(out, n - data.len())?;
        }
        Ok(len)
    }

    fn write(&self, ino: u64, rec: &InodeRec, offset: u64, data: &[u8]) -> io::Result<()> {
        let layout = self.layout(ino)?;
        let max = crate::rpc::frame::BULK_LEN_MAX;
        for (index, within, n, at) in pieces(rec.chunk_size, offset, data.len(), max) {
            let chunk = ChunkId {
                layout: rec.layout_id,
                index,
            };
            self.update(
                layout.chain_of(index),
                chunk,
                ChunkOp::Write { offset: within },
                &data[at..at + n],
            )?;
        }
        Ok(())
    }

    fn cut(&self, ino: u64, rec: &InodeRec, at: u64) -> io::Result<()> {
        let Some(layout) = self.existing_layout(ino, rec.layout_id)? else {
            return Ok(());
        };
        self.cut_layout(rec.layout_id, &layout, rec.chunk_size, at, false)
    }

    fn zero(&self, ino: u64, rec: &InodeRec, range: std::ops::Range<u64>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let Some(layout) = self.existing_layout(ino, rec.layout_id)? else {
            return Ok(());
        };
        let cs = u64::from(rec.chunk_size.max(1));
        let indexes = range.start / cs..range.end.div_ceil(cs);
        let zeros_max = crate::rpc::frame::BULK_LEN_MAX;
        let mut zeros = Vec::new();
        for (index, len) in self.chunks_of(rec.layout_id, &layout)? {
            if !indexes.contains(&index) {
                continue;
            }
            let chunk_start = index * cs;
            let from = range.start.max(chunk_start) - chunk_start;
            let to = range.end.min(chunk_start.saturating_add(cs)) - chunk_start;
            let len = u64::from(len);
            if from >= len {
                continue;
            }
            let chain = layout.chain_of(index);
            let chunk = ChunkId {
                layout: rec.layout_id,
                index,
            };
            if to >= len {
                // `from` < `len`, a u32.
                self.update(chain, chunk, ChunkOp::Truncate { len: from as u32 }, &[])?;
                continue;
            }
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(zeros_max);
                zeros.resize(n.max(zeros.len()), 0);
                // `at` < `to` < `len`, a u32.
                self.update(chain, chunk, ChunkOp::Write { offset: at as u32 }, &zeros[..n])?;
                at += n as u64;
            }
        }
        Ok(())
    }

    fn data_chunks(&self, ino: u64, rec: &InodeRec, indexes: std::ops::Range<u64>) -> io::Result<Vec<u64>> {
        let Some(layout) = self.existing_layout(ino, rec.layout_id)? else {
            return Ok(Vec::new());
        };
        let mut found: Vec<u64> = self
            .chunks_of(rec.layout_id, &layout)?
            .into_iter()
            .filter(|(index, len)| *len > 0 && indexes.contains(index))
            .map(|(index, _)| index)
            .collect();
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    fn remove(&self, reclaim: &Reclaim) -> io::Result<()> {
        lock(&self.layouts).remove(&reclaim.ino);
        let layout = match self
            .meta
            .call(&ClusterCall::GetLayout {
                layout: reclaim.layout_id,
            })
            .map_err(meta_err)?
        {
            ClusterAnswer::MaybeLayout(Some(l)) => l,
            // Never had data in the cluster.
            ClusterAnswer::MaybeLayout(None) => return Ok(()),
            other => return Err(io::Error::other(format!("GetLayout answered {other:?}"))),
        };
        self.cut_layout(reclaim.layout_id, &layout, reclaim.chunk_size, 0, true)?;
        self.meta
            .call(&ClusterCall::ForgetLayout {
                layout: reclaim.layout_id,
            })
            .map_err(meta_err)?;
        Ok(())
    }

    fn sync(&self, ino: u64, rec: &InodeRec) -> io::Result<()> {
        let Some(layout) = self.existing_layout(ino, rec.layout_id)? else {
            return Ok(());
        };
        for &chain in &layout.chains {
            // A member that died is taken out of its chains within a
            // lease: like an update, the sync goes again on the table that
            // says so, rather than failing the fsync of data the other
            // members hold.
            self.with_retries("an fsync", chain, |table, c, _| {
                for m in &c.members {
                    if m.state == crate::cluster::MemberState::Offline {
                        continue;
                    }
                    let Some(addr) = table.addr(m.target) else {
                        continue;
                    };
                    let request = StorageRequest::Sync {
                        target: m.target,
                        layout: rec.layout_id,
                    };
                    transport::call::<StorageReply>(
                        self.transport.as_ref(),
                        addr,
                        &request,
                        &[],
                        CALL_TIMEOUT,
                    )
                    .inspect_err(|e| tracing::info!("fsync of inode {ino} on target {}: {e}", m.target))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_reads_from_the_member_it_prefers_until_that_one_is_busy() {
        let idle = |_| 0;
        // The same preference in every chain holding the same members.
        let a = order_readers(7, [1, 2, 3].into_iter(), idle);
        let b = order_readers(7, [3, 1, 2].into_iter(), idle);
        assert_eq!(a, b);
        // A chain without the first choice starts with the next one.
        let without: Vec<u32> = a.iter().copied().filter(|t| *t != a[0]).collect();
        assert_eq!(order_readers(7, without.iter().copied(), idle), without);
        // Mounts spread over the members.
        let mut firsts = HashMap::<u32, usize>::new();
        for client in 0..300 {
            *firsts
                .entry(order_readers(client, [1, 2, 3].into_iter(), idle)[0])
                .or_default() += 1;
        }
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert!(firsts.values().all(|&n| n > 50), "{firsts:?}");
        // A busy first choice yields to the next one not busy; the rest
        // keep their order for retries.
        let busy = |t| if t == a[0] { SPILL_AT } else { 0 };
        assert_eq!(order_readers(7, a.iter().copied(), busy), vec![a[1], a[0], a[2]]);
        let two_busy = |t| if t == a[2] { 1 } else { SPILL_AT };
        assert_eq!(
            order_readers(7, a.iter().copied(), two_busy),
            vec![a[2], a[0], a[1]]
        );
        // All busy: the least busy.
        let all = |t| if t == a[1] { SPILL_AT } else { SPILL_AT + 3 };
        assert_eq!(order_readers(7, a.iter().copied(), all), vec![a[1], a[0], a[2]]);
        assert!(order_readers(7, std::iter::empty(), idle).is_empty());
    }
}
