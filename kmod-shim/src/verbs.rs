//! RDMA verbs on a device (libibverbs), for the service layer's RDMA.
//!
//! A safe API over what RDMA READ and WRITE between two reliable-connected
//! queue pairs needs: a device opened by name, the port's RoCE v2 GID, a
//! protection domain, registered memory, and queue pairs that post signaled
//! RDMA READ and WRITE work requests and poll their own completion queue.
//!
//! # Ownership and teardown
//!
//! A device must see its objects destroyed in order: a queue pair before
//! its completion queue, both before the memory its work requests point at
//! is deregistered and freed, every memory region and queue pair before the
//! protection domain, and that before the device context closes. Here the
//! order follows from who holds whom, whatever order the owners drop their
//! handles in:
//!
//! - a [`ProtectionDomain`] holds the device context (an `Arc`);
//! - a [`MemoryRegion`] holds its protection domain;
//! - an [`RcQueuePair`] holds its protection domain and every memory region
//!   it has a work request in flight on, until that request's completion
//!   is polled or the queue pair is destroyed; it destroys its queue pair,
//!   then its completion queue, then lets those regions go.
//!
//! So memory the device may still be reading or writing is never freed: a
//! region dropped by its owner while a work request on it is in flight
//! lives on in the queue pair until the device is done with it. A teardown
//! verb that fails (the device refusing to destroy an object) leaks what
//! depends on it rather than freeing memory the device may still use.
//!
//! # Registered memory
//!
//! The device writes registered memory behind the program's back (an RDMA
//! READ landing, a peer's RDMA WRITE). No Rust reference into it is ever
//! made: [`MemoryRegion::read_at`] and [`MemoryRegion::write_at`] copy with
//! raw pointers, and copies from threads of this process are ordered by a
//! lock of the region. What the device writes concurrently with a copy out
//! is the caller's protocol to rule out (it reads a buffer after the
//! completion of the work request that filled it).
//!
//! # Crates
//!
//! The `ibverbs` crate lists the devices; everything else goes through its
//! raw bindings, `ibverbs-sys`: `ibverbs` 0.9 ties its objects together with
//! borrows (which owners shared between threads cannot hold), and has no
//! RDMA READ or WRITE. The bindings are generated from rdma-core 55's
//! headers; the program links the system's libibverbs (rdma-core 44 in
//! Debian 12), whose ABI for the verbs used here is the same.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::raw::{c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ibverbs_sys as ffi;

use crate::buf::PAGE;

/// The port used on every device: RoCE devices have one.
const PORT: u8 = 1;

/// Completions taken from the completion queue per poll.
const POLL_BATCH: usize = 32;

/// RDMA READs one queue pair may have outstanding as requester, and accepts
/// as responder (fewer if the device allows fewer). Further READs wait in
/// the send queue, so this bounds the device's state, not the window.
const RD_ATOMIC_MAX: u8 = 16;

/// Local ACK timeout: 4.096 µs × 2^16 ≈ 268 ms per try. Measured on
/// soft-RoCE (docs/BENCHMARKS.md, "File data by RDMA against TCP"): at
/// 2^14 (67 ms, perftest's value) four 1 MiB transfers at once on a busy
/// host timed out 53-113 times per 20 s although no packet was lost
/// (each timeout resends what was not yet acknowledged), and ran at
/// 0.4-1.0× of perftest; at 2^16, 0-4 times, and 0.96-1.12×. A peer's
/// responder that is late is not a lost packet, and a lossless fabric
/// loses few.
const ACK_TIMEOUT: u8 = 16;

/// Retransmissions before a work request fails with
/// `IBV_WC_RETRY_EXC_ERR` (a dead or unreachable peer): about two
/// seconds at [`ACK_TIMEOUT`].
const RETRY_COUNT: u8 = 7;

/// Receiver-not-ready retries. Only SENDs meet a receiver not ready, and
/// nothing here sends; bounded all the same (7 would mean forever).
const RNR_RETRY: u8 = 6;

/// Minimum RNR NAK timer (12: 0.64 ms), the usual value.
const MIN_RNR_TIMER: u8 = 12;

/// GRH hop limit for RoCE v2 (the IP TTL).
const HOP_LIMIT: u8 = 64;

/// Packet sequence numbers are 24 bits.
const PSN_MASK: u32 = 0x00ff_ffff;

/// A verb that failed, a device that is not there or not usable, or
/// arguments refused before a verb was called.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// A verb failed with this error.
    #[error("{call} failed: {source}")]
    Call {
        /// The verb, as its man page names it (`ibv_reg_mr`).
        call: &'static str,
        /// What it answered.
        #[source]
        source: io::Error,
    },
    /// No device of that name (or none at all).
    #[error("no RDMA device {} (libibverbs found: {found:?})", wanted.as_deref().unwrap_or("at all"))]
    NoDevice {
        /// The name asked for; `None` for "the first one".
        wanted: Option<String>,
        /// The devices there are.
        found: Vec<String>,
    },
    /// The device's port is not up.
    #[error("RDMA device {device}: port {PORT} is {state}, not active")]
    PortDown {
        /// The device.
        device: String,
        /// The port's state (`DOWN`, `INIT`, ...).
        state: &'static str,
    },
    /// The port has no GID to address a RoCE v2 peer with.
    #[error("RDMA device {device}: port {PORT} has no RoCE v2 GID holding an IPv4-mapped address")]
    NoRoceV2Gid {
        /// The device.
        device: String,
    },
    /// The arguments were refused before any verb was called.
    #[error("{0}")]
    Invalid(String),
}

impl VerbsError {
    /// `call` returned `rc`: 0 is success, anything else an errno (verbs
    /// return it positive, a few negative).
    fn check(call: &'static str, rc: c_int) -> Result<(), VerbsError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::Call {
                call,
                source: io::Error::from_raw_os_error(rc.saturating_abs()),
            })
        }
    }

    /// `call` returned NULL and set errno.
    fn last(call: &'static str) -> VerbsError {
        VerbsError::Call {
            call,
            source: io::Error::last_os_error(),
        }
    }
}

