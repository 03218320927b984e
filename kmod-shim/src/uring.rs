//! FUSE-over-io_uring: ring entries, their buffers, and the io_uring that
//! carries REGISTER and COMMIT_AND_FETCH commands to `/dev/fuse`.
//!
//! Buffer ownership follows the kernel's: a [`RingEntry`] (a 288-byte
//! `fuse_uring_req_header` and a payload buffer) is *moved* into the backend
//! when it is registered or committed — from then on the kernel may write a
//! request into it at any moment — and *moved back* out with its completion.
//! Code outside the backend can only touch an entry it holds, so it can never
//! race the kernel on a buffer. [`RingBackend`] is the seam: [`FuseUring`]
//! is the real kernel, and tests plug in a fake.

use std::io;
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use zerocopy::{FromZeros, IntoBytes};

use crate::abi::{UringCmd, UringCmdReq, UringReqHeader};
use crate::buf::AlignedBuf;
use crate::dev::FuseDev;

/// One ring entry: the header buffer and the payload buffer the kernel
/// copies requests into and replies out of.
#[derive(Debug)]
pub struct RingEntry {
    header: Box<UringReqHeader>,
    payload: AlignedBuf,
    qid: u16,
}

impl RingEntry {
    /// An entry for queue `qid` with a payload buffer of `payload_bytes`
    /// (the kernel requires at least max(8192, max_write, max_pages * 4096)),
    /// page-aligned, since READ and WRITE data is copied straight to and
    /// from it (see [`crate::buf`]).
    pub fn new(qid: u16, payload_bytes: usize) -> RingEntry {
        RingEntry {
            header: Box::new(UringReqHeader::new_zeroed()),
            payload: AlignedBuf::new(payload_bytes),
            qid,
        }
    }

    /// The queue this entry serves.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The header buffer.
    pub fn header(&self) -> &UringReqHeader {
        &self.header
    }

    /// Header and payload, mutably and at once (a request's arguments live in
    /// both; a reply is written to both).
    pub fn parts_mut(&mut self) -> (&mut UringReqHeader, &mut [u8]) {
        (&mut self.header, &mut self.payload)
    }

    /// Size of the payload buffer.
    pub fn payload_capacity(&self) -> usize {
        self.payload.len()
    }
}

/// What a backend says when it hands an entry back.
#[derive(Debug)]
pub struct Completion {
    /// The entry, back in userspace's hands.
    pub entry: RingEntry,
    /// The command's result: 0 when a request was delivered into the entry,
    /// or a negative errno (`-ENOTCONN` at teardown).
    pub result: i32,
}

/// The kernel side of a set of ring queues, as a worker sees it.
pub trait RingBackend {
    /// Hands `entry` to the kernel with FUSE_IO_URING_CMD_REGISTER.
    fn register(&mut self, entry: RingEntry) -> io::Result<()>;
    /// Sends the reply in `entry` (for `commit_id`) and re-arms it
    /// (FUSE_IO_URING_CMD_COMMIT_AND_FETCH).
    fn commit_and_fetch(&mut self, entry: RingEntry, commit_id: u64) -> io::Result<()>;
    /// Submits what was queued and waits for at least `want` completions
    /// (0: do not wait).
    fn submit_and_wait(&mut self, want: usize) -> io::Result<()>;
    /// Takes the next completion, if any arrived.
    fn next_completion(&mut self) -> Option<Completion>;
    /// A completion is waiting (for polling without sleeping).
    fn has_completion(&mut self) -> bool;
    /// Entries the kernel holds.
    fn in_flight(&self) -> usize;
}

/// A command in the kernel's hands, with everything it points at.
#[derive(Debug)]
struct InFlight {
    entry: RingEntry,
    /// REGISTER passes a pointer to this iovec pair; it must stay put until
    /// the command completes. Only held, never read.
    _iov: Option<Box<[libc::iovec; 2]>>,
}

