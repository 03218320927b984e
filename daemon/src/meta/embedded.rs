//! The embedded engine: fjall (an LSM tree with a write-ahead journal) in
//! this process, with optimistic transactions on top. Zero set-up: a
//! directory is all it needs. Why fjall and not redb: the measurements in
//! the docs of [`super`].
//!
//! Every value is stored with an 8-byte version in front: `epoch << 40 |
//! sequence`, where the epoch is bumped (and synced) every time the store is
//! opened and the sequence counts commits since, so versions never repeat.
//! A commit takes the engine's commit lock, validates the transaction's
//! reads and scans against the latest state, and writes its keys as one
//! fjall batch (atomic: one journal record).
//!
//! # Durability
//!
//! A documented choice ([`Durability`]):
//! - [`Durability::Buffered`] (the default): a commit is acknowledged once
//!   its journal record is written to the operating system, so a crash or
//!   `kill -9` of xfused loses nothing; a background thread fsyncs the
//!   journal every `fsync_ms`, so a power loss or kernel crash loses at most
//!   the commits of that window.
//! - [`Durability::Sync`]: a commit is acknowledged only after an fdatasync
//!   covering it. Commits arriving while a sync runs share the next one
//!   (group commit), so concurrent clients amortize the cost.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::kv::{AttemptGate, CommitRequest, KvEngine, KvError, KvPair, Version};
use super::mem::validate;

/// When a commit is durable (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged after the journal write reached the OS; fsync'd in the
    /// background every `fsync_ms` milliseconds (1 to 65535).
    Buffered {
        /// Background fsync interval.
        fsync_ms: u16,
    },
    /// Acknowledged after an fdatasync (group commit).
    Sync,
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Buffered { fsync_ms: 100 }
    }
}

const VERSION_LEN: usize = 8;
const SEQUENCE_BITS: u32 = 40;
const EPOCH_KEY: &[u8] = b"epoch";

/// See the module docs.
pub struct EmbeddedEngine {
    keyspace: Keyspace,
    data: PartitionHandle,
    durability: Durability,
    epoch: u64,
    /// Held while validating and writing; holds the last sequence used.
    commit_lock: Mutex<u64>,
    /// Group commit: the highest sequence written, and synced.
    written: AtomicU64,
    synced: Mutex<u64>,
    gate: AttemptGate,
    /// `xfused.lock` in the store, locked while this engine lives: one
    /// process, one engine per store (two would corrupt it, and a mount's
    /// sessions kept in the process rely on being the only client).
    _lock: std::fs::File,
}

impl std::fmt::Debug for EmbeddedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEngine")
            .field("durability", &self.durability)
            .field("epoch", &self.epoch)
            .finish()
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> KvError {
    KvError::Failed(format!("{what}: {e}"))
}

fn split_version(stored: &[u8]) -> Result<(Vec<u8>, Version), KvError> {
    if stored.len() < VERSION_LEN {
        return Err(KvError::Failed(format!(
            "stored value of {} bytes has no version",
            stored.len()
        )));
    }
    let (version, value) = stored.split_at(VERSION_LEN);
    let mut v = [0u8; VERSION_LEN];
    v.copy_from_slice(version);
    Ok((value.to_vec(), u64::from_le_bytes(v)))
}

