//! The in-memory engine: a `BTreeMap` behind a mutex. For unit tests and the
//! simulation; nothing survives the process. A fault hook can fail commits
//! with a conflict on purpose (see [`MemEngine::set_fault`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::kv::{AttemptGate, CommitRequest, KvEngine, KvError, KvPair, Version};

/// Decides, per commit, whether to fail it with a conflict anyway.
pub type FaultHook = Box<dyn FnMut(&CommitRequest) -> bool + Send>;

/// See the module docs.
#[derive(Default)]
pub struct MemEngine {
    state: Mutex<MemState>,
    fault: Mutex<Option<FaultHook>>,
    gate: AttemptGate,
}

#[derive(Debug, Default)]
struct MemState {
    map: BTreeMap<Vec<u8>, (Vec<u8>, Version)>,
    version_last: Version,
    commits: u64,
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemEngine")
            .field("keys", &state.map.len())
            .field("commits", &state.commits)
            .finish()
    }
}

impl MemEngine {
    /// An empty store.
    pub fn new() -> MemEngine {
        MemEngine::default()
    }

    /// Installs (or with `None` removes) a hook that can fail any commit
    /// with [`KvError::Conflict`] before it is validated.
    pub fn set_fault(&self, hook: Option<FaultHook>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Every key and value, in order (for consistency checks).
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock()
            .map
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Commits applied so far.
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A panic elsewhere while holding the lock cannot leave the map
        // half-updated: commits validate first and then only insert.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn scan_map(
    map: &BTreeMap<Vec<u8>, (Vec<u8>, Version)>,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Vec<KvPair> {
    if start >= end {
        return Vec::new();
    }
    map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
        .take(limit)
        .map(|(k, (v, ver))| KvPair {
            key: k.clone(),
            value: v.clone(),
            version: *ver,
        })
        .collect()
}

impl KvEngine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>, KvError> {
        Ok(self.lock().map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError> {
        Ok(scan_map(&self.lock().map, start, end, limit))
    }

    fn gate(&self) -> &AttemptGate {
        &self.gate
    }

    fn commit(&self, request: CommitRequest) -> Result<(), KvError> {
        // The hook runs without any lock held, so it may itself commit
        // (to play a competing client); those commits skip the hook.
        let hook = self.fault.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut hook) = hook {
            let fail = hook(&request);
            let mut slot = self.fault.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(hook);
            }
            if fail {
                return Err(KvError::Conflict);
            }
        }
        let mut state = self.lock();
        validate(
            &request,
            |key| Ok(state.map.get(key).map(|(_, v)| *v)),
            |s| Ok(scan_map(&state.map, &s.start, &s.end, s.limit)),
        )?;
        if request.writes.is_empty() {
            return Ok(());
        }
        state.version_last += 1;
        let version = state.version_last;
        for (key, value) in request.writes {
            match value {
                Some(value) => {
                    state.map.insert(key, (value, version));
                }
                None => {
                    state.map.remove(&key);
                }
            }
        }
        state.commits += 1;
        Ok(())
    }
}

/// Checks a request's reads and scans against the current state, given as
/// a version lookup and a scan function. Shared by the engines that
/// validate in-process.
pub(crate) fn validate(
    request: &CommitRequest,
    mut version_of: impl FnMut(&[u8]) -> Result<Option<Version>, KvError>,
    mut rescan: impl FnMut(&super::kv::ScanRead) -> Result<Vec<KvPair>, KvError>,
) -> Result<(), KvError> {
    for (key, seen) in &request.reads {
        if version_of(key)? != *seen {
            return Err(KvError::Conflict);
        }
    }
    for scan in &request.scans {
        let now = rescan(scan)?;
        if now.len() != scan.seen.len()
            || now
                .iter()
                .zip(&scan.seen)
                .any(|(p, (key, version))| p.key != *key || p.version != *version)
        {
            return Err(KvError::Conflict);
        }
    }
    Ok(())
}