impl From<VerbsError> for io::Error {
    /// Keeps the kind of the verb's error (or `NotFound` for a missing
    /// device) and the whole message, which names the verb.
    fn from(e: VerbsError) -> io::Error {
        let kind = match &e {
            VerbsError::Call { source, .. } => source.kind(),
            VerbsError::NoDevice { .. } | VerbsError::NoRoceV2Gid { .. } => io::ErrorKind::NotFound,
            VerbsError::PortDown { .. } => io::ErrorKind::NetworkDown,
            VerbsError::Invalid(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e.to_string())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of the RDMA devices libibverbs finds (`rxe0`, `mlx5_0`).
///
/// An error when libibverbs cannot list devices at all (no RDMA support in
/// the kernel: `ENOSYS`); an empty list when there are none.
pub fn device_names() -> Result<Vec<String>, VerbsError> {
    let list = ibverbs::devices().map_err(|source| VerbsError::Call {
        call: "ibv_get_device_list",
        source,
    })?;
    Ok(list
        .iter()
        .filter_map(|d| d.name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// libibverbs' device list, freed on drop. Contexts opened from it outlive
/// it (`ibv_free_device_list(3)`).
struct DeviceList {
    list: NonNull<*mut ffi::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<DeviceList, VerbsError> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid place for the count; the list returned is
        // owned here and freed once, in Drop.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        let list = NonNull::new(list).ok_or_else(|| VerbsError::last("ibv_get_device_list"))?;
        Ok(DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        })
    }

    /// Each device's name and handle (valid while the list lives).
    fn entries(&self) -> Vec<(String, *mut ffi::ibv_device)> {
        (0..self.len)
            .filter_map(|i| {
                // SAFETY: the list holds `len` device pointers (and a NULL
                // after them), and is alive for `&self`.
                let dev = unsafe { *self.list.as_ptr().add(i) };
                if dev.is_null() {
                    return None;
                }
                // SAFETY: `dev` is a device of the live list; the name it
                // returns is a NUL-terminated string inside the device,
                // copied before the list can be freed.
                let name = unsafe { ffi::ibv_get_device_name(dev) };
                if name.is_null() {
                    return None;
                }
                // SAFETY: checked non-NULL just above; NUL-terminated (see
                // the previous SAFETY).
                let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
                Some((name, dev))
            })
            .collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed only
        // here; devices opened from it keep their own references.
        unsafe { ffi::ibv_free_device_list(self.list.as_ptr()) };
    }
}

/// An open device context: closed when the last object made from it goes.
struct ContextInner {
    ctx: NonNull<ffi::ibv_context>,
    name: String,
    limits: DeviceLimits,
}

// SAFETY: the context is only used through libibverbs calls, which are
// thread-safe (rdma-core serializes what needs it inside the library and
// the providers); the fields read from it are written once, at open.
unsafe impl Send for ContextInner {}
// SAFETY: as for Send: every use through `&ContextInner` is a thread-safe
// libibverbs call.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every object made from this context holds an `Arc` of it,
        // so none is left when this runs; the context is closed only here.
        // A failure leaves nothing to do.
        let _ = unsafe { ffi::ibv_close_device(self.ctx.as_ptr()) };
    }
}

impl ContextInner {
    fn query_port(&self) -> Result<ffi::ibv_port_attr, VerbsError> {
        let mut attr = ffi::ibv_port_attr::default();
        // SAFETY: the context is open; `attr` is an `ibv_port_attr`, larger
        // than the `_compat_ibv_port_attr` prefix this exported symbol
        // fills, so every byte it writes is inside `attr`.
        let rc = unsafe {
            ffi::ibv_query_port(
                self.ctx.as_ptr(),
                PORT,
                (&mut attr as *mut ffi::ibv_port_attr).cast::<ffi::_compat_ibv_port_attr>(),
            )
        };
        VerbsError::check("ibv_query_port", rc)?;
        Ok(attr)
    }

    fn port(&self) -> Result<PortInfo, VerbsError> {
        let attr = self.query_port()?;
        Ok(PortInfo {
            state: port_state_name(attr.state),
            active: attr.state == ffi::ibv_port_state::IBV_PORT_ACTIVE,
            active_mtu: attr.active_mtu,
            active_mtu_bytes: mtu_bytes(attr.active_mtu),
            gid_table_len: usize::try_from(attr.gid_tbl_len).unwrap_or(0),
        })
    }

    fn roce_v2_gid(&self) -> Result<Gid, VerbsError> {
        let port = self.port()?;
        if !port.active && port.state != "ARMED" {
            // The GID table is only valid on an active or armed port.
            return Err(VerbsError::PortDown {
                device: self.name.clone(),
                state: port.state,
            });
        }
        let mut entries = vec![ffi::ibv_gid_entry::default(); port.gid_table_len];
        // SAFETY: `entries` has room for `len()` entries of the size given;
        // the context is open.
        let got = unsafe {
            ffi::_ibv_query_gid_table(
                self.ctx.as_ptr(),
                entries.as_mut_ptr(),
                entries.len(),
                0,
                size_of::<ffi::ibv_gid_entry>(),
            )
        };
        let got = usize::try_from(got).map_err(|_| VerbsError::Call {
            call: "ibv_query_gid_table",
            source: io::Error::from_raw_os_error(i32::try_from(got.saturating_neg()).unwrap_or(libc::EIO)),
        })?;
        entries
            .iter()
            .take(got)
            .filter(|e| e.port_num == u32::from(PORT) && e.gid_type == ffi::IBV_GID_TYPE_ROCE_V2)
            .find_map(|e| {
                // SAFETY: every bit pattern of the union is a valid `[u8; 16]`.
                let raw = unsafe { e.gid.raw };
                is_ipv4_mapped(&raw).then_some(Gid {
                    index: e.gid_index,
                    raw,
                })
            })
            .ok_or_else(|| VerbsError::NoRoceV2Gid {
                device: self.name.clone(),
            })
    }
}

/// `::ffff:a.b.c.d`: how RoCE v2 addresses an IPv4 peer.
fn is_ipv4_mapped(gid: &[u8; 16]) -> bool {
    gid[..10].iter().all(|&b| b == 0) && gid[10..12] == [0xff, 0xff]
}

fn port_state_name(state: ffi::ibv_port_state::Type) -> &'static str {
    use ffi::ibv_port_state::*;
    match state {
        IBV_PORT_NOP => "NOP",
        IBV_PORT_DOWN => "DOWN",
        IBV_PORT_INIT => "INIT",
        IBV_PORT_ARMED => "ARMED",
        IBV_PORT_ACTIVE => "ACTIVE",
        IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER",
        _ => "in an unknown state",
    }
}

/// `IBV_MTU_*` in bytes (0 for a value this code does not know).
fn mtu_bytes(mtu: ffi::ibv_mtu) -> u32 {
    match mtu {
        ffi::IBV_MTU_256 => 256,
        ffi::IBV_MTU_512 => 512,
        ffi::IBV_MTU_1024 => 1024,
        ffi::IBV_MTU_2048 => 2048,
        ffi::IBV_MTU_4096 => 4096,
        _ => 0,
    }
}

/// What the device allows, as far as this module uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Work requests per queue pair.
    pub max_qp_wr: u32,
    /// Entries per completion queue.
    pub max_cqe: u32,
    /// RDMA READs a queue pair accepts outstanding as responder.
    pub max_qp_rd_atom: u32,
    /// RDMA READs a queue pair may have outstanding as requester.
    pub max_qp_init_rd_atom: u32,
    /// Bytes one memory region may span.
    pub max_mr_size: u64,
}

