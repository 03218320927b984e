//! Requests about extended attributes: SETXATTR, GETXATTR, LISTXATTR,
//! REMOVEXATTR.

use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply, ListxattrReply};
use kmod_shim::abi::{GetxattrIn, GetxattrOut, SetxattrIn, COMPAT_SETXATTR_IN_SIZE};

use super::{Dispatcher, Done, Failure, Handled};
use crate::reply::BodyWriter;
use crate::request::Args;

pub(super) fn setxattr<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    // INIT never agrees to FUSE_SETXATTR_EXT (crate::init), so the kernel
    // always sends the 8-byte compat struct.
    let s: SetxattrIn = a.fixed_prefix(COMPAT_SETXATTR_IN_SIZE)?;
    let name = a.name()?;
    let value = a.bytes(s.size as usize)?;
    a.finish()?;
    d.fs.setxattr(ctx, ino.into(), name, value, s.flags)?;
    Ok(Done::Reply)
}

pub(super) fn getxattr<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let g: GetxattrIn = a.fixed()?;
    let name = a.name()?;
    a.finish()?;
    match d.fs.getxattr(ctx, ino.into(), name, g.size)? {
        GetxattrReply::Value(v) => xattr_value(w, g.size, &v)?,
        GetxattrReply::Count(n) => w.push(&GetxattrOut { size: n, padding: 0 })?,
    }
    Ok(Done::Reply)
}

pub(super) fn listxattr<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let g: GetxattrIn = a.fixed()?;
    a.finish()?;
    match d.fs.listxattr(ctx, ino.into(), g.size)? {
        ListxattrReply::Names(v) => xattr_value(w, g.size, &v)?,
        ListxattrReply::Count(n) => w.push(&GetxattrOut { size: n, padding: 0 })?,
    }
    Ok(Done::Reply)
}

pub(super) fn removexattr<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    let name = a.name()?;
    a.finish()?;
    d.fs.removexattr(ctx, ino.into(), name)?;
    Ok(Done::Reply)
}

/// A value or name list, or only its size when the caller asked for that.
fn xattr_value(w: &mut BodyWriter<'_>, size: u32, value: &[u8]) -> Result<(), Failure> {
    if size == 0 {
        // The caller asked for the size only.
        let n = u32::try_from(value.len()).map_err(|_| Failure::Errno(libc::E2BIG))?;
        w.push(&GetxattrOut { size: n, padding: 0 })?;
    } else if value.len() > size as usize {
        return Err(Failure::Errno(libc::ERANGE));
    } else {
        w.push_bytes(value)?;
    }
    Ok(())
}
