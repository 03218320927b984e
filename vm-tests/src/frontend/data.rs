//! File data through a backend: one file written front to back in
//! `chunk`-sized WRITEs, then read back in READs of the same size, one
//! request in flight, laid out as a Linux guest lays them out (headers in
//! their own buffers, then a descriptor per 4 KiB page, in an indirect
//! table). Every reply is checked: a WRITE must take all its bytes, a READ
//! must give back exactly what was written. Measures each phase's wall
//! time and the backend's CPU time.
//!
//! Successive requests use successive data buffers over most of guest
//! memory (tens of MiB, more than a CPU cache holds), as a guest's page
//! cache hands the driver different pages each time: a backend that copies
//! data pays for the cache misses it would pay under a real guest.

use std::time::{Duration, Instant};

use kmod_shim::abi::{InHeader, Opcode, OutHeader, ReadIn, WriteIn, WriteOut};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::{FromBytes, IntoBytes};

use super::device::REQUEST;
use super::fuse::{Caller, Request, KERNEL_O_LARGEFILE};
use super::session::Session;
use super::ReplayError;

/// Guest page: one descriptor each, as the guest's driver maps pages.
const PAGE_BYTES: u32 = 4096;
/// Largest chunk (a WRITE or READ's data): 1 MiB, Linux's FUSE_MAX_MAX_PAGES.
pub const CHUNK_BYTES_MAX: u32 = 1 << 20;
const ROOT: u64 = kmod_shim::abi::ROOT_ID;

/// What to move.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Size of the file written and read, in bytes (a multiple of `chunk_bytes`).
    pub file_bytes: u64,
    /// Bytes per WRITE and READ (a multiple of 4 KiB, at most
    /// [`CHUNK_BYTES_MAX`], and no more than the backend's `max_write`
    /// and `max_pages` allow).
    pub chunk_bytes: u32,
    /// The backend's process, to read its CPU time per phase.
    pub backend_pid: Option<u32>,
}

/// One phase's cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Requests sent.
    pub requests: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The backend's CPU time over the phase, in nanoseconds.
    pub backend_cpu_ns: Option<u64>,
}

/// What a data run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataReport {
    /// Writing the file (its blocks allocated as they are written).
    pub write: Phase,
    /// Writing it again, over the same blocks.
    pub rewrite: Phase,
    /// Reading it back.
    pub read: Phase,
}

fn bad(op: &'static str, unique: u64, reason: String) -> ReplayError {
    ReplayError::BadReply { op, unique, reason }
}

/// Guest memory of the data chains, after what the session uses for its
/// own requests: an indirect table, the headers, the reply header, the
/// data pages.
struct Layout {
    table: GuestAddress,
    headers: GuestAddress,
    reply: GuestAddress,
    /// The first data buffer; `slots` of `chunk_bytes` follow each other.
    data: GuestAddress,
    slots: u64,
    chunk_bytes: u32,
}

impl Layout {
    fn new(session: &Session, chunk_bytes: u32) -> Result<Layout, ReplayError> {
        let base = (session.device().free_memory_start() + 0x1_0000).next_multiple_of(0x1_0000);
        let data = base + 0x1_0000;
        let slots = session.device().ram().size_bytes().saturating_sub(data) / u64::from(chunk_bytes);
        if slots == 0 {
            return Err(ReplayError::Setup(format!(
                "a chunk of {chunk_bytes} bytes does not fit guest memory"
            )));
        }
        Ok(Layout {
            table: GuestAddress(base),
            // The table holds up to 256 pages and 4 more descriptors.
            headers: GuestAddress(base + 0x8000),
            reply: GuestAddress(base + 0x9000),
            data: GuestAddress(data),
            slots,
            chunk_bytes,
        })
    }

    /// The data buffer of request `i`.
    fn slot(&self, i: u64) -> GuestAddress {
        GuestAddress(self.data.0 + (i % self.slots) * u64::from(self.chunk_bytes))
    }

    /// Request `i`'s data buffer as page descriptors (`flags` on each).
    fn pages(&self, i: u64, flags: u16) -> impl Iterator<Item = (GuestAddress, u32, u16)> + '_ {
        let (start, len) = (self.slot(i), self.chunk_bytes);
        (0..len.div_ceil(PAGE_BYTES)).map(move |p| {
            let at = p * PAGE_BYTES;
            (
                GuestAddress(start.0 + u64::from(at)),
                PAGE_BYTES.min(len - at),
                flags,
            )
        })
    }
}

