//! An in-process stand-in for an RDMA device, for tests on machines
//! without one: fabrics made from one [`FakeNet`] reach each other's
//! registered memory by key, with a device's checks (remote access
//! allowed, span inside the registration, queue pair connected and not
//! broken) and faults a test can cause: a cut link (every work request
//! fails) or a silent one (none completes).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use super::{Credits, Endpoint, Fabric, Moved, QueuePair, Region, RemoteBuf};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fake registrations start at this address, so an address is never a
/// small offset by mistake.
const BASE: u64 = 0x7f00_0000_0000;

/// What connects fake fabrics: their memory registrations and queue pairs.
#[derive(Debug, Default)]
pub struct FakeNet {
    regions: Mutex<HashMap<u32, Arc<FakeMemory>>>,
    qps: Mutex<HashMap<u32, Arc<QpState>>>,
    next_key: AtomicU32,
}

#[derive(Debug)]
struct FakeMemory {
    bytes: Mutex<Vec<u8>>,
    addr: u64,
    remote: bool,
    node: u32,
}

#[derive(Debug, Default)]
struct QpState {
    node: u32,
    peer: Mutex<Option<u32>>,
    broken: AtomicBool,
}

/// See the module docs. Each fabric is one node of its [`FakeNet`].
#[derive(Debug)]
pub struct FakeFabric {
    net: Arc<FakeNet>,
    node: u32,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    /// Every work request fails at once, as to a dead peer's queue pair.
    cut: AtomicBool,
    /// No work request completes: each waits out its deadline.
    silent: AtomicBool,
    read: AtomicU64,
    written: AtomicU64,
}

impl Default for FakeFabric {
    fn default() -> FakeFabric {
        FakeFabric::new()
    }
}

impl FakeFabric {
    /// A fabric alone on a net of its own.
    pub fn new() -> FakeFabric {
        FakeFabric::on(&Arc::new(FakeNet::default()))
    }

    /// A fabric on `net`, reaching the others on it.
    pub fn on(net: &Arc<FakeNet>) -> FakeFabric {
        FakeFabric {
            node: net.next_key.fetch_add(1, Ordering::Relaxed) + 1,
            net: net.clone(),
            faults: Arc::default(),
        }
    }

    /// From now on, every work request this fabric's queue pairs post
    /// fails (`true`), as when the peer died; or works again (`false`).
    pub fn cut(&self, cut: bool) {
        self.faults.cut.store(cut, Ordering::SeqCst);
    }

    /// From now on, no work request completes (`true`): each waits out
    /// its deadline; or they complete again (`false`).
    pub fn silence(&self, silent: bool) {
        self.faults.silent.store(silent, Ordering::SeqCst);
    }

    /// Bytes this fabric's queue pairs moved.
    pub fn moved(&self) -> Moved {
        Moved {
            read: self.faults.read.load(Ordering::Relaxed),
            written: self.faults.written.load(Ordering::Relaxed),
        }
    }
}

impl Fabric for FakeFabric {
    fn device(&self) -> String {
        format!("fake{}", self.node)
    }

    fn register(&self, len: usize, remote: bool) -> io::Result<Box<dyn Region>> {
        let key = self.net.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        let memory = Arc::new(FakeMemory {
            bytes: Mutex::new(vec![0; len]),
            addr: BASE + ((key as u64) << 24),
            remote,
            node: self.node,
        });
        lock(&self.net.regions).insert(key, memory.clone());
        Ok(Box::new(FakeRegion {
            net: self.net.clone(),
            key,
            memory,
        }))
    }

    fn queue_pair(&self, depth: usize) -> io::Result<Box<dyn QueuePair>> {
        let qpn = self.net.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        let state = Arc::new(QpState {
            node: self.node,
            ..QpState::default()
        });
        lock(&self.net.qps).insert(qpn, state.clone());
        Ok(Box::new(FakeQp {
            net: self.net.clone(),
            qpn,
            state,
            credits: Credits::new(depth),
            faults: self.faults.clone(),
            moved: Mutex::new(Moved::default()),
        }))
    }
}

/// A fake registration.
#[derive(Debug)]
pub struct FakeRegion {
    net: Arc<FakeNet>,
    key: u32,
    memory: Arc<FakeMemory>,
}

