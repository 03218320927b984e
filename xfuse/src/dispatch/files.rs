//! Requests about open files: OPEN and CREATE (with passthrough backing
//! ids and set-user-ID clearing), data (READ, WRITE, FALLOCATE, LSEEK),
//! FLUSH, FSYNC, RELEASE, POSIX locks, IOCTL, POLL and BMAP.

use fuse_backend_rs::abi::fuse_abi::CreateIn as FsCreateIn;
use std::io;

use fuse_backend_rs::api::filesystem::{
    Context, Entry, FileLock as FsFileLock, FileSystem, IoctlData, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use kmod_shim::abi::{
    self, fopen, req_flags, BmapIn, BmapOut, CopyFileRangeIn, CopyFileRangeOut, CreateIn, FallocateIn,
    FlushIn, FsyncIn, IoctlIn, IoctlOut, LkIn, LkOut, LseekIn, LseekOut, OpenIn, OpenOut, PollIn, PollOut,
    ReadIn, ReleaseIn, WriteIn, WriteOut,
};

use super::{Data, Dispatcher, Done, Failure, Handled};
use crate::fileattr;
use crate::killpriv::{self, Cause};
use crate::reply::{entry_out, BodyWriter, DataReader};
use crate::request::{Args, ParseError};

pub(super) fn open<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let o: OpenIn = a.fixed()?;
    a.finish()?;
    let open_flags = d.kill_on_open(ctx, ino, o.flags, o.open_flags)?;
    let (fh, opts, _passthrough) = d.fs.open(ctx, ino.into(), o.flags, open_flags)?;
    let fh: Option<u64> = fh.map(Into::into);
    let mut out = open_out(fh, opts.bits() | d.file_open_flags());
    d.attach_backing(&mut out, ino, fh, o.flags);
    if let Err(e) = w.push(&out) {
        if let (Some(p), Some(fh)) = (&d.passthrough, fh) {
            p.release(fh);
        }
        return Err(e.into());
    }
    Ok(Done::Reply)
}

pub(super) fn create<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let c: CreateIn = a.fixed()?;
    let name = a.name()?;
    a.finish()?;
    // An existing file opened with O_TRUNC (the kernel creates
    // only names it found missing, but another client may have
    // made it since) loses its bits like on OPEN; which inode it
    // is, the reply tells, so the clearing follows.
    let kill = d.kills_privileges()
        && c.open_flags & req_flags::OPEN_KILL_SUIDGID != 0
        && c.flags as i32 & libc::O_TRUNC != 0;
    let args = FsCreateIn {
        flags: c.flags,
        mode: c.mode,
        umask: d.creation_umask(ctx, ino, c.umask),
        fuse_flags: if kill {
            c.open_flags & !req_flags::OPEN_KILL_SUIDGID
        } else {
            c.open_flags
        },
    };
    let (mut entry, fh, opts, _passthrough) = d.fs.create(ctx, ino.into(), name, args)?;
    let fh: Option<u64> = fh.map(Into::into);
    if kill {
        match killpriv::drop_privileges(d.fs.inner(), ctx, entry.inode, Cause::Modify, &*d.groups) {
            Ok(Some((st, _))) => entry.attr = st,
            Ok(None) => {}
            Err(e) => {
                undo_create(d, ctx, &entry, fh, c.flags);
                return Err(e.into());
            }
        }
    }
    let mut out = open_out(fh, opts.bits() | d.file_open_flags());
    d.attach_backing(&mut out, entry.inode, fh, c.flags);
    if let Err(e) = w.push(&entry_out(&entry)).and_then(|_| w.push(&out)) {
        if let (Some(p), Some(fh)) = (&d.passthrough, fh) {
            p.release(fh);
        }
        undo_create(d, ctx, &entry, fh, c.flags);
        return Err(e.into());
    }
    Ok(Done::ReplyLookup(entry.inode))
}

