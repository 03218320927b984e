//! Requests about names and inodes: LOOKUP and the lookup counts it hands
//! out (FORGET, BATCH_FORGET), attributes (GETATTR, SETATTR, ACCESS), and
//! the requests that make, link, rename and remove names.

use std::sync::atomic::Ordering;

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, SetattrValid};
use kmod_shim::abi::{
    fattr, req_flags, AccessIn, BatchForgetIn, ForgetIn, ForgetOne, GetattrIn, LinkIn, MkdirIn, MknodIn,
    Rename2In, RenameIn, SetattrIn,
};

use super::{Dispatcher, Done, Handled};
use crate::reply::{attr_out, entry_out, BodyWriter};
use crate::request::{Args, ParseError};

pub(super) fn lookup<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    let name = a.name()?;
    a.finish()?;
    match d.fs.lookup(ctx, ino.into(), name) {
        Ok(entry) => d.entry_reply(w, &entry),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !d.policy.negative_timeout.is_zero() => {
            let negative = Entry {
                inode: 0,
                entry_timeout: d.policy.negative_timeout,
                ..Default::default()
            };
            w.push(&entry_out(&negative))?;
            Ok(Done::Reply)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn forget<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let f: ForgetIn = a.fixed()?;
    a.finish()?;
    d.stats.forgotten_inodes.fetch_add(1, Ordering::Relaxed);
    d.fs.forget(ctx, ino.into(), f.nlookup);
    Ok(Done::NoReply)
}

pub(super) fn batch_forget<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    _: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let b: BatchForgetIn = a.fixed()?;
    let count = b.count as usize;
    if count * std::mem::size_of::<ForgetOne>() > a.remaining() {
        return Err(ParseError::BadCount(u64::from(b.count)).into());
    }
    let items: Vec<ForgetOne> = a.array(count)?;
    a.finish()?;
    d.stats
        .forgotten_inodes
        .fetch_add(items.len() as u64, Ordering::Relaxed);
    d.fs.batch_forget(ctx, items.iter().map(|f| (f.nodeid.into(), f.nlookup)).collect());
    Ok(Done::NoReply)
}

pub(super) fn getattr<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let g: GetattrIn = a.fixed()?;
    a.finish()?;
    let fh = (g.getattr_flags & req_flags::GETATTR_FH != 0).then(|| g.fh.into());
    let (st, timeout) = d.fs.getattr(ctx, ino.into(), fh)?;
    w.push(&attr_out(&st, timeout))?;
    Ok(Done::Reply)
}

pub(super) fn setattr<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let s: SetattrIn = a.fixed()?;
    a.finish()?;
    let (st, valid, fh) = setattr_args(&s);
    let valid = d.kill_on_setattr(ctx, ino, s.valid, valid)?;
    let (st, timeout) = d.fs.setattr(ctx, ino.into(), st, fh.map(Into::into), valid)?;
    w.push(&attr_out(&st, timeout))?;
    Ok(Done::Reply)
}

pub(super) fn readlink<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    a.finish()?;
    let target = d.fs.readlink(ctx, ino.into())?;
    w.push_bytes(&target)?;
    Ok(Done::Reply)
}

pub(super) fn symlink<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    let name = a.name()?;
    let target = a.name()?;
    a.finish()?;
    let entry = d.fs.symlink(ctx, target, ino.into(), name)?;
    d.entry_reply(w, &entry)
}

pub(super) fn mknod<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let m: MknodIn = a.fixed()?;
    let name = a.name()?;
    a.finish()?;
    let umask = d.creation_umask(ctx, ino, m.umask);
    let entry = d.fs.mknod(ctx, ino.into(), name, m.mode, m.rdev, umask)?;
    d.entry_reply(w, &entry)
}

pub(super) fn mkdir<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let m: MkdirIn = a.fixed()?;
    let name = a.name()?;
    a.finish()?;
    let umask = d.creation_umask(ctx, ino, m.umask);
    let entry = d.fs.mkdir(ctx, ino.into(), name, m.mode, umask)?;
    d.entry_reply(w, &entry)
}

pub(super) fn unlink<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    let name = a.name()?;
    a.finish()?;
    d.fs.unlink(ctx, ino.into(), name)?;
    Ok(Done::Reply)
}

pub(super) fn rmdir<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    a.no_fixed();
    let name = a.name()?;
    a.finish()?;
    d.fs.rmdir(ctx, ino.into(), name)?;
    Ok(Done::Reply)
}

pub(super) fn rename<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let r: RenameIn = a.fixed()?;
    rename_names(d, ctx, ino, r.newdir, 0, a)
}

pub(super) fn rename2<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let r: Rename2In = a.fixed()?;
    if r.flags & libc::RENAME_WHITEOUT != 0 {
        // Leaves a new inode (the whiteout) owned by the caller.
        super::owner_named(ctx.uid, ctx.gid)?;
    }
    rename_names(d, ctx, ino, r.newdir, r.flags, a)
}

/// The names of a RENAME or RENAME2, and the rename.
fn rename_names<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    olddir: u64,
    newdir: u64,
    flags: u32,
    mut a: Args<'_>,
) -> Handled {
    let old = a.name()?;
    let new = a.name()?;
    a.finish()?;
    d.fs.rename(ctx, olddir.into(), old, newdir.into(), new, flags)?;
    Ok(Done::Reply)
}

pub(super) fn link<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let l: LinkIn = a.fixed()?;
    let name = a.name()?;
    a.finish()?;
    let entry = d.fs.link(ctx, l.oldnodeid.into(), ino.into(), name)?;
    d.entry_reply(w, &entry)
}

pub(super) fn access<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let acc: AccessIn = a.fixed()?;
    a.finish()?;
    d.fs.access(ctx, ino.into(), acc.mask)?;
    Ok(Done::Reply)
}

/// Turns `fuse_setattr_in` into the trait's (stat64, valid, handle).
fn setattr_args(s: &SetattrIn) -> (libc::stat64, SetattrValid, Option<u64>) {
    let mut st: libc::stat64 = zeroed_stat();
    st.st_mode = s.mode;
    st.st_uid = s.uid;
    st.st_gid = s.gid;
    st.st_size = s.size as i64;
    st.st_atime = s.atime as i64;
    st.st_atime_nsec = i64::from(s.atimensec);
    st.st_mtime = s.mtime as i64;
    st.st_mtime_nsec = i64::from(s.mtimensec);
    st.st_ctime = s.ctime as i64;
    st.st_ctime_nsec = i64::from(s.ctimensec);
    let valid = SetattrValid::from_bits_truncate(s.valid & !(fattr::FH | fattr::LOCKOWNER));
    let fh = (s.valid & fattr::FH != 0).then_some(s.fh);
    (st, valid, fh)
}

/// A zeroed `stat64`.
pub(super) fn zeroed_stat() -> libc::stat64 {
    let st: Entry = Entry::default();
    // `Entry::default()` holds a zeroed stat64; reuse it rather than zeroing
    // memory ourselves.
    st.attr
}