impl Drop for FakeRegion {
    fn drop(&mut self) {
        lock(&self.net.regions).remove(&self.key);
    }
}

impl Region for FakeRegion {
    fn len(&self) -> usize {
        lock(&self.memory.bytes).len()
    }

    fn remote(&self, offset: usize, len: usize) -> Option<RemoteBuf> {
        let end = offset.checked_add(len)?;
        (self.memory.remote && end <= self.len()).then(|| RemoteBuf {
            addr: self.memory.addr + offset as u64,
            rkey: self.key,
            len: len as u32,
        })
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        out.copy_from_slice(&lock(&self.memory.bytes)[offset..offset + out.len()]);
    }

    fn write(&self, offset: usize, data: &[u8]) {
        lock(&self.memory.bytes)[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// A fake queue pair.
#[derive(Debug)]
pub struct FakeQp {
    net: Arc<FakeNet>,
    qpn: u32,
    state: Arc<QpState>,
    credits: Credits,
    faults: Arc<Faults>,
    moved: Mutex<Moved>,
}

impl Drop for FakeQp {
    fn drop(&mut self) {
        lock(&self.net.qps).remove(&self.qpn);
    }
}

fn failed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, format!("RDMA {what}"))
}

impl FakeQp {
    /// Checks what a device checks before moving bytes, breaking the
    /// queue pair on failure: the peer's registration for `remote`.
    fn reach(&self, remote: RemoteBuf, deadline: Instant) -> io::Result<Arc<FakeMemory>> {
        if self.faults.silent.load(Ordering::SeqCst) {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            self.state.broken.store(true, Ordering::SeqCst);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "RDMA work request: no completion in time",
            ));
        }
        let check = || -> io::Result<Arc<FakeMemory>> {
            if self.state.broken.load(Ordering::SeqCst) {
                return Err(failed("queue pair broken by an earlier failure"));
            }
            if self.faults.cut.load(Ordering::SeqCst) {
                return Err(failed("transport retry counter exceeded (peer gone)"));
            }
            let peer = lock(&self.state.peer).ok_or_else(|| failed("queue pair not connected"))?;
            let peer_node = lock(&self.net.qps)
                .get(&peer)
                .filter(|p| !p.broken.load(Ordering::SeqCst))
                .map(|p| p.node)
                .ok_or_else(|| failed("transport retry counter exceeded (peer gone)"))?;
            let memory = lock(&self.net.regions)
                .get(&remote.rkey)
                .cloned()
                .filter(|m| m.node == peer_node && m.remote)
                .ok_or_else(|| failed("remote access error (bad key)"))?;
            let inside = remote.addr >= memory.addr
                && remote.addr - memory.addr + remote.len as u64 <= lock(&memory.bytes).len() as u64;
            if !inside {
                return Err(failed("remote access error (span outside the registration)"));
            }
            Ok(memory)
        };
        check().inspect_err(|_| self.state.broken.store(true, Ordering::SeqCst))
    }
}

impl QueuePair for FakeQp {
    fn endpoint(&self) -> Endpoint {
        let mut gid = [0; 16];
        gid[12..].copy_from_slice(&self.state.node.to_be_bytes());
        Endpoint {
            gid,
            qpn: self.qpn,
            psn: 0,
        }
    }

