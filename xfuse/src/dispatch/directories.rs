//! Requests about open directories: OPENDIR (with the kernel's listing
//! cache for hot directories), READDIR and READDIRPLUS records,
//! RELEASEDIR and FSYNCDIR.

use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry, FileSystem};
use kmod_shim::abi::{self, req_flags, Dirent, DirentPlus, FsyncIn, OpenIn, ReadIn, ReleaseIn};

use super::files::open_out;
use super::{Dispatcher, Done, Handled};
use crate::reply::{entry_out, BodyWriter};
use crate::request::{Args, ParseError};

pub(super) fn opendir<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let o: OpenIn = a.fixed()?;
    a.finish()?;
    let (fh, opts) = d.fs.opendir(ctx, ino.into(), o.flags)?;
    // Hot directories come with FOPEN_CACHE_DIR from cache::AdaptiveFs.
    w.push(&open_out(fh.map(Into::into), opts.bits()))?;
    Ok(Done::Reply)
}

pub(super) fn readdir<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let r: ReadIn = a.fixed()?;
    a.finish()?;
    list(d, ctx, ino, &r, w, false)
}

pub(super) fn readdirplus<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let r: ReadIn = a.fixed()?;
    a.finish()?;
    list(d, ctx, ino, &r, w, true)
}

/// Fills the reply with directory records (with entries, for READDIRPLUS)
/// up to the size the kernel asked for.
fn list<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    r: &ReadIn,
    w: &mut BodyWriter<'_>,
    plus: bool,
) -> Handled {
    let size = r.size as usize;
    if size > d.negotiated.max_reply_bytes() || size > w.room() {
        return Err(ParseError::BadCount(u64::from(r.size)).into());
    }
    w.limit_to(size);
    if plus {
        d.fs.readdirplus(ctx, ino.into(), r.fh.into(), r.size, r.offset, &mut |de, e| {
            Ok(push_dirent(w, &de, Some(&e)))
        })?;
    } else {
        d.fs.readdir(ctx, ino.into(), r.fh.into(), r.size, r.offset, &mut |de| {
            Ok(push_dirent(w, &de, None))
        })?;
    }
    Ok(Done::Reply)
}

pub(super) fn releasedir<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let r: ReleaseIn = a.fixed()?;
    a.finish()?;
    d.fs.releasedir(ctx, ino.into(), r.flags, r.fh.into())?;
    Ok(Done::Reply)
}

pub(super) fn fsyncdir<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let s: FsyncIn = a.fixed()?;
    a.finish()?;
    let datasync = s.fsync_flags & req_flags::FSYNC_FDATASYNC != 0;
    d.fs.fsyncdir(ctx, ino.into(), datasync, s.fh.into())?;
    Ok(Done::Reply)
}

/// Appends one directory record; returns its size, or 0 when it does not fit
/// (the filesystem then stops and resumes from that entry's offset next time).
fn push_dirent(w: &mut BodyWriter<'_>, d: &DirEntry<'_>, entry: Option<&Entry>) -> usize {
    let namelen = d.name.len();
    let fixed = if entry.is_some() {
        std::mem::size_of::<DirentPlus>()
    } else {
        std::mem::size_of::<Dirent>()
    };
    let record = abi::dirent_align(fixed + namelen);
    if record > w.room() || namelen > u32::MAX as usize {
        return 0;
    }
    let dirent = Dirent {
        ino: d.ino,
        off: d.offset,
        namelen: namelen as u32,
        type_: d.type_,
    };
    let pushed = match entry {
        Some(e) => w.push(&DirentPlus {
            entry_out: entry_out(e),
            dirent,
        }),
        None => w.push(&dirent),
    };
    if pushed
        .and_then(|_| w.push_bytes(d.name))
        .and_then(|_| w.push_zeros(record - fixed - namelen))
        .is_err()
    {
        return 0;
    }
    record
}
