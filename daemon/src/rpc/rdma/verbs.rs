//! A real RDMA device behind [`Fabric`] (feature `rdma`): kmod-shim's
//! verbs (libibverbs), RoCE v2, reliable-connected queue pairs.
//!
//! # Waiting for one's own completion
//!
//! A queue pair has one completion queue, and many threads post on it at
//! once. Each [`QueuePair::read`] and [`QueuePair::write`] takes a credit
//! (the window is the queue pair's depth), posts one signaled work request
//! with a fresh id, and waits for that id's completion. Whoever waits and
//! finds no one polling becomes the poller: it polls outside the lock,
//! hands each completion to its waiter through the `waiting` map and wakes
//! them all. A poll that finds nothing backs off: a few yields, then naps
//! from 16 µs doubling to 1 ms (woken early when another thread delivers).
//! No thread polls while no one waits, and no waiter sleeps longer than
//! 1 ms between looks.
//!
//! # Failure
//!
//! A failed completion (a bad key, a dead peer) breaks the queue pair:
//! [`QueuePair::is_broken`] says so, every waiter wakes and fails, and
//! every later call fails at once. The device has then failed the queue
//! pair too (reliable connected), and flushes what else was in flight.
//!
//! A deadline passing fails the call with `TimedOut` and breaks the queue
//! pair as well: it is moved to the error state, which makes the device
//! stop and flush its work requests. Until that flush, the request that
//! overstayed may still complete: for a READ, the device may still write
//! the local span; for a WRITE, still read it. Its memory stays registered
//! and mapped meanwhile (kmod-shim's queue pair holds the region until the
//! completion is polled or the queue pair destroyed), so nothing unsound
//! can happen; but until the queue pair is dropped the region must carry
//! nothing else (a pool discards it rather than reuse it), and what a
//! timed-out READ left in it is not the peer's data. The caller drops the
//! connection, as for any broken queue pair, and with it the queue pair.
//!
//! A credit not coming back by the deadline fails the call with `TimedOut`
//! too, without breaking anything: none of its work is in flight.
//!
//! # Finding a region's registration
//!
//! [`QueuePair::read`] gets the local region as `&dyn Region`, which has no
//! way back to the registration (its local key). Each fabric keeps a table
//! of its live regions by address, and a queue pair looks the region up
//! there; a region of another fabric (another protection domain, or a fake)
//! is refused.
//!
//! # Tests
//!
//! The waiting (`Waiters`) is unit-tested against a completion queue the
//! tests fill, on any machine. The device path is tested by
//! `examples/rdma_probe.rs` on soft-RoCE in a QEMU guest
//! (`scripts/rdma-guest/run-probe.sh`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use kmod_shim::verbs::{
    self, Access, Completion, Gid, MemoryRegion, ProtectionDomain, QpAddress, RcQueuePair, RdmaOp,
    RemoteSpan, VerbsError,
};

use super::{Credits, Endpoint, Fabric, Moved, QueuePair, Region, RemoteBuf};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Empty polls answered by yielding the CPU before napping.
const POLL_YIELDS: u32 = 4;
/// The first nap after the yields.
const NAP_MIN: Duration = Duration::from_micros(16);
/// The longest nap: how long a waiter may miss its completion by.
const NAP_MAX: Duration = Duration::from_millis(1);

/// How long to nap after `idle` empty polls in a row (past the yields).
fn nap(idle: u32) -> Duration {
    let doublings = idle.saturating_sub(POLL_YIELDS + 1).min(10);
    (NAP_MIN * (1 << doublings)).min(NAP_MAX)
}

/// A fabric's live regions by the address of their [`VerbsRegion`], so a
/// queue pair handed a `&dyn Region` finds its registration.
#[derive(Debug, Default)]
struct Registrations {
    by_addr: Mutex<HashMap<usize, Weak<MemoryRegion>>>,
}

impl Registrations {
    fn find(&self, region: &dyn Region) -> Option<Arc<MemoryRegion>> {
        let key = (region as *const dyn Region).cast::<()>() as usize;
        lock(&self.by_addr).get(&key).and_then(Weak::upgrade)
    }
}