/// TMPFILE (`open(2)` with `O_TMPFILE`): a regular file with no name,
/// opened, which the caller may name later with `linkat(2)` (a LINK of its
/// node id) unless it asked for `O_EXCL`, which the kernel enforces itself.
///
/// fuse-backend-rs's trait has no such call, so where the filesystem says
/// it understands one ([`crate::Policy::tmpfile_through_create`]) it is
/// handed as a CREATE with `O_TMPFILE` in the flags and an empty name (the
/// kernel's name, "/", means nothing); elsewhere it is `ENOSYS`, and the
/// kernel answers `EOPNOTSUPP` from then on without asking. The reply is a
/// CREATE's, attributes with no links.
pub(super) fn tmpfile<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    if !d.policy.tmpfile_through_create {
        return Err(Failure::Errno(libc::ENOSYS));
    }
    let c: CreateIn = a.fixed()?;
    a.name()?;
    a.finish()?;
    if c.mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Failure::Errno(libc::EINVAL));
    }
    let flags = (c.flags as i32 | libc::O_TMPFILE) & !(libc::O_CREAT | libc::O_TRUNC);
    let args = FsCreateIn {
        flags: flags as u32,
        mode: c.mode,
        umask: d.creation_umask(ctx, ino, c.umask),
        fuse_flags: c.open_flags & !req_flags::OPEN_KILL_SUIDGID,
    };
    let (entry, fh, opts, _passthrough) = d.fs.create(ctx, ino.into(), c"", args)?;
    let fh: Option<u64> = fh.map(Into::into);
    if entry.attr.st_mode & libc::S_IFMT != libc::S_IFREG || entry.attr.st_nlink != 0 {
        // Not a file without a name: the filesystem did not make one.
        tracing::error!(
            parent = ino,
            inode = entry.inode,
            "TMPFILE answered with a named or non-regular inode; refused"
        );
        undo_create(d, ctx, &entry, fh, c.flags);
        return Err(Failure::Errno(libc::EIO));
    }
    let out = open_out(fh, opts.bits() | d.file_open_flags());
    if let Err(e) = w.push(&entry_out(&entry)).and_then(|_| w.push(&out)) {
        undo_create(d, ctx, &entry, fh, c.flags);
        return Err(e.into());
    }
    Ok(Done::ReplyLookup(entry.inode))
}

/// Undoes a CREATE whose reply cannot be built: the kernel will never
/// know the handle or the reference.
fn undo_create<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    entry: &Entry,
    fh: Option<u64>,
    flags: u32,
) {
    if let Some(fh) = fh {
        let _ =
            d.fs.release(ctx, entry.inode.into(), flags, fh.into(), false, false, None);
    }
    d.fs.forget(ctx, entry.inode.into(), 1);
}

pub(super) fn read<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
    data: Data<'_>,
) -> Handled {
    let r: ReadIn = a.fixed()?;
    a.finish()?;
    let size = r.size as usize;
    let owner = (r.read_flags & req_flags::READ_LOCKOWNER != 0).then_some(r.lock_owner);
    if let Data::Read(out) = data {
        if size > d.negotiated.max_reply_bytes() || size > out.available_bytes() {
            return Err(ParseError::BadCount(u64::from(r.size)).into());
        }
        let mut out = Capped {
            inner: out,
            left: size,
        };
        d.fs.read(
            ctx,
            ino.into(),
            r.fh.into(),
            &mut out,
            r.size,
            r.offset,
            owner,
            r.flags,
        )?;
        return Ok(Done::Reply);
    }
    if size > d.negotiated.max_reply_bytes() || size > w.room() {
        return Err(ParseError::BadCount(u64::from(r.size)).into());
    }
    w.limit_to(size);
    d.fs.read(ctx, ino.into(), r.fh.into(), w, r.size, r.offset, owner, r.flags)?;
    Ok(Done::Reply)
}

