//! Open-file sessions kept in this process ([`MetaConfig::local_sessions`],
//! or a metadata service's table shared by its clients,
//! [`MetaConfig::shared_sessions`]): an open is recorded here, not in the
//! store, until the file loses its last link while open. Only then are its
//! sessions written to the store (by the transaction that unlinks it), so
//! that the orphan lives on and is deleted at its last close, exactly as if
//! every open had been recorded.
//!
//! Sound only where this process is the store's one user: an embedded
//! mount, or `xfused meta` on the embedded engine (which locks its store to
//! one process), whose table holds the handles of every client it serves.
//! Another process's unlink could not see these sessions. After a crash
//! of a mount they are gone with it, which is what a restart does to a
//! client's sessions anyway; what was written (orphans and their sessions)
//! is reaped as before. After a restart of a service, its clients live on
//! and hold files open: see [grace](LocalSessions::begin_grace).
//!
//! The race to close: an open finds the file linked, and an unlink removes
//! the last link before the open is recorded. Both go through the inode's
//! stripe here. An unlink *holds* the stripe ([`write_sessions_of`]) from
//! the moment it asks which sessions to write until its transaction has
//! committed or failed ([`end_attempt`]); an open registers its handle on
//! the stripe (waiting while it is held) before it reads the inode. So
//! either the unlink sees the handle and writes it as a session, or the
//! open reads the inode after the unlink and fails with `ENOENT` (or finds
//! an orphan, and records its session in the store itself).
//!
//! A thread holds at most one stripe: asked for a second one held by
//! another thread, it gives up with a conflict and its transaction is
//! retried from the start, having let go of the first, so two threads
//! never wait for each other.
//!
//! The table holds at most [`HANDLES_MAX`] handles. Past that, opens record
//! their sessions in the store as a shared store's do, and from then on an
//! unlink that finds no handle here also looks in the store.
//!
//! [`MetaConfig::local_sessions`]: super::MetaConfig::local_sessions
//! [`MetaConfig::shared_sessions`]: super::MetaConfig::shared_sessions

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use super::kv::{KvError, Txn};
use super::MetaError;

/// Stripes inodes are spread over.
const STRIPES: usize = 64;

/// Handles a table holds at most (about 40 bytes each).
pub const HANDLES_MAX: usize = 1 << 20;

/// A client's handle and whether the store has it as a session yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    client: u64,
    handle: u64,
    in_store: bool,
}

#[derive(Debug, Default)]
struct StripeState {
    /// The thread whose unlink holds the stripe.
    holder: Option<ThreadId>,
    /// Open handles by inode.
    open: HashMap<u64, Vec<Handle>>,
}

impl StripeState {
    /// `client`'s handle `handle` of `ino`, if open.
    fn find(&mut self, client: u64, ino: u64, handle: u64) -> Option<&mut Handle> {
        self.open
            .get_mut(&ino)?
            .iter_mut()
            .find(|h| h.client == client && h.handle == handle)
    }

    fn remove(&mut self, ino: u64, keep: impl Fn(&Handle) -> bool) -> Vec<Handle> {
        let Some(handles) = self.open.get_mut(&ino) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        handles.retain(|h| {
            keep(h) || {
                gone.push(*h);
                false
            }
        });
        if handles.is_empty() {
            self.open.remove(&ino);
        }
        gone
    }
}

#[derive(Debug, Default)]
struct Stripe {
    state: Mutex<StripeState>,
    /// Signalled when the holder lets go.
    released: Condvar,
}

impl Stripe {
    /// The state, locked, once no thread but this one holds the stripe.
    fn settled(&self) -> MutexGuard<'_, StripeState> {
        let me = std::thread::current().id();
        let mut state = lock(&self.state);
        while state.holder.is_some_and(|h| h != me) {
            state = self.released.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state
    }
}

/// Open handles of the clients of this process (module docs).
#[derive(Debug)]
pub struct LocalSessions {
    stripes: Box<[Stripe]>,
    /// Handles held.
    count: AtomicUsize,
    /// Once set, the store may have sessions this table does not know.
    overflowed: AtomicBool,
    /// The client whose sessions hold the files unlinked during a grace
    /// period; zero outside one.
    grace_owner: AtomicU64,
    /// The next of those sessions' handles.
    grace_next: AtomicU64,
}