/// A port's state, as this module uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// `ACTIVE`, `DOWN`, ...
    pub state: &'static str,
    /// Whether it is active (can carry traffic).
    pub active: bool,
    /// The active MTU as the `IBV_MTU_*` value queue pairs take.
    pub active_mtu: u32,
    /// The active MTU in bytes (rxe on a 1500-byte netdev: 1024).
    pub active_mtu_bytes: u32,
    /// Entries of its GID table.
    pub gid_table_len: usize,
}

/// A GID of the port: what a peer addresses this end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gid {
    /// Its index in the port's GID table.
    pub index: u32,
    /// The GID (for RoCE v2 over IPv4, `::ffff:a.b.c.d`).
    pub raw: [u8; 16],
}

/// An open RDMA device.
#[derive(Clone)]
pub struct Device {
    inner: Arc<ContextInner>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.inner.name)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl Device {
    /// Opens the device named `name`, or the first one libibverbs lists.
    pub fn open(name: Option<&str>) -> Result<Device, VerbsError> {
        let list = DeviceList::get()?;
        let entries = list.entries();
        let found = match name {
            Some(wanted) => entries.iter().find(|(n, _)| n == wanted),
            None => entries.first(),
        };
        let Some((dev_name, dev)) = found else {
            return Err(VerbsError::NoDevice {
                wanted: name.map(str::to_owned),
                found: entries.into_iter().map(|(n, _)| n).collect(),
            });
        };
        // SAFETY: `dev` is a device of the live list.
        let ctx = unsafe { ffi::ibv_open_device(*dev) };
        let ctx = NonNull::new(ctx).ok_or_else(|| VerbsError::last("ibv_open_device"))?;
        let mut inner = ContextInner {
            ctx,
            name: dev_name.clone(),
            limits: DeviceLimits {
                max_qp_wr: 0,
                max_cqe: 0,
                max_qp_rd_atom: 0,
                max_qp_init_rd_atom: 0,
                max_mr_size: 0,
            },
        };
        // The context now closes on every path out; the list may go.
        drop(list);
        let mut attr = ffi::ibv_device_attr::default();
        // SAFETY: the context is open; `attr` is a valid place for the answer.
        let rc = unsafe { ffi::ibv_query_device(inner.ctx.as_ptr(), &mut attr) };
        VerbsError::check("ibv_query_device", rc)?;
        let count = |n: c_int| u32::try_from(n).unwrap_or(0);
        inner.limits = DeviceLimits {
            max_qp_wr: count(attr.max_qp_wr),
            max_cqe: count(attr.max_cqe),
            max_qp_rd_atom: count(attr.max_qp_rd_atom),
            max_qp_init_rd_atom: count(attr.max_qp_init_rd_atom),
            max_mr_size: attr.max_mr_size,
        };
        Ok(Device {
            inner: Arc::new(inner),
        })
    }

    /// Its name (`rxe0`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What it allows.
    pub fn limits(&self) -> DeviceLimits {
        self.inner.limits
    }

    /// Its port's state now.
    pub fn port(&self) -> Result<PortInfo, VerbsError> {
        self.inner.port()
    }

    /// The port's RoCE v2 GID holding an IPv4-mapped address: what a peer
    /// on an IPv4 network reaches this device by. The table fills in once
    /// the netdev under the device has its address; before that, or on an
    /// InfiniBand port, [`VerbsError::NoRoceV2Gid`].
    pub fn roce_v2_gid(&self) -> Result<Gid, VerbsError> {
        self.inner.roce_v2_gid()
    }

    /// A new protection domain.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain, VerbsError> {
        // SAFETY: the context is open (held by `self`).
        let pd = unsafe { ffi::ibv_alloc_pd(self.inner.ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| VerbsError::last("ibv_alloc_pd"))?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                pd,
                device: self.inner.clone(),
            }),
        })
    }
}

struct PdInner {
    pd: NonNull<ffi::ibv_pd>,
    /// Closed after the protection domain is deallocated.
    device: Arc<ContextInner>,
}

// SAFETY: the PD is only used through thread-safe libibverbs calls.
unsafe impl Send for PdInner {}
// SAFETY: as for Send.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: every memory region and queue pair of this PD holds an
        // `Arc` of it, so none is left; deallocated only here. A failure
        // (EBUSY: something of it leaked on purpose) leaves nothing to do.
        let _ = unsafe { ffi::ibv_dealloc_pd(self.pd.as_ptr()) };
    }
}

/// A protection domain: memory regions and queue pairs made from the same
/// one work together.
#[derive(Clone)]
pub struct ProtectionDomain {
    inner: Arc<PdInner>,
}

impl fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectionDomain")
            .field("device", &self.inner.device.name)
            .finish()
    }
}