/// A transport's READ writer held to the `size` the request asked for (as
/// [`BodyWriter::limit_to`] holds the reply buffer).
struct Capped<'a> {
    inner: &'a mut dyn ZeroCopyWriter,
    left: usize,
}

impl io::Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.left);
        let n = self.inner.write(&data[..n])?.min(n);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ZeroCopyWriter for Capped<'_> {
    fn write_from(&mut self, f: &mut dyn FileReadWriteVolatile, count: usize, off: u64) -> io::Result<usize> {
        let n = self
            .inner
            .write_from(f, count.min(self.left), off)?
            .min(self.left);
        self.left -= n;
        Ok(n)
    }

    fn available_bytes(&self) -> usize {
        self.inner.available_bytes().min(self.left)
    }
}

pub(super) fn write<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
    data: Data<'_>,
) -> Handled {
    let wi: WriteIn = a.fixed()?;
    let size = wi.size as usize;
    if size > d.negotiated.max_write as usize {
        return Err(ParseError::BadCount(u64::from(wi.size)).into());
    }
    let mut inline;
    let reader: &mut dyn ZeroCopyReader = match data {
        Data::Write { reader, len } => {
            a.finish()?;
            if len != size {
                return Err(ParseError::BadCount(u64::from(wi.size)).into());
            }
            reader
        }
        _ => {
            let bytes = a.bytes(size)?;
            a.finish()?;
            inline = DataReader::new(bytes);
            &mut inline
        }
    };
    let owner = (wi.write_flags & req_flags::WRITE_LOCKOWNER != 0).then_some(wi.lock_owner);
    let delayed = wi.write_flags & req_flags::WRITE_CACHE != 0;
    let mut write_flags = wi.write_flags;
    if d.kills_privileges() && write_flags & req_flags::WRITE_KILL_SUIDGID != 0 {
        // Usually a bare SETATTR just before has cleared them
        // already; this catches a mode the kernel's cache missed.
        killpriv::drop_privileges(d.fs.inner(), ctx, ino, Cause::Modify, &*d.groups)?;
        write_flags &= !req_flags::WRITE_KILL_SUIDGID;
    }
    let written = d.fs.write(
        ctx,
        ino.into(),
        wi.fh.into(),
        reader,
        wi.size,
        wi.offset,
        owner,
        delayed,
        wi.flags,
        write_flags,
    )?;
    let written = u32::try_from(written).unwrap_or(u32::MAX).min(wi.size);
    w.push(&WriteOut {
        size: written,
        padding: 0,
    })?;
    Ok(Done::Reply)
}

/// Most bytes one COPY_FILE_RANGE copies: a longer range is answered
/// with a short count, which copy_file_range(2) allows and its callers
/// loop on, so one request never holds a worker for long.
pub(super) const COPY_MAX: u64 = 64 << 20;
/// The buffer a copy moves data through, a piece at a time.
const COPY_PIECE: usize = 1 << 20;

/// COPY_FILE_RANGE (`wide`: COPY_FILE_RANGE_64, whose reply counts in 64
/// bits): the filesystem reads from one open file and writes to the other
/// inside the daemon, so the data never crosses to the kernel and back
/// (without this the kernel copies through READ and WRITE requests).
/// Like Linux's copy, it clears the destination's set-user-ID and
/// set-group-ID bits as a write would. A failure after some bytes were
/// copied is answered with the count copied.
pub(super) fn copy_file_range<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
    wide: bool,
) -> Handled {
    let c: CopyFileRangeIn = a.fixed()?;
    a.finish()?;
    if c.flags != 0 {
        return Err(Failure::Errno(libc::EINVAL));
    }
    let limit = if wide {
        COPY_MAX
    } else {
        COPY_MAX.min(u64::from(u32::MAX))
    };
    let total = c.len.min(limit);
    if d.kills_privileges() && total > 0 {
        killpriv::drop_privileges(d.fs.inner(), ctx, c.nodeid_out, Cause::Modify, &*d.groups)?;
    }
    let mut buf = vec![0u8; (total as usize).min(COPY_PIECE)];
    let mut done: u64 = 0;
    while done < total {
        let want = ((total - done) as usize).min(buf.len());
        let step = copy_piece(d, ctx, ino, &c, done, &mut buf[..want]);
        match step {
            Ok(n) if n == want => done += n as u64,
            // A short read or write: the end of the source, or a full
            // destination.
            Ok(n) => {
                done += n as u64;
                break;
            }
            Err(e) if done == 0 => return Err(e),
            // Some bytes were copied: report them, as a short write would.
            Err(_) => break,
        }
    }
    if wide {
        w.push(&CopyFileRangeOut { bytes_copied: done })?;
    } else {
        w.push(&WriteOut {
            size: done as u32,
            padding: 0,
        })?;
    }
    Ok(Done::Reply)
}