impl Default for LocalSessions {
    fn default() -> Self {
        LocalSessions::new()
    }
}

/// What the current thread's transaction attempt holds and will mark.
struct Attempt {
    sessions: Arc<LocalSessions>,
    /// The stripe held, if any.
    held: Option<usize>,
    /// Handles the attempt wrote to the store, marked when it commits.
    written: Vec<(u64, u64, u64)>,
    /// A grace session it wrote (ino, owner, handle), added when it commits.
    grace: Option<(u64, u64, u64)>,
}

thread_local! {
    static ATTEMPT: RefCell<Option<Attempt>> = const { RefCell::new(None) };
}

fn lock(m: &Mutex<StripeState>) -> MutexGuard<'_, StripeState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalSessions {
    /// An empty table.
    pub fn new() -> LocalSessions {
        LocalSessions {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            count: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            grace_owner: AtomicU64::new(0),
            grace_next: AtomicU64::new(1),
        }
    }

    fn stripe_of(ino: u64) -> usize {
        (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % STRIPES
    }

    /// The stripe of `ino`, locked, once no other thread holds it.
    fn settled(&self, ino: u64) -> MutexGuard<'_, StripeState> {
        self.stripes[Self::stripe_of(ino)].settled()
    }

    /// Records `client`'s open handle of `ino`, not in the store; `false`
    /// if the table is full (the caller records it in the store instead).
    #[must_use]
    pub fn register(&self, client: u64, ino: u64, handle: u64) -> bool {
        self.register_as(client, ino, handle, false)
    }

    /// Records an open handle of `ino` that the store has (or is about to
    /// have) as a session: a tmpfile's. Full, it is left to the store.
    pub fn register_in_store(&self, client: u64, ino: u64, handle: u64) {
        let _ = self.register_as(client, ino, handle, true);
    }

    fn register_as(&self, client: u64, ino: u64, handle: u64, in_store: bool) -> bool {
        if self.count.fetch_add(1, Ordering::Relaxed) >= HANDLES_MAX {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if !self.overflowed.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "{HANDLES_MAX} files are open: further opens are recorded in the store, and unlinks look there too"
                );
            }
            return false;
        }
        let mut state = self.settled(ino);
        let handles = state.open.entry(ino).or_default();
        if handles.iter().any(|h| h.client == client && h.handle == handle) {
            self.count.fetch_sub(1, Ordering::Relaxed);
        } else {
            handles.push(Handle {
                client,
                handle,
                in_store,
            });
        }
        true
    }

    /// Forgets a handle: `Some(true)` if the store has it as a session
    /// (to be closed there), `Some(false)` if not, `None` if it is not one
    /// of these.
    pub fn unregister(&self, client: u64, ino: u64, handle: u64) -> Option<bool> {
        let gone = self
            .settled(ino)
            .remove(ino, |h| h.client != client || h.handle != handle);
        self.count.fetch_sub(gone.len(), Ordering::Relaxed);
        gone.first().map(|h| h.in_store)
    }

    /// Notes that the store has `client`'s `handle` of `ino` as a session.
    pub fn mark_in_store(&self, client: u64, ino: u64, handle: u64) {
        if let Some(h) = self.settled(ino).find(client, ino, handle) {
            h.in_store = true;
        }
    }

    /// Whether `handle` is an open handle of `ino` by `client`.
    pub fn has(&self, client: u64, ino: u64, handle: u64) -> bool {
        self.settled(ino).find(client, ino, handle).is_some()
    }

    /// Forgets every handle of `client` (it ended, or was reaped: the
    /// store's sessions are closed there). Returns how many.
    pub fn forget_client(&self, client: u64) -> usize {
        let mut forgotten = 0;
        for stripe in self.stripes.iter() {
            let mut state = stripe.settled();
            let inos: Vec<u64> = state.open.keys().copied().collect();
            for ino in inos {
                forgotten += state.remove(ino, |h| h.client != client).len();
            }
        }
        self.count.fetch_sub(forgotten, Ordering::Relaxed);
        forgotten
    }

    /// Open handles held, for tests and logs.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Starts a grace period: a service restarted while its clients held
    /// files open that only its table knew. Until [`LocalSessions::end_grace`]
    /// (those clients have told it their handles again, or their leases ran
    /// out), a file losing its last link with no handle known here is kept
    /// as an orphan held by a session of `owner` (the service's own client),
    /// so a client yet to tell cannot lose it. Those sessions are in the
    /// store: a service that dies meanwhile leaves them to be reaped with
    /// its client.
    pub fn begin_grace(&self, owner: u64) {
        assert_ne!(owner, 0, "client ids start at 1");
        self.grace_owner.store(owner, Ordering::SeqCst);
    }

    /// Whether a grace period runs.
    pub fn in_grace(&self) -> bool {
        self.grace_owner.load(Ordering::SeqCst) != 0
    }

    /// Ends the grace period and returns the (ino, handle) of the owner's
    /// sessions it wrote, forgotten here: the caller closes them in the
    /// store, deleting the files nobody else holds.
    pub fn end_grace(&self) -> Vec<(u64, u64)> {
        let owner = self.grace_owner.swap(0, Ordering::SeqCst);
        if owner == 0 {
            return Vec::new();
        }
        let mut held = Vec::new();
        // Each stripe once its holder (an unlink that may have seen the
        // grace period) has let go, so every grace session is here.
        for stripe in self.stripes.iter() {
            let mut state = stripe.settled();
            let inos: Vec<u64> = state.open.keys().copied().collect();
            for ino in inos {
                for h in state.remove(ino, |h| h.client != owner) {
                    held.push((ino, h.handle));
                }
            }
        }
        self.count.fetch_sub(held.len(), Ordering::Relaxed);
        held
    }

    /// Notes that the store may hold sessions of linked files this table
    /// does not know (found at a service's start): unlinks look there too.
    pub fn set_overflowed(&self) {
        self.overflowed.store(true, Ordering::SeqCst);
    }
}

