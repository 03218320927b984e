//! The key-value contract the metadata layer is written against: point
//! reads, range scans and optimistic transactions.
//!
//! A [`Txn`] reads from the engine's latest committed state and records what
//! it saw: the version of every key it read (or that the key was absent) and,
//! for every range it scanned, the keys and versions the scan returned. Its
//! writes are buffered. [`KvEngine::commit`] then checks, atomically with
//! applying the writes, that every recorded read still holds: the same
//! version for a key that existed, still absent for one that did not, and the
//! same result for every scan. If anything changed the commit fails with
//! [`KvError::Conflict`] and applies nothing. Because a transaction commits
//! only if everything it read is still current at its commit point, committed
//! transactions are serializable in commit order.
//!
//! Reads are not from a snapshot: a transaction may observe a torn view (one
//! key before and one after another commit), but such a transaction can never
//! commit, so the code inside a transaction must only tolerate torn views
//! without panicking or looping; its result is thrown away.
//!
//! [`retry`] runs a transaction body until it commits, with exponential
//! backoff and a bound on attempts. Backoff alone does not make retries
//! fair: under a steady stream of operations on one hot key (a directory
//! that every create in it rewrites), an operation whose attempts are slow
//! can lose to fresh operations round after round until it runs out of
//! attempts. So after [`RetryPolicy::alone_after`] conflicts an operation
//! runs its next attempts alone among the transactions on its engine handle
//! (see [`retry`] and [`AttemptGate`]).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// The version of a stored value. An engine gives a key a new version every
/// time it is written (etcd: the key's `mod_revision`); versions of one key
/// never repeat while the store exists.
pub type Version = u64;

/// One key of a scan result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    /// The key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
    /// Its version.
    pub version: Version,
}

/// A scan a transaction made: the range, the limit and what it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRead {
    /// First key of the range (inclusive).
    pub start: Vec<u8>,
    /// End of the range (exclusive).
    pub end: Vec<u8>,
    /// At most this many keys were asked for.
    pub limit: usize,
    /// The keys and versions returned, in order.
    pub seen: Vec<(Vec<u8>, Version)>,
}

/// Everything an engine needs to validate and apply a transaction.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    /// Keys read and the version seen (`None`: the key was absent).
    pub reads: Vec<(Vec<u8>, Option<Version>)>,
    /// Ranges scanned.
    pub scans: Vec<ScanRead>,
    /// Keys to write (`Some`) or delete (`None`), applied all or nothing.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Errors of a KV engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Something the transaction read changed before it could commit;
    /// nothing was written. Run the transaction again.
    #[error("transaction conflict: a key it read changed before commit")]
    Conflict,
    /// The engine cannot be reached or refused the operation for now
    /// (etcd without quorum, a connection lost); nothing may have been
    /// written, or the commit may have happened: the caller cannot know.
    #[error("KV engine unavailable: {0}")]
    Unavailable(String),
    /// The engine failed (I/O error, corrupt store).
    #[error("KV engine failed: {0}")]
    Failed(String),
}

