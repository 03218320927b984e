//! Transport `uring`: FUSE-over-io_uring, one queue per possible CPU.
//!
//! The kernel queues each request on the queue of the CPU its caller runs
//! on, copies it into one of that queue's registered ring entries (header
//! into the 288-byte header buffer, names and write data into the payload
//! buffer) and completes the entry's pending command. A worker handles it
//! with the same dispatcher as `dev` and answers with COMMIT_AND_FETCH,
//! which sends the reply and re-arms the entry in one step.
//!
//! Workers: queues may share a thread and a ring (queue `q` goes to thread
//! `q % threads`), since a command names its queue itself. FORGET,
//! INTERRUPT and notifications still use `/dev/fuse`, so one `dev` worker
//! runs beside the rings; once they serve, it pauses after each FORGET so
//! that FORGETs arrive in batches ([`UringConfig::forget_pause`]).
//!
//! Copies: a request without payload (READ, GETATTR, READDIR, …) has its
//! reply body written straight into the entry's payload buffer, so file data
//! is read into the buffer the kernel copies from. WRITE data and names are
//! parsed in place from the payload buffer; their replies are small and are
//! built in a per-thread scratch buffer, then copied in.
//!
//! Teardown: when the connection ends (unmount, abort), the kernel completes
//! every registered entry with `-ENOTCONN`; a worker whose ring holds no
//! more entries ends. Entries handed back with an error are dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::{InHeader, OutHeader, UringReqHeader};
use kmod_shim::uring::{Completion, FuseUring, RingBackend, RingEntry};
use kmod_shim::FuseDev;
use zerocopy::{FromBytes, IntoBytes};

use super::{out_header, Error};
use crate::dispatch::{Dispatcher, Reply};
use crate::request::{Args, ParseError};

/// Settings of the `uring` transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringConfig {
    /// Ring entries per queue (requests a queue can hold at once); `0`
    /// picks [`default_queue_depth`] for the number of queues.
    pub queue_depth: usize,
    /// Worker threads; queues are spread over them. Capped at the number
    /// of queues.
    pub threads: usize,
    /// How long a worker spins on its completion queue before sleeping in
    /// the kernel (hybrid polling); zero sleeps at once.
    pub spin: Duration,
    /// How long the `/dev/fuse` worker beside the rings waits after a
    /// FORGET before reading on, so that FORGETs arrive in batches (see
    /// [`super::dev::ForgetPause`]); zero reads each at once.
    pub forget_pause: Duration,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            queue_depth: 0,
            threads: super::default_threads(),
            spin: Duration::ZERO,
            forget_pause: DEFAULT_FORGET_PAUSE,
        }
    }
}

/// The default of [`UringConfig::forget_pause`]: at most a thousand
/// wake-ups a second for FORGETs, and an INTERRUPT waits at most 1 ms.
pub const DEFAULT_FORGET_PAUSE: Duration = Duration::from_millis(1);

/// Entries per queue when none is asked for: 8 on small hosts, fewer on
/// many-core ones, so the ring memory stays near 256 entries in all (each
/// entry's payload buffer is max-write sized: 256 MiB of address space at
/// 1 MiB, resident only where requests of that size have used it), but never
/// below 2 per queue.
pub fn default_queue_depth(queues: usize) -> usize {
    (256 / queues.max(1)).clamp(2, 8)
}

/// Sizes of the ring memory, reported at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPlan {
    /// Queues (one per possible CPU).
    pub queues: usize,
    /// Entries per queue.
    pub depth: usize,
    /// Payload buffer per entry.
    pub payload_bytes: usize,
    /// Worker threads.
    pub threads: usize,
}

impl RingPlan {
    /// Bytes of header and payload buffers over all entries (virtual: pages
    /// become resident only once a request or reply of that size used them).
    pub fn total_bytes(&self) -> usize {
        self.queues * self.depth * (self.payload_bytes + std::mem::size_of::<UringReqHeader>())
    }
}

