//! Answering INIT, for every transport: the kernel's INIT on `/dev/fuse`
//! before a mount is served ([`super::dev::answer_init`]), and each
//! guest's INIT on a virtqueue ([`super::virtio`]).
//!
//! What to agree on is [`crate::init::negotiate`]'s business; this module
//! turns its answer into the reply to send and what the transport does next.
//! The transport frames and sends the reply its own way.

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::InitOut;
use zerocopy::IntoBytes;

use crate::init::{self, InitAnswer, InitConfig, Negotiated};

/// What the transport does once the reply to INIT is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The protocol is agreed: serve with these parameters.
    Agreed(Negotiated),
    /// The other side speaks a newer major version: we answered ours, and
    /// it sends another INIT.
    Retry,
    /// Refused, for this reason: the session ends.
    Refused(String),
}

/// The reply to one INIT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReply {
    /// The INIT request answered.
    pub unique: u64,
    /// 0, or a negative errno (then there is no body).
    pub error: i32,
    body: Option<InitOut>,
}

impl InitReply {
    /// The reply body (`fuse_init_out`, or nothing with an error).
    pub fn body(&self) -> &[u8] {
        self.body.as_ref().map_or(&[], |b| b.as_bytes())
    }
}

/// Negotiates INIT request `unique` whose argument bytes are `args`, asking
/// `fs` what it wants. `negotiate` calls the filesystem's `init` only once
/// a version is agreed, so a retry with another major does not run it twice.
pub fn answer<F: FileSystem>(
    unique: u64,
    args: &[u8],
    config: &InitConfig,
    fs: &F,
) -> (InitReply, Handshake) {
    match init::negotiate(args, config, |cap| fs.init(cap)) {
        InitAnswer::Agreed(out, negotiated) => (
            InitReply {
                unique,
                error: 0,
                body: Some(out),
            },
            Handshake::Agreed(negotiated),
        ),
        InitAnswer::RetryWithMajor(out) => (
            InitReply {
                unique,
                error: 0,
                body: Some(out),
            },
            Handshake::Retry,
        ),
        InitAnswer::Refuse(errno, why) => (
            InitReply {
                unique,
                error: -errno,
                body: None,
            },
            Handshake::Refused(why),
        ),
    }
}