/// One io_uring (SQE128) submitting FUSE ring commands to `/dev/fuse`.
///
/// Entries of several queues may share one ring (the kernel routes each
/// command by the qid inside it); completions come back to this ring.
pub struct FuseUring {
    // Declared first so it is dropped first: the ring is torn down before
    // the memory its commands point at.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Keeps the /dev/fuse descriptor registered as fixed file 0 open.
    _dev: Arc<FuseDev>,
}

impl std::fmt::Debug for FuseUring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseUring")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// `IORING_ENTER_GETEVENTS` of `<linux/io_uring.h>`.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Byte offset of `len` in `struct io_uring_sqe`.
const SQE_LEN_OFFSET: usize = 24;

impl FuseUring {
    /// A ring for up to `entries` ring entries on `dev`.
    pub fn new(dev: Arc<FuseDev>, entries: u32) -> io::Result<FuseUring> {
        let size = entries.max(1).next_power_of_two();
        // DEFER_TASKRUN: the kernel delivers a request into an entry by task
        // work on the ring's thread. By default that work interrupts the
        // thread (TIF_NOTIFY_SIGNAL) whatever it is doing, and syscalls the
        // filesystem makes meanwhile see a pending signal: getdents64 then
        // stops after one entry, which PassthroughFs turns into an empty
        // listing when that entry is ".". Deferred, the work runs only when
        // the thread waits in io_uring_enter. It needs SINGLE_ISSUER: only
        // the creating thread submits (FuseUring is not Send).
        //
        // TASKRUN_FLAG: the kernel also raises IORING_SQ_TASKRUN in the
        // shared ring when such work is waiting, so a worker that polls
        // (hybrid polling) sees a new request without a system call.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(size * 2)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(size)?;
        ring.submitter().register_files(&[dev.raw_fd()])?;
        Ok(FuseUring {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            _dev: dev,
        })
    }

    fn park(&mut self, flight: InFlight) -> usize {
        self.in_flight += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(flight);
                i
            }
            None => {
                self.slots.push(Some(flight));
                self.slots.len() - 1
            }
        }
    }

    fn unpark(&mut self, slot: usize) -> Option<InFlight> {
        let flight = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.in_flight -= 1;
        Some(flight)
    }

    fn push(&mut self, sqe: squeue::Entry128, slot: usize) -> io::Result<()> {
        let sqe = sqe.user_data(slot as u64);
        loop {
            // SAFETY: every buffer the command points at (the entry's header
            // and payload, and for REGISTER the iovec pair) is owned by the
            // InFlight parked in `slots[slot]`, which is only released when
            // the command's completion is reaped (or leaked on drop while
            // commands are pending), so it outlives the kernel's use.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand what is there to the kernel.
            self.ring.submit()?;
        }
    }

    /// Parks `flight` and queues its command; a command that could not be
    /// queued was never seen by the kernel, so its entry is dropped again.
    fn hand_over(&mut self, flight: InFlight, sqe: squeue::Entry128) -> io::Result<()> {
        let slot = self.park(flight);
        if let Err(e) = self.push(sqe, slot) {
            self.unpark(slot);
            return Err(e);
        }
        Ok(())
    }

    fn command(&self, op: UringCmd, qid: u16, commit_id: u64) -> opcode::UringCmd80 {
        let req = UringCmdReq {
            flags: 0,
            commit_id,
            qid,
            padding: [0; 6],
        };
        let mut cmd = [0u8; 80];
        cmd[..std::mem::size_of::<UringCmdReq>()].copy_from_slice(req.as_bytes());
        opcode::UringCmd80::new(types::Fixed(0), op as u32).cmd(cmd)
    }
}

/// Sets `sqe->len`, which REGISTER needs (= 2 iovecs) and io-uring's
/// `UringCmd80` builder has no setter for.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is a #[repr(C)] wrapper of the 64-byte kernel SQE
    // followed by 64 command bytes (asserted 128 bytes above); every bit
    // pattern is a valid [u8; 128], and writing a u32 at the SQE's `len`
    // offset yields another valid SQE.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above, in the other direction.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