/// The names of the RDMA devices there are (`rxe0`, `mlx5_0`); empty when
/// there are none or libibverbs cannot list them (no RDMA in the kernel).
pub fn available() -> Vec<String> {
    verbs::device_names().unwrap_or_default()
}

/// An RDMA device: its protection domain and the port's RoCE v2 GID.
pub struct VerbsFabric {
    pd: ProtectionDomain,
    gid: Gid,
    regions: Arc<Registrations>,
}

impl fmt::Debug for VerbsFabric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerbsFabric")
            .field("device", &self.pd.device_name())
            .field("gid_index", &self.gid.index)
            .field("gid", &std::net::Ipv6Addr::from(self.gid.raw))
            .field("regions", &lock(&self.regions.by_addr).len())
            .finish()
    }
}

impl VerbsFabric {
    /// Opens `device` (`rxe0`), or the first device there is, with its
    /// port's RoCE v2 IPv4-mapped GID.
    pub fn open(device: Option<&str>) -> io::Result<VerbsFabric> {
        let dev = verbs::Device::open(device)?;
        let gid = dev.roce_v2_gid()?;
        let pd = dev.alloc_pd()?;
        Ok(VerbsFabric {
            pd,
            gid,
            regions: Arc::default(),
        })
    }

    /// The GID peers reach this device by (`::ffff:a.b.c.d`).
    pub fn gid(&self) -> [u8; 16] {
        self.gid.raw
    }
}

impl Fabric for VerbsFabric {
    fn device(&self) -> String {
        self.pd.device_name().to_owned()
    }

    fn register(&self, len: usize, remote: bool) -> io::Result<Box<dyn Region>> {
        let access = if remote {
            Access::LocalAndRemote
        } else {
            Access::Local
        };
        let region = Box::new(VerbsRegion {
            mr: Arc::new(self.pd.register(len, access)?),
            regions: self.regions.clone(),
        });
        // The box does not move again: its address is the key until drop.
        lock(&self.regions.by_addr).insert(region.key(), Arc::downgrade(&region.mr));
        Ok(region)
    }

    /// The window is `depth` or what the device allows, the smaller.
    fn queue_pair(&self, depth: usize) -> io::Result<Box<dyn QueuePair>> {
        let qp = self
            .pd
            .create_rc_qp(u32::try_from(depth).unwrap_or(u32::MAX), self.gid)?;
        Ok(Box::new(VerbsQueuePair::new(qp, self.regions.clone())))
    }
}

/// Registered memory of a [`VerbsFabric`].
struct VerbsRegion {
    mr: Arc<MemoryRegion>,
    regions: Arc<Registrations>,
}

impl VerbsRegion {
    fn key(&self) -> usize {
        self as *const VerbsRegion as usize
    }
}

impl fmt::Debug for VerbsRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VerbsRegion").field(&self.mr).finish()
    }
}

impl Drop for VerbsRegion {
    fn drop(&mut self) {
        lock(&self.regions.by_addr).remove(&self.key());
    }
}

impl Region for VerbsRegion {
    fn len(&self) -> usize {
        self.mr.len()
    }

    fn remote(&self, offset: usize, len: usize) -> Option<RemoteBuf> {
        let len_u32 = u32::try_from(len).ok()?;
        let (addr, rkey) = self.mr.remote_span(offset, len)?;
        Some(RemoteBuf {
            addr,
            rkey,
            len: len_u32,
        })
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        self.mr.read_at(offset, out);
    }

    fn write(&self, offset: usize, data: &[u8]) {
        self.mr.write_at(offset, data);
    }
}

/// Where a queue pair's completions come from: its completion queue on the
/// device, or a test's stand-in.
trait CompletionSource: Send + Sync {
    /// Takes the completions there are, without waiting.
    fn poll(&self, out: &mut Vec<Completion>) -> Result<usize, VerbsError>;
    /// Stops the device's work on the queue pair: what is in flight is
    /// flushed, and nothing new is taken.
    fn fail(&self) -> Result<(), VerbsError>;
}

impl CompletionSource for RcQueuePair {
    fn poll(&self, out: &mut Vec<Completion>) -> Result<usize, VerbsError> {
        RcQueuePair::poll(self, out)
    }

    fn fail(&self) -> Result<(), VerbsError> {
        self.set_error()
    }
}