/// Copies up to `buf.len()` bytes at `done` into the copy `c`: one READ
/// from the source into `buf`, one WRITE of what it gave to the
/// destination. Returns the bytes written.
fn copy_piece<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    c: &CopyFileRangeIn,
    done: u64,
    buf: &mut [u8],
) -> Result<usize, Failure> {
    let want = buf.len();
    let read = {
        let mut sink = BodyWriter::new(buf);
        d.fs.read(
            ctx,
            ino.into(),
            c.fh_in.into(),
            &mut sink,
            want as u32,
            c.off_in.saturating_add(done),
            None,
            0,
        )?;
        sink.len()
    };
    if read == 0 {
        return Ok(0);
    }
    let mut reader = DataReader::new(&mut buf[..read]);
    let written = d.fs.write(
        ctx,
        c.nodeid_out.into(),
        c.fh_out.into(),
        &mut reader,
        read as u32,
        c.off_out.saturating_add(done),
        None,
        false,
        0,
        0,
    )?;
    Ok(written.min(read))
}

pub(super) fn release<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let r: ReleaseIn = a.fixed()?;
    a.finish()?;
    let flush = r.release_flags & req_flags::RELEASE_FLUSH != 0;
    let flock = r.release_flags & req_flags::RELEASE_FLOCK_UNLOCK != 0;
    let owner = (flush || flock).then_some(r.lock_owner);
    if let Some(p) = &d.passthrough {
        p.release(r.fh);
    }
    d.fs.release(ctx, ino.into(), r.flags, r.fh.into(), flush, flock, owner)?;
    Ok(Done::Reply)
}

pub(super) fn fsync<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let s: FsyncIn = a.fixed()?;
    a.finish()?;
    let datasync = s.fsync_flags & req_flags::FSYNC_FDATASYNC != 0;
    d.fs.fsync(ctx, ino.into(), datasync, s.fh.into())?;
    Ok(Done::Reply)
}

pub(super) fn flush<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let f: FlushIn = a.fixed()?;
    a.finish()?;
    d.fs.flush(ctx, ino.into(), f.fh.into(), f.lock_owner)?;
    Ok(Done::Reply)
}

pub(super) fn getlk<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let l: LkIn = a.fixed()?;
    a.finish()?;
    let lock = d.fs.getlk(
        ctx,
        ino.into(),
        l.fh.into(),
        l.owner,
        file_lock(&l.lk),
        l.lk_flags,
    )?;
    let lk = abi::FileLock {
        start: lock.start,
        end: lock.end,
        type_: lock.lock_type,
        pid: lock.pid,
    };
    w.push(&LkOut { lk })?;
    Ok(Done::Reply)
}

pub(super) fn setlk<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let l: LkIn = a.fixed()?;
    a.finish()?;
    d.fs.setlk(
        ctx,
        ino.into(),
        l.fh.into(),
        l.owner,
        file_lock(&l.lk),
        l.lk_flags,
    )?;
    Ok(Done::Reply)
}