impl RingBackend for FuseUring {
    fn register(&mut self, mut entry: RingEntry) -> io::Result<()> {
        let qid = entry.qid;
        let (header, payload) = entry.parts_mut();
        let iov = Box::new([
            libc::iovec {
                iov_base: (header as *mut UringReqHeader).cast(),
                iov_len: std::mem::size_of::<UringReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]);
        let iov_addr = iov.as_ptr() as u64;
        let sqe = with_len(
            self.command(UringCmd::Register, qid, 0)
                .addr(Some(iov_addr))
                .build(),
            2,
        );
        self.hand_over(
            InFlight {
                entry,
                _iov: Some(iov),
            },
            sqe,
        )
    }

    fn commit_and_fetch(&mut self, entry: RingEntry, commit_id: u64) -> io::Result<()> {
        let sqe = self
            .command(UringCmd::CommitAndFetch, entry.qid, commit_id)
            .build();
        // COMMIT_AND_FETCH points at nothing new: the kernel reuses the
        // buffers the entry was registered with.
        self.hand_over(InFlight { entry, _iov: None }, sqe)
    }

    fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completion queue full: the caller reaps, then waits again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn next_completion(&mut self) -> Option<Completion> {
        loop {
            let cqe = self.ring.completion().next()?;
            let slot = cqe.user_data() as usize;
            match self.unpark(slot) {
                Some(flight) => {
                    return Some(Completion {
                        entry: flight.entry,
                        result: cqe.result(),
                    })
                }
                None => continue,
            }
        }
    }

    fn has_completion(&mut self) -> bool {
        if !self.ring.completion().is_empty() {
            return true;
        }
        // Under DEFER_TASKRUN a completion is posted only once the deferred
        // task work runs: when the kernel flags some, run it without waiting.
        if !self.ring.submission().taskrun() {
            return false;
        }
        // SAFETY: io_uring_enter with nothing to submit, no minimum to wait
        // for and no argument pointer (None) touches no memory of ours.
        let entered = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
        };
        entered.is_ok() && !self.ring.completion().is_empty()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for FuseUring {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // The kernel may still write into these buffers (a request
            // delivered during ring shutdown): leak them rather than free
            // memory it points at.
            for flight in self.slots.drain(..).flatten() {
                std::mem::forget(flight);
            }
        }
    }
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`): the
/// kernel makes one queue per possible CPU and starts the ring only when
/// every one of them has an entry.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse CPU list {text:?}"),
        )
    })
}

/// Counts the CPUs in a list such as `0-3,8,10-11`: the kernel numbers
/// queues by CPU id, so the count is the highest id plus one.
pub fn parse_cpu_list(list: &str) -> Option<usize> {
    let mut highest = None;
    for part in list.split(',') {
        let last = match part.split_once('-') {
            Some((_, hi)) => hi.trim().parse::<usize>().ok()?,
            None => part.trim().parse::<usize>().ok()?,
        };
        highest = Some(highest.map_or(last, |h: usize| h.max(last)));
    }
    highest.map(|h| h + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(12));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert!(possible_cpus().unwrap() >= 1);
    }

    #[test]
    fn register_sqe_carries_len_addr_and_qid() {
        let req = UringCmdReq {
            flags: 0,
            commit_id: 7,
            qid: 3,
            padding: [0; 6],
        };
        let mut cmd = [0u8; 80];
        cmd[..24].copy_from_slice(req.as_bytes());
        let sqe = with_len(
            opcode::UringCmd80::new(types::Fixed(0), UringCmd::Register as u32)
                .cmd(cmd)
                .addr(Some(0x1234))
                .build(),
            2,
        );
        // SAFETY: Entry128 is 128 plain bytes (see `with_len`).
        let raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(raw[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(
            u32::from_ne_bytes(raw[8..12].try_into().unwrap()),
            1,
            "cmd_op REGISTER"
        );
        assert_eq!(
            u64::from_ne_bytes(raw[16..24].try_into().unwrap()),
            0x1234,
            "addr"
        );
        assert_eq!(u32::from_ne_bytes(raw[24..28].try_into().unwrap()), 2, "len");
        assert_eq!(
            &raw[48..72],
            req.as_bytes(),
            "fuse_uring_cmd_req in the command area"
        );
    }
}
