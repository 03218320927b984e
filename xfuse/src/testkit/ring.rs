//! The kernel's side of FUSE-over-io_uring, in memory: a
//! [`RingBackend`] that takes registered entries, delivers scripted
//! requests into them, checks and records each reply, and ends every
//! entry with `-ENOTCONN` at teardown, as the kernel does on unmount.

use std::collections::{HashMap, VecDeque};
use std::io;

use kmod_shim::abi::{InHeader, OutHeader};
use kmod_shim::uring::{Completion, RingBackend, RingEntry};
use zerocopy::{FromBytes, IntoBytes};

use super::Request;

/// One step of the kernel's script.
#[derive(Debug, Clone)]
enum Step {
    /// Deliver a request into an entry of queue `qid`.
    Request { qid: u16, request: Request },
    /// Deliver an entry's contents as given, however malformed.
    Raw { qid: u16, entry: RawEntry },
    /// The connection ends.
    Abort,
}

/// A ring entry's contents as the kernel would fill them, byte for byte:
/// for entries no well-formed [`Request`] produces (fuzzing, hostile
/// kernels). The commit id is the kernel's own, not the worker's to check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawEntry {
    /// The header's `in_out` area (`fuse_in_header` first); cut or
    /// zero-padded to its size.
    pub in_out: Vec<u8>,
    /// The header's `op_in` area; cut or zero-padded to its size.
    pub op_in: Vec<u8>,
    /// `ring_ent_in_out.payload_sz`, which may claim more than was copied.
    pub payload_sz: u32,
    /// The payload buffer's first bytes; cut to its capacity.
    pub payload: Vec<u8>,
    /// `ring_ent_in_out.commit_id`.
    pub commit_id: u64,
}

/// A reply the worker committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingReply {
    /// The request answered.
    pub unique: u64,
    /// 0, or a negative errno.
    pub error: i32,
    /// The reply body, as the payload buffer held it.
    pub body: Vec<u8>,
}

/// Plays the kernel for a ring worker. Each time the worker waits for a
/// completion and none is pending, the next step of the script runs.
///
/// It panics where a real kernel would fail the connection: a commit for
/// a request not in flight or on another queue, a reply header that
/// disagrees with the payload size, an entry with a payload buffer below
/// the kernel's minimum, or a request delivered to a queue without a free
/// entry.
#[derive(Debug, Default)]
pub struct FakeKernel {
    available: HashMap<u16, VecDeque<RingEntry>>,
    completions: VecDeque<Completion>,
    /// Sent and not yet answered: commit id -> queue.
    pending: HashMap<u64, u16>,
    replies: Vec<RingReply>,
    registered: usize,
    script: VecDeque<Step>,
}

impl FakeKernel {
    /// A kernel with nothing registered and an empty script.
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    /// Adds a request for queue `qid` to the script. The kernel uses the
    /// request's `unique` as its commit id.
    pub fn then_request(&mut self, qid: u16, request: Request) -> &mut Self {
        self.script.push_back(Step::Request { qid, request });
        self
    }

    /// Adds a raw entry for queue `qid` to the script.
    pub fn then_raw(&mut self, qid: u16, entry: RawEntry) -> &mut Self {
        self.script.push_back(Step::Raw { qid, entry });
        self
    }

    /// Adds the end of the connection to the script.
    pub fn then_abort(&mut self) -> &mut Self {
        self.script.push_back(Step::Abort);
        self
    }

    /// REGISTER commands seen.
    pub fn registered(&self) -> usize {
        self.registered
    }

    /// Requests delivered and not yet answered.
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    /// The replies committed, in order.
    pub fn replies(&self) -> &[RingReply] {
        &self.replies
    }

    fn deliver(&mut self) {
        let Some(step) = self.script.pop_front() else {
            return;
        };
        match step {
            Step::Request { qid, request } => {
                let mut entry = self
                    .available
                    .get_mut(&qid)
                    .and_then(|q| q.pop_front())
                    .expect("queue has an available entry");
                let (h, p) = entry.parts_mut();
                let header = request.header();
                let (op_in, payload) = (request.op_in(), request.payload());
                h.in_out.fill(0xAA);
                h.in_out[..std::mem::size_of::<InHeader>()].copy_from_slice(header.as_bytes());
                h.op_in.fill(0);
                h.op_in[..op_in.len()].copy_from_slice(op_in);
                p[..payload.len()].copy_from_slice(&payload);
                h.ring_ent_in_out.payload_sz = payload.len() as u32;
                // The kernel uses the request's unique as commit id.
                h.ring_ent_in_out.commit_id = header.unique;
                self.pending.insert(header.unique, qid);
                self.completions.push_back(Completion { entry, result: 0 });
            }
            Step::Raw { qid, entry: raw } => {
                let mut entry = self
                    .available
                    .get_mut(&qid)
                    .and_then(|q| q.pop_front())
                    .expect("queue has an available entry");
                let (h, p) = entry.parts_mut();
                copy_padded(&mut h.in_out, &raw.in_out);
                copy_padded(&mut h.op_in, &raw.op_in);
                let n = raw.payload.len().min(p.len());
                p[..n].copy_from_slice(&raw.payload[..n]);
                h.ring_ent_in_out.payload_sz = raw.payload_sz;
                h.ring_ent_in_out.commit_id = raw.commit_id;
                self.pending.insert(raw.commit_id, qid);
                self.completions.push_back(Completion { entry, result: 0 });
            }
            Step::Abort => {
                for (_, q) in self.available.drain() {
                    for entry in q {
                        self.completions.push_back(Completion {
                            entry,
                            result: -libc::ENOTCONN,
                        });
                    }
                }
            }
        }
    }
}

/// Copies `from` into `to`, cut to fit, the rest of `to` zeroed.
fn copy_padded(to: &mut [u8], from: &[u8]) {
    let n = from.len().min(to.len());
    to[..n].copy_from_slice(&from[..n]);
    to[n..].fill(0);
}

impl RingBackend for FakeKernel {
    fn register(&mut self, entry: RingEntry) -> io::Result<()> {
        assert!(entry.payload_capacity() >= kmod_shim::abi::MIN_READ_BUFFER);
        self.registered += 1;
        self.available.entry(entry.qid()).or_default().push_back(entry);
        Ok(())
    }

    fn commit_and_fetch(&mut self, entry: RingEntry, commit_id: u64) -> io::Result<()> {
        let qid = self
            .pending
            .remove(&commit_id)
            .expect("commit id of a request in flight");
        assert_eq!(qid, entry.qid(), "committed on the queue the request came from");
        let h = entry.header();
        let (out, _) = OutHeader::read_from_prefix(&h.in_out[..]).expect("in_out holds an out header");
        let body_len = h.ring_ent_in_out.payload_sz as usize;
        assert_eq!(out.len as usize, std::mem::size_of::<OutHeader>() + body_len);
        let mut entry = entry;
        let body = entry.parts_mut().1[..body_len].to_vec();
        self.replies.push(RingReply {
            unique: out.unique,
            error: out.error,
            body,
        });
        self.available.entry(qid).or_default().push_back(entry);
        Ok(())
    }

    fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        if want > 0 && self.completions.is_empty() {
            self.deliver();
        }
        Ok(())
    }

    fn next_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    fn has_completion(&mut self) -> bool {
        !self.completions.is_empty()
    }

    fn in_flight(&self) -> usize {
        self.available.values().map(|q| q.len()).sum::<usize>() + self.completions.len()
    }
}
