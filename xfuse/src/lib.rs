//! xfuse: a FUSE protocol layer (kernel protocol 7.45) with fast transports,
//! for any [`fuse_backend_rs::api::filesystem::FileSystem`].
//!
//! A user writes (or reuses) a `FileSystem` and either mounts it on this
//! host with [`Session::mount`] and serves it with [`Session::serve`] on a
//! [`Transport`] (`dev` or `uring`), or serves it to a virtual machine with
//! [`transport::virtio::VirtioFsBackend`]. What each module owns, top to
//! bottom:
//!
//! - [`session`]: a mount of this host: mount(2), INIT, the dispatcher's
//!   settings until serving, teardown on unmount, drop or signal;
//! - [`transport`]: moving requests and replies, and what every transport
//!   shares (errors, reply framing, answering INIT, worker defaults).
//!   `dev`: cloned `/dev/fuse` descriptors, one per worker; `uring`:
//!   FUSE-over-io_uring, one ring queue per possible CPU; `virtio`: a
//!   vhost-user-fs backend serving a guest kernel from its virtqueues;
//! - [`dispatch`]: one decoder for every transport, one function per
//!   opcode calling the filesystem, lookup counts, errors turned into errnos;
//! - [`init`]: what INIT agrees on (protocol minor, features, sizes);
//! - [`request`] and [`reply`]: untrusted bytes in, kernel structs out;
//! - [`notify`]: cache invalidations sent to the kernel;
//! - [`cache`]: adaptive entry/attribute timeouts per inode, kept coherent
//!   by those invalidations;
//! - [`passthrough`]: FUSE passthrough to backing files;
//! - [`fileattr`]: the `chattr`/`lsattr` ioctls decoded for a
//!   [`fileattr::FileAttrs`] hook beside the filesystem;
//! - [`idmap`]: user and group ids translated between an untrusted guest
//!   and the host (`IdMapped`, a `FileSystem` layer);
//! - [`killpriv`]: set-user-ID and set-group-ID bits cleared on writes,
//!   truncates and changes of owner (`FUSE_HANDLE_KILLPRIV_V2`);
//! - [`perm`]: permission checks in the daemon, for mounts without
//!   `default_permissions` (fewer round trips);
//! - [`ratelimit`]: limits on the log messages a peer can trigger;
//! - `testkit` (cargo feature `testkit`): a FUSE request builder and the
//!   kernel's side of FUSE-over-io_uring, for tests without root.
//!
//! All system calls go through the `kmod-shim` crate; this crate has no
//! `unsafe` code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
pub mod cache;
pub mod dispatch;
pub mod fileattr;
pub mod idmap;
pub mod init;
pub mod killpriv;
pub mod notify;
pub mod passthrough;
pub mod perm;
pub mod ratelimit;
pub mod reply;
pub mod request;
pub mod session;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod transport;

pub use cache::{AdaptiveConfig, AdaptiveTtl, Changes, Refresher, UpcallSource, Upcalls};
pub use dispatch::{Dispatcher, DispatcherBuilder, Policy, Reply, Stats};
pub use init::{InitConfig, Negotiated};
pub use kmod_shim::MountOptions;
pub use notify::Notifier;
pub use session::{Ended, Error, Running, Session, ShutdownSignals, Unmounter};
pub use transport::{default_threads, Transport};
