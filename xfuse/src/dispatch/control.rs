//! Requests about the connection rather than an inode: INIT (answered
//! before a dispatcher exists), DESTROY, INTERRUPT, NOTIFY_REPLY and
//! STATFS, and the opcodes this layer answers `ENOSYS`.

use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use kmod_shim::abi::{InterruptIn, StatfsOut};

use super::{Dispatcher, Done, Failure, Handled};
use crate::reply::{kstatfs, BodyWriter};
use crate::request::Args;

pub(super) fn init<F: FileSystem + Sync>(
    _: &Dispatcher<F>,
    _: &Context,
    _: u64,
    _: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    // INIT is answered by the transport (crate::transport::handshake)
    // before the dispatcher exists.
    Err(Failure::Errno(libc::EPROTO))
}

pub(super) fn destroy<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    _: &Context,
    _: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    d.destroy();
    Ok(Done::Reply)
}

pub(super) fn interrupt<F: FileSystem + Sync>(
    _: &Dispatcher<F>,
    _: &Context,
    _: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    // Requests run to completion on the worker that took them;
    // there is nothing to cancel, and INTERRUPT takes no reply.
    let _: InterruptIn = a.fixed()?;
    Ok(Done::NoReply)
}

pub(super) fn notify_reply<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    _: &Context,
    _: u64,
    _: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    // The answer to a NOTIFY_RETRIEVE; it takes no reply.
    if let Err(e) = d.fs.notify_reply() {
        tracing::debug!("notify_reply: {e}");
    }
    Ok(Done::NoReply)
}

pub(super) fn statfs<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    a.finish()?;
    let st = d.fs.statfs(ctx, ino.into())?;
    w.push(&StatfsOut { st: kstatfs(&st) })?;
    Ok(Done::Reply)
}

/// The FileSystem trait has no method for these: ENOSYS tells the kernel
/// to stop asking and use its generic fallback (no syncfs, GETATTR
/// instead of STATX). SETUPMAPPING and
/// REMOVEMAPPING are virtio-fs DAX only; CUSE_INIT is CUSE's.
pub(super) fn unsupported<F: FileSystem + Sync>(
    _: &Dispatcher<F>,
    _: &Context,
    _: u64,
    _: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    Err(Failure::Errno(libc::ENOSYS))
}
