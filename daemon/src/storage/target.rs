//! One storage target's part in its chains (the protocol is in the module
//! docs of [`crate::storage`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::engine::{ChunkEngine, ChunkId, UpdateKey};
use super::transport::{self, DataTransport};
use super::{ChainRef, ChunkOp, StorageReply, StorageRequest, UpdateId, ENEEDCHUNK};
use crate::cluster::{ChainRec, MemberState, Table};
use crate::rpc::client::CallError;

/// Updates remembered per target, to recognize one sent again.
pub const DONE_MAX: usize = 1 << 16;
/// How long an update waits for its chunk's previous one.
const CHUNK_WAIT: Duration = Duration::from_secs(30);
/// Most bytes one read answers (a chunk is read in pieces of this).
pub const READ_MAX: u32 = 1 << 20;
/// Chunks per page of a chain listing.
const LIST_PAGE: usize = 8192;
/// Chunks remembered as checked with the tail (forgotten all at once
/// past this, so a target's memory does not grow with its chunks).
const VERIFIED_MAX: usize = 1 << 20;
/// Tries of a forward before the update is left pending.
const FORWARD_TRIES: u32 = 4;
/// How long a forward may take down the rest of the chain.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An update on its way down a chain (pending here until the chain has
/// applied it).
#[derive(Debug, Clone)]
struct Update {
    chunk: ChunkId,
    chain: u32,
    op: ChunkOp,
    /// The version it makes.
    version: u64,
    /// The committed version it applies to.
    base: u64,
    /// Who sent it (to drive it again under its own name).
    id: UpdateId,
    sync: bool,
    data: Arc<Vec<u8>>,
    /// With [`ChunkOp::Replace`]: the updates the whole chunk has seen.
    recent: Arc<Vec<UpdateKey>>,
}

/// Updates done, by who sent them: bounded, oldest forgotten first.
#[derive(Debug, Default)]
struct Done {
    map: HashMap<UpdateId, u64>,
    order: VecDeque<UpdateId>,
}

impl Done {
    fn get(&self, id: &UpdateId) -> Option<u64> {
        self.map.get(id).copied()
    }

