//! `xfused storage`: a storage service serving its targets on the service
//! layer, registered with the metadata services and kept in step with the
//! chain table by heartbeats.
//!
//! - Each target directory keeps its identity in `TARGET` (made on first
//!   use): a target is the same target whatever address or process serves
//!   it, and keeps its id.
//! - Every [`HEARTBEAT_EVERY`](crate::cluster::HEARTBEAT_EVERY) the
//!   service renews its targets' leases; when the table's version moved,
//!   it fetches the table, and copies what a target lacks of each chain it
//!   is syncing in, reporting the chains it finished in its next
//!   heartbeat.
//! - With scrubbing on ([`StorageService::start_scrubbing`]), every chunk
//!   is read whole now and then and repaired if a block fails its check.
//! - Peers: mounts send updates and reads; forwards and chain listings are
//!   for storage services only (a mount could otherwise write a member
//!   behind its head's back).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::engine::ChunkEngine;
use super::target::Target;
use super::transport::DataTransport;
use super::{StorageReply, StorageRequest};
use crate::cluster::client::ClusterClient;
use crate::cluster::{ClusterAnswer, ClusterCall, MemberState, Table, HEARTBEAT_EVERY};
use crate::rpc::auth::Role;
use crate::rpc::server::{Handler, Peer};

/// The identity file of a target directory.
const TARGET_FILE: &str = "TARGET";
const TARGET_MAGIC: &str = "xfused storage target ";