/// What a memory region's registration allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// This process's work requests only (an RDMA READ may land in it);
    /// no peer can reach it, whatever key it sends.
    Local,
    /// Also the connected peers' RDMA READ and WRITE, with its rkey.
    LocalAndRemote,
}

impl ProtectionDomain {
    /// The device it belongs to.
    pub fn device_name(&self) -> &str {
        &self.inner.device.name
    }

    /// Registers `len` bytes of new, zeroed, page-aligned memory of its own
    /// (whole pages, shared with no other allocation, not inherited by a
    /// child process).
    pub fn register(&self, len: usize, access: Access) -> Result<MemoryRegion, VerbsError> {
        let limit = self.inner.device.limits.max_mr_size;
        if len == 0 || u64::try_from(len).map_or(true, |l| l > limit) {
            return Err(VerbsError::Invalid(format!(
                "cannot register {len} bytes (1 to {limit} on {})",
                self.inner.device.name
            )));
        }
        let mapping = Mapping::new(len)?;
        let mut flags = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        if access == Access::LocalAndRemote {
            flags = flags
                | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ
                | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        }
        let Ok(flags) = c_int::try_from(flags.0) else {
            mapping.unmap();
            return Err(VerbsError::Invalid("access flags out of range".into()));
        };
        // SAFETY: the PD is alive (held by `self`); the span is `len`
        // bytes of a mapping owned by the region made below, which keeps
        // it mapped until after it is deregistered.
        let mr = unsafe {
            ffi::ibv_reg_mr(
                self.inner.pd.as_ptr(),
                mapping.ptr.as_ptr().cast::<c_void>(),
                len,
                flags,
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            let e = VerbsError::last("ibv_reg_mr");
            mapping.unmap();
            return Err(e);
        };
        // SAFETY: `mr` was just returned by ibv_reg_mr and is not freed
        // before the region is dropped; its keys are set at registration.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        Ok(MemoryRegion {
            mr,
            mapping,
            len,
            lkey,
            rkey,
            access,
            copies: RwLock::new(()),
            pd: self.inner.clone(),
        })
    }

    /// A reliable-connected queue pair with a completion queue of its own,
    /// room for `depth` work requests in flight (at most what the device
    /// allows; see [`RcQueuePair::depth`]), addressed by the port's
    /// `gid`.
    pub fn create_rc_qp(&self, depth: u32, gid: Gid) -> Result<RcQueuePair, VerbsError> {
        let limits = self.inner.device.limits;
        let depth = depth.max(1).min(limits.max_qp_wr).min(limits.max_cqe);
        let cqe = c_int::try_from(depth).map_err(|_| VerbsError::Invalid(format!("queue depth {depth}")))?;
        if depth == 0 {
            return Err(VerbsError::Invalid(format!(
                "{} allows no work requests or completions",
                self.inner.device.name
            )));
        }
        let ctx = self.inner.device.ctx.as_ptr();
        // SAFETY: the context is open (held through the PD); no channel,
        // no context pointer.
        let cq = unsafe { ffi::ibv_create_cq(ctx, cqe, ptr::null_mut(), ptr::null_mut(), 0) };
        let cq = NonNull::new(cq).ok_or_else(|| VerbsError::last("ibv_create_cq"))?;
        let mut init = ffi::ibv_qp_init_attr {
            send_cq: cq.as_ptr(),
            recv_cq: cq.as_ptr(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: depth,
                // Nothing is received; providers want a receive queue all
                // the same.
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
            // Each work request asks for its completion.
            sq_sig_all: 0,
            ..Default::default()
        };
        // SAFETY: the PD and the CQ are alive; `init` is a valid
        // description (one CQ for both queues, no SRQ).
        let qp = unsafe { ffi::ibv_create_qp(self.inner.pd.as_ptr(), &mut init) };
        let Some(qp) = NonNull::new(qp) else {
            let e = VerbsError::last("ibv_create_qp");
            // SAFETY: the CQ was created above and nothing uses it.
            let _ = unsafe { ffi::ibv_destroy_cq(cq.as_ptr()) };
            return Err(e);
        };
        // SAFETY: the context is open; its ops table is filled by the
        // provider at open and never changes. `qp_num` is set at creation.
        let (post_send, poll_cq, qpn) =
            unsafe { ((*ctx).ops.post_send, (*ctx).ops.poll_cq, (*qp.as_ptr()).qp_num) };
        let teardown = || {
            // SAFETY: both were created above, nothing else refers to them;
            // the QP goes first.
            unsafe {
                let _ = ffi::ibv_destroy_qp(qp.as_ptr());
                let _ = ffi::ibv_destroy_cq(cq.as_ptr());
            }
        };
        let (Some(post_send), Some(poll_cq)) = (post_send, poll_cq) else {
            teardown();
            return Err(VerbsError::Invalid(format!(
                "the provider of {} has no post_send or poll_cq",
                self.inner.device.name
            )));
        };
        Ok(RcQueuePair {
            qp,
            cq,
            post_send,
            poll_cq,
            qpn,
            psn: random_psn(),
            gid,
            depth,
            state: Mutex::new(QpState::Reset),
            in_flight: Mutex::new(HashMap::new()),
            pd: self.inner.clone(),
        })
    }
}

/// A random first packet sequence number (a stale packet of an earlier
/// connection between the same queue pair numbers is then unlikely to fit).
fn random_psn() -> u32 {
    // RandomState is seeded from the OS; hashing nothing yields its keys'
    // mix.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits as u32) & PSN_MASK
}

