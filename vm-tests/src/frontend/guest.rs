//! The guest's side of memory and virtqueues: memfd-backed guest RAM that a
//! vhost-user backend can map, and the driver's half of a split virtqueue
//! (descriptor table, available ring, used ring), written through
//! vm-memory's checked accessors.
//!
//! Layout of a split ring (virtio 1.x, 2.7): the descriptor table (16 bytes
//! per entry), the available ring (`flags`, `idx`, `ring[size]`,
//! `used_event`) and the used ring (`flags`, `idx`, `ring[size]` of
//! `{id, len}`, `avail_event`), all little-endian.

use std::fs::File;
use std::sync::atomic::{fence, Ordering};

use vhost::VhostUserMemoryRegionInfo;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::ReplayError;

/// Guest RAM: one shared memfd mapping starting at guest address 0.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size_bytes: u64,
}

impl GuestRam {
    /// Creates `size_bytes` of zeroed, shareable guest memory.
    pub fn new(size_bytes: u64) -> Result<GuestRam, ReplayError> {
        let setup = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| ReplayError::Setup(format!("{what}: {e}"))
        };
        let fd = rustix::fs::memfd_create("xfuse-replay-guest", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| setup("memfd_create")(e.into()))?;
        let file = File::from(fd);
        file.set_len(size_bytes).map_err(setup("sizing the memfd"))?;
        let len = usize::try_from(size_bytes)
            .map_err(|_| ReplayError::Setup(format!("guest memory of {size_bytes} bytes")))?;
        let mem =
            GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), len, Some(FileOffset::new(file, 0)))])
                .map_err(|e| ReplayError::Setup(format!("mapping guest memory: {e}")))?;
        Ok(GuestRam { mem, size_bytes })
    }

    /// The memory, for reads and writes at guest addresses.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Bytes of guest memory.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The region as SET_MEM_TABLE describes it (its memfd, and where it is
    /// mapped in this process: vring addresses are given in that space).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo, ReplayError> {
        let region = self
            .mem
            .iter()
            .next()
            .ok_or_else(|| ReplayError::Setup("guest memory has no region".into()))?;
        VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|e| ReplayError::Setup(format!("describing guest memory: {e}")))
    }

    /// Where guest address `addr` is mapped in this process (the "user
    /// address" vhost-user uses for vring addresses).
    pub fn user_addr(&self, addr: GuestAddress) -> Result<u64, ReplayError> {
        let region = self.region_info()?;
        if addr.0 >= region.memory_size {
            return Err(ReplayError::Setup(format!(
                "{:#x} is outside guest memory",
                addr.0
            )));
        }
        Ok(region.userspace_addr + addr.0 - region.guest_phys_addr)
    }
}

/// Bytes a split ring of `size` entries takes, the used ring page-aligned.
pub fn ring_bytes(size: u16) -> u64 {
    let size = u64::from(size);
    used_offset(size) + 6 + 8 * size
}

fn used_offset(size: u64) -> u64 {
    (16 * size + 6 + 2 * size).next_multiple_of(4096)
}

/// `vring_need_event()`: whether moving an index from `old` to `new` passes
/// the other side's `event` index (virtio 1.x, 2.7.10).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One used-ring entry as the device wrote it (not yet validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// The head descriptor index of the chain.
    pub id: u32,
    /// Bytes the device wrote into the chain's writable buffers.
    pub len: u32,
}

/// The driver's half of a split virtqueue.
#[derive(Debug)]
pub struct SplitRing {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// The next available index we publish.
    avail_idx: u16,
    /// The next used index we will consume.
    last_used: u16,
    event_idx: bool,
}

