//! Running a bench's iterations: split over threads, with untimed pauses,
//! and the daemon's CPU time metered around them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::procfs::{clock_ticks_per_second, Usage};

/// One thread's share of a workload: its own descriptors, buffers and
/// random state, kept across criterion's calls.
pub trait Worker: Send {
    /// Performs one operation (timed). An error (or a result other than the
    /// workload expects, e.g. a short directory listing) means the bench
    /// measured something else than its name says: it is counted in
    /// [`Failures`] and the bench is reported invalid.
    fn op(&mut self) -> Result<(), String>;

    /// Called before each operation; may block, and the time it takes is
    /// not counted (measured by the caller, so oversleeping on a loaded
    /// machine is not charged to the operations). For workloads that must
    /// let a kernel cache expire.
    fn pause(&mut self) {}
}

/// Failed operations of one bench, over all its threads.
#[derive(Debug, Default)]
pub struct Failures {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Failures {
    fn add(&self, error: String) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        }
    }

    /// How many operations failed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first failure's message.
    pub fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs `iters` operations split as evenly as possible over `workers`, one
/// thread each, and returns the time they took: the longest busy time of
/// any worker (its wall time from a common start, minus its pauses). With
/// one worker that is simply the elapsed time of the loop, without pauses.
/// Failed operations are counted in `failures` and the run goes on.
///
/// Threads start together at a barrier; spawning them is not timed.
pub fn run_split<W: Worker>(workers: &mut [W], iters: u64, failures: &Failures) -> Duration {
    match workers {
        [] => Duration::ZERO,
        [only] => run_one(only, iters, None, failures),
        _ => {
            let n = workers.len() as u64;
            let barrier = Barrier::new(workers.len());
            std::thread::scope(|scope| {
                let handles: Vec<_> = workers
                    .iter_mut()
                    .enumerate()
                    .map(|(i, worker)| {
                        let share = iters / n + u64::from((i as u64) < iters % n);
                        let barrier = &barrier;
                        scope.spawn(move || run_one(worker, share, Some(barrier), failures))
                    })
                    .collect();
                let mut longest = Duration::ZERO;
                for handle in handles {
                    match handle.join() {
                        Ok(busy) => longest = longest.max(busy),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                longest
            })
        }
    }
}

fn run_one<W: Worker>(
    worker: &mut W,
    iters: u64,
    barrier: Option<&Barrier>,
    failures: &Failures,
) -> Duration {
    if let Some(barrier) = barrier {
        barrier.wait();
    }
    let start = Instant::now();
    let mut paused = Duration::ZERO;
    for _ in 0..iters {
        let pause_start = Instant::now();
        worker.pause();
        paused += pause_start.elapsed();
        if let Err(e) = worker.op() {
            failures.add(e);
        }
    }
    start.elapsed().saturating_sub(paused)
}

/// Accumulates a daemon's CPU time over the measured sections of one bench
/// (warm-up included: the per-operation cost is the same), to report daemon
/// CPU time per operation.
#[derive(Debug, Default)]
pub struct Meter {
    pid: Option<u32>,
    cpu_ticks: u64,
    ops: u64,
    last: Option<Usage>,
}

impl Meter {
    /// A meter for the daemon `pid` (`None`: nothing to meter, e.g. native).
    pub fn new(pid: Option<u32>) -> Meter {
        Meter {
            pid,
            ..Meter::default()
        }
    }

    /// Runs `section`, which performs `ops` operations, and adds the daemon
    /// CPU time it caused. Returns what `section` returned.
    pub fn measure<T>(&mut self, ops: u64, section: impl FnOnce() -> T) -> T {
        let before = self.pid.and_then(|pid| Usage::of(pid).ok());
        let result = section();
        if let (Some(pid), Some(before)) = (self.pid, before) {
            if let Ok(after) = Usage::of(pid) {
                self.cpu_ticks += after.cpu_ticks.saturating_sub(before.cpu_ticks);
                self.ops += ops;
                self.last = Some(after);
            }
        }
        result
    }

    /// Operations metered so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Daemon CPU seconds over the metered sections (`None` without a daemon).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid?;
        Some(self.cpu_ticks as f64 / clock_ticks_per_second() as f64)
    }

    /// Daemon CPU microseconds per operation (`None` without a daemon or ops).
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        let seconds = self.cpu_seconds()?;
        (self.ops > 0).then(|| seconds * 1e6 / self.ops as f64)
    }

    /// The daemon's usage at the end of the last metered section.
    pub fn last_usage(&self) -> Option<Usage> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    struct Counting<'a> {
        done: &'a AtomicU64,
        mine: u64,
        pause_each: Duration,
    }

    impl Worker for Counting<'_> {
        fn op(&mut self) -> Result<(), String> {
            self.mine += 1;
            let done = self.done.fetch_add(1, Ordering::Relaxed);
            if done % 4 == 3 {
                return Err(format!("op {done} failed"));
            }
            Ok(())
        }
        fn pause(&mut self) {
            if !self.pause_each.is_zero() {
                std::thread::sleep(self.pause_each);
            }
        }
    }

    #[test]
    fn iterations_are_split_exactly() {
        let done = AtomicU64::new(0);
        let mut workers: Vec<_> = (0..3)
            .map(|_| Counting {
                done: &done,
                mine: 0,
                pause_each: Duration::ZERO,
            })
            .collect();
        let failures = Failures::default();
        run_split(&mut workers, 10, &failures);
        assert_eq!(done.load(Ordering::Relaxed), 10);
        assert_eq!(failures.count(), 2, "ops 3 and 7 fail");
        assert!(failures.first().is_some_and(|f| f.starts_with("op ")));
        let shares: Vec<u64> = workers.iter().map(|w| w.mine).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        run_split(&mut workers, 1, &failures);
        assert_eq!(done.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn pauses_are_not_timed() {
        let done = AtomicU64::new(0);
        let mut workers = vec![Counting {
            done: &done,
            mine: 0,
            pause_each: Duration::from_millis(100),
        }];
        let busy = run_split(&mut workers, 5, &Failures::default());
        // Five increments take microseconds; half the pauses leaves room
        // for a loaded machine preempting the loop between them.
        assert!(
            busy < Duration::from_millis(250),
            "busy {busy:?} counted the 500 ms of pauses"
        );
    }

    #[test]
    fn meter_without_daemon() {
        let mut m = Meter::new(None);
        assert_eq!(m.measure(10, || 7), 7);
        assert_eq!(m.ops(), 0);
        assert_eq!(m.cpu_us_per_op(), None);
    }

    #[test]
    fn meter_on_self() {
        let mut m = Meter::new(Some(std::process::id()));
        m.measure(1000, || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(30) {
                std::hint::black_box(0u64);
            }
        });
        assert_eq!(m.ops(), 1000);
        assert!(m.cpu_us_per_op().is_some());
        assert!(m.last_usage().is_some());
    }
}