/// Anonymous private memory of whole pages, not inherited across fork(2)
/// (a child's copy-on-write would leave the parent's registered pages
/// behind). Unmapped explicitly: only once the device can no longer touch
/// it.
struct Mapping {
    ptr: NonNull<u8>,
    mapped_len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, VerbsError> {
        let mapped_len = len
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| VerbsError::Invalid(format!("cannot map {len} bytes")))?;
        // SAFETY: a new anonymous private mapping; no existing memory is
        // touched.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(VerbsError::last("mmap(2)"));
        }
        let Some(ptr) = NonNull::new(ptr.cast::<u8>()) else {
            return Err(VerbsError::Invalid("mmap(2) returned NULL".into()));
        };
        let mapping = Mapping { ptr, mapped_len };
        // SAFETY: the span is the mapping just made, owned here.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast::<c_void>(), mapped_len, libc::MADV_DONTFORK) };
        if rc != 0 {
            let e = VerbsError::last("madvise(MADV_DONTFORK)");
            mapping.unmap();
            return Err(e);
        }
        Ok(mapping)
    }

    fn unmap(self) {
        // SAFETY: the mapping was made by `new` and is unmapped once (this
        // consumes it); no registration covers it any more.
        let _ = unsafe { libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.mapped_len) };
    }
}

/// Registered memory of its own (see the module docs on how its bytes are
/// reached).
pub struct MemoryRegion {
    mr: NonNull<ffi::ibv_mr>,
    mapping: Mapping,
    len: usize,
    lkey: u32,
    rkey: u32,
    access: Access,
    /// Copies in (write) exclude copies out (read) and each other.
    copies: RwLock<()>,
    pd: Arc<PdInner>,
}

// SAFETY: the MR handle is only used through thread-safe libibverbs calls;
// the memory is reached only by raw-pointer copies under `copies`.
unsafe impl Send for MemoryRegion {}
// SAFETY: as for Send: `&MemoryRegion` allows only copies ordered by the
// `copies` lock, and reading the keys.
unsafe impl Sync for MemoryRegion {}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("device", &self.pd.device.name)
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("lkey", &self.lkey)
            .field("rkey", &self.rkey)
            .field("access", &self.access)
            .finish()
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the MR was registered by `ProtectionDomain::register` and
        // is deregistered only here; a queue pair with a work request on it
        // in flight holds an `Arc` of this region, so none is.
        let rc = unsafe { ffi::ibv_dereg_mr(self.mr.as_ptr()) };
        if rc == 0 {
            let mapping = Mapping {
                ptr: self.mapping.ptr,
                mapped_len: self.mapping.mapped_len,
            };
            mapping.unmap();
        }
        // Otherwise the device may still reach the memory: it stays mapped.
    }
}

impl MemoryRegion {
    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has none (never: registration refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What it was registered for.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The key local work requests name it with.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// The key a peer reaches it with (useless to one unless
    /// [`Access::LocalAndRemote`]).
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// The address of its first byte, as work requests and peers name it.
    pub fn addr(&self) -> u64 {
        self.mapping.ptr.as_ptr() as u64
    }

    /// The address and key a peer reaches `offset..offset + len` with;
    /// `None` if it is not registered for remote access or the span is
    /// not inside it.
    pub fn remote_span(&self, offset: usize, len: usize) -> Option<(u64, u32)> {
        let end = offset.checked_add(len)?;
        (self.access == Access::LocalAndRemote && end <= self.len)
            .then(|| (self.addr() + offset as u64, self.rkey))
    }

    fn check_span(&self, offset: usize, len: usize) {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        assert!(
            inside,
            "{len} bytes at {offset} are past the end of a {}-byte memory region",
            self.len
        );
    }

    /// Copies `out.len()` bytes at `offset` out.
    ///
    /// # Panics
    ///
    /// If the span is not inside the region.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.check_span(offset, out.len());
        let _copying = self.copies.read().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the span is inside the mapping (checked above), which
        // lives as long as `self`; `out` is a distinct Rust buffer, never
        // registered memory (no reference into a region is ever made).
        // Copies in are excluded by the lock.
        unsafe {
            ptr::copy_nonoverlapping(self.mapping.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
    }

    /// Copies `data` in at `offset`.
    ///
    /// # Panics
    ///
    /// If the span is not inside the region.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        self.check_span(offset, data.len());
        let _copying = self.copies.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `read_at`; the lock excludes every other copy from
        // this process.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.mapping.ptr.as_ptr().add(offset), data.len()) };
    }
}

/// Where an [`RcQueuePair`] is on its way to sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QpState {
    Reset,
    /// `connect` is moving it (or failed to: it is then left as it was).
    Connecting,
    Ready,
    Error,
}

/// What the peer queue pair is reached by: from its
/// [`RcQueuePair::local`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpAddress {
    /// The peer port's GID.
    pub gid: [u8; 16],
    /// Its queue pair number.
    pub qpn: u32,
    /// Its first packet sequence number (24 bits).
    pub psn: u32,
}

/// An RDMA operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdmaOp {
    /// Pulls the peer's bytes into local memory.
    Read,
    /// Pushes local bytes into the peer's memory.
    Write,
}

/// A peer's registered span, as its owner told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteSpan {
    /// Its address in the owner's registration.
    pub addr: u64,
    /// The owner's rkey for it.
    pub rkey: u32,
    /// Bytes to move.
    pub len: u32,
}

/// A work request that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The id it was posted with.
    pub wr_id: u64,
    /// Done (`Ok` with the bytes the completion reports, meaningful for
    /// READs), or why not.
    pub result: Result<u32, CompletionError>,
}

/// A work completion that did not succeed: its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("work request {wr_id} failed: {} ({}), vendor error {vendor_err:#x}", status_name(self.status), status_text(self.status))]
pub struct CompletionError {
    /// The work request's id.
    pub wr_id: u64,
    /// `ibv_wc_status` (`IBV_WC_REM_ACCESS_ERR` is 10).
    pub status: u32,
    /// The device's own code, for its vendor's tools.
    pub vendor_err: u32,
}

impl CompletionError {
    /// The status's name (`IBV_WC_REM_ACCESS_ERR`).
    pub fn status_name(&self) -> &'static str {
        status_name(self.status)
    }

    /// Whether the work request was flushed: it never ran because the
    /// queue pair had already failed (or was moved to the error state).
    pub fn is_flush(&self) -> bool {
        self.status == ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR
    }
}

