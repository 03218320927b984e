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
    let dots = d.policy.add_dot_entries;
    let mut offset = r.offset;
    if dots {
        if offset < DOTS_END && !push_dots(d, ctx, ino, offset, w, plus) {
            return Ok(Done::Reply);
        }
        offset = inner_offset(offset);
    }
    let outer = |de: &mut DirEntry<'_>| {
        if dots {
            de.offset = outer_offset(de.offset);
        }
    };
    if plus {
        d.fs.readdirplus(ctx, ino.into(), r.fh.into(), r.size, offset, &mut |mut de, e| {
            outer(&mut de);
            Ok(push_dirent(w, &de, Some(&e)))
        })?;
    } else if d.policy.readdir_through_readdirplus {
        d.fs.readdirplus(ctx, ino.into(), r.fh.into(), r.size, offset, &mut |mut de, e| {
            outer(&mut de);
            let pushed = push_dirent(w, &de, None);
            // Listed without its entry: the lookup the filesystem took for
            // it goes back now (a record that did not fit is the
            // filesystem's to give back, as for READDIRPLUS).
            if pushed != 0 && e.inode != 0 {
                d.fs.forget(ctx, e.inode.into(), 1);
            }
            Ok(pushed)
        })?;
    } else {
        d.fs.readdir(ctx, ino.into(), r.fh.into(), r.size, offset, &mut |mut de| {
            outer(&mut de);
            Ok(push_dirent(w, &de, None))
        })?;
    }
    Ok(Done::Reply)
}

/// With [`crate::Policy::add_dot_entries`]: offset 1 is the point after
/// ".", 2 after ".."; the filesystem's offset N is N + 2 ([`outer_offset`]).
const DOTS_END: u64 = 2;

/// The largest directory offset the kernel lets `lseek` (and so
/// `seekdir`) reach: `MAX_LFS_FILESIZE`. Filesystems put their end of
/// listing there (ext4's `EXT4_HTREE_EOF_64BIT`).
const OFFSET_MAX: u64 = i64::MAX as u64;

/// A filesystem's offset as the kernel sees it, past the dot entries'.
/// The top stays the top: offsets within 2 of [`OFFSET_MAX`] become it,
/// so an end-of-listing offset stays seekable (a real entry's offset
/// there, one hash value in 2^62 on ext4, would end a listing resumed
/// from it).
fn outer_offset(offset: u64) -> u64 {
    if offset >= OFFSET_MAX - DOTS_END {
        OFFSET_MAX
    } else {
        offset + DOTS_END
    }
}

/// The filesystem's offset for the kernel's `offset` (at least
/// [`DOTS_END`]; below it, the filesystem's start).
fn inner_offset(offset: u64) -> u64 {
    if offset >= OFFSET_MAX {
        OFFSET_MAX
    } else {
        offset.saturating_sub(DOTS_END)
    }
}

/// Writes the "." and ".." records a listing from `offset` (below
/// [`DOTS_END`]) still owes; false if the reply is full. Their inode
/// numbers are the directory's and its parent's (the directory's own at
/// the root, as Linux has it); in READDIRPLUS they carry no entry (node
/// id 0), which the kernel never links for these names anyway.
fn push_dots<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    offset: u64,
    w: &mut BodyWriter<'_>,
    plus: bool,
) -> bool {
    let (st, _) = match d.fs.getattr(ctx, ino.into(), None) {
        Ok(attr) => attr,
        // The listing itself will say what is wrong.
        Err(_) => return true,
    };
    let dir_ino = st.st_ino;
    let parent_ino = if ino == abi::ROOT_ID {
        dir_ino
    } else {
        match d.fs.lookup(ctx, ino.into(), c"..") {
            Ok(e) => {
                let parent = e.attr.st_ino;
                if e.inode != 0 {
                    d.fs.forget(ctx, e.inode.into(), 1);
                }
                parent
            }
            Err(_) => dir_ino,
        }
    };
    let none = Entry::default();
    let dots: [(&[u8], u64, u64); 2] = [(b".", dir_ino, 1), (b"..", parent_ino, 2)];
    for (name, ino, next) in dots.into_iter().skip(offset as usize) {
        let de = DirEntry {
            ino,
            offset: next,
            type_: u32::from(libc::DT_DIR),
            name,
        };
        if push_dirent(w, &de, plus.then_some(&none)) == 0 {
            return false;
        }
    }
    true
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
