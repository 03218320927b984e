//! The VMM's half of vhost-user for a virtio-fs device: connect to a
//! backend's socket, negotiate features, hand over guest memory and the two
//! virtqueues (0: high priority, 1: requests), then kick and wait for calls
//! as QEMU and a guest's interrupts would — with eventfds only, no guest.
//!
//! Message order as QEMU sends it: SET_OWNER, GET_FEATURES,
//! GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM,
//! SET_FEATURES, SET_MEM_TABLE, then per queue SET_VRING_NUM,
//! SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL,
//! SET_VRING_ENABLE.

use std::path::Path;

use std::os::fd::AsRawFd;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest::{ring_bytes, GuestRam, SplitRing, UsedElem};
use super::ReplayError;

/// The high-priority queue (FORGET, INTERRUPT).
pub const HIPRIO: usize = 0;
/// The (single) request queue.
pub const REQUEST: usize = 1;
const QUEUES: usize = 2;

/// What the device agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio feature bits acknowledged.
    pub features: u64,
    /// Descriptor chains go in indirect tables (as a Linux guest does for
    /// every chain of more than one buffer).
    pub indirect: bool,
    /// Notifications are suppressed by event indexes.
    pub event_idx: bool,
}

/// A vhost-user-fs device driven from this process.
pub struct Device {
    /// Only held: dropping it closes the socket, and the backend sees the
    /// VMM leave.
    _frontend: Frontend,
    ram: GuestRam,
    rings: [SplitRing; QUEUES],
    kicks: [EventFd; QUEUES],
    call: EventFd,
    epoll: Epoll,
    negotiated: Negotiated,
}