/// What the waiters of one queue pair share.
#[derive(Debug, Default)]
struct WaitState {
    next_wr_id: u64,
    /// Work requests waited for: `None` while in flight, then how it went.
    waiting: HashMap<u64, Option<io::Result<()>>>,
    /// Why it broke, once it has.
    broken: Option<String>,
    /// Whether a waiter is polling the completion queue now.
    polling: bool,
}

/// The callers of one queue pair waiting for their own completions (see
/// the module docs): work request ids, who polls, who is woken, and
/// whether the queue pair broke.
#[derive(Debug)]
struct Waiters {
    /// For messages.
    qpn: u32,
    state: Mutex<WaitState>,
    /// Completions were handed out, or the queue pair broke.
    delivered: Condvar,
}

impl Waiters {
    fn new(qpn: u32) -> Waiters {
        Waiters {
            qpn,
            state: Mutex::new(WaitState::default()),
            delivered: Condvar::new(),
        }
    }

    fn broken_error(&self, why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("RDMA queue pair {} broken: {why}", self.qpn),
        )
    }

    /// Fails if the queue pair broke.
    fn check(&self) -> io::Result<()> {
        match &lock(&self.state).broken {
            Some(why) => Err(self.broken_error(why)),
            None => Ok(()),
        }
    }

    fn is_broken(&self) -> bool {
        lock(&self.state).broken.is_some()
    }

    /// A fresh work request id, waited for from now on.
    fn begin(&self) -> io::Result<u64> {
        let mut state = lock(&self.state);
        if let Some(why) = &state.broken {
            return Err(self.broken_error(why));
        }
        let wr_id = state.next_wr_id;
        state.next_wr_id += 1;
        state.waiting.insert(wr_id, None);
        Ok(wr_id)
    }

    /// `wr_id` was never posted: no one waits for it.
    fn cancel(&self, wr_id: u64) {
        lock(&self.state).waiting.remove(&wr_id);
    }

    /// Breaks the queue pair for `why` (unless it already is); the error a
    /// caller gets for it.
    fn break_with(&self, source: &dyn CompletionSource, why: String) -> io::Error {
        let mut state = lock(&self.state);
        self.break_locked(&mut state, source, why);
        let why = state.broken.as_deref().unwrap_or_default();
        self.broken_error(why)
    }

    /// Breaks it (once: the first reason stays), stopping the device's work
    /// on it so that what is in flight is flushed, and wakes every waiter.
    fn break_locked(&self, state: &mut WaitState, source: &dyn CompletionSource, why: String) {
        if state.broken.is_none() {
            let why = match source.fail() {
                Ok(()) => why,
                Err(e) => format!("{why} (and {e})"),
            };
            state.broken = Some(why);
        }
        self.delivered.notify_all();
    }

    /// Hands each completion to its waiter; a failed one breaks the queue
    /// pair.
    fn deliver(&self, state: &mut WaitState, source: &dyn CompletionSource, done: &mut Vec<Completion>) {
        for c in done.drain(..) {
            let result = match c.result {
                Ok(_) => Ok(()),
                Err(e) => {
                    if state.broken.is_none() {
                        self.break_locked(state, source, e.to_string());
                    }
                    let why = match (&state.broken, e.is_flush()) {
                        (Some(root), true) => format!("{e}; queue pair broken: {root}"),
                        _ => e.to_string(),
                    };
                    Err(io::Error::new(io::ErrorKind::ConnectionAborted, why))
                }
            };
            // A waiter that gave up (deadline, broken) left no slot.
            if let Some(slot) = state.waiting.get_mut(&c.wr_id) {
                *slot = Some(result);
            }
        }
        self.delivered.notify_all();
    }

    /// Waits for `wr_id`'s completion until `deadline`, polling `source`
    /// when no one else does. `what` names the work request in messages.
    fn wait(
        &self,
        source: &dyn CompletionSource,
        wr_id: u64,
        what: &str,
        deadline: Instant,
    ) -> io::Result<()> {
        let mut state = lock(&self.state);
        let mut idle = 0u32;
        let mut done = Vec::new();
        loop {
            match state.waiting.get_mut(&wr_id).map(Option::take) {
                Some(Some(result)) => {
                    state.waiting.remove(&wr_id);
                    return result;
                }
                Some(None) => {}
                None => {
                    return Err(io::Error::other(format!(
                        "{what} (work request {wr_id}): not waited for"
                    )));
                }
            }
            if let Some(why) = &state.broken {
                let e = self.broken_error(why);
                state.waiting.remove(&wr_id);
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                state.waiting.remove(&wr_id);
                let why = format!("{what} (work request {wr_id}) not completed by its deadline");
                self.break_locked(&mut state, source, why.clone());
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            let left = deadline - now;
            if state.polling {
                state = self
                    .delivered
                    .wait_timeout(state, left.min(NAP_MAX))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            state.polling = true;
            drop(state);
            let polled = source.poll(&mut done);
            state = lock(&self.state);
            state.polling = false;
            match polled {
                Ok(0) => {
                    idle += 1;
                    if idle <= POLL_YIELDS {
                        drop(state);
                        std::thread::yield_now();
                        state = lock(&self.state);
                    } else {
                        state = self
                            .delivered
                            .wait_timeout(state, left.min(nap(idle)))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
                Ok(_) => {
                    idle = 0;
                    self.deliver(&mut state, source, &mut done);
                }
                Err(e) => self.break_locked(&mut state, source, format!("polling its completion queue: {e}")),
            }
        }
    }
}

/// Where [`VerbsQueuePair::connect`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    Never,
    /// Being connected, or failed to (it is then broken).
    Tried,
    Connected,
}

/// A reliable-connected queue pair of a [`VerbsFabric`] (see the module
/// docs for how callers share it and how it fails).
pub struct VerbsQueuePair {
    /// Destroyed first (before the regions it may still hold go).
    qp: RcQueuePair,
    regions: Arc<Registrations>,
    credits: Credits,
    connection: Mutex<Connection>,
    waiters: Waiters,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

impl fmt::Debug for VerbsQueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.waiters.state);
        f.debug_struct("VerbsQueuePair")
            .field("qp", &self.qp)
            .field("credits", &self.credits)
            .field("connection", &*lock(&self.connection))
            .field("waiting", &state.waiting.len())
            .field("broken", &state.broken)
            .finish()
    }
}