/// Starts a transaction attempt of a client with local sessions (`None`:
/// without) on this thread. [`super::kv::retry`] ends each attempt
/// ([`end_attempt`]) as soon as it has committed or failed, so a stripe is
/// never held across a backoff or a wait for another attempt.
pub fn begin_attempt(sessions: Option<&Arc<LocalSessions>>) {
    end_attempt(false);
    if let Some(sessions) = sessions {
        ATTEMPT.with(|a| {
            *a.borrow_mut() = Some(Attempt {
                sessions: sessions.clone(),
                held: None,
                written: Vec::new(),
                grace: None,
            })
        });
    }
}

/// Ends this thread's attempt: if it `committed`, the handles it wrote are
/// marked as in the store (and a grace session added); either way the
/// stripe it held is let go.
pub fn end_attempt(committed: bool) {
    let Some(attempt) = ATTEMPT.with(|a| a.borrow_mut().take()) else {
        return;
    };
    let Some(held) = attempt.held else {
        return;
    };
    let stripe = &attempt.sessions.stripes[held];
    let mut state = lock(&stripe.state);
    if committed {
        for &(client, ino, handle) in &attempt.written {
            if let Some(h) = state.find(client, ino, handle) {
                h.in_store = true;
            }
        }
        if let Some((ino, owner, handle)) = attempt.grace {
            attempt.sessions.count.fetch_add(1, Ordering::Relaxed);
            state.open.entry(ino).or_default().push(Handle {
                client: owner,
                handle,
                in_store: true,
            });
        }
    }
    state.holder = None;
    drop(state);
    stripe.released.notify_all();
}

