//! Target `virtio`: descriptor chains as a guest lays them out, through
//! [`ChainLayout::parse`], then the request read and a reply written
//! through the layout.
//!
//! Guest memory is two regions with a hole between them, so a range may
//! straddle the hole. Input: a byte choosing the read limit, a count of
//! descriptors N (at most the queue size), N raw split descriptors (16
//! bytes each: addr, len, flags, next, little-endian, as in guest memory;
//! written to the descriptor table unchanged, so loops, dangling `next`
//! and indirect tables are the input's), then bytes copied into guest
//! memory at [`DATA`] (where indirect tables and request bytes live).
//!
//! Checked: an accepted layout's buffers all lie inside guest memory and
//! are nonempty, readable bytes are at most the limit and at least a
//! request header, the lengths add up, `read_request` copies exactly the
//! readable bytes in order, `write_reply` fills exactly the writable
//! buffers and refuses (writing nothing) one byte more; each refusal names
//! a real fault.

use std::mem::size_of;

use kmod_shim::abi::InHeader;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use xfuse::transport::virtio::{ChainError, ChainLayout};

/// Descriptors in the queue (the chain iterator's bound on a walk).
const QUEUE_SIZE: u16 = 16;
/// The first region: the queue's rings at 0, data from [`DATA`] on.
const LOW: (u64, usize) = (0, 0x1_0000);
/// The second region, after a hole of 64 KiB.
const HIGH: (u64, usize) = (0x2_0000, 0x1_0000);
/// Where the input's memory image goes.
pub const DATA: u64 = 0x1000;

/// The target.
pub fn virtio(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let Some((&count, rest)) = rest.split_first() else {
        return;
    };
    let count = usize::from(count).min(usize::from(QUEUE_SIZE));
    let table_bytes = (count * 16).min(rest.len() / 16 * 16);
    let (table, image) = rest.split_at(table_bytes);
    let descs: Vec<RawDescriptor> = table
        .chunks_exact(16)
        .map(|d| {
            let le = |at: usize, n: usize| {
                d[at..at + n]
                    .iter()
                    .rev()
                    .fold(0u64, |v, &b| v << 8 | u64::from(b))
            };
            let (addr, len, flags, next) = (le(0, 8), le(8, 4), le(12, 2), le(14, 2));
            RawDescriptor::from(SplitDescriptor::new(addr, len as u32, flags as u16, next as u16))
        })
        .collect();
    if descs.is_empty() {
        return;
    }
    let read_limit = match limit % 4 {
        0 => 1 << 20,
        1 => 4096,
        2 => 64,
        _ => usize::from(limit),
    };

    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(LOW.0), LOW.1), (GuestAddress(HIGH.0), HIGH.1)])
            .expect("two regions");
    let room = (LOW.0 + LOW.1 as u64 - DATA) as usize;
    mem.write_slice(&image[..image.len().min(room)], GuestAddress(DATA))
        .expect("the image fits the low region");
    let queue = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let Ok(chain) = queue.build_multiple_desc_chains(&descs) else {
        // The mock refuses to place this table (it only writes it; nothing
        // of ours ran).
        return;
    };
    match ChainLayout::parse(chain, read_limit) {
        Ok(layout) => check_layout(&mem, &layout, read_limit),
        Err(ChainError::OutOfRange { addr, len }) => {
            assert!(
                !mem.check_range(GuestAddress(addr), len as usize),
                "{addr:#x}+{len} refused but inside guest memory"
            );
        }
        Err(ChainError::TooLong { len, limit }) => {
            assert!(
                len > limit && limit == read_limit,
                "{len} bytes refused, limit {limit}"
            );
        }
        Err(ChainError::TooShort(len)) => assert!(len < size_of::<InHeader>()),
        Err(ChainError::ReadableAfterWritable | ChainError::Truncated) => {}
    }
}

fn check_layout(mem: &GuestMemoryMmap, layout: &ChainLayout, read_limit: usize) {
    let inside = |&(addr, len): &(GuestAddress, usize)| len > 0 && mem.check_range(addr, len);
    assert!(
        layout.readable().iter().all(inside),
        "{layout:?} reads outside guest memory"
    );
    assert!(
        layout.writable().iter().all(inside),
        "{layout:?} writes outside guest memory"
    );
    let read_len: usize = layout.readable().iter().map(|r| r.1).sum();
    let write_len: usize = layout.writable().iter().map(|r| r.1).sum();
    assert_eq!((layout.read_len(), layout.write_len()), (read_len, write_len));
    assert!(read_len <= read_limit && read_len >= size_of::<InHeader>());

    // The request: every readable buffer, in order.
    let mut want = Vec::with_capacity(read_len);
    for &(addr, len) in layout.readable() {
        let mut part = vec![0u8; len];
        mem.read_slice(&mut part, addr).expect("checked range");
        want.extend_from_slice(&part);
    }
    let mut got = vec![0u8; read_len];
    assert_eq!(layout.read_request(mem, &mut got).expect("readable"), read_len);
    assert_eq!(got, want, "the request is not the readable buffers in order");

    // One byte too many is refused and writes nothing.
    let before = snapshot(mem, layout.writable());
    let too_long = vec![0x5a; write_len + 1];
    assert!(layout.write_reply(mem, &[&too_long]).is_err());
    assert_eq!(snapshot(mem, layout.writable()), before, "a refused reply wrote");

    // A reply filling the room, in two parts, lands in the writable
    // buffers in order. (Buffers may overlap: compare what the last
    // writer left, by writing a pattern that names its position.)
    let reply: Vec<u8> = (0..write_len).map(|i| (i % 251) as u8).collect();
    let (a, b) = reply.split_at(write_len / 2);
    assert_eq!(
        layout.write_reply(mem, &[a, b]).expect("fits") as usize,
        write_len
    );
    let overlapping = overlaps(layout.writable());
    if !overlapping {
        assert_eq!(
            snapshot(mem, layout.writable()),
            reply,
            "the reply is not where it belongs"
        );
    }
}

fn snapshot(mem: &GuestMemoryMmap, bufs: &[(GuestAddress, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len) in bufs {
        let mut part = vec![0u8; len];
        mem.read_slice(&mut part, addr).expect("checked range");
        out.extend_from_slice(&part);
    }
    out
}

fn overlaps(bufs: &[(GuestAddress, usize)]) -> bool {
    let mut spans: Vec<(u64, u64)> = bufs.iter().map(|&(a, l)| (a.0, a.0 + l as u64)).collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}