fn status_name(status: u32) -> &'static str {
    use ffi::ibv_wc_status::*;
    match status {
        IBV_WC_SUCCESS => "IBV_WC_SUCCESS",
        IBV_WC_LOC_LEN_ERR => "IBV_WC_LOC_LEN_ERR",
        IBV_WC_LOC_QP_OP_ERR => "IBV_WC_LOC_QP_OP_ERR",
        IBV_WC_LOC_EEC_OP_ERR => "IBV_WC_LOC_EEC_OP_ERR",
        IBV_WC_LOC_PROT_ERR => "IBV_WC_LOC_PROT_ERR",
        IBV_WC_WR_FLUSH_ERR => "IBV_WC_WR_FLUSH_ERR",
        IBV_WC_MW_BIND_ERR => "IBV_WC_MW_BIND_ERR",
        IBV_WC_BAD_RESP_ERR => "IBV_WC_BAD_RESP_ERR",
        IBV_WC_LOC_ACCESS_ERR => "IBV_WC_LOC_ACCESS_ERR",
        IBV_WC_REM_INV_REQ_ERR => "IBV_WC_REM_INV_REQ_ERR",
        IBV_WC_REM_ACCESS_ERR => "IBV_WC_REM_ACCESS_ERR",
        IBV_WC_REM_OP_ERR => "IBV_WC_REM_OP_ERR",
        IBV_WC_RETRY_EXC_ERR => "IBV_WC_RETRY_EXC_ERR",
        IBV_WC_RNR_RETRY_EXC_ERR => "IBV_WC_RNR_RETRY_EXC_ERR",
        IBV_WC_LOC_RDD_VIOL_ERR => "IBV_WC_LOC_RDD_VIOL_ERR",
        IBV_WC_REM_INV_RD_REQ_ERR => "IBV_WC_REM_INV_RD_REQ_ERR",
        IBV_WC_REM_ABORT_ERR => "IBV_WC_REM_ABORT_ERR",
        IBV_WC_INV_EECN_ERR => "IBV_WC_INV_EECN_ERR",
        IBV_WC_INV_EEC_STATE_ERR => "IBV_WC_INV_EEC_STATE_ERR",
        IBV_WC_FATAL_ERR => "IBV_WC_FATAL_ERR",
        IBV_WC_RESP_TIMEOUT_ERR => "IBV_WC_RESP_TIMEOUT_ERR",
        IBV_WC_GENERAL_ERR => "IBV_WC_GENERAL_ERR",
        IBV_WC_TM_ERR => "IBV_WC_TM_ERR",
        IBV_WC_TM_RNDV_INCOMPLETE => "IBV_WC_TM_RNDV_INCOMPLETE",
        _ => "IBV_WC_(unknown)",
    }
}

/// What a status means, in the words of `ibv_poll_cq(3)`.
fn status_text(status: u32) -> &'static str {
    use ffi::ibv_wc_status::*;
    match status {
        IBV_WC_SUCCESS => "success",
        IBV_WC_LOC_LEN_ERR => "local length error",
        IBV_WC_LOC_QP_OP_ERR => "local QP operation error",
        IBV_WC_LOC_PROT_ERR => "local protection error",
        IBV_WC_WR_FLUSH_ERR => "flushed: the queue pair had failed",
        IBV_WC_BAD_RESP_ERR => "bad response",
        IBV_WC_LOC_ACCESS_ERR => "local access error",
        IBV_WC_REM_INV_REQ_ERR => "remote invalid request",
        IBV_WC_REM_ACCESS_ERR => "remote access error: bad key or span",
        IBV_WC_REM_OP_ERR => "remote operation error",
        IBV_WC_RETRY_EXC_ERR => "transport retry counter exceeded: peer gone or unreachable",
        IBV_WC_RNR_RETRY_EXC_ERR => "receiver-not-ready retry counter exceeded",
        IBV_WC_FATAL_ERR => "fatal error",
        IBV_WC_RESP_TIMEOUT_ERR => "response timeout",
        IBV_WC_GENERAL_ERR => "general error",
        _ => "an error this code has no words for",
    }
}

type PostSendFn = unsafe extern "C" fn(
    qp: *mut ffi::ibv_qp,
    wr: *mut ffi::ibv_send_wr,
    bad_wr: *mut *mut ffi::ibv_send_wr,
) -> c_int;
type PollCqFn = unsafe extern "C" fn(cq: *mut ffi::ibv_cq, num_entries: c_int, wc: *mut ffi::ibv_wc) -> c_int;

/// A reliable-connected queue pair with its own completion queue, posting
/// signaled RDMA READ and WRITE work requests of one scatter/gather entry.
///
/// Every method takes `&self` and may be called from many threads at once
/// (posting and polling are thread-safe in libibverbs). Each work request
/// holds the memory region it points at until its completion is polled
/// (or the queue pair is destroyed), so that memory outlives whatever the
/// device does with it.
pub struct RcQueuePair {
    qp: NonNull<ffi::ibv_qp>,
    cq: NonNull<ffi::ibv_cq>,
    post_send: PostSendFn,
    poll_cq: PollCqFn,
    qpn: u32,
    psn: u32,
    gid: Gid,
    depth: u32,
    state: Mutex<QpState>,
    /// Work requests posted and not yet polled, by id, with their memory.
    in_flight: Mutex<HashMap<u64, Arc<MemoryRegion>>>,
    /// Deallocated after the queue pair is destroyed.
    pd: Arc<PdInner>,
}

// SAFETY: the QP and CQ are only used through libibverbs calls, which are
// thread-safe; everything else is immutable or behind a Mutex.
unsafe impl Send for RcQueuePair {}
// SAFETY: as for Send.
unsafe impl Sync for RcQueuePair {}

impl fmt::Debug for RcQueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcQueuePair")
            .field("device", &self.pd.device.name)
            .field("qpn", &self.qpn)
            .field("depth", &self.depth)
            .field("state", &*lock(&self.state))
            .field("in_flight", &lock(&self.in_flight).len())
            .finish()
    }
}

impl Drop for RcQueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP is destroyed only here; afterwards the device
        // touches none of the memory of its work requests.
        let qp_gone = unsafe { ffi::ibv_destroy_qp(self.qp.as_ptr()) } == 0;
        // SAFETY: the CQ's only queue pair is gone (if it is not, the CQ is
        // left alone: destroying it would fail with EBUSY anyway).
        let cq_gone = qp_gone && unsafe { ffi::ibv_destroy_cq(self.cq.as_ptr()) } == 0;
        if !(qp_gone && cq_gone) {
            // The device may still write the memory of the work requests
            // in flight: keep it registered and mapped, for good.
            let in_flight = std::mem::take(&mut *lock(&self.in_flight));
            std::mem::forget(in_flight);
        }
    }
}