/// For a transaction about to leave `ino` without links: holds its stripe
/// until the attempt ends and writes the open handles of it that the store
/// lacks as sessions, so the store sees them. Returns whether `ino` is
/// open, or `None` when only the store can tell (no table here, or one
/// that overflowed and knows no handle of `ino`). Otherwise the table
/// knows every session of the store: each client's are all in it (those
/// written, and tmpfiles'), and the store has no other process's (the
/// one-process rule, [`super::Meta::reap_others`] at a mount's start, and
/// the check a service makes at its start), so no scan of the store is
/// needed. In a grace period a file with no handle known is kept too.
pub fn write_sessions_of(txn: &mut Txn<'_>, ino: u64) -> Result<Option<bool>, MetaError> {
    ATTEMPT.with(|a| {
        let mut slot = a.borrow_mut();
        let Some(attempt) = slot.as_mut() else {
            return Ok(None);
        };
        let index = LocalSessions::stripe_of(ino);
        let stripe = &attempt.sessions.stripes[index];
        let me = std::thread::current().id();
        let state = match attempt.held {
            Some(h) if h == index => lock(&stripe.state),
            // Never wait holding a stripe: start over instead.
            Some(_) if lock(&stripe.state).holder.is_some_and(|h| h != me) => {
                return Err(MetaError::Kv(KvError::Conflict));
            }
            Some(_) => {
                return Err(MetaError::Corrupt(
                    "a transaction left two files without links".into(),
                ))
            }
            None => {
                let mut state = stripe.settled();
                state.holder = Some(me);
                attempt.held = Some(index);
                state
            }
        };
        let mut any = false;
        for h in state.open.get(&ino).into_iter().flatten() {
            any = true;
            if !h.in_store {
                super::ops::put_session(txn, ino, h.client, h.handle);
                attempt.written.push((h.client, ino, h.handle));
            }
        }
        if any {
            return Ok(Some(true));
        }
        if attempt.sessions.overflowed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // Read while the stripe is held: a grace period ending waits for
        // it, so it finds this session if one is written.
        let owner = attempt.sessions.grace_owner.load(Ordering::SeqCst);
        if owner != 0 {
            let handle = attempt.sessions.grace_next.fetch_add(1, Ordering::Relaxed);
            super::ops::put_session(txn, ino, owner, handle);
            attempt.grace = Some((ino, owner, handle));
            return Ok(Some(true));
        }
        Ok(Some(false))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_come_and_go() {
        let s = LocalSessions::new();
        assert!(s.register(7, 5, 1));
        assert!(s.register(7, 5, 2));
        assert!(s.register(8, 5, 1));
        // Registering again is harmless (a client telling its handles twice).
        assert!(s.register(7, 5, 1));
        assert_eq!(s.count(), 3);
        assert!(s.has(7, 5, 1) && s.has(7, 5, 2) && !s.has(7, 5, 3) && !s.has(7, 6, 1) && !s.has(9, 5, 1));
        s.mark_in_store(7, 5, 2);
        assert_eq!(s.unregister(7, 5, 1), Some(false));
        assert_eq!(s.unregister(7, 5, 2), Some(true));
        assert_eq!(s.unregister(7, 5, 2), None);
        assert!(
            s.has(8, 5, 1),
            "another client's handle of the same number is its own"
        );
        assert_eq!(s.forget_client(8), 1);
        assert_eq!(s.count(), 0);
    }

    /// An open waits while an unlink holds its inode's stripe, and goes on
    /// when the unlink's attempt ends.
    #[test]
    fn a_held_stripe_makes_opens_wait() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let engine = crate::meta::mem::MemEngine::new();
        let s = Arc::new(LocalSessions::new());
        assert!(s.register(7, 5, 1));
        begin_attempt(Some(&s));
        let mut txn = Txn::new(&engine);
        assert_eq!(write_sessions_of(&mut txn, 5).unwrap(), Some(true));
        let done = Arc::new(AtomicBool::new(false));
        let opener = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                assert!(s.register(7, 5, 2));
                done.store(true, Ordering::SeqCst);
            })
        };
        // The opener cannot finish while the stripe is held; give it time
        // to try (nothing here depends on how much).
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst), "registered through a held stripe");
        end_attempt(true);
        opener.join().unwrap();
        // The handle written is marked; the later one is not.
        assert_eq!(s.unregister(7, 5, 1), Some(true));
        assert_eq!(s.unregister(7, 5, 2), Some(false));
    }
}
