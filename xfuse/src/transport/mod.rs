//! Transports: how requests reach the dispatcher and replies reach the
//! kernel. A transport owns its buffers and threads and knows nothing of
//! the filesystem behind the dispatcher.

pub mod dev;
pub mod uring;
pub mod virtio;
