//! Open-file sessions kept in this process ([`MetaConfig::local_sessions`]):
//! an open is recorded here, not in the store, until the file loses its
//! last link while open. Only then are its sessions written to the store
//! (by the transaction that unlinks it), so that the orphan lives on and is
//! deleted at its last close, exactly as if every open had been recorded.
//!
//! Sound only for the store's one client (an embedded mount): another
//! client's unlink could not see these sessions. After a crash they are
//! gone with the process, which is what a restart does to a client's
//! sessions anyway; what was written (orphans and their sessions) is
//! reaped as before.
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
//! [`MetaConfig::local_sessions`]: super::MetaConfig::local_sessions

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

use super::kv::{KvError, Txn};
use super::MetaError;

/// Stripes inodes are spread over.
const STRIPES: usize = 64;

/// A handle and whether the store has it as a session yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
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
    /// Handle `handle` of `ino`, if open.
    fn find(&mut self, ino: u64, handle: u64) -> Option<&mut Handle> {
        self.open.get_mut(&ino)?.iter_mut().find(|h| h.handle == handle)
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

/// This client's open handles (module docs).
#[derive(Debug)]
pub struct LocalSessions {
    client: u64,
    stripes: Box<[Stripe]>,
}

/// What the current thread's transaction attempt holds and will mark.
struct Attempt {
    sessions: Arc<LocalSessions>,
    /// The stripe held, if any.
    held: Option<usize>,
    /// Handles the attempt wrote to the store, marked when it commits.
    written: Vec<(u64, u64)>,
}

thread_local! {
    static ATTEMPT: RefCell<Option<Attempt>> = const { RefCell::new(None) };
}

fn lock(m: &Mutex<StripeState>) -> MutexGuard<'_, StripeState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalSessions {
    /// Sessions of `client`.
    pub fn new(client: u64) -> LocalSessions {
        LocalSessions {
            client,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    fn stripe_of(ino: u64) -> usize {
        (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % STRIPES
    }

    /// The stripe of `ino`, locked, once no other thread holds it.
    fn settled(&self, ino: u64) -> MutexGuard<'_, StripeState> {
        self.stripes[Self::stripe_of(ino)].settled()
    }

    /// Records an open handle of `ino`, not in the store.
    pub fn register(&self, ino: u64, handle: u64) {
        self.register_as(ino, handle, false);
    }

    /// Records an open handle of `ino` that the store has (or is about to
    /// have) as a session: a tmpfile's.
    pub fn register_in_store(&self, ino: u64, handle: u64) {
        self.register_as(ino, handle, true);
    }

    fn register_as(&self, ino: u64, handle: u64, in_store: bool) {
        self.settled(ino)
            .open
            .entry(ino)
            .or_default()
            .push(Handle { handle, in_store });
    }

    /// Forgets a handle: `Some(true)` if the store has it as a session
    /// (to be closed there), `Some(false)` if not, `None` if it is not one
    /// of these.
    pub fn unregister(&self, ino: u64, handle: u64) -> Option<bool> {
        let mut state = self.settled(ino);
        let handles = state.open.get_mut(&ino)?;
        let at = handles.iter().position(|h| h.handle == handle)?;
        let gone = handles.swap_remove(at);
        if handles.is_empty() {
            state.open.remove(&ino);
        }
        Some(gone.in_store)
    }

    /// Notes that the store has `handle` of `ino` as a session.
    pub fn mark_in_store(&self, ino: u64, handle: u64) {
        if let Some(h) = self.settled(ino).find(ino, handle) {
            h.in_store = true;
        }
    }

    /// Whether `handle` is an open handle of `ino`.
    pub fn has(&self, ino: u64, handle: u64) -> bool {
        self.settled(ino)
            .open
            .get(&ino)
            .is_some_and(|hs| hs.iter().any(|h| h.handle == handle))
    }

    /// Forgets every handle (the client ends; the store's sessions are
    /// closed there).
    pub fn clear(&self) {
        for stripe in self.stripes.iter() {
            lock(&stripe.state).open.clear();
        }
    }

    /// Open handles held, for tests and logs.
    pub fn count(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| lock(&s.state).open.values().map(Vec::len).sum::<usize>())
            .sum()
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
            })
        });
    }
}

/// Ends this thread's attempt: if it `committed`, the handles it wrote are
/// marked as in the store; either way the stripe it held is let go.
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
        for &(ino, handle) in &attempt.written {
            if let Some(h) = state.find(ino, handle) {
                h.in_store = true;
            }
        }
    }
    state.holder = None;
    drop(state);
    stripe.released.notify_all();
}

/// For a transaction about to leave `ino` without links: holds its stripe
/// until the attempt ends and writes this client's open handles of it that
/// the store lacks as sessions, so the store sees them. Returns whether
/// `ino` is open, or `None` without local sessions (then only the store
/// can tell). With them the table here knows every session of the store:
/// this client's are all in it (those it wrote, and its tmpfiles'), and
/// the store has no other client's (the one-client rule, and
/// [`super::Meta::reap_others`] at start), so no scan of the store is
/// needed.
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
        let client = attempt.sessions.client;
        let mut any = false;
        for h in state.open.get(&ino).into_iter().flatten() {
            any = true;
            if !h.in_store {
                super::ops::put_session(txn, ino, client, h.handle);
                attempt.written.push((ino, h.handle));
            }
        }
        Ok(Some(any))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_come_and_go() {
        let s = LocalSessions::new(7);
        s.register(5, 1);
        s.register(5, 2);
        assert!(s.has(5, 1) && s.has(5, 2) && !s.has(5, 3) && !s.has(6, 1));
        s.mark_in_store(5, 2);
        assert_eq!(s.unregister(5, 1), Some(false));
        assert_eq!(s.unregister(5, 2), Some(true));
        assert_eq!(s.unregister(5, 2), None);
        assert_eq!(s.count(), 0);
    }

    /// An open waits while an unlink holds its inode's stripe, and goes on
    /// when the unlink's attempt ends.
    #[test]
    fn a_held_stripe_makes_opens_wait() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let engine = crate::meta::mem::MemEngine::new();
        let s = Arc::new(LocalSessions::new(7));
        s.register(5, 1);
        begin_attempt(Some(&s));
        let mut txn = Txn::new(&engine);
        assert_eq!(write_sessions_of(&mut txn, 5).unwrap(), Some(true));
        let done = Arc::new(AtomicBool::new(false));
        let opener = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                s.register(5, 2);
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
        assert_eq!(s.unregister(5, 1), Some(true));
        assert_eq!(s.unregister(5, 2), Some(false));
    }
}