/// Requests served per queue.
#[derive(Debug)]
pub struct QueueCounters {
    per_queue: Vec<AtomicU64>,
    /// Ring entries per queue: requests one queue holds at once.
    entries: usize,
    /// Set at the first request a ring serves.
    serving: Arc<AtomicBool>,
}

impl QueueCounters {
    /// Counters for `queues` queues of `entries` ring entries each, none
    /// serving yet.
    pub fn new(queues: usize, entries: usize) -> QueueCounters {
        QueueCounters {
            per_queue: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            entries,
            serving: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the rings have served a request yet (this arms the pause
    /// after FORGETs on `/dev/fuse`).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The flag behind [`QueueCounters::serving`], for the `/dev/fuse`
    /// worker's [`super::dev::ForgetPause`].
    pub(crate) fn serving_flag(&self) -> Arc<AtomicBool> {
        self.serving.clone()
    }

    /// Ring entries per queue (the queue depth): requests one queue holds
    /// at once.
    pub fn entries_per_queue(&self) -> usize {
        self.entries
    }

    /// Requests served by each queue, by queue id.
    pub fn snapshot(&self) -> Vec<u64> {
        self.per_queue.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    fn bump(&self, qid: u16) {
        if let Some(c) = self.per_queue.get(usize::from(qid)) {
            c.fetch_add(1, Ordering::Relaxed);
            if !self.serving.load(Ordering::Relaxed) {
                self.serving.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// What [`start`] started.
#[derive(Debug)]
pub struct Started {
    /// The ring threads (the `/dev/fuse` worker beside them is started by
    /// `transport::start`).
    pub workers: Vec<JoinHandle<()>>,
    /// The ring memory plan.
    pub plan: RingPlan,
    /// Requests per queue.
    pub counters: Arc<QueueCounters>,
}

/// Starts the ring workers. FORGET, BATCH_FORGET and INTERRUPT still
/// arrive on `/dev/fuse`: the caller runs a `dev` worker beside them.
pub fn start<F: FileSystem + Send + Sync + 'static>(
    session_dev: &Arc<FuseDev>,
    dispatcher: &Arc<Dispatcher<F>>,
    config: &UringConfig,
) -> Result<Started, Error> {
    let fail = |reason: String| Error::Setup {
        transport: "uring",
        reason,
    };
    let queues =
        kmod_shim::uring::possible_cpus().map_err(|e| fail(format!("counting possible CPUs: {e}")))?;
    if queues > usize::from(u16::MAX) {
        return Err(fail(format!("{queues} CPUs exceed the 16-bit queue ids")));
    }
    let n = dispatcher.negotiated();
    let plan = RingPlan {
        queues,
        depth: if config.queue_depth == 0 {
            default_queue_depth(queues)
        } else {
            config.queue_depth
        },
        payload_bytes: n.max_reply_bytes().max(kmod_shim::abi::MIN_READ_BUFFER),
        threads: config.threads.clamp(1, queues),
    };
    let counters = Arc::new(QueueCounters::new(queues, plan.depth));
    let mut workers = Vec::with_capacity(plan.threads + 1);
    for t in 0..plan.threads {
        let qids: Vec<u16> = (0..queues)
            .filter(|q| q % plan.threads == t)
            .map(|q| q as u16)
            .collect();
        let dev = session_dev.clone();
        let dispatcher = dispatcher.clone();
        let counters = counters.clone();
        let spin = config.spin;
        let handle = std::thread::Builder::new()
            .name(format!("xfuse-ring-{t}"))
            .spawn(move || {
                // One queue, one CPU: answer where the caller runs (and
                // touch the buffers first there). Several queues per
                // thread: let the scheduler place it.
                if let [only] = qids[..] {
                    if let Err(e) = kmod_shim::sched::pin_current_thread(usize::from(only)) {
                        tracing::debug!(thread = t, "not pinned to CPU {only}: {e}");
                    }
                }
                let entries: Vec<RingEntry> = qids
                    .iter()
                    .flat_map(|&q| (0..plan.depth).map(move |_| RingEntry::new(q, plan.payload_bytes)))
                    .collect();
                let mut ring = match FuseUring::new(dev, entries.len() as u32) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(
                            thread = t,
                            "creating io_uring failed: {e}; requests stay on /dev/fuse"
                        );
                        return;
                    }
                };
                let mut worker = RingWorker::new(&dispatcher, &counters, spin);
                if let Err(e) = worker.run(&mut ring, entries) {
                    tracing::error!(thread = t, "ring worker stopped: {e}");
                }
            })
            .map_err(|e| fail(format!("spawning ring worker {t}: {e}")))?;
        workers.push(handle);
    }
    Ok(Started {
        workers,
        plan,
        counters,
    })
}

/// Serves the entries of one ring.
#[derive(Debug)]
pub struct RingWorker<'a, F> {
    dispatcher: &'a Dispatcher<F>,
    counters: &'a QueueCounters,
    scratch: Vec<u8>,
    spin: Duration,
}

/// How many times a REGISTER refused with `EAGAIN` (INIT not processed
/// yet) is tried again, 1 ms apart.
const REGISTER_RETRIES: u32 = 1000;

impl<'a, F: FileSystem + Sync> RingWorker<'a, F> {
    /// A worker answering with `dispatcher`, counting requests per queue in
    /// `counters`, spinning up to `spin` for completions before it sleeps.
    /// Any [`RingBackend`] serves: the kernel's rings, or a test double.
    pub fn new(dispatcher: &'a Dispatcher<F>, counters: &'a QueueCounters, spin: Duration) -> Self {
        RingWorker {
            dispatcher,
            counters,
            scratch: vec![0u8; dispatcher.negotiated().max_reply_bytes()],
            spin,
        }
    }

    /// Registers `entries` and serves until the kernel has handed every
    /// entry back for good.
    pub fn run<B: RingBackend>(&mut self, ring: &mut B, entries: Vec<RingEntry>) -> std::io::Result<()> {
        for entry in entries {
            ring.register(entry)?;
        }
        let mut retries = 0;
        while ring.in_flight() > 0 {
            self.wait(ring)?;
            while let Some(Completion { mut entry, result }) = ring.next_completion() {
                match result {
                    0 => {
                        let commit_id = self.serve(&mut entry);
                        ring.commit_and_fetch(entry, commit_id)?;
                    }
                    r if r == -libc::EAGAIN && retries < REGISTER_RETRIES => {
                        // REGISTER before the kernel processed our INIT reply.
                        retries += 1;
                        std::thread::sleep(Duration::from_millis(1));
                        ring.register(entry)?;
                    }
                    r if [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED, libc::ENODEV]
                        .contains(&-r) =>
                    {
                        // The connection is over; this entry is done.
                    }
                    r => {
                        tracing::warn!(
                            qid = entry.qid(),
                            "ring command failed: {}; entry dropped",
                            std::io::Error::from_raw_os_error(-r)
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Hybrid polling: spin on the completion queue for up to `spin`, then
    /// sleep in the kernel until something completes.
    fn wait<B: RingBackend>(&self, ring: &mut B) -> std::io::Result<()> {
        if !self.spin.is_zero() {
            ring.submit_and_wait(0)?;
            let start = Instant::now();
            while start.elapsed() < self.spin {
                if ring.has_completion() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
        }
        ring.submit_and_wait(1)
    }

    /// Handles the request delivered into `entry` and writes the reply into
    /// it; returns the commit id to answer with.
    fn serve(&mut self, entry: &mut RingEntry) -> u64 {
        let qid = entry.qid();
        self.counters.bump(qid);
        let (header, payload) = entry.parts_mut();
        let commit_id = header.ring_ent_in_out.commit_id;
        let reply = self.dispatch(header, payload);
        let (error, body_len) = match &reply {
            Some(r) => (r.error, r.body_len),
            // No reply due (cannot happen for ring requests: FORGET and
            // INTERRUPT use /dev/fuse); answer ENOSYS so the entry re-arms.
            None => (-libc::ENOSYS, 0),
        };
        let (unique, opcode) = InHeader::read_from_prefix(&header.in_out[..])
            .map(|(h, _)| (h.unique, h.opcode))
            .unwrap_or((commit_id, 0));
        let out = out_header(unique, error, body_len);
        header.in_out.fill(0);
        header.in_out[..std::mem::size_of::<OutHeader>()].copy_from_slice(out.as_bytes());
        header.ring_ent_in_out.payload_sz = body_len as u32;
        tracing::trace!(qid, opcode, unique, commit_id, error, body_len, "ring reply");
        commit_id
    }

    fn dispatch(&mut self, header: &mut UringReqHeader, payload: &mut [u8]) -> Option<Reply> {
        let (in_header, _) = InHeader::read_from_prefix(&header.in_out[..]).ok()?;
        let bad = |e: ParseError| Some(Reply::malformed(in_header.unique, e));
        let payload_sz = header.ring_ent_in_out.payload_sz as usize;
        if payload_sz > payload.len() {
            return bad(ParseError::Truncated {
                wanted: payload_sz,
                left: payload.len(),
            });
        }
        let ext = usize::from(in_header.total_extlen) * 8;
        let Some(args_len) = payload_sz.checked_sub(ext) else {
            return bad(ParseError::BadExtensions(ext));
        };
        if args_len == 0 {
            // Nothing to read in the payload: the reply goes straight into it.
            let args = Args::split(&mut header.op_in, &mut []);
            return self.dispatcher.dispatch(&in_header, args, payload);
        }
        let args = Args::split(&mut header.op_in, &mut payload[..args_len]);
        let reply = self.dispatcher.dispatch(&in_header, args, &mut self.scratch)?;
        let len = reply.body_len.min(payload.len());
        payload[..len].copy_from_slice(&self.scratch[..len]);
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    //! The ring logic against a fake kernel side: entry states, buffer
    //! ownership, commit ids and teardown, without root or io_uring.

    use std::collections::HashMap;
    use std::ffi::CStr;
    use std::io;

    use fuse_backend_rs::api::filesystem::{Context, Entry, ZeroCopyReader, ZeroCopyWriter};
    use kmod_shim::abi::{init_flags, EntryOut, Opcode, ReadIn, WriteIn, WriteOut};

    use super::*;
    use crate::init::Negotiated;
    use crate::testkit::ring::FakeKernel;
    use crate::testkit::Request;

    /// One file "f" (node 2) holding "hello".
    #[derive(Default)]
    struct Fs;

    impl FileSystem for Fs {
        type Inode = u64;
        type Handle = u64;
        fn lookup(&self, _: &Context, _: u64, name: &CStr) -> io::Result<Entry> {
            if name.to_bytes() == b"f" {
                Ok(Entry {
                    inode: 2,
                    ..Default::default()
                })
            } else {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            }
        }
        fn read(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            w: &mut dyn ZeroCopyWriter,
            _: u32,
            _: u64,
            _: Option<u64>,
            _: u32,
        ) -> io::Result<usize> {
            w.write(b"hello")
        }
        #[allow(clippy::too_many_arguments)]
        fn write(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            r: &mut dyn ZeroCopyReader,
            size: u32,
            _: u64,
            _: Option<u64>,
            _: bool,
            _: u32,
            _: u32,
        ) -> io::Result<usize> {
            let mut data = vec![0u8; size as usize];
            r.read_exact(&mut data)?;
            assert_eq!(&data, b"written in place");
            Ok(data.len())
        }
    }

    fn worker_parts() -> (Dispatcher<Fs>, QueueCounters) {
        let n = Negotiated {
            minor: 45,
            offered: 0,
            flags: init_flags::OVER_IO_URING,
            max_write: 64 * 1024,
            max_pages: 16,
            max_readahead: 0,
        };
        (Dispatcher::new(Fs, n), QueueCounters::new(2, 4))
    }

    fn worker<'a>(dispatcher: &'a Dispatcher<Fs>, counters: &'a QueueCounters) -> RingWorker<'a, Fs> {
        RingWorker {
            dispatcher,
            counters,
            scratch: vec![0u8; 64 * 1024],
            spin: Duration::ZERO,
        }
    }

    #[test]
    fn requests_flow_and_teardown_ends_the_worker() {
        let (dispatcher, counters) = worker_parts();
        let mut worker = worker(&dispatcher, &counters);
        let mut kernel = FakeKernel::new();
        let read = ReadIn {
            size: 4096,
            ..Default::default()
        };
        let write = WriteIn {
            size: 16,
            ..Default::default()
        };
        kernel
            .then_request(0, Request::new(Opcode::Lookup).unique(10).name("f"))
            .then_request(1, Request::new(Opcode::Read).unique(11).nodeid(2).fixed(&read))
            .then_request(
                1,
                Request::new(Opcode::Write)
                    .unique(12)
                    .nodeid(2)
                    .fixed(&write)
                    .bytes(b"written in place"),
            )
            .then_request(0, Request::new(Opcode::Lookup).unique(13).name("missing"))
            .then_abort();
        let entries: Vec<RingEntry> = [0u16, 0, 1, 1]
            .iter()
            .map(|&q| RingEntry::new(q, 64 * 1024))
            .collect();
        assert!(!counters.serving(), "nothing served yet: FORGETs are not paused");
        worker.run(&mut kernel, entries).unwrap();

        assert!(counters.serving(), "served requests arm the FORGET pause");
        assert_eq!(kernel.registered(), 4);
        assert_eq!(kernel.unanswered(), 0, "every request answered");
        assert_eq!(kernel.in_flight(), 0, "teardown handed every entry back");
        let r: HashMap<u64, (i32, Vec<u8>)> = kernel
            .replies()
            .iter()
            .map(|r| (r.unique, (r.error, r.body.clone())))
            .collect();
        let (err, body) = &r[&10];
        assert_eq!(*err, 0);
        assert_eq!(EntryOut::read_from_bytes(body).unwrap().nodeid, 2);
        assert_eq!(
            r[&11],
            (0, b"hello".to_vec()),
            "read reply written into the payload"
        );
        let (err, body) = &r[&12];
        assert_eq!((*err, WriteOut::read_from_bytes(body).unwrap().size), (0, 16));
        assert_eq!(r[&13].0, -libc::ENOENT);
        assert_eq!(counters.snapshot(), vec![2, 2]);
    }

    #[test]
    fn default_depth_shrinks_on_many_cores() {
        assert_eq!(default_queue_depth(2), 8);
        assert_eq!(default_queue_depth(64), 4);
        assert_eq!(default_queue_depth(128), 2);
        assert_eq!(default_queue_depth(1024), 2);
    }

    #[test]
    fn corrupt_payload_size_is_refused_not_trusted() {
        let (dispatcher, counters) = worker_parts();
        let mut worker = worker(&dispatcher, &counters);
        let mut entry = RingEntry::new(0, 8192);
        let (h, _) = entry.parts_mut();
        let ih = Request::new(Opcode::Lookup).unique(5).claim_len(42).header();
        h.in_out[..40].copy_from_slice(ih.as_bytes());
        h.ring_ent_in_out.payload_sz = 1 << 20; // larger than the buffer
        h.ring_ent_in_out.commit_id = 5;
        assert_eq!(worker.serve(&mut entry), 5);
        let (out, _) = OutHeader::read_from_prefix(&entry.header().in_out[..]).unwrap();
        assert_eq!((out.unique, out.error, out.len), (5, -libc::EINVAL, 16));
    }
}
