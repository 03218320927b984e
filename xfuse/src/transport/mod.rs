//! Transports: how requests reach the dispatcher and replies reach the
//! kernel (or a guest). A transport owns its buffers and threads and knows
//! nothing of the filesystem behind the dispatcher.
//!
//! This module owns what every transport shares:
//!
//! - [`Transport`]: the choice of transport and its settings (`dev`,
//!   `uring`, `virtio`), and [`default_threads`];
//! - [`Error`]: what setting up or running a transport can fail with;
//! - [`out_header`]: reply framing, the one place a `fuse_out_header` is built;
//! - [`handshake`]: answering INIT, for the kernel and for a guest alike.
//!
//! The transports themselves: [`dev`] (cloned `/dev/fuse` descriptors, one
//! per worker), [`uring`] (FUSE-over-io_uring, one ring queue per possible
//! CPU, beside one `dev` worker for FORGET and INTERRUPT) and [`virtio`]
//! (vhost-user-fs: virtqueues in a guest's memory). A mount's
//! [`crate::Session`] uses them; they never use it.

use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::OutHeader;
use kmod_shim::FuseDev;

use crate::dispatch::Dispatcher;

pub mod dev;
pub mod handshake;
pub mod uring;
pub mod virtio;

use uring::{QueueCounters, UringConfig};
use virtio::VirtioConfig;

/// Errors of setting up or running a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or answering INIT failed.
    #[error("INIT with the kernel failed: {0}")]
    Init(String),
    /// Setting up a transport failed.
    #[error("transport {transport}: {reason}")]
    Setup {
        /// The transport's name.
        transport: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Which transport carries requests and replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Classic `/dev/fuse`: `threads` workers, each on its own cloned descriptor.
    Dev {
        /// Worker threads (at least 1).
        threads: usize,
    },
    /// FUSE-over-io_uring: a ring queue per possible CPU. The session must
    /// have been mounted with [`crate::InitConfig::over_io_uring`] and the
    /// kernel must have agreed.
    Uring(UringConfig),
    /// virtio-fs: a guest's kernel mounts, not this host's. Served by
    /// [`virtio::VirtioFsBackend`] to a VMM on a vhost-user socket, with
    /// INIT answered per guest session; a mount of this host
    /// ([`crate::Session::serve`]) refuses it.
    Virtio(VirtioConfig),
}

impl Transport {
    /// The transport's name, as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Dev { .. } => "dev",
            Transport::Uring(_) => "uring",
            Transport::Virtio(_) => "virtio",
        }
    }
}

/// One worker per CPU the process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The `fuse_out_header` of a message whose body is `body_len` bytes: a
/// reply to request `unique` (`error` 0 or a negative errno), or a
/// notification (`unique` 0, `error` the notify code). Every reply and
/// notification header of this crate is built here.
pub fn out_header(unique: u64, error: i32, body_len: usize) -> OutHeader {
    OutHeader {
        len: (std::mem::size_of::<OutHeader>() + body_len) as u32,
        error,
        unique,
    }
}

/// What [`start`] started on a mount of this host.
#[derive(Debug)]
pub(crate) struct Started {
    /// Every thread serving the connection.
    pub workers: Vec<JoinHandle<()>>,
    /// Requests per ring queue (`uring` only).
    pub queues: Option<Arc<QueueCounters>>,
}

/// Starts `transport` on the connection `dev` of a mount whose INIT was
/// answered, serving requests with `dispatcher`.
pub(crate) fn start<F: FileSystem + Send + Sync + 'static>(
    transport: &Transport,
    dev: &Arc<FuseDev>,
    dispatcher: &Arc<Dispatcher<F>>,
) -> Result<Started, Error> {
    match transport {
        Transport::Dev { threads } => {
            let workers = dev::start(dev, dispatcher, (*threads).max(1))?;
            tracing::info!("serving through transport dev with {} workers", workers.len());
            Ok(Started {
                workers,
                queues: None,
            })
        }
        Transport::Uring(config) => {
            if !dispatcher
                .negotiated()
                .has(kmod_shim::abi::init_flags::OVER_IO_URING)
            {
                return Err(Error::Setup {
                    transport: "uring",
                    reason: "the kernel did not agree to FUSE_OVER_IO_URING in INIT".into(),
                });
            }
            let uring::Started {
                mut workers,
                plan,
                counters,
            } = uring::start(dev, dispatcher, config)?;
            // FORGET, BATCH_FORGET and INTERRUPT keep arriving on /dev/fuse.
            let pause = dev::ForgetPause {
                delay: config.forget_pause,
                armed: counters.serving_flag(),
            };
            workers.extend(dev::start_with(dev, dispatcher, 1, Some(pause))?);
            tracing::info!(
                "serving through transport uring: {} queues x {} entries, payload {} KiB each, \
                 {} ring threads + 1 /dev/fuse thread; ring buffers {} MiB (virtual, resident as used)",
                plan.queues,
                plan.depth,
                plan.payload_bytes / 1024,
                plan.threads,
                plan.total_bytes().div_ceil(1 << 20)
            );
            Ok(Started {
                workers,
                queues: Some(counters),
            })
        }
        Transport::Virtio(_) => Err(Error::Setup {
            transport: "virtio",
            reason: "virtio-fs is served to a VMM by transport::virtio::VirtioFsBackend, \
                     not on a mount of this host"
                .into(),
        }),
    }
}