/// A target directory's identity: read, or made and kept.
pub fn target_uuid(dir: &Path) -> std::io::Result<[u8; 16]> {
    crate::private_state::ensure_dir(dir)?;
    let path = dir.join(TARGET_FILE);
    let parse = |text: &str| -> Option<[u8; 16]> {
        let hex = text.trim().strip_prefix(TARGET_MAGIC)?;
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    };
    match std::fs::File::open(&path) {
        Ok(mut f) => {
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            parse(&text).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a target identity", path.display()),
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut uuid = [0u8; 16];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut uuid)?;
            let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = dir.join(format!("{TARGET_FILE}.tmp"));
            {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)?;
                writeln!(f, "{TARGET_MAGIC}{hex}")?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            crate::private_state::sync_dir(dir)?;
            Ok(uuid)
        }
        Err(e) => Err(e),
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct StorageService {
    targets: HashMap<u32, Arc<Target>>,
    meta: ClusterClient,
    /// (target, chain, chain version) copies finished, for the next
    /// heartbeat.
    synced: Mutex<Vec<(u32, u32, u64)>>,
    /// Which table the copies were last looked for in, and whether a copy
    /// runs: one lock, so a copy's end and a heartbeat's look cannot
    /// interleave and lose the next look.
    copies: Mutex<Copies>,
}

#[derive(Debug, Default)]
struct Copies {
    /// The table version whose copies a heartbeat last looked for (0:
    /// none yet, or look again).
    looked_at: u64,
    /// A copy thread runs; [`Copies::end`] makes the next heartbeat look
    /// again.
    running: bool,
}

impl Copies {
    /// Whether a heartbeat that saw table `version` fetches the table.
    fn stale(&self, version: u64) -> bool {
        version != self.looked_at
    }

    /// A heartbeat looked at table `version` and found copies to make
    /// (`work`): whether it starts them. With a copy running it does
    /// not; that copy's end has the next heartbeat look again.
    fn start(&mut self, version: u64, work: bool) -> bool {
        self.looked_at = version;
        if !work || self.running {
            return false;
        }
        self.running = true;
        true
    }

    /// A copy ended, done or not: the next heartbeat fetches the table,
    /// which says what is left.
    fn end(&mut self) {
        *self = Copies::default();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StorageService {
    /// Opens the targets in `dirs` (each keeping the files of up to
    /// `open_chunks` chunks open), registers them with the metadata
    /// services as reachable at `addr`, and fetches the table.
    pub fn start(
        dirs: &[PathBuf],
        open_chunks: usize,
        addr: SocketAddr,
        meta: ClusterClient,
        transport: Arc<dyn DataTransport>,
    ) -> anyhow::Result<Arc<StorageService>> {
        use anyhow::Context as _;
        let mut targets = HashMap::new();
        for dir in dirs {
            let uuid = target_uuid(dir).with_context(|| format!("target {}", dir.display()))?;
            let engine =
                ChunkEngine::open(dir, open_chunks).with_context(|| format!("target {}", dir.display()))?;
            let id = match meta
                .call(&ClusterCall::Register { uuid, addr })
                .with_context(|| format!("registering target {}", dir.display()))?
            {
                ClusterAnswer::Target(id) => id,
                other => anyhow::bail!("registering answered {other:?}"),
            };
            if targets.contains_key(&id) {
                anyhow::bail!("{}: the same target as another --target", dir.display());
            }
            tracing::info!("target {id}: {}", dir.display());
            targets.insert(id, Arc::new(Target::new(id, engine, transport.clone())));
        }
        let service = Arc::new(StorageService {
            targets,
            meta,
            synced: Mutex::new(Vec::new()),
            copies: Mutex::new(Copies::default()),
        });
        service.refresh().context("fetching the chain table")?;
        Ok(service)
    }

    /// The targets by id.
    pub fn targets(&self) -> &HashMap<u32, Arc<Target>> {
        &self.targets
    }

    /// Fetches the table and routes by it. It does not count as looked
    /// at for copies: the table `start` fetches may already name a target
    /// that came back as syncing, and only a heartbeat starts the copy.
    fn refresh(&self) -> Result<Arc<Table>, crate::meta::MetaError> {
        let table = Arc::new(self.meta.table()?);
        for t in self.targets.values() {
            t.set_table(table.clone());
        }
        Ok(table)
    }

    /// One heartbeat: renews the leases, and on a new table, routes by it
    /// and copies what the targets lack.
    pub fn beat(self: &Arc<Self>) -> Result<(), crate::meta::MetaError> {
        let ids: Vec<u32> = self.targets.keys().copied().collect();
        let synced = lock(&self.synced).clone();
        let version = match self.meta.call(&ClusterCall::Heartbeat { targets: ids, synced })? {
            ClusterAnswer::TableVersion(v) => v,
            other => {
                return Err(crate::meta::MetaError::Corrupt(format!(
                    "a heartbeat answered {other:?}"
                )))
            }
        };
        if !lock(&self.copies).stale(version) {
            return Ok(());
        }
        let table = self.refresh()?;
        tracing::info!("chain table version {}", table.chains.version);
        // Copies still to report: those of chains unchanged since.
        let done = {
            let mut synced = lock(&self.synced);
            synced.retain(|&(t, c, v)| {
                table
                    .chain(c)
                    .is_some_and(|ch| ch.version == v && ch.state_of(t) == Some(MemberState::Syncing))
            });
            synced.clone()
        };
        let work: Vec<_> = self
            .targets
            .iter()
            .flat_map(|(id, target)| {
                table
                    .chains
                    .chains
                    .iter()
                    .filter(|c| c.state_of(*id) == Some(MemberState::Syncing))
                    .filter(|c| !done.contains(&(*id, c.id, c.version)))
                    .map(|c| (target.clone(), c.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !lock(&self.copies).start(table.chains.version, !work.is_empty()) {
            return Ok(());
        }
        tracing::info!(
            "copying {} chain(s) into syncing targets: {:?}",
            work.len(),
            work.iter()
                .map(|(t, c)| (t.id(), c.id, c.version))
                .collect::<Vec<_>>()
        );
        // Copies run beside the heartbeats, which must go on meanwhile.
        let service = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || {
                for (target, chain) in work {
                    let id = target.id();
                    match target.sync_chain(&chain) {
                        Ok((copied, removed)) => {
                            tracing::info!(
                                "target {id}: synced chain {} (version {}): {copied} chunks copied, {removed} removed",
                                chain.id,
                                chain.version
                            );
                            lock(&service.synced).push((id, chain.id, chain.version));
                        }
                        Err(e) => {
                            tracing::warn!("target {id}: syncing chain {}: {e}; again at the next heartbeat", chain.id);
                        }
                    }
                }
                lock(&service.copies).end();
            });
        if let Err(e) = spawned {
            lock(&self.copies).end();
            return Err(crate::meta::MetaError::Corrupt(format!(
                "starting a sync thread: {e}"
            )));
        }
        Ok(())
    }

    /// Sends heartbeats for as long as the process runs.
    pub fn start_heartbeats(self: &Arc<Self>) -> std::io::Result<()> {
        let service = self.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(HEARTBEAT_EVERY);
                if let Err(e) = service.beat() {
                    tracing::warn!("heartbeat: {e}");
                }
            })?;
        Ok(())
    }
}

impl StorageService {
    /// Scrubs the targets in the background, one after the other, at most
    /// `bytes_per_sec` in all, a pass over all of them every
    /// [`SCRUB_PAUSE`] after the last ended; each pass is logged.
    pub fn start_scrubbing(self: &Arc<Self>, bytes_per_sec: u64) -> std::io::Result<()> {
        let service = self.clone();
        std::thread::Builder::new()
            .name("scrub".into())
            .spawn(move || loop {
                std::thread::sleep(SCRUB_PAUSE);
                let mut ids: Vec<u32> = service.targets.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    let target = &service.targets[&id];
                    let done = target.scrub(bytes_per_sec, &|| false);
                    let line = format!(
                        "target {id}: scrubbed {} chunks ({} MiB): {} repaired, {} not repairable",
                        done.chunks,
                        done.bytes >> 20,
                        done.repaired,
                        done.unrepaired
                    );
                    if done.unrepaired > 0 {
                        tracing::warn!("{line}");
                    } else {
                        tracing::info!("{line}");
                    }
                }
            })?;
        Ok(())
    }
}

/// Time between scrubbing passes (and before the first).
pub const SCRUB_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

impl Handler for StorageService {
    type Request = StorageRequest;
    type Reply = StorageReply;
    type Conn = ();

    fn reply_bulk(&self, req: &StorageRequest) -> usize {
        req.reply_bulk()
    }

    fn open(&self, peer: &Peer) -> Result<(), String> {
        match peer.role {
            None | Some(Role::Mount) | Some(Role::Service) => Ok(()),
            Some(role) => Err(format!("a {role} may not use a storage service")),
        }
    }

    fn handle(
        &self,
        _conn: &(),
        peer: &Peer,
        req: StorageRequest,
        bulk: Vec<u8>,
    ) -> Result<(StorageReply, Vec<u8>), i32> {
        let peer_only = matches!(
            req,
            StorageRequest::Forward { .. } | StorageRequest::ListChain { .. }
        );
        if peer_only && peer.role == Some(Role::Mount) {
            tracing::warn!("{}: refused a forward or listing from a mount", peer.addr);
            return Err(libc::EACCES);
        }
        let Some(target) = self.targets.get(&req.target()) else {
            return Err(libc::ESTALE);
        };
        target.handle(req, bulk)
    }
}

#[cfg(test)]
mod tests {
    use super::Copies;

    #[test]
    fn a_copy_that_ends_while_a_heartbeat_looks_is_looked_for_again() {
        let mut copies = Copies::default();
        assert!(copies.stale(7), "a new table is looked at");
        assert!(copies.start(7, true), "the first look starts the copy");
        // A heartbeat sees the same table while the copy runs: nothing
        // to fetch; one that saw a newer table fetches it but starts no
        // second copy.
        assert!(!copies.stale(7));
        assert!(copies.stale(8));
        assert!(!copies.start(8, true));
        // However the copy's end falls against that look, the next
        // heartbeat looks again and starts what is left.
        copies.end();
        assert!(copies.stale(8));
        assert!(copies.start(8, true));
        copies.end();
        // With nothing to copy, a table is looked at once.
        assert!(!copies.start(8, false));
        assert!(!copies.stale(8));
    }
}
