//! A vhost-user-fs frontend in this process — the part QEMU and a guest
//! kernel play — that replays the guest workload's metadata operations
//! against a virtio-fs backend (`xfused virtiofs`, virtiofsd) without a VM,
//! so the backends' own per-request costs can be measured and their replies
//! checked.
//!
//! - [`guest`]: memfd guest memory and the driver's half of a split virtqueue;
//! - [`device`]: the vhost-user handshake, kicks and calls over eventfds;
//! - [`fuse`]: FUSE requests as the guest builds them, replies parsed and checked;
//! - [`replay`]: the workload, its model of the tree, latencies per operation;
//! - [`backend`]: starting and stopping a backend process on a fresh directory;
//! - [`data`]: a file written and read back in large WRITEs and READs;
//! - [`session`]: one request at a time, as any caller, for tests that
//!   check what a backend makes of a particular request.
//!
//! What it does not model: a guest kernel (no VFS, no dentry cache: every
//! operation reaches the backend) and QEMU (notifications are eventfd
//! writes and reads, not interrupts and VM exits).

pub mod backend;
pub mod data;
pub mod device;
pub mod fuse;
pub mod guest;
pub mod replay;
pub mod session;

pub use backend::{Backend, BackendKind, RoundResult, Serving};
pub use device::Device;
pub use guest::GuestRam;
pub use replay::{ReplayConfig, ReplayReport};
pub use session::Session;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Setting up memory, eventfds, files or processes failed.
    #[error("setting up: {0}")]
    Setup(String),
    /// A vhost-user message failed or was refused.
    #[error("vhost-user {what}: {reason}")]
    Vhost {
        /// The message.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// No used-ring entry arrived in time.
    #[error("no reply within {0} ms: the backend stopped answering")]
    Timeout(i32),
    /// The device broke the virtqueue protocol (unknown chain, lengths).
    #[error("virtqueue protocol: {0}")]
    Protocol(String),
    /// A reply was malformed or disagreed with what the request must give.
    #[error("{op} (unique {unique}): {reason}")]
    BadReply {
        /// The operation answered.
        op: &'static str,
        /// Its unique.
        unique: u64,
        /// What was wrong.
        reason: String,
    },
    /// The backend process failed.
    #[error("backend {name}: {reason}")]
    Backend {
        /// Which backend.
        name: String,
        /// What happened (with its log's tail).
        reason: String,
    },
}