    fn connect(&self, peer: &Endpoint) -> io::Result<()> {
        let mut mine = lock(&self.state.peer);
        if mine.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "queue pair already connected",
            ));
        }
        if !lock(&self.net.qps).contains_key(&peer.qpn) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such queue pair"));
        }
        *mine = Some(peer.qpn);
        Ok(())
    }

    fn read(
        &self,
        local: &dyn Region,
        offset: usize,
        remote: RemoteBuf,
        deadline: Instant,
    ) -> io::Result<()> {
        let _credit = self.credits.take(deadline)?;
        let memory = self.reach(remote, deadline)?;
        let start = (remote.addr - memory.addr) as usize;
        let bytes = lock(&memory.bytes)[start..start + remote.len as usize].to_vec();
        local.write(offset, &bytes);
        lock(&self.moved).read += bytes.len() as u64;
        self.faults.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write(
        &self,
        local: &dyn Region,
        offset: usize,
        remote: RemoteBuf,
        deadline: Instant,
    ) -> io::Result<()> {
        let _credit = self.credits.take(deadline)?;
        let memory = self.reach(remote, deadline)?;
        let start = (remote.addr - memory.addr) as usize;
        let mut bytes = vec![0; remote.len as usize];
        local.read(offset, &mut bytes);
        lock(&memory.bytes)[start..start + bytes.len()].copy_from_slice(&bytes);
        lock(&self.moved).written += bytes.len() as u64;
        self.faults
            .written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn is_broken(&self) -> bool {
        self.state.broken.load(Ordering::SeqCst)
    }

    fn moved(&self) -> Moved {
        *lock(&self.moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a fake work request waits on a silent peer.
    const SHORT: Duration = Duration::from_millis(50);

    fn pair(net: &Arc<FakeNet>) -> (FakeFabric, Box<dyn QueuePair>, FakeFabric, Box<dyn QueuePair>) {
        let (a, b) = (FakeFabric::on(net), FakeFabric::on(net));
        let (qa, qb) = (a.queue_pair(4).unwrap(), b.queue_pair(4).unwrap());
        qa.connect(&qb.endpoint()).unwrap();
        qb.connect(&qa.endpoint()).unwrap();
        (a, qa, b, qb)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn reads_and_writes_move_bytes_between_registrations() {
        let net = Arc::new(FakeNet::default());
        let (a, qa, b, _qb) = pair(&net);
        let mine = a.register(64, false).unwrap();
        let theirs = b.register(64, true).unwrap();
        theirs.write(0, &[7; 64]);
        qa.read(mine.as_ref(), 0, theirs.remote(8, 16).unwrap(), soon())
            .unwrap();
        let mut got = [0; 64];
        mine.read(0, &mut got);
        assert_eq!(&got[..16], &[7; 16]);
        assert_eq!(&got[16..], &[0; 48]);
        mine.write(0, &[9; 64]);
        qa.write(mine.as_ref(), 4, theirs.remote(32, 8).unwrap(), soon())
            .unwrap();
        theirs.read(0, &mut got);
        assert_eq!(&got[32..40], &[9; 8]);
        assert_eq!(&got[40..], &[7; 24]);
        assert_eq!(qa.moved(), Moved { read: 16, written: 8 });
        assert_eq!(a.moved(), Moved { read: 16, written: 8 });
    }

    #[test]
    fn local_only_memory_cannot_be_reached_and_a_bad_key_breaks_the_pair() {
        let net = Arc::new(FakeNet::default());
        let (a, qa, b, _qb) = pair(&net);
        let mine = a.register(64, true).unwrap();
        assert!(b.register(64, false).unwrap().remote(0, 8).is_none());
        // A key the peer never gave out, and a span past the end.
        let bogus = RemoteBuf {
            addr: BASE,
            rkey: 999_999,
            len: 8,
        };
        assert!(qa.read(mine.as_ref(), 0, bogus, soon()).is_err());
        assert!(qa.is_broken());
        let (_a, qa, b, _qb) = pair(&net);
        let theirs = b.register(64, true).unwrap();
        let mut past = theirs.remote(0, 64).unwrap();
        past.len = 65;
        assert!(qa.write(mine.as_ref(), 0, past, soon()).is_err());
        assert!(qa.is_broken());
        // Its own memory is not the peer's either.
        let (a, qa, _b, _qb) = pair(&net);
        let own = a.register(64, true).unwrap();
        assert!(qa
            .read(mine.as_ref(), 0, own.remote(0, 8).unwrap(), soon())
            .is_err());
    }

    #[test]
    fn a_silent_peer_times_out_and_a_cut_one_fails_at_once() {
        let net = Arc::new(FakeNet::default());
        let (a, qa, b, _qb) = pair(&net);
        let mine = a.register(64, true).unwrap();
        let theirs = b.register(64, true).unwrap();
        a.silence(true);
        let started = Instant::now();
        let e = qa
            .read(
                mine.as_ref(),
                0,
                theirs.remote(0, 8).unwrap(),
                Instant::now() + SHORT,
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= SHORT);
        assert!(qa.is_broken());
        let (a, qa, b, _qb) = pair(&net);
        let theirs = b.register(64, true).unwrap();
        a.cut(true);
        assert!(qa
            .read(mine.as_ref(), 0, theirs.remote(0, 8).unwrap(), soon())
            .is_err());
    }
}