pub(super) fn setlkw<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let l: LkIn = a.fixed()?;
    a.finish()?;
    d.fs.setlkw(
        ctx,
        ino.into(),
        l.fh.into(),
        l.owner,
        file_lock(&l.lk),
        l.lk_flags,
    )?;
    Ok(Done::Reply)
}

pub(super) fn fallocate<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    _: &mut BodyWriter<'_>,
) -> Handled {
    let f: FallocateIn = a.fixed()?;
    a.finish()?;
    d.fs.fallocate(ctx, ino.into(), f.fh.into(), f.mode, f.offset, f.length)?;
    Ok(Done::Reply)
}

pub(super) fn lseek<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let l: LseekIn = a.fixed()?;
    a.finish()?;
    let offset = d.fs.lseek(ctx, ino.into(), l.fh.into(), l.offset, l.whence)?;
    w.push(&LseekOut { offset })?;
    Ok(Done::Reply)
}

pub(super) fn ioctl<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let io: IoctlIn = a.fixed()?;
    if io.flags & req_flags::IOCTL_UNRESTRICTED != 0 {
        // Unrestricted ioctls need the retry protocol (CUSE only).
        return Err(Failure::Errno(libc::ENOSYS));
    }
    let input = a.bytes(io.in_size as usize)?;
    a.finish()?;
    if io.out_size as usize > d.negotiated.max_reply_bytes() {
        return Err(ParseError::BadCount(u64::from(io.out_size)).into());
    }
    if let Some(hook) = &d.file_attrs {
        if let Some(request) = fileattr::Request::decode(io.cmd, input, io.out_size) {
            let answer = request.map_err(Failure::Errno)?.serve(&**hook, ctx, ino, io.fh)?;
            w.push(&IoctlOut {
                result: 0,
                flags: 0,
                in_iovs: 0,
                out_iovs: 0,
            })?;
            w.push_bytes(answer.as_bytes())?;
            return Ok(Done::Reply);
        }
    }
    let data = IoctlData {
        result: 0,
        data: Some(&*input),
    };
    let res =
        d.fs.ioctl(ctx, ino.into(), io.fh.into(), io.flags, io.cmd, data, io.out_size)?;
    let out_data = res.data.unwrap_or(&[]);
    if out_data.len() > io.out_size as usize {
        return Err(Failure::Errno(libc::EINVAL));
    }
    w.push(&IoctlOut {
        result: res.result,
        flags: 0,
        in_iovs: 0,
        out_iovs: 0,
    })?;
    w.push_bytes(out_data)?;
    Ok(Done::Reply)
}

pub(super) fn poll<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let p: PollIn = a.fixed()?;
    a.finish()?;
    let revents =
        d.fs.poll(ctx, ino.into(), p.fh.into(), p.kh.into(), p.flags, p.events)?;
    w.push(&PollOut { revents, padding: 0 })?;
    Ok(Done::Reply)
}

pub(super) fn bmap<F: FileSystem + Sync>(
    d: &Dispatcher<F>,
    ctx: &Context,
    ino: u64,
    mut a: Args<'_>,
    w: &mut BodyWriter<'_>,
) -> Handled {
    let b: BmapIn = a.fixed()?;
    a.finish()?;
    let block = d.fs.bmap(ctx, ino.into(), b.block, b.blocksize)?;
    w.push(&BmapOut { block })?;
    Ok(Done::Reply)
}

/// `fuse_open_out` for an opened file or directory.
pub(super) fn open_out(fh: Option<u64>, open_flags: u32) -> OpenOut {
    // The filesystem's passthrough (third return value) is fuse-backend-rs's
    // own scheme, not the kernel's backing ids; never forward its bit.
    OpenOut {
        fh: fh.unwrap_or(0),
        open_flags: open_flags & !fopen::PASSTHROUGH,
        backing_id: 0,
    }
}

fn file_lock(l: &abi::FileLock) -> FsFileLock {
    FsFileLock {
        start: l.start,
        end: l.end,
        lock_type: l.type_,
        pid: l.pid,
    }
}