fn op_name(op: RdmaOp) -> &'static str {
    match op {
        RdmaOp::Read => "READ",
        RdmaOp::Write => "WRITE",
    }
}

impl VerbsQueuePair {
    fn new(qp: RcQueuePair, regions: Arc<Registrations>) -> VerbsQueuePair {
        VerbsQueuePair {
            credits: Credits::new(qp.depth() as usize),
            waiters: Waiters::new(qp.local().qpn),
            qp,
            regions,
            connection: Mutex::new(Connection::Never),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        }
    }

    /// One RDMA `op`: credit, post, wait.
    fn run(
        &self,
        op: RdmaOp,
        local: &dyn Region,
        offset: usize,
        remote: RemoteBuf,
        deadline: Instant,
    ) -> io::Result<()> {
        self.waiters.check()?;
        if *lock(&self.connection) != Connection::Connected {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "RDMA queue pair not connected",
            ));
        }
        let what = format!("RDMA {} of {} bytes", op_name(op), remote.len);
        let mr = self.regions.find(local).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}: the local region is not registered on this queue pair's device"),
            )
        })?;
        if remote.len == 0 {
            // Nothing to move: no work request (a device may refuse an
            // empty one), but the span still has to be inside.
            if offset > mr.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what} at {offset} of a {}-byte region", mr.len()),
                ));
            }
            return Ok(());
        }
        let _credit = self.credits.take(deadline)?;
        let wr_id = self.waiters.begin()?;
        let span = RemoteSpan {
            addr: remote.addr,
            rkey: remote.rkey,
            len: remote.len,
        };
        if let Err(e) = self.qp.post(op, wr_id, &mr, offset, span) {
            self.waiters.cancel(wr_id);
            return Err(match e {
                // Refused before posting: the caller's arguments, or a queue
                // pair that broke meanwhile (its reason is the better one).
                VerbsError::Invalid(_) => self.waiters.check().err().unwrap_or_else(|| e.into()),
                e => self
                    .waiters
                    .break_with(&self.qp, format!("posting an {what}: {e}")),
            });
        }
        self.waiters.wait(&self.qp, wr_id, &what, deadline)?;
        let moved = match op {
            RdmaOp::Read => &self.read_bytes,
            RdmaOp::Write => &self.written_bytes,
        };
        moved.fetch_add(u64::from(remote.len), Ordering::Relaxed);
        Ok(())
    }
}

