//! A bounded pool of registered buffers, reused.
//!
//! Registering memory pins it and programs the NIC's translation tables:
//! far too slow for every request. The pool keeps what it registered and
//! hands it out again. Buffers come in power-of-two sizes from
//! [`MIN_BUF`]; a request takes the smallest that fits. What is
//! registered never exceeds the pool's budget: when a size is missing and
//! the budget is spent, idle buffers of other sizes are deregistered to
//! make room, and when every byte is in use the request waits for one to
//! come back, until its deadline.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::{Fabric, Region, RemoteBuf};

/// The smallest buffer, in bytes.
pub const MIN_BUF: usize = 4 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// See the module docs.
#[derive(Debug)]
pub struct Pool {
    fabric: Arc<dyn Fabric>,
    remote: bool,
    budget: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes registered (idle, in use, or being registered).
    registered: usize,
    /// Idle buffers by size.
    idle: BTreeMap<usize, Vec<Box<dyn Region>>>,
    /// Registrations made, for tests and reports.
    registrations: u64,
}

impl State {
    fn idle_bytes(&self) -> usize {
        self.idle.iter().map(|(size, list)| size * list.len()).sum()
    }
}

/// A buffer of the pool, given back on drop.
#[derive(Debug)]
pub struct Buf {
    pool: Arc<Pool>,
    region: Option<Box<dyn Region>>,
    len: usize,
}

impl Pool {
    /// A pool of at most `budget` registered bytes on `fabric`, open to
    /// the connected peers' RDMA if `remote` (a client's: the services
    /// it calls read and write them) or local only (a service's).
    pub fn new(fabric: Arc<dyn Fabric>, budget: usize, remote: bool) -> Arc<Pool> {
        Arc::new(Pool {
            fabric,
            remote,
            budget: budget.max(MIN_BUF),
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    /// The size class of a `len`-byte request.
    fn class(len: usize) -> usize {
        len.max(MIN_BUF).next_power_of_two()
    }

    /// The largest request the pool can ever serve.
    pub fn max_len(&self) -> usize {
        // The largest power of two within the budget.
        1 << (usize::BITS - 1 - self.budget.leading_zeros())
    }

    /// The device the buffers are registered on.
    pub fn fabric(&self) -> &dyn Fabric {
        self.fabric.as_ref()
    }

    /// Bytes registered now.
    pub fn registered(&self) -> usize {
        lock(&self.state).registered
    }

    /// Registrations made so far.
    pub fn registrations(&self) -> u64 {
        lock(&self.state).registrations
    }

    /// A buffer of at least `len` bytes, waiting for one to come back
    /// until `deadline` when the budget is in use.
    pub fn take(self: &Arc<Self>, len: usize, deadline: Instant) -> io::Result<Buf> {
        let size = Pool::class(len);
        if size > self.max_len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes is more than the largest buffer of the RDMA pool ({})",
                    self.max_len()
                ),
            ));
        }
        let mut state = lock(&self.state);
        loop {
            if let Some(region) = state.idle.get_mut(&size).and_then(Vec::pop) {
                return Ok(self.buf(region, len));
            }
            // Room for a new one, made by deregistering idle ones of other
            // sizes if need be (smallest first: the least useful).
            if state.registered - state.idle_bytes() + size <= self.budget {
                while state.registered + size > self.budget {
                    let smallest = *state.idle.keys().next().expect("idle bytes make room");
                    let list = state.idle.get_mut(&smallest).expect("listed");
                    drop(list.pop());
                    if list.is_empty() {
                        state.idle.remove(&smallest);
                    }
                    state.registered -= smallest;
                }
                state.registered += size;
                state.registrations += 1;
                drop(state);
                return match self.fabric.register(size, self.remote) {
                    Ok(region) => Ok(self.buf(region, len)),
                    Err(e) => {
                        lock(&self.state).registered -= size;
                        self.freed.notify_all();
                        Err(e)
                    }
                };
            }
            // A larger idle one serves too.
            if let Some((&bigger, _)) = state.idle.range(size..).find(|(_, list)| !list.is_empty()) {
                let region = state.idle.get_mut(&bigger).and_then(Vec::pop).expect("not empty");
                return Ok(self.buf(region, len));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "all {} bytes of the RDMA pool in use; none came back in time",
                        self.budget
                    ),
                ));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn buf(self: &Arc<Self>, region: Box<dyn Region>, len: usize) -> Buf {
        Buf {
            pool: self.clone(),
            region: Some(region),
            len,
        }
    }
}

