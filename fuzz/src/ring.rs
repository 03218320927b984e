//! Target `ring`: FUSE-over-io_uring ring entries, filled byte for byte
//! by a fake kernel ([`FakeKernel::then_raw`]) and served by a real
//! [`RingWorker`] with the dispatcher on [`FuzzFs`].
//!
//! Input: a mode byte (as in [`crate::request`]: bits 2-4 pick the
//! session and policies; bit 0 picks the queue), `payload_sz` (4 bytes
//! LE), the `fuse_in_header` (40 bytes), the length of `op_in` (1 byte)
//! and `op_in`, then the payload.
//!
//! The fake kernel panics on what the kernel would refuse: a commit for a
//! request not in flight, or a reply header whose `len` disagrees with the
//! payload size it claims. On top of that: every entry delivered is
//! answered exactly once, with its `unique`, a negative errno or 0, no
//! body with an error, a body that fits the payload buffer, and `EINVAL`
//! for framing the worker must not trust (a payload size beyond the
//! buffer, extensions longer than the payload).

use std::mem::size_of;
use std::time::Duration;

use kmod_shim::abi::{InHeader, Opcode};
use kmod_shim::uring::RingEntry;
use xfuse::testkit::ring::{FakeKernel, RawEntry};
use xfuse::transport::uring::{QueueCounters, RingWorker};
use zerocopy::FromBytes;

use crate::request::dispatcher;

/// The kernel's commit id for the fuzzed entry (its own choice, unrelated
/// to the request's `unique`).
const COMMIT_ID: u64 = 0x5eed;

/// The target.
pub fn ring(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((sz, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let Some((in_header, rest)) = rest.split_first_chunk::<{ size_of::<InHeader>() }>() else {
        return;
    };
    let Some((&op_in_len, rest)) = rest.split_first() else {
        return;
    };
    let (op_in, payload) = rest.split_at(usize::from(op_in_len).min(rest.len()));
    let payload_sz = u32::from_le_bytes(*sz);
    let (header, _) = InHeader::read_from_prefix(&in_header[..]).expect("40 bytes hold a header");

    let d = dispatcher(mode);
    let qid = u16::from(mode & 1);
    let counters = QueueCounters::new(2, 1);
    let mut worker = RingWorker::new(&d, &counters, Duration::ZERO);
    let capacity = d
        .negotiated()
        .max_reply_bytes()
        .max(kmod_shim::abi::MIN_READ_BUFFER);
    let mut kernel = FakeKernel::new();
    kernel
        .then_raw(
            qid,
            RawEntry {
                in_out: in_header.to_vec(),
                op_in: op_in.to_vec(),
                payload_sz,
                payload: payload.to_vec(),
                commit_id: COMMIT_ID,
            },
        )
        .then_abort();
    let entries = vec![RingEntry::new(qid, capacity)];
    worker
        .run(&mut kernel, entries)
        .expect("the fake kernel never fails a command");

    assert_eq!(kernel.unanswered(), 0, "the entry was not answered");
    let [reply] = kernel.replies() else {
        panic!("{} replies to one entry", kernel.replies().len());
    };
    assert_eq!(reply.unique, header.unique, "the reply answers another request");
    assert!(
        reply.error <= 0 && reply.error > -4096,
        "error {} is no errno",
        reply.error
    );
    assert!(reply.body.len() <= capacity);
    if reply.error != 0 {
        assert!(reply.body.is_empty(), "an error reply with a body");
    }
    let ext = usize::from(header.total_extlen) * 8;
    if payload_sz as usize > capacity || ext > payload_sz as usize {
        assert_eq!(reply.error, -libc::EINVAL, "bad framing was trusted");
    }
    if !matches!(
        Opcode::from_raw(header.opcode),
        Some(Opcode::Readdirplus | Opcode::Forget | Opcode::BatchForget | Opcode::Destroy)
    ) {
        // A ring reply is delivered once committed: a reference the
        // filesystem gave is in a successful reply, or was given back.
        let refs = d.fs().outstanding();
        assert!(
            refs == 0 || (refs == 1 && reply.error == 0),
            "{refs} lookup references outstanding after {reply:?}"
        );
    }
    assert_eq!(counters.snapshot()[usize::from(qid)], 1);
}
