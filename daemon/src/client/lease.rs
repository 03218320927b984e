//! The lease thread: renews a metadata client's lease until its owner drops
//! it. Dropping a [`Lease`] stops the thread and waits for it, so a client
//! that is gone renews nothing.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::meta::Namespace;

/// A thread renewing a lease every interval; stopped and joined on drop.
pub struct Lease {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

/// The stop flag, and the condition variable that wakes the thread from its
/// wait when it is set.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Lease {
    /// Renews `meta`'s lease every `every` (a third of the lease, so that
    /// two renewals may fail before it runs out); a failed renewal is
    /// logged, and retried at the next interval.
    pub fn start(meta: Arc<dyn Namespace>, every: Duration) -> std::io::Result<Lease> {
        Lease::spawn(every, move || {
            if let Err(e) = meta.heartbeat() {
                tracing::warn!("renewing the metadata lease: {e}");
            }
        })
    }

    /// Calls `renew` every `every`, on a thread named `lease`, until dropped.
    pub fn spawn(every: Duration, mut renew: impl FnMut() + Send + 'static) -> std::io::Result<Lease> {
        let stop = Arc::new(Stop::default());
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || loop {
                    let stopped = stop.stopped.lock().unwrap_or_else(PoisonError::into_inner);
                    let (stopped, _) = stop
                        .wake
                        .wait_timeout_while(stopped, every, |stopped| !*stopped)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    renew();
                })?
        };
        Ok(Lease {
            stop,
            thread: Some(thread),
        })
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.stop.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the lease thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use super::*;

    #[test]
    fn renews_until_dropped_then_stops() {
        let renewals = Arc::new(AtomicU64::new(0));
        let lease = {
            let renewals = renewals.clone();
            Lease::spawn(Duration::from_millis(1), move || {
                renewals.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while renewals.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "3 renewals expected, saw {}",
                renewals.load(Ordering::SeqCst)
            );
            std::thread::yield_now();
        }
        // Joins the thread: it has ended, and with it the closure holding
        // the other count of `renewals`, so no renewal can follow.
        drop(lease);
        assert_eq!(Arc::strong_count(&renewals), 1);
    }

    #[test]
    fn drop_does_not_wait_for_the_interval() {
        let lease = Lease::spawn(Duration::from_secs(3600), || {}).unwrap();
        let started = Instant::now();
        drop(lease);
        // A drop that waited for the hour would never get here; this bound
        // only has to tell "woken" from "slept the interval".
        assert!(started.elapsed() < Duration::from_secs(600));
    }
}