/// A transactional, ordered key-value store.
///
/// Contract: `get` and `scan` return the latest committed state; `commit`
/// validates a [`CommitRequest`]'s reads and scans and applies its writes
/// as one atomic step, or returns [`KvError::Conflict`] and applies nothing.
/// Keys sort bytewise.
pub trait KvEngine: Send + Sync + fmt::Debug {
    /// The value and version of `key`, if it exists.
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>, KvError>;
    /// Up to `limit` keys in `[start, end)`, in ascending order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError>;
    /// Validates and applies a transaction (see the trait's contract).
    fn commit(&self, request: CommitRequest) -> Result<(), KvError>;
    /// [`KvEngine::get`] for a transaction whose reads share the read
    /// point `at`: `None` before its first read, which may set it; later
    /// reads see the store as of that point. Engines that have no read
    /// points read the latest state and leave `at` alone.
    fn get_at(&self, key: &[u8], _at: &mut Option<u64>) -> Result<Option<(Vec<u8>, Version)>, KvError> {
        self.get(key)
    }
    /// [`KvEngine::scan`] at a transaction's read point (see
    /// [`KvEngine::get_at`]).
    fn scan_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        _at: &mut Option<u64>,
    ) -> Result<Vec<KvPair>, KvError> {
        self.scan(start, end, limit)
    }
    /// Whether the reads of one transaction through
    /// [`KvEngine::get_at`] and [`KvEngine::scan_at`] see one consistent
    /// state (a snapshot) and include every commit of this handle: a
    /// transaction that writes nothing then needs no validation.
    fn reads_at_snapshot(&self) -> bool {
        false
    }
    /// The gate that orders [`retry`]'s attempts on this engine handle.
    fn gate(&self) -> &AttemptGate;
    /// Makes every commit acknowledged so far durable (on disk, not only
    /// written to the operating system): what `fsync` of a file asks of its
    /// metadata. Engines whose commits are durable when acknowledged (etcd,
    /// the in-memory engine, which keeps nothing) have nothing to do.
    fn sync(&self) -> Result<(), KvError> {
        Ok(())
    }
}

/// An optimistic transaction: reads recorded, writes buffered until
/// [`Txn::commit`].
pub struct Txn<'a> {
    engine: &'a dyn KvEngine,
    reads: HashMap<Vec<u8>, Option<Version>>,
    scans: Vec<ScanRead>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The read point its reads share, on engines that have them.
    at: Option<u64>,
}

impl fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Txn")
            .field("reads", &self.reads.len())
            .field("scans", &self.scans.len())
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl<'a> Txn<'a> {
    /// A new, empty transaction on `engine`.
    pub fn new(engine: &'a dyn KvEngine) -> Txn<'a> {
        Txn {
            engine,
            reads: HashMap::new(),
            scans: Vec::new(),
            writes: BTreeMap::new(),
            at: None,
        }
    }

    /// The value of `key`: this transaction's own write if it made one,
    /// else the engine's, whose version is recorded for validation.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        let found = self.engine.get_at(key, &mut self.at)?;
        let version = found.as_ref().map(|(_, v)| *v);
        match self.reads.get(key) {
            // A second read that sees another version: this transaction
            // cannot commit; stop it early.
            Some(seen) if *seen != version => return Err(KvError::Conflict),
            Some(_) => {}
            None => {
                self.reads.insert(key.to_vec(), version);
            }
        }
        Ok(found.map(|(value, _)| value))
    }

    /// Up to `limit` keys in `[start, end)` from the engine, recorded for
    /// validation. Does not see this transaction's own writes: callers scan
    /// before they write in a range.
    pub fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, KvError> {
        let pairs = self.engine.scan_at(start, end, limit, &mut self.at)?;
        self.scans.push(ScanRead {
            start: start.to_vec(),
            end: end.to_vec(),
            limit,
            seen: pairs.iter().map(|p| (p.key.clone(), p.version)).collect(),
        });
        Ok(pairs)
    }

    /// Buffers a write of `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Buffers a delete of `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Whether the transaction wrote anything.
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Whether what this transaction read is one consistent state by
    /// itself, with nothing to validate: it wrote nothing, and either the
    /// engine reads each transaction at one snapshot (etcd: one revision,
    /// [`KvEngine::reads_at_snapshot`]) or it read at most one key (no
    /// scan). One get is atomic on every engine here (fjall applies a
    /// commit's batch at once), so it saw the store as of one instant. A
    /// getattr, or an open of a file without extended attributes, then
    /// skips the engine's commit path (its lock, on the embedded engine; a
    /// round trip through Raft, on etcd).
    fn self_consistent(&self) -> bool {
        self.writes.is_empty()
            && (self.engine.reads_at_snapshot() || (self.scans.is_empty() && self.reads.len() <= 1))
    }

    /// Checks that everything read is still current, and writes nothing.
    pub fn validate(self) -> Result<(), KvError> {
        if self.self_consistent() {
            return Ok(());
        }
        self.engine.commit(CommitRequest {
            reads: self.reads.into_iter().collect(),
            scans: self.scans,
            writes: Vec::new(),
        })
    }

    /// Validates and applies the transaction. A transaction without writes
    /// is validated too (its reads were one consistent state), unless it
    /// read one key only.
    pub fn commit(self) -> Result<(), KvError> {
        if self.self_consistent() {
            return Ok(());
        }
        self.engine.commit(CommitRequest {
            reads: self.reads.into_iter().collect(),
            scans: self.scans,
            writes: self.writes.into_iter().collect(),
        })
    }
}