// vhost's `Frontend` has no Debug.
impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ram", &self.ram)
            .field("rings", &self.rings)
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Connects to the backend at `socket` and sets up both queues of
    /// `queue_size` entries at the start of `ram` (the rest of guest memory
    /// stays the caller's, from [`Device::free_memory_start`]).
    pub fn connect(socket: &Path, ram: GuestRam, queue_size: u16) -> Result<Device, ReplayError> {
        let vhost = |what: &'static str| {
            move |e: vhost::Error| ReplayError::Vhost {
                what,
                reason: e.to_string(),
            }
        };
        let mut frontend = Frontend::connect(socket, QUEUES as u64).map_err(vhost("connecting"))?;
        frontend.set_owner().map_err(vhost("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(vhost("GET_FEATURES"))?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        for (bit, name) in [
            (1u64 << VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
            (protocol_bit, "VHOST_USER_F_PROTOCOL_FEATURES"),
        ] {
            if offered & bit == 0 {
                return Err(ReplayError::Vhost {
                    what: "GET_FEATURES",
                    reason: format!("the backend does not offer {name} (features {offered:#x})"),
                });
            }
        }
        let wanted = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | protocol_bit;
        let features = offered & wanted;
        let protocol = frontend
            .get_protocol_features()
            .map_err(vhost("GET_PROTOCOL_FEATURES"))?;
        let want_protocol = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        let protocol = protocol & want_protocol;
        frontend
            .set_protocol_features(protocol)
            .map_err(vhost("SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every later message asks for an acknowledgement, so a refused
            // setting fails here and not as a silent hang.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().map_err(vhost("GET_QUEUE_NUM"))?;
            if n < QUEUES as u64 {
                return Err(ReplayError::Vhost {
                    what: "GET_QUEUE_NUM",
                    reason: format!("{n} queues, virtio-fs needs {QUEUES}"),
                });
            }
        }
        frontend.set_features(features).map_err(vhost("SET_FEATURES"))?;
        let negotiated = Negotiated {
            features,
            indirect: features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0,
            event_idx: features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
        };
        frontend
            .set_mem_table(&[ram.region_info()?])
            .map_err(vhost("SET_MEM_TABLE"))?;

        let call = EventFd::new(EFD_NONBLOCK).map_err(|e| ReplayError::Setup(format!("eventfd: {e}")))?;
        let epoll = Epoll::new().map_err(|e| ReplayError::Setup(format!("epoll: {e}")))?;
        epoll
            .ctl(
                ControlOperation::Add,
                call.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(|e| ReplayError::Setup(format!("epoll_ctl: {e}")))?;
        let step = ring_bytes(queue_size).next_multiple_of(4096);
        let rings = [
            SplitRing::new(GuestAddress(0), queue_size, negotiated.event_idx),
            SplitRing::new(GuestAddress(step), queue_size, negotiated.event_idx),
        ];
        let kicks = [
            EventFd::new(EFD_NONBLOCK).map_err(|e| ReplayError::Setup(format!("eventfd: {e}")))?,
            EventFd::new(EFD_NONBLOCK).map_err(|e| ReplayError::Setup(format!("eventfd: {e}")))?,
        ];
        for (q, ring) in rings.iter().enumerate() {
            let (desc, avail, used) = ring.addresses();
            frontend
                .set_vring_num(q, queue_size)
                .map_err(vhost("SET_VRING_NUM"))?;
            frontend.set_vring_base(q, 0).map_err(vhost("SET_VRING_BASE"))?;
            let config = VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: ram.user_addr(desc)?,
                used_ring_addr: ram.user_addr(used)?,
                avail_ring_addr: ram.user_addr(avail)?,
                log_addr: None,
            };
            frontend
                .set_vring_addr(q, &config)
                .map_err(vhost("SET_VRING_ADDR"))?;
            frontend
                .set_vring_kick(q, &kicks[q])
                .map_err(vhost("SET_VRING_KICK"))?;
            // One call eventfd for both queues: a notification on either
            // wakes the one thread that waits, which then looks at both.
            frontend
                .set_vring_call(q, &call)
                .map_err(vhost("SET_VRING_CALL"))?;
            frontend
                .set_vring_enable(q, true)
                .map_err(vhost("SET_VRING_ENABLE"))?;
        }
        Ok(Device {
            _frontend: frontend,
            ram,
            rings,
            kicks,
            call,
            epoll,
            negotiated,
        })
    }

    /// The first guest address after the rings, free for request buffers.
    pub fn free_memory_start(&self) -> u64 {
        let (_, _, used) = self.rings[REQUEST].addresses();
        (used.0 + ring_bytes(self.rings[REQUEST].size())).next_multiple_of(4096)
    }

    /// Guest memory.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Entries per queue.
    pub fn queue_size(&self) -> u16 {
        self.rings[REQUEST].size()
    }

    /// Writes a descriptor chain for queue `queue` (see [`SplitRing::write_chain`]).
    pub fn write_chain(
        &self,
        table: GuestAddress,
        first: u16,
        descs: &[(GuestAddress, u32, u16)],
    ) -> Result<(), ReplayError> {
        SplitRing::write_chain(self.ram.mem(), table, first, descs)
    }

    /// The descriptor table of `queue`.
    pub fn desc_table(&self, queue: usize) -> GuestAddress {
        self.rings[queue].addresses().0
    }

    /// Offers the chain at `head` on `queue` and kicks if the device wants it.
    pub fn submit(&mut self, queue: usize, head: u16) -> Result<(), ReplayError> {
        if self.rings[queue].publish(self.ram.mem(), head)? {
            self.kicks[queue]
                .write(1)
                .map_err(|e| ReplayError::Setup(format!("kicking queue {queue}: {e}")))?;
        }
        Ok(())
    }

    /// The next used entry of `queue`, if any.
    pub fn pop_used(&mut self, queue: usize) -> Result<Option<UsedElem>, ReplayError> {
        self.rings[queue].pop_used(self.ram.mem())
    }

    /// Waits until the device calls (or may have added used entries),
    /// at most `timeout_ms`.
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), ReplayError> {
        let mut pending = false;
        for ring in &mut self.rings {
            pending |= ring.arm_notification(self.ram.mem())?;
        }
        if pending {
            return Ok(());
        }
        let mut events = [EpollEvent::default(); 1];
        loop {
            match self.epoll.wait(timeout_ms, &mut events) {
                Ok(0) => return Err(ReplayError::Timeout(timeout_ms)),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReplayError::Setup(format!("epoll_wait: {e}"))),
            }
        }
        match self.call.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(ReplayError::Setup(format!("reading the call eventfd: {e}"))),
        }
    }
}