impl SplitRing {
    /// A ring of `size` entries (a power of two) at `base` (4 KiB aligned),
    /// taking [`ring_bytes`] bytes; the memory there must be zeroed.
    pub fn new(base: GuestAddress, size: u16, event_idx: bool) -> SplitRing {
        let n = u64::from(size);
        SplitRing {
            size,
            desc: base,
            avail: GuestAddress(base.0 + 16 * n),
            used: GuestAddress(base.0 + used_offset(n)),
            avail_idx: 0,
            last_used: 0,
            event_idx,
        }
    }

    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of (descriptor table, available ring, used ring).
    pub fn addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.avail, self.used)
    }

    /// Writes `descs` (address, length, flags without NEXT) as a chain into
    /// the table at `table` starting at entry `first`, linking them with
    /// NEXT. `table` is the ring's own descriptor table, or an indirect one.
    pub fn write_chain(
        mem: &GuestMemoryMmap,
        table: GuestAddress,
        first: u16,
        descs: &[(GuestAddress, u32, u16)],
    ) -> Result<(), ReplayError> {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = first
                .checked_add(u16::try_from(i).unwrap_or(u16::MAX))
                .ok_or_else(|| ReplayError::Setup("descriptor index overflow".into()))?;
            let last = i + 1 == descs.len();
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | VRING_DESC_F_NEXT as u16, index + 1)
            };
            let at = GuestAddress(table.0 + 16 * u64::from(index));
            mem.write_obj(Descriptor::new(addr.0, len, flags, next), at)
                .map_err(|e| ReplayError::Setup(format!("writing descriptor {index}: {e}")))?;
        }
        Ok(())
    }

    /// Offers the chain at `head` to the device; returns whether the device
    /// asked to be notified (kicked).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<bool, ReplayError> {
        let slot = u64::from(self.avail_idx % self.size);
        let ring = GuestAddress(self.avail.0 + 4 + 2 * slot);
        let io = |e: vm_memory::GuestMemoryError| ReplayError::Setup(format!("available ring: {e}"));
        mem.write_obj(head.to_le(), ring).map_err(io)?;
        let old = self.avail_idx;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The entry must be visible before the index that publishes it.
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail.0 + 2),
            Ordering::Release,
        )
        .map_err(io)?;
        // ... and the index before we read whether the device wants a kick.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size));
            let avail_event = u16::from_le(mem.load(at, Ordering::Acquire).map_err(io)?);
            Ok(need_event(avail_event, self.avail_idx, old))
        } else {
            let flags = u16::from_le(mem.load(self.used, Ordering::Acquire).map_err(io)?);
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Takes the next used entry, if the device has written one.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<UsedElem>, ReplayError> {
        let io = |e: vm_memory::GuestMemoryError| ReplayError::Setup(format!("used ring: {e}"));
        let used_idx = u16::from_le(
            mem.load(GuestAddress(self.used.0 + 2), Ordering::Acquire)
                .map_err(io)?,
        );
        if used_idx == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.size);
        let mut raw = [0u8; 8];
        mem.read_slice(&mut raw, GuestAddress(self.used.0 + 4 + 8 * slot))
            .map_err(io)?;
        self.last_used = self.last_used.wrapping_add(1);
        let [a, b, c, d, e, f, g, h] = raw;
        Ok(Some(UsedElem {
            id: u32::from_le_bytes([a, b, c, d]),
            len: u32::from_le_bytes([e, f, g, h]),
        }))
    }

    /// With EVENT_IDX: asks for a notification at the next used entry;
    /// returns whether one is already there (then do not wait for it).
    pub fn arm_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, ReplayError> {
        let io = |e: vm_memory::GuestMemoryError| ReplayError::Setup(format!("available ring: {e}"));
        if self.event_idx {
            let at = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size));
            mem.store(self.last_used.to_le(), at, Ordering::Release)
                .map_err(io)?;
        }
        // The device may have added an entry before it saw used_event.
        fence(Ordering::SeqCst);
        let used_idx = u16::from_le(
            mem.load(GuestAddress(self.used.0 + 2), Ordering::Acquire)
                .map_err(io)?,
        );
        Ok(used_idx != self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_spec() {
        // The device asked for a kick when the index passes 5.
        assert!(need_event(5, 6, 5));
        assert!(!need_event(5, 5, 4));
        assert!(need_event(5, 8, 2));
        assert!(!need_event(9, 8, 2));
        // Across the wrap.
        assert!(need_event(u16::MAX, 0, u16::MAX));
    }

    #[test]
    fn a_published_chain_is_what_the_device_side_reads() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mem = ram.mem();
        let mut ring = SplitRing::new(GuestAddress(0), 16, false);
        assert!(ring_bytes(16) <= 0x2000);
        let descs = [
            (GuestAddress(0x10000), 40, 0),
            (
                GuestAddress(0x11000),
                16,
                virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            ),
        ];
        SplitRing::write_chain(mem, GuestAddress(0), 3, &descs).unwrap();
        assert!(ring.publish(mem, 3).unwrap(), "a fresh ring wants kicks");
        let mut queue = virtio_queue::Queue::new(16).unwrap();
        use virtio_queue::QueueT;
        let (d, a, u) = ring.addresses();
        queue.set_desc_table_address(Some(d.0 as u32), Some((d.0 >> 32) as u32));
        queue.set_avail_ring_address(Some(a.0 as u32), Some((a.0 >> 32) as u32));
        queue.set_used_ring_address(Some(u.0 as u32), Some((u.0 >> 32) as u32));
        queue.set_ready(true);
        let mut chain = queue.pop_descriptor_chain(mem).unwrap();
        assert_eq!(chain.head_index(), 3);
        let first = chain.next().unwrap();
        assert_eq!(
            (first.addr().0, first.len(), first.is_write_only()),
            (0x10000, 40, false)
        );
        let second = chain.next().unwrap();
        assert_eq!(
            (second.addr().0, second.len(), second.is_write_only()),
            (0x11000, 16, true)
        );
        assert!(chain.next().is_none());
        assert_eq!(ring.pop_used(mem).unwrap(), None);
        queue.add_used(mem, 3, 16).unwrap();
        assert_eq!(ring.pop_used(mem).unwrap(), Some(UsedElem { id: 3, len: 16 }));
        assert_eq!(ring.pop_used(mem).unwrap(), None);
    }
}