/// How [`retry`] runs a transaction again after a conflict.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before giving up with the conflict (at least 1).
    pub attempts_max: u32,
    /// Backoff before the second attempt; doubles per attempt.
    pub backoff_first: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Sleep between attempts; `false` retries at once (simulation, tests).
    pub sleep: bool,
    /// Conflicts after which an operation's attempts run alone among the
    /// transactions on its engine handle (see [`retry`]); at least 1.
    pub alone_after: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 64,
            backoff_first: Duration::from_micros(50),
            // Generous: a hot directory (every create in it writes its
            // inode) on a slow engine (etcd: milliseconds per commit) needs
            // contenders spread out, or one of them may lose every round.
            backoff_max: Duration::from_millis(100),
            sleep: true,
            // Four clients hammering one directory on a loaded machine
            // retry up to 3-4 times as a rule; a tail to 30-60 attempts is
            // starvation, not bad luck.
            alone_after: 6,
        }
    }
}

/// An error a transaction body can return: either a KV error (a conflict is
/// retried) or the body's own.
pub trait TxnError: From<KvError> {
    /// Whether this is a [`KvError::Conflict`].
    fn is_conflict(&self) -> bool;
}

/// Orders the transaction attempts [`retry`] makes on one engine handle
/// (one per process in production): an attempt holds the read side; an
/// operation that has lost [`RetryPolicy::alone_after`] times holds the
/// write side, so it waits for the attempts in flight to end and no new one
/// starts until its own has (std's lock lets a waiting writer in before new
/// readers). Uncontended, the read side is one atomic operation.
#[derive(Debug, Default)]
pub struct AttemptGate(RwLock<()>);

thread_local! {
    /// Whether this thread is inside an attempt. A transaction run from
    /// inside another's attempt (the simulation's delayed commits do that)
    /// must not take the lock again: a writer waiting between the two reads
    /// would deadlock them.
    static IN_ATTEMPT: Cell<bool> = const { Cell::new(false) };
}

/// How one attempt holds its [`AttemptGate`]; dropping it ends the attempt.
enum Attempt<'a> {
    // The guards are held, never read.
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
    /// Inside another attempt on this thread, which holds the lock.
    Nested,
}