impl RcQueuePair {
    /// What the peer needs to connect to this end.
    pub fn local(&self) -> QpAddress {
        QpAddress {
            gid: self.gid.raw,
            qpn: self.qpn,
            psn: self.psn,
        }
    }

    /// Work requests it has room for in flight.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Work requests posted whose completions have not been polled.
    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    fn modify(
        &self,
        call: &'static str,
        attr: &mut ffi::ibv_qp_attr,
        mask: ffi::ibv_qp_attr_mask,
    ) -> Result<(), VerbsError> {
        let mask =
            c_int::try_from(mask.0).map_err(|_| VerbsError::Invalid(format!("{call}: attribute mask")))?;
        // SAFETY: the QP is alive (held by `self`); `attr` is a valid
        // attribute block for the fields named by `mask`.
        let rc = unsafe { ffi::ibv_modify_qp(self.qp.as_ptr(), attr, mask) };
        VerbsError::check(call, rc)
    }

    /// Connects to `peer`: INIT, then RTR (path MTU: the port's active
    /// MTU), then RTS. Once; a failure leaves it unusable.
    pub fn connect(&self, peer: &QpAddress) -> Result<(), VerbsError> {
        {
            let mut state = lock(&self.state);
            if *state != QpState::Reset {
                return Err(VerbsError::Invalid(format!(
                    "queue pair {} is already connected or connecting",
                    self.qpn
                )));
            }
            *state = QpState::Connecting;
        }
        let device = &self.pd.device;
        let port = device.port()?;
        if !port.active {
            return Err(VerbsError::PortDown {
                device: device.name.clone(),
                state: port.state,
            });
        }
        use ffi::ibv_access_flags as A;
        use ffi::ibv_qp_attr_mask as M;

        // The peer's RDMA may reach this end's memory only where a region
        // says so: the queue pair allows both, each region decides.
        let mut init = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: PORT,
            qp_access_flags: (A::IBV_ACCESS_LOCAL_WRITE
                | A::IBV_ACCESS_REMOTE_READ
                | A::IBV_ACCESS_REMOTE_WRITE)
                .0,
            ..Default::default()
        };
        self.modify(
            "ibv_modify_qp(INIT)",
            &mut init,
            M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS,
        )?;

        let sgid_index = u8::try_from(self.gid.index)
            .map_err(|_| VerbsError::Invalid(format!("GID index {} does not fit a GRH", self.gid.index)))?;
        let rd_atomic_in = clamp_rd_atomic(device.limits.max_qp_rd_atom);
        let mut rtr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTR,
            path_mtu: port.active_mtu,
            dest_qp_num: peer.qpn,
            rq_psn: peer.psn & PSN_MASK,
            max_dest_rd_atomic: rd_atomic_in,
            min_rnr_timer: MIN_RNR_TIMER,
            ah_attr: ffi::ibv_ah_attr {
                grh: ffi::ibv_global_route {
                    dgid: ffi::ibv_gid { raw: peer.gid },
                    flow_label: 0,
                    sgid_index,
                    hop_limit: HOP_LIMIT,
                    traffic_class: 0,
                },
                dlid: 0,
                sl: 0,
                src_path_bits: 0,
                static_rate: 0,
                is_global: 1,
                port_num: PORT,
            },
            ..Default::default()
        };
        self.modify(
            "ibv_modify_qp(RTR)",
            &mut rtr,
            M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER,
        )?;

        let mut rts = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTS,
            timeout: ACK_TIMEOUT,
            retry_cnt: RETRY_COUNT,
            rnr_retry: RNR_RETRY,
            sq_psn: self.psn,
            max_rd_atomic: clamp_rd_atomic(device.limits.max_qp_init_rd_atom),
            ..Default::default()
        };
        self.modify(
            "ibv_modify_qp(RTS)",
            &mut rts,
            M::IBV_QP_STATE
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_MAX_QP_RD_ATOMIC,
        )?;
        let mut state = lock(&self.state);
        if *state == QpState::Connecting {
            *state = QpState::Ready;
        }
        Ok(())
    }

    /// Moves it to the error state: the device stops its work requests and
    /// flushes them (each completes with `IBV_WC_WR_FLUSH_ERR`), and no
    /// new one is accepted. For a work request that overstayed its
    /// deadline: its memory is then soon the program's again.
    pub fn set_error(&self) -> Result<(), VerbsError> {
        *lock(&self.state) = QpState::Error;
        let mut attr = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_ERR,
            ..Default::default()
        };
        self.modify(
            "ibv_modify_qp(ERR)",
            &mut attr,
            ffi::ibv_qp_attr_mask::IBV_QP_STATE,
        )
    }

    /// Posts a signaled RDMA `op` of `remote.len` bytes between `local` at
    /// `offset` and the peer's `remote` span, with id `wr_id` (which must
    /// not be in flight already). Its completion comes out of [`poll`].
    ///
    /// Refused before posting: a span not inside `local`, a region of
    /// another protection domain, zero bytes, a queue pair not connected,
    /// or a full send queue.
    ///
    /// [`poll`]: RcQueuePair::poll
    pub fn post(
        &self,
        op: RdmaOp,
        wr_id: u64,
        local: &Arc<MemoryRegion>,
        offset: usize,
        remote: RemoteSpan,
    ) -> Result<(), VerbsError> {
        let len = remote.len as usize;
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > local.len) {
            return Err(VerbsError::Invalid(format!(
                "RDMA {op:?} of {len} bytes at {offset} of a {}-byte region",
                local.len
            )));
        }
        if !Arc::ptr_eq(&local.pd, &self.pd) {
            return Err(VerbsError::Invalid(
                "memory region of another protection domain than the queue pair's".into(),
            ));
        }
        match *lock(&self.state) {
            QpState::Ready => {}
            QpState::Error => {
                return Err(VerbsError::Invalid(format!(
                    "queue pair {} is in the error state",
                    self.qpn
                )));
            }
            QpState::Reset | QpState::Connecting => {
                return Err(VerbsError::Invalid(format!(
                    "queue pair {} is not connected",
                    self.qpn
                )));
            }
        }
        {
            let mut in_flight = lock(&self.in_flight);
            if in_flight.len() >= self.depth as usize {
                return Err(VerbsError::Invalid(format!(
                    "send queue of queue pair {} full ({} work requests)",
                    self.qpn, self.depth
                )));
            }
            if in_flight.contains_key(&wr_id) {
                return Err(VerbsError::Invalid(format!(
                    "work request {wr_id} is already in flight"
                )));
            }
            // Before the post: a completion polled by another thread at
            // once finds it.
            in_flight.insert(wr_id, local.clone());
        }
        let mut sge = ffi::ibv_sge {
            addr: local.addr() + offset as u64,
            length: remote.len,
            lkey: local.lkey,
        };
        let mut wr = ffi::ibv_send_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
            opcode: match op {
                RdmaOp::Read => ffi::ibv_wr_opcode::IBV_WR_RDMA_READ,
                RdmaOp::Write => ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            },
            send_flags: ffi::ibv_send_flags::IBV_SEND_SIGNALED.0,
            ..Default::default()
        };
        wr.wr.rdma = ffi::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 {
            remote_addr: remote.addr,
            rkey: remote.rkey,
        };
        let mut bad: *mut ffi::ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is alive; `wr` and `sge` are valid for the call
        // (the provider copies them into its queue before returning); the
        // span they name is inside `local` (checked above), registered in
        // this QP's PD, and kept alive by `in_flight` until the completion
        // is polled or the QP destroyed.
        let rc = unsafe { (self.post_send)(self.qp.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            lock(&self.in_flight).remove(&wr_id);
            return VerbsError::check("ibv_post_send", rc);
        }
        Ok(())
    }

    /// Takes the completions that are there (up to a batch) without
    /// waiting, appending them to `out`; how many it took.
    pub fn poll(&self, out: &mut Vec<Completion>) -> Result<usize, VerbsError> {
        let mut wc = [ffi::ibv_wc::default(); POLL_BATCH];
        // SAFETY: the CQ is alive; `wc` has room for POLL_BATCH entries.
        let n = unsafe { (self.poll_cq)(self.cq.as_ptr(), POLL_BATCH as c_int, wc.as_mut_ptr()) };
        let n = usize::try_from(n).map_err(|_| VerbsError::Call {
            call: "ibv_poll_cq",
            source: io::Error::from_raw_os_error(n.saturating_abs()),
        })?;
        let mut done = Vec::with_capacity(n);
        {
            let mut in_flight = lock(&self.in_flight);
            for c in wc.iter().take(n) {
                // The device is done with this request's memory.
                done.extend(in_flight.remove(&c.wr_id()));
                out.push(Completion {
                    wr_id: c.wr_id(),
                    result: match c.error() {
                        None => Ok(c.len() as u32),
                        Some((status, vendor_err)) => Err(CompletionError {
                            wr_id: c.wr_id(),
                            status,
                            vendor_err,
                        }),
                    },
                });
            }
        }
        // Regions whose owners let go deregister here, outside the lock.
        drop(done);
        Ok(n)
    }
}