/// The byte at `offset` of the file: the same pattern each chunk.
fn pattern(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Sends one chain (in an indirect table) and waits for its used entry;
/// returns the bytes the device wrote.
fn exchange(
    session: &mut Session,
    layout: &Layout,
    descs: &[(GuestAddress, u32, u16)],
    timeout_ms: i32,
) -> Result<u32, ReplayError> {
    let dev = session.device_mut();
    dev.write_chain(layout.table, 0, descs)?;
    let head = 0u16;
    dev.write_chain(
        dev.desc_table(REQUEST),
        head,
        &[(
            layout.table,
            16 * descs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
        )],
    )?;
    dev.submit(REQUEST, head)?;
    loop {
        if let Some(used) = dev.pop_used(REQUEST)? {
            if used.id != u32::from(head) {
                return Err(ReplayError::Protocol(format!(
                    "used entry {} for chain {head}",
                    used.id
                )));
            }
            return Ok(used.len);
        }
        dev.wait(timeout_ms)?;
    }
}

fn header(opcode: Opcode, unique: u64, nodeid: u64, len: usize) -> InHeader {
    InHeader {
        len: len as u32,
        opcode: opcode as u32,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        total_extlen: 0,
        padding: 0,
    }
}

/// Reads the out header of a reply and checks it answers `unique`.
fn out_header(
    session: &Session,
    layout: &Layout,
    op: &'static str,
    unique: u64,
    used: u32,
) -> Result<OutHeader, ReplayError> {
    let mut raw = [0u8; size_of::<OutHeader>()];
    session
        .device()
        .ram()
        .mem()
        .read_slice(&mut raw, layout.reply)
        .map_err(|e| ReplayError::Protocol(format!("reading a reply: {e}")))?;
    let h = OutHeader::read_from_bytes(&raw[..]).map_err(|_| bad(op, unique, "out header".into()))?;
    if h.unique != unique || h.len != used {
        return Err(bad(op, unique, format!("out header {h:?}, {used} bytes used")));
    }
    if h.error != 0 {
        return Err(bad(op, unique, format!("error {}", h.error)));
    }
    Ok(h)
}

/// Creates `name` in the root, writes it and reads it back.
pub fn run(
    session: &mut Session,
    name: &str,
    config: &DataConfig,
    timeout_ms: i32,
) -> Result<DataReport, ReplayError> {
    let chunk = config.chunk_bytes;
    let init = *session.init();
    let limit = init.max_write.min(u32::from(init.max_pages) * PAGE_BYTES);
    if chunk == 0 || !chunk.is_multiple_of(PAGE_BYTES) || chunk > CHUNK_BYTES_MAX || chunk > limit {
        return Err(ReplayError::Setup(format!(
            "chunk of {chunk} bytes: must be a multiple of 4 KiB, at most {} (the backend's max_write {} and max_pages {})",
            CHUNK_BYTES_MAX.min(limit),
            init.max_write,
            init.max_pages
        )));
    }
    if !config.file_bytes.is_multiple_of(u64::from(chunk)) {
        return Err(ReplayError::Setup(
            "the file size is not a whole number of chunks".into(),
        ));
    }
    let chunks = config.file_bytes / u64::from(chunk);
    let layout = Layout::new(session, chunk)?;
    let flags = (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32 | KERNEL_O_LARGEFILE;
    let (entry, open) = session.created(
        &Request::create(ROOT, name, flags, libc::S_IFREG | 0o644, 0o022),
        Caller::ROOT,
    )?;
    let (nodeid, fh) = (entry.nodeid, open.fh);
    let expected = pattern(chunk);
    let mem = session.device().ram().mem().clone();
    let mut unique = 1 << 32;
    let cpu = |pid: Option<u32>| pid.and_then(|p| crate::procfs::cpu_time_ns(p).ok());
    let mut report = DataReport::default();

    // WRITE: header, fuse_write_in, data pages; reply: out header, fuse_write_out.
    for slot in 0..layout.slots.min(chunks) {
        mem.write_slice(&expected, layout.slot(slot))
            .map_err(|e| ReplayError::Setup(format!("writing the data: {e}")))?;
    }
    // The file is written twice: the first pass allocates its blocks, the
    // second overwrites them in place (data movement alone).
    for pass in 0..2 {
        let (cpu_before, started) = (cpu(config.backend_pid), Instant::now());
        for i in 0..chunks {
            unique += 1;
            let wi = WriteIn {
                fh,
                offset: i * u64::from(chunk),
                size: chunk,
                flags: flags & !(libc::O_CREAT | libc::O_EXCL) as u32,
                ..Default::default()
            };
            let h = header(
                Opcode::Write,
                unique,
                nodeid,
                size_of::<InHeader>() + size_of::<WriteIn>() + chunk as usize,
            );
            mem.write_slice(h.as_bytes(), layout.headers)
                .and_then(|()| mem.write_slice(wi.as_bytes(), GuestAddress(layout.headers.0 + 64)))
                .map_err(|e| ReplayError::Setup(format!("writing a request: {e}")))?;
            let write = VRING_DESC_F_WRITE as u16;
            let mut descs = vec![
                (layout.headers, size_of::<InHeader>() as u32, 0),
                (
                    GuestAddress(layout.headers.0 + 64),
                    size_of::<WriteIn>() as u32,
                    0,
                ),
            ];
            descs.extend(layout.pages(i, 0));
            descs.push((layout.reply, size_of::<OutHeader>() as u32, write));
            descs.push((
                GuestAddress(layout.reply.0 + 64),
                size_of::<WriteOut>() as u32,
                write,
            ));
            let used = exchange(session, &layout, &descs, timeout_ms)?;
            out_header(session, &layout, "WRITE", unique, used)?;
            let mut out = WriteOut::default();
            mem.read_slice(out.as_mut_bytes(), GuestAddress(layout.reply.0 + 64))
                .map_err(|e| ReplayError::Protocol(format!("reading a reply: {e}")))?;
            if used as usize != size_of::<OutHeader>() + size_of::<WriteOut>() || out.size != chunk {
                return Err(bad(
                    "WRITE",
                    unique,
                    format!("wrote {} of {chunk} bytes ({used} used)", out.size),
                ));
            }
        }
        let phase = Phase {
            requests: chunks,
            elapsed: started.elapsed(),
            backend_cpu_ns: cpu_before
                .zip(cpu(config.backend_pid))
                .map(|(b, a)| a.saturating_sub(b)),
        };
        if pass == 0 {
            report.write = phase;
        } else {
            report.rewrite = phase;
        }
    }

    // READ: header, fuse_read_in; reply: out header, data pages.
    let mut got = vec![0u8; chunk as usize];
    let (cpu_before, started) = (cpu(config.backend_pid), Instant::now());
    for i in 0..chunks {
        unique += 1;
        let ri = ReadIn {
            fh,
            offset: i * u64::from(chunk),
            size: chunk,
            flags: flags & !(libc::O_CREAT | libc::O_EXCL) as u32,
            ..Default::default()
        };
        let h = header(
            Opcode::Read,
            unique,
            nodeid,
            size_of::<InHeader>() + size_of::<ReadIn>(),
        );
        mem.write_slice(h.as_bytes(), layout.headers)
            .and_then(|()| mem.write_slice(ri.as_bytes(), GuestAddress(layout.headers.0 + 64)))
            .map_err(|e| ReplayError::Setup(format!("writing a request: {e}")))?;
        let write = VRING_DESC_F_WRITE as u16;
        let mut descs = vec![
            (layout.headers, size_of::<InHeader>() as u32, 0),
            (GuestAddress(layout.headers.0 + 64), size_of::<ReadIn>() as u32, 0),
            (layout.reply, size_of::<OutHeader>() as u32, write),
        ];
        descs.extend(layout.pages(i, write));
        let used = exchange(session, &layout, &descs, timeout_ms)?;
        out_header(session, &layout, "READ", unique, used)?;
        if used as usize != size_of::<OutHeader>() + chunk as usize {
            return Err(bad("READ", unique, format!("{used} bytes for a read of {chunk}")));
        }
        mem.read_slice(&mut got, layout.slot(i))
            .map_err(|e| ReplayError::Protocol(format!("reading a reply: {e}")))?;
        if got != expected {
            return Err(bad(
                "READ",
                unique,
                format!("chunk {i} differs from what was written"),
            ));
        }
        // A stale page must not pass for a later chunk's data.
        mem.write_slice(&[0u8; PAGE_BYTES as usize], layout.slot(i))
            .map_err(|e| ReplayError::Setup(format!("clearing the data: {e}")))?;
    }
    report.read = Phase {
        requests: chunks,
        elapsed: started.elapsed(),
        backend_cpu_ns: cpu_before
            .zip(cpu(config.backend_pid))
            .map(|(b, a)| a.saturating_sub(b)),
    };

    session.ok(
        &Request::release(Opcode::Release, nodeid, fh, flags),
        Caller::ROOT,
    )?;
    Ok(report)
}