impl QueuePair for VerbsQueuePair {
    fn endpoint(&self) -> Endpoint {
        let local = self.qp.local();
        Endpoint {
            gid: local.gid,
            qpn: local.qpn,
            psn: local.psn,
        }
    }

    fn connect(&self, peer: &Endpoint) -> io::Result<()> {
        {
            let mut connection = lock(&self.connection);
            if *connection != Connection::Never {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "RDMA queue pair already connected (or connecting)",
                ));
            }
            *connection = Connection::Tried;
        }
        let peer = QpAddress {
            gid: peer.gid,
            qpn: peer.qpn,
            psn: peer.psn,
        };
        match self.qp.connect(&peer) {
            Ok(()) => {
                *lock(&self.connection) = Connection::Connected;
                Ok(())
            }
            Err(e) => {
                // Left half-way between states: unusable.
                let message = e.to_string();
                self.waiters
                    .break_with(&self.qp, format!("connecting: {message}"));
                Err(e.into())
            }
        }
    }

    fn read(
        &self,
        local: &dyn Region,
        offset: usize,
        remote: RemoteBuf,
        deadline: Instant,
    ) -> io::Result<()> {
        self.run(RdmaOp::Read, local, offset, remote, deadline)
    }

    fn write(
        &self,
        local: &dyn Region,
        offset: usize,
        remote: RemoteBuf,
        deadline: Instant,
    ) -> io::Result<()> {
        self.run(RdmaOp::Write, local, offset, remote, deadline)
    }

    fn is_broken(&self) -> bool {
        self.waiters.is_broken()
    }

    fn moved(&self) -> Moved {
        Moved {
            read: self.read_bytes.load(Ordering::Relaxed),
            written: self.written_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use kmod_shim::verbs::CompletionError;

    use super::*;

    /// `ibv_wc_status` values the tests complete with.
    const REM_ACCESS_ERR: u32 = 10;
    const WR_FLUSH_ERR: u32 = 5;

    /// A completion queue a test fills: what a device would have
    /// completed, and how often it was polled.
    #[derive(Default)]
    struct TestQueue {
        ready: Mutex<Vec<Completion>>,
        polls: AtomicU64,
        failed: AtomicBool,
    }

    impl TestQueue {
        fn complete(&self, wr_id: u64, status: u32) {
            let result = match status {
                0 => Ok(0),
                status => Err(CompletionError {
                    wr_id,
                    status,
                    vendor_err: 0,
                }),
            };
            lock(&self.ready).push(Completion { wr_id, result });
        }
    }

    impl CompletionSource for TestQueue {
        fn poll(&self, out: &mut Vec<Completion>) -> Result<usize, VerbsError> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            let mut ready = lock(&self.ready);
            let n = ready.len().min(32);
            out.extend(ready.drain(..n));
            Ok(n)
        }

        fn fail(&self) -> Result<(), VerbsError> {
            self.failed.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    fn within(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    /// Waits (bounded) until `n` work requests are waited for.
    fn until_waiting(waiters: &Waiters, n: usize) {
        let deadline = within(30);
        loop {
            let waiting = lock(&waiters.state).waiting.len();
            if waiting >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {waiting} of {n} waiters arrived");
            std::thread::yield_now();
        }
    }

    #[test]
    fn listing_devices_never_fails() {
        // No RDMA here (or some): a list either way, and a missing device
        // is an error, not a panic.
        let names = available();
        assert!(!names.iter().any(|n| n == "no-such-rdma-device"));
        let e = VerbsFabric::open(Some("no-such-rdma-device")).unwrap_err();
        assert!(
            e.to_string().contains("no-such-rdma-device") || e.to_string().contains("ibv_get_device_list")
        );
    }

    #[test]
    fn naps_grow_from_the_minimum_to_the_maximum() {
        assert_eq!(nap(POLL_YIELDS + 1), NAP_MIN);
        assert_eq!(nap(POLL_YIELDS + 2), NAP_MIN * 2);
        assert_eq!(nap(1000), NAP_MAX);
        assert!((POLL_YIELDS + 1..100).all(|i| nap(i) <= nap(i + 1)));
    }

    #[test]
    fn each_waiter_returns_at_its_own_completion_whoever_polls() {
        const N: usize = 16;
        let (waiters, queue) = (Waiters::new(1), TestQueue::default());
        let ids: Vec<u64> = (0..N).map(|_| waiters.begin().unwrap()).collect();
        // When each id was completed, and when its waiter returned.
        let completed_at = Mutex::new(HashMap::new());
        let returned_at = Mutex::new(HashMap::new());
        std::thread::scope(|s| {
            for &id in &ids {
                let (waiters, queue, returned_at) = (&waiters, &queue, &returned_at);
                s.spawn(move || {
                    waiters.wait(queue, id, "test", within(30)).unwrap();
                    lock(returned_at).insert(id, Instant::now());
                });
            }
            until_waiting(&waiters, N);
            // The device completes them last first, one at a time.
            for &id in ids.iter().rev() {
                lock(&completed_at).insert(id, Instant::now());
                queue.complete(id, 0);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let (completed_at, returned_at) = (lock(&completed_at), lock(&returned_at));
        for id in &ids {
            assert!(
                returned_at[id] >= completed_at[id],
                "waiter {id} returned before its completion"
            );
        }
        assert!(!waiters.is_broken());
        assert!(lock(&waiters.state).waiting.is_empty());
    }

    #[test]
    fn a_failed_completion_fails_every_waiter_at_once_and_every_later_call() {
        let (waiters, queue) = (Waiters::new(1), TestQueue::default());
        let ids: Vec<u64> = (0..8).map(|_| waiters.begin().unwrap()).collect();
        let start = Instant::now();
        let results: Vec<io::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|&id| {
                    let (waiters, queue) = (&waiters, &queue);
                    s.spawn(move || waiters.wait(queue, id, "test", within(30)))
                })
                .collect();
            until_waiting(&waiters, ids.len());
            queue.complete(ids[3], REM_ACCESS_ERR);
            // The device flushes one of the others too.
            queue.complete(ids[5], WR_FLUSH_ERR);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Well before the 30 s deadline.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        for (id, r) in ids.iter().zip(&results) {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{id}: {e}");
            assert!(e.to_string().contains("IBV_WC_REM_ACCESS_ERR"), "{id}: {e}");
        }
        assert!(waiters.is_broken());
        assert!(
            queue.failed.load(Ordering::SeqCst),
            "the queue pair was not stopped"
        );
        assert_eq!(
            waiters.begin().unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
        assert!(lock(&waiters.state).waiting.is_empty());
    }

    #[test]
    fn a_deadline_passing_times_out_breaks_and_stops_the_queue_pair() {
        let (waiters, queue) = (Waiters::new(1), TestQueue::default());
        let id = waiters.begin().unwrap();
        let other = waiters.begin().unwrap();
        let e = waiters
            .wait(
                &queue,
                id,
                "RDMA READ",
                Instant::now() + Duration::from_millis(30),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string().contains("RDMA READ (work request 0) not completed"),
            "{e}"
        );
        assert!(waiters.is_broken());
        assert!(queue.failed.load(Ordering::SeqCst));
        // Another waiter fails at once, with the reason.
        let e = waiters.wait(&queue, other, "test", within(30)).unwrap_err();
        assert!(e.to_string().contains("not completed by its deadline"), "{e}");
        // The late completion of the abandoned request is dropped.
        queue.complete(id, 0);
        assert!(waiters.check().is_err());
    }

    #[test]
    fn waiting_on_a_silent_queue_naps_instead_of_spinning() {
        let (waiters, queue) = (Waiters::new(1), TestQueue::default());
        let id = waiters.begin().unwrap();
        let wait = Duration::from_millis(300);
        let _ = waiters.wait(&queue, id, "test", Instant::now() + wait);
        // A spinning poller polls millions of times in 300 ms; napping
        // up to 1 ms, about 300 (a slow machine oversleeps: fewer).
        let polls = queue.polls.load(Ordering::Relaxed);
        assert!(polls < 2_000, "{polls} polls in {wait:?}");
    }
}