fn clamp_rd_atomic(device_max: u32) -> u8 {
    u8::try_from(device_max)
        .unwrap_or(u8::MAX)
        .clamp(1, RD_ATOMIC_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_devices_works_without_any() {
        // On a machine without RDMA this is an empty list or ENOSYS; either
        // way no panic, and opening one says which it looked for.
        let names = device_names().unwrap_or_default();
        let missing = "no-such-rdma-device";
        assert!(!names.iter().any(|n| n == missing));
        let e = Device::open(Some(missing)).unwrap_err();
        let text = e.to_string();
        match e {
            VerbsError::NoDevice { wanted, .. } => assert_eq!(wanted.as_deref(), Some(missing)),
            VerbsError::Call { call, .. } => assert_eq!(call, "ibv_get_device_list", "{text}"),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn completion_errors_name_their_status() {
        let e = CompletionError {
            wr_id: 7,
            status: ffi::ibv_wc_status::IBV_WC_REM_ACCESS_ERR,
            vendor_err: 0x13,
        };
        assert_eq!(e.status_name(), "IBV_WC_REM_ACCESS_ERR");
        assert_eq!(
            e.to_string(),
            "work request 7 failed: IBV_WC_REM_ACCESS_ERR (remote access error: bad key or span), vendor error 0x13"
        );
        assert!(!e.is_flush());
        let flushed = CompletionError {
            status: ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR,
            ..e
        };
        assert!(flushed.is_flush());
        assert_eq!(status_name(999), "IBV_WC_(unknown)");
    }

    #[test]
    fn only_ipv4_mapped_gids_address_roce_v2_ipv4_peers() {
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&[10, 1, 0, 1]);
        assert!(is_ipv4_mapped(&gid));
        let mut link_local = [0u8; 16];
        link_local[0] = 0xfe;
        link_local[1] = 0x80;
        assert!(!is_ipv4_mapped(&link_local));
    }

    #[test]
    fn psns_are_24_bits_and_rd_atomic_is_clamped() {
        for _ in 0..100 {
            assert_eq!(random_psn() & !PSN_MASK, 0);
        }
        assert_eq!(clamp_rd_atomic(0), 1);
        assert_eq!(clamp_rd_atomic(128), RD_ATOMIC_MAX);
        assert_eq!(clamp_rd_atomic(4), 4);
        assert_eq!(mtu_bytes(ffi::IBV_MTU_1024), 1024);
    }

    #[test]
    fn verbs_errors_become_io_errors_that_keep_the_call() {
        let e = VerbsError::check("ibv_reg_mr", libc::ENOMEM).unwrap_err();
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::OutOfMemory);
        assert!(io.to_string().starts_with("ibv_reg_mr failed"), "{io}");
        assert!(VerbsError::check("ibv_modify_qp", 0).is_ok());
    }
}