    fn put(&mut self, id: UpdateId, version: u64) {
        if self.map.insert(id, version).is_none() {
            self.order.push_back(id);
            while self.order.len() > DONE_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// See the module docs.
pub struct Target {
    id: u32,
    engine: ChunkEngine,
    table: RwLock<Arc<Table>>,
    busy: Mutex<HashSet<ChunkId>>,
    freed: Condvar,
    pending: Mutex<HashMap<ChunkId, Update>>,
    done: Mutex<Done>,
    /// Chains being copied to this target, with the chunks updates
    /// reached meanwhile (the copy leaves those alone).
    syncing: Mutex<HashMap<u32, HashSet<ChunkId>>>,
    /// Chunks (and whole chains, once synced) known to be as the tail has
    /// them since this target started: it may have missed updates while it
    /// was not running, so it checks a chunk with the tail before it heads
    /// an update of it or answers a read of it.
    verified: Mutex<(HashSet<ChunkId>, HashSet<u32>)>,
    /// Pause between tries of a forward (zero in the simulation).
    pause: Duration,
    /// How long an update or read waits for the chunk's update in flight
    /// (zero in the simulation, which runs on one thread).
    chunk_wait: Duration,
    transport: Arc<dyn DataTransport>,
    /// Bytes moved, for the metrics endpoint.
    moved: Moved,
}

/// Bytes a target moved, by why: relaxed counters, read at scrape time.
#[derive(Debug, Default)]
pub struct Moved {
    /// Bytes of updates applied here (as head or as a successor), the
    /// payload of writes and whole-chunk replacements.
    pub updated_bytes: AtomicU64,
    /// Bytes answered to reads.
    pub read_bytes: AtomicU64,
    /// Bytes copied here from a chain's tail while syncing.
    pub synced_bytes: AtomicU64,
    /// Chunks whose copy here failed a check and was replaced by another
    /// member's.
    pub repaired_chunks: AtomicU64,
    /// Bytes checked by scrubbing ([`Target::scrub`]).
    pub scrubbed_bytes: AtomicU64,
}

/// What one [`Target::scrub`] pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    /// Chunks read whole and checked.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks that failed a check and were replaced by a good copy.
    pub repaired: u64,
    /// Chunks that failed a check and could not be replaced (no other
    /// serving member at their version): reads of them go elsewhere.
    pub unrepaired: u64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A chunk held by one update (released when dropped).
struct Held<'a> {
    target: &'a Target,
    chunk: ChunkId,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock(&self.target.busy).remove(&self.chunk);
        self.target.freed.notify_all();
    }
}

fn errno(e: &io::Error) -> i32 {
    match e.kind() {
        io::ErrorKind::InvalidData => libc::EIO,
        io::ErrorKind::InvalidInput => libc::EINVAL,
        _ => e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Applies `op` to a chunk's bytes in memory.
fn apply_in_memory(bytes: &mut Vec<u8>, op: ChunkOp, data: &[u8]) {
    match op {
        ChunkOp::Write { offset } => {
            let end = offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(data);
        }
        ChunkOp::Truncate { len } => bytes.resize(len as usize, 0),
        ChunkOp::Remove => bytes.clear(),
        ChunkOp::Replace => {
            bytes.clear();
            bytes.extend_from_slice(data);
        }
    }
}

impl Target {
    /// Target `id` over `engine`, reaching other targets through
    /// `transport`.
    pub fn new(id: u32, engine: ChunkEngine, transport: Arc<dyn DataTransport>) -> Target {
        Target {
            id,
            engine,
            table: RwLock::new(Arc::new(Table::default())),
            busy: Mutex::new(HashSet::new()),
            freed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            done: Mutex::new(Done::default()),
            syncing: Mutex::new(HashMap::new()),
            verified: Mutex::new((HashSet::new(), HashSet::new())),
            pause: Duration::from_millis(5),
            chunk_wait: CHUNK_WAIT,
            transport,
            moved: Moved::default(),
        }
    }

    /// Bytes this target moved so far.
    pub fn moved(&self) -> &Moved {
        &self.moved
    }

    /// Tries forwards again without pausing (the simulation).
    #[cfg(test)]
    pub(crate) fn without_pauses(mut self) -> Target {
        self.pause = Duration::ZERO;
        self.chunk_wait = Duration::ZERO;
        self
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its chunk engine.
    pub fn engine(&self) -> &ChunkEngine {
        &self.engine
    }

    /// The table it routes by.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Routes by `table` from now on.
    pub fn set_table(&self, table: Arc<Table>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The chain as this target knows it, if `chain` names its version and
    /// this target is a member; `ESTALE` otherwise.
    fn chain(&self, chain: ChainRef) -> Result<(Arc<Table>, ChainRec), i32> {
        let table = self.table();
        let Some(rec) = table.chain(chain.id).cloned() else {
            return Err(libc::ESTALE);
        };
        if rec.version != chain.version || rec.state_of(self.id).is_none() {
            return Err(libc::ESTALE);
        }
        Ok((table, rec))
    }

    fn hold(&self, chunk: ChunkId) -> Result<Held<'_>, i32> {
        let deadline = Instant::now() + self.chunk_wait;
        let mut busy = lock(&self.busy);
        while busy.contains(&chunk) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(libc::EAGAIN);
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        busy.insert(chunk);
        Ok(Held { target: self, chunk })
    }

    /// Answers a request addressed to this target.
    pub fn handle(&self, req: StorageRequest, bulk: Vec<u8>) -> Result<(StorageReply, Vec<u8>), i32> {
        let payload_bytes = bulk.len() as u64;
        let (is_update, is_read) = (
            matches!(
                req,
                StorageRequest::Update { .. } | StorageRequest::Forward { .. }
            ),
            matches!(req, StorageRequest::Read { .. }),
        );
        let result = self.answer(req, bulk);
        if let Ok((_, reply_bulk)) = &result {
            if is_update {
                self.moved
                    .updated_bytes
                    .fetch_add(payload_bytes, Ordering::Relaxed);
            } else if is_read {
                self.moved
                    .read_bytes
                    .fetch_add(reply_bulk.len() as u64, Ordering::Relaxed);
            }
        }
        result
    }

    fn answer(&self, req: StorageRequest, bulk: Vec<u8>) -> Result<(StorageReply, Vec<u8>), i32> {
        match req {
            StorageRequest::Update {
                chain,
                chunk,
                op,
                id,
                sync,
                ..
            } => self
                .update(chain, chunk, op, id, sync, bulk)
                .map(|v| (StorageReply::Done { version: v }, Vec::new())),
            StorageRequest::Forward {
                chain,
                chunk,
                op,
                version,
                id,
                sync,
                recent,
                ..
            } => self
                .forward(chain, chunk, op, version, id, sync, bulk, recent)
                .map(|v| (StorageReply::Done { version: v }, Vec::new())),
            StorageRequest::Read {
                chain,
                chunk,
                offset,
                len,
                ..
            } => self.read(chain, chunk, offset, len),
            StorageRequest::Committed { chain, chunk, .. } => {
                let (_, rec) = self.chain(chain)?;
                // As a read here would: an update this member holds from
                // before it was the tail is committed first.
                self.commit_left_pending(chunk, &rec)?;
                let meta = self.engine.meta(chunk).map_err(|e| errno(&e))?;
                Ok((StorageReply::Version(meta.version), Vec::new()))
            }
            StorageRequest::List { chain, layout, .. } => {
                self.chain(chain)?;
                let chunks = self
                    .engine
                    .chunks_of(layout)
                    .map_err(|e| errno(&e))?
                    .into_iter()
                    .filter(|(_, m)| m.chain == chain.id && m.version > 0)
                    .map(|(i, m)| (i, m.version, m.len))
                    .collect();
                Ok((StorageReply::Chunks(chunks), Vec::new()))
            }
            StorageRequest::ListChain { chain, after, .. } => {
                self.chain(chain)?;
                let page = self
                    .engine
                    .chain_chunks(chain.id, after, LIST_PAGE)
                    .map_err(|e| errno(&e))?;
                Ok((StorageReply::ChainChunks(page), Vec::new()))
            }
            StorageRequest::Sync { layout, .. } => {
                self.engine.sync(layout).map_err(|e| errno(&e))?;
                Ok((StorageReply::Synced, Vec::new()))
            }
        }
    }

    /// A client's update, at the head.
    fn update(
        &self,
        chain: ChainRef,
        chunk: ChunkId,
        op: ChunkOp,
        id: UpdateId,
        sync: bool,
        data: Vec<u8>,
    ) -> Result<u64, i32> {
        let (_, rec) = self.chain(chain)?;
        if rec.head() != Some(self.id) {
            return Err(libc::ESTALE);
        }
        let done = lock(&self.done).get(&id);
        if let Some(v) = done {
            return Ok(v);
        }
        let _held = self.hold(chunk)?;
        let done = lock(&self.done).get(&id);
        if let Some(v) = done {
            return Ok(v);
        }
        // An update left pending by a forward that failed: it goes down
        // the chain again first (the same one: under its own version).
        // (Bound first: a guard in an `if let` would live through the
        // block, and propagate takes the lock again.)
        let pending = lock(&self.pending).get(&chunk).cloned();
        if let Some(p) = pending {
            let again = self.propagate(p.clone())?;
            if p.id == id {
                return Ok(again);
            }
        }
        self.verify(chunk, &rec)?;
        let committed = self.engine.meta(chunk).map_err(|e| errno(&e))?;
        if committed.applied(id.key()) {
            // Applied before (the answer was lost, and this member's memory
            // of it with it): done.
            return Ok(committed.version);
        }
        self.propagate(Update {
            chunk,
            chain: rec.id,
            op,
            version: committed.version + 1,
            base: committed.version,
            id,
            sync,
            data: Arc::new(data),
            recent: Arc::new(Vec::new()),
        })
    }

    /// Makes sure this member's copy of `chunk` is the tail's, once per
    /// chunk since the target started (or its chain was synced): copies
    /// the tail's if the versions differ. The caller holds the chunk.
    fn verify(&self, chunk: ChunkId, rec: &ChainRec) -> Result<(), i32> {
        {
            let verified = lock(&self.verified);
            if verified.0.contains(&chunk) || verified.1.contains(&rec.id) {
                return Ok(());
            }
        }
        let tail = rec.tail().ok_or(libc::EAGAIN)?;
        if tail != self.id {
            let table = self.table();
            let addr = table.addr(tail).ok_or(libc::ESTALE)?;
            let reference = rec.reference();
            let theirs = self.committed_at(addr, tail, reference, chunk)?;
            let mine = self.engine.meta(chunk).map_err(|e| errno(&e))?;
            if theirs != mine.version {
                let (bytes, version, recent) = self.fetch(addr, tail, reference, chunk)?;
                tracing::info!(
                    "target {}: chunk {chunk} was at version {}, the tail's at {version}: copied",
                    self.id,
                    mine.version
                );
                if version == 0 {
                    self.engine.remove(chunk).map_err(|e| errno(&e))?;
                } else {
                    self.engine
                        .replace(chunk, rec.id, version, &bytes, false, &recent)
                        .map_err(|e| errno(&e))?;
                }
            }
        }
        let mut verified = lock(&self.verified);
        if verified.0.len() >= VERIFIED_MAX {
            // Forgetting only costs a round trip to the tail per chunk.
            verified.0.clear();
        }
        verified.0.insert(chunk);
        Ok(())
    }

    fn committed_at(&self, addr: SocketAddr, tail: u32, chain: ChainRef, chunk: ChunkId) -> Result<u64, i32> {
        match self.call(
            addr,
            &StorageRequest::Committed {
                target: tail,
                chain,
                chunk,
            },
            &[],
        )? {
            StorageReply::Version(v) => Ok(v),
            other => {
                tracing::error!("target {}: a version query answered {other:?}", self.id);
                Err(libc::EIO)
            }
        }
    }

    /// One scrubbing pass: reads whole every chunk this target holds for
    /// the chains it serves in, checking every block against its checksum
    /// (as reads do, but also the blocks nobody reads), and repairs what
    /// fails ([`Target::repair`]). At most `bytes_per_sec`; stops early
    /// when `stop` says so.
    pub fn scrub(&self, bytes_per_sec: u64, stop: &dyn Fn() -> bool) -> Scrubbed {
        let mut done = Scrubbed::default();
        let started = Instant::now();
        let table = self.table();
        for rec in &table.chains.chains {
            if rec.state_of(self.id) != Some(MemberState::Serving) {
                continue;
            }
            let mut after = None;
            loop {
                let page = match self.engine.chain_chunks(rec.id, after, LIST_PAGE) {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!("target {}: scrubbing chain {}: {e}", self.id, rec.id);
                        break;
                    }
                };
                let Some(&(last, _)) = page.last() else { break };
                for (chunk, _) in page {
                    if stop() {
                        return done;
                    }
                    match self.engine.read_all(chunk) {
                        Ok((bytes, _)) => {
                            done.bytes += bytes.len() as u64;
                            self.moved
                                .scrubbed_bytes
                                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                            match self.repair(chunk, rec, &table, &e) {
                                Ok(()) => done.repaired += 1,
                                Err(_) => done.unrepaired += 1,
                            }
                        }
                        // Removed meanwhile, or unreadable for a reason the
                        // next pass may not have.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            tracing::warn!("target {}: scrubbing chunk {chunk}: {e}", self.id);
                            continue;
                        }
                    }
                    done.chunks += 1;
                    // Paced: never ahead of the rate.
                    if bytes_per_sec > 0 {
                        let due = Duration::from_secs_f64(done.bytes as f64 / bytes_per_sec as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                after = Some(last);
            }
        }
        done
    }

    /// Replaces this member's copy of `chunk`, which failed a check
    /// (`why`: a torn or damaged block), with another serving member's at
    /// the same version; `EIO` when none has one (the client then reads
    /// another member). A copy at another version is left to the chain's
    /// own catching up (updates, [`Target::verify`], syncing). The fetch
    /// runs without holding the chunk (the member asked may ask this one
    /// which version is committed); the replacement holds it and checks
    /// the version did not move meanwhile.
    fn repair(&self, chunk: ChunkId, rec: &ChainRec, table: &Table, why: &io::Error) -> Result<(), i32> {
        let mine = self.engine.meta(chunk).map_err(|e| {
            tracing::error!("target {}: chunk {chunk}: {why}, and its header: {e}", self.id);
            libc::EIO
        })?;
        for member in rec.readers().filter(|m| *m != self.id) {
            let Some(addr) = table.addr(member) else { continue };
            let (bytes, version, recent) = match self.fetch(addr, member, rec.reference(), chunk) {
                Ok(copy) => copy,
                Err(e) => {
                    tracing::warn!(
                        "target {}: chunk {chunk}: copying it from target {member}: {}",
                        self.id,
                        io::Error::from_raw_os_error(e)
                    );
                    continue;
                }
            };
            if version != mine.version {
                continue;
            }
            let _held = self.hold(chunk)?;
            if self.engine.meta(chunk).map_err(|e| errno(&e))?.version != version {
                // Updated meanwhile: the next read tries again.
                return Err(libc::EIO);
            }
            self.engine
                .replace(chunk, rec.id, version, &bytes, false, &recent)
                .map_err(|e| errno(&e))?;
            tracing::warn!(
                "target {}: chunk {chunk}: {why}; replaced by target {member}'s copy (version {version})",
                self.id
            );
            self.moved.repaired_chunks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        tracing::error!(
            "target {}: chunk {chunk}: {why}; no other serving member has version {}",
            self.id,
            mine.version
        );
        Err(libc::EIO)
    }

    /// The whole of `chunk` at `target`, its version and the updates it
    /// remembers (read in pieces; again from the start if the version
    /// moves meanwhile).
    #[allow(clippy::type_complexity)]
    fn fetch(
        &self,
        addr: SocketAddr,
        target: u32,
        chain: ChainRef,
        chunk: ChunkId,
    ) -> Result<(Vec<u8>, u64, Vec<UpdateKey>), i32> {
        'again: for _ in 0..8 {
            let mut bytes = Vec::new();
            let mut first = None;
            loop {
                let read = StorageRequest::Read {
                    target,
                    chain,
                    chunk,
                    offset: bytes.len() as u32,
                    len: READ_MAX,
                };
                let (got, v, recent) = match self.call_with_data(addr, &read, &[])? {
                    (StorageReply::Data { version, recent }, got) => (got, version, recent),
                    (other, _) => {
                        tracing::error!("target {}: a read answered {other:?}", self.id);
                        return Err(libc::EIO);
                    }
                };
                if *first.get_or_insert(v) != v {
                    continue 'again;
                }
                let n = got.len();
                bytes.extend(got);
                if n < READ_MAX as usize {
                    return Ok((bytes, v, recent));
                }
            }
        }
        Err(libc::EAGAIN)
    }

    /// An update from the predecessor.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        chain: ChainRef,
        chunk: ChunkId,
        op: ChunkOp,
        version: u64,
        id: UpdateId,
        sync: bool,
        data: Vec<u8>,
        recent: Vec<UpdateKey>,
    ) -> Result<u64, i32> {
        let (_, rec) = self.chain(chain)?;
        if rec.head() == Some(self.id) || rec.state_of(self.id) == Some(MemberState::Offline) {
            return Err(libc::ESTALE);
        }
        let _held = self.hold(chunk)?;
        let done = lock(&self.done).get(&id);
        if let Some(v) = done {
            if v == version {
                return Ok(v);
            }
        }
        let committed = self.engine.meta(chunk).map_err(|e| errno(&e))?;
        if op != ChunkOp::Replace && committed.applied(id.key()) {
            // Applied here before (its answer was lost).
            return Ok(committed.version);
        }
        let follows = match op {
            ChunkOp::Replace => version >= committed.version,
            ChunkOp::Remove => true,
            ChunkOp::Write { .. } | ChunkOp::Truncate { .. } => version == committed.version + 1,
        };
        if !follows {
            return Err(ENEEDCHUNK);
        }
        // What the predecessor sends supersedes what this member may hold
        // pending from a failed forward: the predecessor had it too, and
        // drives it again first.
        self.propagate(Update {
            chunk,
            chain: rec.id,
            op,
            version,
            base: committed.version,
            id,
            sync,
            data: Arc::new(data),
            recent: Arc::new(recent),
        })
    }

    /// Keeps the update pending, sends it down the chain (the chain as
    /// this target knows it at each try), applies it when the chain has,
    /// and remembers it. A forward that keeps failing leaves the update
    /// pending (reads of the chunk then ask the tail) and answers `EAGAIN`:
    /// the successor may have applied it, so this member never acts as if
    /// it had not been sent; whoever comes next for the chunk drives it
    /// again first.
    fn propagate(&self, u: Update) -> Result<u64, i32> {
        lock(&self.pending).insert(u.chunk, u.clone());
        let mut pause = self.pause;
        let mut tries = 0;
        loop {
            let table = self.table();
            let Some(rec) = table.chain(u.chain) else {
                return Err(libc::ESTALE);
            };
            if rec.state_of(self.id).is_none_or(|s| s == MemberState::Offline) {
                return Err(libc::ESTALE);
            }
            let Some(next) = rec.successor(self.id) else { break };
            match self.send_down(&table, rec, next, &u) {
                Ok(()) => break,
                Err(e) => {
                    tries += 1;
                    if tries >= FORWARD_TRIES {
                        tracing::warn!(
                            "target {}: chunk {} version {} not forwarded to {next} (errno {e}); kept pending",
                            self.id,
                            u.chunk,
                            u.version
                        );
                        return Err(libc::EAGAIN);
                    }
                    std::thread::sleep(pause);
                    pause *= 4;
                }
            }
        }
        let applied = self.apply(&u);
        lock(&self.pending).remove(&u.chunk);
        applied.map_err(|e| {
            tracing::error!(
                "target {}: applying {:?} to chunk {}: {e}",
                self.id,
                u.op,
                u.chunk
            );
            errno(&e)
        })?;
        lock(&self.done).put(u.id, u.version);
        Ok(u.version)
    }

    fn send_down(&self, table: &Table, rec: &ChainRec, next: u32, u: &Update) -> Result<(), i32> {
        let Some(addr) = table.addr(next) else {
            return Err(libc::ESTALE);
        };
        let request = |op: ChunkOp, recent: Vec<UpdateKey>| StorageRequest::Forward {
            target: next,
            chain: rec.reference(),
            chunk: u.chunk,
            op,
            version: u.version,
            id: u.id,
            sync: u.sync,
            recent,
        };
        match self.call(addr, &request(u.op, u.recent.to_vec()), &u.data) {
            Ok(_) => Ok(()),
            Err(ENEEDCHUNK) => {
                // The successor missed a version: send it the whole chunk
                // as it will be, with the updates it will have seen.
                let (mut bytes, meta) = self.engine.read_all(u.chunk).map_err(|e| errno(&e))?;
                apply_in_memory(&mut bytes, u.op, &u.data);
                let (whole, recent) = match u.op {
                    ChunkOp::Remove => (ChunkOp::Remove, Vec::new()),
                    ChunkOp::Replace => (ChunkOp::Replace, u.recent.to_vec()),
                    ChunkOp::Write { .. } | ChunkOp::Truncate { .. } => {
                        let mut recent: Vec<UpdateKey> =
                            meta.recent.iter().copied().filter(|k| *k != (0, 0)).collect();
                        recent.push(u.id.key());
                        (ChunkOp::Replace, recent)
                    }
                };
                self.call(addr, &request(whole, recent), &bytes).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    fn call(&self, addr: SocketAddr, request: &StorageRequest, data: &[u8]) -> Result<StorageReply, i32> {
        self.call_with_data(addr, request, data).map(|(reply, _)| reply)
    }

    fn call_with_data(
        &self,
        addr: SocketAddr,
        request: &StorageRequest,
        data: &[u8],
    ) -> Result<(StorageReply, Vec<u8>), i32> {
        match transport::call::<StorageReply>(self.transport.as_ref(), addr, request, data, FORWARD_TIMEOUT) {
            Ok(answer) => Ok(answer),
            Err(CallError::Remote(e)) => Err(e),
            Err(e) => {
                tracing::warn!("target {}: forwarding to {addr}: {e}", self.id);
                // The successor may be gone: the client retries once the
                // chain is fixed.
                Err(libc::EAGAIN)
            }
        }
    }

    fn apply(&self, u: &Update) -> io::Result<()> {
        if let Some(touched) = lock(&self.syncing).get_mut(&u.chain) {
            touched.insert(u.chunk);
        }
        let by = Some(u.id.key());
        let e = &self.engine;
        match u.op {
            ChunkOp::Write { offset } => e
                .write(u.chunk, u.chain, u.version, offset, &u.data, u.sync, by)
                .map(|_| ()),
            ChunkOp::Truncate { len } => e
                .truncate(u.chunk, u.chain, u.version, len, u.sync, by)
                .map(|_| ()),
            ChunkOp::Replace => e
                .replace(u.chunk, u.chain, u.version, &u.data, u.sync, &u.recent)
                .map(|_| ()),
            ChunkOp::Remove => e.remove(u.chunk),
        }
    }

    /// A read: from disk when clean; when an update is pending here, the
    /// version the tail has committed.
    fn read(
        &self,
        chain: ChainRef,
        chunk: ChunkId,
        offset: u32,
        len: u32,
    ) -> Result<(StorageReply, Vec<u8>), i32> {
        let (table, rec) = self.chain(chain)?;
        if rec.state_of(self.id) != Some(MemberState::Serving) {
            return Err(libc::ESTALE);
        }
        let len = len.min(READ_MAX);
        let tail = rec.tail().ok_or(libc::EAGAIN)?;
        let pending = lock(&self.pending).get(&chunk).cloned();
        if tail == self.id {
            if pending.is_some() {
                self.commit_left_pending(chunk, &rec)?;
            }
        } else if !self.is_verified(chunk, rec.id) {
            let _held = self.hold(chunk)?;
            self.verify(chunk, &rec)?;
        }
        let pending = lock(&self.pending).get(&chunk).cloned();
        let Some(p) = pending.filter(|_| tail != self.id) else {
            let (buf, meta) = match self.engine.read_vec(chunk, offset, len as usize) {
                // A block that fails its checksum: the chunk is copied from
                // a member whose copy is good, then read again.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.repair(chunk, &rec, &table, &e)?;
                    self.engine
                        .read_vec(chunk, offset, len as usize)
                        .map_err(|e| errno(&e))?
                }
                read => read.map_err(|e| errno(&e))?,
            };
            let recent = meta.recent.iter().copied().filter(|k| *k != (0, 0)).collect();
            return Ok((
                StorageReply::Data {
                    version: meta.version,
                    recent,
                },
                buf,
            ));
        };
        // Dirty: which version is committed?
        let addr = table.addr(tail).ok_or(libc::ESTALE)?;
        let want = self.committed_at(addr, tail, chain, chunk)?;
        let (mut whole, meta) = self.engine.read_all(chunk).map_err(|e| errno(&e))?;
        let applied_there = want == p.version || (p.op == ChunkOp::Remove && want == 0);
        let mut recent: Vec<UpdateKey> = meta.recent.iter().copied().filter(|k| *k != (0, 0)).collect();
        let version = if meta.version == want && !(applied_there && meta.version == p.base) {
            meta.version
        } else if applied_there && meta.version == p.base {
            apply_in_memory(&mut whole, p.op, &p.data);
            recent = match p.op {
                ChunkOp::Replace => p.recent.to_vec(),
                ChunkOp::Remove => Vec::new(),
                _ => {
                    recent.push(p.id.key());
                    recent
                }
            };
            want
        } else {
            // Moved on meanwhile: the client asks again.
            return Err(libc::EAGAIN);
        };
        let start = (offset as usize).min(whole.len());
        let end = (offset as usize + len as usize).min(whole.len());
        Ok((StorageReply::Data { version, recent }, whole[start..end].to_vec()))
    }

    /// At the tail: an update left pending when this member was not the
    /// tail (the old tail may have shown it) is committed now.
    fn commit_left_pending(&self, chunk: ChunkId, rec: &ChainRec) -> Result<(), i32> {
        if rec.tail() != Some(self.id) || !lock(&self.pending).contains_key(&chunk) {
            return Ok(());
        }
        let _held = self.hold(chunk)?;
        let pending = lock(&self.pending).get(&chunk).cloned();
        if let Some(p) = pending {
            self.propagate(p)?;
        }
        Ok(())
    }

    fn is_verified(&self, chunk: ChunkId, chain: u32) -> bool {
        let verified = lock(&self.verified);
        verified.0.contains(&chunk) || verified.1.contains(&chain)
    }

    /// Copies to this target what it lacks of `chain` (it is syncing
    /// there), from the chain's tail: every chunk whose version differs,
    /// and removes the chunks the tail no longer has; chunks updates reach
    /// meanwhile are left to them. Returns the chunks copied and removed.
    pub fn sync_chain(&self, chain: &ChainRec) -> Result<(usize, usize), String> {
        let table = self.table();
        let source = chain.tail().ok_or("the chain has no serving member")?;
        let addr = table.addr(source).ok_or("the tail has no address")?;
        lock(&self.syncing).insert(chain.id, HashSet::new());
        let result = self.copy_chain(chain, source, addr);
        lock(&self.syncing).remove(&chain.id);
        if result.is_ok() {
            lock(&self.verified).1.insert(chain.id);
        }
        result
    }

    fn copy_chain(&self, chain: &ChainRec, source: u32, addr: SocketAddr) -> Result<(usize, usize), String> {
        let reference = chain.reference();
        let mut theirs = std::collections::BTreeMap::new();
        let mut after = None;
        loop {
            let page = match self.call(
                addr,
                &StorageRequest::ListChain {
                    target: source,
                    chain: reference,
                    after,
                },
                &[],
            ) {
                Ok(StorageReply::ChainChunks(page)) => page,
                Ok(other) => return Err(format!("listing answered with {other:?}")),
                Err(e) => return Err(format!("listing the chain: {}", io::Error::from_raw_os_error(e))),
            };
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            theirs.extend(page);
        }
        let mut copied = 0;
        for (&chunk, &version) in &theirs {
            let touched = |t: &Self| {
                lock(&t.syncing)
                    .get(&chain.id)
                    .is_some_and(|s| s.contains(&chunk))
            };
            if touched(self) || self.engine.meta(chunk).map_err(|e| e.to_string())?.version == version {
                continue;
            }
            let mut bytes = Vec::new();
            let mut theirs_recent: Vec<UpdateKey>;
            let mut current = true;
            loop {
                let read = StorageRequest::Read {
                    target: source,
                    chain: reference,
                    chunk,
                    offset: bytes.len() as u32,
                    len: READ_MAX,
                };
                let (got, v) = match self.call_with_data(addr, &read, &[]) {
                    Ok((StorageReply::Data { version, recent }, got)) => {
                        theirs_recent = recent;
                        (got, version)
                    }
                    Ok((other, _)) => return Err(format!("a read answered with {other:?}")),
                    Err(e) => {
                        return Err(format!(
                            "reading chunk {chunk}: {}",
                            io::Error::from_raw_os_error(e)
                        ))
                    }
                };
                if v != version {
                    // Changed meanwhile: the update reaches this target too.
                    current = false;
                    break;
                }
                let n = got.len();
                bytes.extend(got);
                if n < READ_MAX as usize {
                    break;
                }
            }
            if !current {
                continue;
            }
            let _held = self
                .hold(chunk)
                .map_err(|e| format!("waiting for chunk {chunk}: errno {e}"))?;
            if touched(self) {
                continue;
            }
            self.engine
                .replace(chunk, chain.id, version, &bytes, false, &theirs_recent)
                .map_err(|e| format!("writing chunk {chunk}: {e}"))?;
            self.moved
                .synced_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            copied += 1;
        }
        let mut removed = 0;
        let mut after = None;
        loop {
            let page = self
                .engine
                .chain_chunks(chain.id, after, LIST_PAGE)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            for (chunk, _) in page {
                if theirs.contains_key(&chunk) {
                    continue;
                }
                let _held = self
                    .hold(chunk)
                    .map_err(|e| format!("waiting for chunk {chunk}: errno {e}"))?;
                if lock(&self.syncing)
                    .get(&chain.id)
                    .is_some_and(|s| s.contains(&chunk))
                {
                    continue;
                }
                self.engine.remove(chunk).map_err(|e| e.to_string())?;
                removed += 1;
            }
        }
        Ok((copied, removed))
    }
}