impl<'a> Attempt<'a> {
    fn begin(gate: &'a AttemptGate, alone: bool) -> Attempt<'a> {
        if IN_ATTEMPT.get() {
            return Attempt::Nested;
        }
        IN_ATTEMPT.set(true);
        // The lock guards no data, so a panic in another attempt leaves
        // nothing inconsistent behind: poisoning is ignored.
        if alone {
            Attempt::Alone(gate.0.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Attempt::Shared(gate.0.read().unwrap_or_else(|e| e.into_inner()))
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !matches!(self, Attempt::Nested) {
            IN_ATTEMPT.set(false);
        }
    }
}

/// Runs `body` in a fresh transaction and commits it, again on every
/// conflict (with backoff), at most `policy.attempts_max` times. The body's
/// own errors end the loop at once, without committing.
///
/// After `policy.alone_after` conflicts the remaining attempts run alone
/// among the transactions on `engine` (the backoff sleeps stay outside), so
/// a slow operation is not starved by fresh ones from this process. Other
/// processes on the same store can still win against it; the backoff and
/// the attempt bound cover those.
pub fn retry<T, E: TxnError>(
    engine: &dyn KvEngine,
    policy: &RetryPolicy,
    mut body: impl FnMut(&mut Txn<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let mut backoff = policy.backoff_first;
    // Jitter so that colliding clients do not retry in lockstep; seeded per
    // call from the clock and a process-wide counter.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut jitter =
        (nanos ^ CALLS.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)) | 1;
    let mut attempt = 1;
    loop {
        let attempt_guard = Attempt::begin(engine.gate(), attempt > policy.alone_after.max(1));
        let mut txn = Txn::new(engine);
        let result = match body(&mut txn) {
            Ok(value) => txn.commit().map(|()| value).map_err(E::from),
            // The body's own error (ENOENT, EEXIST, ...) may come from a torn
            // view: it counts only if what the body read was consistent.
            Err(e) if !e.is_conflict() => match txn.validate() {
                Ok(()) => Err(e),
                Err(kv) => Err(E::from(kv)),
            },
            Err(e) => Err(e),
        };
        // What the attempt held of local sessions goes with it, before any
        // backoff (meta::local).
        super::local::end_attempt(result.is_ok());
        drop(attempt_guard);
        if matches!(&result, Err(e) if e.is_conflict()) {
            crate::metrics::counters::kv_conflict();
            if attempt >= policy.attempts_max.max(1) {
                crate::metrics::counters::kv_gave_up();
            }
        }
        match result {
            Err(e) if e.is_conflict() && attempt < policy.attempts_max.max(1) => {
                attempt += 1;
                if policy.sleep {
                    jitter ^= jitter << 13;
                    jitter ^= jitter >> 7;
                    jitter ^= jitter << 17;
                    // Anywhere in [0, backoff]: full jitter spreads best.
                    let nanos = backoff.as_nanos() as u64;
                    std::thread::sleep(Duration::from_nanos(jitter % (nanos + 1)));
                }
                backoff = (backoff * 2).min(policy.backoff_max);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::meta::mem::MemEngine;
    use crate::meta::MetaError;

    const HOT: &[u8] = b"hot";

    fn put(engine: &MemEngine, key: &[u8], value: &[u8]) {
        let mut txn = Txn::new(engine);
        txn.put(key.to_vec(), value.to_vec());
        txn.commit().unwrap();
    }

    /// A read-only transaction of one key needs no validation: its one get
    /// was the store at one instant, and it commits even if the key
    /// changed since. Two keys read must still be one state.
    #[test]
    fn only_a_read_only_transaction_of_one_key_skips_validation() {
        let engine = MemEngine::new();
        put(&engine, b"a", b"1");
        put(&engine, b"b", b"1");
        let mut one = Txn::new(&engine);
        assert_eq!(one.get(b"a").unwrap(), Some(b"1".to_vec()));
        put(&engine, b"a", b"2");
        one.commit().unwrap();

        let mut two = Txn::new(&engine);
        two.get(b"a").unwrap();
        two.get(b"b").unwrap();
        put(&engine, b"b", b"2");
        assert!(matches!(two.commit(), Err(KvError::Conflict)));

        let mut scanned = Txn::new(&engine);
        scanned.scan(b"a", b"c", 10).unwrap();
        put(&engine, b"a", b"3");
        assert!(matches!(scanned.commit(), Err(KvError::Conflict)));

        let mut writes = Txn::new(&engine);
        writes.get(b"a").unwrap();
        put(&engine, b"a", b"4");
        writes.put(b"c".to_vec(), b"1".to_vec());
        assert!(matches!(writes.commit(), Err(KvError::Conflict)));
    }

    /// Reads HOT and writes it back plus one.
    fn bump(txn: &mut Txn<'_>) -> Result<u64, MetaError> {
        let n = match txn.get(HOT)? {
            Some(b) => u64::from_be_bytes(b.try_into().unwrap()),
            None => 0,
        };
        txn.put(HOT.to_vec(), (n + 1).to_be_bytes().to_vec());
        Ok(n + 1)
    }

    /// A slow operation against two threads that bump the same key as fast
    /// as they can. Each attempt's body reads HOT and then watches the
    /// engine for a newer version of HOT than the one it read, that is for
    /// a rival's commit after the read:
    /// - an attempt that shares the gate with the rivals waits for that
    ///   commit (the rivals never sleep, so it comes), and so conflicts for
    ///   certain, whatever the scheduler does;
    /// - an attempt that should run alone (after `alone_after` conflicts)
    ///   watches for [`ALONE_WATCH`]: a rival commit then would mean the
    ///   gate let it in, and the attempt would conflict.
    ///
    /// Returns the outcome and the number of attempts.
    fn starved(alone_after: u32) -> (Result<u64, MetaError>, u32) {
        let engine = Arc::new(MemEngine::new());
        let rival_commits = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        // The rivals never run alone themselves: one waiting for the write
        // side would stall the other behind the operation's attempt, which
        // waits for a rival's commit.
        let fast = RetryPolicy {
            sleep: false,
            attempts_max: u32::MAX,
            alone_after: u32::MAX,
            ..RetryPolicy::default()
        };
        let rivals: Vec<_> = (0..2)
            .map(|_| {
                let (engine, rival_commits, done, fast) =
                    (engine.clone(), rival_commits.clone(), done.clone(), fast.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        retry(engine.as_ref(), &fast, bump).unwrap();
                        rival_commits.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // The rivals are running before the operation starts.
        while rival_commits.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        let policy = RetryPolicy {
            attempts_max: 12,
            backoff_first: Duration::from_micros(10),
            backoff_max: Duration::from_micros(100),
            sleep: true,
            alone_after,
        };
        let version_of_hot = || engine.get(HOT).unwrap().map(|(_, v)| v);
        let attempts = AtomicU32::new(0);
        let outcome = retry(engine.as_ref(), &policy, |txn| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let n = bump(txn)?;
            // The version this attempt's read recorded.
            let read = txn.reads.get(HOT).copied().flatten();
            let alone = attempt > alone_after;
            let watch = if alone { ALONE_WATCH } else { RIVAL_DEADLINE };
            let deadline = Instant::now() + watch;
            while version_of_hot() == read {
                if Instant::now() >= deadline {
                    assert!(alone, "no rival committed within {RIVAL_DEADLINE:?}");
                    break;
                }
                std::thread::yield_now();
            }
            Ok(n)
        });
        done.store(true, Ordering::SeqCst);
        for r in rivals {
            r.join().unwrap();
        }
        (outcome, attempts.into_inner())
    }

    /// How long an attempt that should be alone watches for a rival's
    /// commit. Under load a broken gate may go unnoticed in a round (the
    /// rivals were not scheduled); a working gate never fails the test.
    const ALONE_WATCH: Duration = Duration::from_millis(200);
    /// A bound on waiting for a rival that never sleeps to commit: only a
    /// hung rival reaches it.
    const RIVAL_DEADLINE: Duration = Duration::from_secs(60);

    #[test]
    fn a_starved_operation_runs_alone_and_commits() {
        // Never alone: the rivals win every round and the bound is hit.
        let (outcome, attempts) = starved(u32::MAX);
        assert!(
            matches!(outcome, Err(MetaError::Kv(KvError::Conflict))),
            "{outcome:?}"
        );
        assert_eq!(attempts, 12);
        // Alone after 3 conflicts: the 4th attempt has no rival and commits.
        let (outcome, attempts) = starved(3);
        assert!(outcome.is_ok(), "{outcome:?} after {attempts} attempts");
        assert_eq!(attempts, 4);
    }
}