impl Buf {
    /// The registered memory (at least [`Buf::len`] bytes).
    pub fn region(&self) -> &dyn Region {
        self.region.as_deref().expect("held until drop")
    }

    /// Bytes asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none were asked for.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What a peer needs to reach the first `len` bytes.
    pub fn remote(&self, len: usize) -> Option<RemoteBuf> {
        self.region().remote(0, len)
    }

    /// Copies `data` in at the start.
    pub fn fill(&self, data: &[u8]) {
        self.region().write(0, data);
    }

    /// The first `len` bytes, copied out.
    pub fn to_vec(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.region().read(0, &mut out);
        out
    }

    /// Gives the buffer up instead of back: a work request on it may still
    /// be in flight (its wait timed out), so it must never be handed out
    /// again. It is deregistered, which stops the device from reaching it.
    pub fn discard(mut self) {
        let region = self.region.take().expect("held until drop");
        let size = region.len();
        drop(region);
        lock(&self.pool.state).registered -= size;
        self.pool.freed.notify_all();
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(region) = self.region.take() {
            lock(&self.pool.state)
                .idle
                .entry(region.len())
                .or_default()
                .push(region);
            self.pool.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fake::FakeFabric;
    use super::*;

    fn pool(budget: usize) -> Arc<Pool> {
        Pool::new(Arc::new(FakeFabric::new()), budget, true)
    }

    #[test]
    fn buffers_come_back_and_are_reused_not_registered_again() {
        let pool = pool(1 << 20);
        let a = pool.take(100, Instant::now()).unwrap();
        assert_eq!(a.region().len(), MIN_BUF);
        assert!(a.remote(100).is_some());
        a.fill(b"hello");
        assert_eq!(a.to_vec(5), b"hello");
        drop(a);
        for _ in 0..10 {
            let b = pool.take(4000, Instant::now()).unwrap();
            assert_eq!(b.len(), 4000);
        }
        assert_eq!(pool.registrations(), 1);
        assert_eq!(pool.registered(), MIN_BUF);
    }

    #[test]
    fn the_budget_bounds_what_is_registered_and_a_taker_waits_for_a_return() {
        let pool = pool(256 << 10);
        let a = pool.take(128 << 10, Instant::now()).unwrap();
        let _b = pool.take(128 << 10, Instant::now()).unwrap();
        let full = pool.take(1, Instant::now() + Duration::from_millis(20));
        assert_eq!(full.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(pool.registered(), 256 << 10);
        let waiter = {
            let pool = pool.clone();
            // Bounded: fails the test rather than hanging it.
            std::thread::spawn(move || {
                pool.take(1, Instant::now() + Duration::from_secs(30))
                    .map(|b| b.len())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        // The 128 KiB buffer given back serves the small request.
        assert_eq!(waiter.join().unwrap().unwrap(), 1);
        assert!(pool.registered() <= 256 << 10);
    }

    #[test]
    fn idle_buffers_of_other_sizes_make_room_for_a_missing_size() {
        let pool = pool(64 << 10);
        let small: Vec<_> = (0..16)
            .map(|_| pool.take(MIN_BUF, Instant::now()).unwrap())
            .collect();
        drop(small);
        assert_eq!(pool.registered(), 64 << 10);
        let big = pool.take(64 << 10, Instant::now()).unwrap();
        assert_eq!(big.region().len(), 64 << 10);
        assert_eq!(pool.registered(), 64 << 10);
    }

    #[test]
    fn a_request_larger_than_the_budget_is_refused_at_once() {
        let pool = pool(1 << 20);
        assert_eq!(pool.max_len(), 1 << 20);
        let e = pool
            .take((1 << 20) + 1, Instant::now() + Duration::from_secs(30))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_discarded_buffer_is_never_handed_out_again() {
        let pool = pool(1 << 20);
        let a = pool.take(MIN_BUF, Instant::now()).unwrap();
        a.discard();
        assert_eq!(pool.registered(), 0);
        let _b = pool.take(MIN_BUF, Instant::now()).unwrap();
        assert_eq!(pool.registrations(), 2);
    }
}
