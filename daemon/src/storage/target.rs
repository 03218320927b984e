//! One storage target's part in its chains (the protocol is in the module
//! docs of [`crate::storage`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::engine::{ChunkEngine, ChunkId, ChunkMeta};
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
/// How long a forward may take down the rest of the chain.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An update waiting for its acknowledgement from down the chain.
#[derive(Debug, Clone)]
struct Pending {
    /// The version it makes.
    version: u64,
    /// The committed version it applies to.
    base: u64,
    op: ChunkOp,
    data: Arc<Vec<u8>>,
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
    pending: Mutex<HashMap<ChunkId, Pending>>,
    done: Mutex<Done>,
    /// Chains being copied to this target, with the chunks updates
    /// reached meanwhile (the copy leaves those alone).
    syncing: Mutex<HashMap<u32, HashSet<ChunkId>>>,
    transport: Arc<dyn DataTransport>,
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
            transport,
        }
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
        let deadline = Instant::now() + CHUNK_WAIT;
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
                ..
            } => self
                .forward(chain, chunk, op, version, id, sync, bulk)
                .map(|v| (StorageReply::Done { version: v }, Vec::new())),
            StorageRequest::Read {
                chain,
                chunk,
                offset,
                len,
                ..
            } => self.read(chain, chunk, offset, len),
            StorageRequest::Committed { chain, chunk, .. } => {
                self.chain(chain)?;
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
        let (table, rec) = self.chain(chain)?;
        if rec.head() != Some(self.id) {
            return Err(libc::ESTALE);
        }
        if let Some(v) = lock(&self.done).get(&id) {
            return Ok(v);
        }
        let _held = self.hold(chunk)?;
        if let Some(v) = lock(&self.done).get(&id) {
            return Ok(v);
        }
        let committed = self.engine.meta(chunk).map_err(|e| errno(&e))?;
        let version = if op == ChunkOp::Remove && committed.version == 0 {
            // Nothing to remove here; still forwarded, so no member keeps it.
            0
        } else {
            committed.version + 1
        };
        self.propagate(
            &table,
            &rec,
            chunk,
            op,
            version,
            committed,
            id,
            sync,
            Arc::new(data),
        )
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
    ) -> Result<u64, i32> {
        let (table, rec) = self.chain(chain)?;
        if rec.head() == Some(self.id) || rec.state_of(self.id) == Some(MemberState::Offline) {
            return Err(libc::ESTALE);
        }
        let _held = self.hold(chunk)?;
        if let Some(v) = lock(&self.done).get(&id) {
            if v == version {
                return Ok(v);
            }
        }
        let committed = self.engine.meta(chunk).map_err(|e| errno(&e))?;
        let follows = match op {
            ChunkOp::Replace | ChunkOp::Remove => true,
            ChunkOp::Write { .. } | ChunkOp::Truncate { .. } => version == committed.version + 1,
        };
        if !follows {
            return Err(ENEEDCHUNK);
        }
        self.propagate(
            &table,
            &rec,
            chunk,
            op,
            version,
            committed,
            id,
            sync,
            Arc::new(data),
        )
    }

    /// Keeps the update pending, sends it down the chain, applies it when
    /// the chain has, and remembers it.
    #[allow(clippy::too_many_arguments)]
    fn propagate(
        &self,
        table: &Table,
        rec: &ChainRec,
        chunk: ChunkId,
        op: ChunkOp,
        version: u64,
        committed: ChunkMeta,
        id: UpdateId,
        sync: bool,
        data: Arc<Vec<u8>>,
    ) -> Result<u64, i32> {
        let successor = rec.successor(self.id);
        if let Some(next) = successor {
            lock(&self.pending).insert(
                chunk,
                Pending {
                    version,
                    base: committed.version,
                    op,
                    data: data.clone(),
                },
            );
            let sent = self.send_down(table, rec, next, chunk, op, version, id, sync, &data);
            if let Err(e) = sent {
                lock(&self.pending).remove(&chunk);
                return Err(e);
            }
        }
        let applied = self.apply(chunk, rec.id, op, version, sync, &data);
        lock(&self.pending).remove(&chunk);
        applied.map_err(|e| {
            tracing::error!("target {}: applying {op:?} to chunk {chunk}: {e}", self.id);
            errno(&e)
        })?;
        lock(&self.done).put(id, version);
        Ok(version)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_down(
        &self,
        table: &Table,
        rec: &ChainRec,
        next: u32,
        chunk: ChunkId,
        op: ChunkOp,
        version: u64,
        id: UpdateId,
        sync: bool,
        data: &[u8],
    ) -> Result<(), i32> {
        let Some(addr) = table.addr(next) else {
            return Err(libc::ESTALE);
        };
        let request = |op: ChunkOp| StorageRequest::Forward {
            target: next,
            chain: rec.reference(),
            chunk,
            op,
            version,
            id,
            sync,
        };
        match self.call(addr, &request(op), data) {
            Ok(_) => Ok(()),
            Err(ENEEDCHUNK) => {
                // The successor missed a version: send it the whole chunk
                // as it will be.
                let (mut bytes, _) = self.engine.read_all(chunk).map_err(|e| errno(&e))?;
                apply_in_memory(&mut bytes, op, data);
                let whole = if op == ChunkOp::Remove {
                    ChunkOp::Remove
                } else {
                    ChunkOp::Replace
                };
                self.call(addr, &request(whole), &bytes).map(|_| ())
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
        match transport::call::<_, StorageReply>(
            self.transport.as_ref(),
            addr,
            request,
            data,
            FORWARD_TIMEOUT,
        ) {
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

    fn apply(
        &self,
        chunk: ChunkId,
        chain: u32,
        op: ChunkOp,
        version: u64,
        sync: bool,
        data: &[u8],
    ) -> io::Result<()> {
        if let Some(touched) = lock(&self.syncing).get_mut(&chain) {
            touched.insert(chunk);
        }
        match op {
            ChunkOp::Write { offset } => self
                .engine
                .write(chunk, chain, version, offset, data, sync)
                .map(|_| ()),
            ChunkOp::Truncate { len } => self.engine.truncate(chunk, chain, version, len, sync).map(|_| ()),
            ChunkOp::Replace => self.engine.replace(chunk, chain, version, data, sync).map(|_| ()),
            ChunkOp::Remove => self.engine.remove(chunk),
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
        let local = |buf: &mut Vec<u8>| -> Result<u64, i32> {
            let (n, meta) = self.engine.read(chunk, offset, buf).map_err(|e| errno(&e))?;
            buf.truncate(n);
            Ok(meta.version)
        };
        let pending = lock(&self.pending).get(&chunk).cloned();
        let tail = rec.tail();
        let Some(p) = pending.filter(|_| tail != Some(self.id)) else {
            let mut buf = vec![0u8; len as usize];
            let version = local(&mut buf)?;
            return Ok((StorageReply::Data { version }, buf));
        };
        // Dirty: which version is committed?
        let tail = tail.ok_or(libc::EAGAIN)?;
        let addr = table.addr(tail).ok_or(libc::ESTALE)?;
        let want = match self.call(
            addr,
            &StorageRequest::Committed {
                target: tail,
                chain,
                chunk,
            },
            &[],
        )? {
            StorageReply::Version(v) => v,
            other => {
                tracing::error!(
                    "target {}: the tail answered a version query with {other:?}",
                    self.id
                );
                return Err(libc::EIO);
            }
        };
        let (mut whole, meta) = self.engine.read_all(chunk).map_err(|e| errno(&e))?;
        let version = if meta.version == want {
            meta.version
        } else if want == p.version && meta.version == p.base {
            apply_in_memory(&mut whole, p.op, &p.data);
            p.version
        } else {
            // Moved on meanwhile: the client asks again.
            return Err(libc::EAGAIN);
        };
        let start = (offset as usize).min(whole.len());
        let end = (offset as usize + len as usize).min(whole.len());
        Ok((StorageReply::Data { version }, whole[start..end].to_vec()))
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
                    Ok((StorageReply::Data { version }, got)) => (got, version),
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
                .replace(chunk, chain.id, version, &bytes, false)
                .map_err(|e| format!("writing chunk {chunk}: {e}"))?;
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