/// Locks the store in `path` (created if missing) for this engine alone.
fn lock_store(path: &Path) -> Result<std::fs::File, KvError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(path)
        .map_err(|e| failed(&format!("creating the metadata store {}", path.display()), e))?;
    let at = path.join("xfused.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&at)
        .map_err(|e| failed(&format!("opening {}", at.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(KvError::Failed(format!(
            "the metadata store in {} is in use by another xfused (mount or meta service); \
             an embedded store serves one process at a time: stop the other, or share the \
             namespace through `xfused meta` and `--meta tcp://`",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(&format!("locking {}", at.display()), e)),
    }
}

impl EmbeddedEngine {
    /// Opens (or creates) the store in directory `path`.
    /// Fails if another engine, in this process or another, has it open.
    pub fn open(path: &Path, durability: Durability) -> Result<EmbeddedEngine, KvError> {
        let lock = lock_store(path)?;
        let mut config = Config::new(path);
        if let Durability::Buffered { fsync_ms } = durability {
            config = config.fsync_ms(Some(fsync_ms.max(1)));
        }
        let keyspace = config
            .open()
            .map_err(|e| failed(&format!("opening the metadata store in {}", path.display()), e))?;
        let data = keyspace
            .open_partition("meta", PartitionCreateOptions::default())
            .map_err(|e| failed("opening partition meta", e))?;
        let engine_part = keyspace
            .open_partition("engine", PartitionCreateOptions::default())
            .map_err(|e| failed("opening partition engine", e))?;
        let epoch = match engine_part
            .get(EPOCH_KEY)
            .map_err(|e| failed("reading the epoch", e))?
        {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_le_bytes(b) + 1
            }
            Some(v) => return Err(KvError::Failed(format!("epoch record of {} bytes", v.len()))),
            None => 1,
        };
        if epoch >= 1 << (64 - SEQUENCE_BITS) {
            return Err(KvError::Failed("epoch counter exhausted".into()));
        }
        engine_part
            .insert(EPOCH_KEY, epoch.to_le_bytes())
            .map_err(|e| failed("writing the epoch", e))?;
        keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| failed("syncing the epoch", e))?;
        Ok(EmbeddedEngine {
            keyspace,
            data,
            durability,
            epoch,
            commit_lock: Mutex::new(0),
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            gate: AttemptGate::default(),
            _lock: lock,
        })
    }

    fn current_version(&self, key: &[u8]) -> Result<Option<Version>, KvError> {
        match self.data.get(key).map_err(|e| failed("get", e))? {
            Some(stored) => Ok(Some(split_version(&stored)?.1)),
            None => Ok(None),
        }
    }

    /// Whether every commit written so far is known to be on disk (synced
    /// by [`KvEngine::sync`] or a `Durability::Sync` commit; the background
    /// timer's syncs are fjall's and not counted).
    pub fn all_synced(&self) -> bool {
        let synced = *self.synced.lock().unwrap_or_else(|e| e.into_inner());
        synced >= self.written.load(Ordering::Acquire)
    }

    /// Waits until commit `sequence` is on disk, syncing if no one else has.
    fn sync_up_to(&self, sequence: u64) -> Result<(), KvError> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= sequence {
            return Ok(());
        }
        // Everything written so far rides on this sync.
        let target = self.written.load(Ordering::Acquire);
        self.keyspace
            .persist(PersistMode::SyncData)
            .map_err(|e| failed("fdatasync of the journal", e))?;
        *synced = target;
        Ok(())
    }
}

impl KvEngine for EmbeddedEngine {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>, KvError> {
        match self.data.get(key).map_err(|e| failed("get", e))? {
            Some(stored) => Ok(Some(split_version(&stored)?)),
            None => Ok(None),
        }
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.data.range(start..end) {
            let (key, stored) = item.map_err(|e| failed("scan", e))?;
            let (value, version) = split_version(&stored)?;
            out.push(KvPair {
                key: key.to_vec(),
                value,
                version,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn gate(&self) -> &AttemptGate {
        &self.gate
    }

    /// One fdatasync of the journal covering every commit written so far
    /// (shared with commits syncing at the same time), unless one already
    /// did: with `Durability::Buffered`, what an fsync through the mount
    /// waits for instead of the background timer.
    fn sync(&self) -> Result<(), KvError> {
        self.sync_up_to(self.written.load(Ordering::Acquire))
    }

    fn commit(&self, request: CommitRequest) -> Result<(), KvError> {
        let sequence = {
            let mut last = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
            validate(
                &request,
                |key| self.current_version(key),
                |s| self.scan(&s.start, &s.end, s.limit),
            )?;
            if request.writes.is_empty() {
                return Ok(());
            }
            *last += 1;
            if *last >= 1 << SEQUENCE_BITS {
                return Err(KvError::Failed(
                    "commit sequence exhausted; reopen the store".into(),
                ));
            }
            let version = (self.epoch << SEQUENCE_BITS) | *last;
            let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
            for (key, value) in &request.writes {
                match value {
                    Some(value) => {
                        let mut stored = Vec::with_capacity(VERSION_LEN + value.len());
                        stored.extend_from_slice(&version.to_le_bytes());
                        stored.extend_from_slice(value);
                        batch.insert(&self.data, key.as_slice(), stored);
                    }
                    None => batch.remove(&self.data, key.as_slice()),
                }
            }
            batch.commit().map_err(|e| failed("writing the journal", e))?;
            self.written.store(*last, Ordering::Release);
            *last
        };
        if self.durability == Durability::Sync {
            self.sync_up_to(sequence)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store open in one engine cannot be opened by another (here or in
    /// another process: the lock is the same), and can once it is closed.
    #[test]
    fn a_store_serves_one_engine_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedEngine::open(dir.path(), Durability::default()).unwrap();
        match EmbeddedEngine::open(dir.path(), Durability::default()) {
            Err(KvError::Failed(msg)) => assert!(msg.contains("in use by another xfused"), "{msg}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened twice"),
        }
        drop(first);
        EmbeddedEngine::open(dir.path(), Durability::default()).unwrap();
    }
}
